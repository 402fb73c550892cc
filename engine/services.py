"""`skewless services up|down|status`: the local Kafka, Redis and Redis Cluster of ``scripts/services.sh``.

The shell script stays the one implementation (install, fetch jars, start, wait, stop); this
module finds it next to the package, points it at the ports the config names, and runs it.
Only services on this machine can be started: a config that names another host is an error
that says so.

Example:
    >>> from engine.config import load_config
    >>> env = service_ports(load_config(Path("definitions"), environ={}))
    >>> env["SKEWLESS_KAFKA_PORT"], env["SKEWLESS_REDIS_PORT"]
    ('9092', '6379')
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from engine.config import Config
from engine.errors import ConfigError, ServicesError

__all__ = [
    "ACTIONS",
    "SERVICES_SCRIPT",
    "STOP_HINT",
    "TARGETS",
    "run_services",
    "service_ports",
    "services_script",
]

Action = Literal["up", "down", "status"]
Target = Literal["kafka", "redis", "redis-cluster"]
ACTIONS: tuple[Action, ...] = ("up", "down", "status")
TARGETS: tuple[Target, ...] = ("kafka", "redis", "redis-cluster")  # the cluster: named only
SERVICES_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
STOP_HINT = "`skewless services down` (or `bash scripts/services.sh down`)"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def services_script() -> Path:
    """``scripts/services.sh`` of the checkout this package runs from; ServicesError if absent."""
    if not SERVICES_SCRIPT.is_file():
        raise ServicesError(
            f"{SERVICES_SCRIPT} not found: `skewless services` runs the script of a skewless "
            "checkout (git clone), not of an installed wheel; start Kafka and Redis yourself "
            "(docs/services.md) or use `docker compose up -d kafka redis`"
        )
    return SERVICES_SCRIPT


def _local_port(address: str, setting: str, default: int) -> int:
    """The port of ``host:port`` when the host is this machine; ConfigError otherwise."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    host = parts.hostname or ""
    if host not in _LOCAL_HOSTS:
        raise ConfigError(
            f"{setting} is {address!r}, not this machine: `skewless services` starts Kafka "
            "and Redis on 127.0.0.1 only; start remote services where they run"
        )
    try:
        return parts.port or default
    except ValueError:
        raise ConfigError(f"{setting} is {address!r}: not a valid port") from None


def service_ports(config: Config, target: Target | None = None) -> dict[str, str]:
    """``SKEWLESS_KAFKA_PORT`` / ``SKEWLESS_REDIS_PORT`` for the addresses ``config`` names;
    for the ``redis-cluster`` target also ``SKEWLESS_REDIS_CLUSTER_PORT``, the lowest port of
    ``redis.nodes`` (the script's six nodes take it and the five after it; default 7001).

    Raises ConfigError when Kafka or Redis is configured on another machine, or through a
    unix socket, since the script only starts services on 127.0.0.1.
    """
    brokers = [b.strip() for b in config.kafka_bootstrap.split(",") if b.strip()]
    if len(brokers) != 1:
        raise ConfigError(
            f"kafka.bootstrap_servers is {config.kafka_bootstrap!r}: `skewless services` runs "
            "one local broker; name just one (127.0.0.1:<port>)"
        )
    if config.redis_url.startswith("unix:"):
        raise ConfigError(
            f"redis.url is {config.redis_url!r}: `skewless services` starts Redis on a TCP "
            "port of 127.0.0.1, not on a unix socket"
        )
    kafka = _local_port(brokers[0], "kafka.bootstrap_servers", 9092)
    redis = _local_port(config.redis_url, "redis.url", 6379)
    ports = {"SKEWLESS_KAFKA_PORT": str(kafka), "SKEWLESS_REDIS_PORT": str(redis)}
    if target == "redis-cluster":
        nodes = [_local_port(n, "redis.nodes", 7001) for n in config.redis_nodes]
        ports["SKEWLESS_REDIS_CLUSTER_PORT"] = str(min(nodes, default=7001))
    return ports


def run_services(
    action: Action,
    config: Config,
    *,
    target: Target | None = None,
    purge: bool = False,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run ``services.sh <action> [target] [--purge]`` for the ports of ``config``.

    The script's output goes to this process's stdout/stderr; returns its exit code
    (``status``: 0 only when the named services run). Raises ServicesError when the script
    is missing or cannot be run, ConfigError for remote addresses.
    """
    if action not in ACTIONS:
        raise ConfigError(f"services action must be one of {ACTIONS}, got {action!r}")
    if target is not None and target not in TARGETS:
        raise ConfigError(f"services target must be one of {TARGETS}, got {target!r}")
    script = services_script()
    env = dict(os.environ if environ is None else environ)
    env.update(service_ports(config, target))
    argv = ["bash", str(script), action]
    if target is not None:
        argv.append(target)
    if purge:
        argv.append("--purge")
    try:
        return subprocess.run(argv, env=env, check=False).returncode
    except OSError as exc:
        raise ServicesError(f"cannot run {' '.join(argv)}: {exc}") from exc
