"""The backfill runner: replay the event log through the kernel to get features as of each label.

For each log partition the runner sweeps the partition's labels in time order: before a
label at ``t`` exactly the records with clock ``< t`` (event time or processing time, by
mode) have been folded — the same ``processing.apply_extracted`` the stream worker runs —
and the window is merged with the same ``kernel.tiles.window_states`` the online reader
runs. Partitions run in parallel processes; their per-label states merge (associative,
commutative) into one value.

Each partition is read twice and never held in memory. The first pass notes which
labelled entities the partition holds and, per block of ``_BLOCK`` records, the smallest
clock and whether the block is in clock order. The second pass streams the records
again: a label at ``t`` is read as soon as no record still to come can have a clock
``< t`` (the minimum over the remaining blocks says so, and inside a block in clock order
the current record's clock), so a log in clock order is folded as it streams. A record
that arrives before a label it must not see waits in a heap, which spills sorted runs to
temporary files beyond ``spill_items`` (an external merge) when the log is far out of
clock order.

Memory per partition process: the live tiles of entities that still have a label ahead in
the partition (an entity's tiles are dropped after its last label, records at or after it
are skipped), the partition's labels as numpy arrays, the records waiting for a label (none
for a log in clock order) and the output columns — one byte plus one 8-byte value per label
and feature. The parent holds the labels as numpy arrays (entity codes and times) and the
output columns.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import multiprocessing
import os
import tempfile
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np
import numpy.typing as npt

from engine.errors import CodecError, EventLogError
from engine.kernel.tiles import EntityTiles, evict, window_states
from engine.plan import Plan, SourcePlan, ViewPlan
from engine.ports import EventLogSource
from engine.processing import (
    EntityKey,
    Extracted,
    RowGroup,
    apply_extracted,
    extract_all,
    row_groups,
)

Mode = Literal["event_time", "processing_time"]
MODES: tuple[Mode, ...] = ("event_time", "processing_time")
Progress = Callable[[int, int], None]
"""Called with (records read since the last call, partitions finished since the last call)."""

DEFAULT_SPILL_ITEMS = 1_000_000
"""Extracted records waiting for a label (out of clock order) held in memory before spilling."""

_SWEEP_EVERY = 250_000  # folds between eviction passes over every entity
_BLOCK = 1024  # records per clock block of the first pass
_LABEL_CHUNK = 65_536  # labels turned into Python ints at a time
_RESULT_VERSION = 2
_INF = (1 << 63) - 1  # above every clock
_I64_MIN, _I64_END = -(1 << 63), 1 << 63

Int64s = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewRequest:
    """Labels for one view: entity and time per label, and the aggregations wanted.

    ``entities`` may be an ``EntityColumns`` (one sequence per join key, no tuple per
    label) and ``times_ms`` a numpy int64 array; requests sharing the same ``entities``
    object share one entity table.
    """

    view: str
    entities: Sequence[EntityKey]
    times_ms: Sequence[int] | Int64s
    indices: tuple[int, ...]


class EntityColumns(Sequence[EntityKey]):
    """Entity keys as one sequence per join key: row ``i`` is ``tuple(c[i] for c in columns)``.

    Example:
        >>> keys = EntityColumns((["c1", "c2"], [7, 8]))
        >>> len(keys), keys[1], list(keys)
        (2, ('c2', 8), [('c1', 7), ('c2', 8)])
    """

    __slots__ = ("columns",)

    def __init__(self, columns: Sequence[Sequence[Any]]) -> None:
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            raise ValueError(f"entity key columns must have one equal length, got {lengths}")
        self.columns = tuple(columns)

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [tuple(c[j] for c in self.columns) for j in range(*i.indices(len(self)))]
        return tuple(c[i] for c in self.columns)

    def __iter__(self) -> Iterator[EntityKey]:
        return zip(*self.columns, strict=True)


@dataclass(frozen=True, slots=True)
class _Table:
    """Distinct entities of some requests: key -> code, code -> key, and each label's code."""

    keys: dict[EntityKey, int]
    entities: list[EntityKey]
    codes: Int64s


@dataclass(frozen=True, slots=True)
class _Labels:
    table: int  # index into _Job.tables
    times: Int64s


