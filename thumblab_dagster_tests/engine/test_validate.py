import json

import numpy as np
import pandas as pd
from click.testing import CliRunner

from thumblab_dagster.cli import main
from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine.validate import check_alignment, validate_index_dir
from thumblab_dagster_tests.engine.vectors import flat, unit


def build(directory, n=50):
    vectors, ids = unit(n), [f"v{i}" for i in range(n)]
    vi.write_index_dir(directory, flat(vectors), ids, factory="Flat", metric="inner_product",
                       metadata=pd.DataFrame({"item_id": ids}), id_column="item_id")
    return ids, vectors


def swap_ids(directory, a, b, fix_manifest):
    ids = np.load(directory / "ids.npy", allow_pickle=False)
    ids[[a, b]] = ids[[b, a]]
    np.save(directory / "ids.npy", ids, allow_pickle=False)
    if fix_manifest:  # a careful forger: the checksum alone can no longer tell
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["files"]["ids.npy"] = {"sha256": vi.sha256_file(directory / "ids.npy"),
                                        "bytes": (directory / "ids.npy").stat().st_size}
        (directory / "manifest.json").write_text(json.dumps(manifest))


def test_a_good_index_validates(tmp_path):
    ids, vectors = build(tmp_path / "i")
    report = validate_index_dir(tmp_path / "i")
    assert report.passed, report.problems
    assert report.metrics["sampled"] == 50 and report.metrics["positions_checked"] == 50
    assert check_alignment(tmp_path / "i", ids, vectors).passed


def test_swapped_ids_are_caught_and_named_even_with_a_fixed_manifest(tmp_path):
    ids, vectors = build(tmp_path / "i")
    swap_ids(tmp_path / "i", 3, 7, fix_manifest=True)
    report = validate_index_dir(tmp_path / "i")
    assert not report.passed
    assert any("position 3: id map 'v7', metadata 'v3'" in p for p in report.problems)
    window = check_alignment(tmp_path / "i", ids, vectors)
    assert any("do not find their own id" in p and "v3" in p for p in window.problems)


def without_id_column(directory, swap=None):
    """What writers before ``id_column`` wrote; ``swap`` two metadata rows (checksums to match)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop("id_column")
    if swap is not None:
        ids = [f"v{i}" for i in range(manifest["ntotal"])]
        ids[swap[0]], ids[swap[1]] = ids[swap[1]], ids[swap[0]]
        pd.DataFrame({"item_id": ids}).to_parquet(directory / "metadata.parquet", index=False)
        manifest["files"]["metadata.parquet"] = {"sha256": vi.sha256_file(directory / "metadata.parquet"),
                                                 "bytes": (directory / "metadata.parquet").stat().st_size}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_older_manifests_are_compared_with_the_id_column_the_caller_knows(tmp_path):
    ids, vectors = build(tmp_path / "i")
    without_id_column(tmp_path / "i", swap=(4, 9))
    silent = validate_index_dir(tmp_path / "i")
    assert silent.passed and silent.metrics["id_column"] == "unknown (positions not compared with metadata)"
    report = validate_index_dir(tmp_path / "i", id_column="item_id")
    assert not report.passed and report.metrics["id_column"] == "item_id (given; the manifest names none)"
    assert any("position 4: id map 'v4', metadata 'v9'" in p for p in report.problems)
    assert not check_alignment(tmp_path / "i", ids, vectors, id_column="item_id").passed
    other = validate_index_dir(tmp_path / "i", id_column="sku")  # another collection's column: not a failure
    assert other.passed and other.metrics["id_column"].startswith("unknown (positions not compared")
    assert "'sku'" in other.metrics["id_column"]


def test_the_manifests_id_column_wins_over_the_callers(tmp_path):
    build(tmp_path / "i")
    report = validate_index_dir(tmp_path / "i", id_column="sku")
    assert report.passed and report.metrics["positions_checked"] == 50 and "id_column" not in report.metrics


def test_window_mismatch_and_duplicates(tmp_path):
    ids, vectors = build(tmp_path / "i")
    report = check_alignment(tmp_path / "i", ids + ["v999"], np.vstack([vectors, unit(1, seed=9)]))
    assert any("1 window ids missing from the index" in p for p in report.problems)


def test_identical_vectors_tie_counts_as_self_match(tmp_path):
    vectors = unit(4)
    vectors[2] = vectors[1]
    vi.write_index_dir(tmp_path / "t", flat(vectors), list("abcd"), factory="Flat", metric="inner_product")
    assert validate_index_dir(tmp_path / "t").passed
    assert check_alignment(tmp_path / "t", list("abcd"), vectors).passed


def test_missing_or_truncated_files(tmp_path):
    build(tmp_path / "i")
    np.save(tmp_path / "i" / "ids.npy", np.asarray([f"v{i}" for i in range(40)]), allow_pickle=False)
    report = validate_index_dir(tmp_path / "i")
    assert any("ids.npy has" in p for p in report.problems)
    assert any("counts differ: index 50, id map 40" in p for p in report.problems)
    (tmp_path / "i" / "manifest.json").unlink()
    assert "no manifest" in validate_index_dir(tmp_path / "i").problems[0]


def test_cli_exit_status_and_names(tmp_path):
    build(tmp_path / "i")
    ok = CliRunner().invoke(main, ["validate", str(tmp_path / "i")])
    assert ok.exit_code == 0 and ok.output.startswith("OK ")
    swap_ids(tmp_path / "i", 0, 1, fix_manifest=False)
    bad = CliRunner().invoke(main, ["validate", str(tmp_path / "i")])
    assert bad.exit_code == 1
    assert "ids.npy sha256 differs" in bad.output and "id map 'v1', metadata 'v0'" in bad.output


def test_cli_validates_the_current_version_of_a_versioned_root(tmp_path):
    from thumblab_dagster.lib.engine.versions import VersionedIndex

    store = VersionedIndex(tmp_path / "lib")
    store.build(unit(60), [f"v{i}" for i in range(60)], factory="Flat")
    ok = CliRunner().invoke(main, ["validate", str(tmp_path / "lib")])
    assert ok.exit_code == 0 and store.current() in ok.output
