"""The ``thumblab`` command line. Only ``demo`` imports Dagster; the rest is lib/ alone.

Query commands (``score``, ``similar``, ``stats``) print a readable summary, or JSON with
``--json``. Exit status: 0 answered from an index, 1 an error (the reason on one line),
3 no index could answer and the default percentile was returned.
"""

import json
import sys

import click

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES


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
    from thumblab_dagster.defs.resources import resources_from_env

    try:  # every setting, and the resources the definitions will bind, before anything runs
        resources_from_env()
    except ValueError as exc:  # a SettingsError line: a bad value, or half a Supabase configuration
        fail(str(exc))
    from thumblab_dagster.defs.thumbnails.partitions import START_DATE, date_partitions
    from thumblab_dagster.demo import run_demo

    if date is not None and not date_partitions.has_partition_key(date):
        raise click.BadParameter(f"{date!r} is not a partition date: use YYYY-MM-DD between {START_DATE} "
                                 "and today in Australia/Hobart", param_hint="--date")
    table, summaries = run_demo(date, niches or NICHES)
    click.echo(table)
    sys.exit(0 if all(s.success for s in summaries) else 1)


def thumbnail_id_column() -> str:
    # Called only when validate runs: the pipeline's imports (pandas, faiss) stay out of the other commands.
    from thumblab_dagster.lib.collections.thumbnails.pipeline import ID_COLUMN

    return ID_COLUMN


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--sample", default=200, show_default=True, help="Stored vectors to search again.")
@click.option("--seed", default=0, show_default=True)
@click.option("--id-column", default=thumbnail_id_column, show_default="the thumbnails' id column",
              help="The metadata column holding each row's id, for manifests that name none (written before "
                   "id_column was recorded); '' for none.")
def validate(index_dir, sample, seed, id_column):
    """Prove an index directory's ids line up with its vectors; exit 1 on any mismatch.

    INDEX_DIR may also be a versioned root (with a ``current`` pointer): its live version is checked.
    """
    from thumblab_dagster.lib.engine.validate import validate_index_dir
    from thumblab_dagster.lib.engine.versions import VersionedIndex

    store = VersionedIndex(index_dir)
    if store.pointer.exists():
        index_dir = str(store.path(store.current() or ""))
    report = validate_index_dir(index_dir, sample=sample, seed=seed, id_column=id_column or None)
    summary = ", ".join(f"{k} {v}" for k, v in report.metrics.items())
    if report.passed:
        click.echo(f"OK {index_dir}: {summary}")
        return
    click.echo(f"FAILED {index_dir}: {summary}", err=True)
    for problem in report.problems:
        click.echo(f"  - {problem}", err=True)
    sys.exit(1)


# --- the query side -----------------------------------------------------------------------

EXIT_DEFAULT = 3
ROOT_OPTION = click.option("--root", type=click.Path(file_okay=False),
                           help="Directory of published indices (default: $THUMBLAB_PUBLISH_DIR or "
                                "$THUMBLAB_DATA_ROOT/faiss_indices).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
NICHE_OPTION = click.option("--niche", default="tech", show_default=True, help="The niche to compare with.")


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def settings():
    """Every setting (lib/settings.py); a bad value ends the command with its one line."""
    from thumblab_dagster.lib.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


def library_at(root: str | None, given=None):
    """The published indices, with the shared store (Supabase) as the fallback when configured.

    ``given``: the settings already loaded (else read here; a bad value ends the command first).
    """
    from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
    from thumblab_dagster.lib.collections.thumbnails.remote import remote_from_env
    from thumblab_dagster.lib.collections.thumbnails.scoring import thumbnail_library

    given = given or settings()
    try:
        remote = remote_from_env(settings=given)
    except ValueError as exc:  # half a Supabase configuration
        fail(str(exc))
    return thumbnail_library(root or DataLayout.from_env(settings=given).published, remote=remote,
                             min_references=given.min_references)


def scorer_at(root: str | None):
    from thumblab_dagster.lib.collections.thumbnails.scoring import UploadScorer
    from thumblab_dagster.lib.embed import clip as embedding

    given = settings()
    library = library_at(root, given)  # half a Supabase configuration is reported before the model loads
    return UploadScorer(library, embedding.load_clip(given.clip_model, given.clip_pretrained, given.clip_device))


def read_upload(image_or_url: str):
    """A local file or an http(s) URL you typed yourself (trusted: the CLI is not a service)."""
    from thumblab_dagster.lib.collections.thumbnails.sample_source import FETCH_SCHEMES
    from thumblab_dagster.lib.embed.images import FetchError, fetch_image

    try:
        return fetch_image(image_or_url, schemes=FETCH_SCHEMES)
    except FetchError as exc:
        fail(f"cannot read {image_or_url}: {exc}")


def run_query(query):
    """Run ``query()``, turning the caller's own mistakes into one-line errors."""
    from thumblab_dagster.lib.query.results import EmbeddingMismatchError

    try:
        return query()
    except (EmbeddingMismatchError, ValueError) as exc:
        fail(str(exc))


def echo_similar(items) -> None:
    for rank, item in enumerate(items, 1):
        views = item.get("views_per_hour")
        click.echo(f"  {rank:>2}. {item['video_id']}  {item['similarity']:.4f}  "
                   f"{(item.get('title') or '')[:60]}" + (f"  ({views:,.0f} views/h)" if views is not None else ""))


@main.command()
@click.argument("image_or_url")
@NICHE_OPTION
@click.option("--weight", type=click.Choice(["views_per_hour"]), default=None,
              help="Weight neighbours by log1p(views_per_hour): similar to *successful* thumbnails.")
@ROOT_OPTION
@JSON_OPTION
def score(image_or_url, niche, weight, root, as_json):
    """Similarity percentile (0-100) of a thumbnail in a niche, and its closest references."""
    image = read_upload(image_or_url)
    result = run_query(lambda: scorer_at(root).score_image(image, niche, weight=weight))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        p = result.percentile
        click.echo(f"{niche}: percentile {p.percentile:.1f}" + (f" (top-{p.k} mean similarity {p.score:.4f})"
                                                               if p.score is not None else ""))
        click.echo(f"  source: {p.source}: {p.reason}")
        echo_similar(result.similar)
    if result.percentile.is_default:
        click.echo(f"error: no index answered for {niche}: {result.percentile.reason}", err=True)
        sys.exit(EXIT_DEFAULT)


@main.command()
@click.argument("image_or_url")
@NICHE_OPTION
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 1000), help="How many references.")
@ROOT_OPTION
@JSON_OPTION
def similar(image_or_url, niche, k, root, as_json):
    """The references most similar to a thumbnail in a niche."""
    image = read_upload(image_or_url)
    found = run_query(lambda: scorer_at(root).similar_images(image, niche, k))
    if as_json:
        click.echo(json.dumps({"niche": niche, "source": found.source, "reason": found.reason,
                               "version": found.version, "similar": list(found)}, indent=2))
    else:
        click.echo(f"{niche}: {len(found)} similar ({found.source}: {found.reason})")
        echo_similar(found)
    if found.source == "default":
        click.echo(f"error: no index answered for {niche}: {found.reason}", err=True)
        sys.exit(EXIT_DEFAULT)


