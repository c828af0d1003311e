"""``thumblab catalogue``: product-image catalogues as sharded, checked FAISS indices.

    thumblab catalogue build --source (FILE.csv|FILE.parquet|supabase|sample) --name NAME [--shard-size N]
    thumblab catalogue check-alignment [DIR | --name NAME | --from-storage] [--sample 200]
    thumblab catalogue search IMAGE --name NAME -k 10 [--json]
    thumblab catalogue demo

``build`` materialises the catalogue's assets for that partition in the local Dagster instance
($DAGSTER_HOME), as the UI would. Exit status 0, or 1 with the reason on one line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

# the summary says what happened, the failed steps' reasons and the broken images included; the whole event
# log stays in the instance for the UI
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
DEMO_NAME = "color"
DEMO_SIZE = 120
DEMO_SHARD = 50


def _cli():
    from thumblab_dagster import cli

    return cli


def fail(message: str) -> None:
    _cli().fail(message)


def checked_name(name: str) -> str:
    from thumblab_dagster.lib.collections.catalogue.layout import check_catalogue_name

    try:
        return check_catalogue_name(name)
    except ValueError as exc:
        fail(f"--name: {exc}")


def load_embedder(given):
    """The CLIP the settings name (THUMBLAB_CLIP_*): the model the catalogue's vectors were made with."""
    from thumblab_dagster.lib.embed.clip import load_clip

    return load_clip(given.clip_model, given.clip_pretrained, given.clip_device, precision=given.clip_precision)


def _layout(given):
    from thumblab_dagster.lib.collections.catalogue.layout import CatalogueLayout

    return CatalogueLayout.from_env(settings=given)


def instance_home(home: str) -> Path:
    """``home`` with a ``dagster.yaml`` (empty when new, as ``make`` writes it): Dagster's first-run notice stays out."""
    path = Path(home)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "dagster.yaml").exists():
        (path / "dagster.yaml").touch()
    return path


@click.group()
def catalogue():
    """Product-image catalogues: incremental CLIP embeddings, a sharded index, alignment proven by re-encoding."""


def materialise(name: str, source: str, shard_size: int | None, given=None, instance=None) -> dict:
    """Run the catalogue's job for partition ``name`` in-process; a summary of what happened."""
    import dagster as dg

    from thumblab_dagster.definitions import build_definitions
    from thumblab_dagster.defs.catalogue.definitions import BUILD_CATALOGUE
    from thumblab_dagster.defs.catalogue.where import CATALOGUES
    from thumblab_dagster.defs.resources import CatalogueResource, resources_from_env
    from thumblab_dagster.lib.collections.catalogue.pipeline import remember_source
    from thumblab_dagster.lib.settings import SettingsError

    given = given or _cli().settings()
    try:
        resources = resources_from_env()
    except SettingsError as exc:
        fail(str(exc))
    if shard_size is not None:
        current = resources["catalogue"]
        resources["catalogue"] = CatalogueResource(**{**current.model_dump(exclude={"supabase"}),
                                                      "shard_size": shard_size}, supabase=current.supabase)
    remember_source(_layout(given), name, source, resources["catalogue"].table)
    job = build_definitions(resources).resolve_job_def(BUILD_CATALOGUE)
    owned = instance is None
    instance = instance or dg.DagsterInstance.get()
    try:
        if name not in instance.get_dynamic_partitions(CATALOGUES):
            instance.add_dynamic_partitions(CATALOGUES, [name])
        result = job.execute_in_process(partition_key=name, instance=instance, raise_on_error=False,
                                        tags={"thumblab/origin": "cli"}, run_config=QUIET)
    finally:
        if owned:
            instance.dispose()
    return summarise(result)


def summarise(result) -> dict:
    materialised = {e.asset_key.to_user_string(): dict(e.materialization.metadata)
                    for e in result.get_asset_materialization_events()}
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    failures = failure_reasons(result)
    plain = {name: {k: getattr(v, "value", v) for k, v in meta.items()} for name, meta in materialised.items()}
    return {"success": result.success, "materialised": sorted(materialised), "checks": checks,
            "failures": failures, "metadata": plain}


def failure_reasons(result) -> list[str]:
    """Why the run failed, one line a failed step (``step: reason``, the asset's own message where it gave one),
    else the run's failure messages."""
    reasons = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            user, error = data.user_failure_data, data.error
            while error is not None and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
                error = error.cause                        # Dagster's wrapper: the asset's own error says why
            text = (user.description if user and user.description else "") or (error.message if error
                                                                                else event.message or "")
            reasons.append(f"{event.step_key}: {text.strip().splitlines()[0] if text.strip() else 'failed'}")
    return reasons or [e.message for e in result.all_events if e.is_failure and e.message]


