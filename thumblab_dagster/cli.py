"""The ``thumblab`` command line. Only ``demo`` and ``geo add`` import Dagster; the rest is lib/ alone.

Query commands (``score``, ``similar``, ``stats``, ``geo search``, ``geo list``) print a readable
summary, or JSON with ``--json``. Exit status: 0 answered from an index, 1 an error (the reason on
one line), 3 no index could answer and the default percentile was returned.
"""

import json
import re
import signal
import sys
from pathlib import Path

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


def fail_with_problems(message: str, problems) -> None:
    """``error: message`` and one ``  - problem`` line each (an alignment report's), then exit 1."""
    click.echo(f"error: {message}", err=True)
    for problem in problems:
        click.echo(f"  - {problem}", err=True)
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
    """The scoring HTTP service: /health, POST /v1/score, POST /api/faiss/search (geo), /api/faiss/similar-tracks
    and the other music endpoints, /internal/index-stats (docs at /docs)."""
    import uvicorn

    from thumblab_dagster.service.app import ServiceSettings, create_app

    try:
        app = create_app(ServiceSettings.from_env(publish_dir=root))
    except ValueError as exc:  # a bad setting (one SettingsError line) or half a Supabase configuration
        fail(str(exc))
    # uvicorn shuts down on SIGTERM, then raises it again; leaving through Python runs the atexit handlers,
    # so the embedded music database stops with the service instead of outliving it
    signal.signal(signal.SIGTERM, _exit_on_signal)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


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



# --- geo: embedding mosaics ------------------------------------------------------------------

DEMO_VIEWPORT = "viewport_demo"
DEMO_THRESHOLD = 0.97


@main.group()
def geo():
    """Embedding mosaics (GeoTIFF, one band per dimension): every pixel searchable, answers as places."""


class StageBars:
    """Long work's progress on stderr: a bar for each stage that counts ("1,234 / 4,408 rows"), the other
    lines above it. Bars show on a terminal only; the lines always do."""

    COUNT = re.compile(r"([\d,]+) / ([\d,]+)")

    def __init__(self):
        self.bar, self.stage = None, None

    def __call__(self, stage: str, message: str) -> None:
        from tqdm import tqdm

        counted = self.COUNT.search(message)
        if counted is None:
            tqdm.write(message, file=sys.stderr)
            return
        done, total = (int(v.replace(",", "")) for v in counted.groups())
        if self.bar is None or self.stage != stage or self.bar.total != total:
            self.close()
            self.bar = tqdm(total=total, desc=stage, file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)
            self.stage = stage
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


def geo_layout(given, root: str | None = None):
    from thumblab_dagster.lib.collections.geo.layout import GeoLayout

    layout = GeoLayout.from_env(settings=given)
    return layout if root is None else GeoLayout(layout.root, layout.mosaic_dir, Path(root).absolute())


def geo_build_settings(given, **overrides):
    from thumblab_dagster.lib.collections.geo.pipeline import GeoSettings

    return GeoSettings.from_settings(given, **overrides)


def checked_viewport_id(value: str | None) -> str | None:
    from thumblab_dagster.lib.collections.geo.metadata import check_viewport_id

    try:
        return value if value is None else check_viewport_id(value, "--viewport-id")
    except ValueError as exc:
        fail(str(exc))


