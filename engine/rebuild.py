"""Rebuild online state from the event log: a whole view, or one source partition of some views.

The log is replayed through the native ``Replay`` (``native/core/src/replay.rs``: the stream
worker's row groups, transforms, keys, folds, eviction and tile codec, a partition at a time,
the files decoded natively), admitting each record by its *logged* ``processed_at`` — so the
rebuilt
state is what the workers would have written under the current definition: per source
partition, the tiles still in a window as of ``now``, the fence (last logged offset applied),
the newest write time, and a journal entry. The partition's watermark
(``engine.watermarks``) is then set to the last logged offset.

- ``rebuild_views`` (``skewless rebuild-online``) fills views' fresh keyspaces, every
  partition, the views of one source in one pass over its log (``rebuild_view``: one view).
  Workers of the views should be stopped while it runs; restarted, they continue from their
  committed offsets and the fences make them skip what the rebuild already holds.
- ``rebuild_partition`` (a worker that found its state lost, ``engine.stream.recovery``)
  replaces, in place, the fields one source partition owns (``t:/l:/f:/u:/j:<p>``) in every
  entity hash the log names for it, for several views in one pass over the log. The caller
  must own the partition; the other partitions' fields are not touched. A merge-on-write
  view's share cannot be cut out of its one tile set: its partition's log is folded in
  again instead (``_fold_merged``), the fences skipping what Redis kept — exactly the
  missing records, whatever the other partitions' workers do meanwhile.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

from engine import _native
from engine.envelope import Envelope
from engine.errors import OnlineWriteConflict
from engine.log_columns import decode_log_file
from engine.log_files import LogFiles, read_partition
from engine.online import CoreSpec, EntityWrites, core_spec, marks_key, stats_write
from engine.plan import Plan, SourcePlan, ViewPlan
from engine.ports import EventLogSource, OnlineStateStore, StateWrite, Watermark
from engine.processing import group_columns, user_code_input
from engine.watermarks import encode_watermark, watermark_key

_CHUNK = 2_000  # entity hashes loaded and replaced per round trip (rebuild_partition)
_WRITE_CHUNK = 5_000  # entity writes per round trip (rebuild_view)
_PARALLEL = 4  # partitions replayed at a time, at most (rebuild_view)
_REPLAY_BATCH = 50_000  # log records handed to the core at a time
_NO_LIMIT = (1 << 63) - 1  # no upper offset limit
_MERGE_ROUNDS = 100  # folds of one chunk whose merged writes other workers kept beating
_PROGRESS_STEP = 100_000
# the allocator keeps freed memory this long while a rebuild runs (ms; None: its default of
# 1 s), so a partition's states reuse the pages of the one written before it instead of
# faulting in fresh zeroed ones (docs/benchmarks.md, Rebuild-online)
_PURGE_DELAY_MS: int | None = 10_000
# while a rebuild runs, fresh memory is faulted in 4-KiB pages, not transparent huge pages:
# the states touch their pages sparsely, and a huge page is zeroed whole on first touch
_NO_HUGE_PAGES = True
_PARTITION_FIELDS = frozenset("tlfuj")  # field kinds namespaced by source partition
# user code (transforms, filters) runs in one replay thread at a time, as in a worker
_USER_CODE = threading.Lock()


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildResult:
    """What a rebuild wrote."""

    view: str
    fingerprint: str
    records: int
    entities_written: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionRebuild:
    """What ``rebuild_partition`` wrote: per view, the entity hashes it replaced."""

    partition: int
    records: int
    last_offset: int | None  # the log's highest offset of the partition (None: empty)
    entities_written: dict[str, int]


@dataclass(slots=True)
class _Replay:
    writes: list[tuple[int, EntityWrites]]  # (view slot, a chunk of its entity writes)
    records: int = 0
    last_offset: int | None = None
    newest_event_ms: list[int | None] = field(default_factory=list)  # per view slot


def _replay(
    views: Sequence[ViewPlan],
    plan: Plan,
    log: EventLogSource,
    partition: int,
    progress: Callable[[int], None] | None,
    now_ms: int,
    *,
    drop_expired: bool,
) -> _Replay:
    """Every view's per-entity write of one log partition, as the workers computed it
    (``drop_expired``: without the writes whose key would expire at once).

    The native ``Replay`` folds the records; when no view runs user code it also decodes
    the log files itself, with the GIL released, so partitions replay in parallel."""
    core, spec = _new_replay(views, plan, partition)
    out = _Replay(writes=[])
    _fold_partition(core, spec, plan.sources[views[0].source], log, partition, progress,
                    now_ms, out)  # fmt: skip
    out.newest_event_ms = list(core.newest_event_ms())
    out.writes = [(v, EntityWrites(chunk))
                  for v, chunk in core.writes(now_ms, drop_expired, _WRITE_CHUNK)]  # fmt: skip
    return out


def _replay_merged(
    views: Sequence[ViewPlan],
    plan: Plan,
    log: EventLogSource,
    partitions: Sequence[int],
    progress: Callable[[int], None] | None,
    now_ms: int,
) -> tuple[list[_Replay], list[tuple[int, EntityWrites]]]:
    """Merge-on-write views (all of one source) replayed from the log, every partition in
    turn into one tile set per entity, as the workers' merged path (``_fold_merged``, a
    log file at a time, partition after partition) leaves it: per partition its records,
    last offset and newest event times; then every entity's entity and marks writes
    (the entities whose key would expire at once left out)."""
    core, spec = _new_replay(views, plan, partitions[0] if partitions else 0)
    core.set_merged(list(range(len(spec.views))))
    source = plan.sources[views[0].source]
    parts = []
    for partition in partitions:
        core.set_partition(partition)
        out = _Replay(writes=[])
        _fold_partition(core, spec, source, log, partition, progress, now_ms, out)
        out.newest_event_ms = list(core.newest_event_ms())
        parts.append(out)
    writes = [(v, EntityWrites(chunk)) for v, chunk in core.writes(now_ms, True, _WRITE_CHUNK)]
    return parts, writes


def _new_replay(views: Sequence[ViewPlan], plan: Plan, partition: int) -> tuple[Any, CoreSpec]:
    source = plan.sources[views[0].source]
    spec = core_spec(list(views))
    groups = [(list(g.join_keys), list(inputs))
              for g, inputs in zip(spec.groups, spec.group_inputs, strict=True)]  # fmt: skip
    core = _native.Replay(
        list(spec.views), groups, partition, source.timestamp_field, source.timestamp_divisor
    )
    return core, spec


def _fold_partition(
    core: Any,
    spec: CoreSpec,
    source: SourcePlan,
    log: EventLogSource,
    partition: int,
    progress: Callable[[int], None] | None,
    now_ms: int,
    out: _Replay,
) -> None:
    """Fold one log partition into ``core``, a log file (or ``_REPLAY_BATCH`` records) at a
    time; counts the records and the last offset in ``out``."""
    native = all(group.native for group in spec.groups)
    if isinstance(log, LogFiles):  # the core decodes the files: no record object in Python

        def take(data: bytes, high: int, upto: int) -> int:
            got = core.fold_file(data, high, now_ms, upto) if native else None
            if got is None:
                got = _fold_file(core, spec, source, partition, data, high, now_ms, upto)
            taken, last = got
            out.records += taken
            if last is not None:
                out.last_offset = last
            if progress and taken:
                progress(taken)
            return high if last is None else last

        read_partition(log, source.name, partition, take)
    else:
        batch: list[Envelope] = []
        for envelope in log.read(source.name, partition):
            batch.append(envelope)
            out.last_offset = envelope.offset
            if len(batch) >= _REPLAY_BATCH:
                _fold(core, spec, source, batch, now_ms)
                out.records += len(batch)
                if progress:
                    progress(len(batch))
                batch = []
        if batch:
            _fold(core, spec, source, batch, now_ms)
            out.records += len(batch)
            if progress:
                progress(len(batch))


def _fold_file(
    core: Any,
    spec: CoreSpec,
    source: SourcePlan,
    partition: int,
    data: bytes,
    high: int,
    now_ms: int,
    upto: int = _NO_LIMIT,
) -> tuple[int, int | None]:
    """Fold one event-log file's records above ``high`` and at most ``upto`` (the listing's
    limit of the file); (records taken, highest offset). The path of views with user code
    (transforms, filters): the file decoded natively into columns, batch transforms on one
    DataFrame per file built column by column."""
    got = decode_log_file(data, high, source.timestamp_field, upto)
    if got is None:
        return 0, None
    user = [g for g, group in enumerate(spec.groups) if not group.native]
    fed: dict[int, tuple[list[Any], list[list[Any]]]] = {}
    if user:
        with _USER_CODE:
            payloads, frame = user_code_input([spec.groups[g] for g in user], got.payload)
            fed = {g: group_columns(spec.groups[g], spec.group_inputs[g], payloads, frame)
                   for g in user}  # fmt: skip
    core.fold(
        got.offsets.tobytes(),
        (got.raw_event_time // source.timestamp_divisor).tobytes(),
        got.processed_at_ms.tobytes(),
        got.payload,
        fed,
        now_ms,
    )
    return len(got), int(got.offsets.max())


def _fold(
    core: Any, spec: CoreSpec, source: SourcePlan, batch: list[Envelope], now_ms: int
) -> None:
    names = list(source.fields)
    kinds = [f.kind for f in source.fields.values()]
    ts, divisor = source.timestamp_field, source.timestamp_divisor
    payloads = [e.payload for e in batch]
    with _USER_CODE:
        fed = {
            g: group_columns(group, spec.group_inputs[g], payloads)
            for g, group in enumerate(spec.groups)
            if not group.native
        }
    core.fold(
        array("q", (e.offset for e in batch)).tobytes(),
        array("q", (e.payload[ts] // divisor for e in batch)).tobytes(),
        array("q", (e.processed_at_ms for e in batch)).tobytes(),
        _native.Columns.from_rows(names, kinds, payloads),
        fed,
        now_ms,
    )


def _replace_states(
    writes: Sequence[StateWrite], partition: int, store: OnlineStateStore, now_ms: int
) -> int:
    """Write every entity's state of one partition in place, in chunks; returns the hashes
    written.

    Each hash is loaded first, and the partition's fields the new state does not set
    (tiles a lost write had added) are deleted too, so the partition's fields end up
    exactly the log's. A state of which nothing can be read any more (its key would expire
    at once) is written only if the hash holds fields of the partition.
    """
    written = 0
    for start in range(0, len(writes), _CHUNK):
        chunk = writes[start : start + _CHUNK]
        held = store.load([w.key for w in chunk])
        batch = []
        for write, fields in zip(chunk, held, strict=True):
            mine = _partition_fields(fields, partition)
            if mine or not _expired(write, now_ms):
                stale = mine.difference(write.fields, write.delete)
                batch.append(replace(write, delete=(*write.delete, *sorted(stale))))
        if batch:
            store.write(batch)
            written += len(batch)
    return written


def _expired(write: StateWrite, now_ms: int) -> bool:
    return write.expire_at_ms is not None and write.expire_at_ms <= now_ms


def _partition_fields(fields: Mapping[bytes, bytes], partition: int) -> set[str]:
    """Names of the fields of a hash that source partition ``partition`` owns."""
    mine = set()
    wanted = str(partition)
    for raw in fields:
        name = raw.decode("utf-8", errors="replace")
        kind, _, rest = name.partition(":")
        if kind in _PARTITION_FIELDS and rest.partition(":")[0] == wanted:
            mine.add(name)
    return mine


def rebuild_view(
    plan: Plan,
    view_name: str,
    log: EventLogSource,
    store: OnlineStateStore,
    *,
    now_ms: int,
    progress: Callable[[int], None] | None = None,
) -> RebuildResult:
    """Write every entity's state of ``view_name`` from the log into its current keyspace
    (expected empty), then set each partition's watermark to its last logged offset:
    ``rebuild_views`` of one view."""
    (result,) = rebuild_views(plan, [view_name], log, store, now_ms=now_ms, progress=progress)
    return result


def rebuild_views(
    plan: Plan,
    view_names: Sequence[str],
    log: EventLogSource,
    store: OnlineStateStore,
    *,
    now_ms: int,
    progress: Callable[[int], None] | None = None,
) -> list[RebuildResult]:
    """Write every entity's state of each of ``view_names`` from the log into its current
    keyspace (expected empty), then set each partition's watermark to its last logged
    offset; one result per view, in the order given.

    The views of one source are rebuilt in one pass over its log: each file is decoded
    once and folded into all of them (a batch transform's frame built once per file), so
    the work per record is shared. Partitions replay in worker threads — in parallel, up to
    one per CPU (the native replay releases the GIL; user code runs in one thread at a
    time) — and are written in partition order as each is ready, while the next ones
    replay. The order matters: partitions share hashes, and a state that sets no expiry
    (``PERSIST``) and one that does must meet the hash in the order the sequential rebuild
    gives. Each view's Redis state is byte-identical to its rebuild alone."""
    for name in view_names:
        if name not in plan.views:
            raise KeyError(f"unknown view {name!r}")
    results: dict[str, RebuildResult] = {}
    by_source: dict[str, list[ViewPlan]] = {}
    for name in dict.fromkeys(view_names):
        view = plan.views[name]
        by_source.setdefault(view.source, []).append(view)
    if by_source and _PURGE_DELAY_MS is not None:
        before = _native.allocator_purge_delay(_PURGE_DELAY_MS)
    if by_source and _NO_HUGE_PAGES:
        huge_off = _native.huge_pages_disabled(True)
    try:
        for views in by_source.values():
            for result in _rebuild_source(plan, views, log, store, now_ms=now_ms,
                                          progress=progress):  # fmt: skip
                results[result.view] = result
    finally:
        if by_source and _PURGE_DELAY_MS is not None:
            _native.allocator_purge_delay(before)
        if by_source and _NO_HUGE_PAGES:
            _native.huge_pages_disabled(huge_off)
    return [results[name] for name in view_names]


def _rebuild_source(
    plan: Plan,
    views: Sequence[ViewPlan],
    log: EventLogSource,
    store: OnlineStateStore,
    *,
    now_ms: int,
    progress: Callable[[int], None] | None,
) -> list[RebuildResult]:
    """``rebuild_views`` of the views of one source: one replay of each partition for all
    of its per-partition views and, beside it in a thread of its own, one replay of every
    partition in turn for its merge-on-write views (``_replay_merged``: their tile sets
    are built in partition order, as the workers' merged path builds them)."""
    source = plan.sources[views[0].source]
    partitions = list(log.partitions(source.name))
    plain = [view for view in views if not view.merged]
    merged = [view for view in views if view.merged]
    lock = threading.Lock()

    def counted(n: int) -> None:
        assert progress is not None
        with lock:
            progress(n)

    results: dict[str, RebuildResult] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="skewless-rebuild-merged") as side:
        pending = None
        if merged:  # the records are counted once: by the per-partition pass if there is one
            count = None if plain or not progress else counted
            pending = side.submit(_replay_merged, merged, plan, log, partitions, count, now_ms)
        if plain:
            results.update((r.view, r) for r in _rebuild_plain(
                plan, plain, log, store, partitions, now_ms=now_ms,
                progress=progress and counted))  # fmt: skip
        if pending is not None:
            parts, writes = pending.result()
            written = [0] * len(merged)
            for v, chunk in writes:  # an entity write and its marks write each
                store.write(chunk)
                written[v] += len(chunk) // 2
            for partition, done in zip(partitions, parts, strict=True):
                _finish_partition(merged, partition, done, store, now_ms)
            records = sum(done.records for done in parts)
            results.update((view.name, RebuildResult(
                view=view.name, fingerprint=view.fingerprint, records=records,
                entities_written=n)) for view, n in zip(merged, written, strict=True))  # fmt: skip
    return [results[view.name] for view in views]


