"""Backfill on Dask vs local: the same 12 features over the same event log, in one run.

Uses the data of ``benchmarks/backfill.py`` (generated and imported by it on the first
run, cached under ``benchmarks/out/backfill/``), starts a local ``dask.distributed``
cluster of ``--dask-workers`` worker processes (nannies, one thread each) on 127.0.0.1,
then alternates, ``--rounds`` times, the local backfill (``workers`` threads in this
process) and the backfill on the cluster (``get_historical_features(..., cluster=client)``).
It checks that both give the same frame (bit for bit) and prints events/s (log records
replayed per second of wall time) of each and the cluster's overhead: its median time over
the local median, minus one. Starting the cluster is not timed (the API assumes one runs);
the first cluster round also loads the definitions on each worker and is reported apart.
CPU seconds are counted too (this process, and the worker processes through
``client.run``): on a machine shared with other jobs the wall times of two runs vary far
more than their CPU time.

Usage (from the repo root)::

    .venv/bin/python benchmarks/backfill_dask.py --quick
    .venv/bin/python benchmarks/backfill_dask.py --events 1000000 --entities 10000 --labels 100000
    .venv/bin/python benchmarks/backfill_dask.py           # 10M events, 100k entities, 1M labels
    .venv/bin/python benchmarks/backfill_dask.py --rounds 5 --exchange-too  # + the exchange-only path
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import backfill as bench  # noqa: E402  (benchmarks/backfill.py: data, features, cache)

RESULTS_JSON = bench.OUT / "backfill_dask.json"


def _process_cpu_s() -> float:
    """User + system CPU seconds of the calling process (its threads included)."""
    t = os.times()
    return t.user + t.system


def _frames_equal(a: Any, b: Any) -> bool:
    import numpy as np

    if list(a.columns) != list(b.columns):
        return False
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype != y.dtype:
            return False
        if x.dtype.kind in "fiub":
            if x.tobytes() != y.tobytes():
                return False
        elif not all(
            (u is v) or (type(u) is type(v) and u == v) for u, v in zip(x, y, strict=True)
        ):
            return False
    return bool(np.array_equal(a.index.to_numpy(), b.index.to_numpy()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="threads of the local backfill (default: CPU count)")  # fmt: skip
    ap.add_argument("--dask-workers", type=int, default=2,
                    help="worker processes of the local Dask cluster")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3, help="local/cluster pairs, alternated")
    ap.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the worker processes, e.g. RAYON_NUM_THREADS=1 "
                         "(the native core's threads per worker)")  # fmt: skip
    ap.add_argument("--exchange-too", action="store_true",
                    help="also time, each round, the cluster run with every view through the "
                         "exchange by entity shard (the path before the partition tasks)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="100k events, 1k entities, 10k labels")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.entities, args.labels = 100_000, 1_000, 10_000

    from distributed import Client, LocalCluster

    from connectors.eventlog import EventLogReader
    from engine import FeatureStore, backfill_dask

    bench.OUT.mkdir(parents=True, exist_ok=True)
    partitions = FeatureStore.from_repo(bench.DEFS).config.kafka_partitions
    p = bench.Params(args.events, args.entities, args.labels, args.days, args.seed, partitions)
    if not (p.folder / "meta.json").exists():
        bench._say("bench", f"generating and importing {p.events:,} events (cached after)")
        bench.phase_generate(p)
    bench._use_log(p.folder)
    store = FeatureStore.from_repo(bench.DEFS)
    labels = bench._load_labels(p)[["customer_id", "event_timestamp"]]
    log = EventLogReader(store.config.event_log_root)
    records = log.count(bench.SOURCE)
    bench._say("bench", f"{records:,} log records in {len(log.partitions(bench.SOURCE))} "
                        f"partitions, {len(labels):,} labels, {len(bench.FEATURES)} features; "
                        f"local: {args.workers} threads; Dask: {args.dask_workers} worker "
                        "processes x 1 thread")  # fmt: skip

    cpu: dict[str, list[float]] = {"local": [], "dask": [], "exchange": []}

    def cluster_cpu_s(client: Any) -> float:
        """CPU seconds of the worker processes (this process holds the client, the scheduler
        and the nannies, counted by ``_process_cpu_s``)."""
        return float(sum(client.run(_process_cpu_s).values()))

    def backfill(cluster: Any, exchange: bool = False) -> tuple[float, Any]:
        backfill_dask._PARTITION_TASKS = not exchange
        c0 = _process_cpu_s() + (cluster_cpu_s(cluster) if cluster else 0.0)
        t0 = time.perf_counter()
        out = store.get_historical_features(labels, bench.FEATURES, workers=args.workers,
                                            cluster=cluster)  # fmt: skip
        elapsed = time.perf_counter() - t0
        c1 = _process_cpu_s() + (cluster_cpu_s(cluster) if cluster else 0.0)
        cpu["exchange" if exchange else "dask" if cluster else "local"].append(c1 - c0)
        backfill_dask._PARTITION_TASKS = True
        return elapsed, out

    local_s: list[float] = []
    dask_s: list[float] = []
    exchange_s: list[float] = []
    with (
        LocalCluster(
            n_workers=args.dask_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            env=dict(kv.split("=", 1) for kv in args.worker_env),
        ) as cluster,  # fmt: skip
        Client(cluster) as client,
    ):
        first, reference = backfill(client)
        bench._say("dask", f"first round (loads the definitions on each worker): {first:.2f} s")
        if args.exchange_too:
            backfill(client, exchange=True)  # its first round: not counted
            cpu["exchange"].clear()
        for r in range(args.rounds):
            s, local = backfill(None)
            local_s.append(s)
            bench._say(
                "local",
                f"round {r + 1}: {s:.2f} s, {records / s:,.0f} events/s, "
                f"{cpu['local'][-1]:.1f} CPU-s",
            )
            s, remote = backfill(client)
            dask_s.append(s)
            bench._say(
                "dask",
                f"round {r + 1}: {s:.2f} s, {records / s:,.0f} events/s, "
                f"{cpu['dask'][-1]:.1f} CPU-s (client, scheduler, workers)",
            )
            exchanged = remote
            if args.exchange_too:
                s, exchanged = backfill(client, exchange=True)
                exchange_s.append(s)
                bench._say(
                    "exchange",
                    f"round {r + 1}: {s:.2f} s, {records / s:,.0f} events/s, "
                    f"{cpu['exchange'][-1]:.1f} CPU-s (every view through the exchange)",
                )
            if r == 0:
                same = (_frames_equal(local, remote) and _frames_equal(local, reference)
                        and _frames_equal(local, exchanged))  # fmt: skip
                bench._say("check", f"cluster frame == local frame, bit for bit: {same}")
                if not same:
                    return 1
        # what the cluster burns doing nothing (heartbeats, monitors, the workers' profiler):
        # part of every run's CPU, in proportion to its wall time
        c0, t0 = _process_cpu_s() + cluster_cpu_s(client), time.perf_counter()
        time.sleep(5)
        at_rest = (_process_cpu_s() + cluster_cpu_s(client) - c0) / (time.perf_counter() - t0)
    lm, dm = statistics.median(local_s), statistics.median(dask_s)
    overhead = dm / lm - 1
    # each round's cluster run against the local run just before it: the load of other jobs
    # drifts between rounds far more than within one
    paired = statistics.median(d / loc for d, loc in zip(dask_s, local_s, strict=True)) - 1
    lc, dc = statistics.median(cpu["local"]), statistics.median(cpu["dask"][1:])
    cpu_overhead = dc / lc - 1
    result = {
        "params": p.key,
        "records": records,
        "labels": len(labels),
        "local_threads": args.workers,
        "dask_workers": args.dask_workers,
        "worker_env": args.worker_env,
        "local_seconds": local_s,
        "dask_seconds": dask_s,
        "dask_first_round_seconds": first,
        "local_events_per_s": records / lm,
        "dask_events_per_s": records / dm,
        "overhead": overhead,
        "paired_overhead": paired,
        "local_cpu_seconds": cpu["local"],
        "dask_cpu_seconds": cpu["dask"][1:],
        "cpu_overhead": cpu_overhead,
        "dask_at_rest_cpu_per_s": at_rest,
    }
    if exchange_s:
        em, ec = statistics.median(exchange_s), statistics.median(cpu["exchange"])
        result.update(exchange_seconds=exchange_s, exchange_cpu_seconds=cpu["exchange"],
                      exchange_overhead=em / lm - 1, exchange_cpu_overhead=ec / lc - 1)  # fmt: skip
    print()
    print(f"Backfill local vs Dask ({records:,} events, {len(labels):,} labels, "
          f"{len(bench.FEATURES)} features), median of {args.rounds} alternated rounds")  # fmt: skip
    print(f"  local ({args.workers} threads):          {lm:7.2f} s  {records / lm:12,.0f} events/s")
    print(f"  Dask ({args.dask_workers} workers x 1 thread):  {dm:7.2f} s  "
          f"{records / dm:12,.0f} events/s")  # fmt: skip
    print(f"  overhead of the cluster:     {overhead:+.1%} wall time "
          f"(median of the rounds' own ratios: {paired:+.1%})")  # fmt: skip
    print(
        f"  CPU: local {lc:.1f} CPU-s, Dask {dc:.1f} CPU-s (client, scheduler, workers): "
        f"{cpu_overhead:+.1%}"
    )
    print(f"  Dask at rest (no task): {at_rest:.3f} CPU-s per second, "
          f"{at_rest * dm:.1f} CPU-s over the median run")  # fmt: skip
    if exchange_s:
        print(f"  Dask, every view exchanged: {em:7.2f} s  {records / em:12,.0f} events/s, "
              f"{em / lm - 1:+.1%} wall time, {ec:.1f} CPU-s ({ec / lc - 1:+.1%})")  # fmt: skip
    data: dict[str, Any] = {}
    if RESULTS_JSON.exists():
        data = json.loads(RESULTS_JSON.read_text())
    data[p.key] = result
    RESULTS_JSON.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
