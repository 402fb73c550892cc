"""Credentials and TLS against real servers: a private redis-server that requires a password
(and an ACL user), a private TLS-only redis-server with client certificates, and a real worker
on the shared Kafka. A wrong password stops the worker at once with a message that names the
address and the setting to fix; no secret ever appears in a log, an error, a repr or a file.

The private servers run on free ports in a temporary directory and are stopped by the
fixtures; the shared Redis is not used. Without redis-server (or openssl, for TLS) a test
skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from connectors.redis_store import RedisOnlineStore
from engine.config import load_config
from engine.errors import OnlineStoreAuthError, OnlineStoreUnavailable
from engine.ports import StateWrite
from engine.store import FeatureStore
from tests.stream_harness import REPO, WorkerProcess, delete_topics, unique, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.single_redis]  # its own Redis servers (ACL, TLS)

DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": "long"},
    ],
}
customer = Entity("customer", join_keys=["customer_id"])
src = KafkaSource("SRC", topic="SRC", schema=SCHEMA, timestamp_field="ts", format="json")
spend = FeatureView(
    "spend",
    entity=customer,
    source=src,
    aggregations=[Aggregation("amount", "sum", window="1h"), Aggregation("amount", "count", window="1h")],
)
"""
FEATURES = ["spend:amount_sum_1h", "spend:amount_count_1h"]
ACL_USER = "skewless-worker"
ACL_RULES = [
    "~sk:*",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@scripting",
    "+@connection",
    "-@dangerous",
    "+info",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PrivateRedis:
    """A redis-server of this module: ``password`` for ``default``, ``user_password`` for the
    ACL user; ``url`` carries no credentials."""

    port: int
    password: str
    user_password: str
    url: str
    log: Path
    tls: dict[str, Path]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}/0"

    def secrets(self) -> tuple[str, ...]:
        return (self.password, self.user_password)