@main.command()
@ROOT_OPTION
@JSON_OPTION
def stats(root, as_json):
    """Every niche's published index: vectors, dimension, type, size, snapshot, model."""
    library = library_at(root)
    info = library.index_info()
    if as_json:
        click.echo(json.dumps({"root": str(library.root), "niches": info}, indent=2))
        return
    head = ["niche", "vectors", "dim", "type", "MB", "snapshot", "model"]
    rows = [[n, str(i["num_vectors"]) if i["exists"] else "missing", str(i["dimension"] or "-"),
             i["index_type"] or "-", f"{i['file_size_mb']:.2f}" if i["file_size_mb"] is not None else "-",
             i["snapshot"] or "-", i.get("weights") or "-"] for n, i in info.items()]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    click.echo(f"indices under {library.root}")
    for r in [head, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@ROOT_OPTION
def serve(host, port, root):
    """The scoring HTTP service: /health, POST /v1/score, /internal/index-stats (docs at /docs)."""
    import uvicorn

    from thumblab_dagster.service.app import ServiceSettings, create_app

    try:
        app = create_app(ServiceSettings.from_env(publish_dir=root))
    except ValueError as exc:  # a bad setting (one SettingsError line) or half a Supabase configuration
        fail(str(exc))
    uvicorn.run(app, host=host, port=port, log_level="info")


# --- Supabase -------------------------------------------------------------------------------

DIM_OPTION = click.option("--dim", default=512, show_default=True, type=click.IntRange(1, 2000),
                          help="Embedding dimension (ViT-B-32: 512, ViT-L-14: 768).")


@main.command("supabase-schema")
@DIM_OPTION
def supabase_schema(dim):
    """Print the SQL migration for Supabase's ref_thumbnails table (paste it into the SQL editor)."""
    from thumblab_dagster.lib.stores.supabase import render_schema

    click.echo(render_schema(dim), nl=False)


@main.command("supabase-migrate")
@DIM_OPTION
def supabase_migrate(dim):
    """Apply the migration through $SUPABASE_DB_URL (a direct Postgres URL). Safe to run twice."""
    from thumblab_dagster.lib.stores.supabase_sql import migrate

    db_url = settings().supabase_db_url
    if not db_url:
        fail("SUPABASE_DB_URL is not set: set it to the project's direct Postgres URL (Supabase: Project "
             "Settings > Database > Connection string), or paste `thumblab supabase-schema` into the SQL editor")
    try:
        result = migrate(db_url, dim)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    state = "created" if result.get("created") else (f"upgraded: partition_date filled for {result['backfilled']:,} rows"
                                                     if result.get("backfilled") else "is up to date")
    click.echo(f"ref_thumbnails (vector({dim})) {state}; match_ref_thumbnails and ref_thumbnails_reference_scores "
               "in place")


if __name__ == "__main__":
    main()
