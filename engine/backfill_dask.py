"""The backfill on a ``dask.distributed`` cluster: the same sweep, split in two kinds of task.

``get_historical_features(..., cluster="tcp://HOST:8786")`` and ``skewless backfill
--cluster`` run here (docs/backfill.md, "Backfill on Dask"). The client prepares the labels
exactly as the local run does (``engine.backfill._spec``) and sends the sweep's spec to
every worker once. Then:

1. **Read tasks**, one per log partition: the worker reads the partition's files from the
   log's fsspec URL (``EventLogReader``, honouring each file's ``upto``), through a sweep
   over each entity's last label — what a sweep keeps depends on nothing else, so it keeps
   exactly the records the local run keeps — and hands them over as ``shards`` blobs by
   entity code (``Sweep.take_shards``).
2. **Sweep tasks**, one per entity shard: a sweep over the labels of that shard's entities
   takes blob ``k`` of every read task (``Sweep.add_shard``) and finishes. All records of
   an entity meet in one sweep, as they do locally, so every value is the same; a view keyed
   by another entity than its topic needs no merge step.
3. The client puts each shard's values (kind bytes, int64 bits, msgpack-encoded objects)
   back at their labels' positions and builds the same columns as the local run.

Only plain data crosses the network: the spec (lists of str/int keys, int64 buffers), the
log's URL, the definitions repo path with the views' fingerprints, and bytes. User code is
not shipped: workers load the definitions from ``repo_path`` (which must be reachable at
the same path on every worker) and refuse to run when a view's fingerprint differs from the
client's (docs/decisions.md).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from engine import backfill
from engine.backfill import Mode, Progress, ViewRequest, _Column, _Group, _Reader, _Spec
from engine.errors import ClusterUnavailable, SkewlessError
from engine.plan import Plan

__all__ = ["ClusterUnavailable", "run_columns"]

_BIG_INT = 1  # msgpack ext type: an int beyond 64 bits, as its decimal text
_CONNECT_TIMEOUT_S = 10.0


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
    entity shards swept in parallel (default: the cluster's worker threads).
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
    from distributed import as_completed

    fingerprints = {req.view: plan.views[req.view].fingerprint for req in requests}
    shared = {
        "repo": str(Path(repo_path).resolve()),
        "fingerprints": fingerprints,
        "log": log_root,
        "mode": mode,
        "include_late": include_late,
        "keys": spec.keys,
        "groups": [
            (g.source, g.table, list(g.join_keys), g.first_view.name, list(g.inputs))
            for g in spec.groups
        ],
        "group_specs": spec.group_specs,
        "view_specs": spec.view_specs,
    }
    [shared_f] = client.scatter([shared], broadcast=True, hash=False)
    # a read task's sweep needs of the labels only each entity's last label time (what it
    # keeps depends on nothing else): one request per table, one label per entity
    [last_f] = client.scatter([_last_labels(spec)], broadcast=True, hash=False)
    run = uuid.uuid4().hex[:12]
    reads = [
        client.submit(
            _read_task,
            shared_f,
            last_f,
            run,
            source,
            partition,
            shards,
            pure=False,
            key=f"skewless-read-{source}-{partition}-{run}",
        )
        for source, partition in tasks
    ]
    # each label goes to the shard of its entity's code; a shard's labels go to its sweep
    positions = [_shard_positions(spec.request_specs, k, shards) for k in range(shards)]
    shard_fs = client.scatter([_pick(spec.request_specs, at) for at in positions], hash=False)
    # picking a blob or the count out of a read's result runs as soon as the read is done
    # (high priority), so progress follows the reads and blobs move while others read
    counts = [client.submit(_item, r, 0, pure=False, priority=10) for r in reads]
    blobs = [
        [client.submit(_item, r, 1 + k, pure=False, priority=10) for r in reads]
        for k in range(shards)
    ]
    sweeps = [
        client.submit(_sweep_task, shared_f, shard_fs[k], *blobs[k], pure=False)
        for k in range(shards)
    ]
    try:
        # this client's loop: the client need not be the process's default one
        for done in as_completed(counts, loop=client.loop):  # type: ignore[no-untyped-call]
            read = done.result()
            if progress is not None:
                progress(int(read), 1)
        results = client.gather(sweeps)
    finally:
        client.run(_forget, run)
    out: list[list[_Column]] = []
    for r, req in enumerate(requests):
        n = len(req.entities)
        cols: list[_Column] = []
        for j in range(len(req.indices)):
            kinds = np.zeros(n, dtype=np.uint8)
            bits = np.zeros(n, dtype=np.int64)
            objects: list[tuple[int, Any]] = []
            for k in range(shards):
                at = positions[k][r]
                k_kinds, k_bits, k_objects = results[k][r][j]
                kinds[at] = np.frombuffer(k_kinds, dtype=np.uint8)
                bits[at] = np.frombuffer(k_bits, dtype=np.int64)
                objects.extend((int(at[i]), v) for i, v in _unpack(k_objects))
            objects.sort(key=lambda o: o[0])
            cols.append(_Column.from_native(n, kinds.tobytes(), bits.tobytes(), objects))
        out.append(cols)
    return out


def _item(seq: Sequence[Any], i: int) -> Any:
    return seq[i]


def _last_labels(spec: _Spec) -> list[tuple[Any, ...]]:
    """Per label table, one request of one label per entity at its latest label time: a
    sweep built on these keeps exactly the records one built on every label keeps."""
    last = [np.full(len(t.entities), np.iinfo(np.int64).min, dtype=np.int64) for t in spec.tables]
    view_of: dict[int, int] = {}
    for v, codes, times, _ in spec.request_specs:
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

_plans: dict[tuple[str, tuple[tuple[str, str], ...]], Plan] = {}
_plans_lock = threading.Lock()


def _worker_plan(repo: str, fingerprints: Mapping[str, str]) -> Plan:
    """The definitions at ``repo`` (loaded once per worker process), checked against the
    client's view fingerprints: a worker never runs other user code than the client's."""
    from engine.loader import load_definitions
    from engine.plan import compile_plan

    key = (repo, tuple(sorted(fingerprints.items())))
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


def _sweep_of(shared: Mapping[str, Any], request_specs: list[tuple[Any, ...]]) -> Any:
    from engine import _native

    return _native.Sweep(
        shared["mode"],
        shared["include_late"],
        shared["keys"],
        shared["group_specs"],
        shared["view_specs"],
        request_specs,
    )


_read_sweeps: dict[str, Any] = {}  # run -> the sweep this process's read tasks share
_read_lock = threading.Lock()


def _read_sweep(run: str, shared: Mapping[str, Any], request_specs: list[tuple[Any, ...]]) -> Any:
    """The sweep this worker's read tasks of ``run`` share (over each entity's last label,
    ``_last_labels``): built once per process, emptied by each task's ``take_shards``."""
    with _read_lock:
        sweep = _read_sweeps.get(run)
        if sweep is None:
            _read_sweeps.clear()  # a finished run's (forgotten unless its client died)
            sweep = _read_sweeps[run] = _sweep_of(shared, request_specs)
        return sweep


