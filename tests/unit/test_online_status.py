"""Online statuses: each value says what stands behind it — events in its window (PRESENT,
NULL_VALUE), or the empty-window default and why (OUTSIDE_WINDOW, NOT_FOUND, NO_STATE).

Hashes are written by real batches (``BatchProcessor`` into an in-memory store); the oracle
is the logged records themselves: a window is filled when an admitted record of the entity
lies in its tiles as of t. The reads go through plain, revalidating and probing fakes of
the store Protocols, and the round trips they cost are counted."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.online import stats_key, values_at
from engine.online_read import (
    STATUS_SUFFIX,
    FeatureStatus,
    Held,
    OnlineResponse,
    ProbingStore,
    ReadCache,
    RevalidatingStore,
    read_online,
)
from engine.plan import ViewPlan
from engine.ports import StateWrite, Watermark
from engine.store import FeatureStore
from tests.unit.conftest import HEADER, SCHEMA
from tests.unit.test_online_eval import (
    CUSTOMERS,
    DAY,
    HOUR,
    MINUTE,
    T0,
    VIEW,
    Event,
    Stream,
    batches,
    read_times,
)

QUIET = f"""
tx2 = KafkaSource("tx2", schema={SCHEMA!r}, timestamp_field="ts")
quiet = FeatureView("quiet", entity=customer, source=tx2, aggregations=[
    Aggregation("amount", "sum", window="1h"),
    Aggregation("amount", "max", window="lifetime"),
])
"""
UNKNOWN = "c-none"  # never written
DEFAULTS = (FeatureStatus.OUTSIDE_WINDOW, FeatureStatus.NOT_FOUND, FeatureStatus.NO_STATE)
PR, NV, OW, NF, NS = (FeatureStatus.PRESENT, FeatureStatus.NULL_VALUE,
                      FeatureStatus.OUTSIDE_WINDOW, FeatureStatus.NOT_FOUND,
                      FeatureStatus.NO_STATE)  # fmt: skip


class PlainStore:
    """``OnlineStateStore.load`` over a dict of hashes, counting calls (no probing)."""

    def __init__(self, hashes: dict[str, dict[bytes, bytes]]) -> None:
        self.hashes = hashes
        self.calls: list[list[str]] = []

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        self.calls.append(list(keys))
        return [dict(self.hashes.get(k, {})) for k in keys]

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        raise AssertionError("a read never writes")


class ProbingFake(PlainStore):
    """A ``ProbingStore`` (and ``RevalidatingStore``): what ``RedisOnlineStore`` answers,
    in one call — None for a hash whose field count and marks a reader holds."""

    def load_changed(
        self, keys: Sequence[str], held: Sequence[Held | None]
    ) -> list[dict[bytes, bytes] | None]:
        return self.load_and_probe(keys, held, [])[0]

    def load_and_probe(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes] | None], list[bool]]:
        self.calls.append([*keys, *probes])
        out: list[dict[bytes, bytes] | None] = []
        for key, mark in zip(keys, held, strict=True):
            fields = self.hashes.get(key, {})
            current = mark is not None and len(fields) == mark[0] > 0
            if current and mark is not None:
                current = all(fields.get(name) == value for name, value in mark[1])
            out.append(None if current else dict(fields))
        return out, [bool(self.hashes.get(k)) for k in probes]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    repo = tmp_path_factory.mktemp("repo")
    (repo / "defs.py").write_text(HEADER + VIEW + QUIET)
    return FeatureStore.from_repo(Path(repo))


@pytest.fixture(scope="module")
def view(store: FeatureStore) -> ViewPlan:
    return store.plan.views["every"]


def test_the_fakes_are_the_protocols() -> None:
    fake = ProbingFake({})
    assert isinstance(fake, ProbingStore) and isinstance(fake, RevalidatingStore)
    assert not isinstance(PlainStore({}), ProbingStore)


def expected_statuses(
    stream: Stream, view: ViewPlan, clock: int, t: int, customer: str, values: list[Any]
) -> list[FeatureStatus]:
    """The oracle, from the log: which admitted records of ``customer`` (processed by
    ``clock``) lie in each feature's window as of ``t``."""
    lateness = view.allowed_lateness_ms
    assert lateness is not None
    admitted = [
        e
        for held in stream.log.records.values()
        for e in held
        if e.processed_at_ms <= clock and e.event_time_ms >= e.processed_at_ms - lateness
    ]
    mine = [e for e in admitted if e.payload["customer_id"] == customer]
    if not mine:
        return [NF if admitted else NS] * len(view.aggregations)
    out = []
    for i, value in enumerate(values):
        window, hop = view.layout.windows_ms[i], view.layout.hops_ms[i]
        if window is None or hop is None:
            filled = True
        else:
            end = -(-t // hop)
            filled = any(end - window // hop <= e.event_time_ms // hop < end for e in mine)
        out.append(OW if not filled else NV if value is None else PR)
    return out


def test_statuses_match_the_logged_records(store: FeatureStore, view: ViewPlan) -> None:
    """Random batches (entities over partitions, late and null inputs, tiles evicted as the
    clock moves), read at tile boundaries and up to a day later, for feature subsets, through
    a plain store, a probing store and a probing store with a ReadCache: statuses equal the
    oracle, and a status other than PRESENT/NULL_VALUE always comes with the default."""
    n = len(view.aggregations)
    every = [f"every:{feature}" for feature in view.features]  # in aggregation order
    defaults = values_at(view, [{}], T0)[0]

    @settings(max_examples=60, deadline=None)
    @given(
        plan=batches,
        subset=st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True),
        rnd=st.randoms(use_true_random=False),
    )
    def check(plan: list[tuple[int, list[Event]]], subset: list[int], rnd: random.Random) -> None:
        stream = Stream(store)
        clock = T0
        snapshots: list[tuple[int, dict[str, dict[bytes, bytes]]]] = []
        for gap, evs in plan:
            clock += gap
            stream.batch(clock, [(p, c, clock - lag, a, q, m) for p, c, lag, a, q, m in evs])
            snapshots.append((clock, {k: dict(h) for k, h in stream.fake.hashes.items()}))
        people = [*CUSTOMERS, UNKNOWN]
        rows = [{"customer_id": c} for c in people]
        refs = [every[i] for i in subset]
        for s, (at, hashes) in enumerate(snapshots):
            following = snapshots[s + 1][0] if s + 1 < len(snapshots) else None
            cache = ReadCache()
            cached = ProbingFake(hashes)
            for t in read_times(at, following):
                full = read_online(store.plan, PlainStore(hashes), every, rows, now_ms=t)
                for c, customer in enumerate(people):
                    values = [column[c] for column in full.values]
                    want = expected_statuses(stream, view, at, t, customer, values)
                    got = [column[c] for column in full.statuses]
                    assert got == want, f"snapshot {s}, t = clock + {t - at}, {customer}"
                    for i, (status, value) in enumerate(zip(got, values, strict=True)):
                        if status in DEFAULTS:
                            assert repr(value) == repr(defaults[i]), (every[i], status)
                # the same statuses for a subset, in its order, through every store kind
                wanted = [[column[c] for c in range(len(people))]
                          for column in (full.statuses[i] for i in subset)]  # fmt: skip
                order = list(range(len(people)))
                rnd.shuffle(order)
                shuffled = [rows[i] for i in order]
                for reader, kwargs in (
                    (PlainStore(hashes), {}),
                    (ProbingFake(hashes), {}),
                    (cached, {"cache": cache}),
                    (cached, {"cache": cache}),  # revalidated: statuses come from the cache
                ):
                    got_subset = read_online(store.plan, reader, refs, shuffled, now_ms=t, **kwargs)
                    assert got_subset.statuses == [[column[i] for i in order] for column in wanted]

    check()


def _stream(store: FeatureStore, batches_: list[tuple[int, list[Event]]]) -> Stream:
    stream = Stream(store)
    for clock, evs in batches_:
        stream.batch(clock, evs)
    return stream


def test_each_status_in_one_read(store: FeatureStore) -> None:
    t = T0 + 3 * HOUR
    stream = _stream(store, [
        # c1: events 2h before t — in the 1d and lifetime windows, not in the 1h ones
        (T0 + HOUR, [(0, "c1", T0 + HOUR - 1, 4.0, 2, "m1")]),
        # c2: +5 and -5 in the last 10 minutes (a real zero sum), and a null amount
        (T0 + 3 * HOUR - MINUTE, [(1, "c2", t - 5 * MINUTE, 5.0, 1, "m1"),
                                  (2, "c2", t - 4 * MINUTE, -5.0, 1, "m2"),
                                  (0, "c2", t - 3 * MINUTE, None, 1, "m3")]),
    ])  # fmt: skip
    refs = ["every:amount_sum_10m", "every:amount_count_1h", "every:amount_mean_1h",
            "every:amount_stddev_1d", "every:qty_sum_lifetime", "quiet:amount_sum_1h"]  # fmt: skip
    rows = [{"customer_id": c} for c in ("c1", "c2", UNKNOWN)]
    probing = ProbingFake(stream.fake.hashes)
    resp = OnlineResponse(read_online(store.plan, probing, refs, rows, now_ms=t))
    got = resp.to_dict(include_status=True)
    assert got["amount_sum_10m"] == [0, 0.0, 0]
    assert got["amount_sum_10m__status"] == [OW, PR, NF]  # c2's zero is computed, not a default
    assert got["amount_count_1h"] == [0, 3, 0] and got["amount_count_1h__status"] == [OW, PR, NF]
    assert got["amount_mean_1h"] == [None, 0.0, None]
    assert got["amount_mean_1h__status"] == [OW, PR, NF]
    assert got["amount_stddev_1d"] == [None, pytest.approx(7.0710678118654755), None]
    assert got["amount_stddev_1d__status"] == [NV, PR, NF]  # the stddev of one value is null
    assert got["qty_sum_lifetime"] == [2, 3, 0] and got["qty_sum_lifetime__status"] == [PR, PR, NF]
    assert got["amount_sum_1h"] == [0, 0, 0] and got["amount_sum_1h__status"] == [NS, NS, NS]
    assert resp.statuses == {name[: -len(STATUS_SUFFIX)]: got[name]
                             for name in got if name.endswith(STATUS_SUFFIX)}  # fmt: skip
    # one round trip: every hash (3 entities x 2 views), and whether each view's write-stats
    # hash exists
    (call,) = probing.calls
    assert len(call) == 3 + 3 + 2
    assert call[-2:] == [stats_key(store.plan.views[v].fingerprint) for v in ("every", "quiet")]


def test_default_output_is_unchanged_and_statuses_are_opt_in(store: FeatureStore) -> None:
    stream = _stream(store, [(T0 + MINUTE, [(0, "c1", T0, 2.5, 1, "m1")])])
    refs = ["every:amount_sum_10m", "quiet:amount_max_lifetime"]
    rows = [{"customer_id": "c1"}, {"customer_id": UNKNOWN}]
    result = read_online(store.plan, PlainStore(stream.fake.hashes), refs, rows,
                         now_ms=T0 + 2 * MINUTE)  # fmt: skip
    resp = OnlineResponse(result, with_freshness=True, full_feature_names=True)
    assert list(resp.to_dict()) == ["customer_id", "every__amount_sum_10m",
                                    "quiet__amount_max_lifetime",
                                    "every__amount_sum_10m__freshness_ms",
                                    "quiet__amount_max_lifetime__freshness_ms"]  # fmt: skip
    with_status = resp.to_dict(include_status=True)
    assert list(with_status) == [*resp.to_dict(), "every__amount_sum_10m__status",
                                 "quiet__amount_max_lifetime__status"]  # fmt: skip
    assert with_status["every__amount_sum_10m__status"] == ["PRESENT", "NOT_FOUND"]
    assert with_status["quiet__amount_max_lifetime__status"] == ["NO_STATE", "NO_STATE"]
    assert with_status["quiet__amount_max_lifetime"] == [None, None]
    frame = resp.to_df(include_status=True)
    assert frame["every__amount_sum_10m__status"].tolist() == ["PRESENT", "NOT_FOUND"]
    assert type(frame["every__amount_sum_10m__status"][0]) is str
    assert list(resp.to_df().columns) == list(resp.to_dict())


def test_json_carries_statuses_as_feast_does(store: FeatureStore) -> None:
    stream = _stream(store, [(T0 + MINUTE, [(0, "c1", T0, 2.5, 1, "m1")])])
    refs = ["every:amount_sum_10m", "every:amount_count_1h"]
    rows = {"customer_id": ["c1", UNKNOWN]}
    t = T0 + 30 * MINUTE  # the 10m window moved past the event, the 1h one did not
    doc = OnlineResponse(read_online(store.plan, PlainStore(stream.fake.hashes), refs, rows,
                                     now_ms=t)).to_json()  # fmt: skip
    assert json.loads(json.dumps(doc)) == {
        "metadata": {"feature_names": ["customer_id", "amount_sum_10m", "amount_count_1h"],
                     "now_ms": t},
        "results": [
            {"values": ["c1", UNKNOWN], "statuses": ["PRESENT", "PRESENT"]},
            {"values": [0, 0], "statuses": ["OUTSIDE_WINDOW", "NOT_FOUND"],
             "freshness_ms": [T0 + MINUTE, None]},
            {"values": [1, 0], "statuses": ["PRESENT", "NOT_FOUND"],
             "freshness_ms": [T0 + MINUTE, None]},
        ],
    }  # fmt: skip
    at_t = OnlineResponse(read_online(store.plan, PlainStore(stream.fake.hashes), refs, rows,
                                      now_ms=T0 + 2 * MINUTE)).to_json()  # fmt: skip
    assert [r["statuses"] for r in at_t["results"][1:]] == [["PRESENT", "NOT_FOUND"]] * 2


def test_a_plain_store_is_asked_about_the_view_only_when_every_entity_is_missing(
    store: FeatureStore,
) -> None:
    stream = _stream(store, [(T0 + MINUTE, [(0, "c1", T0, 2.5, 1, "m1")])])
    every = store.plan.views["every"]
    refs = ["every:amount_sum_10m"]
    plain = PlainStore(stream.fake.hashes)
    read = read_online(store.plan, plain, refs, [{"customer_id": "c1"}, {"customer_id": "c2"}],
                       now_ms=T0 + 2 * MINUTE)  # fmt: skip
    assert read.statuses == [[PR, NF]] and len(plain.calls) == 1  # c1 answers for the view
    plain.calls.clear()
    read = read_online(store.plan, plain, refs, [{"customer_id": "c2"}], now_ms=T0 + 2 * MINUTE)
    assert read.statuses == [[NF]]
    assert plain.calls[1:] == [[stats_key(every.fingerprint)]]  # a second call, the marker only
    # without the write-stats hash (a rebuilt view before its workers write), an entity with
    # state still shows the view has state; alone, a missing one cannot tell
    hashes = dict(stream.fake.hashes)
    del hashes[stats_key(every.fingerprint)]
    for reader in (PlainStore(hashes), ProbingFake(hashes)):
        both = read_online(store.plan, reader, refs, [{"customer_id": "c2"}, {"customer_id": "c1"}],
                           now_ms=T0 + 2 * MINUTE)  # fmt: skip
        assert both.statuses == [[NF, PR]]
        alone = read_online(store.plan, reader, refs, [{"customer_id": "c2"}],
                            now_ms=T0 + 2 * MINUTE)  # fmt: skip
        assert alone.statuses == [[NS]]


def test_no_rows_and_late_only_batches(store: FeatureStore) -> None:
    # every event too late for the view: nothing applied, nothing written, so NO_STATE
    stream = _stream(store, [(T0 + 3 * DAY, [(0, "c1", T0, 2.5, 1, "m1")])])
    assert not stream.fake.hashes
    refs = ["every:amount_sum_10m", "every:qty_sum_lifetime"]
    got = read_online(store.plan, ProbingFake(stream.fake.hashes), refs, [{"customer_id": "c1"}],
                      now_ms=T0 + 3 * DAY + 1)  # fmt: skip
    assert got.statuses == [[NS], [NS]] and got.values == [[0], [0]]
    empty = OnlineResponse(read_online(store.plan, ProbingFake({}), refs, {"customer_id": []},
                                       now_ms=T0))  # fmt: skip
    assert empty.statuses == {"amount_sum_10m": [], "qty_sum_lifetime": []}
    assert empty.to_json()["results"][0] == {"values": [], "statuses": []}
