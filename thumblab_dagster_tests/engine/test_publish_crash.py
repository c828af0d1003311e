"""kill -9 at every file operation of a publish and of an index-directory swap.

A child process (``sys.executable -c``) imports the engine once, then forks one worker per
attempt; the worker patches the file operations (``os.replace``, ``os.rename``, ``os.link``,
``os.symlink``, ``os.mkdir``, ``os.unlink``, ``os.rmdir``, ``shutil.copyfile`` and the files
module's ``exchange``) to count them and SIGKILLs itself just before the k-th. Nothing in the
product knows about it. After each kill a fresh reader, a running reader and the flat-file reader
look at what is on disk; then the operation runs again and must leave no leftovers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.files import clean_dir_leftovers
from thumblab_dagster.lib.query import LibrarySpec, ReferenceLibrary
from thumblab_dagster_tests.engine.vectors import write_small_index

N, D = 64, 8
NAME = "main"
V1, V2 = ("one", "2026-11-01"), ("two", "2026-11-02")  # (id prefix, snapshot)

CHILD = r"""
import json, os, shutil, signal, sys
import numpy as np, faiss, pandas as pd
from thumblab_dagster.lib.engine import files, index_dir as vi, publish as publishing

def write_version(target, prefix, seed, n, d):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    index = faiss.IndexFlatIP(d)
    index.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    ids = [f"{prefix}-{i}" for i in range(n)]
    vi.write_index_dir(target, index, ids, factory="Flat", metric="inner_product",
                       metadata=pd.DataFrame({"item_id": ids}), id_column="item_id")