def _start_redis(
    workdir: Path, name: str, extra: list[str], tls: dict[str, Path]
) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        _unavailable(
            "redis-server is not installed (bash scripts/services.sh up redis installs it)"
        )
    port = _free_port()
    password, user_password = secrets.token_hex(16), secrets.token_hex(16)
    data = workdir / name
    data.mkdir()
    log = data / "redis.log"
    listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", *listen, "--dir", str(data), "--save", "",
         "--appendonly", "no", "--logfile", str(log), "--requirepass", password, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    scheme = "rediss" if tls else "redis"
    ssl_args = (
        {"ssl_ca_certs": str(tls["ca"]), "ssl_certfile": str(tls["client_cert"]),
         "ssl_keyfile": str(tls["client_key"])}
        if tls else {}
    )  # fmt: skip
    admin = redis.Redis.from_url(f"{scheme}://127.0.0.1:{port}/0", password=password, **ssl_args)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                admin.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text() if log.exists() else "no log"
                    proc.kill()
                    _unavailable(f"the private redis-server did not start: {text[-500:]}")
                time.sleep(0.05)
        # the least-privilege user of docs/security.md: sk:* keys, no admin commands
        admin.execute_command("ACL", "SETUSER", ACL_USER, "on", f">{user_password}", *ACL_RULES)
        admin.close()
        yield PrivateRedis(
            port, password, user_password, f"{scheme}://127.0.0.1:{port}/0", log, tls
        )
    finally:
        admin.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A private redis-server that refuses clients without its password."""
    yield from _start_redis(tmp_path_factory.mktemp("redis-auth"), "auth", [], {})


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        _unavailable("openssl is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("tls")
    f = {n: d / n for n in ("ca", "ca_key", "server_cert", "server_key", "client_cert",
                            "client_key", "ext")}  # fmt: skip
    f["ext"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=skewless-test-ca", "-keyout", str(f["ca_key"]), "-out", str(f["ca"]))  # fmt: skip
    for who in ("server", "client"):
        csr = d / f"{who}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                 "-keyout", str(f[f"{who}_key"]), "-out", str(csr))  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(f["ca"]), "-CAkey", str(f["ca_key"]),
                 "-CAcreateserial", "-days", "2", "-out", str(f[f"{who}_cert"]),
                 "-extfile", str(f["ext"]))  # fmt: skip
    return f


@pytest.fixture(scope="module")
def tls_redis(
    tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]
) -> Iterator[PrivateRedis]:
    """A private TLS-only redis-server that also requires a client certificate and a password
    (Debian's redis-server is built with TLS; a build without it fails to start here)."""
    tls_args = ["--tls-cert-file", str(tls_files["server_cert"]),
                "--tls-key-file", str(tls_files["server_key"]),
                "--tls-ca-cert-file", str(tls_files["ca"]), "--tls-auth-clients", "yes"]  # fmt: skip
    yield from _start_redis(tmp_path_factory.mktemp("redis-tls"), "tls", tls_args, tls_files)


def _repo(root: Path, *, bootstrap: str, redis_yaml: str) -> tuple[Path, str]:
    """A definitions repo with a unique source topic and project; returns (path, topic)."""
    topic, project = unique("sec"), unique("sec")
    root.mkdir(parents=True)
    (root / "defs.py").write_text(DEFS.replace("SRC", topic))
    (root / "skewless.yaml").write_text(
        f"project:\n  name: {project}\nkafka:\n  bootstrap_servers: {bootstrap}\n"
        f"  partitions: 2\nredis:\n{redis_yaml}"
    )
    return root, topic


def _cli(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--repo", str(repo), *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def _assert_nowhere(
    secret_values: tuple[str, ...], *texts: str, files_under: Path | None = None
) -> None:
    """No secret in any text, nor in any file (binary included) under ``files_under``."""
    for text in texts:
        for s in secret_values:
            assert s not in text, f"a secret leaked into: {text[:2000]}"
    if files_under is not None:
        checked = 0
        for path in files_under.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                checked += 1
                for s in secret_values:
                    assert s.encode() not in data, f"a secret leaked into {path}"
        assert checked > 0, f"no files under {files_under}"


# -- the store ------------------------------------------------------------------------------


def test_password_from_the_environment_reaches_redis(
    auth_redis: PrivateRedis, tmp_path: Path
) -> None:
    (tmp_path / "skewless.yaml").write_text(f"redis:\n  url: {auth_redis.url}\n")
    cfg = load_config(tmp_path, environ={"SKEWLESS_REDIS_PASSWORD": auth_redis.password})
    store = RedisOnlineStore.from_config(cfg)
    try:
        assert store.ping()
        store.write([StateWrite(key="sk:sec:{c1}", fields={"f:0": b"7"})])
        assert store.load(["sk:sec:{c1}"]) == [{b"f:0": b"7"}]
    finally:
        store.close()
    _assert_nowhere(auth_redis.secrets(), repr(store), repr(cfg), str(cfg))


def test_acl_user_with_a_password_file(auth_redis: PrivateRedis, tmp_path: Path) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(auth_redis.user_password + "\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "skewless.yaml").write_text(
        f"redis:\n  url: {auth_redis.url}\n  username: {ACL_USER}\n  password_file: {secret_file}\n"
    )
    store = RedisOnlineStore.from_config(load_config(repo, environ={}))
    try:
        store.write([StateWrite(key="sk:acl:{c1}", fields={"f:0": b"1"}, expire_at_ms=None)])
        assert store.load(["sk:acl:{c1}"]) == [{b"f:0": b"1"}]
    finally:
        store.close()
    # the ACL user with the default user's password is refused, and the message names the user
    env = {"SKEWLESS_REDIS_URL": auth_redis.url, "SKEWLESS_REDIS_USERNAME": ACL_USER,
           "SKEWLESS_REDIS_PASSWORD": auth_redis.password}  # fmt: skip
    with pytest.raises(OnlineStoreAuthError) as info:
        RedisOnlineStore.from_config(load_config(tmp_path, environ=env)).ping()
    assert f"user '{ACL_USER}'" in str(info.value) and auth_redis.address in str(info.value)
    _assert_nowhere(auth_redis.secrets(), str(info.value))


@pytest.mark.parametrize("how", ["env", "url", "none"])
def test_a_refused_password_names_address_user_and_setting_never_the_secret(
    auth_redis: PrivateRedis, tmp_path: Path, how: str
) -> None:
    wrong = secrets.token_hex(12)
    env = {"SKEWLESS_REDIS_URL": auth_redis.url}
    if how == "env":
        env["SKEWLESS_REDIS_PASSWORD"] = wrong
    elif how == "url":
        env["SKEWLESS_REDIS_URL"] = auth_redis.url.replace("://", f"://:{wrong}@")
    cfg = load_config(tmp_path, environ=env)
    store = RedisOnlineStore.from_config(cfg)
    for call in (store.ping, lambda: store.load(["a", "b"]),
                 lambda: store.write([StateWrite(key="k", fields={"f": b"1"})])):  # fmt: skip
        with pytest.raises(OnlineStoreAuthError) as info:
            call()
        message = str(info.value)
        assert isinstance(info.value, OnlineStoreUnavailable)
        assert auth_redis.address in message and "user 'default'" in message
        assert "SKEWLESS_REDIS_PASSWORD" in message and "redis.password" in message
        given = "no password was given" if how == "none" else "a password was given"
        assert given in message
        _assert_nowhere((wrong, *auth_redis.secrets()), message, repr(info.value), repr(store),
                        repr(cfg))  # fmt: skip


# -- TLS ------------------------------------------------------------------------------------


def test_tls_with_client_certificate_and_password(tls_redis: PrivateRedis, tmp_path: Path) -> None:
    t = tls_redis.tls
    plain_url = tls_redis.url.replace("rediss://", "redis://")
    (tmp_path / "skewless.yaml").write_text(
        f"redis:\n  url: {plain_url}\n  tls: true\n  tls_ca_file: {t['ca']}\n"
        f"  tls_cert_file: {t['client_cert']}\n  tls_key_file: {t['client_key']}\n"
    )
    cfg = load_config(tmp_path, environ={"SKEWLESS_REDIS_PASSWORD": tls_redis.password})
    assert cfg.redis_url == tls_redis.url  # tls: true made it rediss://
    store = RedisOnlineStore.from_config(cfg)
    try:
        store.write([StateWrite(key="sk:tls:{c1}", fields={"f:0": b"9"})])
        assert store.load(["sk:tls:{c1}"]) == [{b"f:0": b"9"}]
        assert "(TLS)" in repr(store)
    finally:
        store.close()
    # the same through the environment and a rediss:// URL, without verifying the server
    loose = load_config(tmp_path.parent, environ={
        "SKEWLESS_REDIS_URL": f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0",
        "SKEWLESS_REDIS_TLS_VERIFY": "false",
        "SKEWLESS_REDIS_TLS_CERT_FILE": str(t["client_cert"]),
        "SKEWLESS_REDIS_TLS_KEY_FILE": str(t["client_key"]),
    })  # fmt: skip
    store = RedisOnlineStore.from_config(loose)
    try:
        assert store.load(["sk:tls:{c1}"]) == [{b"f:0": b"9"}]
    finally:
        store.close()
    _assert_nowhere(tls_redis.secrets(), repr(cfg), repr(loose))


@pytest.mark.parametrize("what", ["no client certificate", "unknown server CA", "no TLS at all"])
def test_tls_failures_are_unavailable_without_secrets(
    tls_redis: PrivateRedis, tmp_path: Path, what: str
) -> None:
    t = tls_redis.tls
    env = {"SKEWLESS_REDIS_URL": tls_redis.url, "SKEWLESS_REDIS_PASSWORD": tls_redis.password,
           "SKEWLESS_REDIS_TLS_CA_FILE": str(t["ca"]),
           "SKEWLESS_REDIS_TLS_CERT_FILE": str(t["client_cert"]),
           "SKEWLESS_REDIS_TLS_KEY_FILE": str(t["client_key"])}  # fmt: skip
    if what == "no client certificate":
        del env["SKEWLESS_REDIS_TLS_CERT_FILE"], env["SKEWLESS_REDIS_TLS_KEY_FILE"]
    elif what == "unknown server CA":
        del env["SKEWLESS_REDIS_TLS_CA_FILE"]  # the system CAs do not know the test CA
    else:
        env = {"SKEWLESS_REDIS_URL": tls_redis.url.replace("rediss://", "redis://"),
               "SKEWLESS_REDIS_PASSWORD": tls_redis.password}  # fmt: skip
    store = RedisOnlineStore.from_config(load_config(tmp_path, environ=env))
    with pytest.raises(OnlineStoreUnavailable) as info:
        store.ping()
    assert tls_redis.address in str(info.value)
    if what == "unknown server CA":
        assert "certificate verify failed" in str(info.value)
    _assert_nowhere(tls_redis.secrets(), str(info.value), repr(store))


# -- the worker -----------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.parametrize("server", ["password", "tls+acl"])
def test_worker_runs_with_credentials_from_the_environment(
    request: pytest.FixtureRequest,
    kafka_service: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: str,
) -> None:
    if server == "password":
        srv: PrivateRedis = request.getfixturevalue("auth_redis")
        redis_yaml = f"  url: {srv.url}\n"
        env = {"SKEWLESS_REDIS_PASSWORD": srv.password}
    else:
        srv = request.getfixturevalue("tls_redis")
        t = srv.tls
        secret_file = tmp_path / "secrets" / "redis"
        secret_file.parent.mkdir()
        secret_file.write_text(srv.user_password)
        redis_yaml = (f"  url: {srv.url}\n  username: {ACL_USER}\n  tls_ca_file: {t['ca']}\n"
                      f"  tls_cert_file: {t['client_cert']}\n  tls_key_file: {t['client_key']}\n")  # fmt: skip
        env = {"SKEWLESS_REDIS_PASSWORD_FILE": str(secret_file)}
    repo, topic = _repo(tmp_path / "repo", bootstrap=kafka_service, redis_yaml=redis_yaml)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = FeatureStore.from_repo(repo)
    store.apply()
    worker = WorkerProcess(repo, "--log-level", "debug", env=env)
    try:
        now = int(time.time() * 1000)
        rows = [
            {"customer_id": f"c{i % 3}", "amount": float(i), "ts": now - 1000 * i}
            for i in range(12)
        ]
        store.push(topic, rows)

        def arrived() -> bool:
            got = store.get_online_features(FEATURES, [{"customer_id": "c0"}]).to_dict()
            return got["amount_count_1h"] == [4]

        wait_until(arrived, 90, "the worker's writes to the password-protected Redis")
        got = store.get_online_features(FEATURES, [{"customer_id": "c0"}]).to_dict()
        assert got["amount_sum_1h"] == [0.0 + 3 + 6 + 9]
        cli = _cli(repo, env, "get", *FEATURES, "customer_id=c1")
        assert cli.returncode == 0, cli.stderr
        assert re.search(r"amount_sum_1h\s+22\.0\b", cli.stdout), cli.stdout  # 1 + 4 + 7 + 10
        status_text = _status_text(repo, env)
        if status_text:  # status reaches Redis with the same credentials (and ACL rules)
            assert "used memory" in status_text and "UNAVAILABLE" not in status_text, status_text
    finally:
        code = worker.terminate()
        delete_topics(kafka_service, [topic, f"skewless.{topic}.dlq"])
    assert code == 0, worker.text()
    _assert_nowhere(srv.secrets(), worker.text(), cli.stdout, cli.stderr, status_text,
                    repr(store.config), files_under=repo)  # fmt: skip


def _status_text(repo: Path, env: dict[str, str]) -> str:
    """``skewless status`` output (stdout and stderr); empty when the CLI has no such command."""
    done = _cli(repo, env, "status")
    if done.returncode == 2 and "invalid choice: 'status'" in done.stderr:
        return ""
    return done.stdout + done.stderr


@pytest.mark.kafka
def test_worker_with_a_wrong_password_stops_at_once_and_says_what_to_fix(
    auth_redis: PrivateRedis, kafka_service: str, tmp_path: Path
) -> None:
    repo, _ = _repo(tmp_path / "repo", bootstrap=kafka_service,
                           redis_yaml=f"  url: {auth_redis.url}\n")  # fmt: skip
    wrong = secrets.token_hex(12)
    env = {"SKEWLESS_REDIS_PASSWORD": wrong}
    worker = WorkerProcess(repo, "--log-level", "debug", env=env)
    try:
        code = worker.wait(60)  # exits before it consumes: no topic is needed
    finally:
        worker.kill()
    text = worker.text()
    assert code == 1, text
    assert f"Redis at {auth_redis.address} refused the credentials of user 'default'" in text
    assert "SKEWLESS_REDIS_PASSWORD" in text and "Traceback" not in text
    # a read through the CLI says the same; status (if present) names the service too
    get = _cli(repo, env, "get", *FEATURES, "customer_id=c1")
    assert get.returncode == 1 and auth_redis.address in get.stderr, get.stderr
    status_text = _status_text(repo, env)
    _assert_nowhere((wrong, *auth_redis.secrets()), text, get.stdout, get.stderr, status_text,
                    files_under=repo)  # fmt: skip


# -- Kafka with SASL ------------------------------------------------------------------------

KAFKA_VERSION = os.environ.get("SKEWLESS_KAFKA_VERSION", "4.1.1")
KAFKA_LIBS = (
    Path(os.environ.get("SKEWLESS_CACHE", Path.home() / ".cache" / "skewless"))
    / f"kafka-{KAFKA_VERSION}"
    / "libs"
)
SASL_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=SASL_PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="admin" password="{admin}" user_admin="{admin}" user_{plain_user}="{plain}";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs={data}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
"""


@dataclass(frozen=True)
class SaslKafka:
    """A private single-node broker that only speaks SASL_PLAINTEXT: a PLAIN user and a
    SCRAM-SHA-256 user, each with its own password."""

    bootstrap: str
    users: dict[str, tuple[str, str]]  # mechanism -> (user, password)
    admin_password: str

    def env(self, mechanism: str, password: str | None = None) -> dict[str, str]:
        user, real = self.users[mechanism]
        return {
            "SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SKEWLESS_KAFKA_SASL_MECHANISM": mechanism,
            "SKEWLESS_KAFKA_SASL_USERNAME": user,
            "SKEWLESS_KAFKA_SASL_PASSWORD": real if password is None else password,
        }

    def secrets(self) -> tuple[str, ...]:
        return (self.admin_password, *(pw for _, pw in self.users.values()))


def _kafka_java(*args: str) -> list[str]:
    log4j = REPO / "scripts" / "kafka" / "log4j2.xml"
    return ["java", "-Xms64m", "-Xmx256m", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", f"{KAFKA_LIBS}/*", *args]  # fmt: skip


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    """Started from the jars ``scripts/services.sh`` caches; stopped at the end of the module."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if shutil.which("java") is None or not (KAFKA_LIBS / ".complete").exists():
        _unavailable(
            f"no java or no Kafka jars in {KAFKA_LIBS} (`bash scripts/services.sh up kafka`)"
        )
    home = tmp_path_factory.mktemp("kafka-sasl")
    port, controller = _free_port(), _free_port()
    admin_pw, plain_pw, scram_pw = (secrets.token_hex(12) for _ in range(3))
    props = home / "server.properties"
    props.write_text(SASL_PROPERTIES.format(port=port, controller=controller, admin=admin_pw,
                                            plain_user="skewless-plain", plain=plain_pw,
                                            data=home / "data"))  # fmt: skip
    cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()  # Kafka's form
    fmt = subprocess.run(
        _kafka_java("kafka.tools.StorageTool", "format", "--config", str(props),
                    "--cluster-id", cluster,
                    "--add-scram", f"SCRAM-SHA-256=[name=skewless-scram,password={scram_pw}]"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if fmt.returncode != 0:
        _unavailable(f"formatting the SASL broker's storage failed: {fmt.stderr[-500:]}")
    log = open(home / "kafka.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(_kafka_java("kafka.Kafka", str(props)), stdout=log, stderr=log)
    broker = SaslKafka(
        bootstrap=f"127.0.0.1:{port}",
        users={
            "PLAIN": ("skewless-plain", plain_pw),
            "SCRAM-SHA-256": ("skewless-scram", scram_pw),
        },
        admin_password=admin_pw,
    )
    try:
        conf = {"bootstrap.servers": broker.bootstrap, "log_level": 0, "security.protocol":
                "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "admin",
                "sasl.password": admin_pw}  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                if AdminClient(conf).list_topics(timeout=2).brokers:
                    break
            except KafkaException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"the SASL broker did not start; see {home / 'kafka.log'}")
            time.sleep(0.5)
        yield broker
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


@pytest.mark.kafka
@pytest.mark.parametrize(("runtime", "mechanism"), [("kafka", "PLAIN"), ("faust", "SCRAM-SHA-256")])
def test_worker_on_a_sasl_broker_and_a_password_redis(
    sasl_kafka: SaslKafka,
    auth_redis: PrivateRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    runtime: str,
    mechanism: str,
) -> None:
    repo, topic = _repo(tmp_path / "repo", bootstrap=sasl_kafka.bootstrap,
                        redis_yaml=f"  url: {auth_redis.url}\n")  # fmt: skip
    env = {**sasl_kafka.env(mechanism), "SKEWLESS_REDIS_PASSWORD": auth_redis.password}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = FeatureStore.from_repo(repo)
    apply = _cli(repo, env, "apply")
    assert apply.returncode == 0, apply.stderr
    worker = WorkerProcess(repo, "--runtime", runtime, "--log-level", "debug", env=env)
    try:
        now = int(time.time() * 1000)
        rows = [{"customer_id": "c9", "amount": 2.5, "ts": now - 1000 * i} for i in range(5)]
        store.push(topic, rows)

        def arrived() -> bool:
            got = store.get_online_features(FEATURES, [{"customer_id": "c9"}]).to_dict()
            return got["amount_count_1h"] == [5]

        wait_until(arrived, 120, f"the {runtime} worker to consume from the SASL broker")
        assert store.get_online_features(FEATURES, [{"customer_id": "c9"}]).to_dict()[
            "amount_sum_1h"
        ] == [12.5]
        status_text = _status_text(repo, env)
    finally:
        code = worker.terminate()
    assert code == 0, worker.text()
    _assert_nowhere((*sasl_kafka.secrets(), *auth_redis.secrets()), worker.text(), apply.stdout,
                    apply.stderr, status_text, repr(store.config), files_under=repo)  # fmt: skip


@pytest.mark.kafka
@pytest.mark.parametrize("command", ["apply", "worker"])
def test_a_refused_sasl_password_fails_with_the_settings_to_check(
    sasl_kafka: SaslKafka, tmp_path: Path, command: str
) -> None:
    repo, _ = _repo(tmp_path / "repo", bootstrap=sasl_kafka.bootstrap,
                    redis_yaml="  url: redis://127.0.0.1:1/0\n")  # fmt: skip
    wrong = secrets.token_hex(12)
    done = _cli(repo, sasl_kafka.env("PLAIN", password=wrong), command)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors, done.stderr
    error = errors[-1]  # the CLI's message, after librdkafka's log lines
    assert error.startswith(
        f"error: Kafka at {sasl_kafka.bootstrap} (SASL_PLAINTEXT, PLAIN user 'skewless-plain')"
    ), done.stderr
    assert "SASL authentication error" in error and "(_AUTHENTICATION)" in error
    assert "SKEWLESS_KAFKA_SASL_PASSWORD" in error
    _assert_nowhere((wrong, *sasl_kafka.secrets()), done.stdout, done.stderr)
