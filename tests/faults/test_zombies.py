"""A real zombie worker, both runtimes: while events flow, a worker is SIGSTOPped for longer than
the group's session timeout (10 s) — in a wave of events, once a thread of it runs: a batch in
hand — the group gives its partitions to the other worker, and at a random moment, in another
wave once the other worker is busy with them, it is SIGCONTed, still believing it owns them
(``zombie_loop``). 3 rounds per runtime here; 20 in the ``slow`` soak version (issue 11).
Afterwards:

(a) no (partition, offset) in two log files: every file of every partition folder is read on
    its own after one ``compact_log`` (where fenced leftovers go), and ``EventLogReader.read``
    returns each valid offset once, in order, nothing else;
(b) ``Run.check``: 0 records missing, online == processing-time replay of the log ==
    the undisturbed run for every entity, every dead letter there;
(c) every worker consuming: after each SIGCONT the stopped worker is assigned partitions again
    and each partition is held by one worker, and within 30 s the group commits every partition
    past the end offsets it had then while events still flow (a paused partition never does);
    at the end the group commits the end of the topic;
(d) online state rebuilt at most once per hand-over (two per round: away and back).

Size: ``SKEWLESS_FAULT_EVENTS`` (20,000) events and ``SKEWLESS_ZOMBIE_ROUNDS`` (3) rounds;
the slow version ``SKEWLESS_ZOMBIE_SOAK_EVENTS`` (120,000) and 20 rounds; 2 x 2,000 events
per round go in the waves, the rest flows steadily.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.conftest import PrivateServices
from tests.faults.scenario import (
    LOST_STATE,
    Run,
    StopRound,
    ZombieReport,
    check_zombies,
    holds_partitions,
    zombie_loop,
)
from tests.stream_harness import lag, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.redis]

EVENTS = int(os.environ.get("SKEWLESS_FAULT_EVENTS", "20000"))
ROUNDS = int(os.environ.get("SKEWLESS_ZOMBIE_ROUNDS", "3"))
SOAK_EVENTS = int(os.environ.get("SKEWLESS_ZOMBIE_SOAK_EVENTS", "120000"))
SOAK_ROUNDS = 20
WAVE_EVENTS = 2000  # pushed back to back at each SIGSTOP and each SIGCONT: batches in hand
ROUND_S = 28.0  # a first guess of one round: 12-20 s stopped, the rejoin, the catch-up
TAIL_S = 45.0  # events keep flowing this long after the expected end of the rounds (the
# last catch-up must be measured while they flow); after the last round the rest goes at once
PAUSE_S = 0.3  # between pushed chunks: a steady flow, so a worker often has a batch in hand
FINISH_S = 120.0  # every event pushed → the end of the topic committed
# a bound, not a target: a stalled partition never catches up; a slow machine may take long
CATCH_UP_S = 60.0


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_zombie_rounds(runtime: str, tmp_path: Path, services: PrivateServices) -> None:
    """merchant_risk on the per-partition layout (``online.merge_rekeyed_views: false``)."""
    zombie_run(runtime, tmp_path, services, rounds=ROUNDS, events=EVENTS, seed=111, merged=False)


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_zombie_rounds_merged(runtime: str, tmp_path: Path, services: PrivateServices) -> None:
    """The same on the merge-on-write layout (the default): a zombie of one partition and
    the live workers of the others write the same merged merchant hashes."""
    zombie_run(runtime, tmp_path, services, rounds=ROUNDS, events=EVENTS, seed=112, merged=True)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_zombie_soak(runtime: str, tmp_path: Path, services: PrivateServices) -> None:
    zombie_run(runtime, tmp_path, services, rounds=SOAK_ROUNDS, events=SOAK_EVENTS, seed=2011)


def zombie_run(
    runtime: str,
    tmp_path: Path,
    services: PrivateServices,
    *,
    rounds: int,
    events: int,
    seed: int,
    merged: bool = True,
) -> None:
    started = time.monotonic()
    run = Run(tmp_path, bootstrap=services.bootstrap, redis_url=services.redis_url,
              events=events, seed=seed, runtime=runtime, merged=merged)  # fmt: skip
    failures: list[str] = []
    stop_rounds: list[StopRound] = []
    try:
        run.start_worker()
        run.start_worker()
        wait_until(lambda: all(holds_partitions(w, run.source) for w in run.live()), 120,
                   "two members")  # fmt: skip
        expected_s = rounds * ROUND_S + TAIL_S
        run.push_until = time.monotonic() + expected_s  # zombie_loop moves it as rounds go
        run.push_reserve = 2 * rounds * WAVE_EVENTS  # the waves' events; the rest flows steadily
        steady = events - run.push_reserve
        assert steady > events // 10, f"{events} events are too few for {rounds} rounds"
        run.push_in_background(chunk=max(20, int(steady * PAUSE_S / expected_s)), pause_s=PAUSE_S)
        stop_rounds = zombie_loop(
            run, rounds, random.Random(seed), wave_events=WAVE_EVENTS, catch_up_s=CATCH_UP_S,
            keep_flowing_s=TAIL_S,
            on_round=lambda r: print(f"\n{runtime} {r.line()}", flush=True),
        )  # fmt: skip
        wait_until(lambda: not run.flowing(), expected_s + 600, "every event pushed")
        try:
            run.finish(timeout_s=FINISH_S)
        except AssertionError as exc:
            failures.append(
                f"(c) every event pushed, the group did not commit the end of the topic within "
                f"{FINISH_S:.0f} s: {exc}; lag now {lag(run.bootstrap, run.group, run.source)}"
            )
        codes = _stop_workers(run)
        if any(code != 0 for code in codes):
            failures.append(f"workers did not stop cleanly on SIGTERM: exit codes {codes}")
        zombies = check_zombies(run, stop_rounds, catch_up_s=CATCH_UP_S)
        report = run.check()
    finally:
        run.cleanup()
    failures += zombies.problems() + [f"(b) {p}" for p in report.problems()]
    print(
        f"\n{runtime}: {zombies.summary()}; {len(run.workers)} worker processes; {report}; "
        f"{time.monotonic() - started:.0f}s"
    )
    assert not failures, _failure(runtime, failures, zombies, run)


def _stop_workers(run: Run) -> list[int | str]:
    """SIGTERM every live worker and wait for each (a hung one is killed and reported)."""
    codes: list[int | str] = []
    for w in run.live():
        try:
            codes.append(w.terminate(120))
        except subprocess.TimeoutExpired:
            w.kill()
            codes.append(f"{w.log_path.name} still running 120 s after SIGTERM (killed)")
    return codes


def _failure(runtime: str, failures: list[str], zombies: ZombieReport, run: Run) -> str:
    """Which checks failed and how, every round, and a digest and the tail of each worker log."""
    digest = []
    for w in run.workers:
        text = w.text()
        counts = {
            "lost-state lines": text.count(LOST_STATE),
            "rebuilds": text.count("rebuilding partition"),
            "failed batches": text.count("failed, attempt"),
            "write conflicts": text.count("OnlineWriteConflict"),
            "assigned": text.count(f"assigned {run.source} ["),
            "revoked": text.count(f"revoked {run.source} ["),
            "lost": text.count(f"lost {run.source} ["),
        }
        digest.append(f"{w.log_path.name} (exit {w.proc.poll()}): {counts}")
    return "\n".join(
        [f"{runtime}: {len(failures)} zombie check(s) failed:", *failures, "",
         zombies.summary(), *(r.line() for r in zombies.rounds), "", *digest, "",
         run.log_tail(3000)]
    )  # fmt: skip
