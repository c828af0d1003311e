"""The code location's entry point: every folder under ``defs/`` (autoloaded, one per collection)
plus the shared resources, chosen from the environment (lib/settings.py) or given by a test.

``dagster dev``, ``dg`` and ``workspace.yaml`` load ``defs``; ``build_definitions(resources)``
builds the same thing around other resources. Folders whose shape depends on what is configured
(Supabase, the index upload, the index's source) read the bound resources while they load.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

import thumblab_dagster.defs
from thumblab_dagster.defs.bound import binding
from thumblab_dagster.defs.resources import resources_from_env


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    resources = resources if resources is not None else resources_from_env()
    # The tree from the package itself (not from pyproject.toml's [tool.dg]), so an installed
    # wheel loads as well as the checkout does.
    with binding(resources):
        loaded = dg.ComponentTree.from_module(defs_module=thumblab_dagster.defs,
                                              project_root=Path(__file__).resolve().parent.parent).build_defs()
    return dg.Definitions.merge(loaded, dg.Definitions(resources=resources))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