@dataclass(frozen=True, slots=True)
class _Job:
    plan: Plan
    log: EventLogSource
    requests: tuple[ViewRequest, ...]
    tables: tuple[_Table, ...]
    labels: tuple[_Labels, ...]  # per request
    mode: Mode
    include_late: bool
    # per request: the entity is the topic key, so each lives in one partition and the
    # worker may finalize; the parent verifies no label arrives twice
    local: tuple[bool, ...]
    spill_items: int


_JOB: _Job | None = None  # handed to forked workers; never pickled


def _tables(requests: Sequence[ViewRequest]) -> tuple[tuple[_Table, ...], tuple[_Labels, ...]]:
    """Entity codes and int64 times of every request; one table per distinct ``entities``."""
    tables: list[_Table] = []
    by_entities: dict[int, int] = {}
    times: dict[int, Int64s] = {}
    labels: list[_Labels] = []
    for req in requests:
        t = by_entities.get(id(req.entities))
        if t is None:
            keys: dict[EntityKey, int] = {}
            setdefault = keys.setdefault
            codes = np.fromiter(
                (setdefault(e, len(keys)) for e in req.entities),
                dtype=np.int64,
                count=len(req.entities),
            )
            t = by_entities[id(req.entities)] = len(tables)
            tables.append(_Table(keys, list(keys), codes))
        got = times.get(id(req.times_ms))
        if got is None:
            got = times[id(req.times_ms)] = np.asarray(req.times_ms, dtype=np.int64)
        if len(got) != len(req.entities):
            raise ValueError(
                f"view {req.view!r} request: {len(req.entities)} entities but "
                f"{len(got)} times (expected one time per label)"
            )
        labels.append(_Labels(t, got))
    return tuple(tables), tuple(labels)


# ------------------------------------------------------------------------------------------
# output columns: a kind byte and an 8-byte value per label, objects aside

_NONE, _INT, _FLOAT, _BIG, _OBJECT = 0, 1, 2, 3, 4


class _ColumnWriter:
    """Finalized values of one feature in label order, appended compactly."""

    __slots__ = ("floats", "ints", "kinds", "others")

    def __init__(self) -> None:
        self.kinds = bytearray()
        self.ints = array("q")
        self.floats = array("d")
        self.others: list[Any] = []  # ints beyond int64 and every other object, in order

    def add(self, value: Any) -> None:
        kind = type(value)
        if kind is float:
            self.kinds.append(_FLOAT)
            self.floats.append(value)
        elif kind is int:
            if _I64_MIN <= value < _I64_END:
                self.kinds.append(_INT)
                self.ints.append(value)
            else:
                self.kinds.append(_BIG)
                self.others.append(value)
        elif value is None:
            self.kinds.append(_NONE)
        else:
            self.kinds.append(_OBJECT)
            self.others.append(value)


