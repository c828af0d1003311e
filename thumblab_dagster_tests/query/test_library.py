"""The query side: similarity percentiles, similar references, fallbacks and the version cache."""

import logging
import threading

import numpy as np
import pytest

from thumblab_dagster.lib.collections.thumbnails.scoring import thumbnail_library
from thumblab_dagster.lib.query import EmbeddingMismatchError
from thumblab_dagster_tests.fakes.libraries import clustered, leave_one_out_scores, publish_niche, unit

N = 600


@pytest.fixture
def library(tmp_path):
    vectors = clustered(N)
    ids = [f"vid{i:04d}" for i in range(N)]
    publish_niche(tmp_path / "pub", "tech", vectors, ids, snapshot="2026-11-20")
    return thumbnail_library(tmp_path / "pub"), vectors, ids


def test_a_reference_vector_scores_at_its_own_reference_percentile(library):
    lib, vectors, _ = library
    own = np.sort(leave_one_out_scores(vectors))
    for row in range(0, N, 20):
        expected = np.searchsorted(own, leave_one_out_scores(vectors)[row], side="right") * 100.0 / N
        result = lib.similarity_percentile(vectors[row], "tech")
        assert result.source == "local" and "2026-11-20" in result.reason
        assert abs(result.percentile - expected) <= 100.0 / N + 1e-9  # within one rank


def test_a_vector_orthogonal_to_everything_scores_near_zero(tmp_path):
    vectors = clustered(N, d=64)
    vectors[:, -1] = 0.0
    publish_niche(tmp_path / "pub", "tech", unit(vectors), [str(i) for i in range(N)], snapshot="2026-11-20")
    query = np.zeros(64, np.float32)
    query[-1] = 1.0
    result = thumbnail_library(tmp_path / "pub").similarity_percentile(query, "tech")
    assert result.score == pytest.approx(0.0, abs=1e-6)
    assert result.percentile < 1.0


def test_weighted_percentile_moves_the_way_the_weights_say(tmp_path):
    vectors = clustered(N, d=64, seed=3)
    query = unit(vectors[:1] + 0.05)[0]
    order = np.argsort(-(vectors @ query))
    near, far = order[:5], order[5:10]   # the query's closest five, and the next five
    results = {}
    for name, (heavy, light) in {"near heavy": (near, far), "far heavy": (far, near)}.items():
        vph = np.full(N, 100.0)
        vph[heavy], vph[light] = 1e6, 1.0
        publish_niche(tmp_path / name.replace(" ", "_"), "tech", vectors, [str(i) for i in range(N)],
                      snapshot="2026-11-20", views_per_hour=vph)
        lib = thumbnail_library(tmp_path / name.replace(" ", "_"))
        results[name] = (lib.similarity_percentile(query, "tech"),
                         lib.similarity_percentile(query, "tech", weight="views_per_hour"))
        # the weighted score is the log1p(views)-weighted mean of the same ten neighbours
        sims, w = (vectors @ query)[order[:10]], np.log1p(vph[order[:10]])
        assert results[name][1].score == pytest.approx(float((sims * w).sum() / w.sum()), abs=1e-5)
    plain_near, weighted_near = results["near heavy"]
    plain_far, weighted_far = results["far heavy"]
    assert plain_near.percentile == plain_far.percentile  # weights do not touch the plain score
    assert weighted_near.score > plain_near.score > weighted_far.score
    assert weighted_near.percentile > weighted_far.percentile


