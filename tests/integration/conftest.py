"""Integration fixtures: a real redis-server on 127.0.0.1:6379 (started once if it is down).

Tests use database 15 only and flush it before and after each test. Without Redis a test
skips with the reason locally, and fails under ``CI=true`` (CONVENTIONS: never a silent skip).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.stream_harness import cluster_nodes, flushed_redis_db, raw_redis

REPO = Path(__file__).resolve().parents[2]
REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("SKEWLESS_REDIS_PORT", "6379"))
TEST_DB = 15
TEST_REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_DB}"


CLUSTER_NODES = cluster_nodes()  # SKEWLESS_REDIS_CLUSTER_NODES: the Redis Cluster pass
if CLUSTER_NODES:
    REDIS_HOST, _, _port = CLUSTER_NODES[0].rpartition(":")
    REDIS_PORT = int(_port)
    TEST_REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def _cluster_ok() -> bool:
    try:
        client = raw_redis(TEST_REDIS_URL)
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
        return False
    try:
        info = client.cluster_info()
        return bool(info.get("cluster_state") in ("ok", b"ok"))
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
        return False
    finally:
        client.close()


def _redis_answers() -> bool:
    if CLUSTER_NODES:
        return _cluster_ok()
    client = redis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1, socket_timeout=2
    )
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_service() -> str:
    """The URL of the test database on a Redis that answers PING (started once if needed).

    In the Redis Cluster pass (``SKEWLESS_REDIS_CLUSTER_NODES``) the cluster's database 0,
    and ``SKEWLESS_REDIS_CLUSTER``/``SKEWLESS_REDIS_NODES`` are set for the whole session, so
    every config the tests load — and every worker they start — uses the cluster."""
    target = "redis-cluster" if CLUSTER_NODES else "redis"
    if CLUSTER_NODES:
        os.environ["SKEWLESS_REDIS_CLUSTER"] = "true"
        os.environ["SKEWLESS_REDIS_NODES"] = ",".join(CLUSTER_NODES)
    if not _redis_answers():
        env = dict(os.environ)
        if CLUSTER_NODES:
            env["SKEWLESS_REDIS_CLUSTER_PORT"] = str(REDIS_PORT)
        try:
            done = subprocess.run(
                ["bash", str(REPO / "scripts" / "services.sh"), "up", target],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            note = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        except (OSError, subprocess.TimeoutExpired) as exc:
            note = [str(exc)]
        if not _redis_answers():
            _unavailable(
                f"no Redis answers on {REDIS_HOST}:{REDIS_PORT} and "
                f"`bash scripts/services.sh up {target}` did not start one ({note[0]})"
            )
    return TEST_REDIS_URL


@pytest.fixture
def redis_url(redis_service: str) -> Iterator[str]:
    """The test database, empty at the start and the end of the test."""
    with flushed_redis_db(redis_service, TEST_DB) as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A raw redis-py client on the (flushed) test database, to look behind the store
    (a ``RedisCluster`` in the cluster pass)."""
    client = raw_redis(redis_url)
    try:
        yield client
    finally:
        client.close()


# -- Kafka (streaming tests) ---------------------------------------------------------------

KAFKA_BOOTSTRAP = f"127.0.0.1:{os.environ.get('SKEWLESS_KAFKA_PORT', '9092')}"
STREAM_DB = 13  # the streaming tests' Redis database (the online-store tests use 15)


def _kafka_answers() -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=3).brokers)
    except KafkaException:
        return False


@pytest.fixture(scope="session")
def kafka_service() -> str:
    """The bootstrap address of a Kafka broker that answers (started once if it is down)."""
    if not _kafka_answers():
        try:
            done = subprocess.run(
                ["bash", str(REPO / "scripts" / "services.sh"), "up", "kafka"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            note = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        except (OSError, subprocess.TimeoutExpired) as exc:
            note = [str(exc)]
        if not _kafka_answers():
            _unavailable(
                f"no Kafka answers on {KAFKA_BOOTSTRAP} and "
                f"`bash scripts/services.sh up kafka` did not start one ({note[0]})"
            )
    return KAFKA_BOOTSTRAP


@pytest.fixture
def stream_redis_url(redis_service: str) -> Iterator[str]:
    """Redis database 13, flushed at the start and the end of the test."""
    with flushed_redis_db(redis_service, STREAM_DB) as url:
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Redis Cluster pass leaves out what only one Redis has; the single-Redis pass leaves
    out what needs the cluster (each with its reason: a skip by design, not for a service)."""
    for item in items:
        if CLUSTER_NODES and item.get_closest_marker("single_redis"):
            item.add_marker(pytest.mark.skip(reason="single Redis only: not in the cluster pass"))
        elif not CLUSTER_NODES and item.get_closest_marker("redis_cluster"):
            item.add_marker(
                pytest.mark.skip(reason="Redis Cluster only: set SKEWLESS_REDIS_CLUSTER_NODES")
            )
