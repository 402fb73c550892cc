"""Fault soak: 200k events through two workers per runtime, SIGKILLed and SIGSTOPped at random moments.

For each runtime (kafka, faust): a private Kafka and Redis (``scripts/services.sh`` on their own
ports, purged at the end), the payments example on a fresh topic, two ``skewless worker``
processes; while the events flow, ``--kills`` times a random worker is SIGKILLed at a random
moment once it holds partitions and a replacement is started at once; then ``--stops`` times a
random worker is SIGSTOPped for 12-20 s, past the group's session timeout, and SIGCONTed once
the other took its partitions over: a zombie that wakes up mid-batch believing it still owns
them (``zombie_loop``); then one of the two is killed for good and the other takes its
partitions and the last events. Once everything is committed the run is compared with an
undisturbed one (``tests/faults/scenario.py``): every entity's online values, the log's
(partition, offset) set, the dead-letter topic; and for the zombie rounds (``check_zombies``):
every file of the log read on its own after one ``compact_log`` (no offset in two files), the
reader's offsets, every partition committed past its end offsets within 30 s of each round
while events flow, and how often the workers found their online state lost.

    .venv/bin/python benchmarks/soak.py                    # 200k events, 5 kills, 5 stops, both
    .venv/bin/python benchmarks/soak.py --events 50000 --runtimes kafka --stops 20
    .venv/bin/python benchmarks/soak.py --stops 0          # the SIGKILL rounds only

Prints, per runtime: kills and stops survived, events, log records (duplicates, missing), dead
letters, values compared and mismatches, and for the stop rounds takeover and catch-up times,
offsets in two log files and lost-state alarms; writes ``benchmarks/out/soak.json``; exits 1
on any problem.
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.conftest import PrivateServices
from tests.faults.scenario import (
    Run,
    check_zombies,
    holds_partitions,
    kill_loop,
    wait_assigned,
    zombie_loop,
)
from tests.stream_harness import wait_until

OUT = Path(__file__).resolve().parent / "out" / "soak.json"


STOP_ROUND_S = 28.0  # a first guess of one SIGSTOP round: 12-20 s stopped, rejoin, catch-up
KILL_ROUND_S = 6.0
FLOW_TAIL_S = 30.0  # events keep flowing this long after the expected end of the stop rounds
CATCH_UP_S = 30.0
WAVE_EVENTS = 2000  # pushed back to back at each SIGSTOP and SIGCONT: batches in hand


def soak(
    services: PrivateServices,
    root: Path,
    runtime: str,
    events: int,
    kills: int,
    seed: int,
    stops: int = 0,
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
        if stops:
            # the stop rounds last minutes: spread the events over them in smaller chunks
            # (zombie_loop moves the deadline as the rounds go)
            expected_s = kills * KILL_ROUND_S + stops * STOP_ROUND_S + FLOW_TAIL_S
            run.push_reserve = 2 * stops * WAVE_EVENTS  # the waves at each SIGSTOP and SIGCONT
            chunk = max(100, int((events * 0.9 - run.push_reserve) * 0.5 / expected_s))
            run.push_until = time.monotonic() + expected_s
        run.push_in_background(chunk=chunk, pause_s=0.5, hold_at=0.9)
        kill_loop(run, kills, random.Random(seed))
        stop_rounds = zombie_loop(
            run, stops, random.Random(seed + 1), wave_events=WAVE_EVENTS, catch_up_s=CATCH_UP_S,
            keep_flowing_s=FLOW_TAIL_S,
            on_round=lambda r: print(f"  {runtime} {r.line()}", flush=True),
        )  # fmt: skip
        survivor, victim = run.live()
        wait_assigned(victim, run.source, 180)  # it holds partitions: they must move
        run.kill(victim)
        run.release.set()
        run.finish(timeout_s=1800)
        whole = f"assigned {run.source} [0, 1, 2, 3]"
        wait_until(lambda: whole in survivor.text(), 120, "the survivor to own every partition")
        codes = run.stop_workers()
        flowed = time.monotonic() - started
        zombies = check_zombies(run, stop_rounds, catch_up_s=CATCH_UP_S) if stops else None
        report = run.check()
    finally:
        run.cleanup()
    problems = report.problems()
    if codes != [0]:
        problems.append(f"survivor exit codes {codes}")
    stopped: dict[str, Any] = {"stops_survived": run.stops}
    if zombies is not None:
        problems += zombies.problems()
        takeovers = [r.takeover_s for r in zombies.rounds if r.takeover_s is not None]
        catch_ups = [r.caught_up_s for r in zombies.rounds if r.caught_up_s is not None]
        stopped.update(
            stops_stopped_busy=sum(r.busy for r in zombies.rounds),
            stops_takeover_s=_spread(takeovers),
            stops_caught_up_s=_spread(catch_ups),
            stops_never_caught_up=len(zombies.rounds) - len(catch_ups),
            log_offsets_in_two_files_before_compaction=zombies.log.copies_before,
            log_offsets_disagreeing_before_compaction=zombies.log.disagreeing_before,
            log_offsets_in_two_files=zombies.log.copies_after,
            log_compaction=zombies.log.compaction,
            reader_missing=zombies.log.reader_missing,
            reader_extra=zombies.log.reader_extra,
            lost_state_lines=zombies.lost_lines,
            lost_state_losses=zombies.losses,
            hand_overs=zombies.handovers,
            stop_rounds=[asdict(r) for r in zombies.rounds],
        )
    return {
        "runtime": runtime,
        "kills_survived": run.kills,
        **{k: v for k, v in stopped.items() if k != "stop_rounds"},
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
        **({"stop_rounds": stopped["stop_rounds"]} if "stop_rounds" in stopped else {}),
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    """min / median / max of some seconds, rounded; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return {"min": round(ordered[0], 1), "median": round(ordered[len(ordered) // 2], 1),
            "max": round(ordered[-1], 1)}  # fmt: skip


def _stops_line(result: dict[str, Any]) -> str:
    """The SIGSTOP rounds' part of a runtime's printed line."""
    if not result.get("stop_rounds"):
        return ""

    def span(v: dict[str, float] | None) -> str:
        return "never" if v is None else f"{v['min']}-{v['max']}s (median {v['median']}s)"

    return (
        f"; {result['stops_survived']} SIGSTOPs past the session timeout "
        f"({result['stops_stopped_busy']} caught busy): taken over after "
        f"{span(result['stops_takeover_s'])}, every partition committed past its end after "
        f"{span(result['stops_caught_up_s'])} ({result['stops_never_caught_up']} rounds never); "
        f"offsets in two log files {result['log_offsets_in_two_files_before_compaction']} "
        f"before compaction, {result['log_offsets_in_two_files']} after; online state lost "
        f"{result['lost_state_losses']} times ({result['lost_state_lines']} lines) over "
        f"{result['hand_overs']} hand-overs"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--stops", type=int, default=5,
                        help="SIGSTOP/SIGCONT rounds past the session timeout, after the kills")  # fmt: skip
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
            result = soak(services, root, runtime, args.events, args.kills, args.seed, args.stops)
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
                f"log-backfill mismatches; caught up in {result['seconds_until_caught_up']}s"
                f"{_stops_line(result)}",
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
                "stops": args.stops,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