def run(request, out):
    count = [0]
    def counted(name, real):
        def op(*args, **kwargs):
            count[0] += 1
            os.write(out, (json.dumps([count[0], name, [str(a) for a in args]]) + "\n").encode())
            if count[0] == request["kill_at"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return op
    for name in ("replace", "rename", "link", "symlink", "mkdir", "unlink", "rmdir"):
        setattr(os, name, counted("os." + name, getattr(os, name)))
    shutil.copyfile = counted("shutil.copyfile", shutil.copyfile)
    exchange = (lambda a, b: False) if request.get("no_exchange") else files.exchange
    files.exchange = counted("exchange", exchange)
    if request["action"] == "publish":
        publishing.publish(request["source"], request["root"], request["name"], request["snapshot"])
    else:
        write_version(request["target"], request["prefix"], request["seed"], request["n"], request["d"])

for line in sys.stdin:
    request = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            run(request, w)
            code = 0
        except BaseException as exc:
            os.write(w, (json.dumps([0, "error", [repr(exc)]]) + "\n").encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        log = [json.loads(entry) for entry in fh.read().decode().splitlines()]
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"killed": killed, "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                      "log": log}), flush=True)
"""


class Killer:
    """The forking child: ``attempt(request, kill_at)`` runs one operation, killed before op ``kill_at``."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=Path(__file__).resolve().parents[2])

    def attempt(self, request: dict, kill_at: int | None = None) -> dict:
        self.process.stdin.write(json.dumps({**request, "kill_at": kill_at}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the crash child died"
        answer = json.loads(line)
        errors = [entry for entry in answer["log"] if entry[1] == "error"]
        assert not errors, errors
        return answer

    def operations(self, request: dict) -> list:
        """Every file operation of an uninterrupted run (it must succeed)."""
        answer = self.attempt(request)
        assert not answer["killed"] and answer["exit"] == 0
        return answer["log"]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def killer():
    child = Killer()
    yield child
    child.close()


def build(target: Path, version: tuple[str, str], seed: int) -> Path:
    return write_small_index(target, version[0], seed, N, D)


def which(ids, snapshot: str | None = None) -> tuple[str, str]:
    """The version a loaded copy is, checking it is one whole version: every id, the snapshot."""
    prefixes = {str(i).split("-")[0] for i in list(ids)}
    assert len(prefixes) == 1 and len(ids) == N, f"a mix of versions: {sorted(prefixes)}"
    version = {V1[0]: V1, V2[0]: V2}[prefixes.pop()]
    assert snapshot in (None, version[1]), f"ids of {version} under the manifest of {snapshot}"
    return version


def library(root: Path) -> ReferenceLibrary:
    return ReferenceLibrary(root, LibrarySpec(names=(NAME,), id_key="item_id"))


def served(lib: ReferenceLibrary) -> tuple[str, str]:
    entry = lib.entry(NAME)  # IndexUnavailable here would be "nothing": a failure
    return which(entry.index.ids, entry.manifest.snapshot)


def leftovers(root: Path) -> list[str]:
    """What a publish should not leave: temp files, staged dirs, versions but the current and previous."""
    store = publishing.versions_dir(root, NAME)
    found = [p.name for p in root.iterdir() if p.name.endswith(".tmp") or ".old-" in p.name]
    entries = sorted(p.name for p in store.iterdir())
    versions = [e for e in entries if e.startswith("v")]
    found += [e for e in entries if e != publishing.CURRENT and not e.startswith("v")]
    found += versions[:-2]
    return found


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    where = tmp_path_factory.mktemp("sources")
    one, two = build(where / "one", V1, seed=1), build(where / "two", V2, seed=2)
    pristine = {}
    for layout in ("versioned", "flat only"):
        root = where / layout.replace(" ", "_")
        assert publishing.publish(one, root, NAME, V1[1]).published
        if layout == "flat only":  # as an earlier release left it: no .versions
            shutil.rmtree(root / publishing.VERSIONS_DIR)
        pristine[layout] = root
    return one, two, pristine


@pytest.mark.parametrize("layout", ["versioned", "flat only"])
def test_a_publish_killed_at_any_file_operation_leaves_a_whole_version_and_the_next_cleans_up(
        killer, sources, tmp_path, layout):
    one, two, pristine = sources
    request = {"action": "publish", "source": str(two), "name": NAME, "snapshot": V2[1]}
    probe = tmp_path / "probe"
    shutil.copytree(pristine[layout], probe, symlinks=True)
    operations = killer.operations({**request, "root": str(probe)})
    assert {op[1] for op in operations} >= {"shutil.copyfile", "os.rename", "os.symlink", "os.replace", "os.link"}
    seen = set()
    for k in range(1, len(operations) + 1):
        root = tmp_path / f"k{k}"
        shutil.copytree(pristine[layout], root, symlinks=True)
        running = library(root)
        assert served(running) == V1
        answer = killer.attempt({**request, "root": str(root)}, kill_at=k)
        at = f"killed before {operations[k - 1][1]}{operations[k - 1][2]} (operation {k} of {len(operations)})"
        assert answer["killed"], at
        # every fresh reader, and the running one, gets one whole version
        fresh = served(library(root))
        loaded = publishing.load_published(root, NAME)
        assert which(loaded.ids, loaded.manifest.snapshot) == fresh, at
        assert served(running) == fresh, at
        seen.add(fresh[1])
        # the flat files: a whole version, or a mix that their manifest refuses
        try:
            flat = publishing.load_published(root, NAME, flat=True)
            which(flat.ids, flat.manifest.snapshot)
        except vi.IndexIntegrityError:
            pass
        # the next publish cleans up and serves version 2 everywhere
        assert publishing.publish(two, root, NAME, V2[1]).published, at
        assert leftovers(root) == [], at
        assert served(library(root)) == served(running) == V2, at
        flat = publishing.load_published(root, NAME, flat=True)
        assert which(flat.ids, flat.manifest.snapshot) == V2, at
        shutil.rmtree(root)
    assert seen == {V1[1], V2[1]}  # the kills fell both before and after the switch


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "no exchange"])
def test_an_index_directory_swap_killed_at_any_file_operation(killer, tmp_path, exchange):
    """With an atomic exchange the directory is never missing; without one (other filesystems) a kill
    between the two renames leaves it moved aside, and the next build of it puts it back first."""
    pristine = build(tmp_path / "pristine" / "2026-11-21", V1, seed=1)
    request = {"action": "build", "prefix": V2[0], "seed": 2, "n": N, "d": D, "no_exchange": not exchange}
    probe = tmp_path / "probe" / "2026-11-21"
    shutil.copytree(pristine, probe)
    operations = killer.operations({**request, "target": str(probe)})
    assert vi.load_index_dir(probe).ids[0] == "two-0"
    seen = set()
    for k in range(1, len(operations) + 1):
        target = tmp_path / f"k{k}" / "2026-11-21"
        shutil.copytree(pristine, target)
        answer = killer.attempt({**request, "target": str(target)}, kill_at=k)
        at = f"killed before {operations[k - 1][1]}{operations[k - 1][2]} (operation {k} of {len(operations)})"
        assert answer["killed"], at
        if not exchange:
            clean_dir_leftovers(target)  # what the next build does first
        seen.add(which(vi.load_index_dir(target).ids))  # never missing, never a mix
        build(target, V2, seed=2)
        assert sorted(p.name for p in target.parent.iterdir()) == ["2026-11-21"], at
        assert which(vi.load_index_dir(target).ids) == V2
        shutil.rmtree(target.parent)
    assert seen == {V1, V2}


def test_the_crash_child_really_kills(killer, tmp_path):
    target = tmp_path / "d"
    answer = killer.attempt({"action": "build", "target": str(target), "prefix": "one", "seed": 1, "n": N, "d": D},
                            kill_at=1)
    assert answer["killed"] and len(answer["log"]) == 1 and not target.exists()
