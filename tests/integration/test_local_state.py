"""The worker's local state tier (``--local-state``) against the real broker and Redis: a
bounded cache spills to RocksDB and loads back, a restarted worker starts warm (fewer Redis
loads, same online state), and after another worker wrote the partitions its local entries
are refused, never served stale."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from engine.stream.kafka_runtime import WorkerOptions
from tests.integration.test_kafka_runtime import (  # noqa: F401 - _drop_topics: autouse
    SPEND,
    SPEND_JSON,
    Repo,
    _drop_topics,
    check_log_exactly_once,
    check_online_equals_backfill,
    publish,
)
from tests.stream_harness import WorkerThread, wait_caught_up

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def now_ms() -> int:
    return int(time.time() * 1000)


def run_worker(repo: Repo, options: WorkerOptions) -> Counter[str]:
    """One worker until it caught up; the local-tier counts of its two sources, summed."""
    with WorkerThread(repo.store, options) as worker:
        wait_caught_up(repo.bootstrap, repo.group, [repo.avro, repo.json], 120)
        worker.stop()
    assert worker.worker.stats.retries == 0
    counts: Counter[str] = Counter()
    for wiring in worker.worker.sources.values():
        counts.update(wiring.processor.local_counts)
    return counts


def test_local_state_bounds_the_cache_restarts_warm_and_never_serves_stale(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    repo.store.apply()
    bounded = WorkerOptions(batch_max=150, cache_entities=8, local_state=True)

    publish(repo, 900, seed=21)  # 40 customers in 2 sources, 8 states cached per source
    first = run_worker(repo, bounded)
    assert first["spilled"] > 40 and first["hits"] >= 40 and first["stale"] == 0
    check_online_equals_backfill(repo, now_ms(), SPEND + SPEND_JSON)
    assert (repo.store.config.state_dir / "worker" / repo.group / repo.avro / "0").is_dir()

    publish(repo, 300, seed=22)  # a restart: every state is in the local store
    warm = run_worker(repo, WorkerOptions(batch_max=1000, cache_entities=1000, local_state=True))
    assert warm["hits"] >= 60 and warm["stale"] == 0
    assert warm["loaded"] < warm["hits"] / 4  # Redis loaded only the entities never seen
    check_online_equals_backfill(repo, now_ms(), SPEND + SPEND_JSON)

    publish(repo, 300, seed=23)  # another worker (no local state) writes every partition
    run_worker(repo, WorkerOptions(batch_max=1000))
    publish(repo, 300, seed=24)  # back: what it holds locally is behind Redis, so refused
    back = run_worker(repo, bounded)
    assert back["stale"] >= 40 and back["hits"] > 0  # hits: spilled again during this run
    check_log_exactly_once(repo, {})
    check_online_equals_backfill(repo, now_ms(), SPEND + SPEND_JSON)
