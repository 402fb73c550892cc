"""``Aggregator.merge_plain`` is ``merge(state, from_plain(p))`` per stored plain form, bit for bit."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference.codec import decode_plain, encode_states
from tests.reference.functions import FUNCTIONS, Aggregator, make_aggregator
from tests.unit.kernel.test_functions import CASES, fold, with_orders

# sums whose stored form no longer fits 64 bits: the plain form holds bytes (``_int_plain``)
WIDE: list[tuple[str, str, Any]] = [
    ("sum", "int", st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    ("sum", "float", st.sampled_from([1e300, -1e300, 5e-324, 1e-300, 0.1, -0.0, 2.0**70])),
    ("variance", "float", st.sampled_from([1e150, -3e-150, 5e-324, 0.3, 7.0])),
    ("mean", "int", st.integers(min_value=-(2**63), max_value=2**63 - 1)),
]


def _stored(agg: Aggregator, state: Any) -> Any:
    """The plain form as a tile field holds it after the msgpack round trip."""
    (plain,) = decode_plain(encode_states([agg], [state]), 1)
    return plain


@pytest.mark.parametrize(("function", "kind", "values"), CASES + WIDE, ids=lambda c: str(c)[:20])
def test_merge_plain_equals_merging_each_decoded_state(
    function: str, kind: str, values: Any
) -> None:
    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.lists(values, max_size=6), max_size=8),
        st.lists(values, max_size=4),
    )
    def check(tiles: list[list[Any]], start: list[Any]) -> None:
        agg = make_aggregator(function, kind, 2 if FUNCTIONS[function].needs_n else None)
        offset = 1000
        plains = []
        for values_ in tiles:  # each tile's events get orders of their own
            items = [(v, (o + offset, o % 3, o + offset)) for o, v in enumerate(values_)]
            offset += 1000
            plains.append(_stored(agg, fold(agg, items)))
        before = copy.deepcopy(plains)
        expected = fold(agg, with_orders(start))
        for plain in plains:
            expected = agg.merge(expected, agg.from_plain(plain))
        got = agg.merge_plain(fold(agg, with_orders(start)), plains)
        assert repr(agg.finalize(got)) == repr(agg.finalize(expected))
        assert encode_states([agg], [got]) == encode_states([agg], [expected])  # the whole state
        # the plain forms are left as they were: a reader merges them into several windows
        assert plains == before

    check()


def test_merge_plain_of_nothing_is_the_state() -> None:
    for function, spec in FUNCTIONS.items():
        agg = make_aggregator(function, "int", 2 if spec.needs_n else None)
        assert repr(agg.finalize(agg.merge_plain(agg.init(), []))) == repr(agg.finalize(agg.init()))