class _Column:
    """One feature over all labels of a request: kinds (uint8) and values (int64 bits)."""

    __slots__ = ("bits", "default", "kinds", "others")

    def __init__(self, n: int, default: Any) -> None:
        one = _ColumnWriter()
        one.add(default)
        self.kinds = np.full(n, one.kinds[0], dtype=np.uint8)
        self.bits = np.zeros(n, dtype=np.int64)
        if one.ints:
            self.bits[:] = one.ints[0]
        elif one.floats:
            self.bits.view(np.float64)[:] = one.floats[0]
        self.others: dict[int, Any] = {}
        self.default = default  # the value of a _BIG/_OBJECT row without an entry in others

    def put(
        self,
        idx: Int64s,
        kinds: npt.NDArray[np.uint8],
        ints: Int64s,
        floats: npt.NDArray[np.float64],
        others: Sequence[Any],
    ) -> None:
        """Write values at label indices ``idx`` (as appended by a ``_ColumnWriter``)."""
        self.kinds[idx] = kinds
        if len(ints):
            self.bits[idx[kinds == _INT]] = ints
        if len(floats):
            self.bits.view(np.float64)[idx[kinds == _FLOAT]] = floats
        if len(others):
            at = idx[kinds >= _BIG].tolist()
            for i, value in zip(at, others, strict=True):
                self.others[i] = value

    def write(self, idx: Int64s, writer: _ColumnWriter) -> None:
        self.put(
            idx,
            np.frombuffer(writer.kinds, dtype=np.uint8),
            np.frombuffer(writer.ints, dtype=np.int64),
            np.frombuffer(writer.floats, dtype=np.float64),
            writer.others,
        )

    def _objects(self, where: npt.NDArray[np.bool_]) -> Iterator[tuple[int, Any]]:
        for i in np.flatnonzero(where).tolist():
            yield i, self.others.get(i, self.default)

    def to_list(self) -> list[Any]:
        """The values as Python objects."""
        out: list[Any] = [None] * len(self.kinds)
        for kind, view in ((_INT, self.bits), (_FLOAT, self.bits.view(np.float64))):
            at = np.flatnonzero(self.kinds == kind)
            for i, value in zip(at.tolist(), view[at].tolist(), strict=True):
                out[i] = value
        for i, value in self._objects(self.kinds >= _BIG):
            out[i] = value
        return out

    def to_numpy(self) -> npt.NDArray[Any]:
        """int64 when every value is an int64 int; float64 (NaN for None) when every value
        is a number or None and one is a float; object otherwise."""
        kinds = self.kinds
        if bool((kinds == _INT).all()):
            return self.bits.copy()
        if not bool((kinds == _OBJECT).any()) and bool((kinds == _FLOAT).any()):
            out = np.full(len(kinds), np.nan)
            floats = kinds == _FLOAT
            out[floats] = self.bits.view(np.float64)[floats]
            ints = kinds == _INT
            out[ints] = self.bits[ints].astype(np.float64)  # rounds to nearest, as float()
            for i, value in self._objects(kinds == _BIG):
                out[i] = float(value)
            return out
        objects = np.empty(len(kinds), dtype=object)  # None everywhere
        ints = kinds == _INT
        objects[ints] = self.bits[ints].astype(object)
        floats = kinds == _FLOAT
        objects[floats] = self.bits.view(np.float64)[floats].astype(object)
        for i, value in self._objects(kinds >= _BIG):
            objects[i] = value
        return objects


# ------------------------------------------------------------------------------------------
# one partition


@dataclass(frozen=True, slots=True)
class _SlotResult:
    """What one partition gives for one request: label indices and their values."""

    request: int
    indices: array[int]
    columns: list[_ColumnWriter] | None  # finalized values (local requests)
    states: list[list[Any]] | None  # merged window states, per label (other requests)


@dataclass(frozen=True, slots=True)
class _PartitionResult:
    read: int
    slots: list[_SlotResult]


@dataclass(frozen=True, slots=True)
class _Scan:
    """The first pass over a partition."""

    records: int
    seen: list[set[int]]  # per table: codes of labelled entities the partition holds
    # suffix minimum of clocks per block: low[b] <= every clock of blocks b, b+1, ...
    low: list[int]
    in_order: bytearray  # per block: 1 if its clocks never decrease


