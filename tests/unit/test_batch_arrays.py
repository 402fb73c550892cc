"""A batch transform's result columns reach the native core as pyarrow arrays
(``group_columns``: no Python object per cell) — holding, cell for cell, what the list path
(``group_columns(arrays=False)``) holds as the core reads it: the same entity text, the same
input value (NaN a valid float, None a null), the same drops.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _native
from engine.processing import RowGroup, group_cells, group_columns, user_code_input


def _core_cell(value: Any) -> Any:
    """A list cell as the core reads it (``convert.rs::scalar``): None, bool, int (int64),
    float, str, bytes; anything else is a null."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float):
        return value
    return None


def _cells(column: Any) -> list[Any]:
    if isinstance(column, list):
        return [_core_cell(v) for v in column]
    assert isinstance(column, pa.Array), type(column)
    return [_core_cell(v) for v in column.to_pylist()]


def _texts(column: Any) -> list[str | None]:
    """Entity texts as the core writes them: a str as it is, an int as its decimal."""
    return [None if v is None else str(v) for v in _cells(column)]


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        type(x) is type(y)
        and (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)))
        for x, y in zip(a, b, strict=True)
    )


def _group(fn: Any, join_keys: tuple[str, ...] = ("k",)) -> RowGroup:
    view = SimpleNamespace(batch_transform=fn)
    return RowGroup(None, None, join_keys, ((0, view),), fn)  # type: ignore[arg-type]


def _assert_same(group: RowGroup, names: list[str], payloads: Any) -> tuple[list[Any], list[Any]]:
    try:
        old_keys, old_inputs = group_columns(group, names, payloads, arrays=False)
    except Exception as e:  # the list path's error (a key encode_key cannot write) ...
        with pytest.raises(type(e)):  # ... is the array path's too
            group_columns(group, names, payloads, arrays=True)
        return [], []
    new_keys, new_inputs = group_columns(group, names, payloads, arrays=True)
    assert len(new_keys) == len(old_keys) == 1
    assert _texts(new_keys[0]) == _texts(old_keys[0])
    assert len(new_inputs) == len(old_inputs)
    for new, old in zip(new_inputs, old_inputs, strict=True):
        assert _same(_cells(new), _cells(old)), (_cells(new), _cells(old))
    return new_keys, new_inputs


COLUMN_KINDS = ["float", "float_nan", "int", "int_nan", "bool", "str", "str_nan", "Int64",
                "boolean", "Float64", "datetime", "object_mixed", "float32", "int32", "uint64"]  # fmt: skip


def _column(kind: str, n: int, rng: np.random.Generator) -> Any:
    hole = rng.random(n) < 0.3
    if kind == "float":
        return rng.normal(size=n) * 100
    if kind == "float_nan":
        return np.where(hole, np.nan, rng.normal(size=n))
    if kind == "int":
        return rng.integers(-(2**40), 2**40, size=n)
    if kind == "int_nan":  # ints pandas turned into floats by a NaN
        return [
            None if h else int(v) for h, v in zip(hole, rng.integers(0, 50, size=n), strict=True)
        ]
    if kind == "bool":
        return rng.random(n) < 0.5
    if kind == "str":
        return [f"s{v}" for v in rng.integers(0, 9, size=n)]
    if kind == "str_nan":
        return [
            None if h else f"é{v}" for h, v in zip(hole, rng.integers(0, 9, size=n), strict=True)
        ]
    if kind == "Int64":
        return pd.array(
            [None if h else int(v) for h, v in zip(hole, range(n), strict=True)], dtype="Int64"
        )
    if kind == "boolean":
        return pd.array(
            [None if h else bool(v % 2) for h, v in zip(hole, range(n), strict=True)],
            dtype="boolean",
        )
    if kind == "Float64":
        return pd.array(
            [None if h else v / 3 for h, v in zip(hole, range(n), strict=True)], dtype="Float64"
        )
    if kind == "datetime":
        return pd.to_datetime(rng.integers(0, 2**40, size=n), unit="ms")
    if kind == "object_mixed":
        return pd.array([1, "a", 2.5, None, True][: max(n, 0)] * (n // 5 + 1), dtype=object)[:n]
    if kind == "float32":
        return (rng.normal(size=n)).astype(np.float32)
    if kind == "int32":
        return rng.integers(-1000, 1000, size=n).astype(np.int32)
    if kind == "uint64":
        return rng.integers(0, 2**63, size=n).astype(np.uint64) * np.uint64(2)
    raise AssertionError(kind)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    key_kind=st.sampled_from(["str", "str_nan", "int", "int_nan", "float", "bool", "Int64"]),
    kinds=st.lists(st.sampled_from(COLUMN_KINDS), min_size=1, max_size=5),
    keep=st.sampled_from(["all", "subset", "shuffled", "none", "missing"]),
)
def test_arrays_equal_the_list_path_on_random_frames(
    n: int, seed: int, key_kind: str, kinds: list[str], keep: str
) -> None:
    rng = np.random.default_rng(seed)
    inputs = {f"c{i}": (kind, _column(kind, n, rng)) for i, kind in enumerate(kinds)}
    key = _column(key_kind, n, rng)
    choice = rng.random(n) < 0.6

    def fn(batch: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"k": key}, index=batch.index)
        for name, (_, values) in inputs.items():
            out[name] = values
        if keep == "subset":
            out = out[choice]
        elif keep == "shuffled":
            out = out.iloc[rng.permutation(n)]
        elif keep == "none":
            out = out.iloc[:0]
        elif keep == "missing":
            out = out.drop(columns=[next(iter(inputs))])
        return out

    payloads = [{"x": i} for i in range(n)]
    _assert_same(_group(fn), [*inputs, "absent"], payloads)
    # a pair of join keys: the list path's JSON texts, whatever the columns were
    _assert_same(_group(fn, ("k", "c0")), list(inputs), payloads)


