"""Kafka or Redis not running: every entry point names the address it tried and how to start it.

"Not running" is a config pointing at a port nothing listens on, so the shared services keep
running for everyone else. Commands run as subprocesses, as a newcomer runs them: the test
sees exactly what reaches the terminal.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.demo import EXAMPLE_DEFINITIONS
from engine.errors import KafkaUnavailable
from engine.store import FeatureStore
from tests.stream_harness import delete_topics, payments_repo, unique

START = "`skewless services up`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    dest = tmp_path / "definitions"
    shutil.copytree(EXAMPLE_DEFINITIONS, dest, ignore=shutil.ignore_patterns(".skewless"))
    return dest


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    return {**env, **overrides}


def _start(repo: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--repo", str(repo), *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout_s: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, err


def test_kafka_down_apply_worker_and_push_name_the_broker_and_how_to_start_it(
    repo: Path, redis_service: str
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = _env(SKEWLESS_KAFKA_BOOTSTRAP=address, SKEWLESS_REDIS_URL=redis_service)
    apply = _start(repo, env, "apply")  # both wait out the client's timeout at once
    worker = _start(repo, env, "worker")
    store = FeatureStore.from_repo(repo, environ=env)
    with pytest.raises(KafkaUnavailable) as info:
        store.push("transactions", [{"transaction_id": "t1", "customer_id": "c1",
                                     "merchant_id": "m1", "amount": 1.0, "currency": "USD",
                                     "country": "US", "card_present": True,
                                     "ts": int(time.time() * 1000)}])  # fmt: skip
    assert f"Kafka at {address}" in str(info.value) and START in str(info.value)
    for name, proc in (("apply", apply), ("worker", worker)):
        code, err = _finish(proc)
        assert code == 1, f"{name}: {err}"
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: Kafka at {address}: listing topics failed"), name
        assert START in last and "bash scripts/services.sh up kafka" in last, name
        assert "Traceback" not in err, name
        # librdkafka's connection failures: none for a one-shot command, a few for a worker
        assert err.count("Connection refused") <= (4 if name == "worker" else 1), err


def test_redis_down_get_names_the_address_and_how_to_start_it(repo: Path) -> None:
    port = free_port()
    env = _env(SKEWLESS_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    code, err = _finish(
        _start(repo, env, "get", "customer_spend:amount_sum_30d", "customer_id=c00001")
    )
    assert code == 1
    assert err.startswith(f"error: Redis at 127.0.0.1:{port}/0 failed")
    assert START in err and err.count("\n") == 1


def test_redis_down_worker_warns_at_start_then_waits_for_it(
    tmp_path: Path, kafka_service: str, redis_service: str
) -> None:
    source = unique("newcomer")
    port = free_port()
    path = payments_repo(tmp_path / "repo", source, project=unique("it"),
                         bootstrap=kafka_service, redis_url=f"redis://127.0.0.1:{port}/5")  # fmt: skip
    store = FeatureStore.from_repo(path, environ={})
    try:
        store.apply()
        worker = _start(path, _env(), "worker")
        seen: list[str] = []
        deadline = time.monotonic() + 60
        assert worker.stderr is not None
        while time.monotonic() < deadline:
            line = worker.stderr.readline()
            seen.append(line)
            if "Redis at" in line or not line:
                break
        warning = seen[-1]
        assert f"Redis at 127.0.0.1:{port}/5 failed (PING)" in warning, "".join(seen)
        assert START in warning and "starting anyway, batches retry" in warning
        while time.monotonic() < deadline and "worker started" not in seen[-1]:
            seen.append(worker.stderr.readline())
        assert "worker started" in seen[-1], "".join(seen)
        assert worker.poll() is None  # it keeps running, waiting for Redis (DESIGN §6)
        worker.send_signal(signal.SIGTERM)  # handled now: drains, leaves the group
        code, _ = _finish(worker)
        assert code == 0
    finally:
        delete_topics(kafka_service, list(store.topics()))


def test_demo_without_services_names_both_and_writes_nothing(tmp_path: Path) -> None:
    kafka, redis = free_port(), free_port()
    env = _env(
        SKEWLESS_KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka}",
        SKEWLESS_REDIS_URL=f"redis://127.0.0.1:{redis}/0",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--no-services", "--out",
         str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: neither service answers:")
    assert f"Redis at 127.0.0.1:{redis}/3 failed (PING)" in proc.stderr  # the demo's database
    assert f"Kafka at 127.0.0.1:{kafka}: listing topics failed" in proc.stderr
    assert proc.stderr.count(START) == 2
    assert not (tmp_path / "demo").exists()


def test_services_status_matches_the_script(kafka_service: str, redis_service: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "services", "status"],
        env=_env(SKEWLESS_KAFKA_BOOTSTRAP=kafka_service, SKEWLESS_REDIS_URL=redis_service),
        capture_output=True, text=True, timeout=60, cwd=str(EXAMPLE_DEFINITIONS.parent),
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    kafka = next(line for line in lines if line.startswith("services: kafka"))
    redis = next(line for line in lines if line.startswith("services: redis"))
    assert kafka_service in kafka and redis_service.split("/")[2] in redis
    running = " running " in kafka and " running " in redis
    assert (proc.returncode == 0) == running
