"""Fault-test fixtures: a private Kafka and Redis for this session (they get stopped, restarted
and emptied), started with ``scripts/services.sh`` in a temporary services folder on their own
ports, and purged at the end. The shared services of the other tests are never touched.

Ports: ``SKEWLESS_FAULT_KAFKA_PORT`` (19092), ``SKEWLESS_FAULT_KAFKA_CONTROLLER_PORT`` (19093),
``SKEWLESS_FAULT_REDIS_PORT`` (16380). Without them a test skips with the reason locally and
fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class PrivateServices:
    """A Kafka broker and a Redis (AOF on) of our own, driven by ``scripts/services.sh``."""

    folder: Path
    kafka_port: int
    controller_port: int
    redis_port: int

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def services(self, *args: str, timeout_s: float = 300) -> str:
        """``scripts/services.sh <args>`` for these services; raises with its output on failure."""
        env = {
            **os.environ,
            "SKEWLESS_SERVICES_DIR": str(self.folder),
            "SKEWLESS_KAFKA_PORT": str(self.kafka_port),
            "SKEWLESS_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "SKEWLESS_REDIS_PORT": str(self.redis_port),
            "SKEWLESS_STOP_TIMEOUT": "20",
        }
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "services.sh"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            raise RuntimeError(f"services.sh {' '.join(args)} failed ({done.returncode}): {output}")
        return output

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.redis_port, socket_timeout=10)


@pytest.fixture(scope="session")
def private_services() -> Iterator[PrivateServices]:
    # A fixed folder (not a pytest temp dir): a session that was killed before its teardown
    # left its services' pid files there, and the ``down --purge`` below stops them.
    folder = Path(
        os.environ.get("SKEWLESS_FAULT_SERVICES_DIR")
        or Path(tempfile.gettempdir()) / f"skewless-fault-services-{os.getuid()}"
    )
    # One session at a time: a second one would purge and restart these services and empty
    # Redis under the first one (its session start runs ``down --purge``, each test FLUSHALL),
    # which the first could only see as online values gone missing.
    lock = _session_lock(folder.with_name(folder.name + ".lock"))
    services = PrivateServices(
        folder=folder,
        kafka_port=int(os.environ.get("SKEWLESS_FAULT_KAFKA_PORT", "19092")),
        controller_port=int(os.environ.get("SKEWLESS_FAULT_KAFKA_CONTROLLER_PORT", "19093")),
        redis_port=int(os.environ.get("SKEWLESS_FAULT_REDIS_PORT", "16380")),
    )
    try:
        services.services("down", "--purge")
        services.services("up")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
            services.services("down", "--purge")
        unavailable(f"cannot start a private Kafka and Redis for the fault tests: {exc}")
    try:
        yield services
    finally:
        try:
            services.services("down", "--purge")
        finally:
            lock.close()  # releases the flock


def _session_lock(path: Path) -> IO[str]:
    """An exclusive ``flock`` on ``path`` for this session; fails (CI) or skips when another
    session holds it. Closing the file releases it (so does the process dying)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "a")  # noqa: SIM115 - held open for the whole session
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        unavailable(
            f"another test session holds {path}: it is using the private fault services "
            f"(Kafka {os.environ.get('SKEWLESS_FAULT_KAFKA_PORT', '19092')}, Redis "
            f"{os.environ.get('SKEWLESS_FAULT_REDIS_PORT', '16380')}) and this one would purge "
            "them under it; wait for it, or give this session its own SKEWLESS_FAULT_SERVICES_DIR "
            "and SKEWLESS_FAULT_*_PORT values"
        )
    return lock


@pytest.fixture
def services(private_services: PrivateServices) -> Iterator[PrivateServices]:
    """The private services, both running, Redis empty, at the start of the test."""
    private_services.services("up")  # a test that failed midway may have left one stopped
    client = private_services.client()
    try:
        client.flushall()
    finally:
        client.close()
    yield private_services


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: kills, broker and Redis restarts, lost state, disk faults"
    )