@geo.command("add")
@click.argument("mosaic", type=click.Path(dir_okay=False))
@click.option("--viewport-id", help="The viewport's id (default: the file name, or its <name>.json sidecar).")
@click.option("--copy", is_flag=True, help="Copy the file into the mosaics folder instead of linking it.")
def geo_add(mosaic, viewport_id, copy):
    """Put MOSAIC in the mosaics folder ($THUMBLAB_MOSAIC_DIR) and add its viewport partition to the local
    Dagster instance ($DAGSTER_HOME), as the viewport_mosaics sensor would."""
    from thumblab_dagster.lib.collections.geo.discovery import place_mosaic
    from thumblab_dagster.lib.collections.geo.metadata import viewport_id_from
    from thumblab_dagster.lib.collections.geo.mosaic import MosaicError, open_mosaic

    given = settings()
    viewport_id = checked_viewport_id(viewport_id)
    try:
        opened = open_mosaic(mosaic, given.geo_bands)
        viewport_id = viewport_id or viewport_id_from(opened.path)
    except (MosaicError, ValueError) as exc:
        fail(str(exc))
    if not given.dagster_home:
        fail("DAGSTER_HOME is not set: point it at the Dagster instance the daemon and the UI use "
             "(make sets .dagster_home)")
    layout = geo_layout(given)
    try:
        placed = place_mosaic(layout.mosaic_dir, opened.path, viewport_id, copy=copy)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    import dagster as dg

    from thumblab_dagster.defs.geo.partitions import VIEWPORTS

    with dg.DagsterInstance.get() as instance:
        known = viewport_id in instance.get_dynamic_partitions(VIEWPORTS)
        if not known:
            instance.add_dynamic_partitions(VIEWPORTS, [viewport_id])
    how = f" (a copy of {opened.path})" if copy else f" -> {opened.path}" if placed != opened.path else ""
    click.echo(f"{viewport_id}: {placed}{how}" +
               f"; partition {'already there' if known else 'added'} in {given.dagster_home}. The viewport_mosaics "
               f"sensor requests its build; or run `thumblab geo build {placed}`")


@geo.command("build")
@click.argument("mosaic", type=click.Path(dir_okay=False))
@click.option("--viewport-id", help="The viewport's id (default: the file name, or its <name>.json sidecar).")
@click.option("--sampling-factor", type=click.IntRange(1, 64),
              help="Index every F-th pixel of every F-th row (default: $THUMBLAB_GEO_SAMPLING_FACTOR, 4).")
@click.option("--bands", type=click.IntRange(1, 4096), help="Bands the mosaic must have (default: $THUMBLAB_GEO_BANDS).")
@JSON_OPTION
def geo_build(mosaic, viewport_id, sampling_factor, bands, as_json):
    """Build, check and publish MOSAIC's viewport without the Dagster daemon (the assets' own steps and checks).

    An unchanged mosaic (same fingerprint and settings as the published copy) is not rebuilt."""
    given = settings()
    result = build_with_progress(given, mosaic, checked_viewport_id(viewport_id),
                                 geo_build_settings(given, sampling_factor=sampling_factor, expected_bands=bands))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        echo_build(result)


def build_with_progress(given, mosaic, viewport_id, build_settings):
    """``build_viewport`` with a progress bar; a bad mosaic or a failed check ends the command (exit 1)."""
    from thumblab_dagster.lib.collections.geo.pipeline import AlignmentFailed, build_viewport

    bars = StageBars()
    try:
        return build_viewport(geo_layout(given), mosaic, build_settings, viewport_id=viewport_id,
                              mode=int(given.publish_mode, 8), progress=bars)
    except AlignmentFailed as exc:
        bars.close()
        fail_with_problems(str(exc), exc.report.problems)
    except ValueError as exc:   # MosaicError, a bad viewport id or setting: one line
        bars.close()
        fail(str(exc))
    finally:
        bars.close()


def echo_build(result) -> None:
    if result.skipped:
        click.echo(result.skipped)
        return
    store, recall = result.store, result.recall
    click.echo(f"{result.viewport_id}: published {store['num_total_pixels']:,} pixels ({store['nodata_pixels']:,} "
               f"nodata), {store['num_sampled_pixels']:,} sampled every {store['sampling_factor']} in {result.factory}, "
               f"to {result.published.get('directory')}")
    click.echo(f"  id_map_alignment passed; index_recall {recall['recall']:.3f}" +
               (" (exact)" if recall.get("exact") else f" (target {recall['target_recall']})"))
    if result.preview:
        overviews = ", ".join(f"1/{f}" for f in result.preview["overviews"]) or "none"
        click.echo(f"  preview: {result.preview['tif']} (COG, overviews {overviews}), {result.preview['png']}")
    if result.preview_error:
        click.echo(f"warning: the preview failed ({result.preview_error}); the viewport is published", err=True)


