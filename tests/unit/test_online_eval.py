"""The online reader's hash evaluation equals the kernel's ``value_as_of`` over parsed, merged
tiles, bit for bit, on random events, partitions, evictions, read times and feature subsets."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import CodecError
from engine.kernel.tiles import EntityTiles, evict, fold, value_as_of
from engine.online import PartitionState, encode_fields, merged, parse_state
from engine.online_eval import WindowReader
from engine.plan import ViewPlan
from engine.store import FeatureStore

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_800_000_000_000 - 7 * MINUTE  # not on an hour boundary

VIEW = """
every = FeatureView("every", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="10m", hop="1m"),
    Aggregation("amount", "count", window="1h"),
    Aggregation("amount", "mean", window="1h"),
    Aggregation("amount", "variance", window="10m", hop="1m"),
    Aggregation("amount", "stddev", window="1d"),
    Aggregation("amount", "min", window="1h"),
    Aggregation("amount", "max", window="10m", hop="1m"),
    Aggregation("merchant_id", "first", window="1h"),
    Aggregation("merchant_id", "last", window="1d"),
    Aggregation("amount", "first_n", window="10m", hop="1m", n=3),
    Aggregation("amount", "last_n", window="1h", n=2),
    Aggregation("merchant_id", "count_distinct", window="1h"),
    Aggregation("merchant_id", "approx_count_distinct", window="1d"),
    Aggregation("qty", "sum", window="1h"),
    Aggregation("qty", "max", window="30m", hop="5m"),
    Aggregation("qty", "sum", window="lifetime"),
    Aggregation("amount", "last", window="lifetime"),
    Aggregation("amount", "min", window="lifetime"),
])
"""

amounts = st.one_of(
    st.none(),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 0.1, 1e-300, 5e-324, 1e300]),
)
qtys = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.sampled_from([2**63 - 1, -(2**63)]),  # sums beyond 64 bits: plain forms hold bytes
)
events = st.lists(
    st.tuples(
        st.integers(0, 2),  # source partition
        st.integers(-2 * HOUR, 26 * HOUR),  # event time - T0: windows start and end inside
        amounts,
        qtys,
        st.sampled_from(["m1", "m2", "m3", "m4"]),
    ),
    max_size=60,
)


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> ViewPlan:
    from tests.unit.conftest import HEADER

    repo = tmp_path_factory.mktemp("repo")
    (repo / "defs.py").write_text(HEADER + VIEW)
    return FeatureStore.from_repo(Path(repo)).plan.views["every"]


def stored_hash(
    view: ViewPlan, evs: list[tuple[int, int, Any, int, str]], evict_ms: int | None
) -> dict[bytes, bytes]:
    """The hash the stream worker would leave: per partition its tiles, fence, write time."""
    layout = view.layout
    tiles: dict[int, EntityTiles] = {}
    for offset, (p, dt, amount, qty, merchant) in enumerate(evs):
        row = {"amount": amount, "qty": qty, "merchant_id": merchant}
        values = tuple(row[c] for c in view.input_columns)
        fold(layout, tiles.setdefault(p, EntityTiles()), values, T0 + dt, (T0 + dt, p, offset))
    fields: dict[bytes, bytes] = {}
    for p, held in tiles.items():
        if evict_ms is not None:
            evict(layout, held, evict_ms)
        touched = [(hop, k) for hop, per_hop in held.by_hop.items() for k in per_hop]
        state = PartitionState(tiles=held, fence=len(evs), updated_ms=T0 + 30 * HOUR + p)
        for name, value in encode_fields(view, p, state, touched, True).items():
            fields[name.encode()] = value
        fields[f"j:{p}".encode()] = msgpack.packb([[0, 1]])  # the journal: not a tile
    return fields


def reference(
    view: ViewPlan, fields: dict[bytes, bytes], t_ms: int, indices: tuple[int, ...]
) -> tuple[list[Any], int | None]:
    states = parse_state(view, fields)
    values = value_as_of(view.layout, merged(view, states.values()), t_ms, indices)
    return values, max((s.updated_ms for s in states.values()), default=0) or None


def outcome(read: Callable[[], Any]) -> tuple[str, str]:
    """What a read gives, bit for bit (repr tells -0.0 from 0.0), or the error it raises: a
    variance beyond the float range is an OverflowError of the kernel's finalize, either way."""
    try:
        return "value", repr(read())
    except OverflowError as exc:
        return "raised", type(exc).__name__


