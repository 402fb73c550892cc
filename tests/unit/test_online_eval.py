"""The online reader's hash evaluation (``WindowReader``, native) equals the processing-time
backfill replay of the same records, bit for bit: hashes written by real batches
(``BatchProcessor``, entities spanning source partitions, tiles evicted as the clock moves),
read at tile boundaries and minutes to a day later, for feature subsets; missing and foreign
fields; corrupt tiles are errors only when a requested window uses them."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _native, backfill
from engine.envelope import Envelope
from engine.errors import CodecError
from engine.keys import encode_key
from engine.online import functions_of, state_key, tile_field
from engine.online_eval import WindowReader
from engine.plan import ViewPlan
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.reference.functions import make_aggregator
from tests.reference.tiles import TileLayout, value_as_of
from tests.unit.stream.test_core import FakeStore, Letters

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_800_000_000_000 - 7 * MINUTE  # not on an hour boundary
CUSTOMERS = ("c0", "c1", "c2")

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
    st.sampled_from([2**63 - 1, -(2**63)]),  # sums beyond 64 bits
)
Event = tuple[int, str, int, Any, int, str]
events = st.tuples(
    st.integers(0, 2),  # source partition: independent of the entity, so entities span them
    st.sampled_from(CUSTOMERS),
    st.one_of(  # event time = batch clock - this: up to 2h ahead, 26h behind (late after 1d)
        st.integers(-2 * HOUR, 26 * HOUR),
        st.sampled_from([0, 1, MINUTE, 10 * MINUTE, HOUR + 1, DAY]),
    ),
    amounts,
    qtys,
    st.sampled_from(["m1", "m2", "m3", "m4"]),
)
gaps = st.one_of(  # from one batch clock to the next
    st.integers(1, 3 * HOUR),
    st.sampled_from([1, MINUTE, 7 * MINUTE, 61 * MINUTE, DAY + 1]),
)
batches = st.lists(st.tuples(gaps, st.lists(events, max_size=12)), min_size=1, max_size=6)


class MemoryLog:
    """The event log in memory: the worker's ``EventLogSink`` and the backfill's
    ``EventLogSource`` (offsets once, ascending per partition)."""

    def __init__(self) -> None:
        self.records: dict[int, list[Envelope]] = {}

    def append(self, records: Sequence[Envelope]) -> list[str]:
        for env in records:
            held = self.records.setdefault(env.partition, [])
            if not held or env.offset > held[-1].offset:
                held.append(env)
        return []

    def last_offset(self, partition: int) -> int | None:
        held = self.records.get(partition)
        return held[-1].offset if held else None

    def partitions(self, source: str) -> list[int]:
        return sorted(self.records)

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        return iter(list(self.records.get(partition, ())))


class Stream:
    """A worker over a dict of hashes, a log in memory and a clock the test sets."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.view = store.plan.views["every"]
        self.codec = SourceCodec(store.plan.sources["tx"])
        self.fake, self.log, self.dead = FakeStore(), MemoryLog(), Letters()
        self.now = T0
        self.offsets = [0, 0, 0]
        self.core = BatchProcessor(store.plan, "tx", online=self.fake, log=self.log,
                                   dead=self.dead, clock=lambda: self.now)  # fmt: skip

    def batch(self, now_ms: int, evs: Sequence[Event]) -> None:
        """Process ``(partition, customer, event time, amount, qty, merchant)`` at ``now_ms``."""
        self.now = now_ms
        records = []
        for p, customer, et, amount, qty, merchant in evs:
            payload = {"customer_id": customer, "merchant_id": merchant, "amount": amount,
                       "qty": qty, "ts": et}  # fmt: skip
            records.append(SourceRecord(topic="tx", partition=p, offset=self.offsets[p],
                                        key=encode_key([customer]),
                                        value=self.codec.encode(payload)))  # fmt: skip
            self.offsets[p] += 1
        outcome = self.core.process(records)
        assert outcome.applied + outcome.late == len(evs) and not self.dead.sent

    def hash(self, customer: str) -> dict[bytes, bytes]:
        return dict(self.fake.hashes.get(state_key(self.view, (customer,)), {}))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    from tests.unit.conftest import HEADER

    repo = tmp_path_factory.mktemp("repo")
    (repo / "defs.py").write_text(HEADER + VIEW)
    return FeatureStore.from_repo(Path(repo))


