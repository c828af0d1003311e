"""Viewport ids from file names or sidecars, metadata.json's keys, and skip-if-unchanged."""

from __future__ import annotations

import json

import pytest

from thumblab_dagster.lib.collections.geo.metadata import (
    MetadataError,
    check_viewport_id,
    read_metadata,
    unchanged,
    viewport_id_from,
    with_index_type,
)
from thumblab_dagster.lib.collections.geo.store import build_pixel_store


def test_the_viewport_id_comes_from_the_file_name(tmp_path):
    assert viewport_id_from(tmp_path / "viewport_13.0039_77.5566.tif") == "viewport_13.0039_77.5566"
    assert viewport_id_from(tmp_path / "viewport_-33.86_151.21.TIFF") == "viewport_-33.86_151.21"


def test_a_sidecar_names_the_viewport(tmp_path):
    (tmp_path / "tile.json").write_text(json.dumps({"viewport_id": "viewport_1"}))
    assert viewport_id_from(tmp_path / "tile.tif") == "viewport_1"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: a mosaic sidecar must be JSON"):
        viewport_id_from(tmp_path / "bad.tif")
    (tmp_path / "evil.json").write_text(json.dumps({"viewport_id": "../../etc"}))
    with pytest.raises(ValueError, match="is not a safe name"):
        viewport_id_from(tmp_path / "evil.tif")


@pytest.mark.parametrize("bad", ["", "a b", "../x", "x/y", ".hidden", "a" * 129, None, "v..1"])
def test_unsafe_viewport_ids_are_refused(bad):
    with pytest.raises(ValueError, match="not a safe name"):
        check_viewport_id(bad)


def test_read_metadata_names_what_is_wrong(tmp_path):
    with pytest.raises(MetadataError, match="metadata.json is missing"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"viewport_id": "v"}))
    with pytest.raises(MetadataError, match="lacks mosaic_file"):
        read_metadata(tmp_path)


def test_unchanged_compares_fingerprint_and_build_settings(tmp_path, signed):
    metadata = build_pixel_store(signed.path, tmp_path / "store", expected_bands=16, extra_settings={"budget_mb": 64})
    settings = metadata["build_settings"]
    assert settings == {"sampling_factor": 4, "faiss_index_type": None, "float32_copy": False, "expected_bands": 16,
                        "budget_mb": 64}
    published = read_metadata(tmp_path / "store")
    assert unchanged(published, metadata["mosaic_fingerprint"], settings)
    assert not unchanged(published, "0" * 64, settings)
    assert not unchanged(published, metadata["mosaic_fingerprint"], {**settings, "sampling_factor": 2})
    assert not unchanged(None, metadata["mosaic_fingerprint"], settings)


def test_the_index_type_is_recorded_once_built(tmp_path, signed):
    build_pixel_store(signed.path, tmp_path / "store", expected_bands=16, viewport_id="vp_int8")
    updated = with_index_type(tmp_path / "store", "IVF16,PQ8")
    assert updated["faiss_index_type"] == "IVF16,PQ8" == read_metadata(tmp_path / "store")["faiss_index_type"]
    assert updated["viewport_id"] == "vp_int8"
