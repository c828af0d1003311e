"""Index directories built before manifests named their id column are still checked against
their metadata: the pipeline's check and ``thumblab validate`` know the thumbnails' id column."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from thumblab_dagster.cli import main
from thumblab_dagster.lib.collections.thumbnails import pipeline
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.embed.clip import write_embeddings
from thumblab_dagster.lib.engine.files import sha256_file

DATE = "2026-11-21"
N = 40


@pytest.fixture
def built(tmp_path):
    layout = DataLayout.at(tmp_path)
    ids = [f"vid{i:03d}" for i in range(N)]
    frame = pd.DataFrame({"video_id": ids, "title": ids, "views_per_hour": np.arange(N, dtype=float)})
    vectors = np.random.default_rng(3).standard_normal((N, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_embeddings(layout.embeddings("tech", DATE), frame, vectors, {"model": "m", "pretrained": "none",
                                                                       "loaded": False})
    pipeline.build_niche_index(layout, "tech", DATE)
    return layout, layout.index_dir("tech", DATE)


def as_written_before_id_column(directory, swap=None):
    """The manifest older writers wrote (no id_column); ``swap`` two metadata rows, as a build
    that misaligned them would have left them, with checksums to match."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop("id_column", None)
    if swap is not None:
        metadata = pd.read_parquet(directory / "metadata.parquet")
        a, b = swap
        metadata.iloc[[a, b]] = metadata.iloc[[b, a]].to_numpy()
        metadata.to_parquet(directory / "metadata.parquet", index=False)
        manifest["files"]["metadata.parquet"] = {"sha256": sha256_file(directory / "metadata.parquet"),
                                                 "bytes": (directory / "metadata.parquet").stat().st_size}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_an_old_index_with_swapped_metadata_fails_the_pipelines_check(built):
    layout, directory = built
    assert pipeline.check_niche_index(layout, "tech", DATE).passed
    as_written_before_id_column(directory, swap=(2, 5))
    report = pipeline.check_niche_index(layout, "tech", DATE)
    assert not report.passed
    assert any("position 2: id map 'vid002', metadata 'vid005'" in p for p in report.problems), report.problems
    assert report.metrics["id_column"] == "video_id (given; the manifest names none)"


def test_an_old_index_with_swapped_metadata_fails_thumblab_validate(built):
    _, directory = built
    as_written_before_id_column(directory)
    ok = CliRunner().invoke(main, ["validate", str(directory)])
    assert ok.exit_code == 0 and "positions_checked 40" in ok.output, ok.output
    as_written_before_id_column(directory, swap=(0, 1))
    bad = CliRunner().invoke(main, ["validate", str(directory)])
    assert bad.exit_code == 1 and "id map 'vid000', metadata 'vid001'" in bad.output, bad.output
    unchecked = CliRunner().invoke(main, ["validate", str(directory), "--id-column", ""])
    assert unchecked.exit_code == 0 and "id_column unknown (positions not compared with metadata)" in unchecked.output
