"""Lost online state with fakes behind the core's Protocols: watermark rules, and a store that
is emptied, rolled back, or emptied while the worker was down comes back exactly from the log."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from connectors.eventlog import EventLogReader, EventLogWriter
from engine import FeatureStore
from engine.errors import ConfigError
from engine.ports import StateWrite, Watermark
from engine.stream.core import BatchProcessor, SourceRecord
from engine.stream.recovery import StateRecovery, Watermarks
from engine.watermarks import watermark_key
from tests.unit.stream.test_core import (
    PARTITIONS,
    T0,
    VIEWS,
    Letters,
    backfill_values,
    entity_sets,
    make_records,
    online_values,
)

BATCH = 37


class MarkingStore:
    """Hashes and strings behind OnlineStateStore, with ``SET … GET`` marks and faults."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.strings: dict[str, bytes] = {}
        self.lose_reply = False  # apply the next write, then fail as if its reply was lost

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        return [dict(self.hashes.get(k, {})) for k in keys]

    def load_watermarked(
        self, keys: Sequence[str], marks: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes]], list[bytes | None]]:
        """The hashes, then the watermarks (what a merge-on-write batch checks first)."""
        return self.load(keys), [self.strings.get(k) for k in marks]

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        for w in writes:
            h = self.hashes.setdefault(w.key, {})
            h.update({k.encode(): v for k, v in w.fields.items()})
            for name in w.delete:
                h.pop(name.encode(), None)
        old = [self.strings.get(m.key) for m in marks]
        for m in marks:
            self.strings[m.key] = m.value
        if self.lose_reply:
            self.lose_reply = False
            raise ConnectionError("connection reset while reading the reply")
        return old

    def snapshot(self) -> tuple[dict[str, dict[bytes, bytes]], dict[str, bytes]]:
        return copy.deepcopy(self.hashes), dict(self.strings)

    def restore(self, snap: tuple[dict[str, dict[bytes, bytes]], dict[str, bytes]]) -> None:
        self.hashes, self.strings = copy.deepcopy(snap[0]), dict(snap[1])

    def flush(self) -> None:
        self.hashes.clear()
        self.strings.clear()


class FlakyLog:
    """A real log writer that fails once when armed (a full disk)."""

    def __init__(self, inner: EventLogWriter) -> None:
        self.inner = inner
        self.armed = False

    def append(self, records):  # type: ignore[no-untyped-def]
        if self.armed:
            self.armed = False
            raise OSError(28, "No space left on device")
        return self.inner.append(records)

    def last_offset(self, partition: int) -> int | None:
        return self.inner.last_offset(partition)


class Run:
    """One source's processor over a fake store and a real log, restartable."""

    def __init__(self, store: FeatureStore, online: MarkingStore) -> None:
        self.store = store
        self.online = online
        self.letters = Letters()
        self.log = FlakyLog(
            EventLogWriter(store.config.event_log_root, "tx", dict(store.plan.sources["tx"].schema))
        )
        self._clock = iter(range(T0, T0 + 10**9, 20_000))
        self.recovery = StateRecovery(
            store.plan,
            EventLogReader(store.config.event_log_root),
            online,
            log_root=store.config.event_log_root,
            clock=self.clock,
        )
        self.core = self.restart()
        self.failures: list[str] = []
        self.rebuilt = 0

    def clock(self) -> int:
        return next(self._clock)

    def restart(self) -> BatchProcessor:
        """A fresh processor, as a restarted worker has: no cache, no watermark expectations."""
        self.core = BatchProcessor(self.store.plan, "tx", online=self.online, log=self.log,
                                   dead=self.letters, clock=self.clock, recovery=self.recovery)  # fmt: skip
        return self.core

    def feed(self, records: list[SourceRecord], fault: Callable[[int], None] | None = None) -> None:
        for batch, start in enumerate(range(0, len(records), BATCH)):
            if fault:
                fault(batch)
            while True:
                try:
                    self.rebuilt += self.core.process(records[start : start + BATCH]).rebuilt
                    break
                except (ConnectionError, OSError) as exc:
                    self.failures.append(type(exc).__name__)


