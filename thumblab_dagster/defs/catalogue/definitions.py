"""The catalogue collection's definitions: catalogue_products, product_embeddings, the shared index tail, the job."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.bound import bound_resources
from thumblab_dagster.defs.catalogue.assets import catalogue_products, product_embeddings
from thumblab_dagster.defs.catalogue.index import catalogue_index_defs
from thumblab_dagster.defs.catalogue.where import GROUP, catalogue_partitions
from thumblab_dagster.defs.resources import from_settings
from thumblab_dagster.lib.settings import load_settings

BUILD_CATALOGUE = "build_catalogue"

build_catalogue = dg.define_asset_job(
    BUILD_CATALOGUE, selection=dg.AssetSelection.groups(GROUP), partitions_def=catalogue_partitions,
    description="Snapshot one catalogue's products, embed the new ones, index (append or full), check alignment by "
                "re-encoding images, publish in the seed's names, and upload when BUCKET_NAME is set.")


def catalogue_definitions(resources: dict) -> dg.Definitions:
    own = {} if "catalogue" in resources else {"catalogue": from_settings("catalogue", load_settings())}
    catalogue = resources.get("catalogue") or own["catalogue"]
    index_assets, index_checks = catalogue_index_defs(with_upload=bool(catalogue.bucket))
    return dg.Definitions(assets=[catalogue_products, product_embeddings, *index_assets], asset_checks=index_checks,
                          jobs=[build_catalogue], resources=own)


@dg.definitions
def defs() -> dg.Definitions:
    return catalogue_definitions(bound_resources())