def _sweep(job: _Job, source: str, partition: int) -> _PartitionResult:
    """Per-label results from one partition.

    The cyclic garbage collector is paused while it runs: the sweep allocates millions of
    small acyclic containers, and each generation-2 pass would walk all of them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _sweep_partition(job, source, partition)
    finally:
        if enabled:
            gc.enable()


def _sweep_partition(job: _Job, source: str, partition: int) -> _PartitionResult:
    plan = job.plan
    src = plan.sources[source]
    mine = [r for r, req in enumerate(job.requests) if plan.views[req.view].source == source]
    views = [plan.views[job.requests[r].view] for r in mine]
    groups = row_groups(views)
    scan = _scan(job, src, partition, mine, groups)
    return _replay(job, src, partition, mine, views, groups, scan)


def _scan(
    job: _Job, src: SourcePlan, partition: int, mine: list[int], groups: Sequence[RowGroup]
) -> _Scan:
    """Pass 1: which labelled entities the partition holds, and its clocks per block.

    Seen entities are a superset (admission and filters are not applied for views
    without a transform or filter): a label of an entity that gets no tiles reads
    nothing. Views with a transform or filter are extracted as in pass 2.
    """
    slot_table = [job.labels[r].table for r in mine]
    seen: list[set[int]] = [set() for _ in job.tables]
    plain: list[tuple[tuple[str, ...], list[tuple[dict[EntityKey, int], set[int]]]]] = []
    custom: list[RowGroup] = []
    for group in groups:
        if group.transform is None and group.filter is None:
            tables = sorted({slot_table[m] for m, _ in group.members})
            plain.append((group.join_keys, [(job.tables[t].keys, seen[t]) for t in tables]))
        else:
            custom.append(group)
    include_late = job.include_late
    by_event_time = job.mode == "event_time"
    ts, divisor = src.timestamp_field, src.timestamp_divisor
    block_min: list[int] = []
    in_order = bytearray()
    lowest, previous, ordered, left = _INF, -_INF, 1, _BLOCK
    records = 0
    for envelope in job.log.read(src.name, partition):
        records += 1
        payload = envelope.payload
        # the clock extract_all gives the record's items
        clock = payload[ts] // divisor if by_event_time else envelope.processed_at_ms
        if clock < lowest:
            lowest = clock
        if clock < previous:
            ordered = 0
        previous = clock
        left -= 1
        if not left:
            block_min.append(lowest)
            in_order.append(ordered)
            lowest, previous, ordered, left = _INF, -_INF, 1, _BLOCK
        for join_keys, lookups in plain:
            try:
                entity = tuple(map(payload.__getitem__, join_keys))
            except KeyError:
                continue
            for keys, found in lookups:
                code = keys.get(entity)
                if code is not None:
                    found.add(code)
        if custom:
            for m, item in extract_all(custom, src, envelope, include_late=include_late):
                t = slot_table[m]
                code = job.tables[t].keys.get(item.entity)
                if code is not None:
                    seen[t].add(code)
    if left != _BLOCK:
        block_min.append(lowest)
        in_order.append(ordered)
    low = [_INF] * (len(block_min) + 1)
    for b in range(len(block_min) - 1, -1, -1):
        low[b] = min(block_min[b], low[b + 1])
    return _Scan(records, seen, low, in_order)


class _Held:
    """Records that arrived ahead of a pending label, by clock; sorted runs spill to disk."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.heap: list[tuple[int, int, int, int, Extracted]] = []
        self.heads: list[tuple[int, int, int, int, Extracted, int]] = []  # one per run
        self.runs: list[Iterator[tuple[int, int, int, Extracted]]] = []
        self.seq = itertools.count()
        self.folder: tempfile.TemporaryDirectory[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.heap) or bool(self.heads)

    def push(self, clock: int, m: int, code: int, item: Extracted) -> None:
        heapq.heappush(self.heap, (clock, next(self.seq), m, code, item))
        if len(self.heap) > self.limit:
            self._spill()

    def lowest(self) -> int:
        a = self.heap[0][0] if self.heap else _INF
        b = self.heads[0][0] if self.heads else _INF
        return a if a < b else b

    def pop(self) -> tuple[int, int, Extracted]:
        if self.heads and (not self.heap or self.heads[0][:2] < self.heap[0][:2]):
            _, _, m, code, item, run = heapq.heappop(self.heads)
            self._advance(run)
            return m, code, item
        _, _, m, code, item = heapq.heappop(self.heap)
        return m, code, item

    def _advance(self, run: int) -> None:
        got = next(self.runs[run], None)
        if got is not None:
            clock, m, code, item = got
            heapq.heappush(self.heads, (clock, next(self.seq), m, code, item, run))

    def _spill(self) -> None:
        self.heap.sort()
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="skewless-backfill-")
        path = os.path.join(self.folder.name, f"run-{len(self.runs)}.msgpack")
        packer = msgpack.Packer(use_bin_type=True)
        with open(path, "wb") as fh:
            for clock, _, m, code, x in self.heap:
                fh.write(packer.pack((clock, m, code, x.entity, x.values, x.event_time_ms,
                                      x.processed_at_ms, x.partition, x.offset)))  # fmt: skip
        self.heap = []
        self.runs.append(_read_run(path))
        self._advance(len(self.runs) - 1)

    def close(self) -> None:
        for run in self.runs:
            close = getattr(run, "close", None)
            if close is not None:
                close()
        if self.folder is not None:
            self.folder.cleanup()


def _read_run(path: str) -> Iterator[tuple[int, int, int, Extracted]]:
    with open(path, "rb") as fh:
        for clock, m, code, entity, values, et, pt, partition, offset in msgpack.Unpacker(
            fh, raw=False, use_list=False
        ):
            yield clock, m, code, Extracted(entity=entity, values=values, event_time_ms=et,
                                            processed_at_ms=pt, partition=partition,
                                            offset=offset)  # fmt: skip


