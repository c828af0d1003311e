"""What every catalogue asset and check starts from: the layout, the settings, the catalogue's name."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.lib.collections.catalogue.layout import CatalogueLayout
from thumblab_dagster.lib.collections.catalogue.pipeline import CatalogueSettings

GROUP = "catalogue"
OWNERS = ["team:thumblab"]
TAGS = {"collection": "catalogue"}
CATALOGUES = "catalogues"
RESOURCES = frozenset({"storage", "index_engine", "catalogue", "embedder"})

# One partition per catalogue, added by `thumblab catalogue build --name` (or by hand in the UI).
catalogue_partitions = dg.DynamicPartitionsDefinition(name=CATALOGUES)


def where(context) -> tuple[CatalogueLayout, str, CatalogueSettings]:
    resources = context.resources
    return (resources.catalogue.layout(resources.storage), context.partition_key,
            resources.catalogue.settings(resources.index_engine))


def clip_settings(context) -> dict:
    """The model the embedder resource loads, for Ray actors that load it themselves."""
    embedder = context.resources.embedder
    return {"model": embedder.model, "pretrained": embedder.pretrained, "precision": embedder.precision,
            "device": embedder.device}
