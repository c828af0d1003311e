"""Metadata the way the Dagster UI shows it best: row counts, column schemas, timestamps, paths."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"


def _type_name(arrow_type: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(arrow_type):
        return f"vector[{arrow_type.list_size}] {arrow_type.value_type}"
    return str(arrow_type)


def parquet_metadata(path: str | os.PathLike, descriptions: dict[str, str] | None = None) -> dict[str, Any]:
    """Row count, column schema and path of a parquet file (read from its footer only)."""
    file = pq.ParquetFile(path)
    descriptions = descriptions or {}
    schema = dg.TableSchema(columns=[dg.TableColumn(f.name, _type_name(f.type), description=descriptions.get(f.name))
                                     for f in file.schema_arrow])
    return {ROW_COUNT: dg.MetadataValue.int(file.metadata.num_rows),
            COLUMN_SCHEMA: dg.MetadataValue.table_schema(schema),
            "path": dg.MetadataValue.path(str(Path(path)))}


def timestamp(value: str | datetime | float | None) -> dg.MetadataValue | str:
    """An ISO time, datetime or epoch seconds as a timestamp the UI renders in the viewer's zone."""
    if value is None:
        return "none"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        value = value.timestamp()
    return dg.MetadataValue.timestamp(float(value))


def rounded(value: float | None, digits: int = 4) -> dg.MetadataValue | str:
    return "none" if value is None else dg.MetadataValue.float(round(float(value), digits))


def search_quality(stats: dict, path: str | os.PathLike) -> dict[str, Any]:
    """The engine's index stats every collection shows alike: latency, self-retrieval, neighbour similarity."""
    return {
        "latency_ms_p50": rounded(stats["latency_ms_p50"], 3),
        "latency_ms_p99": rounded(stats["latency_ms_p99"], 3),
        "self_retrieval_rate": rounded(stats["self_retrieval_rate"]),
        "nn_similarity_quantiles": dg.MetadataValue.json({k: round(v, 4) for k, v in
                                                          stats["nn_similarity_quantiles"].items()}),
        "path": dg.MetadataValue.path(str(path)),
    }