def _partition_labels(
    job: _Job, mine: list[int], scan: _Scan
) -> tuple[
    Iterator[tuple[int, int, int, int]],
    list[dict[EntityKey, tuple[int, int]]],
    list[dict[int, int]],
]:
    """This partition's labels as (t, slot, label index, entity code) in time order, and
    per slot: entity -> (code, time of its last label), and code -> number of labels."""
    present = []
    for t, table in enumerate(job.tables):
        flags = np.zeros(len(table.keys), dtype=np.bool_)
        if scan.seen[t]:
            flags[np.fromiter(scan.seen[t], dtype=np.int64, count=len(scan.seen[t]))] = True
        present.append(flags)
    parts: list[tuple[Int64s, Int64s, Int64s, Int64s]] = []
    last: list[dict[EntityKey, tuple[int, int]]] = []
    count: list[dict[int, int]] = []
    for m, r in enumerate(mine):
        labels = job.labels[r]
        codes = job.tables[labels.table].codes
        idx = np.flatnonzero(present[labels.table][codes]).astype(np.int64)
        times, entity = labels.times[idx], codes[idx]
        parts.append((times, np.full(len(idx), m, dtype=np.int64), idx, entity))
        unique, inverse = np.unique(entity, return_inverse=True)
        latest = np.full(len(unique), _I64_MIN, dtype=np.int64)
        np.maximum.at(latest, inverse, times)
        keys = unique.tolist()
        entities = job.tables[labels.table].entities
        last.append({entities[c]: (c, t) for c, t in zip(keys, latest.tolist(), strict=True)})
        count.append(dict(zip(keys, np.bincount(inverse, minlength=len(unique)).tolist(),
                              strict=True)))  # fmt: skip
    merged = [np.concatenate([p[k] for p in parts]) for k in range(4)]
    order = np.argsort(merged[0], kind="stable")  # (t, slot, index): the order labels are read
    columns = [c[order] for c in merged]

    def stream() -> Iterator[tuple[int, int, int, int]]:
        for lo in range(0, len(order), _LABEL_CHUNK):
            hi = lo + _LABEL_CHUNK
            yield from zip(*(c[lo:hi].tolist() for c in columns), strict=True)

    return stream(), last, count


class _Reader:
    """Pass 2 state: tiles per slot, the pending labels and what was read for them."""

    def __init__(
        self,
        job: _Job,
        mine: list[int],
        views: list[ViewPlan],
        labels: Iterator[tuple[int, int, int, int]],
        counts: list[dict[int, int]],
    ) -> None:
        self.views = views
        self.indices = [job.requests[r].indices for r in mine]
        self.state: list[dict[int, EntityTiles]] = [{} for _ in mine]
        self.counts = counts
        self.labels = labels
        self.pending = next(labels, None)
        self.emitted = -_INF  # time of the last label read
        local = [job.local[r] for r in mine]
        self.finalizers = [
            [view.layout.aggregators[k].finalize for k in self.indices[m]] if local[m] else None
            for m, view in enumerate(views)
        ]
        self.found = [array("q") for _ in mine]
        self.columns = [
            [_ColumnWriter() for _ in self.indices[m]] if local[m] else None
            for m in range(len(mine))
        ]
        self.states: list[list[list[Any]] | None] = [
            None if local[m] else [] for m in range(len(mine))
        ]
        self.held = _Held(job.spill_items)

    @property
    def next_time(self) -> int:
        return _INF if self.pending is None else self.pending[0]

    def fold(self, m: int, code: int, item: Extracted) -> None:
        state = self.state[m]
        tiles = state.get(code)
        if tiles is None:
            tiles = state[code] = EntityTiles()
        apply_extracted(self.views[m], tiles, item)

    def read_until(self, low: int) -> int:
        """Read every pending label at or before ``low``; returns the next label's time."""
        held = self.held
        while self.pending is not None and self.pending[0] <= low:
            t, m, i, code = self.pending
            while held and held.lowest() < t:
                self.fold(*held.pop())
            state = self.state[m]
            tiles = state.get(code)
            if tiles is not None:
                view = self.views[m]
                evict(view.layout, tiles, t)
                states = window_states(view.layout, tiles, t, self.indices[m])
                self.found[m].append(i)
                finalize = self.finalizers[m]
                if finalize is None:
                    self.states[m].append(states)  # type: ignore[union-attr]
                else:
                    for writer, f, s in zip(self.columns[m], finalize, states, strict=True):  # type: ignore[arg-type]
                        writer.add(f(s))
            left = self.counts[m][code] - 1
            if left:
                self.counts[m][code] = left
            else:  # the entity's last label here: its tiles serve no one any more
                del self.counts[m][code]
                state.pop(code, None)
            self.emitted = t
            self.pending = next(self.labels, None)
        following = self.next_time
        while held and held.lowest() < following:
            self.fold(*held.pop())
        return following

    def sweep(self, t_ms: int) -> None:
        """Evict, from every entity, tiles no label at or after ``t_ms`` can use."""
        for view, per_entity in zip(self.views, self.state, strict=True):
            for tiles in per_entity.values():
                evict(view.layout, tiles, t_ms)


