"""rebuild-online's replay (``engine.rebuild``, the native ``Replay``): the log files folded
natively equal the same files folded through the Python path, a view rebuilt with its
partitions replayed in parallel is written partition by partition, in order, and reads what
the workers wrote, and several views rebuilt in one pass over the log write what each
rebuilt alone writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from connectors.eventlog import EventLogReader
from engine import FeatureStore, _native
from engine import rebuild as rebuild_module
from engine.plan import with_merged_tiles
from engine.ports import StateWrite, Watermark
from engine.rebuild import _replay, rebuild_view, rebuild_views
from tests.unit.stream.test_core import (
    PARTITIONS,
    T0,
    FakeStore,
    make_records,
    online_values,
    run,
)

VIEWS = """
merchant = Entity("merchant", join_keys=["merchant_id"])
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="10m", hop="1m"),
    Aggregation("amount", "count", window="1h"),
    Aggregation("qty", "last", window="lifetime"),
])
shop = FeatureView("shop", entity=merchant, source=tx, allowed_lateness="2m", aggregations=[
    Aggregation("amount", "sum", window="5m", hop="1m"),
    Aggregation("customer_id", "count_distinct", window="5m", hop="1m"),
    Aggregation("amount", "max", window="1h"),
])
"""


class _Recording(FakeStore):
    """The unit tests' store, taking watermarks and recording the order of the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[tuple[str, int | str]] = []

    def write(  # type: ignore[override]
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        for w in writes:
            if w.key.startswith("sk:stats:"):  # the view's stats: newest event per partition
                (p,) = {int(name.split(":")[1]) for name in w.fields if name.startswith("e:")}
                self.order.append(("stats", p))
                continue
            (p,) = {int(name.split(":")[1]) for name in w.fields if name.startswith("f:")}
            self.order.append(("write", p))
        self.order.extend(("mark", m.key) for m in marks)
        return super().write(writes)


@pytest.fixture
def store(make_repo: Callable[..., Path]) -> FeatureStore:
    """``shop`` (keyed by merchant) on the per-partition layout; the merged one via ``with_merged_tiles``."""
    yaml = f"kafka:\n  partitions: {PARTITIONS}\nonline:\n  merge_rekeyed_views: false\n"
    return FeatureStore.from_repo(make_repo(VIEWS, yaml=yaml))


def _written(replay: Any) -> list[tuple[int, Any]]:
    return [(v, raw) for v, chunk in replay.writes for raw in chunk.native.to_list()]


def test_native_file_fold_equals_the_python_path(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(store, make_records(store, 700, seed=11))
    log = EventLogReader(store.config.event_log_root)
    views = [store.plan.views["spend"], store.plan.views["shop"]]
    now = T0 + 20_000 * 25
    native = [_replay(views, store.plan, log, p, None, now, drop_expired=False)
              for p in range(PARTITIONS)]  # fmt: skip

    native_replay = _native.Replay

    class PythonPath:  # the native Replay, declining to decode files itself
        def __init__(self, *args: Any) -> None:
            self.inner = native_replay(*args)

        def fold_file(self, data: bytes, high: int, now_ms: int, upto: int) -> None:
            return None

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    monkeypatch.setattr(rebuild_module._native, "Replay", PythonPath)
    python = [_replay(views, store.plan, log, p, None, now, drop_expired=False)
              for p in range(PARTITIONS)]  # fmt: skip
    for a, b in zip(native, python, strict=True):
        assert (a.records, a.last_offset) == (b.records, b.last_offset)
        assert a.records > 0
        assert _written(a) == _written(b)
        assert {v for v, _ in _written(a)} == {0, 1}


def test_partitions_are_written_in_order_and_read_as_the_workers_wrote(
    store: FeatureStore,
) -> None:
    fake, _ = run(store, make_records(store, 900, seed=3))
    end = T0 + 20_000 * (900 // 37 + 2)
    entities = {
        "spend": [(f"c{i}",) for i in range(12)],
        "shop": [(f"m{i}",) for i in range(4)],
    }
    for name in ("spend", "shop"):
        rebuilt = _Recording()
        result = rebuild_view(store.plan, name, EventLogReader(store.config.event_log_root),
                              rebuilt, now_ms=end)  # fmt: skip
        assert result.entities_written == sum(kind == "write" for kind, _ in rebuilt.order)
        # each partition's writes, then its watermark, partition after partition
        seen = [p for kind, p in rebuilt.order if kind == "write"]
        assert seen == sorted(seen) and len(set(seen)) == PARTITIONS
        marks = [i for i, (kind, _) in enumerate(rebuilt.order) if kind == "mark"]
        assert len(marks) == PARTITIONS
        # each partition's stats follow its writes, before its watermark
        stats = [(i, p) for i, (kind, p) in enumerate(rebuilt.order) if kind == "stats"]
        assert [p for _, p in stats] == sorted(set(seen))
        for (at, p), mark in zip(stats, marks, strict=True):
            assert at < mark and all(q <= p for kind, q in rebuilt.order[:at] if kind == "write")
        for i, at in enumerate(marks):
            before = {p for kind, p in rebuilt.order[:at] if kind == "write"}
            assert max(before) == i
        for t in (end, end + 60_000):
            assert online_values(store, rebuilt, {name: entities[name]}, t) == online_values(
                store, fake, {name: entities[name]}, t
            )


class _TakesMarks(FakeStore):
    """The unit tests' store, dropping watermarks."""

    def write(  # type: ignore[override]
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        return super().write(writes)


class _Envelopes:
    """The log as an ``EventLogSource`` that is not ``LogFiles``: envelopes, not files."""

    def __init__(self, inner: EventLogReader) -> None:
        self.inner = inner

    def partitions(self, source: str) -> list[int]:
        return list(self.inner.partitions(source))

    def read(self, source: str, partition: int) -> Any:
        return self.inner.read(source, partition)


def test_a_merged_view_rebuilds_into_one_tile_set(store: FeatureStore) -> None:
    """``rebuild_view`` of a merge-on-write view (``with_merged_tiles``): the log files and
    the envelope path fold every partition into one tile set per entity, and it reads what
    the per-partition rebuild of the same log reads."""
    run(store, make_records(store, 900, seed=3))
    merged = FeatureStore(with_merged_tiles(store.plan), store.config)
    assert merged.plan.views["shop"].merged and not merged.plan.views["spend"].merged
    end = T0 + 20_000 * (900 // 37 + 2)
    log = EventLogReader(store.config.event_log_root)
    files, envelopes, per_partition = _TakesMarks(), _TakesMarks(), _TakesMarks()
    rebuild_view(merged.plan, "shop", log, files, now_ms=end)
    rebuild_view(merged.plan, "shop", _Envelopes(log), envelopes, now_ms=end)
    rebuild_view(store.plan, "shop", log, per_partition, now_ms=end)
    # the same fences (write versions, journals and tile bytes may differ: a file at a time
    # against one envelope batch; set order inside a tile is not canonical)
    assert _fences(files) == _fences(envelopes)
    shops = {"shop": [(f"m{i}",) for i in range(4)]}
    view = merged.plan.views["shop"]
    for key, fields in files.hashes.items():
        if key.startswith(f"sk:{view.fingerprint}:"):  # one tile set: slot 0 only
            assert {name.split(b":")[1] for name in fields} == {b"0"}, key
    assert sum(key.startswith("sk:fm:") for key in files.hashes) == len(shops["shop"])
    for t in (end, end + 60_000):
        want = online_values(store, per_partition, shops, t)
        assert online_values(merged, files, shops, t) == want
        assert online_values(merged, envelopes, shops, t) == want


def _fences(store: FakeStore) -> dict[str, dict[bytes, bytes]]:
    return {
        key: {n: v for n, v in fields.items() if n.startswith(b"f:")}
        for key, fields in store.hashes.items()
        if key.startswith("sk:fm:")
    }


USER_CODE_VIEWS = """
def tenfold(batch):
    kept = batch[~(batch["amount"] > 1e8)].copy()
    kept["amount10"] = kept["amount"] * 10
    return kept

def big_only(row):
    return row if row["amount"] is not None and row["amount"] > 1 else None

batched = FeatureView("batched", entity=customer, source=tx, batch_transform=tenfold,
                      columns={"amount10": "double"}, aggregations=[
    Aggregation("amount10", "sum", window="5m", hop="1m"),
    Aggregation("customer_id", "count_distinct", window="5m", hop="1m"),
])
filtered = FeatureView("filtered", entity=customer, source=tx, filter=big_only, aggregations=[
    Aggregation("amount", "max", window="10m", hop="1m"),
])
"""


class _Exact(FakeStore):
    """The unit tests' store, keeping what Redis keeps beside the fields: each key's expiry
    as the last write left it (None: ``PERSIST``) and the watermarks."""

    def __init__(self) -> None:
        super().__init__()
        self.expiry: dict[str, int | None] = {}
        self.marks: dict[str, bytes] = {}

    def write(  # type: ignore[override]
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        for w in writes:
            self.expiry[w.key] = w.expire_at_ms
        self.marks.update((m.key, m.value) for m in marks)
        return super().write(writes)

    def state(self) -> tuple[Any, ...]:
        return self.hashes, self.expiry, self.marks


def test_views_rebuilt_in_one_pass_equal_each_view_rebuilt_alone(
    make_repo: Callable[..., Path],
) -> None:
    store = FeatureStore.from_repo(
        make_repo(VIEWS + USER_CODE_VIEWS, yaml=f"kafka:\n  partitions: {PARTITIONS}\n")
    )
    fake, _ = run(store, make_records(store, 900, seed=13))
    end = T0 + 20_000 * (900 // 37 + 2)
    log = EventLogReader(store.config.event_log_root)
    names = ["spend", "batched", "shop", "filtered"]  # native and user-code views mixed
    alone = _Exact()
    results = [rebuild_view(store.plan, name, log, alone, now_ms=end) for name in names]
    together = _Exact()
    memory = (_native.allocator_purge_delay(), _native.huge_pages_disabled())
    assert rebuild_views(store.plan, names, log, together, now_ms=end) == results
    # the allocator's purge delay and the huge pages setting are the process's again
    assert (_native.allocator_purge_delay(), _native.huge_pages_disabled()) == memory
    assert together.state() == alone.state()
    assert len(alone.marks) == len(names) * PARTITIONS
    assert None in alone.expiry.values() and any(alone.expiry.values())
    assert all(r.entities_written > 0 and r.records == results[0].records for r in results)
    # and the state reads what the workers wrote (their processing-time replay of the log)
    customers = [(f"c{i}",) for i in range(12)]
    entities = {"spend": customers, "batched": customers, "filtered": customers,
                "shop": [(f"m{i}",) for i in range(4)]}  # fmt: skip
    for t in (end, end + 60_000):
        assert online_values(store, together, entities, t) == online_values(
            store, fake, entities, t
        )


def test_user_code_files_fold_in_runs_as_they_fold_whole(
    make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path with user code folds a log file ``_FILE_CHUNK`` records at a time (frames
    and lists of a run only): the same records, offsets, newest event times and writes as
    the file folded in one batch."""
    store = FeatureStore.from_repo(
        make_repo(VIEWS + USER_CODE_VIEWS, yaml=f"kafka:\n  partitions: {PARTITIONS}\n")
    )
    run(store, make_records(store, 900, seed=17))
    end = T0 + 20_000 * (900 // 37 + 2)
    log = EventLogReader(store.config.event_log_root)
    views = [store.plan.views[name] for name in ("batched", "spend", "filtered")]
    folds: list[int] = []
    native_replay = _native.Replay

    class Counted:  # the native Replay, counting the batches folded through the Python path
        def __init__(self, *args: Any) -> None:
            self.inner = native_replay(*args)

        def fold(self, offsets: bytes, *args: Any) -> None:
            folds.append(len(offsets) // 8)
            self.inner.fold(offsets, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    monkeypatch.setattr(rebuild_module._native, "Replay", Counted)
    got = {}
    for rows in (1 << 40, 7):
        monkeypatch.setattr(rebuild_module, "_FILE_CHUNK", rows)
        folds.clear()
        got[rows] = [_replay(views, store.plan, log, p, None, end, drop_expired=True)
                     for p in range(PARTITIONS)]  # fmt: skip
        assert max(folds) <= rows and sum(folds) == sum(r.records for r in got[rows])
        if rows == 7:
            assert len(folds) > 3 * PARTITIONS  # several runs per file
    for whole, runs in zip(got[1 << 40], got[7], strict=True):
        assert whole.records > 7
        assert (whole.records, whole.last_offset) == (runs.records, runs.last_offset)
        assert whole.newest_event_ms == runs.newest_event_ms
        assert _written(whole) == _written(runs)
        assert {v for v, _ in _written(whole)} == {0, 1, 2}


def test_a_batch_transforms_arrays_fold_as_its_lists(
    make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch transform's result columns handed to the replay as pyarrow arrays
    (``group_columns``) write what the same columns as lists write, byte for byte."""
    from functools import partial

    from engine.processing import group_columns

    store = FeatureStore.from_repo(
        make_repo(VIEWS + USER_CODE_VIEWS, yaml=f"kafka:\n  partitions: {PARTITIONS}\n")
    )
    run(store, make_records(store, 900, seed=23))
    end = T0 + 20_000 * (900 // 37 + 2)
    log = EventLogReader(store.config.event_log_root)
    views = [store.plan.views[name] for name in ("batched", "spend")]
    fed: list[type] = []

    def spy(*args: Any, arrays: bool = True) -> Any:
        keys, inputs = group_columns(*args, arrays=arrays)
        fed.extend(type(c) for c in [*keys, *inputs])
        return keys, inputs

    got = {}
    for arrays in (True, False):
        monkeypatch.setattr(rebuild_module, "group_columns", partial(spy, arrays=arrays))
        got[arrays] = [_replay(views, store.plan, log, p, None, end, drop_expired=True)
                       for p in range(PARTITIONS)]  # fmt: skip
        assert (list in fed) is not arrays  # the array path fed no list, the list path only
        fed.clear()
    for new, old in zip(got[True], got[False], strict=True):
        assert new.records > 0 and (new.records, new.last_offset) == (old.records, old.last_offset)
        assert new.newest_event_ms == old.newest_event_ms
        assert _written(new) == _written(old)
        assert {v for v, _ in _written(new)} == {0, 1}
