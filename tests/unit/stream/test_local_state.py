"""The worker's local state tier (engine/stream/local_state.py): entries the cache evicts are
spilled to RocksDB and loaded back, a restarted worker starts warm from them, and an entry
whose fence or journal Redis no longer holds is refused and reloaded (never served stale)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from connectors.eventlog import EventLogWriter
from engine import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from engine.stream.local_state import LocalState
from tests.unit.stream.test_core import (
    PARTITIONS,
    T0,
    VIEWS,
    FakeStore,
    Letters,
    backfill_values,
    entity_sets,
    make_records,
    online_values,
)


class CountingStore(FakeStore):
    """A FakeStore counting the hashes it loads, with ``load_and_marks`` as Redis has it."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = 0
        self.marks_read = 0

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        self.loaded += len(keys)
        return super().load(keys)

    def load_and_marks(
        self, keys: Sequence[str], marked: Sequence[tuple[str, int]]
    ) -> tuple[list[dict[bytes, bytes]], list[tuple[bytes | None, bytes | None]]]:
        self.marks_read += len(marked)
        fields = [self.hashes.get(key, {}) for key, _ in marked]
        marks = [
            (h.get(b"f:%d" % p), h.get(b"j:%d" % p))
            for h, (_, p) in zip(fields, marked, strict=True)
        ]
        return self.load(keys), marks


@pytest.fixture
def store(make_repo: Callable[..., Path]) -> FeatureStore:
    """``shop`` (keyed by merchant) on the local tier holds per-partition entries (merge-on-write ones are never spilled)."""
    yaml = f"kafka:\n  partitions: {PARTITIONS}\nonline:\n  merge_rekeyed_views: false\n"
    return FeatureStore.from_repo(make_repo(VIEWS, yaml=yaml))


def processor(
    store: FeatureStore, online: FakeStore, local: LocalState | None, cache: int, at: int
) -> BatchProcessor:
    log = EventLogWriter(store.config.event_log_root, "tx", dict(store.plan.sources["tx"].schema))
    clock = iter(range(at, at + 10**9, 20_000))
    return BatchProcessor(store.plan, "tx", online=online, log=log, dead=Letters(),
                          clock=lambda: next(clock), cache_entities=cache, local=local)  # fmt: skip


def feed(core: BatchProcessor, records: list[SourceRecord], size: int = 37) -> None:
    for start in range(0, len(records), size):
        core.process(records[start : start + size])


def test_local_store_roundtrip_and_slots(tmp_path: Path) -> None:
    one = LocalState.open(tmp_path / "w")
    one.put([b"a", b"b"], [b"1", b"\x00\xff"])
    assert one.get([b"b", b"x", b"a"]) == [b"\x00\xff", None, b"1"]
    two = LocalState.open(tmp_path / "w")  # the first slot is locked by `one`
    assert two.path != one.path and two.get([b"a"]) == [None]
    two.close()
    one.close()
    again = LocalState.open(tmp_path / "w")
    assert again.path == one.path and again.get([b"a"]) == [b"1"]
    again.close()


def test_spilled_state_equals_the_all_in_memory_run(store: FeatureStore, tmp_path: Path) -> None:
    records = make_records(store, 800, seed=11)
    memory = FakeStore()
    feed(processor(store, memory, None, 200_000, T0), records)
    dropped = FakeStore()  # the same cache bound, evicted entries reloaded from the store
    feed(processor(store, dropped, None, 3, T0), records)
    bounded = CountingStore()
    local = LocalState.open(tmp_path / "local")
    core = processor(store, bounded, local, 3, T0)
    feed(core, records)
    assert core.cached_entities <= 3 + 37 * 2  # the cache's bound and one batch's entries
    assert core.local_counts["spilled"] > 100 and core.local_counts["hits"] > 100
    assert core.local_counts["stale"] == 0
    # bit for bit (tiles, fences, journals) as when evicted entries are reloaded from the
    # store; a reloaded count_distinct tile may list its set in another order than the
    # all-in-memory run's, so that one is compared by values
    assert bounded.hashes == dropped.hashes
    end = T0 + 10**8
    for t in (end, T0 + 20_000 * 23):
        want = online_values(store, memory, entity_sets(), t)
        assert online_values(store, bounded, entity_sets(), t) == want
    assert want == backfill_values(store, entity_sets(), T0 + 20_000 * 23)
    core.close()


