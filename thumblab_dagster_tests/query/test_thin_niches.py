"""Thin niches are flagged: a percentile says how many references ranked it, and is not confident below
the minimum (issue 11). Through the library, and through ``thumblab score --json`` as a user runs it."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from thumblab_dagster.cli import main
from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
from thumblab_dagster.lib.collections.thumbnails.scoring import thumbnail_library
from thumblab_dagster.lib.query import LibrarySpec, ReferenceLibrary
from thumblab_dagster_tests.fakes.libraries import clustered, publish_niche

THIN, FULL = 3, 40
NOT_CONFIDENT = "only 3 references (fewer than 30): the percentile is not confident"


def publish(root, niche: str, n: int, d: int = 512, seed: int = 0) -> np.ndarray:
    """``n`` references (and their titles) of the random-init CLIP the CLI loads with THUMBLAB_CLIP_PRETRAINED=none."""
    vectors = clustered(n, d=d, centres=min(n, 5), seed=seed)
    publish_niche(root, niche, vectors, [f"{niche}{i:03d}" for i in range(n)], snapshot="2026-11-20",
                  titles=clustered(n, d=d, centres=min(n, 5), seed=seed + 1))
    return vectors


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """gaming: 3 references over the window (a thin niche); tech: 40."""
    root = tmp_path_factory.mktemp("thin") / "pub"
    return root, publish(root, "gaming", THIN, seed=1), publish(root, "tech", FULL, seed=2)


def test_a_thin_niche_is_not_confident_and_says_how_many_references(published):
    root, gaming, tech = published
    library = thumbnail_library(root)
    thin = library.similarity_percentile(gaming[0], "gaming")
    assert (thin.source, thin.reference_count, thin.confident) == ("local", THIN, False)
    assert thin.reason.startswith("local index 2026-11-20+") and thin.reason.endswith(NOT_CONFIDENT)
    weighted = library.similarity_percentile(gaming[0], "gaming", weight="views_per_hour")
    assert (weighted.reference_count, weighted.confident) == (THIN, False)
    title = library.side_percentile(gaming[0], "gaming")  # the title side index is just as thin
    assert (title.source, title.reference_count, title.confident) == ("local", THIN, False)
    assert title.reason.endswith(NOT_CONFIDENT)
    full = library.similarity_percentile(tech[0], "tech")
    assert (full.source, full.reference_count, full.confident) == ("local", FULL, True)
    assert full.reason == f"local index {full.version}"  # nothing added when there are enough
    assert {k: thin.as_dict("niche")[k] for k in ("niche", "reference_count", "confident", "is_default")} == \
        {"niche": "gaming", "reference_count": THIN, "confident": False, "is_default": False}
    info = library.index_info()
    assert (info["gaming"]["reference_count"], info["tech"]["reference_count"]) == (THIN, FULL)
    assert info["education"]["reference_count"] == 0


def test_the_minimum_is_the_callers_and_a_default_is_never_confident(published):
    root, gaming, tech = published
    lenient = thumbnail_library(root, min_references=3).similarity_percentile(gaming[0], "gaming")
    assert (lenient.reference_count, lenient.confident) == (THIN, True) and "only" not in lenient.reason
    strict = thumbnail_library(root, min_references=41).similarity_percentile(tech[0], "tech")
    assert not strict.confident and strict.reason.endswith(
        "only 40 references (fewer than 41): the percentile is not confident")
    missing = thumbnail_library(root).similarity_percentile(tech[0], "education")
    assert missing.is_default and (missing.reference_count, missing.confident) == (None, False)
    with pytest.raises(ValueError, match="min_references must be a whole number of at least 1, got 0"):
        LibrarySpec(min_references=0)


class CountingRemote:
    """A remote that knows (or not) how many references its percentiles rank against."""

    name = "shared-store"

    def __init__(self, count):
        self.count = count

    def similarity_percentile(self, vector, name, k, weight):
        return 80.0

    def similar(self, vector, name, k):
        return []

    def reference_count(self, name, k):
        if isinstance(self.count, Exception):
            raise self.count
        return self.count


def test_a_remote_answer_carries_the_remotes_sample_size(published):
    root, gaming, _ = published
    spec = LibrarySpec(names=("elsewhere",), noun="collection")
    thin = ReferenceLibrary(root, spec, remote=CountingRemote(12)).similarity_percentile(gaming[0], "elsewhere")
    assert (thin.source, thin.reference_count, thin.confident) == ("remote", 12, False)
    assert thin.reason.endswith("scored by shared-store; only 12 references (fewer than 30): the percentile is "
                                "not confident")
    full = ReferenceLibrary(root, spec, remote=CountingRemote(5000)).similarity_percentile(gaming[0], "elsewhere")
    assert (full.reference_count, full.confident) == (5000, True)
    unknown = ReferenceLibrary(root, spec, remote=CountingRemote(OSError("gone"))).similarity_percentile(
        gaming[0], "elsewhere")
    assert (unknown.source, unknown.percentile, unknown.reference_count) == ("remote", 80.0, None)


def cli_score(root, image, niche: str, *extra):
    env = {"THUMBLAB_CLIP_PRETRAINED": "none", "THUMBLAB_CLIP_DEVICE": "cpu", "SUPABASE_URL": None,
           "SUPABASE_KEY": None, "SUPABASE_DB_URL": None, "THUMBLAB_MIN_REFERENCES": None}
    for pair in extra:
        env.update(pair)
    return CliRunner().invoke(main, ["score", str(image), "--niche", niche, "--root", str(root), "--json"], env=env)


def test_thumblab_score_json_flags_a_thin_niche(published, tmp_path):
    root, _, _ = published
    image = tmp_path / "upload.png"
    render_thumbnail("gaming", "upload").save(image)
    result = cli_score(root, image, "gaming")
    assert result.exit_code == 0, result.output  # answered from an index: flagged, not an error
    scored = json.loads(result.stdout)
    assert (scored["niche"], scored["source"], scored["reference_count"], scored["confident"]) == \
        ("gaming", "local", THIN, False)
    assert scored["reason"].endswith(NOT_CONFIDENT) and scored["is_default"] is False
    full = json.loads(cli_score(root, image, "tech").stdout)
    assert (full["reference_count"], full["confident"]) == (FULL, True)
    # THUMBLAB_MIN_REFERENCES sets the minimum
    lenient = json.loads(cli_score(root, image, "gaming", {"THUMBLAB_MIN_REFERENCES": "3"}).stdout)
    assert (lenient["reference_count"], lenient["confident"]) == (THIN, True)
    bad = cli_score(root, image, "gaming", {"THUMBLAB_MIN_REFERENCES": "0"})
    assert bad.exit_code == 1 and "THUMBLAB_MIN_REFERENCES='0': use a whole number of at least 1" in bad.stderr
