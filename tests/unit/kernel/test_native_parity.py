"""Parity of the native kernel (engine._native) with the Python kernel, bit for bit."""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference.functions import FUNCTIONS, make_aggregator

native = pytest.importorskip("engine._native")

Order = tuple[int, int, int]

SPECIAL_FLOATS = [0.0, -0.0, 1e300, -1e300, 5e-324, -5e-324, 1e308, 1e16, -1e16, 0.1, 2.5e-308]
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(SPECIAL_FLOATS),
    st.integers(-(10**9), 10**9).map(lambda cents: cents / 100),  # money
)
INTS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-1000, 1000),
    st.sampled_from([0, -(2**63), 2**63 - 1, 2**53 + 1]),
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int": INTS,
    "float": FLOATS,
    "str": st.one_of(st.text(max_size=6), st.sampled_from(["", "a", "é", "😀", "\x00", "z"])),
    "bool": st.booleans(),
    "bytes": st.binary(max_size=6),
}
N_OF = {"first_n": 3, "last_n": 2}
CASES = [(f, k) for f, spec in FUNCTIONS.items() for k in sorted(spec.kinds)]


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type; floats by their bits, lists elementwise."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def python_fold(function: str, kind: str, events: list[tuple[Any, Order, int]]) -> Any:
    """Fold each event into its part's state, merge the parts in ascending order, finalize."""
    agg = make_aggregator(function, kind, N_OF.get(function))
    states: dict[int, Any] = {}
    for value, order, part in events:
        state = states.get(part, agg.init())
        if value is not None or agg.counts_nulls:
            state = agg.add(state, value, order)
        states[part] = state
    total = agg.init()
    for part in sorted(states):
        total = agg.merge(total, states[part])
    return agg.finalize(total)


def native_fold(
    function: str, kind: str, events: list[tuple[Any, Order, int]], merge: list[int] | None = None
) -> Any:
    values = [v for v, _, _ in events]
    orders = [o for _, o, _ in events]
    parts = [p for _, _, p in events]
    n = N_OF.get(function)
    if merge is None:
        return native.fold_finalize(function, kind, n, values, orders, parts)
    return native.fold_merge_finalize(function, kind, n, values, orders, parts, merge)


@st.composite
def batches(draw: st.DrawFn, kind: str) -> list[tuple[Any, Order, int]]:
    """Events with distinct orders (offset = position), random times, partitions and parts."""
    values = draw(st.lists(st.one_of(st.none(), VALUES[kind]), max_size=24))
    events = []
    for i, value in enumerate(values):
        order = (draw(st.integers(0, 5)), draw(st.integers(0, 2)), i)
        events.append((value, order, draw(st.integers(0, 3))))
    return events


@pytest.mark.parametrize(("function", "kind"), CASES)
@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_native_equals_python_in_any_merge_order(function: str, kind: str, data: Any) -> None:
    events = data.draw(batches(kind))
    got = native_fold(function, kind, events)
    try:
        want = python_fold(function, kind, events)
    except OverflowError:  # Python's float sum raises where the exact sum overflows a double
        assert function == "sum"
        assert isinstance(got, float) and math.isinf(got)
    else:
        assert same(got, want), (got, want)
    part_ids = sorted({p for _, _, p in events})
    permuted = data.draw(st.permutations(part_ids))
    assert same(native_fold(function, kind, events, list(permuted)), got)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(FLOATS, st.integers(0, 3)), max_size=40))
def test_float_sum_is_fsum(items: list[tuple[float, int]]) -> None:
    events = [(v, (0, 0, i), p) for i, (v, p) in enumerate(items)]
    got = native_fold("sum", "float", events)
    try:
        want = math.fsum(v for v, _ in items)
    except OverflowError:  # fsum's intermediate overflow; the exact sum may still fit
        return
    assert same(got, want + 0.0), (got, want)


def test_overflowing_variance_and_its_root() -> None:
    events = [(1e300, (0, 0, 0), 0), (0.0, (1, 0, 0), 1)]
    assert native_fold("variance", "float", events) == math.inf
    assert python_fold("variance", "float", events) == math.inf
    root = native_fold("stddev", "float", events)
    assert same(root, python_fold("stddev", "float", events))
    assert same(root, 7.071067811865476e299)  # sqrt(5e599), correctly rounded
    beyond = [(1.7e308, (0, 0, 0), 0), (-1.7e308, (1, 0, 0), 1)]  # sqrt(2)·1.7e308 > DBL_MAX
    assert native_fold("stddev", "float", beyond) == math.inf
    assert python_fold("stddev", "float", beyond) == math.inf


@pytest.mark.parametrize("kind", ["int", "str", "float"])
def test_hll_dense_form_matches_python(kind: str) -> None:
    rng = random.Random(14)
    makers: dict[str, Callable[[int], Any]] = {
        "int": lambda i: rng.randrange(-(2**63), 2**63),
        "str": lambda i: f"user-{rng.randrange(10**6)}",
        "float": lambda i: rng.random() * 1e6,
    }
    make = makers[kind]
    events = [(make(i), (i, 0, i), rng.randrange(5)) for i in range(12_000)]
    want = python_fold("approx_count_distinct", kind, events)
    assert native_fold("approx_count_distinct", kind, events) == want
    assert native_fold("approx_count_distinct", kind, events, [4, 2, 0, 3, 1]) == want
    assert abs(want - len({v for v, _, _ in events})) < 0.05 * len(events)


def test_wide_integer_sum_and_non_finite_floats() -> None:
    events = [(2**63 - 1, (0, 0, i), i % 2) for i in range(5)]
    assert native_fold("sum", "int", events) == 5 * (2**63 - 1)
    nan_inf = [(math.nan, (0, 0, 0), 0), (math.inf, (0, 0, 1), 0), (2.0, (0, 0, 2), 1)]
    assert native_fold("count", "float", nan_inf) == 3
    assert native_fold("sum", "float", nan_inf) == 2.0


@pytest.mark.parametrize(
    ("function", "kind"), [("median", "int"), ("sum", "decimal"), ("sum", "str"), ("min", "bool")]
)
def test_bad_names_and_kinds_raise_value_error(function: str, kind: str) -> None:
    with pytest.raises(ValueError, match=function if function == "median" else kind):
        native.fold_finalize(function, kind, None, [], [], [])
