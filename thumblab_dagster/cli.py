"""The ``thumblab`` command line. Only ``demo`` imports Dagster; the rest is lib/ alone."""

import sys

import click

from thumblab_dagster.lib.niches import NICHES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Thumbnail Lab: build and query FAISS indices of trending thumbnails."""


NICHE_CHOICE = click.Choice(list(NICHES))


@main.command()
@click.option("--date", help="Partition date YYYY-MM-DD (default: today in Australia/Hobart).")
@click.option("--niche", "niches", multiple=True, type=NICHE_CHOICE,
              help="Only these niches (repeatable; default all five).")
def demo(date, niches):
    """Materialise every thumbnail asset for one date and print a per-niche summary."""
    from thumblab_dagster.demo import run_demo
    from thumblab_dagster.partitions import START_DATE, date_partitions

    if date is not None and not date_partitions.has_partition_key(date):
        raise click.BadParameter(f"{date!r} is not a partition date: use YYYY-MM-DD between {START_DATE} "
                                 "and today in Australia/Hobart", param_hint="--date")
    table, summaries = run_demo(date, niches or NICHES)
    click.echo(table)
    sys.exit(0 if all(s.success for s in summaries) else 1)


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--sample", default=200, show_default=True, help="Stored vectors to search again.")
@click.option("--seed", default=0, show_default=True)
def validate(index_dir, sample, seed):
    """Prove an index directory's ids line up with its vectors; exit 1 on any mismatch.

    INDEX_DIR may also be a versioned root (with a ``current`` pointer): its live version is checked.
    """
    from thumblab_dagster.lib.validate import validate_index_dir
    from thumblab_dagster.lib.versions import VersionedIndex

    store = VersionedIndex(index_dir)
    if store.pointer.exists():
        index_dir = str(store.path(store.current() or ""))
    report = validate_index_dir(index_dir, sample=sample, seed=seed)
    summary = ", ".join(f"{k} {v}" for k, v in report.metrics.items())
    if report.passed:
        click.echo(f"OK {index_dir}: {summary}")
        return
    click.echo(f"FAILED {index_dir}: {summary}", err=True)
    for problem in report.problems:
        click.echo(f"  - {problem}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