def _forget(run: str) -> None:
    """Drop ``run``'s shared read sweep (the client calls it on every worker at the end)."""
    with _read_lock:
        _read_sweeps.pop(run, None)


def _read_task(
    shared: Mapping[str, Any],
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

    plan = _worker_plan(shared["repo"], shared["fingerprints"])
    groups = [
        _Group(src, table, tuple(keys), plan.views[view], list(inputs))
        for src, table, keys, view, inputs in shared["groups"]
    ]
    sweep = _read_sweep(run, shared, request_specs)
    read = 0

    def count(records: int, _done: int) -> None:
        nonlocal read
        read += records

    _Reader(plan, EventLogReader(shared["log"]), sweep, groups, count).partition(source, partition)
    return [read, *sweep.take_shards(shards)]


def _sweep_task(
    shared: Mapping[str, Any], request_specs: list[tuple[Any, ...]], *blobs: bytes
) -> list[list[tuple[bytes, bytes, bytes]]]:
    """Sweep one entity shard: per request and wanted aggregation, (kinds, bits, objects
    as msgpack of [[label, value], ...]) for the shard's labels, in label order."""
    sweep = _sweep_of(shared, request_specs)
    for blob in blobs:
        sweep.add_shard(blob)
    return [
        [(kinds, bits, _pack(objects)) for kinds, bits, objects in cols] for cols in sweep.finish()
    ]


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
