"""Configuration: ``skewless.yaml`` beside the definitions, overridden by ``SKEWLESS_*`` variables.

Every key is optional. The defaults point at Kafka and Redis on 127.0.0.1 and keep all
local state (event log, registry) under ``<repo>/.skewless/`` so two repos never share it.
See docs/configuration.md for the full table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError

CONFIG_FILE = "skewless.yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Resolved settings of one definitions repo."""

    repo_path: Path
    project: str = "skewless"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_partitions: int = 4
    redis_url: str = "redis://127.0.0.1:6379/0"
    event_log_root: str = ""
    state_dir: Path = field(default=Path())
    backfill_workers: int = 0  # 0 = one per CPU core

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.json"

    def effective_backfill_workers(self) -> int:
        return self.backfill_workers or (os.cpu_count() or 1)


# (section, key) -> (attribute, type, environment variable)
_KEYS: dict[tuple[str, str], tuple[str, type, str]] = {
    ("project", "name"): ("project", str, "SKEWLESS_PROJECT"),
    ("kafka", "bootstrap_servers"): ("kafka_bootstrap", str, "SKEWLESS_KAFKA_BOOTSTRAP"),
    ("kafka", "partitions"): ("kafka_partitions", int, "SKEWLESS_KAFKA_PARTITIONS"),
    ("redis", "url"): ("redis_url", str, "SKEWLESS_REDIS_URL"),
    ("event_log", "root"): ("event_log_root", str, "SKEWLESS_EVENT_LOG"),
    ("state", "dir"): ("state_dir", str, "SKEWLESS_STATE_DIR"),
    ("backfill", "workers"): ("backfill_workers", int, "SKEWLESS_BACKFILL_WORKERS"),
}


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def load_config(repo_path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``<repo>/skewless.yaml`` (if any) and apply ``SKEWLESS_*`` overrides.

    Example:
        >>> cfg = load_config(Path("definitions"), environ={})
        >>> cfg.kafka_partitions >= 1
        True
    """
    env = os.environ if environ is None else environ
    repo_path = repo_path.resolve()
    path = repo_path / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        data = loaded or {}
    values: dict[str, Any] = {}
    known_sections = {s for s, _ in _KEYS}
    for section, body in data.items():
        if section not in known_sections:
            raise ConfigError(
                f"{path}: unknown section {section!r}; known: {', '.join(sorted(known_sections))}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
        for key, value in body.items():
            spec = _KEYS.get((section, key))
            if spec is None:
                known = sorted(k for s, k in _KEYS if s == section)
                raise ConfigError(f"{path}: unknown key {section}.{key}; known: {', '.join(known)}")
            values[spec[0]] = _coerce(value, spec[1], f"{path} {section}.{key}")
    for attribute, kind, variable in _KEYS.values():
        if variable in env:
            values[attribute] = _coerce(env[variable], kind, f"environment {variable}")
    if values.get("kafka_partitions", 1) < 1:
        raise ConfigError("kafka.partitions must be at least 1")
    if values.get("backfill_workers", 0) < 0:
        raise ConfigError("backfill.workers must be 0 (one per core) or more")
    state_dir = Path(values.pop("state_dir", repo_path / ".skewless"))
    if not state_dir.is_absolute():
        state_dir = repo_path / state_dir
    log_root = values.pop("event_log_root", "") or str(state_dir / "log")
    if "://" not in log_root and not Path(log_root).is_absolute():
        log_root = str(repo_path / log_root)
    return Config(repo_path=repo_path, state_dir=state_dir, event_log_root=log_root, **values)
