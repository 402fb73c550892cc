"""The worker's hash update (``BatchProcessor`` over the native ``OnlineCore``): stale tiles
leave the hash at the first write after they went stale — also in sparse hashes holding fewer
tiles than a window spans, and when a late event made a tile older than every tile held; a
write before anything is stale deletes nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from engine.envelope import Envelope
from engine.keys import encode_key
from engine.online import state_key, tile_field
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.unit.stream.test_core import FakeStore, Letters

MINUTE = 60_000
T0 = 1_800_000_000_000  # on an hour boundary
BODY = """
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="10m", hop="1m"),
    Aggregation("amount", "count", window="1h", hop="10m"),
])
"""
ONE, TEN = MINUTE, 10 * MINUTE  # the two hop groups


class MemoryLog:
    """EventLogSink keeping envelopes in memory, dropping offsets it already holds."""

    def __init__(self) -> None:
        self.records: list[Envelope] = []

    def append(self, records: Sequence[Envelope]) -> list[str]:
        for env in records:
            if env.offset > (self.last_offset(env.partition) or -1):
                self.records.append(env)
        return []

    def last_offset(self, partition: int) -> int | None:
        return max((e.offset for e in self.records if e.partition == partition), default=None)


class Worker:
    """One entity's events through real batches; ``restart`` makes every batch run on a
    fresh processor (state loaded from the hash, nothing cached)."""

    def __init__(self, make_repo: Callable[..., Path], restart: bool) -> None:
        self.store = FeatureStore.from_repo(make_repo(BODY))
        self.view = self.store.plan.views["spend"]
        self.codec = SourceCodec(self.store.plan.sources["tx"])
        self.fake, self.log, self.dead = FakeStore(), MemoryLog(), Letters()
        self.restart = restart
        self.offset = 0
        self.now = T0
        self.core = self._new()

    def _new(self) -> BatchProcessor:
        return BatchProcessor(self.store.plan, "tx", online=self.fake, log=self.log,
                              dead=self.dead, clock=lambda: self.now)  # fmt: skip

    def batch(self, event_ms: int, now_ms: int) -> set[str]:
        """Process one event of c1 at ``now_ms``; the tile fields of c1's hash after it."""
        self.now = now_ms
        if self.restart:
            self.core = self._new()
        payload = {"customer_id": "c1", "merchant_id": "m1", "amount": 1.0, "qty": 1,
                   "ts": event_ms}  # fmt: skip
        record = SourceRecord(topic="tx", partition=0, offset=self.offset,
                              key=encode_key(["c1"]), value=self.codec.encode(payload))  # fmt: skip
        self.offset += 1
        outcome = self.core.process([record])
        assert outcome.applied == 1 and not self.dead.sent
        return self.tiles()

    def tiles(self) -> set[str]:
        fields = self.fake.hashes[state_key(self.view, ("c1",))]
        return {name.decode() for name in fields if name.startswith(b"t:")}


def tiles_of(*event_times: int) -> set[str]:
    """The 1-minute and 10-minute tile fields holding ``event_times`` (partition 0)."""
    return {tile_field(0, hop, t // hop) for t in event_times for hop in (ONE, TEN)}


@pytest.mark.parametrize("restart", [False, True], ids=["cached", "restarted"])
def test_stale_tiles_of_a_sparse_hash_are_deleted_at_the_next_write(
    make_repo: Callable[..., Path], restart: bool
) -> None:
    worker = Worker(make_repo, restart)
    t0 = T0 + 3 * MINUTE
    assert worker.batch(t0, t0) == tiles_of(t0)
    # 30 minutes on, the 1-minute tile of t0 is stale (10m window), the 10-minute one is not;
    # the hash held one 1-minute tile of a window spanning ten
    now = t0 + 30 * MINUTE
    assert worker.batch(now, now) == tiles_of(t0, now) - {tile_field(0, ONE, t0 // ONE)}
    # 75 minutes on, the 10-minute tile of t0 goes too (1h window), and the 1-minute tile
    # of t0 + 30m; the 10-minute tile of t0 + 30m stays
    later = t0 + 75 * MINUTE
    assert worker.batch(later, later) == tiles_of(later) | {tile_field(0, TEN, now // TEN)}
    fields = worker.fake.hashes[state_key(worker.view, ("c1",))]
    assert {b"f:0", b"u:0", b"j:0"} <= set(fields) and fields[b"f:0"] == b"2"


@pytest.mark.parametrize("restart", [False, True], ids=["cached", "restarted"])
def test_a_write_before_anything_is_stale_deletes_nothing(
    make_repo: Callable[..., Path], restart: bool
) -> None:
    worker = Worker(make_repo, restart)
    t0 = T0 + 3 * MINUTE
    worker.batch(t0, t0)
    assert worker.batch(t0 + 5 * MINUTE, t0 + 5 * MINUTE) == tiles_of(t0, t0 + 5 * MINUTE)
    # the 1-minute tile of t0 goes stale at (k + 10) minutes + 1 ms, not before; writes in
    # between (touching newer tiles) must not push that eviction later
    stale_at = (t0 // ONE + 10) * ONE + 1
    assert worker.batch(stale_at - 1, stale_at - 1) == tiles_of(t0, t0 + 5 * MINUTE, stale_at - 1)
    assert worker.batch(stale_at, stale_at) == (
        tiles_of(t0, t0 + 5 * MINUTE, stale_at - 1, stale_at) - {tile_field(0, ONE, t0 // ONE)}
    )


@pytest.mark.parametrize("restart", [False, True], ids=["cached", "restarted"])
def test_a_late_tile_older_than_every_tile_held_moves_the_eviction_earlier(
    make_repo: Callable[..., Path], restart: bool
) -> None:
    worker = Worker(make_repo, restart)
    t0 = T0 + 3 * MINUTE
    worker.batch(t0, t0)
    late = t0 - 8 * MINUTE  # still inside the 10m window at t0
    assert worker.batch(late, t0) == tiles_of(t0, late)
    # the late 1-minute tile goes stale before the one of t0 (at t0 + 10m + 1 ms)
    stale_at = (late // ONE + 10) * ONE + 1
    assert stale_at < (t0 // ONE + 10) * ONE + 1
    assert worker.batch(stale_at - 1, stale_at - 1) == tiles_of(t0, late, stale_at - 1)
    assert worker.batch(stale_at, stale_at) == (
        tiles_of(t0, late, stale_at - 1, stale_at) - {tile_field(0, ONE, late // ONE)}
    )