def _replay(
    job: _Job,
    src: SourcePlan,
    partition: int,
    mine: list[int],
    views: list[ViewPlan],
    groups: Sequence[RowGroup],
    scan: _Scan,
) -> _PartitionResult:
    """Pass 2: stream the partition again, folding records and reading labels in time order."""
    labels, last, counts = _partition_labels(job, mine, scan)
    reader = _Reader(job, mine, views, labels, counts)
    states = reader.state
    held = reader.held
    include_late = job.include_late
    by_event_time = job.mode == "event_time"
    ts, divisor = src.timestamp_field, src.timestamp_divisor
    low_of, in_order = scan.low, scan.in_order
    t_next = reader.next_time
    b, left, low, ordered, after = -1, 0, -_INF, 0, _INF
    folds, sweep_at = 0, _SWEEP_EVERY
    records = itertools.islice(job.log.read(src.name, partition), scan.records)
    try:
        for envelope in records:
            if t_next == _INF:
                break  # every label of the partition is read
            if not left:
                b += 1
                left = _BLOCK
                after = low_of[b + 1]
                ordered = in_order[b]
                if not ordered:
                    low = low_of[b]
            left -= 1
            payload = envelope.payload
            clock = payload[ts] // divisor if by_event_time else envelope.processed_at_ms
            if ordered:
                low = clock if clock < after else after
            if t_next <= low:
                t_next = reader.read_until(low)
            if clock < reader.emitted:
                raise EventLogError(
                    f"event log partition {src.name}/{partition} changed while the backfill "
                    f"read it: a record at offset {envelope.offset} has clock {clock} before "
                    f"a label already read at {reader.emitted}; rerun the backfill"
                )
            for m, item in extract_all(groups, src, envelope, include_late=include_late):
                hit = last[m].get(item.entity)
                if hit is None:
                    continue  # no label of this entity in this partition
                code, until = hit
                if clock >= until:
                    continue  # no label of the entity after the record
                if clock < t_next:
                    state = states[m]
                    tiles = state.get(code)
                    if tiles is None:
                        tiles = state[code] = EntityTiles()
                    apply_extracted(views[m], tiles, item)
                    folds += 1
                    if folds >= sweep_at:
                        # entities without an upcoming label soon still shed stale tiles
                        reader.sweep(t_next)
                        sweep_at += _SWEEP_EVERY
                else:
                    held.push(clock, m, code, item)
        reader.read_until(_INF)
    finally:
        held.close()
    slots = [
        _SlotResult(r, reader.found[m], reader.columns[m], reader.states[m])
        for m, r in enumerate(mine)
    ]
    return _PartitionResult(scan.records, slots)


# ------------------------------------------------------------------------------------------
# worker processes: one msgpack blob per partition (never pickle)


def _encoded_sweep(task: tuple[str, int]) -> bytes:
    """Worker-process entry: sweep one partition; one msgpack blob back."""
    job = _JOB
    assert job is not None, "backfill worker started without a job"
    result = _sweep(job, *task)
    slots: list[Any] = []
    for slot in result.slots:
        req = job.requests[slot.request]
        if slot.columns is not None:
            body: Any = [
                (bytes(w.kinds), w.ints.tobytes(), w.floats.tobytes(),
                 [_BigInt.wrap(v) if type(v) is int else v for v in w.others])
                for w in slot.columns
            ]  # fmt: skip
        else:
            aggs = job.plan.views[req.view].layout.aggregators
            body = [
                [aggs[k].to_plain(s) for k, s in zip(req.indices, states, strict=True)]
                for states in slot.states or ()
            ]
        slots.append((slot.request, slot.columns is not None, slot.indices.tobytes(), body))
    return bytes(msgpack.packb((_RESULT_VERSION, result.read, slots), use_bin_type=True))