def test_similar_returns_the_references_with_their_metadata(library):
    lib, vectors, ids = library
    found = lib.similar(vectors[7], "tech", k=5)
    assert len(found) == 5 and found.source == "local"
    assert found[0]["video_id"] == ids[7] and found[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert found[0]["title"] == f"title of {ids[7]}" and found[0]["views_per_hour"] == 100.0
    assert found[0]["thumbnail_url"].endswith(f"/{ids[7]}/hqdefault.jpg")
    sims = [f["similarity"] for f in found]
    assert sims == sorted(sims, reverse=True)
    exact = np.argsort(-(vectors @ vectors[7]))[:5]
    assert [f["video_id"] for f in found] == [ids[i] for i in exact]


class Remote:
    name = "test-remote"

    def __init__(self, fail=False):
        self.fail, self.calls = fail, []

    def similarity_percentile(self, vector, niche, k, weight):
        self.calls.append(niche)
        if self.fail:
            raise ConnectionError("remote down")
        return 73.0

    def similar(self, vector, niche, k):
        return [{"video_id": "remote-1", "similarity": 0.5}]


def test_fallbacks_say_why_and_never_raise(library, tmp_path, caplog):
    lib, vectors, _ = library
    caplog.set_level(logging.WARNING)
    unknown = lib.similarity_percentile(vectors[0], "cooking")
    assert unknown.percentile == 50.0 and unknown.is_default and "unknown niche 'cooking'" in unknown.reason
    assert lib.similarity_percentile(vectors[0], "../pub/tech").is_default  # names are not paths
    missing = lib.similarity_percentile(vectors[0], "gaming")
    assert missing.is_default and "no index for niche 'gaming'" in missing.reason
    assert "no index for niche 'gaming'" in caplog.text

    remote = Remote()
    with_remote = thumbnail_library(lib.root, remote=remote)
    got = with_remote.similarity_percentile(vectors[0], "gaming")
    assert (got.percentile, got.source) == (73.0, "remote") and "test-remote" in got.reason
    assert with_remote.similarity_percentile(vectors[0], "tech").source == "local" and remote.calls == ["gaming"]
    assert with_remote.similar(vectors[0], "gaming", k=3)[0]["video_id"] == "remote-1"
    down = thumbnail_library(lib.root, remote=Remote(fail=True)).similarity_percentile(vectors[0], "gaming")
    assert down.is_default and "test-remote failed (ConnectionError; see the service log)" in down.reason

    publish_niche(tmp_path / "pub", "people", np.empty((0, 64), np.float32), [], snapshot="2026-11-20")
    empty = lib.similarity_percentile(vectors[0], "people")
    assert empty.is_default and "is empty" in empty.reason
    assert lib.similar(vectors[0], "people") == [] and "is empty" in lib.similar(vectors[0], "people").reason


def test_another_dimension_or_model_is_refused(library):
    lib, vectors, _ = library
    with pytest.raises(EmbeddingMismatchError, match="64-d vectors from ViT-B-32; the query has 32"):
        lib.similarity_percentile(vectors[0, :32], "tech")
    entry = lib.entry("tech")
    entry.check_model({"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "loaded": False})  # random-init too
    with pytest.raises(EmbeddingMismatchError, match="built with ViT-B-32 .random-initialised weights."):
        entry.check_model({"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "loaded": True})
    other_k = lib.similarity_percentile(vectors[0], "tech", k=5)  # the reference holds top-10 means
    assert other_k.is_default and "built from top-10 neighbours, not 5" in other_k.reason


def test_index_info_and_cache_stats(library):
    lib, vectors, _ = library
    info = lib.index_info()
    assert list(info)[:5] == ["tech", "gaming", "education", "entertainment", "people"]
    tech = info["tech"]
    assert tech["exists"] and tech["num_vectors"] == N and tech["dimension"] == 64
    assert tech["index_type"] == "Flat" and tech["embedding_model"] == "ViT-B-32" and tech["file_size_mb"] > 0
    assert tech["snapshot"] == "2026-11-20" and tech["last_modified"]
    assert info["gaming"]["exists"] is False
    assert lib.cache_stats()["cached_niches"] == []
    for _ in range(3):
        lib.similar(vectors[0], "tech")
    stats = lib.cache_stats()
    assert stats["cached_niches"] == ["tech"] and (stats["misses"], stats["hits"], stats["loads"]) == (1, 2, 1)
    assert stats["last_load_ms"] > 0 and stats["versions"]["tech"].startswith("2026-11-20+")
    lib.clear_cache()
    assert lib.cache_stats()["cached_niches"] == []


def test_a_rebuilt_index_is_picked_up_without_a_restart(library, tmp_path):
    lib, vectors, ids = library
    assert lib.similar(vectors[0], "tech", k=1)[0]["video_id"] == ids[0]
    new_ids = [f"new{i:04d}" for i in range(N)]
    publish_niche(tmp_path / "pub", "tech", vectors, new_ids, snapshot="2026-11-21")
    found = lib.similar(vectors[0], "tech", k=1)
    assert found[0]["video_id"] == "new0000" and found.version.startswith("2026-11-21+")
    assert lib.cache_stats()["loads"] == 2


def test_concurrent_queries_during_rebuilds_never_mix_versions(library, tmp_path):
    lib, vectors, _ = library
    prefix_of = {}  # version -> the id prefix that version was built with
    lib.similar(vectors[0], "tech")
    prefix_of[lib.entry("tech").version] = "vid"
    done, errors, answers = threading.Event(), [], []

    def reader(seed):
        rng = np.random.default_rng(seed)
        while not done.is_set() or len(answers) < 50:
            found = lib.similar(vectors[rng.integers(N)], "tech", k=10)
            answers.append((found.version, {f["video_id"][:3] for f in found}))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        for j in range(5):
            manifest = publish_niche(tmp_path / "pub", "tech", vectors, [f"v{j}x{i:04d}" for i in range(N)],
                                     snapshot=f"2026-11-2{j + 1}")
            prefix_of[lib.entry("tech").version] = f"v{j}x"
            assert manifest["ntotal"] == N
    finally:
        done.set()
        for t in threads:
            t.join()
    for version, prefixes in answers:
        if prefixes != {prefix_of.get(version, "?")}:
            errors.append((version, prefixes))
    assert errors == []
    assert len({v for v, _ in answers}) >= 2  # the readers really saw versions change


def test_a_corrupt_new_version_is_refused_and_the_old_one_keeps_serving(library, tmp_path, caplog):
    lib, vectors, ids = library
    old = lib.similar(vectors[0], "tech", k=1)
    publish_niche(tmp_path / "pub", "tech", vectors, [f"new{i}" for i in range(N)], snapshot="2026-11-21")
    index_file = tmp_path / "pub" / "tech.index"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    caplog.set_level(logging.ERROR)
    served = lib.similar(vectors[0], "tech", k=1)
    assert served[0]["video_id"] == ids[0] and served.version == old.version
    assert "refused" in caplog.text and "tech.index sha256 differs" in caplog.text
    assert lib.cache_stats()["refused"] == 1
    assert lib.similarity_percentile(vectors[0], "tech").version == old.version
    assert lib.cache_stats()["refused"] == 1  # refused once, not re-verified on every query
    publish_niche(tmp_path / "pub", "tech", vectors, [f"good{i}" for i in range(N)], snapshot="2026-11-22")
    assert lib.similar(vectors[0], "tech", k=1)[0]["video_id"] == "good0"


def test_a_fresh_library_refuses_a_corrupt_index_with_a_reason(library, tmp_path):
    lib, vectors, _ = library
    (tmp_path / "pub" / "tech_ids.npy").write_bytes(b"garbage")
    result = thumbnail_library(tmp_path / "pub").similarity_percentile(vectors[0], "tech")
    assert result.is_default and "tech_ids.npy" in result.reason and "refused" in result.reason


def test_title_vectors_of_older_files_are_skipped_not_fatal(tmp_path):
    import pandas as pd

    from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
    from thumblab_dagster.lib.collections.thumbnails.window import load_window
    from thumblab_dagster.lib.embed.clip import write_embeddings

    layout = DataLayout.at(tmp_path)
    info = {"model": "m", "pretrained": "none", "loaded": False}
    for date, ids, with_titles in [("2026-11-20", ["a", "b", "c"], False), ("2026-11-21", ["c", "d"], True)]:
        frame = pd.DataFrame({"video_id": ids, "title": ids})
        vectors = unit(np.random.default_rng(len(ids)).normal(size=(len(ids), 8)))
        write_embeddings(layout.embeddings("tech", date), frame, vectors, info, vectors if with_titles else None)
    window = load_window(layout, "tech", ["2026-11-20", "2026-11-21"], newest="2026-11-21")
    assert window.ids == ["a", "b", "c", "d"]
    assert window.title_vectors.shape == (2, 8)  # c and d: the rows embedded with their titles


def test_a_load_that_may_pass_later_is_retried_not_refused_for_good(library, tmp_path, monkeypatch):
    import thumblab_dagster.lib.query.library as reference

    lib, vectors, _ = library
    calls = []
    real = reference.load_snapshot

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return real(*args)

    monkeypatch.setattr(reference, "load_snapshot", flaky)
    first = lib.similarity_percentile(vectors[0], "tech")
    assert first.is_default and "Too many open files" in first.reason and "retrying" in first.reason
    assert lib.similarity_percentile(vectors[0], "tech").is_default and len(calls) == 1  # not on every query
    monkeypatch.setattr(reference, "RETRY_TRANSIENT_S", 0.0)
    lib._slot("tech").retry_at.clear()
    assert lib.similarity_percentile(vectors[0], "tech").source == "local" and lib.cache_stats()["refused"] == 0


def test_a_pinned_view_answers_from_its_snapshot_after_a_newer_version_is_published(library, tmp_path):
    lib, vectors, ids = library
    titles = clustered(N, seed=3)
    publish_niche(tmp_path / "pub", "tech", vectors, ids, snapshot="2026-11-21", titles=titles)
    pinned = lib.pinned("tech")
    old = pinned.version
    assert old.startswith("2026-11-21+") and pinned.snapshot is lib.entry("tech")
    smaller = [f"new{i:04d}" for i in range(N // 2)]
    publish_niche(tmp_path / "pub", "tech", vectors[: N // 2], smaller, snapshot="2026-11-22", titles=titles[: N // 2])
    assert lib.similar(vectors[0], "tech", k=1).version.startswith("2026-11-22+")  # the library moved on...

    found, pct, side = pinned.similar(vectors[0], k=3), pinned.similarity_percentile(vectors[0]), \
        pinned.side_percentile(titles[0])
    assert found.version == pct.version == side.version == old  # ...the pinned view did not
    assert found[0]["video_id"] == ids[0] and (pct.reference_count, side.reference_count) == (N, N)
    assert lib.similarity_percentile(vectors[0], "tech").reference_count == N // 2


def test_a_pinned_view_without_a_local_index_goes_down_the_fallback_chain(library):
    lib, vectors, _ = library
    missing, unknown = lib.pinned("gaming"), lib.pinned("cooking")
    assert missing.snapshot is None and missing.version is None
    result = missing.similarity_percentile(vectors[0])
    assert result.is_default and "no index for niche 'gaming'" in result.reason
    assert unknown.similar(vectors[0]) == [] and "unknown niche 'cooking'" in unknown.similar(vectors[0]).reason
    assert unknown.side_percentile(vectors[0]).is_default
    with pytest.raises(ValueError, match="pinned to gaming, not tech"):
        lib.similar(vectors[0], "tech", pinned=missing)