def open_viewport(viewport_id: str, root: str | None):
    """The published viewport's store (its directory resolved once, as the service opens it), or one line and exit 1."""
    from thumblab_dagster.lib.collections.geo.pipeline import published_viewports
    from thumblab_dagster.lib.collections.geo.published import NotPublished, open_published

    layout = geo_layout(settings(), root)
    try:
        return open_published(layout.published, viewport_id).store
    except NotPublished:
        known = ", ".join(published_viewports(layout)) or "none"
        fail(f"unknown viewport {viewport_id}: nothing is published as {layout.viewport(viewport_id)} "
             f"(published: {known}); build it first with `thumblab geo build MOSAIC.tif`")
    except ValueError as exc:   # an unsafe id, or a broken published set
        fail(str(exc))


def read_vector_file(path: str):
    """A query vector from ``.npy`` (one row), JSON (a list of numbers) or text (numbers, commas or spaces)."""
    import numpy as np

    try:
        if path.endswith(".npy"):
            values = np.load(path, allow_pickle=False)
        else:
            text = Path(path).read_text(encoding="utf-8")
            values = json.loads(text) if text.lstrip().startswith("[") else [float(v) for v in
                                                                              re.split(r"[\s,]+", text.strip()) if v]
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (OSError, ValueError, TypeError) as exc:
        fail(f"cannot read a query vector from {path} ({exc}): give a .npy file, a JSON list or numbers separated "
             "by spaces or commas")


@geo.command("search")
@click.argument("viewport_id")
@click.option("--lat", type=float, help="Latitude of the query pixel (EPSG:4326, with --lon).")
@click.option("--lon", type=float, help="Longitude of the query pixel (EPSG:4326, with --lat).")
@click.option("--vector", "vector_file", type=click.Path(dir_okay=False),
              help="A query vector: .npy, a JSON list, or numbers separated by spaces or commas (one per band).")
@click.option("--threshold", type=float, required=True, help="Cosine similarity from -1 to 1.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0, 100_000),
              help="How many of the matching pixels to return, best first (the count is always exact).")
@click.option("--geojson", "geojson_file", type=click.Path(dir_okay=False), help="Also write the results as GeoJSON.")
@click.option("--footprints", is_flag=True, help="GeoJSON pixel outlines (polygons) instead of centre points.")
@ROOT_OPTION
@JSON_OPTION
def geo_search(viewport_id, lat, lon, vector_file, threshold, limit, geojson_file, footprints, root, as_json):
    """Every pixel of a published viewport at least THRESHOLD similar to a place's pixel or a vector."""
    from thumblab_dagster.lib.collections.geo.search import QueryError, make_query, threshold_search

    if (vector_file is None) == (lat is None and lon is None) or (vector_file is None and (lat is None or lon is None)):
        fail("give --lat and --lon together, or --vector FILE (one query)")
    store = open_viewport(viewport_id, root)
    try:
        query = (make_query(store, vector=read_vector_file(vector_file)) if vector_file
                 else make_query(store, lat=lat, lon=lon))
        hits = threshold_search(store, query, threshold, limit)
    except QueryError as exc:
        fail(str(exc))
    if geojson_file:
        Path(geojson_file).write_text(json.dumps(hits.to_geojson(footprints=footprints)) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(hits.to_json(), indent=2))
        return
    echo_hits(hits)
    if geojson_file:
        click.echo(f"  GeoJSON: {geojson_file}")


def echo_hits(hits) -> None:
    shown = f" (best {len(hits.rows)} shown)" if len(hits.rows) < hits.count else ""
    click.echo(f"{hits.viewport_id}: {hits.count:,} pixels with similarity >= {hits.threshold:g}{shown}")
    for rank, item in enumerate(hits.results(), 1):
        click.echo(f"  {rank:>3}. lat {item['lat']:.6f}, lon {item['lon']:.6f}  (row {item['row']}, col "
                   f"{item['col']})  similarity {item['similarity']:.4f}")