def test_what_goes_as_an_array() -> None:
    """The plain columns cross as arrays (the point of it); the rest stay lists."""
    n = 6

    def fn(batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["f"] = [1.5, np.nan, 2.0, 3.0, 4.0, 5.0]
        out["i"] = np.arange(n)
        out["b"] = out["i"] % 2 == 0
        out["s"] = ["a", "b", "c", "d", "e", "f"]
        out["sn"] = ["a", None, "c", "d", "e", "f"]
        out["n"] = pd.array([1, None, 3, 4, 5, 6], dtype="Int64")
        out["t"] = pd.to_datetime(np.arange(n), unit="s")
        return out[out["i"] != 2]

    payloads = [{"k": f"c{i}"} for i in range(n)]
    names = ["f", "i", "b", "s", "sn", "n", "t"]
    keys, inputs = _assert_same(_group(fn), names, payloads)
    assert isinstance(keys[0], pa.Array) and keys[0].null_count == 1  # the dropped row
    kinds = dict(zip(names, (type(c) for c in inputs), strict=True))
    assert {k for k, t in kinds.items() if issubclass(t, pa.Array)} == {"f", "i", "b", "s"}
    assert _cells(inputs[0])[1] != _cells(inputs[0])[1]  # NaN stays a (valid) NaN
    assert _cells(inputs[0])[2] is None  # the dropped row
    # the backfill's group_cells stays on lists
    keys, inputs = group_cells(_group(fn), names, payloads)
    assert all(isinstance(c, list) for c in [*keys, *inputs])


def test_a_null_or_int_key_and_its_inputs() -> None:
    """A NaN key is no entity (its inputs null); an int key's text is its decimal."""

    def by_str(batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["k"] = ["a", None, "b"]
        return out

    def by_int(batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["k"] = np.array([7, -3, 2**40])
        return out

    payloads = [{"v": 1.0}, {"v": 2.0}, {"v": float("nan")}]
    keys, inputs = _assert_same(_group(by_str), ["v"], payloads)
    assert _texts(keys[0]) == ["a", None, "b"]
    assert _cells(inputs[0])[:2] == [1.0, None]
    keys, _ = _assert_same(_group(by_int), ["v"], payloads)
    assert _texts(keys[0]) == ["7", "-3", str(2**40)]


def test_a_transform_that_raises_falls_back_row_by_row() -> None:
    def fragile(batch: pd.DataFrame) -> pd.DataFrame:
        if (batch["v"] > 1).any():
            raise ValueError("big")
        return batch

    payloads = [{"k": "a", "v": 1.0}, {"k": "b", "v": 2.0}]
    keys, _ = _assert_same(_group(fragile), ["v"], payloads)
    assert _texts(keys[0]) == ["a", None]


def test_columns_batch_feeds_arrays_too() -> None:
    """A native ``Columns`` batch (the worker's and the rebuild's input) gives the same."""
    n = 50
    rng = np.random.default_rng(3)
    cols = _native.columns_from_arrays(
        {
            "k": pa.array(
                [f"c{i % 7}" if i % 9 else None for i in range(n)], type=pa.large_string()
            ),
            "amount": pa.array(rng.normal(size=n)),
            "currency": pa.array([["USD", "EUR", "XXX"][i % 3] for i in range(n)]),
        }
    )

    def to_usd(batch: pd.DataFrame) -> pd.DataFrame:
        rate = batch["currency"].map({"USD": 1.0, "EUR": 1.08})
        known = batch[rate.notna()].copy()
        known["amount_usd"] = known["amount"] * rate[rate.notna()]
        return known

    group = _group(to_usd)
    payloads, frame = user_code_input([group], cols)
    new_keys, new_inputs = group_columns(
        group, ["amount_usd", "currency"], payloads, frame, arrays=True
    )
    assert all(isinstance(c, pa.Array) for c in [*new_keys, *new_inputs])
    _assert_same(group, ["amount_usd", "currency"], payloads)


def test_a_small_batch_stays_on_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``ARRAY_ROWS`` records (a live batch) the columns go as lists, from it as arrays."""
    import engine.processing as processing

    def same(batch: pd.DataFrame) -> pd.DataFrame:
        return batch

    payloads = [{"k": f"c{i}", "v": float(i)} for i in range(8)]
    monkeypatch.setattr(processing, "ARRAY_ROWS", 9)
    keys, inputs = group_columns(_group(same), ["v"], payloads)
    assert isinstance(keys[0], list) and isinstance(inputs[0], list)
    monkeypatch.setattr(processing, "ARRAY_ROWS", 8)
    keys, inputs = group_columns(_group(same), ["v"], payloads)
    assert isinstance(keys[0], pa.Array) and isinstance(inputs[0], pa.Array)
