"""The typed manifest: what writers produce, what readers refuse, and the dict access old code uses."""

import json

import pandas as pd
import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.manifest import Manifest, read_manifest
from thumblab_dagster.lib.engine.validate import validate_index_dir
from thumblab_dagster_tests.engine.vectors import flat, unit


@pytest.fixture
def index_dir(tmp_path):
    ids = [f"v{i}" for i in range(30)]
    vi.write_index_dir(tmp_path / "i", flat(unit(30)), ids, factory="Flat", metric="inner_product",
                       metadata=pd.DataFrame({"item_id": ids}), id_column="item_id",
                       extra={"snapshot": "2026-11-01", "shelf": {"colour": "blue"}})
    return tmp_path / "i"


def edit(directory, change):
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


MALFORMED = {
    "not JSON": (lambda p: p.write_text("{not json"), r"is not valid JSON"),
    "not an object": (lambda p: p.write_text("[1, 2]"), r"is not a JSON object"),
    "another format version": (lambda d: d.update(format_version=2), r"has format_version 2; this reader understands 1"),
    "missing ntotal": (lambda d: d.pop("ntotal"), r"ntotal: Field required"),
    "ntotal 'ten'": (lambda d: d.update(ntotal="ten"), r"ntotal: Input should be a valid integer.*'ten'"),
    "negative dim": (lambda d: d.update(dim=-1), r"dim: Input should be greater than or equal to 0"),
    "unknown metric": (lambda d: d.update(metric="cosine"), r"metric: Input should be 'inner_product' or 'l2'"),
    "empty files table": (lambda d: d.update(files={}), r"files: is empty: a manifest must cover at least its index"),
    "files entry without sha256": (lambda d: d["files"]["index.faiss"].pop("sha256"),
                                   r"files\.index\.faiss\.sha256: Field required"),
    "files entry with a short sha256": (lambda d: d["files"]["index.faiss"].update(sha256="abc"),
                                        r"files\.index\.faiss\.sha256: String should match pattern"),
    "a file outside the directory": (lambda d: d["files"].update({"../secret": d["files"]["ids.npy"]}),
                                     r"'\.\./secret' is not a plain file name"),
    "ids file not covered": (lambda d: d["files"].pop("ids.npy"), r"ids names 'ids\.npy', which the files table does not"),
    "unknown ids kind": (lambda d: d.update(ids={"kind": "uuids", "file": "ids.npy"}), r"ids\.kind: Input should be"),
    "position ids with a file": (lambda d: d.update(ids={"kind": "positions", "file": "ids.npy"}),
                                 r"position ids \(row i is id i\) have no file"),
    "reference file not covered": (lambda d: d.update(reference_scores={"file": "ref.npy", "k": 10}),
                                   r"reference_scores names 'ref\.npy', which the files table does not cover"),
    "reference k zero": (lambda d: d.update(reference_scores={"file": "ids.npy", "k": 0}),
                         r"reference_scores\.k: Input should be greater than or equal to 1"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_manifests_are_refused_with_a_reason_naming_file_and_field(index_dir, case):
    change, reason = MALFORMED[case]
    path = index_dir / "manifest.json"
    if case in ("not JSON", "not an object"):
        change(path)
    else:
        edit(index_dir, change)
    with pytest.raises(vi.IndexIntegrityError, match=reason) as refused:
        read_manifest(index_dir)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)  # one line, naming the file
    with pytest.raises(vi.IndexIntegrityError, match=reason):
        vi.load_index_dir(index_dir)  # never faiss, never an AttributeError or KeyError
    report = validate_index_dir(index_dir)
    assert not report.passed and len(report.problems) == 1


def test_the_model_reads_like_the_dict_it_replaces(index_dir):
    manifest = read_manifest(index_dir)
    on_disk = json.loads((index_dir / "manifest.json").read_text())
    assert manifest.model_dump(mode="json") == on_disk == manifest.to_json()
    assert manifest.ntotal == manifest["ntotal"] == manifest.get("ntotal") == 30
    assert manifest["files"]["ids.npy"]["bytes"] == manifest.files["ids.npy"].bytes
    assert manifest.get("snapshot") == manifest.snapshot == "2026-11-01"        # a typed field
    assert manifest["shelf"] == {"colour": "blue"} and "shelf" in manifest       # a collection's own field
    assert manifest.get("version") is None and manifest.get("version", "none") == "none"
    assert "version" not in manifest and "version" not in on_disk              # absent, not null
    with pytest.raises(KeyError):
        manifest["nothing"]
    assert set(manifest.keys()) == set(on_disk) and {**manifest}.keys() == on_disk.keys()
    assert manifest.ids.kind == "strings" and manifest.id_column == "item_id"


def test_manifests_written_before_the_model_still_load(index_dir):
    edit(index_dir, lambda d: (d.pop("ids"), d.pop("id_column")))  # what older writers wrote
    manifest = read_manifest(index_dir)
    assert manifest.ids.kind == "strings" and manifest.ids.file == "ids.npy"
    assert vi.load_index_dir(index_dir).ids.tolist() == [f"v{i}" for i in range(30)]
    unchecked = validate_index_dir(index_dir)  # no id column known: says so rather than passing in silence
    assert unchecked.passed and unchecked.metrics["id_column"] == "unknown (positions not compared with metadata)"
    assert "positions_checked" not in unchecked.metrics
    checked = validate_index_dir(index_dir, id_column="item_id")  # the caller knows the collection's column
    assert checked.passed and checked.metrics["positions_checked"] == 30


def test_updated_copies_are_validated_too(index_dir):
    manifest = read_manifest(index_dir)
    assert manifest.updated(snapshot="2026-11-02").snapshot == "2026-11-02"
    with pytest.raises(vi.IndexIntegrityError, match="ntotal"):
        manifest.updated(ntotal="ten")
    assert isinstance(Manifest.model_validate(manifest.to_json()), Manifest)


def test_a_library_keeps_serving_when_a_new_published_manifest_is_malformed(tmp_path, caplog):
    from thumblab_dagster.lib.query import LibrarySpec, ReferenceLibrary

    vectors, ids = unit(60, d=16, seed=4), [f"t{i}" for i in range(60)]
    build = tmp_path / "build"
    vi.write_index_dir(build, flat(vectors), ids, factory="Flat", metric="inner_product")
    assert publishing.publish(build, tmp_path / "pub", "main", "2026-11-01").published
    library = ReferenceLibrary(tmp_path / "pub", LibrarySpec(names=("main",), id_key="item_id"))
    before = library.similar(vectors[3], "main", k=1)
    assert before.source == "local" and before[0]["item_id"] == "t3"
    published = tmp_path / "pub" / "main_manifest.json"
    data = json.loads(published.read_text())
    published.write_text(json.dumps({**data, "ntotal": "sixty", "snapshot": "2026-11-02"}))
    after = library.similar(vectors[3], "main", k=1)
    assert after.source == "local" and after.version == before.version and after[0]["item_id"] == "t3"
    assert "ntotal" in caplog.text
