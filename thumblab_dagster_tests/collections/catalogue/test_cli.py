"""``thumblab catalogue`` as a user runs it: build from a CSV of image files (then append), check-alignment by
name, by directory (a tampered copy fails with exit 1) and from Storage (the loopback gateway), search, and
bad input as one line with exit 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
from click.testing import CliRunner
from PIL import Image, ImageDraw

from thumblab_dagster.cli import main
from thumblab_dagster_tests.collections.catalogue.conftest import TEST_CLIP
from thumblab_dagster_tests.fakes.supabase import FakeSupabaseServer

KEY = "service-role-key-for-cli-tests"


def run(env, *args):
    return CliRunner().invoke(main, ["catalogue", *map(str, args)], env=env)


def environment(tmp_path, **more) -> dict:
    model, pretrained, device = TEST_CLIP
    return {"DAGSTER_HOME": str(tmp_path / "dagster_home"), "THUMBLAB_DATA_ROOT": str(tmp_path / "data"),
            "THUMBLAB_CLIP_MODEL": model, "THUMBLAB_CLIP_PRETRAINED": pretrained, "THUMBLAB_CLIP_DEVICE": device,
            "SUPABASE_URL": None, "SUPABASE_KEY": None, "SUPABASE_DB_URL": None, "BUCKET_NAME": None,
            "THUMBLAB_RAY_ADDRESS": None, **more}


def product_images(folder, n: int) -> list[str]:
    """``n`` distinct product photos: a shape of its own colour and place on a light background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        image = Image.new("RGB", (160, 160), (240, 240, 236))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        x, y = (int(v) for v in rng.integers(10, 80, 2))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if i % 2 else draw.rectangle)((x, y, x + 70, y + 70), fill=colour)
        path = folder / f"item{i:02d}.jpg"
        image.save(path, quality=92)
        paths.append(str(path))
    return paths


def products(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"sku-{i:02d}" for i in range(len(paths))], "image_url": paths,
                         "brand": ["aw" if i % 3 else "northwind" for i in range(len(paths))],
                         "price": [9.5 + i for i in range(len(paths))]})


def test_build_append_check_search_and_a_tampered_copy(tmp_path):
    env = environment(tmp_path)
    paths = product_images(tmp_path / "photos", 15)
    source = tmp_path / "products.csv"
    products(paths[:12]).to_csv(source, index=False)

    first = run(env, "build", "--source", source, "--name", "shop", "--shard-size", 5)
    assert first.exit_code == 0, first.output
    assert "catalogue shop: 12 products; 12 new, 0 changed, 0 kept, 0 deleted; embedded 12, broken 0" in first.output
    assert "12 products in shards [5, 5, 2]" in first.output
    assert "  id_map_alignment: passed" in first.output and "  published: yes" in first.output

    more = products([*paths, str(tmp_path / "photos" / "gone.jpg")])   # one more image that is not there
    more.to_csv(source, index=False)
    second = run(env, "build", "--source", source, "--name", "shop", "--shard-size", 5)
    assert second.exit_code == 0, second.output
    assert "4 new, 0 changed, 12 kept, 0 deleted; embedded 3, broken 1" in second.output
    assert "    broken sku-15: " in second.output and "  published: yes" in second.output
    assert "index: appended (no retraining), 15 products in shards [5, 5, 5]" in second.output

    checked = run(env, "check-alignment", "--name", "shop", "--sample", 6)
    assert checked.exit_code == 0, checked.output
    assert checked.output.strip().splitlines()[-1].startswith("PASSED: 15/15 positions verified (100.0%), 6/6 sampled")

    found = run(env, "search", paths[13], "--name", "shop", "-k", 3, "--json")
    assert found.exit_code == 0, found.output
    answer = json.loads(found.stdout)
    assert answer["results"][0]["id"] == "sku-13" and len(answer["results"]) == 3

    # a copy with two ids swapped in the seed's id map: exit 1, the mismatch named
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "data" / "faiss_indices" / "shop", copy)
    ids = json.loads((copy / "id_map_shop.json").read_text())
    ids[3], ids[4] = ids[4], ids[3]
    (copy / "id_map_shop.json").write_text(json.dumps(ids))
    tampered = run(env, "check-alignment", copy, "--sample", 0)
    assert tampered.exit_code == 1, tampered.output
    assert "position 3: " in tampered.output
    assert tampered.output.strip().splitlines()[-1].startswith("FAILED: ")


def test_supabase_products_uploaded_then_checked_from_storage(tmp_path):
    paths = product_images(tmp_path / "photos", 8)
    rows = products(paths).to_dict("records")
    with FakeSupabaseServer(KEY, tables={"products": rows}) as gateway:
        env = environment(tmp_path, SUPABASE_URL=gateway.base_url, SUPABASE_KEY=KEY, BUCKET_NAME="faiss-indexes",
                          PREFIX="catalogues")
        built = run(env, "build", "--source", "supabase", "--name", "shop", "--shard-size", 3)
        assert built.exit_code == 0, built.output
        assert "  published: yes; uploaded" in built.output
        stored = {path for bucket, path in gateway.objects if bucket == "faiss-indexes"}
        assert {"catalogues/shop/id_map_shop.json", "catalogues/shop/clip_shop_shard_00002.index"} <= stored

        # nothing local to lean on: the published set is gone, the check reads Storage
        shutil.rmtree(tmp_path / "data" / "faiss_indices")
        checked = run(env, "check-alignment", "--from-storage", "--name", "shop", "--sample", 4)
        assert checked.exit_code == 0, checked.output
        assert "shop: index has 8 vectors in 3 shards, id_map_shop.json has 8 ids" in checked.output
        assert checked.output.strip().splitlines()[-1].startswith("PASSED: 8/8 positions verified")
        assert KEY not in built.output + checked.output


def test_a_failed_run_says_why_in_its_summary_without_dagsters_log(tmp_path):
    with FakeSupabaseServer(KEY, tables={"products": []}) as gateway:
        env = environment(tmp_path, SUPABASE_URL=gateway.base_url, SUPABASE_KEY=KEY,
                          THUMBLAB_CATALOGUE_TABLE="no_such_table")
        result = run(env, "build", "--source", "supabase", "--name", "shop")
    assert result.exit_code == 1
    assert "  published: no" in result.output
    [reason] = [line for line in result.output.splitlines() if line.startswith("  failure: ")]
    assert reason.startswith("  failure: catalogue_products: ") and "no_such_table" in reason
    assert "Stack Trace" not in result.output and "dagster - ERROR" not in result.output
    assert KEY not in result.output