def _rebuild_plain(
    plan: Plan,
    views: Sequence[ViewPlan],
    log: EventLogSource,
    store: OnlineStateStore,
    partitions: Sequence[int],
    *,
    now_ms: int,
    progress: Callable[[int], None] | None,
) -> list[RebuildResult]:
    """``_rebuild_source`` of per-partition views: partitions replayed in worker threads,
    written in partition order as each is ready."""

    def replay(partition: int) -> _Replay:
        return _replay(views, plan, log, partition, progress, now_ms, drop_expired=True)

    records = 0
    written = [0] * len(views)
    workers = _workers(partitions)
    with ThreadPoolExecutor(workers, thread_name_prefix="skewless-rebuild") as pool:
        ahead = iter(partitions)
        pending = deque((p, pool.submit(replay, p)) for p in islice(ahead, workers))
        while pending:
            partition, future = pending.popleft()
            done = future.result()
            following = next(ahead, None)
            if following is not None:  # keep the workers busy while this one is written
                pending.append((following, pool.submit(replay, following)))
            records += done.records
            for v, chunk in done.writes:  # a fresh keyspace: nothing to load or replace
                store.write(chunk)
                written[v] += len(chunk)
            _finish_partition(views, partition, done, store, now_ms)
    return [
        RebuildResult(
            view=view.name, fingerprint=view.fingerprint, records=records, entities_written=n
        )
        for view, n in zip(views, written, strict=True)
    ]