class _BigInt:
    """msgpack carries ints in [-2**63, 2**64); exact sums of long columns may exceed that."""

    CODE = 1

    @staticmethod
    def wrap(value: int) -> int | msgpack.ExtType:
        if -(1 << 63) <= value < (1 << 64):
            return value
        length = (value.bit_length() + 8) // 8
        return msgpack.ExtType(_BigInt.CODE, value.to_bytes(length, "big", signed=True))

    @staticmethod
    def hook(code: int, data: bytes) -> Any:
        if code != _BigInt.CODE:
            raise CodecError(f"unknown msgpack extension {code} in a backfill worker result")
        return int.from_bytes(data, "big", signed=True)


def _decode_result(blob: bytes) -> tuple[int, list[Any]]:
    version, read, slots = msgpack.unpackb(
        blob, raw=False, strict_map_key=True, ext_hook=_BigInt.hook
    )
    if version != _RESULT_VERSION:
        raise CodecError(f"backfill worker result version {version} (expected {_RESULT_VERSION})")
    return int(read), slots


class _Collisions(Exception):
    """A label of a 'local' request came from two partitions: its entity spans partitions."""

    def __init__(self, requests: set[int]) -> None:
        super().__init__(sorted(requests))
        self.requests = requests


# ------------------------------------------------------------------------------------------
# the runner


def run(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    *,
    mode: Mode,
    include_late: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
    spill_items: int = DEFAULT_SPILL_ITEMS,
) -> list[list[Any]]:
    """Finalized feature values: ``result[r][label][j]`` for request r's j-th index.

    Labels whose entity has no admitted event before their time get the empty-window
    defaults. Results are bit-identical for any worker count and spill size.
    """
    columns = _run_checked(plan, log, requests, mode, include_late, workers, progress,
                           spill_items)  # fmt: skip
    rows: list[list[Any]] = []
    for req, cols in zip(requests, columns, strict=True):
        values = [c.to_list() for c in cols]
        rows.append([list(row) for row in zip(*values, strict=True)] if values
                    else [[] for _ in range(len(req.entities))])  # fmt: skip
    return rows


def run_columns(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    *,
    mode: Mode,
    include_late: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
    spill_items: int = DEFAULT_SPILL_ITEMS,
) -> list[list[npt.NDArray[Any]]]:
    """``run``'s values as one numpy array per request and index, in label order.

    An array is int64 when every value is an int that fits, float64 (NaN for None) when
    every value is a number or None and one is a float, object otherwise.
    """
    columns = _run_checked(plan, log, requests, mode, include_late, workers, progress,
                           spill_items)  # fmt: skip
    return [[c.to_numpy() for c in cols] for cols in columns]


def _run_checked(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    mode: Mode,
    include_late: bool,
    workers: int,
    progress: Progress | None,
    spill_items: int,
) -> list[list[_Column]]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    local = tuple(
        plan.views[r.view].join_keys == plan.sources[plan.views[r.view].source].key_fields
        for r in requests
    )
    tables, labels = _tables(requests)
    job = _Job(plan, log, tuple(requests), tables, labels, mode, include_late, local,
               spill_items)  # fmt: skip
    try:
        return _run(job, workers, progress)
    except _Collisions as exc:
        # an entity's events span partitions (the topic grew, or a producer keyed it
        # differently): redo those views merging states across partitions
        local = tuple(flag and r not in exc.requests for r, flag in enumerate(local))
        job = _Job(plan, log, tuple(requests), tables, labels, mode, include_late, local,
                   spill_items)  # fmt: skip
        return _run(job, workers, None)


