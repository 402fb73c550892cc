"""The backfill runner: replay the event log through the kernel to get features as of each label.

For each log partition the runner keeps only records of labelled entities, orders them by
the mode's clock (event time or processing time), and sweeps labels in time order: before
a label at ``t`` exactly the records with clock ``< t`` have been folded — the same
``processing.apply_extracted`` the stream worker runs — and the window is merged with the
same ``kernel.tiles.window_states`` the online reader runs. Partitions run in parallel
processes; their per-label states merge (associative, commutative) into one value.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

from engine.codec import decode_states, encode_states
from engine.kernel.tiles import EntityTiles, evict, window_states
from engine.plan import Plan, ViewPlan
from engine.ports import EventLogSource
from engine.processing import EntityKey, Extracted, apply_extracted, extract

Mode = Literal["event_time", "processing_time"]
MODES: tuple[Mode, ...] = ("event_time", "processing_time")
Progress = Callable[[int, int], None]
"""Called with (records read since the last call, partitions finished since the last call)."""


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


_JOB: _Job | None = None  # handed to forked workers; never pickled


def _sweep(job: _Job, source: str, partition: int) -> tuple[int, list[tuple[int, int, list[Any]]]]:
    """Per-label window states from one partition: (records read, [(request, label, states)]).

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
    by_time = job.mode == "event_time"
    events: list[tuple[int, int, Extracted]] = []
    read = 0
    include_late = job.include_late
    for envelope in job.log.read(source, partition):
        read += 1
        for m, (_, _, view) in enumerate(mine):
            item = extract(view, src, envelope, include_late=include_late)
            if item is not None and item.entity in wanted[m]:
                clock = item.event_time_ms if by_time else item.processed_at_ms
                events.append((clock, m, item))
    if not events:
        return read, []
    events.sort(key=itemgetter(0))
    seen = [set[EntityKey]() for _ in mine]
    for _, m, item in events:
        seen[m].add(item.entity)
    labels: list[tuple[int, int, int, EntityKey]] = []
    for m, (_, req, _) in enumerate(mine):
        present = seen[m]
        labels.extend(
            (t, m, i, e)
            for i, (e, t) in enumerate(zip(req.entities, req.times_ms, strict=True))
            if e in present
        )
    labels.sort(key=itemgetter(0))
    state: list[dict[EntityKey, EntityTiles]] = [{} for _ in mine]
    limits = [
        sum(g.longest_window_ms // g.hop_ms for g in view.layout.groups)
        + 2 * len(view.layout.groups)
        + 1
        for _, _, view in mine
    ]
    out: list[tuple[int, int, list[Any]]] = []
    e, n = 0, len(events)
    for t, m, i, entity in labels:
        while e < n and events[e][0] < t:
            _, mm, item = events[e]
            tiles = state[mm].get(item.entity)
            if tiles is None:
                tiles = state[mm][item.entity] = EntityTiles()
            apply_extracted(mine[mm][2], tiles, item)
            e += 1
        tiles = state[m].get(entity)
        if tiles is None:
            continue
        view = mine[m][2]
        if len(tiles) > limits[m]:
            evict(view.layout, tiles, t)
        out.append((mine[m][0], i, window_states(view.layout, tiles, t, mine[m][1].indices)))
    return read, out


def _encoded_sweep(task: tuple[str, int]) -> tuple[int, list[tuple[int, int, bytes]]]:
    """Worker-process entry: sweep one partition, encode states with the tile codec."""
    job = _JOB
    assert job is not None, "backfill worker started without a job"
    read, results = _sweep(job, *task)
    layouts = [job.plan.views[r.view].layout for r in job.requests]
    encoded = []
    for r, i, states in results:
        aggs = [layouts[r].aggregators[k] for k in job.requests[r].indices]
        encoded.append((r, i, encode_states(aggs, states)))
    return read, encoded


def run(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    *,
    mode: Mode,
    include_late: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[list[Any]]:
    """Finalized feature values: ``result[r][label][j]`` for request r's j-th index.

    Labels whose entity has no admitted event before their time get the empty-window
    defaults. Results are bit-identical for any worker count.
    """
    global _JOB
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    job = _Job(plan, log, tuple(requests), mode, include_late)
    sources = sorted({plan.views[r.view].source for r in requests})
    tasks = [(s, p) for s in sources for p in log.partitions(s)]
    merged: list[dict[int, list[Any]]] = [{} for _ in requests]
    layouts = [plan.views[r.view].layout for r in requests]
    aggs = [[layouts[r].aggregators[k] for k in req.indices] for r, req in enumerate(requests)]

    def absorb(r: int, i: int, states: list[Any]) -> None:
        held = merged[r].get(i)
        if held is None:
            merged[r][i] = states
        else:
            merged[r][i] = [a.merge(h, s) for a, h, s in zip(aggs[r], held, states, strict=True)]

    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            read, results = _sweep(job, *task)
            for r, i, states in results:
                absorb(r, i, states)
            if progress:
                progress(read, 1)
    else:
        _JOB = job
        try:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(workers, len(tasks))) as pool:
                for read, encoded in pool.imap_unordered(_encoded_sweep, tasks):
                    for r, i, blob in encoded:
                        absorb(r, i, decode_states(aggs[r], blob))
                    if progress:
                        progress(read, 1)
        finally:
            _JOB = None
    values: list[list[Any]] = []
    for r, req in enumerate(requests):
        empty = [a.finalize(a.init()) for a in aggs[r]]
        rows: list[Any] = []
        got = merged[r]
        for i in range(len(req.entities)):
            found = got.get(i)
            rows.append(
                list(empty)
                if found is None
                else [a.finalize(s) for a, s in zip(aggs[r], found, strict=True)]
            )
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