@geo.command("list")
@ROOT_OPTION
@JSON_OPTION
def geo_list(root, as_json):
    """Published viewports, and the mosaics in the mosaics folder not published yet."""
    from thumblab_dagster.lib.collections.geo.discovery import mosaic_files
    from thumblab_dagster.lib.collections.geo.metadata import viewport_id_from
    from thumblab_dagster.lib.collections.geo.pipeline import published_viewports

    layout = geo_layout(settings(), root)
    published = published_viewports(layout)
    rows = [{"viewport_id": vid, "published": True, "directory": m["directory"], "mosaic_file": m["mosaic_file"],
             "height": m["mosaic_height"], "width": m["mosaic_width"], "bands": m["embedding_dim"],
             "pixels": m["num_total_pixels"], "nodata_pixels": m["nodata_pixels"],
             "sampled_pixels": m["num_sampled_pixels"], "faiss_index_type": m["faiss_index_type"], "crs": m["crs"],
             "mosaic_fingerprint": m["mosaic_fingerprint"]} for vid, m in published.items()]
    for path in mosaic_files(layout.mosaic_dir):
        try:
            vid = viewport_id_from(path)
        except ValueError:
            continue
        if vid not in published:
            rows.append({"viewport_id": vid, "published": False, "mosaic": str(path)})
    if as_json:
        click.echo(json.dumps({"root": str(layout.published), "mosaic_dir": str(layout.mosaic_dir),
                               "viewports": rows}, indent=2))
        return
    head = ["viewport", "size", "bands", "nodata", "sampled", "index", "mosaic"]
    table = [[r["viewport_id"], f"{r['height']} x {r['width']}", str(r["bands"]), f"{r['nodata_pixels']:,}",
              f"{r['sampled_pixels']:,}", r["faiss_index_type"] or "-", r["mosaic_file"]] if r["published"] else
             [r["viewport_id"], "not built", "-", "-", "-", "-", Path(r["mosaic"]).name] for r in rows]
    widths = [max(len(r[c]) for r in [head, *table]) for c in range(len(head))]
    click.echo(f"viewports under {layout.published} (mosaics in {layout.mosaic_dir})")
    for r in [head, *table]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


@geo.command("demo")
def geo_demo():
    """Generate a small synthetic mosaic (300 x 400 pixels, 128 bands), build and publish it, and search it."""
    from thumblab_dagster.lib.collections.geo.search import make_query, threshold_search
    from thumblab_dagster.lib.collections.geo.synthetic import write_synthetic_mosaic

    given = settings()
    layout = geo_layout(given)
    mosaic = layout.mosaic_link(DEMO_VIEWPORT)
    if not mosaic.exists():   # generated once: a second demo finds it unchanged and skips the build
        click.echo(f"writing a synthetic 300 x 400 x 128 mosaic to {mosaic}")
        write_synthetic_mosaic(mosaic, 300, 400, 128)
    result = build_with_progress(given, mosaic, DEMO_VIEWPORT, geo_build_settings(given, expected_bands=128))
    echo_build(result)
    store = open_viewport(DEMO_VIEWPORT, None)
    lat, lon = (float(v) for v in store.grid.latlon(150, 200))   # the centre pixel
    hits = threshold_search(store, make_query(store, lat=lat, lon=lon), DEMO_THRESHOLD, limit=5)
    click.echo(f"\n$ thumblab geo search {DEMO_VIEWPORT} --lat {lat:.6f} --lon {lon:.6f} --threshold "
               f"{DEMO_THRESHOLD} --limit 5")
    echo_hits(hits)


# --- music: tracks analysed from audio, similar tracks and playlists (cli_music.py) -----------------

from thumblab_dagster.cli_music import music  # noqa: E402 - registered here, after the helpers it reuses

main.add_command(music)

from thumblab_dagster.cli_catalogue import catalogue  # noqa: E402 - registered here, after the helpers it reuses

main.add_command(catalogue)


if __name__ == "__main__":
    main()
