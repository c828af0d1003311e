"""A thin niche (3 videos over the window) still gets its index, but the enough_references check warns,
index_stats shows the count, and the published copy answers ``confident: False`` (issue 11)."""

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from thumblab_dagster.defs.index_tail import ENOUGH_REFERENCES
from thumblab_dagster.defs.resources import IndexEngineResource, TrendingSourceResource
from thumblab_dagster.defs.thumbnails.definitions import thumbnail_definitions
from thumblab_dagster.lib.collections.thumbnails.niches import TIMEZONE
from thumblab_dagster.lib.collections.thumbnails.scoring import thumbnail_library
from thumblab_dagster.lib.embed.clip import read_embeddings
from thumblab_dagster.lib.engine import publish as publishing

_THUMBNAILS = thumbnail_definitions({})
EVERYTHING = [*_THUMBNAILS.assets, *_THUMBNAILS.asset_checks]
INDEX_AND_CHECKS = dg.AssetSelection.assets("niche_index")  # the index, rebuilt from the same window, and its checks


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def enough_references(result) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == ENOUGH_REFERENCES]
    return evaluation


def test_a_thin_niche_warns_yet_builds_publishes_and_answers_not_confident(resources, instance):
    # the bundled sample (deterministic for any date), three videos: a niche as thin as real gaming's
    resources = {**resources, "trending_source": TrendingSourceResource(max_results=3)}
    layout = resources["storage"].layout
    key = f"{datetime.now(ZoneInfo(TIMEZONE)).date().isoformat()}|gaming"
    result = dg.materialize(EVERYTHING, partition_key=key, resources=resources, instance=instance,
                            raise_on_error=False)
    assert result.success  # a WARN check never fails the run

    check = enough_references(result)
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == ("only 3 references (fewer than 30): percentiles from this index are flagged "
                                 "not confident")
    assert (check.metadata["reference_count"].value, check.metadata["min_references"].value) == (3, 30)

    [stats] = result.asset_materializations_for_node("index_stats")
    assert stats.metadata["reference_count"].value == 3
    date = key.split("|")[0]
    assert json.loads(layout.stats("gaming", date).read_text())["reference_count"] == 3

    # the index was still built and published from whatever the window had
    assert publishing.load_published(layout.published, "gaming").ntotal == 3
    _, vectors, _ = read_embeddings(layout.embeddings("gaming", date))
    answer = thumbnail_library(layout.published).similarity_percentile(vectors[0], "gaming")
    assert (answer.source, answer.reference_count, answer.confident) == ("local", 3, False)

    # the minimum is the index_engine resource's (THUMBLAB_MIN_REFERENCES)
    lenient = {**resources, "index_engine": IndexEngineResource(min_references=3)}
    again = dg.materialize(EVERYTHING, partition_key=key, resources=lenient, instance=instance,
                           selection=INDEX_AND_CHECKS, raise_on_error=False)
    check = enough_references(again)
    assert check.passed is True and check.description == "3 references (at least 3)"