def test_a_restarted_worker_starts_warm(store: FeatureStore, tmp_path: Path) -> None:
    records = make_records(store, 600, seed=12)
    reference = FakeStore()
    feed(processor(store, reference, None, 200_000, T0), records)

    online = CountingStore()
    first = processor(store, online, LocalState.open(tmp_path / "local"), 1_000, T0)
    feed(first, records[:300])
    first.close()  # spills every cached entry
    cold = CountingStore()
    cold.hashes = {k: dict(v) for k, v in online.hashes.items()}
    again = processor(store, cold, None, 1_000, T0 + 300 // 37 * 20_000 + 20_000)
    warm = processor(
        store, online, LocalState.open(tmp_path / "local"), 1_000,
        T0 + 300 // 37 * 20_000 + 20_000,
    )  # fmt: skip
    online.loaded = 0
    feed(warm, records[300:])
    feed(again, records[300:])
    assert warm.local_counts["hits"] > 0 and warm.local_counts["stale"] == 0
    assert online.loaded < cold.loaded / 2  # hashes loaded from Redis: far fewer when warm
    assert online.hashes == cold.hashes
    end = T0 + 10**8
    assert online_values(store, online, entity_sets(), end) == online_values(
        store, reference, entity_sets(), end
    )
    warm.close()


def test_state_written_behind_the_workers_back_is_reloaded(
    store: FeatureStore, tmp_path: Path
) -> None:
    """A worker spills its entries, another worker (the partitions reassigned) writes the
    same entities in Redis; back on the first worker, every such local entry is refused
    (its fence and journal are not Redis's) and Redis's state is the one folded."""
    records = make_records(store, 900, seed=13)
    reference = FakeStore()
    feed(processor(store, reference, None, 200_000, T0), records)

    online = FakeStore()
    local = LocalState.open(tmp_path / "local")
    first = processor(store, online, local, 1_000, T0)
    feed(first, records[:300])
    first.close()  # everything in the local store, as after a restart
    other = processor(store, online, None, 200_000, T0 + 11 * 20_000)  # the other worker
    feed(other, records[300:600])
    back = processor(store, online, LocalState.open(tmp_path / "local"), 1_000, T0 + 20 * 20_000)
    feed(back, records[600:])
    assert back.local_counts["stale"] > 0  # refused: the other worker's writes won
    assert back.local_counts["hits"] == 0  # every entity it held was written since
    end = T0 + 10**8
    got = online_values(store, online, entity_sets(), end)
    assert got == online_values(store, reference, entity_sets(), end)
    back.close()


def test_a_write_that_keeps_the_fence_still_refuses_the_entry(
    store: FeatureStore, tmp_path: Path
) -> None:
    """Same fence, another journal (a retried batch at another processed_at, a rebuild):
    the local entry is not Redis's state and is refused."""
    records = make_records(store, 120, seed=14)
    online = FakeStore()
    first = processor(store, online, LocalState.open(tmp_path / "local"), 1_000, T0)
    feed(first, records)
    first.close()
    for fields in online.hashes.values():  # behind the worker's back: a new journal
        for name in [n for n in fields if n.startswith(b"j:")]:
            fields[name] = b"\x91\x92\x01\x02"
    back = processor(store, online, LocalState.open(tmp_path / "local"), 1_000, T0 + 10**6)
    fresh = records[-1]
    feed(back, [fresh._replace(offset=fresh.offset + 1)])
    assert back.local_counts["stale"] >= 1 and back.local_counts["hits"] == 0
    back.close()
