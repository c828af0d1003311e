"""The thumbnail job end to end: loopback YouTube, real CLIP forward passes, real faiss and parquet."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.defs.index_tail import ENOUGH_REFERENCES, ID_MAP_ALIGNMENT, INDEX_RECALL
from thumblab_dagster.defs.resources import TrendingSourceResource
from thumblab_dagster.defs.thumbnails.checks import EMBEDDING_WEIGHTS_PRETRAINED, EMBEDDINGS_VALID, TRENDING_NOT_EMPTY
from thumblab_dagster.defs.thumbnails.definitions import thumbnail_definitions
from thumblab_dagster.lib.embed.clip import read_embeddings
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster_tests.conftest import TEST_KEY

_THUMBNAILS = thumbnail_definitions({})
EVERYTHING = [*_THUMBNAILS.assets, *_THUMBNAILS.asset_checks]
D1, D2, D3 = "2026-11-18", "2026-11-19", "2026-11-20"


def run(resources, key, instance, selection=None):
    return dg.materialize(EVERYTHING, partition_key=key, resources=on_the_day(resources, key), instance=instance,
                          selection=selection, raise_on_error=False)


def on_the_day(resources, key):
    """Each run happens on its partition's day: the live chart only ever fills today's date."""
    source = resources["trending_source"]
    pinned = type(source)(**{**source.model_dump(), "today": key.split("|")[0]})
    return {**resources, "trending_source": pinned}


def checks_of(result) -> dict:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def meta(result, asset: str) -> dict:
    [mat] = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def embedded_ids(layout, niche, date) -> set:
    return set(read_embeddings(layout.embeddings(niche, date))[0]["video_id"])


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_two_dates_two_niches_then_index_covers_both_dates(resources, youtube, instance):
    layout = resources["storage"].layout
    tech = youtube.add_videos("28", "tech", 15)
    game = youtube.add_videos("20", "game", 6)
    all_tech = list(youtube.charts["28"])
    youtube.charts["28"] = all_tech[:10]                      # D1's chart
    for niche in ("tech", "gaming"):
        result = run(resources, f"{D1}|{niche}", instance)
        assert result.success, niche

    youtube.charts["28"] = all_tech[5:]                       # D2: five carried over, five new
    youtube.thumbs["tech013.jpg"] = (404, "text/plain", b"gone")
    youtube.thumbs["tech014.jpg"] = (200, "text/html", b"<html>not an image</html>")
    results = {niche: run(resources, f"{D2}|{niche}", instance) for niche in ("tech", "gaming")}
    assert all(r.success for r in results.values())
    tech_d2 = results["tech"]

    assert meta(tech_d2, "trending_videos")["source"] == "youtube"
    assert meta(tech_d2, "trending_videos")["dagster/row_count"] == 10
    trending = pd.read_parquet(layout.trending("tech", D2))
    assert trending.loc[0, "thumbnail_url"].endswith("/tech005.jpg")  # the largest offered, not _small
    assert (trending["views_per_hour"] > 0).all() and trending["collected_at"].notna().all()
    emb = meta(tech_d2, "thumbnail_embeddings")
    assert (emb["embedded"], emb["skipped"]) == (8, 2)
    assert emb["skip_reasons"] == {"HTTP N": 1, "content type text/html is not an image": 1}
    assert emb["weights_loaded"] is False

    # D2's index covers both dates, de-duplicated, without the broken thumbnails.
    want = embedded_ids(layout, "tech", D1) | embedded_ids(layout, "tech", D2)
    assert want == set(tech[:13])
    published = publishing.load_published(layout.published, "tech")
    assert sorted(published.ids.tolist()) == sorted(want)
    assert published.manifest["snapshot"] == D2
    assert published.manifest["source_partitions"] == [D1, D2]
    assert published.manifest["reference_scores"]["k"] == 10  # the percentile reference travels along
    assert np.load(layout.published / "tech_reference_scores.npy").shape == (13,)
    assert np.load(layout.published / "tech_reference_scores_weighted.npy").shape == (13,)
    assert published.manifest["titles"]["rows"] == 13  # every title, through the text tower
    assert np.load(layout.published / "tech_title_vectors.npy").shape == (13, 512)
    assert meta(tech_d2, "niche_index")["ntotal"] == 13
    assert sorted(publishing.load_published(layout.published, "gaming").ids.tolist()) == game

    # The scoring service's layout, readable without pickle.
    assert (layout.published / "tech.index").exists()
    assert np.load(layout.published / "tech_ids.npy", allow_pickle=False).shape == (13,)

    assert checks_of(tech_d2) == {ID_MAP_ALIGNMENT: True, INDEX_RECALL: True, EMBEDDINGS_VALID: True,
                                  EMBEDDING_WEIGHTS_PRETRAINED: False, TRENDING_NOT_EMPTY: True,
                                  ENOUGH_REFERENCES: False}  # 13 references, fewer than 30
    [weights] = [e for e in tech_d2.get_asset_check_evaluations() if e.check_name == EMBEDDING_WEIGHTS_PRETRAINED]
    assert weights.severity == dg.AssetCheckSeverity.WARN

    stats = json.loads(layout.stats("tech", D2).read_text())
    assert stats["ntotal"] == 13 and stats["dim"] == 512
    assert stats["self_retrieval_rate"] == 1.0
    assert stats["latency_ms_p50"] > 0
    pictures = meta(tech_d2, "index_stats")["pictures"]  # histogram + neighbour sheet, inline PNGs
    assert pictures.count("](data:image/png;base64,") == 2 and "neighbour sheet" in pictures

    # The engine's progress (choose, write, reference) reaches the event log of the run that built the index.
    messages = [e.user_message for e in instance.all_logs(tech_d2.run_id)]
    assert any(m.startswith("chose Flat for 13 x 512 vectors") for m in messages)
    assert any("reference over" in m for m in messages)

    # The API key reaches no log line, error or metadata value of any run.
    runs = instance.get_run_records()
    assert len(runs) == 4
    for run_record in runs:
        entries = instance.all_logs(run_record.dagster_run.run_id)
        assert entries and not [e for e in entries if TEST_KEY in str(e)]


def test_corrupted_id_map_fails_alignment_and_leaves_published_copy(resources, youtube, instance):
    layout = resources["storage"].layout
    youtube.add_videos("28", "tech", 8)
    assert run(resources, f"{D2}|tech", instance).success
    published = lambda: {str(p.relative_to(layout.published)): p.read_bytes()  # noqa: E731
                         for p in layout.published.rglob("*") if p.is_file()}  # versions included
    published_before = published()

    build = dg.AssetSelection.assets("trending_videos", "thumbnail_embeddings", "niche_index")
    assert run(resources, f"{D3}|tech", instance, selection=build.without_checks()).success
    ids_path = layout.index_dir("tech", D3) / "ids.npy"
    ids = np.load(ids_path, allow_pickle=False)
    ids[[0, 1]] = ids[[1, 0]]
    np.save(ids_path, ids, allow_pickle=False)

    result = run(resources, f"{D3}|tech", instance,
                 selection=dg.AssetSelection.checks_for_assets("niche_index")
                 | dg.AssetSelection.assets("published_index", "index_stats").without_checks())
    assert not result.success
    assert checks_of(result)[ID_MAP_ALIGNMENT] is False
    assert not result.asset_materializations_for_node("published_index")
    assert published() == published_before
    assert publishing.load_published(layout.published, "tech").manifest["snapshot"] == D2


def test_an_older_build_is_never_shown_as_published(resources, youtube, instance):
    layout = resources["storage"].layout
    youtube.add_videos("28", "tech", 8)
    assert run(resources, f"{D2}|tech", instance).success
    older = run(resources, f"{D1}|tech", instance)          # a backfill of an earlier date
    assert older.success
    assert not older.asset_materializations_for_node("published_index")   # no green "materialized"
    [observed] = [e.asset_observation_data.asset_observation for e in older.get_asset_observation_events()
                  if e.asset_key == dg.AssetKey("published_index")]
    assert observed.metadata["published"].value is False
    assert f"newer than {D1}" in observed.metadata["reason"].value
    assert publishing.load_published(layout.published, "tech").manifest["snapshot"] == D2


def test_category_without_chart_gives_an_empty_partition_not_a_crash(resources, youtube, instance):
    youtube.errors["22"] = [(404, "videoChartNotFound")]
    result = run(resources, f"{D1}|people", instance)
    assert result.success
    assert meta(result, "trending_videos")["dagster/row_count"] == 0
    assert "no mostPopular chart" in meta(result, "trending_videos")["warnings"]
    assert checks_of(result)[TRENDING_NOT_EMPTY] is False
    assert checks_of(result)[ID_MAP_ALIGNMENT] is True
    assert meta(result, "niche_index")["ntotal"] == 0


def test_quota_exceeded_fails_the_partition_with_advice_and_writes_nothing(resources, youtube, instance):
    youtube.errors["28"] = [(403, "quotaExceeded")]
    result = run(resources, f"{D1}|tech", instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert "quota" in message and TEST_KEY not in message
    layout = resources["storage"].layout
    assert not layout.trending("tech", D1).exists() and not layout.embeddings("tech", D1).exists()


def test_all_thumbnails_broken_fails_embeddings_clearly(resources, youtube, instance):
    for vid in youtube.add_videos("27", "edu", 3):
        youtube.thumbs[f"{vid}.jpg"] = (500, "text/plain", b"oops")
    result = run(resources, f"{D1}|education", instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "thumbnail_embeddings"
    assert "all 3 thumbnails" in failure.step_failure_data.error.to_string()
    assert not resources["storage"].layout.embeddings("education", D1).exists()


def test_sample_source_runs_offline(resources, instance):
    resources = {**resources, "trending_source": TrendingSourceResource(max_results=6)}
    result = run(resources, f"{D1}|entertainment", instance,
                 selection=dg.AssetSelection.assets("trending_videos", "thumbnail_embeddings"))
    assert result.success
    assert meta(result, "trending_videos")["source"] == "sample"
    assert meta(result, "thumbnail_embeddings")["embedded"] == 6
