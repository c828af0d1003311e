"""Partitions of the geo assets: one dynamic partition per viewport (a mosaic), defined once."""

from __future__ import annotations

import dagster as dg

GROUP = "geo"
OWNERS = ["team:thumblab"]
TAGS = {"collection": "geo"}
VIEWPORTS = "viewports"

# Added by the viewport_mosaics sensor or `thumblab geo add`, never by hand-editing state.
viewport_partitions = dg.DynamicPartitionsDefinition(name=VIEWPORTS)
