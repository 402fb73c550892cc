"""`skewless services`: the script is found, ports follow the config, remote services are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import services
from engine.cli import main
from engine.config import load_config
from engine.errors import ConfigError, ServicesError


def _config(tmp_path: Path, **env: str):  # type: ignore[no-untyped-def]
    return load_config(tmp_path, environ=env)


def test_the_script_of_this_checkout_is_found() -> None:
    script = services.services_script()
    assert script.name == "services.sh"
    assert "cmd_up()" in script.read_text()


def test_ports_come_from_the_config(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        SKEWLESS_KAFKA_BOOTSTRAP="localhost:19092",
        SKEWLESS_REDIS_URL="redis://127.0.0.1:16379/3",
    )
    assert services.service_ports(config) == {
        "SKEWLESS_KAFKA_PORT": "19092",
        "SKEWLESS_REDIS_PORT": "16379",
    }
    default = services.service_ports(_config(tmp_path))
    assert default == {"SKEWLESS_KAFKA_PORT": "9092", "SKEWLESS_REDIS_PORT": "6379"}


def test_the_cluster_port_comes_from_redis_nodes(tmp_path: Path) -> None:
    on = {"SKEWLESS_REDIS_CLUSTER": "true"}
    config = _config(tmp_path, SKEWLESS_REDIS_NODES="127.0.0.1:17102,localhost:17101", **on)
    assert "SKEWLESS_REDIS_CLUSTER_PORT" not in services.service_ports(config)
    ports = services.service_ports(config, "redis-cluster")
    assert ports["SKEWLESS_REDIS_CLUSTER_PORT"] == "17101"
    default = services.service_ports(_config(tmp_path), "redis-cluster")
    assert default["SKEWLESS_REDIS_CLUSTER_PORT"] == "7001"
    remote = _config(tmp_path, SKEWLESS_REDIS_NODES="cache-0.internal:7001", **on)
    with pytest.raises(ConfigError, match=r"redis\.nodes .*not this machine"):
        services.service_ports(remote, "redis-cluster")
    assert services.service_ports(remote)["SKEWLESS_REDIS_PORT"] == "6379"  # other targets


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKEWLESS_KAFKA_BOOTSTRAP": "kafka.internal:9092"}, "not this machine"),
        ({"SKEWLESS_REDIS_URL": "redis://cache.internal:6379/0"}, "not this machine"),
        ({"SKEWLESS_KAFKA_BOOTSTRAP": "127.0.0.1:9092,127.0.0.1:9094"}, "name just one"),
        ({"SKEWLESS_REDIS_URL": "unix:///run/redis.sock"}, "unix socket"),
    ],
)
def test_remote_or_odd_addresses_are_refused(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        services.service_ports(_config(tmp_path, **env))


def test_a_missing_script_says_what_to_do_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "SERVICES_SCRIPT", tmp_path / "scripts" / "services.sh")
    with pytest.raises(ServicesError, match=r"docs/services\.md"):
        services.run_services("status", _config(tmp_path))


def test_cli_refuses_remote_services_without_running_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKEWLESS_KAFKA_BOOTSTRAP", "kafka.internal:9092")
    assert main(["--repo", str(tmp_path), "services", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: kafka.bootstrap_servers is 'kafka.internal:9092', not this")