def echo_summary(name: str, summary: dict) -> None:
    meta = summary["metadata"]
    emb = meta.get("product_embeddings", {})
    index = meta.get("catalogue_index", {})
    click.echo(f"catalogue {name}: {meta.get('catalogue_products', {}).get('dagster/row_count', '?')} products; "
               f"{emb.get('new', 0)} new, {emb.get('changed', 0)} changed, {emb.get('kept', 0)} kept, "
               f"{emb.get('deleted', 0)} deleted; embedded {emb.get('embedded', 0)}, broken {emb.get('broken', 0)}")
    if index:
        click.echo(f"  index: {index.get('how')}, {index.get('products')} products in shards {index.get('shards')} "
                   f"({index.get('factory')})")
    for example in emb.get("broken_examples", "").splitlines()[:3]:
        click.echo(f"    broken {example.removeprefix('- ')}")
    for check, passed in sorted(summary["checks"].items()):
        click.echo(f"  {check}: {'passed' if passed else 'FAILED'}")
    published = "published_catalogue" in summary["materialised"]
    click.echo(f"  published: {'yes' if published else 'no'}"
               + ("; uploaded" if "uploaded_catalogue" in summary["materialised"] else ""))
    for failure in summary["failures"][:3]:
        click.echo(f"  failure: {failure.splitlines()[0]}", err=True)


@catalogue.command("build")
@click.option("--source", required=True, help="FILE.csv, FILE.parquet (columns id, image_url, brand), supabase "
                                               "(THUMBLAB_CATALOGUE_TABLE) or sample.")
@click.option("--name", required=True, help="The catalogue's name (its partition): files are named after it.")
@click.option("--shard-size", type=click.IntRange(min=1), help="Products per shard (THUMBLAB_CATALOGUE_SHARD_SIZE).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
def catalogue_build(source, name, shard_size, as_json):
    """Materialise the catalogue's assets for partition NAME: snapshot, embed new products, index, check, publish."""
    from thumblab_dagster.lib.collections.catalogue.source import SAMPLE, SUPABASE, CatalogueSourceError, read_products, source_kind

    name = checked_name(name)
    try:
        if source_kind(source) not in (SAMPLE, SUPABASE):
            read_products(source)          # a bad file is one line here, before Dagster's logs
    except CatalogueSourceError as exc:
        fail(f"--source: {exc}")
    given = _cli().settings()
    if not given.dagster_home:
        fail("DAGSTER_HOME is not set: point it at the Dagster instance the UI uses (make sets .dagster_home)")
    instance_home(given.dagster_home)
    summary = materialise(name, source, shard_size, given)
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        echo_summary(name, summary)
    if not summary["success"]:
        sys.exit(1)


def _download(given, name: str, into: Path) -> Path:
    """The catalogue's uploaded set (``<bucket>/<prefix>/<name>/``) into ``into``; the manifest names the files."""
    from thumblab_dagster.lib.collections.catalogue.shards import seed_id_map_name
    from thumblab_dagster.lib.engine.index_dir import MANIFEST_FILE
    from thumblab_dagster.lib.engine.manifest import parse_manifest
    from thumblab_dagster.lib.stores.supabase_rest import RestStore

    if not given.bucket_name or not (given.supabase_url and given.supabase_key):
        fail("--from-storage needs BUCKET_NAME, SUPABASE_URL and SUPABASE_KEY")
    folder = f"{given.storage_prefix.strip('/')}/{name}"
    with RestStore(given.supabase_url, given.supabase_key) as store:
        try:
            raw = store.download(given.bucket_name, f"{folder}/{MANIFEST_FILE}")
            manifest = parse_manifest(raw, f"{given.bucket_name}/{folder}/{MANIFEST_FILE}")
            (into / MANIFEST_FILE).write_bytes(raw)
            for file in {manifest.file_name(f) for f in manifest.files} | {seed_id_map_name(name)}:
                (into / file).write_bytes(store.download(given.bucket_name, f"{folder}/{file}"))
        except Exception as exc:  # the store's errors carry no secrets
            fail(f"cannot download {given.bucket_name}/{folder}: {str(exc).splitlines()[0]}")
    return into


@catalogue.command("check-alignment")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--name", help="A catalogue's published set (faiss_indices/<name>/).")
@click.option("--from-storage", is_flag=True, help="Download <BUCKET_NAME>/<PREFIX>/<name>/ and check that.")
@click.option("--sample", default=200, show_default=True, type=click.IntRange(min=0),
              help="Images re-fetched and re-encoded for the random search.")
@click.option("--seed", default=0, show_default=True, type=int, help="Which products are sampled.")
def catalogue_check(directory, name, from_storage, sample, seed):
    """The seed's checker: sanity (every position maps to its id, per-shard counts), random search (sampled
    images re-encoded with the recorded model must come back at rank 1 with cos >= 0.999), shard verification.
    Exit status 1 and the first mismatches on any failure."""
    from thumblab_dagster.lib.collections.catalogue import pipeline

    if sum(bool(x) for x in (directory, name and not from_storage, from_storage)) != 1:
        fail("give a DIRECTORY, --name NAME, or --from-storage --name NAME")
    given = _cli().settings()
    layout = _layout(given)
    with tempfile.TemporaryDirectory(prefix="catalogue-check-") as tmp:
        if from_storage:
            if not name:
                fail("--from-storage needs --name: the catalogue to download")
            target = _download(given, checked_name(name), Path(tmp))
        elif name:
            target = layout.catalogue(checked_name(name))
            if not target.exists():
                fail(f"no catalogue {name!r} is published under {layout.published}: thumblab catalogue build first")
        else:
            target = Path(directory)
        clip = load_embedder(given) if sample else None
        # a DIRECTORY's lines name the catalogue it holds (its id map's name), not the folder it was copied to
        report = pipeline.check(layout, name, clip, directory=target, sample=sample, out=click.echo, seed=seed)
    sys.exit(0 if report.passed else 1)


@catalogue.command("search")
@click.argument("image")
@click.option("--name", required=True, help="The catalogue to search.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1, max=1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a list.")
def catalogue_search(image, name, k, as_json):
    """The K products whose images look most like IMAGE (a file path or an http(s) URL)."""
    from thumblab_dagster.lib.collections.catalogue import pipeline

    given = _cli().settings()
    layout = _layout(given)
    try:
        hits = pipeline.search_image(layout, checked_name(name), image, load_embedder(given), k)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc).splitlines()[0])
    if as_json:
        click.echo(json.dumps({"catalogue": name, "image": image, "k": k, "results": hits}))
        return
    click.echo(f"{len(hits)} products like {image} in catalogue {name}:")
    for rank, hit in enumerate(hits, start=1):
        click.echo(f"  {rank:>3}. {hit['cosine']:.4f}  {hit['id']}  {hit.get('brand') or ''}  {hit.get('image_url') or ''}")


