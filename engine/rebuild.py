"""Rebuild online state from the event log: a whole view, or one source partition of some views.

The log is replayed through the native core the stream worker runs (``OnlineCore`` in
replay mode: the same row groups, transforms, keys, folds and tile codec), admitting each
record by its *logged* ``processed_at`` — so the rebuilt
state is what the workers would have written under the current definition: per source
partition, the tiles still in a window as of ``now``, the fence (last logged offset applied),
the newest write time, and a journal entry. The partition's watermark
(``engine.watermarks``) is then set to the last logged offset.

- ``rebuild_view`` (``skewless rebuild-online``) fills a view's fresh keyspace, every
  partition. Workers of the view should be stopped while it runs; restarted, they continue
  from their committed offsets and the fences make them skip what the rebuild already holds.
- ``rebuild_partition`` (a worker that found its state lost, ``engine.stream.recovery``)
  replaces, in place, the fields one source partition owns (``t:/l:/f:/u:/j:<p>``) in every
  entity hash the log names for it, for several views in one pass over the log. The caller
  must own the partition; the other partitions' fields are not touched.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine import _native
from engine.envelope import Envelope
from engine.log_files import LogFiles, read_partition
from engine.online import CoreSpec, core_spec, write_of
from engine.plan import Plan, SourcePlan, ViewPlan
from engine.ports import EventLogSource, OnlineStateStore, StateWrite, Watermark
from engine.processing import group_columns
from engine.watermarks import encode_watermark, watermark_key

_CHUNK = 2_000
_REPLAY_BATCH = 50_000  # log records handed to the core at a time
_NO_LIMIT = (1 << 63) - 1  # no upper offset limit
_PROGRESS_STEP = 100_000
_PARTITION_FIELDS = frozenset("tlfuj")  # field kinds namespaced by source partition


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
    writes: list[list[StateWrite]]  # per view, one write per entity
    records: int = 0
    last_offset: int | None = None


def _replay(
    views: Sequence[ViewPlan],
    plan: Plan,
    log: EventLogSource,
    partition: int,
    progress: Callable[[int], None] | None,
    now_ms: int,
) -> _Replay:
    """Every view's per-entity write of one log partition, as the workers computed it."""
    source = plan.sources[views[0].source]
    spec = core_spec(list(views))
    core = spec.new_core(1 << 62)
    out = _Replay(writes=[[] for _ in views])
    if isinstance(log, LogFiles):  # the core decodes the files: no record object in Python

        def take(data: bytes, high: int, upto: int) -> int:
            taken, last = _fold_file(core, spec, source, partition, data, high, now_ms, upto)
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
    for v, raw in core.replay_writes(now_ms):
        out.writes[v].append(write_of(raw))
    return out


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
    limit of the file); (records taken, highest offset)."""
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs

    arrays, _ = _native.read_container(data, ["offset", "processed_at", "payload"])
    offsets = np.asarray(arrays["offset"], dtype=np.int64)
    if not len(offsets):
        return 0, None
    before = np.maximum.accumulate(np.concatenate([[high], offsets[:-1]]))
    keep = (offsets > before) & (offsets <= upto)  # each offset once, within the listing
    if not keep.any():
        return 0, None
    mask = pa.array(keep)
    payload = {
        name.removeprefix("payload."): array.filter(mask) if isinstance(array, pa.Array)
        else [v for v, k in zip(array, keep, strict=True) if k]
        for name, array in arrays.items() if name.startswith("payload.")
    }  # fmt: skip
    columns = _native.columns_from_arrays(payload)
    kept_offsets = offsets[keep]
    raw_ts = np.asarray(payload[source.timestamp_field], dtype=np.int64)
    fed: dict[int, tuple[list[Any], list[list[Any]]]] = {}
    if any(not group.native for group in spec.groups):
        payloads = columns.to_pylist()
        fed = {
            g: group_columns(group, spec.group_inputs[g], payloads)
            for g, group in enumerate(spec.groups)
            if not group.native
        }
    core.prepare(
        np.full(len(kept_offsets), partition, dtype=np.int64).tobytes(),
        kept_offsets.tobytes(),
        (raw_ts // source.timestamp_divisor).tobytes(),
        columns,
        fed,
    )
    processed = np.asarray(arrays["processed_at"], dtype=np.int64)[keep]
    core.replay(processed.tobytes(), now_ms)
    return len(kept_offsets), int(kept_offsets.max())


def _fold(
    core: Any, spec: CoreSpec, source: SourcePlan, batch: list[Envelope], now_ms: int
) -> None:
    names = list(source.fields)
    kinds = [f.kind for f in source.fields.values()]
    ts, divisor = source.timestamp_field, source.timestamp_divisor
    payloads = [e.payload for e in batch]
    fed = {
        g: group_columns(group, spec.group_inputs[g], payloads)
        for g, group in enumerate(spec.groups)
        if not group.native
    }
    core.prepare(
        array("q", (e.partition for e in batch)).tobytes(),
        array("q", (e.offset for e in batch)).tobytes(),
        array("q", (e.payload[ts] // divisor for e in batch)).tobytes(),
        _native.Columns.from_rows(names, kinds, payloads),
        fed,
    )
    core.replay(array("q", (e.processed_at_ms for e in batch)).tobytes(), now_ms)


def _write_states(
    writes: list[StateWrite],
    partition: int,
    store: OnlineStateStore,
    now_ms: int,
    *,
    replace_fields: bool,
) -> int:
    """Write every entity's state of one partition in chunks; returns the hashes written.

    A state of which nothing can be read any more (its key would expire at once) is skipped.
    ``replace_fields``: load each hash first and also delete the partition's fields the new
    state does not set (tiles a lost write had added), so the partition's fields end up
    exactly the log's; an expired state is then written too if the hash holds any of them.
    """
    written = 0
    for start in range(0, len(writes), _CHUNK):
        chunk = writes[start : start + _CHUNK]
        if replace_fields:
            held = store.load([w.key for w in chunk])
            batch = []
            for write, fields in zip(chunk, held, strict=True):
                mine = _partition_fields(fields, partition)
                if mine or not _expired(write, now_ms):
                    stale = mine.difference(write.fields, write.delete)
                    batch.append(replace(write, delete=(*write.delete, *sorted(stale))))
        else:
            batch = [w for w in chunk if not _expired(w, now_ms)]
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
    (expected empty), then set each partition's watermark to its last logged offset."""
    view = plan.views[view_name]
    source = plan.sources[view.source]
    records = written = 0
    for partition in log.partitions(source.name):
        replay = _replay([view], plan, log, partition, progress, now_ms)
        records += replay.records
        written += _write_states(replay.writes[0], partition, store, now_ms, replace_fields=False)
        if replay.last_offset is not None:
            mark = Watermark(key=watermark_key(view, partition),
                             value=encode_watermark(replay.last_offset))  # fmt: skip
            store.write([], [mark])
    return RebuildResult(
        view=view_name, fingerprint=view.fingerprint, records=records, entities_written=written
    )


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
    """
    replay = _replay(views, plan, log, partition, None, now_ms)
    written: dict[str, int] = {}
    for view, writes in zip(views, replay.writes, strict=True):
        written[view.name] = _write_states(writes, partition, store, now_ms, replace_fields=True)
    if replay.last_offset is not None:
        value = encode_watermark(replay.last_offset)
        store.write([], [Watermark(key=watermark_key(v, partition), value=value) for v in views])
    return PartitionRebuild(
        partition=partition,
        records=replay.records,
        last_offset=replay.last_offset,
        entities_written=written,
    )