@pytest.fixture(scope="module")
def view(store: FeatureStore) -> ViewPlan:
    return store.plan.views["every"]


def read_times(clock: int, next_clock: int | None) -> list[int]:
    """Times after the write at ``clock`` at which the store still serves that write (up to
    the next batch's clock): just after it, the next tile boundaries, minutes to a day on."""
    after = clock + 1
    times = {after, after + 7 * MINUTE, after + 61 * MINUTE, after + DAY}
    for hop in (MINUTE, 5 * MINUTE, HOUR, DAY):
        end = -(-after // hop) * hop
        times |= {end, end + 1}
    return sorted(t for t in times if next_clock is None or t <= next_clock)


def resp_of(fields: dict[bytes, bytes]) -> Any:
    """``fields`` as Redis sends an ``HGETALL`` reply (RESP2), indexed natively."""
    out = [b"*%d\r\n" % (2 * len(fields))]
    for name, value in fields.items():
        out += [b"$%d\r\n%s\r\n" % (len(name), name), b"$%d\r\n%s\r\n" % (len(value), value)]
    replies = _native.RespReplies(1)
    assert replies.feed(b"".join(out)) == 0
    return replies


def bits(values: list[Any]) -> str:
    return repr(values)  # repr tells -0.0 from 0.0 and 1 from 1.0


def test_equals_processing_time_backfill_of_the_same_records(
    store: FeatureStore, view: ViewPlan
) -> None:
    n = len(view.aggregations)

    @settings(max_examples=100, deadline=None)
    @given(
        plan=batches,
        subsets=st.lists(
            st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True),
            min_size=1,
            max_size=3,
        ),
        rnd=st.randoms(use_true_random=False),
    )
    def check(
        plan: list[tuple[int, list[Event]]], subsets: list[list[int]], rnd: random.Random
    ) -> None:
        stream = Stream(store)
        clock = T0
        snapshots: list[tuple[int, dict[str, dict[bytes, bytes]]]] = []
        for gap, evs in plan:
            clock += gap
            stream.batch(clock, [(p, c, clock - lag, a, q, m) for p, c, lag, a, q, m in evs])
            snapshots.append((clock, {c: stream.hash(c) for c in CUSTOMERS}))
        # every (snapshot, time, entity) as a label of one processing-time replay of the log
        labels = [
            (s, t, c)
            for s, (at, _) in enumerate(snapshots)
            for t in read_times(at, snapshots[s + 1][0] if s + 1 < len(snapshots) else None)
            for c in CUSTOMERS
        ]
        request = backfill.ViewRequest(view="every", entities=[(c,) for _, _, c in labels],
                                       times_ms=[t for _, t, _ in labels],
                                       indices=tuple(range(n)))  # fmt: skip
        (want,) = backfill.run(store.plan, stream.log, [request], mode="processing_time")
        logged = [e for held in stream.log.records.values() for e in held]
        lateness = view.allowed_lateness_ms
        assert lateness == DAY  # the default: the longest finite window
        for wanted in [list(range(n)), *subsets]:
            reader = WindowReader(view, tuple(wanted))  # one reader, back and forth in time
            order = list(zip(labels, want, strict=True))
            rnd.shuffle(order)
            for (s, t, customer), row in order:
                clock, hashes = snapshots[s]
                fields = hashes[customer]
                names = list(fields)
                rnd.shuffle(names)  # Redis lists a hash's fields in no particular order
                fields = {name: fields[name] for name in names}
                at = reader.at(t)
                values, updated = at.evaluate(fields)
                where = f"snapshot {s} (clock {clock}) t = clock + {t - clock}, {customer}"
                assert bits(values) == bits([row[i] for i in wanted]), where
                # the tile-materialising evaluation gives the same bits; the statuses from
                # the tiles the evaluation saw equal those from a scan of the field names
                ((legacy, _),) = _native.online_values(functions_of(view), [fields], t, wanted)
                assert bits(legacy) == bits(values), where
                got = at.evaluate_seen([fields])
                assert at.windows_seen(got) == at.windows_many([fields], [values]), where
                # the same hash as a Redis reply, its statuses by key (the uncached read path)
                keyed = at.evaluate_replies(resp_of(fields), [0], keyed=True)
                assert bits(keyed[0][0]) == bits(values) and keyed[0][1] == updated, where
                seen = got[0][2]
                codes = [0 if v is None else 1 if v == 0 else 2 for v in values]
                assert list(keyed[0][2]) == [2 * c + s for c, s in zip(codes, seen, strict=True)], (
                    where
                )
                assert at.windows_keyed(keyed) == at.windows_seen(got), where
                # freshness: the newest batch that applied (admitted) an event of the entity
                written = [e.processed_at_ms for e in logged
                           if e.payload["customer_id"] == customer
                           and e.processed_at_ms <= clock
                           and e.event_time_ms >= e.processed_at_ms - lateness]  # fmt: skip
                assert updated == (max(written) if written else None), where

    check()


