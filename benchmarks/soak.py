"""Fault soak: 200k events through two workers per runtime, SIGKILLed at random moments.

For each runtime (kafka, faust): a private Kafka and Redis (``scripts/services.sh`` on their own
ports, purged at the end), the payments example on a fresh topic, two ``skewless worker``
processes; while the events flow, ``--kills`` times a random worker is SIGKILLed at a random
moment once it holds partitions and a replacement is started at once; then one of the two is
killed for good and the other takes its partitions and the last events. Once everything is
committed the run is compared with an undisturbed one (``tests/faults/scenario.py``): every
entity's online values, the log's (partition, offset) set, the dead-letter topic.

    .venv/bin/python benchmarks/soak.py                    # 200k events, 5 kills, both runtimes
    .venv/bin/python benchmarks/soak.py --events 50000 --runtimes kafka

Prints, per runtime: kills survived, events, log records (duplicates, missing), dead letters,
values compared and mismatches; writes ``benchmarks/out/soak.json``; exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.conftest import PrivateServices
from tests.faults.scenario import Run, holds_partitions, kill_loop, wait_assigned
from tests.stream_harness import wait_until

OUT = Path(__file__).resolve().parent / "out" / "soak.json"


def soak(
    services: PrivateServices, root: Path, runtime: str, events: int, kills: int, seed: int
) -> dict[str, Any]:
    started = time.monotonic()
    run = Run(root / runtime, bootstrap=services.bootstrap, redis_url=services.redis_url,
              events=events, seed=seed, runtime=runtime, batch_max=5000)  # fmt: skip
    try:
        run.start_worker()
        run.start_worker()
        wait_until(lambda: all(holds_partitions(w, run.source) for w in run.live()), 180,
                   "two members")  # fmt: skip
        # paced so that events still flow during the kills; the last tenth waits for the
        # worker killed for good, so the survivor has to take over its partitions
        chunk = max(500, events // 100)
        run.push_in_background(chunk=chunk, pause_s=0.5, hold_at=0.9)
        kill_loop(run, kills, random.Random(seed))
        survivor, victim = run.live()
        wait_assigned(victim, run.source, 180)  # it holds partitions: they must move
        run.kill(victim)
        run.release.set()
        run.finish(timeout_s=1800)
        whole = f"assigned {run.source} [0, 1, 2, 3]"
        wait_until(lambda: whole in survivor.text(), 120, "the survivor to own every partition")
        codes = run.stop_workers()
        flowed = time.monotonic() - started
        report = run.check()
    finally:
        run.cleanup()
    problems = report.problems()
    if codes != [0]:
        problems.append(f"survivor exit codes {codes}")
    return {
        "runtime": runtime,
        "kills_survived": run.kills,
        "events_valid": report.valid,
        "events_invalid": report.invalid,
        "log_records": report.logged,
        "log_duplicates": report.duplicates,
        "log_missing": report.missing,
        "log_extra": report.extra,
        "dead_letters": report.dead_letters,
        "dead_letters_missing": report.dead_missing,
        "dead_letters_extra": report.dead_extra,
        "entities": report.entities,
        "values_compared": report.values,
        "online_mismatches": report.online_mismatches,
        "log_backfill_mismatches": report.log_mismatches,
        "worker_processes": len(run.workers),
        "seconds_until_caught_up": round(flowed, 1),
        "seconds_total": round(time.monotonic() - started, 1),
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--runtimes", default="kafka,faust")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--kafka-port", type=int, default=19192)
    parser.add_argument("--controller-port", type=int, default=19193)
    parser.add_argument("--redis-port", type=int, default=16480)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="skewless-soak-"))
    services = PrivateServices(
        folder=root / "services",
        kafka_port=args.kafka_port,
        controller_port=args.controller_port,
        redis_port=args.redis_port,
    )
    results = []
    try:
        services.services("up")
        for runtime in args.runtimes.split(","):
            client = services.client()
            client.flushall()
            client.close()
            result = soak(services, root, runtime, args.events, args.kills, args.seed)
            results.append(result)
            print(
                f"{runtime}: {result['kills_survived']} SIGKILLs survived "
                f"({result['worker_processes']} worker processes); "
                f"{result['events_valid']} valid + {result['events_invalid']} invalid events; "
                f"log {result['log_records']} records ({result['log_duplicates']} duplicate, "
                f"{result['log_missing']} missing, {result['log_extra']} extra); "
                f"dead letters {result['dead_letters']} ({result['dead_letters_missing']} "
                f"missing, {result['dead_letters_extra']} extra); {result['values_compared']} "
                f"values of {result['entities']} entities compared: "
                f"{result['online_mismatches']} online and {result['log_backfill_mismatches']} "
                f"log-backfill mismatches; caught up in {result['seconds_until_caught_up']}s",
                flush=True,
            )
            for problem in result["problems"]:
                print(f"  PROBLEM: {problem}", flush=True)
    finally:
        services.services("down", "--purge")
    failed = any(r["problems"] for r in results)
    if failed:
        print(f"worker logs and repos kept in {root}", flush=True)
    else:
        shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "events": args.events,
                "kills": args.kills,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
