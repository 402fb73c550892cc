"""A Redis Cluster master SIGKILLed under a writing worker (docs/reliability.md#redis-cluster).

The cluster pass only (``SKEWLESS_REDIS_CLUSTER_NODES``; ``scripts/services.sh up
redis-cluster`` with a small ``cluster-node-timeout``). To make the failover lose
acknowledged writes for sure — not only when replication happens to lag — the master's
replica is frozen (SIGSTOP) and the master drops its link (``CLIENT KILL TYPE replica``: a
frozen replica cannot reconnect); once the worker has committed rounds only the master
holds, the master is SIGKILLed and the replica continued (SIGCONT): it is promoted
without those rounds. The
worker backs off while the slots have no master, resumes, finds the lost state through the
watermark copy on the promoted node, rebuilds the partitions from the event log, and
afterwards every entity's online values equal the processing-time replay, bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.stream.kafka_runtime import WorkerOptions
from tests.integration.test_kafka_runtime import (
    CUSTOMERS,
    SPEND,
    SPEND_JSON,
    Repo,
    check_log_exactly_once,
    check_online_equals_backfill,
    rows,
)
from tests.stream_harness import (
    WorkerThread,
    cluster_nodes,
    committed,
    end_offsets,
    raw_redis,
    wait_caught_up,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.redis_cluster]


@pytest.fixture(autouse=True)
def _drop_topics(kafka_service: str) -> Iterator[None]:
    from tests.integration import test_kafka_runtime

    test_kafka_runtime._REPOS.clear()
    yield
    from tests.stream_harness import delete_topics

    for repo in test_kafka_runtime._REPOS:
        delete_topics(kafka_service, repo.topics)
    test_kafka_runtime._REPOS.clear()


def _node(address: str) -> redis.Redis:
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port), socket_timeout=5, socket_connect_timeout=2)


def _pid(address: str) -> int:
    client = _node(address)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _masters_and_replicas(client: Any) -> list[tuple[str, str]]:
    """(master address, one replica address) for every master that serves slots."""
    nodes = client.cluster_nodes()
    masters = {
        info["node_id"]: addr.split("@")[0]
        for addr, info in nodes.items()
        if "master" in info["flags"] and info["slots"] and "fail" not in info["flags"]
    }
    pairs: list[tuple[str, str]] = []
    for addr, info in nodes.items():
        if "slave" in info["flags"] and info["master_id"] in masters and info["connected"]:
            pairs.append((masters.pop(info["master_id"]), addr.split("@")[0]))
    return sorted(pairs)


def _restart_argv(address: str) -> list[str]:
    """A redis-server command line that starts the node at ``address`` again as it runs now
    (its nodes.conf makes it rejoin the cluster; it comes back as a replica)."""
    client = _node(address)
    try:
        conf = {str(k): str(v) for k, v in client.config_get("*").items()}
    finally:
        client.close()
    host, _, port = address.rpartition(":")
    argv = ["redis-server", "--bind", host, "--port", port, "--daemonize", "yes"]
    argv += ["--cluster-enabled", "yes", "--save", ""]
    for name in ("cluster-config-file", "cluster-node-timeout", "dir", "appendonly",
                 "logfile", "pidfile"):  # fmt: skip
        if conf.get(name):
            argv += [f"--{name}", conf[name]]
    return argv


def _role(address: str) -> str:
    client = _node(address)
    try:
        return str(client.execute_command("ROLE")[0], "ascii")
    except redis.exceptions.RedisError:
        return "down"
    finally:
        client.close()


def _cluster_ok(address: str) -> bool:
    client = _node(address)
    try:
        return client.cluster("INFO").get("cluster_state") == "ok"
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def test_a_master_killed_under_a_writing_worker_loses_nothing_for_good(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    assert cluster_nodes(), "the cluster pass sets SKEWLESS_REDIS_CLUSTER_NODES"
    client = raw_redis(stream_redis_url)
    pairs = _masters_and_replicas(client)
    assert pairs, "a master with a connected replica (3 masters + 3 replicas expected)"
    master, replica = pairs[0]
    master_pid, replica_pid = _pid(master), _pid(replica)
    master_argv = _restart_argv(master)  # to start the node again afterwards

    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    repo.store.apply()
    now = int(time.time() * 1000)
    options = WorkerOptions(backoff_initial_s=0.05, backoff_max_s=0.5)
    stop_pushing = threading.Event()
    pushed: list[int] = []

    def pusher() -> None:  # a round every 0.1 s: the worker is writing when the master dies
        seed = 100
        while not stop_pushing.is_set():
            _push(repo, rows(60, seed, now))
            pushed.append(seed)
            seed += 1
            time.sleep(0.1)

    feeding = threading.Thread(target=pusher, daemon=True)
    try:
        with WorkerThread(repo.store, options) as worker:
            _push(repo, rows(300, 31, now))  # before: the replica has everything
            wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 120)
            feeding.start()
            # freeze the replica, then have the master drop its link (a frozen replica cannot
            # reconnect): from here on the master acknowledges writes the replica never
            # receives. (Validity factor 0: the replica may take over however long it was
            # cut off.)
            _node(replica).config_set("cluster-replica-validity-factor", 0)
            os.kill(replica_pid, signal.SIGSTOP)
            try:
                _node(master).execute_command("CLIENT", "KILL", "TYPE", "replica")
                wait_until(lambda: _replicas_of(master) == 0, 30, f"{master} without replica")
                seen = len(pushed)
                wait_until(lambda: len(pushed) >= seen + 5, 60, "rounds the replica misses")
                ends = {t: end_offsets(kafka_service, t) for t in (repo.avro, repo.json)}
                wait_until(
                    lambda: _committed_past(kafka_service, repo.group, ends),
                    120,
                    "the worker's writes of the rounds the replica misses",
                )
                os.kill(master_pid, signal.SIGKILL)  # with rounds only it acknowledged
            finally:
                os.kill(replica_pid, signal.SIGCONT)
            wait_until(lambda: _role(replica) == "master", 60, f"{replica} promoted")
            wait_until(lambda: _cluster_ok(replica), 60, "cluster_state:ok after the failover")
            time.sleep(1.0)  # rounds written after the failover: the loss is found
            stop_pushing.set()
            feeding.join(60)
            wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 180)
            worker.stop()
        stats = worker.worker.stats
        assert stats.rebuilds >= 1, stats.as_dict()
        check_log_exactly_once(repo, {})
        t = int(time.time() * 1000)
        check_online_equals_backfill(repo, t, SPEND + SPEND_JSON)
        print(
            f"\nfailover: master {master} SIGKILLed, replica {replica} promoted; "
            f"{stats.records} records, worker retries {stats.retries}, "
            f"(view, partition) states rebuilt {stats.rebuilds}; {len(CUSTOMERS)} entities x "
            f"{len(SPEND + SPEND_JSON)} features equal the processing-time replay "
            "(0 mismatches)"
        )
    finally:
        stop_pushing.set()
        subprocess.run(master_argv, check=False, timeout=30, stdout=subprocess.DEVNULL)
        client.close()
        for address in (replica, master):
            with contextlib.suppress(redis.exceptions.RedisError):
                _node(address).config_set("cluster-replica-validity-factor", 10)  # the default
        wait_until(lambda: _role(master) == "slave", 60, f"{master} back as a replica")
        wait_until(lambda: _loaded(master), 60, f"{master} loaded its data")
        wait_until(lambda: _cluster_ok(master), 60, "cluster_state:ok with the node back")


def _committed_past(bootstrap: str, group: str, ends: dict[str, dict[int, int]]) -> bool:
    """Whether the group committed every partition of every topic up to ``ends``."""
    for topic, by_partition in ends.items():
        done = committed(bootstrap, group, topic)
        if any(done.get(p, -1) < end for p, end in by_partition.items()):
            return False
    return True


def _replicas_of(address: str) -> int:
    client = _node(address)
    try:
        return int(client.info("replication")["connected_slaves"])
    finally:
        client.close()


def _loaded(address: str) -> bool:
    client = _node(address)
    try:
        info = client.info("persistence")
        return info.get("loading") == 0 and _role(address) == "slave"
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def _push(repo: Repo, chunk: list[dict[str, Any]]) -> None:
    import pandas as pd

    assert repo.store.push(repo.avro, chunk) == len(chunk)
    assert repo.store.push(repo.json, pd.DataFrame(chunk)) == len(chunk)