def test_windows_move_with_t(store: FeatureStore, view: ViewPlan) -> None:
    stream = Stream(store)
    stream.batch(T0 + MINUTE, [(0, "c1", T0, 5.0, 1, "m1"), (1, "c1", T0 + 30_000, 2.5, 1, "m2")])
    fields = stream.hash("c1")
    assert {name.split(b":")[1] for name in fields if name.startswith(b"t:")} == {b"0", b"1"}
    reader = WindowReader(view, (0, 1))  # sum over 10m of 1m tiles, count over 1h of 5m
    assert reader.at(T0 + 9 * MINUTE).evaluate(fields)[0] == [7.5, 2]
    assert reader.at(T0 + 11 * MINUTE).evaluate(fields)[0] == [0, 2]  # the 10m window moved on
    assert reader.at(T0 + 9 * MINUTE).evaluate(fields)[0] == [7.5, 2]
    # T0 is a minute boundary: the 1m tile from T0 on is not in the window as of T0; the
    # 5m tile holding T0 is (tiles are the unit, DESIGN §3)
    assert reader.at(T0).evaluate(fields)[0] == [0, 2]
    assert reader.at(T0 + HOUR + 5 * MINUTE).evaluate(fields)[0] == [0, 0]
    # which fields an evaluation decodes: the tiles its windows cover as of t, nothing else
    tile_1m = f"t:0:{MINUTE}:{T0 // MINUTE}".encode()
    assert reader.at(T0 + 9 * MINUTE).uses(tile_1m)
    assert not reader.at(T0 + 11 * MINUTE).uses(tile_1m)
    assert not reader.at(T0).uses(tile_1m)
    assert not reader.at(T0 + 9 * MINUTE).uses(b"f:0") and not reader.at(T0).uses(b"l:0")
    assert WindowReader(view, (1,)).at(T0 + 9 * MINUTE).evaluate(fields)[0] == [2]
    assert WindowReader(view, (1, 0)).at(T0 + 9 * MINUTE).evaluate(fields)[0] == [2, 7.5]


def _reference_layout(view: ViewPlan) -> TileLayout:
    """The view's layout in the reference (pure-Python) kernel."""
    kinds = view.input_kinds
    return TileLayout(
        aggregators=tuple(make_aggregator(a.function, k, a.n)
                          for a, k in zip(view.aggregations, kinds, strict=True)),
        windows_ms=view.layout.windows_ms,
        hops_ms=view.layout.hops_ms,
    )  # fmt: skip