def _finish_partition(
    views: Sequence[ViewPlan], partition: int, done: _Replay, store: OnlineStateStore, now_ms: int
) -> None:
    """Each view's stats (as the workers write them) and watermark after a partition's
    replay."""
    stats = [stats_write(view, {partition: newest}, now_ms)
             for view, newest in zip(views, done.newest_event_ms, strict=True)
             if newest is not None]  # fmt: skip
    if stats:
        store.write(stats)
    if done.last_offset is not None:
        value = encode_watermark(done.last_offset)
        store.write([], [Watermark(key=watermark_key(view, partition), value=value)
                         for view in views])  # fmt: skip


@dataclass(slots=True)
class _MergedFold:
    records: int = 0
    written: int = 0  # entity hashes written (with their marks hashes)
    newest: int | None = None  # event time of the newest event applied
    last_offset: int | None = None  # the log's highest offset of the partition
    conflicts: int = 0  # writes another worker beat, folded again


def _finish_merged(
    view: ViewPlan, partition: int, done: _MergedFold, store: OnlineStateStore, now_ms: int
) -> None:
    """The view's stats and the partition's watermark after ``_fold_merged``."""
    if done.newest is not None:  # the view's stats, as the workers write them
        store.write([stats_write(view, {partition: done.newest}, now_ms)])
    if done.last_offset is not None:
        mark = Watermark(key=watermark_key(view, partition),
                         value=encode_watermark(done.last_offset))  # fmt: skip
        store.write([], [mark])


