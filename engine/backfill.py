"""The backfill runner: replay the event log through the kernel to get features as of each label.

For each log partition the runner keeps only records of labelled entities, orders them by
the mode's clock (event time or processing time), and sweeps labels in time order: before
a label at ``t`` exactly the records with clock ``< t`` have been folded — the same
``processing.apply_extracted`` the stream worker runs — and the window is merged with the
same ``kernel.tiles.window_states`` the online reader runs. Partitions run in parallel
processes; their per-label states merge (associative, commutative) into one value.

Memory per partition process: the live tiles of labelled entities, plus at most
``spill_items`` extracted records in memory — beyond that, sorted runs spill to temporary
files and are merged back lazily (an external merge sort).
"""

from __future__ import annotations

import gc
import heapq
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

import msgpack

from engine.errors import CodecError
from engine.kernel.tiles import EntityTiles, evict, window_states
from engine.plan import Plan, ViewPlan
from engine.ports import EventLogSource
from engine.processing import EntityKey, Extracted, apply_extracted, extract_all, row_groups

Mode = Literal["event_time", "processing_time"]
MODES: tuple[Mode, ...] = ("event_time", "processing_time")
Progress = Callable[[int, int], None]
"""Called with (records read since the last call, partitions finished since the last call)."""

DEFAULT_SPILL_ITEMS = 1_000_000
_SWEEP_EVERY = 250_000  # folds between eviction passes over every entity
_RESULT_VERSION = 1
_clock = itemgetter(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewRequest:
    """Labels for one view: entity and time per label, and the aggregations wanted."""

    view: str
    entities: Sequence[EntityKey]
    times_ms: Sequence[int]
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Job:
    plan: Plan
    log: EventLogSource
    requests: tuple[ViewRequest, ...]
    mode: Mode
    include_late: bool
    # per request: the entity is the topic key, so each lives in one partition and the
    # worker may finalize; the parent verifies no label arrives twice
    local: tuple[bool, ...]
    spill_items: int


_JOB: _Job | None = None  # handed to forked workers; never pickled

Item = tuple[int, int, Extracted]  # (clock, request slot, extracted record)


class _ClockSorter:
    """Sort extracted records by clock within a memory budget, spilling sorted runs."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.buffer: list[Item] = []
        self.runs: list[str] = []
        self.folder: tempfile.TemporaryDirectory[str] | None = None

    def add(self, item: Item) -> None:
        self.buffer.append(item)
        if len(self.buffer) >= self.limit:
            self._spill()

    def _spill(self) -> None:
        self.buffer.sort(key=_clock)
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="skewless-backfill-")
        path = os.path.join(self.folder.name, f"run-{len(self.runs)}.msgpack")
        packer = msgpack.Packer(use_bin_type=True)
        with open(path, "wb") as fh:
            for clock, m, x in self.buffer:
                fh.write(packer.pack((clock, m, x.entity, x.values, x.event_time_ms,
                                      x.processed_at_ms, x.partition, x.offset)))  # fmt: skip
        self.runs.append(path)
        self.buffer = []

    def sorted(self) -> Iterator[Item]:
        if not self.runs:
            self.buffer.sort(key=_clock)
            yield from self.buffer
            return
        if self.buffer:
            self._spill()
        yield from heapq.merge(*(_read_run(p) for p in self.runs), key=_clock)

    def close(self) -> None:
        if self.folder is not None:
            self.folder.cleanup()


def _read_run(path: str) -> Iterator[Item]:
    with open(path, "rb") as fh:
        for clock, m, entity, values, et, pt, partition, offset in msgpack.Unpacker(
            fh, raw=False, use_list=False
        ):
            yield clock, m, Extracted(entity=entity, values=values, event_time_ms=et,
                                      processed_at_ms=pt, partition=partition, offset=offset)  # fmt: skip


def _sweep(job: _Job, source: str, partition: int) -> tuple[int, list[tuple[int, int, list[Any]]]]:
    """Per-label results from one partition: (records read, [(request, label, out)]).

    ``out`` is finalized values for local requests, merged window states otherwise. The
    cyclic garbage collector is paused while it runs: the sweep allocates millions of
    small acyclic containers, and each generation-2 pass would walk all of them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _sweep_partition(job, source, partition)
    finally:
        if enabled:
            gc.enable()


def _sweep_partition(
    job: _Job, source: str, partition: int
) -> tuple[int, list[tuple[int, int, list[Any]]]]:
    plan = job.plan
    src = plan.sources[source]
    mine = [
        (r, req, plan.views[req.view])
        for r, req in enumerate(job.requests)
        if plan.views[req.view].source == source
    ]
    wanted = [set(req.entities) for _, req, _ in mine]
    groups = row_groups([view for _, _, view in mine])
    seen: list[set[EntityKey]] = [set() for _ in mine]
    by_event_time = job.mode == "event_time"
    include_late = job.include_late
    sorter = _ClockSorter(job.spill_items)
    read = 0
    try:
        for envelope in job.log.read(source, partition):
            read += 1
            for m, item in extract_all(groups, src, envelope, include_late=include_late):
                if item.entity in wanted[m]:
                    seen[m].add(item.entity)
                    clock = item.event_time_ms if by_event_time else item.processed_at_ms
                    sorter.add((clock, m, item))
        labels: list[tuple[int, int, int, EntityKey]] = []
        for m, (_, req, _) in enumerate(mine):
            present = seen[m]
            labels.extend(
                (t, m, i, e)
                for i, (e, t) in enumerate(zip(req.entities, req.times_ms, strict=True))
                if e in present
            )
        labels.sort(key=_clock)
        return read, _replay(job, mine, sorter.sorted(), labels)
    finally:
        sorter.close()


def _replay(
    job: _Job,
    mine: list[tuple[int, ViewRequest, ViewPlan]],
    events: Iterable[Item],
    labels: list[tuple[int, int, int, EntityKey]],
) -> list[tuple[int, int, list[Any]]]:
    """Fold records in clock order and read each label's window just before its time."""
    state: list[dict[EntityKey, EntityTiles]] = [{} for _ in mine]
    views = [view for _, _, view in mine]
    finalizers = [
        [v.layout.aggregators[k].finalize for k in req.indices] if job.local[r] else None
        for r, req, v in mine
    ]
    out: list[tuple[int, int, list[Any]]] = []
    stream = iter(events)
    pending = next(stream, None)
    folded = 0
    for t, m, i, entity in labels:
        while pending is not None and pending[0] < t:
            _, mm, item = pending
            tiles = state[mm].get(item.entity)
            if tiles is None:
                tiles = state[mm][item.entity] = EntityTiles()
            apply_extracted(views[mm], tiles, item)
            pending = next(stream, None)
            folded += 1
            if folded % _SWEEP_EVERY == 0:
                # entities without an upcoming label still shed tiles no later label can use
                for vs, per_entity in enumerate(state):
                    for held in per_entity.values():
                        evict(views[vs].layout, held, t)
        tiles = state[m].get(entity)
        if tiles is None:
            continue
        view = views[m]
        evict(view.layout, tiles, t, slack=4)
        states = window_states(view.layout, tiles, t, mine[m][1].indices)
        finalize = finalizers[m]
        if finalize is not None:
            states = [f(s) for f, s in zip(finalize, states, strict=True)]
        out.append((mine[m][0], i, states))
    return out


def _encoded_sweep(task: tuple[str, int]) -> bytes:
    """Worker-process entry: sweep one partition; one msgpack blob (never pickle) back."""
    job = _JOB
    assert job is not None, "backfill worker started without a job"
    read, results = _sweep(job, *task)
    layouts = [job.plan.views[r.view].layout for r in job.requests]
    plain: list[Any] = []
    for r, i, out in results:
        if job.local[r]:
            out = [_BigInt.wrap(v) if type(v) is int else v for v in out]
        else:
            aggs = layouts[r].aggregators
            out = [aggs[k].to_plain(s) for k, s in zip(job.requests[r].indices, out, strict=True)]
        plain.append((r, i, out))
    return bytes(msgpack.packb((_RESULT_VERSION, read, plain), use_bin_type=True))


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
    version, read, plain = msgpack.unpackb(
        blob, raw=False, strict_map_key=True, ext_hook=_BigInt.hook
    )
    if version != _RESULT_VERSION:
        raise CodecError(f"backfill worker result version {version} (expected {_RESULT_VERSION})")
    return int(read), plain


class _Collisions(Exception):
    """A label of a 'local' request came from two partitions: its entity spans partitions."""

    def __init__(self, requests: set[int]) -> None:
        super().__init__(sorted(requests))
        self.requests = requests


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
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    local = tuple(
        plan.views[r.view].join_keys == plan.sources[plan.views[r.view].source].key_fields
        for r in requests
    )
    try:
        return _run(plan, log, requests, mode, include_late, workers, progress, spill_items, local)
    except _Collisions as exc:
        # an entity's events span partitions (the topic grew, or a producer keyed it
        # differently): redo those views merging states across partitions
        local = tuple(flag and r not in exc.requests for r, flag in enumerate(local))
        return _run(plan, log, requests, mode, include_late, workers, None, spill_items, local)


def _run(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    mode: Mode,
    include_late: bool,
    workers: int,
    progress: Progress | None,
    spill_items: int,
    local: tuple[bool, ...],
) -> list[list[Any]]:
    global _JOB
    job = _Job(plan, log, tuple(requests), mode, include_late, local, spill_items)
    sources = sorted({plan.views[r.view].source for r in requests})
    tasks = [(s, p) for s in sources for p in log.partitions(s)]
    merged: list[dict[int, list[Any]]] = [{} for _ in requests]
    aggs = [[plan.views[req.view].layout.aggregators[k] for k in req.indices] for req in requests]
    collided: set[int] = set()

    def absorb(r: int, i: int, out: list[Any], plain: bool) -> None:
        held = merged[r].get(i)
        if local[r]:
            if held is not None:
                collided.add(r)
            merged[r][i] = out
            return
        if plain:
            out = [a.from_plain(p) for a, p in zip(aggs[r], out, strict=True)]
        if held is None:
            merged[r][i] = out
        else:
            merged[r][i] = [a.merge(h, s) for a, h, s in zip(aggs[r], held, out, strict=True)]

    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            read, results = _sweep(job, *task)
            for r, i, out in results:
                absorb(r, i, out, plain=False)
            if progress:
                progress(read, 1)
    else:
        _JOB = job
        try:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(workers, len(tasks))) as pool:
                for blob in pool.imap_unordered(_encoded_sweep, tasks):
                    read, results = _decode_result(blob)
                    for r, i, out in results:
                        absorb(r, i, list(out), plain=True)
                    if progress:
                        progress(read, 1)
        finally:
            _JOB = None
    if collided:
        raise _Collisions(collided)
    values: list[list[Any]] = []
    for r, req in enumerate(requests):
        empty = [a.finalize(a.init()) for a in aggs[r]]
        got = merged[r]
        rows: list[Any] = []
        for i in range(len(req.entities)):
            found = got.get(i)
            if found is None:
                rows.append(list(empty))
            elif local[r]:
                rows.append(found)
            else:
                rows.append([a.finalize(s) for a, s in zip(aggs[r], found, strict=True)])
        values.append(rows)
    return values


def requests_by_view(refs: Sequence[tuple[ViewPlan, int]]) -> Mapping[str, tuple[int, ...]]:
    """Group resolved refs by view, keeping first-seen order of aggregation indices."""
    grouped: dict[str, list[int]] = {}
    for view, index in refs:
        lst = grouped.setdefault(view.name, [])
        if index not in lst:
            lst.append(index)
    return {k: tuple(v) for k, v in grouped.items()}
