"""The backfill on a ``dask.distributed`` cluster: the local run's sweep, split into tasks.

``get_historical_features(..., cluster="tcp://HOST:8786")`` and ``skewless backfill
--cluster`` run here (docs/backfill.md, "Backfill on Dask"). The client prepares the labels
exactly as the local run does (``engine.backfill._spec``) and sends the sweep's spec to
every worker once. Then:

1. **Partition tasks**, for the views keyed by their source's key: two tasks per worker
   thread (at most one per log partition) each read a share of the partitions from the log's
   fsspec URL (``EventLogReader``, honouring each file's ``upto``) through a sweep over
   every label of those views, keeps the labels of the entities it kept records of
   (``Sweep.keep_present_labels``) and finishes them. When the log is partitioned by that
   key, all of an entity's records are in one partition, so the task's sweep sees exactly
   what the local run's sees of that entity: the same values, and no record crosses the
   network. The client checks it: a label two tasks gave a value (its entity's records are
   in partitions of both) is swept again by entity shard (2.), as is every label of a
   re-keyed view; a label no task gave a value (no kept record of its entity anywhere) gets
   what a sweep without records gives it.
2. **The exchange by entity shard**: read tasks, one per log partition, read through a
   sweep over each entity's last label — what a sweep keeps depends on nothing else, so it
   keeps exactly the records the local run keeps — and hand them over as ``shards`` blobs
   by entity code (``Sweep.take_shards``); one sweep task per entity shard, over the labels
   of that shard's entities, takes blob ``k`` of every read task (``Sweep.add_shard``) and
   finishes. All records of an entity meet in one sweep, as they do locally.
3. The client puts the values (kind bytes, int64 bits, msgpack-encoded objects) at their
   labels' positions and builds the same columns as the local run.

Only plain data crosses the network: the spec (lists of str/int keys, int64 buffers), the
log's URL, the definitions repo path with the views' fingerprints, and bytes. User code is
not shipped: workers load the definitions from ``repo_path`` (which must be reachable at
the same path on every worker) and refuse to run when a view's fingerprint differs from the
client's (docs/decisions.md).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from engine import _native, backfill
from engine.backfill import Mode, Progress, ViewRequest, _Column, _Group, _Reader, _Spec
from engine.errors import ClusterUnavailable, SkewlessError
from engine.plan import Plan, rekeyed

__all__ = ["ClusterUnavailable", "run_columns"]

_BIG_INT = 1  # msgpack ext type: an int beyond 64 bits, as its decimal text
_CONNECT_TIMEOUT_S = 10.0
_NO_SOURCE = "\x00none"  # the source of the groups a task does not read
# False: every view through the exchange by entity shard, as before the partition tasks
# (``benchmarks/backfill_dask.py --exchange-too`` times both ways in one run)
_PARTITION_TASKS = True
# partition tasks per worker thread (at most one per partition): two even out the ends (a
# worker that finishes early takes another), measured against one in the same runs
_TASKS_PER_THREAD = 2


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
        raise ClusterUnavailable(
            "the backfill on a Dask cluster needs dask.distributed: pip install 'skewless[dask]'"
        ) from exc
    try:
        return Client(address, timeout=_CONNECT_TIMEOUT_S, set_as_default=False)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise ClusterUnavailable(
            f"cannot reach the Dask scheduler at {address} ({exc}); is `dask scheduler` "
            "running there and are its workers connected?"
        ) from exc


def run_columns(
    plan: Plan,
    log_root: str,
    repo_path: str | Path,
    requests: Sequence[ViewRequest],
    *,
    mode: Mode,
    include_late: bool = False,
    cluster: str | Any,
    shards: int | None = None,
    progress: Progress | None = None,
) -> list[list[np.ndarray]]:
    """``engine.backfill.run_columns`` with the reading and the sweep on a Dask cluster.

    ``cluster``: the scheduler's address (``tcp://HOST:8786``) or a connected
    ``distributed.Client``; ``log_root``: the event log's URL, which every worker must
    reach; ``repo_path``: the definitions repo, at that path on every worker; ``shards``:
    tasks swept in parallel — partition tasks (at most one per partition) and entity shards
    (default: the cluster's worker threads).
    """
    columns = _execute(
        plan, log_root, repo_path, requests, mode, include_late, cluster, shards, progress
    )
    return [[c.to_numpy() for c in cols] for cols in columns]


def _execute(
    plan: Plan,
    log_root: str,
    repo_path: str | Path,
    requests: Sequence[ViewRequest],
    mode: Mode,
    include_late: bool,
    cluster: str | Any,
    shards: int | None,
    progress: Progress | None,
) -> list[list[_Column]]:
    from connectors.eventlog import EventLogReader

    spec = backfill._spec(plan, requests, mode)
    log = EventLogReader(log_root)
    tasks = [(s, p) for s in sorted({g.source for g in spec.groups}) for p in log.partitions(s)]
    own = isinstance(cluster, str)
    client: Any = _client(cluster) if own else cluster
    try:
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=_CONNECT_TIMEOUT_S)
            except TimeoutError as exc:
                raise ClusterUnavailable(
                    f"the Dask scheduler at {client.scheduler.address} has no workers "
                    f"(none joined within {_CONNECT_TIMEOUT_S:g} s); start `dask worker "
                    f"{client.scheduler.address}` on the machines that reach the event log"
                ) from exc
        if shards is None:
            shards = max(1, sum(client.nthreads().values()))
        return _on_cluster(
            client,
            plan,
            spec,
            log_root,
            repo_path,
            requests,
            mode,
            include_late,
            tasks,
            shards,
            progress,
        )
    finally:
        if own:
            client.close()


def _on_cluster(
    client: Any,
    plan: Plan,
    spec: _Spec,
    log_root: str,
    repo_path: str | Path,
    requests: Sequence[ViewRequest],
    mode: Mode,
    include_late: bool,
    tasks: list[tuple[str, int]],
    shards: int,
    progress: Progress | None,
) -> list[list[_Column]]:
    fingerprints = {req.view: plan.views[req.view].fingerprint for req in requests}
    # the native sweep's threads per task: the host's cores shared by its Dask worker threads
    # (two single-threaded workers on two cores: one each, not a pool of two in each)
    host_threads: dict[str, int] = {}
    for address, n in client.nthreads().items():
        host = _host(address)
        host_threads[host] = host_threads.get(host, 0) + int(n)
    base = {
        "host_threads": host_threads,
        "repo": str(Path(repo_path).resolve()),
        "fingerprints": fingerprints,
        # the client's online.merge_rekeyed_views: it changes re-keyed views' fingerprints
        # (their keyspace), not what the backfill computes
        "merged_tiles": any(v.merged for v in plan.views.values()),
        "log": log_root,
        "mode": mode,
        "include_late": include_late,
        "view_specs": spec.view_specs,
    }
    out = _Out(spec, requests)
    # groups keyed by their source's key: an entity's records are in one log partition when
    # the log is partitioned by that key, so a task over some partitions finishes them alone
    # (checked below: an entity found in two tasks goes through the exchange after all)
    local = {g for g, group in enumerate(spec.groups)
             if _PARTITION_TASKS and not rekeyed(group.first_view,
                                                 plan.sources[group.source])}  # fmt: skip
    group_of = [spec.view_specs[v][0] for v, _, _, _ in spec.request_specs]
    by_partition = [r for r, g in enumerate(group_of) if g in local]
    exchanged = [r for r, g in enumerate(group_of) if g not in local]
    run = uuid.uuid4().hex[:12]
    # what every worker needs, in one scatter (one round trip)
    send: list[Any] = [spec.keys]
    if by_partition:
        send += [_masked(base, spec, local), [spec.request_specs[r] for r in by_partition]]
    keys_f, *partition_fs = client.scatter(send, broadcast=True, hash=False)
    pending = None
    if by_partition:
        shared_f, specs_f = partition_fs
        pending = _submit_partition_tasks(
            client, keys_f, shared_f, specs_f, spec, local, tasks, shards, run
        )
    try:
        if exchanged:
            # the re-keyed views' entity shards (their read tasks report the partitions of
            # sources no partition task reads: each partition is reported once)
            read_by_tasks = {spec.groups[g].source for g in local}
            _exchange(client, keys_f, base, spec, exchanged, {group_of[r] for r in exchanged},
                      tasks, shards, f"{run}x", progress, out,
                      report=lambda source: source not in read_by_tasks)  # fmt: skip
        if pending is not None:
            again = _collect_partition_tasks(client, pending, by_partition, progress, out)
            if again:
                # entities with records in two tasks' partitions: exchanged by entity shard
                _exchange(client, keys_f, base, spec, list(again), {group_of[r] for r in again},
                          tasks, shards, f"{run}y", None, out, again)  # fmt: skip
    finally:
        if pending is not None:
            client.cancel(pending[1])
    out.defaults(spec, mode, include_late)
    return out.columns()


class _Out:
    """The values of every request's labels, as they come from the tasks."""

    def __init__(self, spec: _Spec, requests: Sequence[ViewRequest]) -> None:
        self.sizes = [len(req.entities) for req in requests]
        self.kinds = [[np.zeros(n, dtype=np.uint8) for _ in req.indices]
                      for n, req in zip(self.sizes, requests, strict=True)]  # fmt: skip
        self.bits = [[np.zeros(n, dtype=np.int64) for _ in req.indices]
                     for n, req in zip(self.sizes, requests, strict=True)]  # fmt: skip
        self.objects: list[list[dict[int, Any]]] = [[{} for _ in req.indices] for req in requests]
        # per request, how many tasks gave each label a value
        self.given = [np.zeros(n, dtype=np.uint8) for n in self.sizes]

    def put(self, r: int, at: np.ndarray, cols: Sequence[tuple[bytes, bytes, Any]]) -> None:
        """Values of request ``r``'s labels at ``at``: per column (kinds, bits, objects as
        msgpack of [[i, value], ...] or a list of (i, value), ``i`` indexing ``at``)."""
        for j, (kinds, bits, objects) in enumerate(cols):
            self.kinds[r][j][at] = np.frombuffer(kinds, dtype=np.uint8)
            self.bits[r][j][at] = np.frombuffer(bits, dtype=np.int64)
            if objects:
                found = self.objects[r][j]
                for i, v in _unpack(objects) if isinstance(objects, bytes) else objects:
                    found[int(at[i])] = v
        self.given[r][at] += 1

    def defaults(self, spec: _Spec, mode: Mode, include_late: bool) -> None:
        """The labels no task gave a value (no kept record of their entity anywhere): a
        sweep without records gives them what the local run's does."""
        missing = [np.flatnonzero(g == 0) for g in self.given]
        wanted = [r for r, at in enumerate(missing) if len(at)]
        if not wanted:
            return
        picked = _pick([spec.request_specs[r] for r in wanted], [missing[r] for r in wanted])
        sweep = _native.Sweep(mode, include_late, spec.keys, spec.group_specs,
                              spec.view_specs, picked)  # fmt: skip
        for r, cols in zip(wanted, sweep.finish(), strict=True):
            self.put(r, missing[r], cols)

    def columns(self) -> list[list[_Column]]:
        out = []
        for r, n in enumerate(self.sizes):
            cols = []
            for j, kinds in enumerate(self.kinds[r]):
                objects = sorted((i, v) for i, v in self.objects[r][j].items() if kinds[i] == 3)
                cols.append(_Column.from_native(n, kinds.tobytes(), self.bits[r][j].tobytes(),
                                                objects))  # fmt: skip
            out.append(cols)
        return out


def _masked(base: Mapping[str, Any], spec: _Spec, groups: set[int]) -> dict[str, Any]:
    """``base`` with the groups of ``spec``: those not in ``groups`` read no source (a
    task's sweep keeps no record for them)."""
    return {
        **base,
        "groups": [
            (
                g.source if i in groups else _NO_SOURCE,
                g.table,
                list(g.join_keys),
                g.first_view.name,
                list(g.inputs),
            )
            for i, g in enumerate(spec.groups)
        ],
        "group_specs": [
            (s if i in groups else _NO_SOURCE, *rest)
            for i, (s, *rest) in enumerate(spec.group_specs)
        ],
    }


def _submit_partition_tasks(
    client: Any,
    keys_f: Any,
    shared_f: Any,
    specs_f: Any,
    spec: _Spec,
    groups: set[int],
    tasks: list[tuple[str, int]],
    slots: int,
    run: str,
) -> tuple[list[Any], list[Any]]:
    """Two tasks per worker thread (at most one per partition), each reading every
    ``n``-th partition of the sources of ``groups`` through a sweep over every label of
    ``specs_f`` (the requests of ``groups``) and finishing the labels of the entities it
    found records of."""
    mine = [t for t in tasks if any(spec.groups[g].source == t[0] for g in groups)]
    n = max(1, min(slots * _TASKS_PER_THREAD, len(mine)))
    parts = [mine[k::n] for k in range(n)]
    futures = [
        client.submit(
            _partition_task,
            shared_f,
            keys_f,
            specs_f,
            part,
            pure=False,
            key=f"skewless-partitions-{k}-{run}",
        )
        for k, part in enumerate(parts)
    ]
    return parts, futures


def _collect_partition_tasks(
    client: Any,
    pending: tuple[list[Any], list[Any]],
    requests: list[int],
    progress: Progress | None,
    out: _Out,
) -> dict[int, np.ndarray]:
    """Place the partition tasks' values; per request, the labels two tasks gave a value
    (their entity has records in partitions of both), for the exchange."""
    from distributed import as_completed

    _, futures = pending
    for done in as_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
        reads, kept, values = done.result()
        if progress is not None:
            for read in reads:
                progress(int(read), 1)
        positions: dict[bytes, np.ndarray] = {}  # requests over the same labels: one array
        for r, at, cols in zip(requests, kept, values, strict=True):
            got = positions.get(at)
            if got is None:
                got = positions[at] = np.frombuffer(at, dtype=np.uint32).astype(np.intp)
            out.put(r, got, cols)
    again = {r: np.flatnonzero(out.given[r] > 1) for r in requests}
    for r, at in again.items():
        out.given[r][at] = 0
    return {r: at for r, at in again.items() if len(at)}


def _exchange(
    client: Any,
    keys_f: Any,
    base: Mapping[str, Any],
    spec: _Spec,
    requests: list[int],
    groups: set[int],
    tasks: list[tuple[str, int]],
    shards: int,
    run: str,
    progress: Progress | None,
    out: _Out,
    labels: Mapping[int, np.ndarray] | None = None,
    report: Callable[[str], bool] = lambda _source: True,
) -> None:
    """Sweep ``requests`` (only their ``labels`` when given) by entity shard: read tasks per
    partition hand their kept records to one sweep task per shard."""
    from distributed import as_completed

    shared = _masked(base, spec, groups)
    request_specs = [spec.request_specs[r] for r in requests]
    if labels is not None:
        request_specs = _pick(request_specs, [labels[r] for r in requests])
    [shared_f] = client.scatter([shared], broadcast=True, hash=False)
    # a read task's sweep needs of the labels only each entity's last label time (what it
    # keeps depends on nothing else): one request per table, one label per entity
    last = _last_labels(spec, request_specs)
    [last_f] = client.scatter([last], broadcast=True, hash=False)
    mine = [t for t in tasks if any(spec.groups[g].source == t[0] for g in groups)]
    reads = [
        client.submit(
            _read_task,
            shared_f,
            keys_f,
            last_f,
            run,
            source,
            partition,
            shards,
            pure=False,
            key=f"skewless-read-{source}-{partition}-{run}",
        )
        for source, partition in mine
    ]
    # each label goes to the shard of its entity's code; a shard's labels go to its sweep
    positions = [_shard_positions(request_specs, k, shards) for k in range(shards)]
    shard_fs = client.scatter([_pick(request_specs, at) for at in positions], hash=False)
    # picking a blob or the count out of a read's result runs as soon as the read is done
    # (high priority), so progress follows the reads and blobs move while others read
    counts = [client.submit(_item, r, 0, pure=False, priority=10) for r in reads]
    blobs = [
        [client.submit(_item, r, 1 + k, pure=False, priority=10) for r in reads]
        for k in range(shards)
    ]
    sweeps = [
        client.submit(_sweep_task, shared_f, keys_f, shard_fs[k], *blobs[k], pure=False)
        for k in range(shards)
    ]
    try:
        # this client's loop: the client need not be the process's default one
        source_of = {c.key: source for c, (source, _) in zip(counts, mine, strict=True)}
        for done in as_completed(counts, loop=client.loop):  # type: ignore[no-untyped-call]
            read = done.result()
            if progress is not None and report(source_of[done.key]):
                progress(int(read), 1)
        results = client.gather(sweeps)
    finally:
        client.run(_forget, run)
    for k in range(shards):
        for i, r in enumerate(requests):
            at = positions[k][i]
            if labels is not None:
                at = labels[r][at]
            out.put(r, at, results[k][i])


def _item(seq: Sequence[Any], i: int) -> Any:
    return seq[i]


def _last_labels(spec: _Spec, request_specs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Per label table, one request of one label per entity at its latest label time in
    ``request_specs``: a sweep built on these keeps exactly the records one built on those
    labels keeps."""
    last = [np.full(len(t.entities), np.iinfo(np.int64).min, dtype=np.int64) for t in spec.tables]
    view_of: dict[int, int] = {}
    for v, codes, times, _ in request_specs:
        table = spec.group_specs[spec.view_specs[v][0]][1]
        view_of.setdefault(table, v)
        np.maximum.at(last[table], np.frombuffer(codes, dtype=np.int64),
                      np.frombuffer(times, dtype=np.int64))  # fmt: skip
    return [
        (v, np.arange(len(last[t]), dtype=np.int64).tobytes(), last[t].tobytes(), [])
        for t, v in sorted(view_of.items())
    ]


def _pick(
    request_specs: list[tuple[Any, ...]], positions: list[np.ndarray]
) -> list[tuple[Any, ...]]:
    """The request specs of the labels at ``positions`` (per request)."""
    taken: dict[tuple[int, int], bytes] = {}

    def pick(buffer: bytes, at: np.ndarray) -> bytes:
        got = taken.get((id(buffer), id(at)))
        if got is None:
            got = taken[(id(buffer), id(at))] = np.frombuffer(buffer, dtype=np.int64)[at].tobytes()
        return got

    return [
        (v, pick(codes, at), pick(times, at), indices)
        for (v, codes, times, indices), at in zip(request_specs, positions, strict=True)
    ]


def _shard_positions(
    request_specs: list[tuple[Any, ...]], shard: int, shards: int
) -> list[np.ndarray]:
    """Per request, the indices of the labels whose entity code is ``shard`` modulo
    ``shards`` (requests sharing a codes buffer share the array)."""
    done: dict[int, np.ndarray] = {}
    out = []
    for _, codes, _, _ in request_specs:
        at = done.get(id(codes))
        if at is None:
            at = done[id(codes)] = np.flatnonzero(
                np.frombuffer(codes, dtype=np.int64) % shards == shard
            )
        out.append(at)
    return out


# ------------------------------------------------------------------------------------------
# on the workers

_plans: dict[tuple[str, tuple[tuple[str, str], ...], bool], Plan] = {}
_plans_lock = threading.Lock()


def _worker_plan(repo: str, fingerprints: Mapping[str, str], merged_tiles: bool) -> Plan:
    """The definitions at ``repo`` (loaded once per worker process), checked against the
    client's view fingerprints: a worker never runs other user code than the client's.
    ``merged_tiles``: the client's plan marks re-keyed views merge-on-write (their
    fingerprints then name that keyspace), so the worker's plan does too."""
    from engine.loader import load_definitions
    from engine.plan import compile_plan, with_merged_tiles

    key = (repo, tuple(sorted(fingerprints.items())), merged_tiles)
    with _plans_lock:
        plan = _plans.get(key)
        if plan is None:
            path = Path(repo)
            if not path.is_dir():
                raise SkewlessError(
                    f"the definitions repo {repo} is not reachable on this Dask worker; the "
                    "backfill on a cluster loads the definitions from the same path on every "
                    "worker (docs/backfill.md)"
                )
            loaded = load_definitions(path)
            plan = compile_plan(
                loaded.entities,
                loaded.sources,
                loaded.views,
                base_dir=path.resolve(),
                problems=loaded.problems,
            )
            if merged_tiles:
                plan = with_merged_tiles(plan)
            for name, fingerprint in fingerprints.items():
                view = plan.views.get(name)
                if view is None or view.fingerprint != fingerprint:
                    raise SkewlessError(
                        f"view {name!r} differs between the client and this Dask worker's "
                        f"definitions at {repo} (fingerprint {fingerprint} on the client, "
                        f"{view.fingerprint if view else 'no such view'} here); deploy the "
                        "same definitions to every worker"
                    )
            if len(_plans) >= 8:
                _plans.clear()  # older definitions of long-lived workers
            _plans[key] = plan
    return plan


def _sweep_of(
    shared: Mapping[str, Any],
    keys: list[list[tuple[Any, ...]]],
    request_specs: list[tuple[Any, ...]],
) -> Any:
    return _native.Sweep(
        shared["mode"],
        shared["include_late"],
        keys,
        shared["group_specs"],
        shared["view_specs"],
        request_specs,
    )


_read_sweeps: dict[str, Any] = {}  # run -> the sweep this process's read tasks share
_read_lock = threading.Lock()


def _read_sweep(
    run: str,
    shared: Mapping[str, Any],
    keys: list[list[tuple[Any, ...]]],
    request_specs: list[tuple[Any, ...]],
) -> Any:
    """The sweep this worker's read tasks of ``run`` share (over each entity's last label,
    ``_last_labels``): built once per process, emptied by each task's ``take_shards``."""
    with _read_lock:
        sweep = _read_sweeps.get(run)
        if sweep is None:
            _read_sweeps.clear()  # a finished run's (forgotten unless its client died)
            sweep = _read_sweeps[run] = _sweep_of(shared, keys, request_specs)
        return sweep


def _forget(run: str) -> None:
    """Drop ``run``'s shared read sweep (the client calls it on every worker at the end)."""
    with _read_lock:
        _read_sweeps.pop(run, None)


def _read_task(
    shared: Mapping[str, Any],
    keys: list[list[tuple[Any, ...]]],
    request_specs: list[tuple[Any, ...]],
    run: str,
    source: str,
    partition: int,
    shards: int,
) -> list[Any]:
    """Read one log partition; ``[records read, blob of shard 0, blob of shard 1, ...]``.

    Read tasks running at once in one worker share its sweep, so a task's blobs may carry
    records another task added before them (and not its own, added after): every kept
    record still leaves in exactly one blob of its shard, which is all the sweep tasks
    need."""
    from connectors.eventlog import EventLogReader

    plan = _worker_plan(shared["repo"], shared["fingerprints"], shared["merged_tiles"])
    sweep = _read_sweep(run, shared, keys, request_specs)
    read = 0

    def count(records: int, _done: int) -> None:
        nonlocal read
        read += records

    reader = _Reader(plan, EventLogReader(shared["log"]), sweep, _groups(plan, shared), count)
    reader.partition(source, partition)
    return [read, *sweep.take_shards(shards)]


def _sweep_task(
    shared: Mapping[str, Any],
    keys: list[list[tuple[Any, ...]]],
    request_specs: list[tuple[Any, ...]],
    *blobs: bytes,
) -> list[list[tuple[bytes, bytes, bytes]]]:
    """Sweep one entity shard: per request and wanted aggregation, (kinds, bits, objects
    as msgpack of [[label, value], ...]) for the shard's labels, in label order."""
    sweep = _sweep_of(shared, keys, request_specs)
    for blob in blobs:
        sweep.add_shard(blob)
    return _values(sweep.finish(_threads(shared)))


def _partition_task(
    shared: Mapping[str, Any],
    keys: list[list[tuple[Any, ...]]],
    request_specs: list[tuple[Any, ...]],
    partitions: list[tuple[str, int]],
) -> tuple[list[int], list[bytes], list[list[tuple[bytes, bytes, bytes]]]]:
    """Read ``partitions`` through a sweep over every label of ``request_specs`` and finish
    the labels of the entities it kept records of: (records read per partition, per request
    those labels' positions as uint32 bytes, their values as ``_sweep_task``'s)."""
    from connectors.eventlog import EventLogReader

    plan = _worker_plan(shared["repo"], shared["fingerprints"], shared["merged_tiles"])
    sweep = _sweep_of(shared, keys, request_specs)
    reads: list[int] = []

    def count(records: int, _done: int) -> None:
        reads.append(records)

    reader = _Reader(plan, EventLogReader(shared["log"]), sweep, _groups(plan, shared), count)
    for source, partition in partitions:
        reader.partition(source, partition)
    kept = sweep.keep_present_labels()
    return reads, kept, _values(sweep.finish(_threads(shared)))


def _host(address: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(address).hostname or address


def _threads(shared: Mapping[str, Any]) -> int | None:
    """The sweep threads of a task on this worker: the machine's cores over the Dask worker
    threads of its host (``None``, the process's pool, outside a worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    sharing = int(shared["host_threads"].get(_host(worker.address), worker.state.nthreads))
    return max(1, (cores or 1) // max(1, sharing))


def _groups(plan: Plan, shared: Mapping[str, Any]) -> list[_Group]:
    return [
        _Group(src, table, tuple(keys), plan.views[view], list(inputs))
        for src, table, keys, view, inputs in shared["groups"]
    ]


def _values(
    finished: list[list[tuple[bytes, bytes, Any]]],
) -> list[list[tuple[bytes, bytes, bytes]]]:
    return [[(kinds, bits, _pack(objects)) for kinds, bits, objects in cols] for cols in finished]


# ------------------------------------------------------------------------------------------
# feature values that are objects (lists, strings, exact sums beyond int64) as msgpack


def _wide(value: Any) -> Any:
    if type(value) is int and not -(1 << 63) <= value < 1 << 64:
        return msgpack.ExtType(_BIG_INT, str(value).encode())
    if isinstance(value, list):
        return [_wide(v) for v in value]
    if isinstance(value, dict):
        return {k: _wide(v) for k, v in value.items()}
    return value


def _pack(objects: list[tuple[int, Any]]) -> bytes:
    packed: bytes = msgpack.packb([[i, _wide(v)] for i, v in objects], use_bin_type=True)
    return packed


def _ext(code: int, data: bytes) -> Any:
    if code == _BIG_INT:
        return int(data.decode())
    raise ValueError(f"unknown msgpack ext type {code} in a shard's values")


def _unpack(data: bytes) -> list[tuple[int, Any]]:
    items: list[list[Any]] = msgpack.unpackb(
        data, raw=False, strict_map_key=False, ext_hook=_ext, use_list=True
    )
    return [(int(i), v) for i, v in items]
