"""The Kafka broker (private, single node) stopped and restarted mid-stream: the workers ride it
out — fetches, commits and dead-letter sends fail meanwhile and are retried — and the result
equals an undisturbed run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.faults.conftest import PrivateServices
from tests.faults.scenario import Run
from tests.stream_harness import holds_partitions, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.redis]

EVENTS = int(os.environ.get("SKEWLESS_FAULT_EVENTS", "20000"))


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_broker_stopped_and_restarted_mid_stream(
    runtime: str, tmp_path: Path, services: PrivateServices
) -> None:
    run = Run(tmp_path, bootstrap=services.bootstrap, redis_url=services.redis_url,
              events=EVENTS, seed=303, runtime=runtime)  # fmt: skip
    try:
        run.start_worker()
        run.start_worker()
        wait_until(
            lambda: all(holds_partitions(w, run.source) for w in run.live()), 120, "two members"
        )
        run.push_in_background(chunk=1000, pause_s=0.2)
        run.wait_pushed(0.4)
        run.gate.clear()  # the pusher waits for the broker
        before, _ = run.committed_and_logged()
        services.services("down", "kafka")
        time.sleep(3)
        services.services("up", "kafka")
        run.gate.set()
        run.finish()
        after, _ = run.committed_and_logged()
        assert sum(after.values()) > sum(max(o, 0) for o in before.values())
        assert len(run.live()) == 2, run.log_tail()  # no worker died of it
        assert run.stop_workers() == [0, 0], run.log_tail()
        report = run.check()
    finally:
        run.gate.set()
        run.cleanup()
    print(f"\n{runtime}: broker restarted, {report}")
    assert not report.problems(), report.problems()
