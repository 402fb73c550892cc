"""Redis faults mid-stream, on the private Redis (AOF on): a restart, a FLUSHALL, and a rollback
to an earlier state (what a restart that lost its last writes or a failover to a lagging
replica leaves). The workers back off through the restart with no false alarm, and find the
lost state of the other two, say so loudly, and rebuild it in place from the event log.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.faults.conftest import PrivateServices
from tests.faults.scenario import LOST_STATE, Run
from tests.stream_harness import holds_partitions, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.redis]

EVENTS = int(os.environ.get("SKEWLESS_FAULT_EVENTS", "20000"))

# Every key with its DUMP and remaining TTL, read atomically (a script runs alone).
_SNAPSHOT = """
local out = {}
for _, key in ipairs(redis.call('KEYS', '*')) do
  out[#out + 1] = key
  out[#out + 1] = redis.call('DUMP', key)
  out[#out + 1] = redis.call('PTTL', key)
end
return out
"""


def snapshot(client: redis.Redis) -> list[Any]:
    return list(client.eval(_SNAPSHOT, 0))


def roll_back(client: redis.Redis, snap: list[Any]) -> None:
    """Replace the whole database with ``snap``, atomically."""
    pipe = client.pipeline(transaction=True)
    pipe.flushdb()
    for i in range(0, len(snap), 3):
        key, dump, ttl = snap[i], snap[i + 1], snap[i + 2]
        pipe.restore(key, max(int(ttl), 0), dump, replace=True)
    pipe.execute()


def lost_lines(run: Run) -> int:
    return sum(w.text().count(LOST_STATE) for w in run.workers)


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_redis_restart_flushall_and_rollback(
    runtime: str, tmp_path: Path, services: PrivateServices
) -> None:
    run = Run(tmp_path, bootstrap=services.bootstrap, redis_url=services.redis_url,
              events=EVENTS, seed=202, runtime=runtime)  # fmt: skip
    client = services.client()
    try:
        run.start_worker()
        run.start_worker()
        wait_until(
            lambda: all(holds_partitions(w, run.source) for w in run.live()), 120, "two members"
        )
        run.push_in_background(chunk=500, pause_s=0.3)

        run.wait_pushed(0.2)
        services.services("down", "redis")  # SIGTERM: Redis writes its AOF out and stops
        wait_until(lambda: all("failed, attempt" in w.text() for w in run.live()), 60,
                   "both workers to back off")  # fmt: skip
        services.services("up", "redis")
        run.wait_pushed(0.4)
        wait_until(lambda: int(client.dbsize()) > 0, 60, "writes after the restart")
        assert lost_lines(run) == 0, run.log_tail()  # nothing was lost: no false alarm

        run.wait_pushed(0.5)
        client.flushall()
        wait_until(lambda: lost_lines(run) > 0, 120, "the workers to find the FLUSHALL")
        after_flush = lost_lines(run)

        run.wait_pushed(0.6)
        saved = snapshot(client)
        run.wait_pushed(0.8)
        time.sleep(random.Random(3).uniform(0.2, 1.0))
        roll_back(client, saved)
        wait_until(lambda: lost_lines(run) > after_flush, 120, "the workers to find the rollback")

        run.finish()
        assert run.stop_workers() == [0, 0], run.log_tail()
        report = run.check()
    finally:
        client.close()
        run.cleanup()
    logs = run.logs()
    rebuilt = logs.count("rebuilt partition")
    print(
        f"\n{runtime}: {lost_lines(run)} lost states found, {rebuilt} partition rebuilds, {report}"
    )
    assert rebuilt > 0 and "rebuilding partition" in logs
    assert not report.problems(), report.problems()
