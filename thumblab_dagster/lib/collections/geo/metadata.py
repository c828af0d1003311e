"""A viewport's ``metadata.json`` (the plan's keys and ours) and its viewport id.

The plan's keys, exactly: ``viewport_id``, ``mosaic_file`` (the GeoTIFF's file name),
``num_total_pixels`` (height * width, nodata included), ``num_sampled_pixels`` (rows of the
sampled index), ``sampling_factor``, ``embedding_dim``, ``pixel_size_meters``, ``mosaic_height``,
``mosaic_width``, ``geotransform`` (GDAL order ``[c, a, b, f, d, e]``), ``crs`` (``EPSG:<code>``
or WKT) and ``faiss_index_type`` (the factory string; null until an index is built). Ours:
``mosaic_fingerprint`` and ``fingerprint_method``, ``source_dtype``, ``storage_dtype`` (uint8),
``dequantisation`` (``x = code * scale + offset``, one scale and offset per band),
``nodata_pixels``, ``valid_pixels``, ``nodata_rule``, ``sample_grid`` (which pixels the index
holds), ``files`` (what the store wrote) and ``build_settings`` (what ``unchanged`` compares).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from thumblab_dagster.lib.engine.files import write_json_atomic

METADATA_FILE = "metadata.json"
PLAN_KEYS = ("viewport_id", "mosaic_file", "num_total_pixels", "num_sampled_pixels", "sampling_factor",
             "embedding_dim", "pixel_size_meters", "mosaic_height", "mosaic_width", "geotransform", "crs",
             "faiss_index_type")
OUR_KEYS = ("mosaic_fingerprint", "fingerprint_method", "source_dtype", "storage_dtype", "dequantisation",
            "nodata_pixels", "valid_pixels", "nodata_rule", "sample_grid", "files", "build_settings")
VIEWPORT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MOSAIC_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")


class MetadataError(ValueError):
    """A metadata.json that is missing, unreadable or lacks keys."""


def check_viewport_id(value, what: str = "viewport id") -> str:
    """A viewport id is a safe file and partition name: letters, digits, '.', '_', '-' (up to 128), no '..'."""
    if not isinstance(value, str) or not VIEWPORT_ID.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a safe name: use letters, digits, '.', '_' and '-' "
                         "(up to 128, starting with a letter or digit, no '..')")
    return value


def viewport_id_from(path: str | os.PathLike) -> str:
    """The viewport id of a mosaic: ``{"viewport_id": ...}`` in a sidecar ``<name>.json`` beside it,
    else the file name without its suffix (``viewport_13.0039_77.5566.tif`` -> ``viewport_13.0039_77.5566``)."""
    path = Path(path)
    stem = path.name[:-len(path.suffix)] if path.suffix in MOSAIC_SUFFIXES else path.name
    sidecar = path.with_name(f"{stem}.json")
    if sidecar.is_file():
        try:
            value = json.loads(sidecar.read_text(encoding="utf-8"))["viewport_id"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{sidecar}: a mosaic sidecar must be JSON like {{\"viewport_id\": \"viewport_1\"}}: "
                             "fix or remove it") from None
        return check_viewport_id(value, f"{sidecar}: viewport id")
    return check_viewport_id(stem, f"{path}: viewport id from the file name")


def plan_metadata(*, viewport_id: str, mosaic_file: str, height: int, width: int, bands: int, geotransform,
                  crs: str, pixel_size_meters: float, sampling_factor: int, num_sampled_pixels: int,
                  faiss_index_type: str | None, **ours) -> dict:
    """The metadata dict: the plan's keys, then ours (``OUR_KEYS``, all required); the file is
    written with sorted keys, as every manifest."""
    missing = sorted(set(OUR_KEYS) - set(ours))
    unknown = sorted(set(ours) - set(OUR_KEYS))
    if missing or unknown:
        raise TypeError(f"plan_metadata needs exactly {list(OUR_KEYS)} besides the plan's keys; "
                        f"missing {missing}, unknown {unknown}")
    plan = {"viewport_id": check_viewport_id(viewport_id), "mosaic_file": str(mosaic_file),
            "num_total_pixels": int(height) * int(width), "num_sampled_pixels": int(num_sampled_pixels),
            "sampling_factor": int(sampling_factor), "embedding_dim": int(bands),
            "pixel_size_meters": round(float(pixel_size_meters), 6), "mosaic_height": int(height),
            "mosaic_width": int(width), "geotransform": [float(v) for v in geotransform], "crs": str(crs),
            "faiss_index_type": faiss_index_type}
    return {**plan, **{key: ours[key] for key in OUR_KEYS}}


def write_metadata(directory: str | os.PathLike, metadata: dict) -> Path:
    """Write ``metadata.json`` atomically (indented, keys sorted, as every manifest)."""
    _check_keys(metadata, Path(directory) / METADATA_FILE)
    return write_json_atomic(Path(directory) / METADATA_FILE, metadata)


def with_index_type(directory: str | os.PathLike, faiss_index_type: str, num_sampled_pixels: int | None = None) -> dict:
    """Record the built index's factory string (and sample count) in a store's metadata.json."""
    metadata = read_metadata(directory)
    metadata["faiss_index_type"] = faiss_index_type
    if num_sampled_pixels is not None:
        metadata["num_sampled_pixels"] = int(num_sampled_pixels)
    write_metadata(directory, metadata)
    return metadata


def read_metadata(directory: str | os.PathLike) -> dict:
    path = Path(directory) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetadataError(f"{path} is missing: build the viewport's pixel store first") from None
    except (OSError, ValueError) as exc:
        raise MetadataError(f"{path} is not readable JSON ({exc}): rebuild the viewport") from None
    _check_keys(metadata, path)
    return metadata


def _check_keys(metadata, path: Path) -> None:
    if not isinstance(metadata, dict):
        raise MetadataError(f"{path} must hold a JSON object: rebuild the viewport")
    missing = [key for key in (*PLAN_KEYS, *OUR_KEYS) if key not in metadata]
    if missing:
        raise MetadataError(f"{path} lacks {', '.join(missing)}: rebuild the viewport")


def unchanged(metadata: dict | None, fingerprint: str, build_settings: dict) -> bool:
    """True when published ``metadata`` came from this very mosaic (fingerprint) built the same way
    (``build_settings`` compared as JSON): the build can be skipped."""
    if not metadata:
        return False
    same_settings = json.dumps(metadata.get("build_settings"), sort_keys=True) == json.dumps(build_settings, sort_keys=True)
    return metadata.get("mosaic_fingerprint") == fingerprint and same_settings