def test_missing_and_foreign_fields(store: FeatureStore, view: ViewPlan) -> None:
    reader = WindowReader(view, (0, 1, 16))
    empty = reader.at(T0).evaluate({})
    # the empty-window defaults, as the Python kernel (the parity oracle) gives them
    assert empty == (value_as_of(_reference_layout(view), None, T0, (0, 1, 16)), None)
    assert empty[0] == [0, 0, None]
    stream = Stream(store)
    stream.batch(T0 + 30_000, [(2, "c1", T0, 1.5, 1, "m1")])
    fields = stream.hash("c1")
    fields.update({b"x:1": b"?", b"t:nope:60000:1": b"?", b"t:1:7:1": b"?", b"f:2": b"9",
                   b"t:1:60000:x": b"?", b"u:": b"?", b"j:2": b"?"})  # fmt: skip
    assert reader.at(T0 + MINUTE).evaluate(fields) == ([1.5, 1, 1.5], T0 + 30_000)


V1_TILE = b"\x92\x01\x91\x05"  # the pure-Python kernel's msgpack codec (version 1)


def test_corrupt_tiles_a_window_uses_are_errors(store: FeatureStore, view: ViewPlan) -> None:
    stream = Stream(store)
    older = T0 - 90 * MINUTE
    stream.batch(T0 + 30_000, [(0, "c1", T0, 1.5, 1, "m1"), (0, "c1", older, 2.0, 1, "m1")])
    fields = stream.hash("c1")
    k = T0 // MINUTE
    name = tile_field(0, MINUTE, k)
    good = fields[name.encode()]
    sum_10m = WindowReader(view, (0,))  # over 1m tiles
    count_1h = WindowReader(view, (1,))  # another hop group
    lifetime = WindowReader(view, (15, 16))

    def read(reader: WindowReader) -> list[Any]:
        return reader.at(T0 + MINUTE).evaluate(fields)[0]

    assert read(sum_10m) == [1.5] and read(count_1h) == [1] and read(lifetime) == [2, 1.5]
    # a 1m tile 90 minutes old (evicted by the write, put back here): no requested window
    # uses it, so it is never decoded
    old = tile_field(0, MINUTE, k - 90).encode()
    assert old not in fields
    for junk in (b"\xc1", V1_TILE, b""):
        fields[old] = junk
        assert read(sum_10m) == [1.5]
    other_hop = next(n for n in fields if n.startswith(b"t:") and n.split(b":")[2] != b"60000")
    corrupt = {
        b"\xc1": "codec version unknown",
        V1_TILE: "codec version 1",
        b"": "empty",
        good[:-1]: "",  # truncated
        good + b"\x00": "left after",
        fields[other_hop]: "",  # a tile of another hop group: other states
    }
    for junk, why in corrupt.items():
        fields[name.encode()] = junk
        with pytest.raises(CodecError, match=f"view 'every'.*{re.escape(name)}.*{why}"):
            read(sum_10m)
        assert read(count_1h) == [1] and read(lifetime) == [2, 1.5]  # windows not using it
    fields[name.encode()] = good
    assert read(sum_10m) == [1.5]
    # the lifetime accumulators are decoded only when a lifetime aggregation is requested
    fields[b"l:0"] = V1_TILE
    with pytest.raises(CodecError, match=r"view 'every'.*l:0.*codec version 1"):
        read(lifetime)
    assert read(sum_10m) == [1.5] and read(count_1h) == [1]
    # a msgpack blob of codec version 1 where a tile belongs is refused, never misread
    fields[b"l:0"] = msgpack.packb([1, [[1, 2], None, None]])
    with pytest.raises(CodecError, match="l:0"):
        read(lifetime)
