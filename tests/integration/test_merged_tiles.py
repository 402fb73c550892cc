"""The merge-on-write layout of a re-keyed view (``engine.plan.with_merged_tiles``,
docs/decisions.md): online reads equal the processing-time backfill bit for bit (real
Redis), with one worker per pair of source partitions writing the same entity hashes,
forced write races, a redelivered batch and a worker killed between its Redis write and
its log append; and a read finds one tile set per entity, whatever the partition count.
"""

from __future__ import annotations

import random
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors.eventlog import EventLogReader, EventLogWriter
from engine.errors import OnlineStateLost, OnlineWriteConflict
from engine.keys import encode_key, partition_for
from engine.online import field_name, marks_key, state_key
from engine.plan import with_merged_tiles
from engine.ports import OnlineStateStore, StateWrite, Watermark
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord, wall_clock_ms
from engine.stream.recovery import StateRecovery
from tests.integration.test_online_read import (
    DAY,
    DEFINITIONS,
    HOUR,
    MINUTE,
    REFS,
    ROWS,
    STORES,
    Clock,
    ListDeadLetters,
    ListLog,
    Scenario,
    _assert_same,
    _backfill,
    _events,
    _write_log,
)

pytestmark = pytest.mark.redis

PARTITIONS = 4


class RacingStore:
    """The real store; ``race`` runs once right after the next ``load`` (another worker's
    batch landing between this worker's load and its write). Counts refused writes."""

    def __init__(self, inner: OnlineStateStore) -> None:
        self.inner = inner
        self.race: Any = None
        self.conflicts = 0

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        got = self.inner.load(keys)
        race, self.race = self.race, None
        if race is not None:
            race()
        return got

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        try:
            return self.inner.write(writes, marks)
        except OnlineWriteConflict:
            self.conflicts += 1
            raise


class CrashingLog(ListLog):
    """A log whose next append fails once ``crash`` is set: a worker killed after its
    Redis write, before its log append."""

    def __init__(self) -> None:
        super().__init__()
        self.crash = False

    def append(self, records: Sequence[Any]) -> list[str]:
        if self.crash:
            self.crash = False
            raise RuntimeError("killed before the log append")
        return super().append(records)


def _records(store: FeatureStore, base_ms: int) -> list[SourceRecord]:
    rng = random.Random(20261207)
    codec = SourceCodec(store.plan.sources["tx"])
    offsets = [0] * PARTITIONS
    out = []
    for payload in _events(base_ms, rng):
        key = encode_key([payload["customer_id"]])
        p = partition_for(key, PARTITIONS)
        out.append(SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key,
                                value=codec.encode(payload)))  # fmt: skip
        offsets[p] += 1
    return out


