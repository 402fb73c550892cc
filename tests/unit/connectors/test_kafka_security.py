"""KafkaSettings: the kafka section's SASL/SSL settings become librdkafka's (and Faust's)
properties, and nothing that prints settings — repr, describe, librdkafka's own debug log —
shows a password. A real SASL broker is exercised in tests/integration/test_security.py."""

from __future__ import annotations

import io
import logging
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from confluent_kafka import Producer

from connectors.kafka import KafkaSettings
from engine.config import load_config
from engine.errors import ConfigError
from engine.secrets import Secret
from engine.stream.faust_runtime import broker_credentials

SASL_PW = "Sasl-Pw-33aa"
KEY_PW = "Key-Pw-4e4e"


def _settings(**kw: object) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="b1:9093,b2:9093", **kw)  # type: ignore[arg-type]


def test_plaintext_adds_only_the_protocol() -> None:
    conf = _settings().client_config()
    assert conf["security.protocol"] == "PLAINTEXT"
    assert not [k for k in conf if k.startswith(("sasl.", "ssl."))]


def test_sasl_ssl_maps_every_setting_to_librdkafka() -> None:
    settings = _settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=Secret(SASL_PW),
        ssl_ca_location="/ca.pem",
        ssl_certificate_location="/client.pem",
        ssl_key_location="/client.key",
        ssl_key_password=Secret(KEY_PW),
    )
    conf = settings.consumer_config("g")
    assert {k: v for k, v in conf.items() if k.startswith(("sasl.", "ssl.", "security."))} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": SASL_PW,
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/client.pem",
        "ssl.key.location": "/client.key",
        "ssl.key.password": KEY_PW,
    }
    assert conf["group.id"] == "g"  # the security part does not replace the role's settings
    for text in (repr(settings), str(settings), settings.describe()):
        assert SASL_PW not in text and KEY_PW not in text, text
    assert settings.describe() == "Kafka at b1:9093,b2:9093 (SASL_SSL, SCRAM-SHA-256 user 'svc')"


def test_sasl_plaintext_sends_no_ssl_settings() -> None:
    conf = _settings(
        security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=Secret("p")
    ).producer_config()
    assert conf["security.protocol"] == "SASL_PLAINTEXT" and conf["sasl.mechanism"] == "PLAIN"
    assert not [k for k in conf if k.startswith("ssl.")]


def test_ssl_without_verification() -> None:
    conf = _settings(security_protocol="SSL", ssl_verify=False).client_config()
    assert conf["enable.ssl.certificate.verification"] is False
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    assert "sasl.username" not in conf


def test_from_config_carries_the_environment_settings(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path,
        environ={
            "SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SKEWLESS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SKEWLESS_KAFKA_SASL_USERNAME": "svc",
            "SKEWLESS_KAFKA_SASL_PASSWORD": SASL_PW,
        },
    )
    settings = KafkaSettings.from_config(cfg)
    conf = settings.client_config()
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (
        "SCRAM-SHA-512",
        "svc",
        SASL_PW,
    )
    assert SASL_PW not in repr(settings)


def test_librdkafka_debug_log_redacts_passwords() -> None:
    """With every debug context on, librdkafka prints its whole config: passwords as [redacted]."""
    out = io.StringIO()
    logger = logging.getLogger("test.librdkafka")
    logger.setLevel(logging.DEBUG)
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    try:
        settings = _settings(
            security_protocol="SASL_PLAINTEXT", sasl_username="svc", sasl_password=Secret(SASL_PW)
        )
        # nothing listens on 127.0.0.1:9: the client only logs its config and a refused connect
        producer = Producer(
            settings.producer_config(
                **{"bootstrap.servers": "127.0.0.1:9", "debug": "all", "logger": logger}
            )
        )
        producer.poll(0.5)
        producer.flush(0)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "sasl.password = [redacted]" in text  # the config dump happened
    assert SASL_PW not in text


def test_faust_credentials_match_the_librdkafka_settings(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path,
        environ={
            "SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SKEWLESS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "SKEWLESS_KAFKA_SASL_USERNAME": "svc",
            "SKEWLESS_KAFKA_SASL_PASSWORD": SASL_PW,
        },
    )
    creds = broker_credentials(cfg)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_PLAINTEXT" and creds.mechanism.value == "SCRAM-SHA-256"
    assert (creds.username, creds.password) == ("svc", SASL_PW)
    assert SASL_PW not in repr(creds)
    assert broker_credentials(load_config(tmp_path, environ={})) is None


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return cert, key


def test_ssl_context_for_faust(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = _settings(
        security_protocol="SSL",
        ssl_ca_location=str(cert),
        ssl_certificate_location=str(cert),
        ssl_key_location=str(key),
    )
    ctx = settings.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    loose = _settings(security_protocol="SASL_SSL", ssl_verify=False).ssl_context()
    assert loose is not None and loose.verify_mode == ssl.CERT_NONE
    assert _settings().ssl_context() is None
    missing = _settings(security_protocol="SSL", ssl_ca_location=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="Kafka TLS settings"):
        missing.ssl_context()
