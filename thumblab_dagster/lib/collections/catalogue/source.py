"""Where a catalogue's products come from: a Supabase table, a local CSV or parquet file, or the bundled sample.

Whatever the source, ``read_products`` returns one frame shape: ``id``, ``image_url``, ``brand`` (text) first,
then every other column as given (kept as metadata), one row per product with unique, non-empty ids. A
source that cannot give that is one ``CatalogueSourceError`` line naming it and what to do.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue
from thumblab_dagster.lib.settings import SETTING

REQUIRED = ("id", "image_url", "brand")
SAMPLE, SUPABASE = "sample", "supabase"
FILE_KINDS = {".csv": "csv", ".parquet": "parquet"}
DEFAULT_SOURCE = SETTING["catalogue_source"].default  # declared in lib/settings.py
DEFAULT_TABLE = SETTING["catalogue_table"].default
SAMPLE_SIZE = 300
_USE = "use a .csv or .parquet file, supabase or sample"


class CatalogueSourceError(ValueError):
    """The products cannot be read or are not a catalogue; the message is one line saying what to do."""


def source_kind(source: str) -> str:
    """``sample``, ``supabase``, ``csv`` or ``parquet`` for a source as the user wrote it, or the error line."""
    text = str(source or "").strip()
    if text.lower() in (SAMPLE, SUPABASE):
        return text.lower()
    kind = FILE_KINDS.get(Path(text).suffix.lower())
    if kind is None:
        raise CatalogueSourceError(f"products source {text!r} is not one we read: {_USE}")
    return kind


def describe_source(source: str, table: str = DEFAULT_TABLE) -> str:
    """The source in words, for messages and metadata (never a credential: file paths and table names only)."""
    kind = source_kind(source)
    if kind == SAMPLE:
        return "the sample catalogue"
    if kind == SUPABASE:
        return f"Supabase table {table!r}"
    return f"products file {str(source).strip()}"


def read_products(source: str = DEFAULT_SOURCE, *, table: str = DEFAULT_TABLE, supabase=None,
                  sample_size: int = SAMPLE_SIZE) -> pd.DataFrame:
    """The products of ``source``: a ``.csv``/``.parquet`` path, ``supabase`` or ``sample``.

    ``supabase`` (for ``source="supabase"``) is a store with ``table_rows`` (``SqlStore`` over the DB URL,
    ``RestStore`` over the REST gateway) or settings with ``store()`` choosing one (the thumbnails'
    ``SupabaseSettings``: the DB URL when set, else URL + key). ``sample`` draws ``sample_size`` products.
    """
    kind, what = source_kind(source), describe_source(source, table)
    if kind == SAMPLE:
        raw = sample_catalogue(sample_size)
    elif kind == SUPABASE:
        raw = _read_table(table, supabase, what)
    else:
        raw = _read_file(Path(str(source).strip()), kind, what)
    return normalise_products(raw, what)


def _read_file(path: Path, kind: str, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise CatalogueSourceError(f"{what} does not exist: give an existing .csv or .parquet file")
    try:
        if kind == "csv":
            # ids stay text as written: leading zeros and long numbers are ids, not numbers
            return pd.read_csv(path, dtype={column: str for column in REQUIRED})
        return pd.read_parquet(path)
    except Exception as exc:  # pandas and pyarrow raise many types for a bad file
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CatalogueSourceError(f"{what} is not a readable {kind} file ({type(exc).__name__}"
                                   f"{': ' + reason if reason else ''}): fix or re-export it") from None


def _read_table(table: str, supabase, what: str) -> pd.DataFrame:
    if supabase is None:
        raise CatalogueSourceError(f"{what}: Supabase is not configured: set SUPABASE_DB_URL, or SUPABASE_URL "
                                   "and SUPABASE_KEY")
    try:
        store = supabase if hasattr(supabase, "table_rows") else supabase.store()
        try:
            rows = store.table_rows(table, key="id")
        finally:
            if store is not supabase and hasattr(store, "close"):
                store.close()
    except Exception as exc:  # the stores' errors are free of secrets (RestStoreError, StoreError); one line of it
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CatalogueSourceError(f"cannot read products from {what}: {reason}; check the table "
                                   "(THUMBLAB_CATALOGUE_TABLE) and the Supabase settings") from None
    columns = list(dict.fromkeys(column for row in rows[:1] for column in row)) or list(REQUIRED)
    return pd.DataFrame(rows, columns=columns)


def _text(value) -> str:
    """A cell as text: missing -> "", a whole float (an id read as a number) without its ``.0``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def normalise_products(frame: pd.DataFrame, what: str = "the products") -> pd.DataFrame:
    """``frame`` as a catalogue: REQUIRED columns first, as text; unique non-empty ids; at least one product."""
    missing = [column for column in REQUIRED if column not in frame.columns]
    if missing:
        raise CatalogueSourceError(f"{what} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                                   "a catalogue needs id, image_url and brand (other columns are kept as metadata)")
    if frame.empty:
        raise CatalogueSourceError(f"{what} holds no products: add rows with an id, image_url and brand")
    out = frame.reset_index(drop=True)
    out = out[[*REQUIRED, *[c for c in out.columns if c not in REQUIRED]]].copy()
    for column in REQUIRED:
        out[column] = pd.Series([_text(v) for v in out[column]], dtype=str)
    empty = [i + 1 for i, pid in enumerate(out["id"]) if not pid]
    if empty:
        rows = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise CatalogueSourceError(f"{what}: {len(empty)} product{'s have' if len(empty) > 1 else ' has'} no id "
                                   f"(row{'s' if len(empty) > 1 else ''} {rows}, counting from 1): give every "
                                   "product an id")
    duplicated = out["id"][out["id"].duplicated()].unique().tolist()
    if duplicated:
        shown = ", ".join(map(repr, duplicated[:5])) + (", ..." if len(duplicated) > 5 else "")
        raise CatalogueSourceError(f"{what}: {len(duplicated)} id{'s occur' if len(duplicated) > 1 else ' occurs'} more "
                                   f"than once ({shown}): ids must be unique")
    return out
