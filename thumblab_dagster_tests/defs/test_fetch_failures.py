"""Failed fetches fail: a thumbnail server that drops the connection mid-run fails the partition, which
writes, indexes and publishes nothing; after recovery a re-run of the same partition succeeds. Content
failures (404, not an image) are only skipped. Real loopback HTTP, real CLIP (random weights), faiss."""

from datetime import date as Date
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from thumblab_dagster.defs.resources import ThumbnailFetchResource, TrendingSourceResource
from thumblab_dagster.defs.thumbnails.assets import FETCH_RETRY_POLICY, thumbnail_embeddings, trending_videos
from thumblab_dagster.defs.thumbnails.definitions import thumbnail_definitions
from thumblab_dagster.lib.collections.thumbnails.niches import TIMEZONE
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster_tests.fakes.youtube import DROP

_THUMBNAILS = thumbnail_definitions({})
EVERYTHING = [*_THUMBNAILS.assets, *_THUMBNAILS.asset_checks]
COLLECT = dg.AssetSelection.assets("trending_videos", "thumbnail_embeddings")
DROPPED = "ConnectionError: the server closed the connection without a response"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def live_today(resources) -> str:
    """A date the live chart may fill: the one the tests pin, else today in Australia/Hobart."""
    return getattr(resources["trending_source"], "today", None) or datetime.now(ZoneInfo(TIMEZONE)).date().isoformat()


def run(resources, key, instance, selection=None):
    return dg.materialize(EVERYTHING, partition_key=key, resources=resources, instance=instance,
                          selection=selection, raise_on_error=False)


def step_failure(result, step="thumbnail_embeddings"):
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == step
    return failure.step_failure_data


def meta(result, asset: str) -> dict:
    [mat] = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def published_files(layout) -> dict:
    return {p.name: p.read_bytes() for p in sorted(layout.published.rglob("*")) if p.is_file()}


def test_a_server_dropping_mid_run_fails_the_partition_and_publishes_nothing(resources, youtube, instance):
    layout = resources["storage"].layout
    today = live_today(resources)
    before = (Date.fromisoformat(today) - timedelta(days=1)).isoformat()
    # An earlier publish of tech (the bundled sample may fill any date), which must survive the failure.
    sample = {**resources, "trending_source": TrendingSourceResource(max_results=6)}
    assert run(sample, f"{before}|tech", instance).success
    published_before = published_files(layout)
    assert publishing.load_published(layout.published, "tech").manifest["snapshot"] == before

    youtube.add_videos("28", "tech", 12)
    youtube.drop_thumbs_after = 3  # the thumbnail server goes away after three thumbnails
    failed = run(resources, f"{today}|tech", instance)

    assert not failed.success
    failure = step_failure(failed)
    message = (f"9 of 12 thumbnails of tech on {today} failed in transport after 3 retries (more than 10% allowed), "
               f"e.g. {DROPPED} (9 of them); nothing was embedded: check the network and re-run the partition")
    assert failure.user_failure_data.description == message          # the line the UI shows
    assert message in failure.error.to_string()
    assert failure.user_failure_data.metadata["fetch_failures_by_kind"].value == {"transport: ConnectionError": 9}
    thumb_requests = [r for r in youtube.requests if r["path"].startswith("/thumbs/")]
    assert youtube.thumbs_served == 3 and len(thumb_requests) == 3 + 9 * (1 + 3)  # each dropped one retried 3 times
    assert not layout.embeddings("tech", today).exists()
    assert not layout.index_dir("tech", today).exists()
    for downstream in ("niche_index", "published_index", "index_stats"):
        assert not failed.asset_materializations_for_node(downstream), downstream
    assert not [e for e in failed.get_asset_observation_events() if e.asset_key == dg.AssetKey("published_index")]
    assert published_files(layout) == published_before
    assert publishing.load_published(layout.published, "tech").manifest["snapshot"] == before

    youtube.drop_thumbs_after = None  # the server is back: the same partition runs again
    recovered = run(resources, f"{today}|tech", instance)
    assert recovered.success
    embedded = meta(recovered, "thumbnail_embeddings")
    assert (embedded["embedded"], embedded["skipped"], embedded["fetch_failures_by_kind"]) == (12, 0, {})
    assert recovered.asset_materializations_for_node("published_index")
    published = publishing.load_published(layout.published, "tech")
    assert published.manifest["snapshot"] == today and published.manifest["source_partitions"] == [before, today]