def check_exact(store: FeatureStore, run: Run, records: list[SourceRecord]) -> None:
    """Online state equals the processing-time backfill of the log; every record logged once
    or dead-lettered."""
    last = max(
        e.processed_at_ms for e in EventLogReader(store.config.event_log_root).read_all("tx")
    )
    for t in (last + 1, last + 60_000, last + 7 * 60_000):
        online = online_values(store, run.online, entity_sets(), t)  # type: ignore[arg-type]
        assert online == backfill_values(store, entity_sets(), t)
        assert sum(1 for v in online.values() if v[0]) > 3  # non-trivial windows
    logged = [
        (e.partition, e.offset) for e in EventLogReader(store.config.event_log_root).read_all("tx")
    ]
    assert len(logged) == len(set(logged))
    dead = {(d.partition, d.offset) for d in run.letters.sent}
    assert set(logged) | dead == {(r.partition, r.offset) for r in records}
    assert not set(logged) & dead


@pytest.fixture
def repo(make_repo: Callable[..., Path]) -> Path:
    return make_repo(VIEWS, yaml=f"kafka:\n  partitions: {PARTITIONS}\n")


def test_an_emptied_store_is_rebuilt_in_place(repo: Path) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 900, seed=11)
    run = Run(store, MarkingStore())

    def fault(batch: int) -> None:
        if batch in (6, 15):
            run.online.flush()  # FLUSHALL

    run.feed(records, fault)
    # every view's state of every partition written after a flush was rebuilt
    assert run.rebuilt == run.recovery.rebuilds == 2 * len(store.plan.views) * PARTITIONS
    check_exact(store, run, records)


def test_a_store_rolled_back_to_an_earlier_state_is_rebuilt(repo: Path) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 900, seed=12)
    run = Run(store, MarkingStore())
    saved: list[tuple[dict[str, dict[bytes, bytes]], dict[str, bytes]]] = []

    def fault(batch: int) -> None:
        if batch == 5:
            saved.append(run.online.snapshot())
        elif batch == 11:  # a restart that lost its last writes, a failover to a lagging replica
            run.online.restore(saved[0])

    run.feed(records, fault)
    assert run.rebuilt > 0
    check_exact(store, run, records)


def test_a_store_emptied_while_the_worker_was_down_is_found_on_restart(repo: Path) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 900, seed=13)
    run = Run(store, MarkingStore())
    run.feed(records[:450])
    assert run.rebuilt == 0
    run.online.flush()
    run.restart()  # no expectations: the missing watermarks are judged against the log
    run.feed(records[450:])
    assert run.rebuilt == len(store.plan.views) * PARTITIONS
    check_exact(store, run, records)


def test_lost_replies_and_failed_log_appends_are_not_lost_state(repo: Path) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 900, seed=14)
    run = Run(store, MarkingStore())

    def fault(batch: int) -> None:
        if batch % 4 == 1:
            run.online.lose_reply = True  # Redis applied the pipeline, the reply was lost
        elif batch % 4 == 2:
            run.log.armed = True  # Redis written, the log append fails
        elif batch % 7 == 3:
            run.restart()  # a crash: the next owner starts without expectations

    run.feed(records, fault)
    assert run.failures.count("ConnectionError") >= 5 and run.failures.count("OSError") >= 5
    assert run.rebuilt == 0  # no false alarm
    check_exact(store, run, records)


