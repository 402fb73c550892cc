"""The native core's fed (transformed) columns: a list of only str, only int or only float
cells (and None) is taken as a typed column, any other as a value per cell. Both must give
the same entities, inputs and so the same writes, byte for byte."""

from __future__ import annotations

from array import array
from typing import Any

import pytest

from engine import _native

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR

# one group (join key "k"; inputs "i", "f", "s"), one view per input kind
_VIEWS = [
    ("v_int", [("sum", "int", None, HOUR, HOUR), ("max", "int", None, None, None),
               ("last", "int", None, None, None)], 0, [0, 0, 0], None),
    ("v_float", [("sum", "float", None, HOUR, HOUR), ("min", "float", None, None, None),
                 ("mean", "float", None, None, None)], 0, [1, 1, 1], None),
    ("v_str", [("count_distinct", "str", None, None, None), ("last_n", "str", 3, None, None),
               ("count", "str", None, HOUR, HOUR)], 0, [2, 2, 2], None),
]  # fmt: skip


def _writes(keys: list[Any], ints: list[Any], floats: list[Any], strs: list[Any]) -> Any:
    core = _native.OnlineCore(_VIEWS, [(["k"], ["i", "f", "s"])], 10_000)
    n = len(keys)
    missing = core.prepare(
        array("q", [i % 3 for i in range(n)]).tobytes(),
        array("q", range(100, 100 + n)).tobytes(),
        array("q", [T0 + 60_000 * (i % 90) for i in range(n)]).tobytes(),
        None,
        {0: ([keys], [ints, floats, strs])},
    )
    core.load([(view, partition, entity, {}) for _, view, partition, entity in missing])
    raw, applied, late, fenced, newest, recovered = core.apply(0)
    bodies = [body for *_, body in raw.script_chunks(1_000)]
    return raw.to_list(), bodies, applied, late, fenced, newest, recovered


def _rows(n: int) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    keys: list[Any] = [None if i % 11 == 5 else f"c{i % 7}" for i in range(n)]
    ints: list[Any] = [None if i % 5 == 1 else (i * 7919) % 1000 - 400 for i in range(n)]
    ints[3] = 2**63 - 1
    ints[4] = -(2**63)
    floats: list[Any] = [None if i % 4 == 2 else (i * 0.37) - 5.5 for i in range(n)]
    strs: list[Any] = [None if i % 6 == 3 else f"s{(i * 13) % 9}é" for i in range(n)]
    return keys, ints, floats, strs


@pytest.mark.parametrize("odd", [b"x", True, [1], 2**63])
def test_typed_and_per_cell_fed_columns_write_the_same_bytes(odd: Any) -> None:
    """An extra last row whose key is null leaves the columns typed; the same row with a
    cell of another kind in every column (its key one no entity takes: bytes, bool, a
    list, an int past int64) makes each column a value per cell. The row has no entity
    either way, so every write must be identical."""
    keys, ints, floats, strs = _rows(120)
    typed = _writes([*keys, None], [*ints, None], [*floats, None], [*strs, None])
    per_cell = _writes([*keys, odd], [*ints, odd], [*floats, odd], [*strs, odd])
    assert typed[0], "the batch wrote nothing"
    assert typed == per_cell


def test_an_int_past_int64_among_ints_reads_as_null() -> None:
    """``scalar`` reads an int beyond int64 as null: the typed int path must not take
    (or wrap) it, so the column gives what a null in its place gives."""
    keys, ints, floats, strs = _rows(40)
    big = [*ints]
    big[7] = 2**64 + 5
    nulled = [*ints]
    nulled[7] = None
    assert _writes(keys, big, floats, strs) == _writes(keys, nulled, floats, strs)
    assert _writes(keys, big, floats, strs) != _writes(keys, ints, floats, strs)
