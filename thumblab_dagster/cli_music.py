"""``thumblab music``: a music library from audio files (or a table of features), similar tracks and
playlists, without Dagster (the same steps and checks the assets run).

    thumblab music scan                          the folder (THUMBLAB_MUSIC_DIR) into the database
    thumblab music build [--force-rebuild]       scan, analyse new/changed files, build, check, publish
    thumblab music import FEATURES.csv --id-column track_id [--exclude-columns a,b]
    thumblab music stats [--json]
    thumblab music add PATH                      one new file appended without a rebuild
    thumblab music similar TRACK [TRACK ...] --top-n 10 [--json]
    thumblab music playlist SEED --length 20 [--diversity mmr] [--json]
    thumblab music demo                          generated tracks, built, two playlists

Every command takes ``--library NAME`` (default ``music``, the library the audio pipeline builds).
A TRACK is a track id of the library, or a path inside the music folder (a file the library does not
hold is analysed on the fly). Exit status 0, or 1 with the reason on one line. Nothing heavy is
imported until a command runs.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import click

DEFAULT_LIBRARY = "music"      # layout.DEFAULT_LIBRARY, without importing the pipeline for --help
DEMO_FOLDER = "music_demo"     # under the data root: the demo's own folder, database and published library
DEMO_LENGTH = 4

LIBRARY_OPTION = click.option("--library", default=DEFAULT_LIBRARY, show_default=True,
                              help="The library: the audio pipeline's (music) or one imported from a table.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")


def _cli():
    # The main CLI module, imported when a command runs (it registers this group: no import cycle).
    from thumblab_dagster import cli

    return cli


def fail(message: str) -> None:
    _cli().fail(message)


def checked_library(name: str) -> str:
    from thumblab_dagster.lib.collections.music.layout import check_library_name

    try:
        return check_library_name(name)
    except ValueError as exc:
        fail(f"--library: {exc}")


@contextlib.contextmanager
def answering():
    """The caller's mistakes and a missing or broken library as one line and exit 1."""
    from thumblab_dagster.lib.collections.music.library import UnknownTrack
    from thumblab_dagster.lib.collections.music.store import MusicStoreError
    from thumblab_dagster.lib.engine.manifest import IndexIntegrityError

    try:
        yield
    except (ValueError, UnknownTrack, FileNotFoundError, MusicStoreError, IndexIntegrityError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


class Music:
    """The settings, the layout and (opened on first use) the store one command works with."""

    def __init__(self, library: str, given=None, layout=None, embedded: bool = False):
        from thumblab_dagster.lib.collections.music.layout import MusicLayout

        self.library = checked_library(library)
        self.given = given if given is not None else _cli().settings()
        self.layout = layout or MusicLayout.from_env(settings=self.given)
        self.db_url = None if embedded else self.given.music_db_url     # None: the embedded database
        self._store = None

    def build_settings(self, **overrides):
        from thumblab_dagster.lib.collections.music.pipeline import MusicSettings

        try:
            return MusicSettings.from_settings(self.given, **overrides)
        except ValueError as exc:
            fail(str(exc))

    @property
    def mode(self) -> int:
        return int(self.given.publish_mode, 8)

    @property
    def store(self):
        if self._store is None:
            from thumblab_dagster.lib.collections.music.pipeline import open_store

            with answering():
                self._store = open_store(self.layout, self.db_url)
        return self._store

    def loaded(self):
        from thumblab_dagster.lib.collections.music.pipeline import load_library

        with answering():
            return load_library(self.layout, self.library)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


@contextlib.contextmanager
def music_context(library: str, **kwargs):
    opened = Music(library, **kwargs)
    try:
        yield opened
    finally:
        opened.close()


def echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def describe_track(item: dict) -> str:
    name = item.get("title") or item.get("path") or item.get("id")
    artist = f" - {item['artist']}" if item.get("artist") else ""
    return f"{name}{artist}"


def echo_tracks(items: list[dict]) -> None:
    for rank, item in enumerate(items, 1):
        click.echo(f"  {rank:>3}. {item['similarity']:.4f}  {describe_track(item)}  [{item['id']}]")


def fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


# --- the group --------------------------------------------------------------------------------

@click.group()
def music():
    """A music library: tracks analysed from audio (Essentia + MusiCNN) or imported features, similar tracks
    and playlists."""


@music.command("scan")
@LIBRARY_OPTION
@JSON_OPTION
def music_scan(library, as_json):
    """Record the music folder ($THUMBLAB_MUSIC_DIR) in the database: new, changed and deleted files."""
    from thumblab_dagster.lib.collections.music.pipeline import scan_folder_into

    with music_context(library) as m, answering():
        changes = scan_folder_into(m.store, m.layout)
        counts = m.store.counts()
        pending = len(m.store.pending_analysis(m.build_settings().include_tensorflow))
    summary = {"music_dir": str(m.layout.music_dir), "library": m.library, **changes.summary(), **counts,
               "pending_analysis": pending}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{m.layout.music_dir}: " + ", ".join(f"{v} {k}" for k, v in changes.summary().items()))
    click.echo(f"  {counts['total_files']} file(s) known, {counts['analysed_files']} analysed, "
               f"{counts['failed_files']} failed; {pending} to analyse: run `thumblab music build`")


def analysis_bars():
    """The geo build's bars (``cli.StageBars``), counting the analysis' "3/8 files" as well as "3 / 8 rows"."""
    bars = _cli().StageBars()
    bars.COUNT = re.compile(r"([\d,]+) ?/ ?([\d,]+)")
    return bars


@music.command("build")
@click.option("--force-rebuild", is_flag=True, help="Build even when the published library is this analysed set.")
@click.option("--features", type=click.Choice(["musicnn", "essentia"]), default=None,
              help="musicnn: 67-d (50 MusiCNN tags + 17); essentia: the 17 alone (default: $THUMBLAB_MUSIC_FEATURES).")
@LIBRARY_OPTION
@JSON_OPTION
def music_build(force_rebuild, features, library, as_json):
    """Scan the folder, analyse new and changed files, build, check (id_map_alignment, recall) and publish."""
    with music_context(library) as m:
        settings = m.build_settings(include_tensorflow=None if features is None else features == "musicnn")
        result = build_with_progress(m, settings, force_rebuild)
    if as_json:
        echo_json(result)
    else:
        echo_build(result)


def build_with_progress(m: Music, settings, force_rebuild: bool = False) -> dict:
    """``build_from_folder`` with a progress bar; a failed check lists its problems and exits 1."""
    from thumblab_dagster.lib.collections.music.pipeline import AlignmentFailed, build_from_folder

    bars = analysis_bars()
    try:
        with answering():
            return build_from_folder(m.layout, m.store, settings, library=m.library, force_rebuild=force_rebuild,
                                     mode=m.mode, progress=bars)
    except AlignmentFailed as exc:
        bars.close()
        _cli().fail_with_problems(str(exc), exc.report.problems)
    finally:
        bars.close()


def echo_build(result: dict) -> None:
    scan, analysis = result["scan"], result["analysis"]
    click.echo(f"library {result['library']}: scan " + ", ".join(f"{v} {k}" for k, v in scan.items()) +
               f"; analysed {analysis['analysed']} of {analysis['pending']} pending in {analysis['seconds']:.1f} s, "
               f"{analysis['failed']} failed")
    for failure in result["failures"]:
        click.echo(f"  failed: {failure['path']}: {failure['reason']}")
    if result.get("skipped"):
        click.echo(result["skipped"])
        return
    recall = result["recall"]
    state = "published" if result["published"] else f"not published ({result.get('reason')})"
    click.echo(f"  {state}: {result['indexed']} tracks, {result['dimensions']}-d, {result['factory']}, "
               f"to {result['directory']}")
    click.echo(f"  id_map_alignment passed; index_recall {recall['recall']:.3f}" +
               (" (exact)" if recall.get("exact") else f" (target {recall.get('target_recall')})"))


@music.command("import")
@click.argument("features", type=click.Path(dir_okay=False))
@click.option("--id-column", required=True, help="The column holding each track's id (what queries name).")
@click.option("--exclude-columns", default="", help="Numeric columns to leave out of the vectors, comma-separated "
                                                    "(kept as metadata).")
@LIBRARY_OPTION
@JSON_OPTION
def music_import(features, id_column, exclude_columns, library, as_json):
    """Build and publish a library from FEATURES (.csv or .parquet) of numeric features analysed elsewhere: any
    dimension, standardised as audio libraries are; other non-numeric columns are kept as metadata."""
    from thumblab_dagster.lib.collections.music.pipeline import import_table

    excluded = [c.strip() for c in exclude_columns.split(",") if c.strip()]
    with music_context(library) as m, answering():
        result = import_table(m.layout, features, id_column, m.library, exclude_columns=excluded,
                              settings=m.build_settings(), mode=m.mode)
    if as_json:
        echo_json(result)
        return
    state = "published" if result["published"] else f"not published ({result['reason']})"
    click.echo(f"library {result['library']}: {result['rows']:,} tracks x {result['dimensions']} features from "
               f"{Path(features).name} ({result['factory']}), {state} to {result['directory']}")


@music.command("stats")
@LIBRARY_OPTION
@JSON_OPTION
def music_stats(library, as_json):
    """The library's figures: vectors, dimension, index type, files analysed and indexed, coverage."""
    from thumblab_dagster.lib.collections.music.pipeline import SOURCE, load_library, statistics

    with music_context(library) as m, answering():
        try:
            loaded = load_library(m.layout, m.library)
        except FileNotFoundError:
            loaded = None
        # a table's library has no files in the database: its statistics need none
        store = None if loaded is not None and loaded.manifest.get(SOURCE) == "table" else m.store
        stats = statistics(m.layout, store, m.library, loaded)
    if as_json:
        echo_json(stats)
        return
    if not stats["index_loaded"]:
        click.echo(f"library {m.library}: not built yet ({stats['analyzed_files']} of {stats['total_files']} files "
                   "analysed): run `thumblab music build` or `thumblab music import`")
        return
    click.echo(f"library {stats['index_name']}: {stats['total_vectors']:,} vectors, {stats['vector_dimension']}-d, "
               f"{stats['index_type']}, built {stats['build_time']}")
    click.echo(f"  files {stats['total_files']:,}, analysed {stats['analyzed_files']:,}, indexed "
               f"{stats['indexed_files']:,}: coverage {stats['index_coverage']:.1%}")


@music.command("add")
@click.argument("path")
@LIBRARY_OPTION
@JSON_OPTION
def music_add(path, library, as_json):
    """Analyse PATH (a file in the music folder) and append it to the published library without a rebuild."""
    from thumblab_dagster.lib.collections.music.pipeline import add_track

    with music_context(library) as m, answering():
        result = add_track(m.layout, m.store, m.library, path, m.build_settings(), mode=m.mode)
    if as_json:
        echo_json(result)
        return
    state = "published" if result["published"] else f"not published ({result['reason']})"
    click.echo(f"{result['path']}: added to library {m.library} as {result['file_id']} at position "
               f"{result['position']} ({result['total_vectors']:,} tracks), {state}")


TOP_N = click.option("--top-n", default=10, show_default=True, type=click.IntRange(1, 10_000),
                     help="How many similar tracks per query.")


@music.command("similar")
@click.argument("tracks", nargs=-1, required=True)
@TOP_N
@LIBRARY_OPTION
@JSON_OPTION
def music_similar(tracks, top_n, library, as_json):
    """The tracks most similar to each TRACK (a track id, or a file in the music folder, analysed when the
    library does not hold it): one list per TRACK, best first, without the track itself and its duplicates."""
    from thumblab_dagster.lib.collections.music.queries import similar_tracks

    with music_context(library) as m:
        loaded = m.loaded()
        with answering():
            answers = similar_tracks(m.layout, loaded, list(tracks), top_n)
    if as_json:
        echo_json({"library": m.library, "top_n": top_n,
                   "results": [{**q.as_dict(), "similar_tracks": found} for q, found in answers]})
        return
    for query, found in answers:
        how = " (analysed now)" if query.analysed else ""
        click.echo(f"{query.given}{how}: {len(found)} similar in library {m.library}")
        echo_tracks(found)


@music.command("playlist")
@click.argument("seed")
@click.option("--length", default=20, show_default=True, type=click.IntRange(1, 10_000), help="Tracks in the playlist.")
@click.option("--diversity", type=click.Choice(["none", "threshold", "mmr"]), default="none", show_default=True,
              help="none: the nearest; threshold: the guide's (over-fetch 3x, keep those >= --threshold); mmr: "
                   "relevance against variety (--lambda) with the artist rules.")
@click.option("--threshold", type=click.FloatRange(-1, 1), default=None, help="threshold: the least similarity kept "
                                                                              "(default 0.5).")
@click.option("--lambda", "lam", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="mmr: 1 = only closeness to the seed, lower = more variety.")
@click.option("--max-per-artist", type=click.IntRange(1, 10_000), default=None,
              help="At most N tracks per artist (and never the same artist twice in a row).")
@LIBRARY_OPTION
@JSON_OPTION
def music_playlist(seed, length, diversity, threshold, lam, max_per_artist, library, as_json):
    """A playlist from SEED (a track id, or a file in the music folder), with its similarity statistics."""
    from thumblab_dagster.lib.collections.music.playlists import generate_playlist
    from thumblab_dagster.lib.collections.music.queries import track_query

    with music_context(library) as m:
        loaded = m.loaded()
        with answering():
            query = track_query(m.layout, loaded, seed)
            tracks, stats = generate_playlist(loaded, query.query, length, diversity, threshold=threshold, lam=lam,
                                              max_per_artist=max_per_artist)
    if as_json:
        echo_json({"library": m.library, "seed": query.as_dict(), "playlist": tracks, "statistics": stats})
        return
    echo_playlist(f"{seed}" + (" (analysed now)" if query.analysed else ""), tracks, stats)


def echo_playlist(seed: str, tracks: list[dict], stats: dict) -> None:
    click.echo(f"playlist from {seed}: {stats['length']} of {stats['requested_length']} tracks "
               f"(diversity {stats['diversity']})")
    echo_tracks(tracks)
    click.echo(f"  similarity to the seed: average {fmt(stats['average_similarity'])}, min "
               f"{fmt(stats['min_similarity'])}, max {fmt(stats['max_similarity'])}, range "
               f"{fmt(stats['similarity_range'])}")
    click.echo(f"  mean pairwise similarity {fmt(stats['mean_pairwise_similarity'])}; "
               f"{stats['distinct_artists']} artist(s), at most {stats['max_tracks_per_artist']} per artist")
    if stats.get("note"):
        click.echo(f"  note: {stats['note']}")


@music.command("demo")
@click.option("--per-style", default=5, show_default=True, type=click.IntRange(2, 50),
              help="Tracks generated per style (two styles, two artists each).")
@click.option("--seconds", default=6.0, show_default=True, type=click.FloatRange(2.0, 60.0),
              help="Length of each generated track.")
@LIBRARY_OPTION
def music_demo(per_style, seconds, library):
    """Generate a few tracks (two styles), analyse and build them, and print a plain and an MMR playlist.

    Everything lives under $THUMBLAB_DATA_ROOT/music_demo (its own folder, embedded database and published
    library), so the demo never touches your music folder or THUMBLAB_MUSIC_DB_URL's database."""
    from thumblab_dagster.lib.collections.music.layout import MusicLayout
    from thumblab_dagster.lib.collections.music.playlists import generate_playlist
    from thumblab_dagster.lib.collections.music.scan import file_id_for
    from thumblab_dagster.lib.collections.music.synthetic import demo_library

    given = _cli().settings()
    root = Path(given.data_root) / DEMO_FOLDER
    layout = MusicLayout.at(root, publish_dir=root / "faiss_indices", music_dir=root / "music")
    with music_context(library, given=given, layout=layout, embedded=True) as m:
        # written again each time: the same bytes, so the scan finds them unchanged and nothing is re-analysed
        wanted = [p.name for p in demo_library(layout.music_dir, per_style=per_style, seconds=seconds)]
        click.echo(f"{len(wanted)} generated tracks (2 styles, 4 artists) in {layout.music_dir}")
        result = build_with_progress(m, m.build_settings())
        echo_build(result)
        loaded = m.loaded()
        seed = file_id_for(wanted[0])
        with answering():
            plain = generate_playlist(loaded, seed, DEMO_LENGTH)
            varied = generate_playlist(loaded, seed, DEMO_LENGTH, "mmr", lam=0.5, max_per_artist=2)
    name = describe_track(loaded.track(loaded.position_of(seed)))
    click.echo(f"\n$ thumblab music playlist {wanted[0]} --length {DEMO_LENGTH}")
    echo_playlist(name, *plain)
    click.echo(f"\n$ thumblab music playlist {wanted[0]} --length {DEMO_LENGTH} --diversity mmr --lambda 0.5 "
               "--max-per-artist 2")
    echo_playlist(name, *varied)

