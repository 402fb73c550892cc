"""The catalogue of aggregation functions: which column kinds each accepts, whether it takes n.

The compiler validates definitions against it (DESIGN §2); the functions themselves are
implemented once, natively (``native/core/src/agg.rs``, ``engine._native``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnKind = Literal["int", "float", "str", "bool", "bytes"]
NUMERIC: frozenset[str] = frozenset({"int", "float"})
ORDERED: frozenset[str] = frozenset({"int", "float", "str"})
ANY: frozenset[str] = frozenset({"int", "float", "str", "bool", "bytes"})


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """What a function accepts: the column kinds, and whether it takes ``n``."""

    kinds: frozenset[str]
    needs_n: bool


FUNCTIONS: dict[str, FunctionSpec] = {
    "count": FunctionSpec(ANY, False),
    "sum": FunctionSpec(NUMERIC, False),
    "mean": FunctionSpec(NUMERIC, False),
    "variance": FunctionSpec(NUMERIC, False),
    "stddev": FunctionSpec(NUMERIC, False),
    "min": FunctionSpec(ORDERED, False),
    "max": FunctionSpec(ORDERED, False),
    "first": FunctionSpec(ANY, False),
    "last": FunctionSpec(ANY, False),
    "first_n": FunctionSpec(ANY, True),
    "last_n": FunctionSpec(ANY, True),
    "count_distinct": FunctionSpec(ANY, False),
    "approx_count_distinct": FunctionSpec(ANY, False),
}
"""Function name → what it accepts; the native core refuses the same combinations."""