def test_a_view_new_to_a_non_empty_log_fills_itself_from_the_log(
    repo: Path, make_repo: Callable[..., Path]
) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 900, seed=15)
    online = MarkingStore()
    Run(store, online).feed(records[:450])
    extra = 'late = FeatureView("late", entity=customer, source=tx, aggregations=[\n' + (
        '    Aggregation("amount", "sum", window="1h")])\n'
    )
    grown = FeatureStore.from_repo(
        make_repo(VIEWS + extra, yaml=f"kafka:\n  partitions: {PARTITIONS}\n")
    )
    assert grown.config.event_log_root == store.config.event_log_root
    run = Run(grown, online)
    run.feed(records[450:])
    assert run.rebuilt == PARTITIONS  # only the new view's state was missing
    last = max(
        e.processed_at_ms for e in EventLogReader(grown.config.event_log_root).read_all("tx")
    )
    keys = {"late": [(f"c{i}",) for i in range(13)]}
    online_now = online_values(grown, online, keys, last + 1)  # type: ignore[arg-type]
    assert online_now == backfill_values(grown, keys, last + 1)
    assert sum(1 for v in online_now.values() if v[0]) > 3


class _Log:
    def __init__(self, last: dict[int, int]) -> None:
        self.last = last

    def append(self, records: object) -> list[str]:
        return []

    def last_offset(self, partition: int) -> int | None:
        return self.last.get(partition)


@pytest.mark.parametrize(
    ("previous", "logged", "lost"),
    [
        (None, None, False),  # nothing ever logged: nothing to lose
        (None, 5, True),  # the log holds records, Redis nothing
        (b"3", 5, True),  # Redis is behind the log
        (b"5", 5, False),
        (b"9", 5, False),  # Redis ahead of the log: written, not yet logged
        (b"junk", 5, True),
        (None, -1, True),  # imported history only (negative offsets): not in Redis yet
        (b"-1", -1, False),  # a rebuild of that history set it
    ],
)
def test_first_write_after_an_assignment_is_judged_against_the_log(
    repo: Path, previous: bytes | None, logged: int | None, lost: bool
) -> None:
    view = FeatureStore.from_repo(repo).plan.views["spend"]
    marks = Watermarks([view])
    log = _Log({} if logged is None else {0: logged})
    pending = marks.prepare({0: 4}, log)
    assert [m.key for _, m, _ in pending] == [watermark_key(view, 0)]
    assert pending[0][1].value == (b"4" if logged is None else str(max(4, logged)).encode())
    assert bool(marks.confirm(pending, [previous])) is lost


def test_later_writes_must_find_what_this_worker_wrote(repo: Path) -> None:
    view = FeatureStore.from_repo(repo).plan.views["spend"]
    marks = Watermarks([view])
    log = _Log({})
    assert not marks.confirm(marks.prepare({0: 10}, log), [None])
    assert not marks.confirm(marks.prepare({0: 20}, log), [b"10"])
    lost = marks.confirm(marks.prepare({0: 30}, log), [None])  # emptied
    assert lost and "missing" in lost[0].reason and "20" in lost[0].reason
    assert marks.confirm(marks.prepare({0: 40}, log), [b"20"])  # rolled back
    failed = marks.prepare({0: 50}, log)
    marks.failed(failed)  # the reply of the write carrying 50 was lost
    assert not marks.confirm(marks.prepare({0: 60}, log), [b"50"])
    marks.forget([0])  # revoked: the next write starts afresh
    assert not marks.confirm(marks.prepare({0: 70}, log), [b"65"])


class LoadOnlyStore(MarkingStore):
    """A store without ``load_watermarked``: the merged views' pre-write check cannot run."""

    def __getattribute__(self, name: str) -> object:
        if name == "load_watermarked":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_merged_views_refuse_a_store_that_cannot_read_watermarks_after_hashes(
    repo: Path,
) -> None:
    store = FeatureStore.from_repo(repo)
    merged = sorted(v.name for v in store.plan.views.values() if v.merged)
    assert merged, "the definitions need a view keyed off its topic"
    with pytest.raises(ConfigError, match="load_watermarked") as info:
        Run(store, LoadOnlyStore())
    assert all(name in str(info.value) for name in merged)
    # without recovery (no watermarks at all) the same store is accepted
    BatchProcessor(store.plan, "tx", online=LoadOnlyStore(), log=None, dead=Letters())  # type: ignore[arg-type]