@catalogue.command("demo")
@click.option("--size", default=DEMO_SIZE, show_default=True, type=click.IntRange(min=10, max=5000),
              help="Products in the generated catalogue.")
def catalogue_demo(size):
    """Build the bundled sample catalogue (drawn in-process, several brands and colours) in shards of 50, run the
    checker on the published set, then add products and build again: only the new ones are embedded."""
    from thumblab_dagster.lib.collections.catalogue import pipeline
    from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue

    given = _cli().settings()
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").absolute()))
    instance_home(os.environ["DAGSTER_HOME"])
    layout = _layout(given)
    first = layout.folder(DEMO_NAME) / "demo_products.csv"
    first.parent.mkdir(parents=True, exist_ok=True)
    sample_catalogue(size - 10).to_csv(first, index=False)
    shown = first.relative_to(Path.cwd()) if first.is_relative_to(Path.cwd()) else first
    click.echo(f"$ thumblab catalogue build --source {shown} --name {DEMO_NAME} --shard-size {DEMO_SHARD}")
    summary = materialise(DEMO_NAME, str(first), DEMO_SHARD, given)
    echo_summary(DEMO_NAME, summary)
    if not summary["success"]:
        sys.exit(1)
    sample_catalogue(size).to_csv(first, index=False)
    click.echo(f"\n$ thumblab catalogue build ...   (10 more products in {first.name})")
    summary = materialise(DEMO_NAME, str(first), DEMO_SHARD, given)
    echo_summary(DEMO_NAME, summary)
    click.echo(f"\n$ thumblab catalogue check-alignment --name {DEMO_NAME} --sample 20")
    report = pipeline.check(layout, DEMO_NAME, load_embedder(given), directory=layout.catalogue(DEMO_NAME),
                            sample=20, out=click.echo)
    sys.exit(0 if report.passed and summary["success"] else 1)
