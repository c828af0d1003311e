"""The ``thumblab`` command line. Only ``demo`` imports Dagster; the rest is lib/ alone."""

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Thumbnail Lab: build and query FAISS indices of trending thumbnails."""


@main.command()
@click.option("--date", help="Partition date YYYY-MM-DD (default: today in Australia/Hobart).")
@click.option("--niche", "niches", multiple=True, help="Only these niches (repeatable; default all five).")
def demo(date, niches):
    """Materialise every thumbnail asset for one date and print a per-niche summary."""
    from thumblab_dagster.demo import run_demo
    from thumblab_dagster.lib.niches import NICHES

    table, summaries = run_demo(date, niches or NICHES)
    click.echo(table)
    sys.exit(0 if all(s.success for s in summaries) else 1)


if __name__ == "__main__":
    main()