def _fold_merged(
    plan: Plan,
    view: ViewPlan,
    partition: int,
    log: EventLogSource,
    store: OnlineStateStore,
    *,
    now_ms: int,
    progress: Callable[[int], None] | None = None,
) -> _MergedFold:
    """Fold one partition's log records into a merge-on-write view's tile sets, as the
    workers fold them — the worker core's merged path (``OnlineCore.apply_logged``: each
    entity and its marks hash loaded, what the partition's fence says is applied skipped,
    each record admitted by its logged processed_at, the write a compare-and-set on the
    version), a log file at a time. Exactly once whatever other partitions' workers do
    meanwhile: a write one of them beat is refused, and the chunk folded again from
    reloaded state (what landed is fenced now). Used by ``rebuild-online`` (workers
    stopped) and by a worker healing the partition in place (``rebuild_partition``)."""
    source = plan.sources[view.source]
    spec = core_spec([view])
    core = spec.new_core(1)
    user = [g for g, group in enumerate(spec.groups) if not group.native]
    out = _MergedFold()

    def fold(offsets: Any, event_ms: Any, processed_at: Any, columns: Any,
             fed: dict[int, Any]) -> None:  # fmt: skip
        n = len(offsets) // 8  # int64 buffers
        parts = array("q", [partition] * n).tobytes()
        for _ in range(_MERGE_ROUNDS):
            missing = core.prepare(parts, offsets, event_ms, columns, fed)
            wanted = dict.fromkeys(k for key, *_ in missing for k in (key, marks_key(key)))
            by_key = dict(zip(wanted, store.load(list(wanted)), strict=True))
            core.load_merged([(v, entity, by_key[key], by_key[marks_key(key)])
                              for key, v, _, entity in missing])  # fmt: skip
            raw, _, _, _, newest, _ = core.apply_logged(processed_at, now_ms)
            got = [ms for (_, p), ms in newest.items() if p == partition]
            if got:
                out.newest = max(got) if out.newest is None else max(out.newest, *got)
            try:
                if len(raw):
                    store.write(EntityWrites(raw))
            except OnlineWriteConflict as exc:  # refused: the entity write and its marks
                out.written += (len(raw) - len(exc.keys)) // 2
                out.conflicts += 1
                continue  # fold the chunk again: the fences skip what landed
            out.written += len(raw) // 2  # an entity write and its marks write each
            break
        else:
            raise OnlineWriteConflict([], [])
        out.records += n
        if progress:
            progress(n)

    if isinstance(log, LogFiles):

        def take(data: bytes, high: int, upto: int) -> int:
            got = decode_log_file(data, high, source.timestamp_field, upto)
            if got is None:
                return high
            fed: dict[int, Any] = {}
            if user:
                payloads, frame = user_code_input([spec.groups[g] for g in user], got.payload)
                fed = {g: group_columns(spec.groups[g], spec.group_inputs[g], payloads, frame)
                       for g in user}  # fmt: skip
            event_ms = got.raw_event_time // source.timestamp_divisor
            fold(got.offsets.tobytes(), event_ms.tobytes(), got.processed_at_ms.tobytes(),
                 got.payload, fed)  # fmt: skip
            out.last_offset = int(got.offsets.max())
            return out.last_offset

        read_partition(log, source.name, partition, take)
    else:
        envelopes = list(log.read(source.name, partition))
        names = list(source.fields)
        kinds = [f.kind for f in source.fields.values()]
        ts, divisor = source.timestamp_field, source.timestamp_divisor
        for at in range(0, len(envelopes), _REPLAY_BATCH):
            batch = envelopes[at : at + _REPLAY_BATCH]
            payloads = [e.payload for e in batch]
            fed = {g: group_columns(spec.groups[g], spec.group_inputs[g], payloads)
                   for g in user}  # fmt: skip
            fold(
                array("q", (e.offset for e in batch)).tobytes(),
                array("q", (e.payload[ts] // divisor for e in batch)).tobytes(),
                array("q", (e.processed_at_ms for e in batch)).tobytes(),
                _native.Columns.from_rows(names, kinds, payloads),
                fed,
            )
            out.last_offset = batch[-1].offset
    return out


def _workers(partitions: Sequence[int]) -> int:
    """Partitions replayed at a time: one per CPU, at most ``_PARALLEL`` (which bounds the
    memory of the states held). User code (transforms) runs in one thread at a time
    (``_USER_CODE``), as in a worker; the native decoding and folds overlap it."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(partitions), cpus or 1, _PARALLEL))


def rebuild_partition(
    plan: Plan,
    views: Sequence[ViewPlan],
    partition: int,
    log: EventLogSource,
    store: OnlineStateStore,
    *,
    now_ms: int,
) -> PartitionRebuild:
    """Replace one source partition's fields of ``views`` (all of one source) from the log,
    in place, then set their watermarks to the partition's last logged offset.

    Entity hashes the log does not name keep their fields: only a write whose records the
    log does not hold yet can have made them, and the fences make its replay consistent.
    Merge-on-write views are folded in again, not replaced (``_fold_merged``): sound because
    a batch never writes into merged state lost before it read it (``BatchProcessor``
    checks the watermarks first), so each entity's fence of the partition says which of its
    records the tile set holds.
    """
    merged = [v for v in views if v.merged]
    views = [v for v in views if not v.merged]
    written: dict[str, int] = {}
    records = 0
    last: int | None = None
    for view in merged:  # one tile set of all partitions: partition p's missing records added
        done = _fold_merged(plan, view, partition, log, store, now_ms=now_ms)
        _finish_merged(view, partition, done, store, now_ms)
        written[view.name] = done.written
        records, last = done.records, done.last_offset
    if not views:
        return PartitionRebuild(partition=partition, records=records, last_offset=last,
                                entities_written=written)  # fmt: skip
    replay = _replay(views, plan, log, partition, None, now_ms, drop_expired=False)
    per_view: list[list[StateWrite]] = [[] for _ in views]
    for v, chunk in replay.writes:
        per_view[v].extend(chunk)
    for view, writes in zip(views, per_view, strict=True):
        written[view.name] = _replace_states(writes, partition, store, now_ms)
    if replay.last_offset is not None:
        value = encode_watermark(replay.last_offset)
        store.write([], [Watermark(key=watermark_key(v, partition), value=value) for v in views])
    return PartitionRebuild(
        partition=partition,
        records=replay.records,
        last_offset=replay.last_offset,
        entities_written=written,
    )
