"""What ``thumblab catalogue`` prints when something is wrong: a bad products file is one line before any
Dagster run, a failed step's own reason (not Dagster's wrapper), and a checked copy of a published set is
named after the catalogue it holds; a cut-short id map is named."""

from __future__ import annotations

import json
import shutil

import dagster as dg
from click.testing import CliRunner

from thumblab_dagster.cli import main
from thumblab_dagster.cli_catalogue import failure_reasons
from thumblab_dagster.lib.collections.catalogue import pipeline
from thumblab_dagster.lib.collections.catalogue.layout import CatalogueLayout
from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue

SETTINGS = pipeline.CatalogueSettings(shard_size=8, batch_size=16, check_sample=0)


def run(tmp_path, *args):
    env = {"DAGSTER_HOME": str(tmp_path / "dagster_home"), "THUMBLAB_DATA_ROOT": str(tmp_path / "data"),
           "THUMBLAB_RAY_ADDRESS": None, "SUPABASE_URL": None, "SUPABASE_KEY": None, "BUCKET_NAME": None}
    return CliRunner().invoke(main, ["catalogue", *map(str, args)], env=env)


def test_a_bad_products_file_is_one_line_before_any_run(tmp_path):
    source = tmp_path / "products.csv"
    source.write_text("id,image_url,brand,price\nx,/a.jpg,aw,1\nx,/b.jpg,aw,2\n")
    result = run(tmp_path, "build", "--source", source, "--name", "shop")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: --source: products file {source}: 1 id occurs more than once ('x'): ids must be unique"]
    assert not (tmp_path / "dagster_home").exists()          # refused before Dagster started

    gone = run(tmp_path, "build", "--source", tmp_path / "nowhere.parquet", "--name", "shop")
    assert gone.exit_code == 1 and len(gone.output.strip().splitlines()) == 1
    assert "nowhere.parquet does not exist" in gone.output


def test_a_failed_step_says_why():
    @dg.asset
    def refused():
        raise dg.Failure(description="products file x.csv lacks the column brand: add it")

    @dg.asset
    def crashed():
        raise ConnectionError("THUMBLAB_RAY_ADDRESS='ray://h:10001': cannot join the Ray cluster")

    result = dg.materialize([refused, crashed], raise_on_error=False)
    assert sorted(failure_reasons(result)) == [
        "crashed: ConnectionError: THUMBLAB_RAY_ADDRESS='ray://h:10001': cannot join the Ray cluster",
        "refused: products file x.csv lacks the column brand: add it"]


def test_a_copied_set_is_checked_under_its_catalogue_name(tmp_path, catalogue_clip, fetch):
    layout = CatalogueLayout.at(tmp_path / "data")
    csv = tmp_path / "shop.csv"
    sample_catalogue(12).to_csv(csv, index=False)
    pipeline.remember_source(layout, "shop", str(csv))
    pipeline.snapshot_products(layout, "shop", SETTINGS)
    pipeline.embed_new(layout, "shop", catalogue_clip, SETTINGS, fetch=fetch)
    pipeline.build_index(layout, "shop", SETTINGS)
    assert pipeline.publish_catalogue(layout, "shop").published
    copy = tmp_path / "backup-copy"
    shutil.copytree(layout.catalogue("shop"), copy)

    checked = run(tmp_path, "check-alignment", copy, "--sample", 0)
    assert checked.exit_code == 0, checked.output
    assert "shop: index has 12 vectors in 2 shards, id_map_shop.json has 12 ids" in checked.output

    ids = json.loads((copy / "id_map_shop.json").read_text())
    (copy / "id_map_shop.json").write_text(json.dumps(ids[:-2]))
    short = run(tmp_path, "check-alignment", copy, "--sample", 0)
    assert short.exit_code == 1 and "Mismatch for shop: index has 12, id_map has 10" in short.output

    text = json.dumps(ids)
    (copy / "id_map_shop.json").write_text(text[:len(text) // 2])
    cut = run(tmp_path, "check-alignment", copy, "--sample", 0)
    assert cut.exit_code == 1
    assert "id_map_shop.json is not valid JSON" in cut.output and "cut short" in cut.output