def test_transport_failures_up_to_the_share_allowed_are_skipped_content_failures_always(resources, youtube, instance):
    today = live_today(resources)
    before = (Date.fromisoformat(today) - timedelta(days=1)).isoformat()
    ids = youtube.add_videos("28", "tech", 12)
    youtube.thumbs[f"{ids[0]}.jpg"] = (404, "text/plain", b"gone")               # content: skipped
    youtube.thumbs[f"{ids[1]}.jpg"] = (200, "text/html", b"<html>consent</html>")  # content: skipped
    youtube.thumb_faults[f"{ids[2]}.jpg"] = [503] * 100                          # transport: 1 of 12 is 8%
    youtube.thumb_faults[f"{ids[3]}.jpg"] = [DROP, 503]                          # transport, passes on retry

    result = run(resources, f"{today}|tech", instance, selection=COLLECT)
    assert result.success
    embedded = meta(result, "thumbnail_embeddings")
    assert (embedded["embedded"], embedded["skipped"]) == (9, 3)
    assert embedded["fetch_failures_by_kind"] == {"content: HTTP 404": 1, "transport: HTTP 503": 1,
                                                  "content: content type text/html is not an image": 1}
    assert embedded["skip_reasons"] == {"HTTP N": 2, "content type text/html is not an image": 1}
    assert youtube.thumb_requests(f"{ids[2]}.jpg") == 4 and youtube.thumb_requests(f"{ids[0]}.jpg") == 1

    # A second 503 (2 of 12, 17%) is more than 10%: the partition fails and keeps the file it had.
    youtube.thumb_faults[f"{ids[2]}.jpg"] = [503] * 100
    youtube.thumb_faults[f"{ids[4]}.jpg"] = [503] * 100
    written = resources["storage"].layout.embeddings("tech", today).read_bytes()
    failed = run(resources, f"{today}|tech", instance, selection=COLLECT)
    assert not failed.success
    assert step_failure(failed).user_failure_data.description.startswith(
        f"2 of 12 thumbnails of tech on {today} failed in transport after 3 retries (more than 10% allowed), "
        "e.g. HTTP 503 (2 of them);")
    assert resources["storage"].layout.embeddings("tech", today).read_bytes() == written

    # The share is a setting: at 20% the same failures are skipped and counted.
    youtube.thumb_faults[f"{ids[2]}.jpg"] = [503] * 100
    youtube.thumb_faults[f"{ids[4]}.jpg"] = [503] * 100
    lenient = {**resources, "thumbnail_fetch": ThumbnailFetchResource(max_workers=4, backoff_factor=0.0,
                                                                       retry_later=False, max_failed_share=0.2)}
    result = run(lenient, f"{before}|tech", instance, selection=COLLECT)
    assert result.success
    assert meta(result, "thumbnail_embeddings")["fetch_failures_by_kind"]["transport: HTTP 503"] == 2


def test_dagster_retries_a_transport_failure_later_but_not_a_broken_chart(resources, youtube, instance):
    assert thumbnail_embeddings.op.retry_policy == FETCH_RETRY_POLICY
    assert (FETCH_RETRY_POLICY.max_retries, FETCH_RETRY_POLICY.backoff) == (2, dg.Backoff.EXPONENTIAL)
    assert FETCH_RETRY_POLICY.delay >= 60  # minutes later: a CDN outage rarely ends in seconds
    today = live_today(resources)
    ids = youtube.add_videos("28", "tech", 4)
    key = f"{today}|tech"
    assert run(resources, key, instance, selection=dg.AssetSelection.assets(trending_videos)).success

    def embed(**fetch):  # called directly: an in-process run would sleep through the RetryPolicy's delay
        with dg.build_asset_context(partition_key=key, instance=instance) as context, \
                pytest.raises(dg.Failure) as err:
            thumbnail_embeddings(context, storage=resources["storage"], embedder=resources["embedder"],
                                 thumbnail_fetch=ThumbnailFetchResource(max_workers=2, backoff_factor=0.0, **fetch))
        return err.value

    youtube.drop_thumbs_after = 0
    transport = embed()
    assert transport.allow_retries and transport.description.startswith("all 4 thumbnails of tech")
    assert not embed(retry_later=False).allow_retries  # one-off in-process runs fail at once

    youtube.drop_thumbs_after = None
    for vid in ids:
        youtube.thumbs[f"{vid}.jpg"] = (404, "text/plain", b"gone")
    broken = embed()
    assert not broken.allow_retries  # every thumbnail is gone: waiting will not bring them back
    assert broken.description.startswith(f"all 4 thumbnails of tech on {today} failed to fetch (e.g. HTTP 404)")
