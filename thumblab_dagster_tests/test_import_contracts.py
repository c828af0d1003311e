"""The house's import contracts (DESIGN.md, "Rules of the house"), checked on the source itself.

- lib/ is plain Python: it never imports dagster, nor the Dagster side (defs, definitions, demo),
  the CLI or the service.
- lib/engine, lib/query, lib/embed and lib/stores serve every collection: they import nothing
  from lib/collections.
- lib/engine and lib/query know no collection's words: a collection passes its id column, the
  metadata it shows, its weightings and its names; nor any embedder (the engine's own leak was
  CLIP's weight identity): a collection passes how its embedders are told apart.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import thumblab_dagster

PACKAGE = Path(thumblab_dagster.__file__).parent
LIB = PACKAGE / "lib"
SHARED = ["engine", "query", "embed", "stores"]
GENERIC = ["engine", "query"]
COLLECTION_WORDS = ["video_id", "niche", "views_per_hour", "pixel", "track", "tempo", "playlist", "brand", "catalogue"]
NOT_FROM_LIB = ["dagster", "thumblab_dagster.defs", "thumblab_dagster.definitions", "thumblab_dagster.demo",
                "thumblab_dagster.cli", "thumblab_dagster.service"]


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, absolute (relative imports resolved against its package)."""
    inside = path.is_relative_to(PACKAGE.parent)
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]) if inside else ""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def offending(folder: Path, forbidden: list[str]) -> list[str]:
    return [f"{path.relative_to(folder.parent)} imports {name}"
            for path in sorted(folder.rglob("*.py")) for name in imported_modules(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_lib_never_imports_dagster_the_cli_or_the_service():
    assert offending(LIB, NOT_FROM_LIB) == []


@pytest.mark.parametrize("part", SHARED)
def test_shared_parts_import_nothing_from_collections(part):
    assert offending(LIB / part, ["thumblab_dagster.lib.collections"]) == []


@pytest.mark.parametrize("part", GENERIC)
def test_engine_and_query_import_no_embedder(part):
    assert offending(LIB / part, ["thumblab_dagster.lib.embed", "open_clip", "torch"]) == []


@pytest.mark.parametrize("part", GENERIC)
def test_engine_and_query_know_no_collection_words(part):
    found = [f"{path.relative_to(PACKAGE.parent)}:{number}: {word}"
             for path in sorted((LIB / part).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), start=1)
             for word in COLLECTION_WORDS if word in line.lower()]
    assert found == []


def test_importing_all_of_lib_does_not_load_dagster():
    modules = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in LIB.rglob("*.py"))
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_checker_sees_a_violation(tmp_path):
    # the AST walk is what the contracts rest on: prove it catches both import forms
    probe = tmp_path / "engine"
    probe.mkdir()
    (probe / "probe.py").write_text("import dagster.x\nfrom thumblab_dagster.lib.collections.thumbnails import niches\n")
    assert offending(probe, ["dagster"]) == ["engine/probe.py imports dagster.x"]
    assert offending(probe, ["thumblab_dagster.lib.collections"])
