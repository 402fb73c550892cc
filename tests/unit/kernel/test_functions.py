"""Property tests of the accumulators: exactness, merge laws, order and split independence."""

from __future__ import annotations

import math
import random
import statistics
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import CodecError
from tests.reference.codec import decode_states, encode_states
from tests.reference.functions import FUNCTIONS, Aggregator, make_aggregator

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
moderate = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
small_ints = st.integers(min_value=-(10**12), max_value=10**12)


def fold(agg: Aggregator, items: list[tuple[Any, tuple[int, int, int]]]) -> Any:
    state = agg.init()
    for value, order in items:
        state = agg.add(state, value, order)
    return state


def with_orders(values: list[Any]) -> list[tuple[Any, tuple[int, int, int]]]:
    """Give each value a distinct (event_time, partition, offset)."""
    return [(v, (i // 3, i % 2, i)) for i, v in enumerate(values)]


def canonical(agg: Aggregator, state: Any) -> Any:
    """Comparable form of a finalized value: floats by bits, -0.0 distinct from 0.0."""
    value = agg.finalize(state)
    return repr(value)


CASES: list[tuple[str, str, Any]] = [
    ("count", "float", moderate),
    ("sum", "float", finite.filter(lambda x: abs(x) < 1e300)),
    ("sum", "int", small_ints),
    ("mean", "float", moderate),
    ("mean", "int", small_ints),
    ("variance", "float", moderate),
    ("stddev", "float", moderate),
    ("variance", "int", small_ints),
    ("min", "float", finite),
    ("max", "float", finite),
    ("min", "str", st.text(max_size=5)),
    ("first", "str", st.text(max_size=5)),
    ("last", "float", moderate),
    ("first_n", "int", small_ints),
    ("last_n", "str", st.text(max_size=4)),
    ("count_distinct", "str", st.text(max_size=3)),
    ("approx_count_distinct", "int", st.integers(0, 10_000)),
]


@pytest.mark.parametrize(("function", "kind", "values"), CASES, ids=lambda c: str(c)[:20])
def test_any_split_and_order_gives_bit_identical_results(
    function: str, kind: str, values: Any
) -> None:
    @settings(max_examples=60, deadline=None)
    @given(st.lists(values, max_size=40), st.randoms(use_true_random=False), st.data())
    def check(xs: list[Any], rnd: random.Random, data: st.DataObject) -> None:
        agg = make_aggregator(function, kind, 3 if FUNCTIONS[function].needs_n else None)
        items = with_orders(xs)
        whole = fold(agg, items)
        shuffled = items[:]
        rnd.shuffle(shuffled)
        cut = data.draw(st.integers(0, len(items)))
        cut2 = data.draw(st.integers(cut, len(items)))
        a, b, c = (
            fold(agg, shuffled[:cut]),
            fold(agg, shuffled[cut:cut2]),
            fold(agg, shuffled[cut2:]),
        )
        # associativity and commutativity of merge, on fresh copies each time
        left = agg.merge(agg.merge(agg.init(), a), b)
        left = agg.merge(left, c)
        right = agg.merge(agg.init(), c)
        right = agg.merge(right, agg.merge(agg.merge(agg.init(), b), a))
        expected = canonical(agg, whole)
        assert canonical(agg, left) == expected
        assert canonical(agg, right) == expected
        assert canonical(agg, fold(agg, shuffled)) == expected
        # merge never mutated its right-hand argument
        assert canonical(agg, a) == canonical(agg, fold(agg, shuffled[:cut]))
        # the codec round-trips the state exactly
        (back,) = decode_states([agg], encode_states([agg], [whole]))
        assert canonical(agg, back) == expected

    check()


@settings(max_examples=200, deadline=None)
@given(st.lists(finite.filter(lambda x: abs(x) < 1e300), max_size=60))
def test_float_sum_equals_fsum(xs: list[float]) -> None:
    agg = make_aggregator("sum", "float")
    assert agg.finalize(fold(agg, with_orders(xs))) == math.fsum(xs)


@settings(max_examples=100, deadline=None)
@given(st.lists(moderate, min_size=1, max_size=60))
def test_mean_is_correctly_rounded_exact_mean(xs: list[float]) -> None:
    agg = make_aggregator("mean", "float")
    exact = sum(Fraction(x) for x in xs) / len(xs)
    assert agg.finalize(fold(agg, with_orders(xs))) == float(exact)


@settings(max_examples=100, deadline=None)
@given(st.lists(moderate, min_size=2, max_size=40))
def test_variance_is_correctly_rounded_exact_sample_variance(xs: list[float]) -> None:
    agg = make_aggregator("variance", "float")
    fx = [Fraction(x) for x in xs]
    mean = sum(fx) / len(fx)
    exact = sum((f - mean) ** 2 for f in fx) / (len(fx) - 1)
    assert agg.finalize(fold(agg, with_orders(xs))) == float(exact)
    std = make_aggregator("stddev", "float")
    assert std.finalize(fold(std, with_orders(xs))) == math.sqrt(float(exact))


def test_variance_accurate_when_mean_dwarfs_spread() -> None:
    rnd = random.Random(7)
    xs = [1e9 + rnd.random() * 1e-3 for _ in range(10_000)]
    agg = make_aggregator("variance", "float")
    got = agg.finalize(fold(agg, with_orders(xs)))
    fx = [Fraction(x) for x in xs]
    mean = sum(fx) / len(fx)
    exact = float(sum((f - mean) ** 2 for f in fx) / (len(fx) - 1))
    assert abs(got - exact) <= 1e-12 * exact
    # the naive textbook formula is far off here, which is why exact moments matter
    naive = (sum(x * x for x in xs) - sum(xs) ** 2 / len(xs)) / (len(xs) - 1)
    assert abs(naive - exact) > 1e-6 * exact
    assert statistics.variance(xs) == pytest.approx(exact, rel=1e-9)


def test_int_sum_is_exact_beyond_64_bits() -> None:
    agg = make_aggregator("sum", "int")
    xs = [2**62, 2**62, 2**62, -1]
    state = fold(agg, with_orders(xs))
    assert agg.finalize(state) == 3 * 2**62 - 1
    (back,) = decode_states([agg], encode_states([agg], [state]))
    assert agg.finalize(back) == 3 * 2**62 - 1


def test_empty_window_defaults() -> None:
    zero = {"count", "sum", "count_distinct", "approx_count_distinct"}
    for function, spec in FUNCTIONS.items():
        agg = make_aggregator(
            function, "float" if "float" in spec.kinds else "str", 2 if spec.needs_n else None
        )
        value = agg.finalize(agg.init())
        if function in zero:
            assert value == 0, function
        else:
            assert value is None, function


def test_first_last_order_by_event_time_then_partition_then_offset() -> None:
    first, last = make_aggregator("first", "str"), make_aggregator("last", "str")
    items = [("b", (10, 1, 5)), ("a", (10, 0, 9)), ("c", (10, 1, 6)), ("z", (9, 3, 1))]
    assert first.finalize(fold(first, items)) == "z"
    assert last.finalize(fold(last, items)) == "c"
    last_n = make_aggregator("last_n", "str", 3)
    assert last_n.finalize(fold(last_n, items)) == ["a", "b", "c"]
    first_n = make_aggregator("first_n", "str", 2)
    assert first_n.finalize(fold(first_n, items)) == ["z", "a"]


def test_min_max_treat_signed_zeros_deterministically() -> None:
    lo, hi = make_aggregator("min", "float"), make_aggregator("max", "float")
    for items in ([(0.0, (0, 0, 0)), (-0.0, (1, 0, 1))], [(-0.0, (0, 0, 0)), (0.0, (1, 0, 1))]):
        assert repr(lo.finalize(fold(lo, items))) == "-0.0"
        assert repr(hi.finalize(fold(hi, items))) == "0.0"


def test_hyperloglog_within_two_percent_at_100k() -> None:
    agg = make_aggregator("approx_count_distinct", "str")
    halves = [agg.init(), agg.init()]
    for i in range(100_000):
        halves[i % 2] = agg.add(halves[i % 2], f"user-{i}", (0, 0, 0))
    merged = agg.merge(halves[0], halves[1])
    estimate = agg.finalize(merged)
    assert abs(estimate - 100_000) <= 2_000, estimate


def test_hyperloglog_small_sets_are_near_exact() -> None:
    agg = make_aggregator("approx_count_distinct", "int")
    state = fold(agg, with_orders(list(range(50)) * 3))
    assert abs(agg.finalize(state) - 50) <= 1


def test_codec_rejects_foreign_and_corrupt_bytes() -> None:
    agg = make_aggregator("sum", "float")
    good = encode_states([agg], [agg.init()])
    with pytest.raises(CodecError, match="version"):
        decode_states([agg], b"\x92\x09\x91\x00")  # msgpack [9, [0]]
    with pytest.raises(CodecError):
        decode_states([agg], good[:-1])
    with pytest.raises(CodecError, match="holds 1 states, expected 2"):
        decode_states([agg, agg], good)
