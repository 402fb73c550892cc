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

from engine.errors import OnlineWriteConflict
from engine.keys import encode_key, partition_for
from engine.online import field_name, marks_key, state_key
from engine.plan import with_merged_tiles
from engine.ports import OnlineStateStore, StateWrite, Watermark
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
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
