"""skewless.yaml and SKEWLESS_* overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError


def test_defaults_keep_state_inside_the_repo(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert cfg.kafka_bootstrap == "127.0.0.1:9092"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.event_log_root == str(tmp_path.resolve() / ".skewless" / "log")
    assert cfg.registry_path == tmp_path.resolve() / ".skewless" / "registry.json"


def test_yaml_then_environment(tmp_path: Path) -> None:
    (tmp_path / "skewless.yaml").write_text(
        "kafka:\n  partitions: 8\nevent_log:\n  root: s3://bucket/log\n"
    )
    cfg = load_config(tmp_path, environ={"SKEWLESS_KAFKA_PARTITIONS": "12"})
    assert cfg.kafka_partitions == 12
    assert cfg.event_log_root == "s3://bucket/log"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("kafak:\n  partitions: 2\n", {}, "unknown section 'kafak'"),
        ("kafka:\n  partition: 2\n", {}, "unknown key kafka.partition; known: bootstrap_servers"),
        ("kafka:\n  partitions: many\n", {}, "kafka.partitions: expected an integer, got 'many'"),
        ("", {"SKEWLESS_KAFKA_PARTITIONS": "0"}, "kafka.partitions must be at least 1"),
        ("- a\n", {}, "expected a mapping"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    (tmp_path / "skewless.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, environ=env)
