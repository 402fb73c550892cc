"""Rebuild-online benchmark: refill the example definitions' online state from a 1M-event log.

``skewless rebuild-online`` replays the event log through the native core the workers run
(``OnlineCore`` in replay mode) and writes every entity's tiles to Redis. This script
imports ``--events`` generated payments (the example source's schema, ``engine.demo_data``)
into a fresh log, then rebuilds each of the four example views into Redis database
``--db`` and reports entities written per second and log records replayed per second,
beside Feast's ``materialize`` figure the issue quotes for this machine (15.6k entities/s;
Feast is not run here).

Usage (from the repo root, Redis on 127.0.0.1:6379)::

    .venv/bin/python benchmarks/rebuild.py                 # 1M events, 100k customers
    .venv/bin/python benchmarks/rebuild.py --events 200000 # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from engine import FeatureStore  # noqa: E402
from engine.demo_data import payments  # noqa: E402

FEAST_MATERIALIZE_ENTITIES_PER_S = 15_600  # issue 10: measured on this machine kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--merchants", type=int, default=5_000)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--db", type=int, default=8, help="Redis database to fill (flushed)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="skewless-rebuild-"))
    try:
        repo = work / "repo"
        shutil.copytree(REPO / "definitions", repo)
        (repo / "skewless.yaml").write_text(
            f"project:\n  name: rebuild_bench\nkafka:\n  partitions: 4\n"
            f"redis:\n  url: redis://127.0.0.1:6379/{args.db}\n"
            f"event_log:\n  root: {work / 'log'}\n"
        )
        now = time.time_ns() // 1_000_000
        start = now - int(args.days * 86_400_000)
        frame = payments(args.events, customers=args.customers, merchants=args.merchants,
                         days=args.days, seed=args.seed, start_ms=start)  # fmt: skip
        store = FeatureStore.from_repo(repo)
        t0 = time.perf_counter()
        store.import_events("transactions", frame)
        imported = time.perf_counter() - t0
        print(f"[rebuild] imported {len(frame):,} events in {imported:.1f} s", flush=True)
        import redis

        redis.Redis.from_url(f"redis://127.0.0.1:6379/{args.db}").flushdb()
        rows = []
        total_entities = 0
        total_seconds = 0.0
        total_cpu = 0.0
        for name in sorted(store.plan.views):
            c0, w0 = time.process_time(), time.perf_counter()
            outcome = store.rebuild_online(name)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            written = outcome.result.entities_written
            total_entities += written
            total_seconds += wall
            total_cpu += cpu
            rows.append((name, outcome.result.records, written, wall, cpu))
            print(f"[rebuild] {name}: {written:,} entities from {outcome.result.records:,} "
                  f"records in {wall:.2f} s ({written / wall:,.0f} entities/s, "
                  f"{outcome.result.records / wall:,.0f} records/s)", flush=True)  # fmt: skip
        rate = total_entities / total_seconds
        print()
        print(f"Rebuild-online — {args.events:,} events, {len(store.plan.views)} views "
              f"(the example definitions)")  # fmt: skip
        print(f"  {'view':<20} {'records':>10} {'entities':>10} {'wall s':>8} {'entities/s':>12}")
        for name, records, written, wall, _ in rows:
            print(
                f"  {name:<20} {records:>10,} {written:>10,} {wall:>8.2f} {written / wall:>12,.0f}"
            )
        print(f"  all views: {total_entities:,} entities in {total_seconds:.2f} s wall "
              f"({total_cpu:.2f} CPU-s): {rate:,.0f} entities/s")  # fmt: skip
        ratio = rate / FEAST_MATERIALIZE_ENTITIES_PER_S
        print(f"  vs Feast materialize (15.6k entities/s, quoted): {ratio:.1f}x   "
              f"target >= 5x: {'PASS' if ratio >= 5 else 'FAIL'}")  # fmt: skip
        out = REPO / "benchmarks" / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / "rebuild.json").write_text(json.dumps({
            "events": args.events, "views": [
                {"view": n, "records": r, "entities": w, "wall_s": s, "cpu_s": c}
                for n, r, w, s, c in rows],
            "entities_per_s": rate, "feast_ratio": ratio}, indent=2))  # fmt: skip
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.environ.pop("SKEWLESS_EVENT_LOG", None)


if __name__ == "__main__":
    sys.exit(main())
