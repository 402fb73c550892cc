"""SIGKILL at random moments while events flow (workers restarted each time), then one of two
workers killed for good: its partitions move to the other. Both runtimes.

Size: ``SKEWLESS_FAULT_EVENTS`` events (20,000) and ``SKEWLESS_FAULT_KILLS`` kills (5); the
200k soak is ``benchmarks/soak.py``.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import redis

from engine.online import state_key
from tests.faults.conftest import PrivateServices
from tests.faults.scenario import Run, holds_partitions, kill_loop, wait_assigned
from tests.stream_harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.redis]

EVENTS = int(os.environ.get("SKEWLESS_FAULT_EVENTS", "20000"))
KILLS = int(os.environ.get("SKEWLESS_FAULT_KILLS", "5"))


@pytest.mark.parametrize(
    ("runtime", "merged"), [("kafka", False), ("faust", False), ("kafka", True), ("faust", True)]
)
def test_sigkills_then_one_worker_for_good(
    runtime: str, merged: bool, tmp_path: Path, services: PrivateServices
) -> None:
    """``merged``: merchant_risk (keyed by merchant, the topic by customer) on the
    merge-on-write layout, its entity hashes written by both workers at once."""
    run = Run(tmp_path, bootstrap=services.bootstrap, redis_url=services.redis_url,
              events=EVENTS, seed=101, runtime=runtime, merged=merged)  # fmt: skip
    try:
        run.start_worker()
        run.start_worker()
        wait_until(lambda: all(holds_partitions(w, run.source) for w in run.live()), 120,
                   "two members")  # fmt: skip
        # the last fifth waits until one worker is gone for good: the other must take it all
        run.push_in_background(chunk=250, pause_s=0.6, hold_at=0.8)
        kill_loop(run, KILLS, random.Random(7))
        survivor, victim = run.live()
        wait_assigned(victim, run.source)  # it holds partitions: they must move
        run.kill(victim)  # for good
        run.release.set()
        run.finish()
        whole = f"assigned {run.source} [0, 1, 2, 3]"
        wait_until(lambda: whole in survivor.text(), 60, "the survivor to own every partition")
        assert run.stop_workers() == [0], run.log_tail()
        counts = re.findall(r"\]: (\d+) records", survivor.text())
        assert counts and int(counts[-1]) > 0, survivor.text()[-3000:]
        report = run.check()
    finally:
        run.cleanup()
    print(f"\n{runtime}{' merged' if merged else ''}: {run.kills} SIGKILLs survived, {report}")
    assert run.kills == KILLS + 1
    assert not report.problems(), report.problems()
    if merged:  # one tile set per merchant: only slot 0 fields in its hash
        view = run.store.plan.views["merchant_risk"]
        assert view.merged
        client = redis.Redis.from_url(services.redis_url)
        try:
            merchant = run.events.valid[0]["merchant_id"]
            names = [n.decode() for n in client.hkeys(state_key(view, (merchant,)))]
        finally:
            client.close()
        assert names and all(n.split(":")[1] == "0" for n in names), names
