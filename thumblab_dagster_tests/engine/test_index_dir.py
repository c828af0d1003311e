import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster_tests.engine.vectors import flat, unit


def build(tmp_path, n=50, name="idx", snapshot="2026-11-01"):
    vectors = unit(n)
    ids = [f"v{i}" for i in range(n)]
    index = flat(vectors)
    vi.write_index_dir(tmp_path / name, index, ids, factory="Flat", metric="inner_product",
                       metadata=pd.DataFrame({"item_id": ids}), id_column="item_id", extra={"snapshot": snapshot})
    return tmp_path / name, ids, vectors


def test_round_trip_with_manifest(tmp_path):
    directory, ids, vectors = build(tmp_path)
    manifest = vi.read_manifest(directory)
    assert manifest["ntotal"] == 50 and manifest["dim"] == 16 and manifest["factory"] == "Flat"
    assert set(manifest["files"]) == {"index.faiss", "ids.npy", "metadata.parquet"}
    loaded = vi.load_index_dir(directory)
    assert loaded.ids.tolist() == ids
    sims, pos = loaded.search(vectors[:3], k=1)
    assert pos[:, 0].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob(".*tmp"))  # no temp leftovers


def test_tampered_file_is_refused_before_faiss_reads_it(tmp_path):
    directory, _, _ = build(tmp_path)
    np.save(directory / "ids.npy", np.asarray([f"w{i}" for i in range(50)]), allow_pickle=False)  # same size
    with pytest.raises(vi.IndexIntegrityError, match="ids.npy sha256"):
        vi.load_index_dir(directory)
    (directory / "index.faiss").write_bytes(b"truncated")
    with pytest.raises(vi.IndexIntegrityError, match="index.faiss has 9 bytes"):
        vi.load_index_dir(directory)


def test_refuses_to_write_misaligned_index(tmp_path):
    index = flat(unit(5))
    with pytest.raises(vi.IndexIntegrityError, match="5 vectors but 4 ids"):
        vi.write_index_dir(tmp_path / "bad", index, ["a", "b", "c", "d"], factory="Flat", metric="inner_product")
    assert not (tmp_path / "bad").exists()


def test_publish_never_goes_back_in_time_and_refuses_broken_dirs(tmp_path):
    new_dir, ids, _ = build(tmp_path, name="new", snapshot="2026-11-02")
    old_dir, _, _ = build(tmp_path, n=10, name="old", snapshot="2026-11-01")
    out = tmp_path / "faiss_indices"
    assert publishing.publish(new_dir, out, "tech", "2026-11-02").published
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}  # noqa: E731
    before = files()
    assert set(before) == {"tech.index", "tech_ids.npy", "tech_metadata.parquet", "tech_manifest.json"}
    result = publishing.publish(old_dir, out, "tech", "2026-11-01")
    assert not result.published and "newer" in result.reason
    (new_dir / "index.faiss").write_bytes(b"corrupt")
    with pytest.raises(vi.IndexIntegrityError):
        publishing.publish(new_dir, out, "tech", "2026-11-03")
    assert files() == before
    loaded = publishing.load_published(out, "tech")
    assert loaded.ids.tolist() == ids and loaded.manifest["snapshot"] == "2026-11-02"
    assert np.load(out / "tech_ids.npy", allow_pickle=False).dtype.kind == "U"
