"""skewless.yaml and SKEWLESS_* overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, describe_key, load_config
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


def test_worker_cache_and_local_state(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert (cfg.worker_cache_entities, cfg.worker_local_state) == (200_000, False)
    (tmp_path / "skewless.yaml").write_text("worker:\n  cache_entities: 5000\n")
    cfg = load_config(tmp_path, environ={"SKEWLESS_WORKER_LOCAL_STATE": "true"})
    assert (cfg.worker_cache_entities, cfg.worker_local_state) == (5000, True)
    with pytest.raises(ConfigError, match=r"worker\.cache_entities must be at least 1"):
        load_config(tmp_path, environ={"SKEWLESS_WORKER_CACHE_ENTITIES": "0"})


def test_read_cache_tracking_from_yaml_then_environment(tmp_path: Path) -> None:
    from engine.store import FeatureStore  # the FeatureStore's ReadCache takes the setting

    assert load_config(tmp_path, environ={}).online_read_cache_tracking is True
    (tmp_path / "skewless.yaml").write_text("online:\n  read_cache_tracking: false\n")
    cfg = load_config(tmp_path, environ={})
    assert cfg.online_read_cache_tracking is False
    repo = Path(__file__).resolve().parents[2] / "definitions"
    store = FeatureStore.from_repo(repo, environ={})
    assert store._read_cache.tracking is True
    env = {"SKEWLESS_ONLINE_READ_CACHE_TRACKING": "false"}
    assert FeatureStore.from_repo(repo, environ=env)._read_cache.tracking is False
    env = {"SKEWLESS_ONLINE_READ_CACHE_TRACKING": "true"}
    assert load_config(tmp_path, environ=env).online_read_cache_tracking is True


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


# -- credentials and TLS (docs/security.md) -----------------------------------------------

PW = "Yaml-Pw-7f3a"
ENV_PW = "Env-Pw-91c2"
SECRETS = (PW, ENV_PW, "Url-Pw-55d1", "File-Pw-0b8e", "Sasl-Pw-33aa", "Key-Pw-4e4e")


def _no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {text!r}"


def test_redis_credentials_yaml_then_environment(tmp_path: Path) -> None:
    (tmp_path / "skewless.yaml").write_text(
        f"redis:\n  url: redis://cache:6379/2\n  username: app\n  password: {PW}\n"
    )
    cfg = load_config(tmp_path, environ={})
    assert cfg.redis_username == "app"
    assert cfg.redis_password is not None and cfg.redis_password.reveal() == PW
    cfg = load_config(
        tmp_path,
        environ={"SKEWLESS_REDIS_PASSWORD": ENV_PW, "SKEWLESS_REDIS_USERNAME": "worker"},
    )
    assert cfg.redis_username == "worker"
    assert cfg.redis_password is not None and cfg.redis_password.reveal() == ENV_PW
    _no_secret_in(repr(cfg), str(cfg))


def test_url_credentials_move_out_of_the_url_and_explicit_ones_win(tmp_path: Path) -> None:
    url = "redis://urluser:Url-Pw-55d1@cache:6379/3"
    cfg = load_config(tmp_path, environ={"SKEWLESS_REDIS_URL": url})
    assert cfg.redis_url == "redis://cache:6379/3"
    assert cfg.redis_username == "urluser"
    assert cfg.redis_password is not None and cfg.redis_password.reveal() == "Url-Pw-55d1"
    cfg = load_config(
        tmp_path,
        environ={
            "SKEWLESS_REDIS_URL": url,
            "SKEWLESS_REDIS_PASSWORD": ENV_PW,
            "SKEWLESS_REDIS_USERNAME": "explicit",
        },
    )
    assert cfg.redis_url == "redis://cache:6379/3"
    assert cfg.redis_username == "explicit"
    assert cfg.redis_password is not None and cfg.redis_password.reveal() == ENV_PW
    _no_secret_in(repr(cfg))


def test_a_config_built_in_code_is_normalised_too(tmp_path: Path) -> None:
    cfg = Config(repo_path=tmp_path, redis_url="rediss://:Url-Pw-55d1@cache:6380/0")
    assert cfg.redis_url == "rediss://cache:6380/0" and cfg.redis_tls
    assert cfg.redis_password is not None and cfg.redis_password.reveal() == "Url-Pw-55d1"
    _no_secret_in(repr(cfg))


def test_password_files_from_yaml_and_environment(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "redis").write_text("File-Pw-0b8e\n")  # editors add a newline
    env_file = tmp_path / "env-secret"
    env_file.write_text("Sasl-Pw-33aa")
    (tmp_path / "skewless.yaml").write_text("redis:\n  password_file: secrets/redis\n")
    cfg = load_config(tmp_path, environ={})
    assert cfg.redis_password is not None and cfg.redis_password.reveal() == "File-Pw-0b8e"
    # the environment's file beats the yaml's plain password
    (tmp_path / "skewless.yaml").write_text(f"redis:\n  password: {PW}\n")
    cfg = load_config(tmp_path, environ={"SKEWLESS_REDIS_PASSWORD_FILE": str(env_file)})
    assert cfg.redis_password is not None and cfg.redis_password.reveal() == "Sasl-Pw-33aa"
    _no_secret_in(repr(cfg))


def test_a_missing_password_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={"SKEWLESS_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"})
    assert "SKEWLESS_KAFKA_SASL_PASSWORD_FILE" in str(info.value)
    assert "/nonexistent/pw" in str(info.value)


def test_password_and_password_file_together_are_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("File-Pw-0b8e")
    with pytest.raises(ConfigError, match="set the same setting; keep one") as info:
        load_config(
            tmp_path,
            environ={"SKEWLESS_REDIS_PASSWORD": ENV_PW, "SKEWLESS_REDIS_PASSWORD_FILE": "pw"},
        )
    _no_secret_in(str(info.value))


def test_a_wrongly_typed_password_is_not_echoed(tmp_path: Path) -> None:
    (tmp_path / "skewless.yaml").write_text("redis:\n  password: 918273645\n")
    with pytest.raises(ConfigError, match=r"redis\.password: expected a string, got a int") as info:
        load_config(tmp_path, environ={})
    assert "918273645" not in str(info.value)


def test_tls_follows_the_url_scheme_or_the_flag(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={"SKEWLESS_REDIS_URL": "rediss://cache:6380/0"})
    assert cfg.redis_tls
    (tmp_path / "skewless.yaml").write_text(
        "redis:\n  url: redis://cache:6380/0\n  tls: true\n  tls_ca_file: certs/ca.pem\n"
        "  tls_verify: 'no'\n"
    )
    cfg = load_config(tmp_path, environ={})
    assert cfg.redis_url == "rediss://cache:6380/0" and cfg.redis_tls
    assert cfg.redis_tls_ca_file == str(tmp_path.resolve() / "certs" / "ca.pem")
    assert cfg.redis_tls_verify is False
    cfg = load_config(tmp_path, environ={"SKEWLESS_REDIS_TLS_VERIFY": "true"})
    assert cfg.redis_tls_verify is True


def test_kafka_sasl_ssl_settings_from_environment(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path,
        environ={
            "SKEWLESS_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "SKEWLESS_KAFKA_SASL_MECHANISM": "scram-sha-512",
            "SKEWLESS_KAFKA_SASL_USERNAME": "svc",
            "SKEWLESS_KAFKA_SASL_PASSWORD": "Sasl-Pw-33aa",
            "SKEWLESS_KAFKA_SSL_CA_LOCATION": "/etc/kafka/ca.pem",
            "SKEWLESS_KAFKA_SSL_CERTIFICATE_LOCATION": "client.pem",
            "SKEWLESS_KAFKA_SSL_KEY_LOCATION": "client.key",
            "SKEWLESS_KAFKA_SSL_KEY_PASSWORD": "Key-Pw-4e4e",
        },
    )
    assert cfg.kafka_security_protocol == "SASL_SSL"
    assert cfg.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert cfg.kafka_ssl_ca_location == "/etc/kafka/ca.pem"
    assert cfg.kafka_ssl_key_location == str(tmp_path.resolve() / "client.key")
    assert cfg.kafka_sasl_password is not None
    assert cfg.kafka_sasl_password.reveal() == "Sasl-Pw-33aa"
    _no_secret_in(repr(cfg))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SKEWLESS_KAFKA_SASL_PASSWORD": "x"},
         "set kafka.sasl_username (SKEWLESS_KAFKA_SASL_USERNAME)"),
        ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
          "SKEWLESS_KAFKA_SASL_USERNAME": "svc"},
         "set kafka.sasl_password (SKEWLESS_KAFKA_SASL_PASSWORD)"),
        ({"SKEWLESS_KAFKA_SASL_USERNAME": "svc", "SKEWLESS_KAFKA_SASL_PASSWORD": "Sasl-Pw-33aa"},
         "SASL credentials are set but kafka.security_protocol is PLAINTEXT"),
        ({"SKEWLESS_KAFKA_SSL_CA_LOCATION": "/ca.pem"},
         "kafka.ssl_ca_location (SKEWLESS_KAFKA_SSL_CA_LOCATION) set but kafka.security_protocol is PLAINTEXT"),
        ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SSL", "SKEWLESS_KAFKA_SSL_KEY_LOCATION": "/k"},
         "a client certificate needs both kafka.ssl_certificate_location"),
        ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "TLS"},
         "expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'TLS'"),
        ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SKEWLESS_KAFKA_SASL_MECHANISM": "MD5"},
         "expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ({"SKEWLESS_REDIS_TLS_CA_FILE": "/ca.pem"}, "set but TLS is off: set redis.tls: true"),
        ({"SKEWLESS_REDIS_URL": "rediss://h:1/0", "SKEWLESS_REDIS_TLS_CERT_FILE": "/c.pem"},
         "a client certificate needs both redis.tls_cert_file"),
        ({"SKEWLESS_REDIS_URL": "unix:///tmp/r.sock", "SKEWLESS_REDIS_TLS": "1"},
         "redis.url is a unix socket"),
        ({"SKEWLESS_REDIS_TLS": "maybe"}, "SKEWLESS_REDIS_TLS: expected true or false"),
    ],
)  # fmt: skip
def test_contradicting_security_settings_are_named(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ=env)
    assert message in str(info.value)
    _no_secret_in(str(info.value))


def test_several_conflicts_are_listed_together(tmp_path: Path) -> None:
    env = {"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SKEWLESS_REDIS_TLS_KEY_FILE": "/k"}
    with pytest.raises(ConfigError, match="4 security settings conflict") as info:
        load_config(tmp_path, environ=env)
    assert "kafka.sasl_username" in str(info.value) and "redis.tls_key_file" in str(info.value)


def test_describe_key_names_the_setting_and_its_variable() -> None:
    assert describe_key("redis_password") == "redis.password (SKEWLESS_REDIS_PASSWORD)"
    assert describe_key("kafka_sasl_password") == (
        "kafka.sasl_password (SKEWLESS_KAFKA_SASL_PASSWORD)"
    )


def test_redis_cluster_from_yaml_then_environment(tmp_path: Path) -> None:
    (tmp_path / "skewless.yaml").write_text(
        "redis:\n  cluster: true\n  nodes: ['127.0.0.1:7001', 'localhost:7002']\n"
    )
    cfg = load_config(tmp_path, environ={})
    assert cfg.redis_cluster is True
    assert cfg.redis_nodes == ("127.0.0.1:7001", "localhost:7002")
    cfg = load_config(tmp_path, environ={"SKEWLESS_REDIS_NODES": "10.0.0.1:7001, 10.0.0.2:7001"})
    assert cfg.redis_nodes == ("10.0.0.1:7001", "10.0.0.2:7001")  # the environment wins
    plain = load_config(
        tmp_path, environ={"SKEWLESS_REDIS_CLUSTER": "false", "SKEWLESS_REDIS_NODES": ""}
    )
    assert (plain.redis_cluster, plain.redis_nodes) == (False, ())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKEWLESS_REDIS_NODES": "127.0.0.1:7001"}, "redis.cluster is off"),
        ({"SKEWLESS_REDIS_CLUSTER": "true", "SKEWLESS_REDIS_NODES": "nohost"}, "host:port"),
        (
            {"SKEWLESS_REDIS_CLUSTER": "true", "SKEWLESS_REDIS_URL": "redis://h:7001/3"},
            "database 0 only",
        ),
    ],
)
def test_bad_redis_cluster_settings_are_named(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, environ=env)
