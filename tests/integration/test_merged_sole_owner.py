"""A sole owner of a source (its assignment covers every partition) keeps its merge-on-write
entries cached across batches (docs/decisions.md, merge-on-write): each merged entity is
loaded once, every write stays a strict compare-and-set on the version cached, so another
writer, a flushed or a reverted Redis is still caught by a refused write (then reloaded,
re-applied, the fences skipping what landed) or by the watermarks swapped with it; a revoke
drops the entries at once. Online reads equal the processing-time replay of the log (real
Redis)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.ports import OnlineStateStore
from engine.stream.core import BatchProcessor
from tests.integration.test_merged_tiles import (
    PARTITIONS,
    ConflictCountingStore,
    HealingRun,
    RedisSnapshot,
    _records,
    _worker,
)
from tests.integration.test_merged_tiles import repo as repo
from tests.integration.test_online_read import ListDeadLetters, ListLog

pytestmark = pytest.mark.redis


class CountingStore(ConflictCountingStore):
    """The real store, counting each merged entity hash loaded and the refused writes."""

    def __init__(self, inner: OnlineStateStore, prefix: str) -> None:
        super().__init__(inner)
        self.prefix = prefix  # the merged view's entity hashes: sk:<fingerprint>:
        self.loads: Counter[str] = Counter()

    def _count(self, keys: Sequence[str]) -> None:
        self.loads.update(k for k in keys if k.startswith(self.prefix))

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        self._count(keys)
        return self.inner.load(keys)

    def load_watermarked(self, keys: Sequence[str], marks: Sequence[str]) -> Any:
        self._count(keys)
        return self.inner.load_watermarked(keys, marks)  # type: ignore[attr-defined]

    def load_and_marks(self, keys: Sequence[str], marked: Sequence[tuple[str, int]]) -> Any:
        self._count(keys)
        return self.inner.load_and_marks(keys, marked)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SoleRun(HealingRun):
    """One worker with recovery owning all the source's partitions (told the topic's
    partition count and assigned them all, as the Kafka runtime does), batch by batch, the
    log on disk; ``disasters`` run before the batch of that number."""

    def __init__(self, repo: Path, *, keep: bool | None = None) -> None:
        super().__init__(repo)
        self.streams = [_records(self.store, self.base_ms)]
        self.cursors = [0]
        view = self.store.plan.views["store_sales"]
        assert view.merged
        self.counting = CountingStore(self.store.online_store, f"sk:{view.fingerprint}:")
        self.worker = _worker(self.store, self.clock, online=self.counting, keep_merged=keep)
        self.worker.set_source_partitions(PARTITIONS)
        self.worker.assign(range(PARTITIONS), 1)
        self.workers = [self.worker]

    def run(self, disasters: dict[int, Any], *, together: Sequence[int] = ()) -> int:
        assert not together
        rebuilt = 0
        n = 0
        while self.cursors[0] < len(self.streams[0]):
            n += 1
            if n in disasters:
                disasters[n]()
            batch = self.batch(0)
            if batch:
                rebuilt += self.worker.process(batch).rebuilt
        return rebuilt


def test_a_sole_owner_loads_each_merged_entity_once(repo: Path, redis_client: redis.Redis) -> None:
    run = SoleRun(repo)
    assert run.worker.keeps_merged
    assert run.run({}) == 0
    assert run.counting.conflicts == 0
    loads = run.counting.loads
    assert len(loads) >= 3 and set(loads.values()) == {1}, loads  # each merged entity once
    run.assert_equals_reference(redis_client)


def test_several_workers_reload_every_batch(repo: Path, redis_client: redis.Redis) -> None:
    """Not every partition assigned (or the switch off): merged entries are reloaded per
    batch, as before."""
    run = SoleRun(repo)
    run.worker.forget_partitions([3])
    assert not run.worker.keeps_merged
    off = SoleRun(repo, keep=False)
    assert not off.worker.keeps_merged
    redis_client.flushdb()
    off.run({})
    assert max(off.counting.loads.values()) > 1
    off.assert_equals_reference(redis_client)


def test_another_writer_between_batches_is_refused_and_reloaded(
    repo: Path, redis_client: redis.Redis
) -> None:
    """A worker of an earlier generation (no owner epochs here) writes the merged view for
    a batch it never commits; the sole owner then gets the batch again: the entities the
    other wrote carry another version, so the sole owner's writes of them are refused,
    reloaded and folded again, the fences skipping what the other applied — nothing counted
    twice, nothing lost."""
    run = SoleRun(repo)
    plan = run.store.plan
    merged_only = replace(plan, views={"store_sales": plan.views["store_sales"]})
    skew = 0  # the other's processed_at is the sole owner's minus skew

    def other_clock() -> int:
        return run.clock.now_ms - skew

    other = BatchProcessor(merged_only, "tx", online=run.store.online_store, log=ListLog(),
                           dead=ListDeadLetters(), clock=other_clock)  # fmt: skip
    fenced = 0

    def intrude(by: int) -> None:
        nonlocal fenced, skew
        skew = by
        batch = run.batch(0)
        assert batch
        assert other.process(batch).applied > 0
        conflicts = run.counting.conflicts
        outcome = run.worker.process(batch)  # redelivered to the sole owner
        if by:  # its cached versions were refused
            assert run.counting.conflicts > conflicts
            fenced += outcome.fenced
        else:  # the same fold of the same version at the same time: the same version, the
            # same content (a retried write passes its compare-and-set)
            assert run.counting.conflicts == conflicts

    run.run({6: lambda: intrude(0), 12: lambda: intrude(7), 13: lambda: intrude(1_000)})
    assert fenced > 0  # what the other applied was skipped, not counted twice
    assert max(run.counting.loads.values()) > 1  # reloaded after the refused writes
    run.assert_equals_reference(redis_client)


def test_a_rebuild_between_batches_is_refused_and_reloaded(
    repo: Path, redis_client: redis.Redis
) -> None:
    """``rebuild-online`` of the merged view between two batches writes every entity at
    another version: the sole owner's next writes are refused and reloaded, the fences
    skipping what the rebuild holds."""
    run = SoleRun(repo)
    run.run({10: lambda: run.store.rebuild_online("store_sales")})
    assert run.counting.conflicts > 0
    assert max(run.counting.loads.values()) > 1
    run.assert_equals_reference(redis_client)


def test_flushed_redis_is_detected_and_healed_by_a_sole_owner(
    repo: Path, redis_client: redis.Redis
) -> None:
    """Redis emptied between two batches: no merged entity is reloaded, yet the strict
    compare-and-set refuses the cached versions and the watermarks swapped with the write
    say the state is lost; the partitions are rebuilt in place and the batch folded again."""
    run = SoleRun(repo)
    rebuilt = run.run({9: redis_client.flushdb})
    assert rebuilt >= 2
    run.assert_equals_reference(redis_client)


def test_reverted_redis_is_detected_and_healed_by_a_sole_owner(
    repo: Path, redis_client: redis.Redis
) -> None:
    """A failover to a replica that lacks the last rounds of writes (Redis reverted to an
    older, consistent state) between two batches of a sole owner."""
    run = SoleRun(repo)
    redis_at = RedisSnapshot(redis_client)
    rebuilt = run.run({8: redis_at.take, 15: redis_at.revert})
    assert rebuilt >= 2
    run.assert_equals_reference(redis_client)


def test_a_revoke_drops_the_merged_entries(repo: Path, redis_client: redis.Redis) -> None:
    """A partition revoked: the worker no longer writes every partition, so its merged
    entries are dropped at once and its next batch loads the merged entities it touches
    again; assigned every partition again, it keeps them from then on."""
    run = SoleRun(repo)
    for _ in range(6):
        run.worker.process(run.batch(0))
    before = Counter(run.counting.loads)
    run.worker.process(run.batch(0))  # kept: only entities new to the worker are loaded
    assert all(before[k] == 0 for k in run.counting.loads - before)
    before = Counter(run.counting.loads)
    run.worker.forget_partitions([3])  # one partition revoked
    assert not run.worker.keeps_merged
    batch = [r for r in run.batch(0) if r.partition != 3]
    assert batch
    run.worker.process(batch)
    again = [k for k in run.counting.loads - before if before[k] >= 1]
    assert again  # merged entities loaded before are loaded again
    run.worker.assign([3], 2)  # every partition again: kept from now on
    assert run.worker.keeps_merged