def test_equals_value_as_of_over_parsed_tiles(view: ViewPlan) -> None:
    n = len(view.aggregations)

    @settings(max_examples=150, deadline=None)
    @given(
        evs=events,
        evict_at=st.one_of(st.none(), st.integers(0, 26 * HOUR)),
        times=st.lists(st.integers(-3 * HOUR, 50 * HOUR), min_size=1, max_size=6),
        indices=st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True),
        rnd=st.randoms(use_true_random=False),
    )
    def check(
        evs: list[tuple[int, int, Any, int, str]],
        evict_at: int | None,
        times: list[int],
        indices: list[int],
        rnd: random.Random,
    ) -> None:
        fields = stored_hash(view, evs, None if evict_at is None else T0 + evict_at)
        names = list(fields)
        rnd.shuffle(names)  # Redis lists a hash's fields in no particular order
        fields = {name: fields[name] for name in names}
        wanted = tuple(indices)
        reader = WindowReader(view, wanted)
        for dt in times:  # one reader across times, back and forth
            t = T0 + dt
            got = outcome(lambda: reader.at(t).evaluate(fields))  # noqa: B023
            assert got == outcome(lambda: reference(view, fields, t, wanted)), f"t = T0 + {dt}"  # noqa: B023

    check()


def test_windows_move_with_t_and_readers_share_the_name_memo(view: ViewPlan) -> None:
    fields = stored_hash(view, [(0, 0, 5.0, 1, "m1"), (1, 30_000, 2.5, 1, "m2")], None)
    reader = WindowReader(view, (0, 1))  # sum over 10m of 1m tiles, count over 1h of 5m
    assert reader.at(T0 + 9 * MINUTE).evaluate(fields)[0] == [7.5, 2]
    assert reader.at(T0 + 11 * MINUTE).evaluate(fields)[0] == [0, 2]  # the 10m window moved on
    assert reader.at(T0 + 9 * MINUTE).evaluate(fields)[0] == [7.5, 2]
    # T0 is a minute boundary: the 1m tile from T0 on is not in the window as of T0; the
    # 5m tile holding T0 is (tiles are the unit, DESIGN §3)
    assert reader.at(T0).evaluate(fields)[0] == [0, 2]
    other = WindowReader(view, (1,))
    assert other._names is reader._names and set(fields) <= set(reader._names)
    assert other.at(T0 + 9 * MINUTE).evaluate(fields)[0] == [2]


def test_missing_and_foreign_fields(view: ViewPlan) -> None:
    reader = WindowReader(view, (0, 1, 16))
    empty = reader.at(T0).evaluate({})
    assert empty == (value_as_of(view.layout, None, T0, (0, 1, 16)), None)
    fields = stored_hash(view, [(2, 0, 1.5, 1, "m1")], None)
    fields.update({b"x:1": b"?", b"t:nope:60000:1": b"?", b"t:1:7:1": b"?", b"f:2": b"9"})
    assert reader.at(T0 + MINUTE).evaluate(fields) == ([1.5, 1, 1.5], T0 + 30 * HOUR + 2)


def test_corrupt_tiles_a_window_uses_are_errors(view: ViewPlan) -> None:
    fields = stored_hash(view, [(0, 0, 1.5, 1, "m1"), (0, -90 * MINUTE, 2.0, 1, "m1")], None)
    k = T0 // MINUTE
    reader = WindowReader(view, (0,))  # sum over 10m of 1m tiles

    def read() -> list[Any]:
        return reader.at(T0 + MINUTE).evaluate(fields)[0]

    assert read() == [1.5]
    # a 1m tile 90 minutes old: no requested window uses it, so it is never decoded
    fields[f"t:0:60000:{k - 90}".encode()] = b"\xc1"
    assert read() == [1.5]
    fields[f"t:0:60000:{k}".encode()] = b"\xc1"  # never valid msgpack
    with pytest.raises(CodecError, match=f"view 'every': field 't:0:60000:{k}': cannot decode"):
        read()
    fields[f"t:0:60000:{k}".encode()] = msgpack.packb([9, [0, 0, 0, 0]])
    with pytest.raises(CodecError, match="version 9"):
        read()
    fields[f"t:0:60000:{k}".encode()] = msgpack.packb([1, [0, 0, 0]])
    with pytest.raises(CodecError, match="holds 3 states, expected 4"):
        read()
    fields[f"t:0:60000:{k}".encode()] = msgpack.packb([1, [["x", 1], None, None, []]])
    with pytest.raises(CodecError, match="view 'every': corrupt stored state of 'amount_sum_10m'"):
        read()
