"""What a collection tells the query side: the names it serves and what its answers show.

The query layer knows no collection. A collection hands ``ReferenceLibrary`` a ``LibrarySpec``:
the names it accepts, the key each reference's id is reported under, the metadata columns
``similar()`` returns, the columns a percentile may be weighted by, and the word its users call a
name by (it appears in reasons and in one ``cache_stats`` key), and the fewest references a
percentile must be ranked against to be called confident.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from thumblab_dagster.lib.engine.versions import embedding_identity
from thumblab_dagster.lib.settings import SETTING

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # names become file names: no paths


@dataclass(frozen=True)
class SideIndex:
    key: str     # the manifest field describing it: {"vectors": file, "reference": file, ...}
    label: str   # what its vectors are, in reasons: "local <label> vectors <version>"


@dataclass(frozen=True)
class ModelIdentity:
    """How the collection tells embedders apart: a query from another model or other weights than
    the index's is refused. ``identity`` compares, ``describe`` names one in messages."""

    identity: Callable[[Mapping], object] = embedding_identity
    describe: Callable[[Mapping], str] = embedding_identity
    hint: str = "embed the query with the index's model or rebuild the index"


@dataclass(frozen=True)
class LibrarySpec:
    names: tuple[str, ...] = ()       # accepted even before they have an index; listed first
    id_key: str = "id"                # similar() reports each reference's id under this key
    columns: tuple[str, ...] = ()     # metadata similar() returns, in this order (None where absent)
    weightings: tuple[str, ...] = ()  # metadata columns a percentile may be weighted by (log1p)
    noun: str = "name"                # what a user calls a name: "unknown <noun> 'x'"
    plural: str = field(default="")   # default: noun + "s"
    missing_hint: str = "build and publish its index"  # what to do when a declared name has no index
    side: SideIndex | None = None     # the side index side_percentile() uses (None: no side index)
    model: ModelIdentity = ModelIdentity()
    # a percentile ranked against fewer references is flagged not confident (THUMBLAB_MIN_REFERENCES)
    min_references: int = SETTING["min_references"].default

    def __post_init__(self):
        for attribute in ("names", "columns", "weightings"):  # lists from callers; the spec stays hashable
            object.__setattr__(self, attribute, tuple(getattr(self, attribute)))
        if not self.plural:
            object.__setattr__(self, "plural", f"{self.noun}s")
        if isinstance(self.min_references, bool) or not isinstance(self.min_references, int) \
                or self.min_references < 1:
            raise ValueError(f"min_references must be a whole number of at least 1, got {self.min_references!r}")

    def unknown(self, name, known: list[str]) -> str:
        return f"unknown {self.noun} {name!r}: known {self.plural} are {', '.join(known) or 'none yet'}"

    def missing(self, name: str) -> str:
        return f"no index for {self.noun} {name!r} ({self.missing_hint})"

    def not_confident(self, references: int | None) -> str | None:
        """Why a percentile ranked against ``references`` is not confident, or None when it is (or unknown)."""
        if references is None or references >= self.min_references:
            return None
        noun = "reference" if references == 1 else "references"
        return f"only {references} {noun} (fewer than {self.min_references}): the percentile is not confident"

    def check_weight(self, weight: str | None) -> None:
        """Refuse a weighting this collection does not declare (the caller's mistake, so it raises)."""
        if weight is not None and weight not in self.weightings:
            allowed = f"one of {', '.join(self.weightings)} or none" if self.weightings else "none (no weightings here)"
            raise ValueError(f"unknown weight {weight!r}: use {allowed}")
