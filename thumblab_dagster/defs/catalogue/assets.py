"""The catalogue's own assets: catalogue_products (the metadata snapshot) and product_embeddings (only new or
changed products embedded). The index tail (catalogue_index -> checks -> published / stats / upload) is in index.py."""

import dagster as dg

from thumblab_dagster.defs.catalogue.where import GROUP, OWNERS, RESOURCES, TAGS, catalogue_partitions, clip_settings, where
from thumblab_dagster.defs.index_tail import lib_logs_to
from thumblab_dagster.defs.metadata import ROW_COUNT, parquet_metadata
from thumblab_dagster.lib.collections.catalogue import pipeline
from thumblab_dagster.lib.collections.catalogue.source import CatalogueSourceError

COMMON = dict(partitions_def=catalogue_partitions, group_name=GROUP, owners=OWNERS, tags=TAGS,
              required_resource_keys=set(RESOURCES))


@dg.asset(kinds={"parquet"}, code_version="1", **COMMON)
def catalogue_products(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The catalogue's products (id, image URL, brand and every other column) from its source: the bundled
    sample, a CSV/parquet file, or a Supabase table; a snapshot as parquet."""
    layout, name, settings = where(context)
    try:
        products = pipeline.snapshot_products(layout, name, settings, context.resources.catalogue.supabase_settings())
    except (CatalogueSourceError, ValueError, OSError) as exc:   # a bad source: its one line, no retries
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    source, table = pipeline.source_of(layout, name, settings)
    return dg.MaterializeResult(metadata={
        **parquet_metadata(layout.products(name)),
        "source": source if source != "supabase" else f"supabase table {table}",
        "brands": dg.MetadataValue.json(products["brand"].astype(str).value_counts().sort_index().to_dict()),
        "preview": dg.MetadataValue.md(products.head(10).to_markdown(index=False)),
    })


@dg.asset(deps=[catalogue_products], kinds={"parquet", "pytorch"}, code_version="1", **COMMON)
def product_embeddings(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """One CLIP vector a product: only products that are new or whose image changed are fetched and embedded
    (all of them under another model); broken images are skipped and counted; on Ray with THUMBLAB_RAY_ADDRESS."""
    layout, name, settings = where(context)
    clip = context.resources.embedder.load()
    with lib_logs_to(context.log):
        run = pipeline.embed_new(layout, name, clip, settings, log_to=context.log, clip_settings=clip_settings(context))
    summary = run.as_dict()
    return dg.MaterializeResult(metadata={
        **parquet_metadata(layout.embeddings(name)),
        ROW_COUNT: dg.MetadataValue.int(run.total),
        **{key: summary[key] for key in ("new", "changed", "kept", "deleted", "embedded", "broken")},
        "new_vectors_per_brand": dg.MetadataValue.md("\n".join(f"- {brand}: {n} new vectors"
                                                              for brand, n in sorted(summary["per_brand"].items()))
                                                    or "none"),
        "model": run.model,
        "on": "Ray" if settings.ray_address else "in-process",
        **({"broken_examples": dg.MetadataValue.md("\n".join(f"- {line}" for line in summary["broken_examples"]))}
           if summary["broken_examples"] else {}),
    })