def _run(job: _Job, workers: int, progress: Progress | None) -> list[list[_Column]]:
    global _JOB
    sources = sorted({job.plan.views[r.view].source for r in job.requests})
    tasks = [(s, p) for s in sources for p in job.log.partitions(s)]
    if workers <= 1 or len(tasks) <= 1:
        results = _Results(job)
        for task in tasks:
            result = _sweep(job, *task)
            results.absorb(result)
            if progress:
                progress(result.read, 1)
        return results.finish()
    _JOB = job
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(workers, len(tasks))) as pool:
            # the workers are forked by now: none of them holds a copy of the output
            results = _Results(job)
            for blob in pool.imap_unordered(_encoded_sweep, tasks):
                read = results.absorb_blob(blob)
                del blob
                if progress:
                    progress(read, 1)
    finally:
        _JOB = None
    return results.finish()


class _Results:
    """The output columns, filled as partitions finish (in any order)."""

    def __init__(self, job: _Job) -> None:
        plan, requests = job.plan, job.requests
        self.local = job.local
        self.aggs = [
            [plan.views[req.view].layout.aggregators[k] for k in req.indices] for req in requests
        ]
        self.columns = [
            [_Column(len(req.entities), a.finalize(a.init())) for a in self.aggs[r]]
            for r, req in enumerate(requests)
        ]
        # local requests: labels already written, to notice an entity in two partitions
        self.filled = [np.zeros(len(req.entities) if flag else 0, dtype=np.bool_)
                       for req, flag in zip(requests, job.local, strict=True)]  # fmt: skip
        # other requests: merged window states per label, finalized at the end
        self.merged: list[dict[int, list[Any]]] = [{} for _ in requests]
        self.collided: set[int] = set()

    def absorb(self, result: _PartitionResult) -> None:
        """A partition swept in this process."""
        for slot in result.slots:
            idx = np.frombuffer(slot.indices, dtype=np.int64)
            if slot.columns is not None:
                self._mark(slot.request, idx)
                for column, writer in zip(self.columns[slot.request], slot.columns, strict=True):
                    column.write(idx, writer)
            else:
                self._merge(slot.request, idx, slot.states or [], plain=False)

    def absorb_blob(self, blob: bytes) -> int:
        """A partition swept by a worker (``_encoded_sweep``); returns the records it read."""
        read, slots = _decode_result(blob)
        for r, finalized, idx_bytes, body in slots:
            idx = np.frombuffer(idx_bytes, dtype=np.int64)
            if not finalized:
                self._merge(r, idx, body, plain=True)
                continue
            self._mark(r, idx)
            for column, (kinds, ints, floats, others) in zip(self.columns[r], body, strict=True):
                column.put(
                    idx,
                    np.frombuffer(kinds, dtype=np.uint8),
                    np.frombuffer(ints, dtype=np.int64),
                    np.frombuffer(floats, dtype=np.float64),
                    others,
                )
        return read

    def _mark(self, r: int, idx: Int64s) -> None:
        filled = self.filled[r]
        if bool(filled[idx].any()):
            self.collided.add(r)
        filled[idx] = True

    def _merge(self, r: int, idx: Int64s, rows: Sequence[Sequence[Any]], plain: bool) -> None:
        aggs, held = self.aggs[r], self.merged[r]
        for i, out in zip(idx.tolist(), rows, strict=True):
            if plain:
                out = [a.from_plain(p) for a, p in zip(aggs, out, strict=True)]
            before = held.get(i)
            if before is None:
                held[i] = list(out)
            else:
                held[i] = [a.merge(h, s) for a, h, s in zip(aggs, before, out, strict=True)]

    def finish(self) -> list[list[_Column]]:
        """The columns; raises _Collisions if a local request got a label twice."""
        if self.collided:
            raise _Collisions(self.collided)
        for r, held in enumerate(self.merged):
            if not held:
                continue
            found = sorted(held)
            writers = [_ColumnWriter() for _ in self.aggs[r]]
            for i in found:
                for writer, a, s in zip(writers, self.aggs[r], held.pop(i), strict=True):
                    writer.add(a.finalize(s))
            idx = np.asarray(found, dtype=np.int64)
            for column, writer in zip(self.columns[r], writers, strict=True):
                column.write(idx, writer)
        return self.columns


def requests_by_view(refs: Sequence[tuple[ViewPlan, int]]) -> Mapping[str, tuple[int, ...]]:
    """Group resolved refs by view, keeping first-seen order of aggregation indices."""
    grouped: dict[str, list[int]] = {}
    for view, index in refs:
        lst = grouped.setdefault(view.name, [])
        if index not in lst:
            lst.append(index)
    return {k: tuple(v) for k, v in grouped.items()}