@pytest.fixture
def merged(tmp_path: Path, redis_url: str) -> tuple[Scenario, RacingStore]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(textwrap.dedent(DEFINITIONS))
    (repo / "skewless.yaml").write_text(
        f"redis:\n  url: {redis_url}\nkafka:\n  partitions: {PARTITIONS}\n"
    )
    loaded = FeatureStore.from_repo(repo)
    store = FeatureStore(with_merged_tiles(loaded.plan), loaded.config)
    assert store.plan.views["store_sales"].merged  # keyed by store, the topic by customer
    assert not store.plan.views["customer_spend"].merged
    assert (
        store.plan.views["store_sales"].fingerprint != loaded.plan.views["store_sales"].fingerprint
    )
    base_ms = (time.time_ns() // 1_000_000 // HOUR - 3) * HOUR
    records = _records(store, base_ms)
    rng = random.Random(7)
    clock = Clock(base_ms)
    log, dead = CrashingLog(), ListDeadLetters()
    racing = RacingStore(store.online_store)
    owners = [(0, 1), (2, 3)]  # two workers, two partitions each

    def worker() -> BatchProcessor:
        return BatchProcessor(store.plan, "tx", online=racing, log=log, dead=dead, clock=clock)

    workers = [worker(), worker()]
    streams = [[r for r in records if r.partition in own] for own in owners]
    cursors = [0, 0]
    snapshots: list[tuple[int, dict[str, list[Any]]]] = []
    codec = SourceCodec(store.plan.sources["tx"])

    def next_batch(w: int) -> list[SourceRecord]:
        batch = streams[w][cursors[w] : cursors[w] + rng.randrange(5, 30)]
        cursors[w] += len(batch)
        if batch:
            newest = max(codec.decode(r.key, r.value, now_ms=base_ms + DAY)["ts"] for r in batch)
            clock.now_ms = max(clock.now_ms + 1, newest + rng.randrange(0, 60_000))
        return batch

    batch_no = 0
    while cursors[0] < len(streams[0]) or cursors[1] < len(streams[1]):
        w = rng.randrange(2)
        batch = next_batch(w)
        if not batch:
            continue
        batch_no += 1
        if batch_no % 5 == 0:  # the other worker's batch lands between this load and write
            other = 1 - w

            def race(other: int = other) -> None:
                got = next_batch(other)
                if got:
                    workers[other].process(got)

            racing.race = race
        if batch_no == 7:  # killed after the Redis write; a new worker replays the batch
            log.crash = True
            with pytest.raises(RuntimeError, match="killed"):
                workers[w].process(batch)
            clock.now_ms += 5_000
            workers[w] = worker()
        if batch_no == 11:  # a redelivery: fences keep it from counting twice
            workers[w].process(batch)
            workers[w].forget_all()
        workers[w].process(batch)
        if batch_no % 6 == 0:
            t = clock.now_ms + 1
            snapshots.append((t, store.get_online_features(REFS, ROWS, now_ms=t).to_dict()))
    scenario = Scenario(repo=repo, store=store, base_ms=base_ms, snapshots=snapshots,
                        last_processed_ms=clock.now_ms, log=log, dead=dead)  # fmt: skip
    return scenario, racing


def test_merged_view_equals_processing_time_backfill(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis
) -> None:
    scenario, racing = merged
    assert racing.conflicts > 0  # the races really made writes conflict
    _write_log(scenario)
    end = scenario.last_processed_ms + 1
    for t in (end, end + 7 * MINUTE, end + 61 * MINUTE, scenario.base_ms + DAY + 2 * HOUR + 1):
        online = scenario.store.get_online_features(REFS, ROWS, now_ms=t).to_dict()
        _assert_same(online, _backfill(scenario, t), t)
    for t, online in scenario.snapshots:
        _assert_same(online, _backfill(scenario, t), t)
    assert len(scenario.snapshots) >= 3
    # every store gathered events of several partitions, yet holds one tile set
    view = scenario.store.plan.views["store_sales"]
    spanning = 0
    for store_id in STORES:
        key = state_key(view, (store_id,))
        fields = redis_client.hgetall(key)
        slots = {field_name(n)[1] for n in fields if field_name(n) is not None}
        assert slots == {0}, key
        fences = {field_name(n)[1] for n in redis_client.hgetall(marks_key(key))
                  if field_name(n) is not None and field_name(n)[0] == "f"}  # fmt: skip
        spanning += len(fences) > 1
        assert redis_client.pttl(marks_key(key)) == redis_client.pttl(key)  # -1: lifetime
    assert spanning >= 3


def test_rebuild_online_of_a_merged_view(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis
) -> None:
    scenario, _ = merged
    _write_log(scenario)
    store = scenario.store
    view = store.plan.views["store_sales"]
    now = time.time_ns() // 1_000_000
    times = [now + MINUTE, scenario.base_ms + DAY + 2 * HOUR + 1]
    before = {t: store.get_online_features(REFS, ROWS, now_ms=t).to_dict() for t in times}
    redis_client.flushdb()  # everything lost: the log is all there is
    outcome = store.rebuild_online("store_sales")
    assert outcome.result.entities_written > 0
    assert outcome.result.records == len(scenario.log.records)
    for t in times:
        after = store.get_online_features(SALES_REFS, ROWS, now_ms=t).to_dict()
        assert after == {k: v for k, v in before[t].items() if k in after}, t
        _assert_same(after, _backfill_of(scenario, SALES_REFS, t), t)
    for store_id in STORES:  # one tile set, the fences of every partition in the marks
        key = state_key(view, (store_id,))
        slots = {field_name(n)[1] for n in redis_client.hgetall(key) if field_name(n)}
        assert slots == {0}
        assert redis_client.exists(marks_key(key))
    # the watermarks say the log's last offsets: a restarted worker finds nothing lost
    for p in {e.partition for e in scenario.log.records}:
        last = max(e.offset for e in scenario.log.records if e.partition == p)
        assert int(redis_client.get(f"sk:wm:{view.fingerprint}:{p}")) == last


def test_lost_state_of_a_merged_view_stops_the_batch(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Lost state of a merged view is never rebuilt in place (one partition's share of a
    merged tile set cannot be replaced): the batch fails uncommitted, naming the fix, and
    goes through once ``rebuild-online`` restored the view."""
    scenario, _ = merged
    _write_log(scenario)
    store = scenario.store
    reader = EventLogReader(store.config.event_log_root)
    recovery = StateRecovery(store.plan, reader, store.online_store,
                             log_root=store.config.event_log_root, clock=wall_clock_ms)  # fmt: skip
    log = EventLogWriter(store.config.event_log_root, "tx", dict(store.plan.sources["tx"].schema))
    clock = Clock(scenario.last_processed_ms + 1_000)
    worker = BatchProcessor(store.plan, "tx", online=store.online_store, log=log,
                            dead=ListDeadLetters(), clock=clock, recovery=recovery)  # fmt: skip
    codec = SourceCodec(store.plan.sources["tx"])
    payload = {"customer_id": "c1", "merchant_id": "m1", "store_id": 2, "amount": 5.5,
               "qty": 3, "ts": clock.now_ms - 1_000}  # fmt: skip
    p = partition_for(encode_key(["c1"]), PARTITIONS)
    top = {p: max(e.offset for e in scenario.log.records if e.partition == p)}
    batch = [SourceRecord(topic="tx", partition=p, offset=top[p] + 1, key=encode_key(["c1"]),
                          value=codec.encode(payload))]  # fmt: skip
    redis_client.flushdb()
    with pytest.raises(OnlineStateLost, match="rebuild-online"):
        worker.process(batch)
    with pytest.raises(OnlineStateLost):  # still lost: retried, refused again
        worker.process(batch)
    store.rebuild_online("store_sales")
    store.rebuild_online("customer_spend")
    outcome = worker.process(batch)
    assert outcome.applied == 2 and outcome.rebuilt == 0
    # the rebuild evicted what was stale at its (real) clock: compare as of later than that
    t = time.time_ns() // 1_000_000 + MINUTE
    refs = ["store_sales:amount_count_lifetime", "customer_spend:amount_last_lifetime"]
    rows = [{"store_id": 2, "customer_id": "c1"}]
    got = store.get_online_features(refs, rows, now_ms=t).to_dict()
    assert got["amount_last_lifetime"] == [5.5]
    want = _backfill_of(scenario, refs[:1], t, rows=rows)
    assert got["amount_count_lifetime"] == want["amount_count_lifetime"]
    assert want["amount_count_lifetime"][0] > 1  # the log's events and the new one


SALES_REFS = [r for r in REFS if r.startswith("store_sales:")]


def _backfill_of(
    scenario: Scenario, refs: list[str], t_ms: int, rows: list[dict[str, Any]] | None = None
) -> dict[str, list[Any]]:
    import pandas as pd

    rows = rows or [{"store_id": r["store_id"]} for r in ROWS]
    frame = pd.DataFrame({"store_id": [r["store_id"] for r in rows],
                          "event_timestamp": [t_ms] * len(rows)})  # fmt: skip
    out = scenario.store.get_historical_features(frame, refs, mode="processing_time", workers=1)
    return {c: out[c].tolist() for c in out.columns if c != "event_timestamp"}


def test_verify_reads_the_fences_of_a_merged_view(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis
) -> None:
    scenario, _ = merged
    _write_log(scenario)
    store = scenario.store
    at = scenario.last_processed_ms + 1
    report = store.verify(views=["store_sales"], seed=1, at_ms=at)
    assert report.ok and not report.mismatches, report.mismatches
    # an entity lost (its hash and its marks hash gone): explained, per source partition
    view = store.plan.views["store_sales"]
    key = state_key(view, (STORES[0],))
    redis_client.delete(key, marks_key(key))
    report = store.verify(views=["store_sales"], seed=1, at_ms=at, retries=0)
    kinds = {m.kind for m in report.mismatches}
    assert kinds == {"missing_online"}, report.mismatches
