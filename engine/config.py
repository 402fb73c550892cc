"""Configuration: ``skewless.yaml`` beside the definitions, overridden by ``SKEWLESS_*`` variables.

Every key is optional. The defaults point at Kafka and Redis on 127.0.0.1 and keep all
local state (event log, registry) under ``<repo>/.skewless/`` so two repos never share it.
Credentials (Redis password, Kafka SASL password, TLS key password) are held as
``engine.secrets.Secret`` and may come from a ``*_file`` key or a ``SKEWLESS_*_FILE``
variable (Docker and Kubernetes secrets); a Redis URL's ``user:password@`` part is moved
into ``redis_username`` / ``redis_password``, so ``Config.redis_url`` never holds a password.
See docs/configuration.md for the full table and docs/security.md for credentials and TLS.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from engine.errors import ConfigError
from engine.secrets import Secret, redact_url, split_url_credentials

CONFIG_FILE = "skewless.yaml"

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SECURITY_PROTOCOLS: Final[tuple[KafkaSecurityProtocol, ...]] = (
    "PLAINTEXT",
    "SSL",
    "SASL_PLAINTEXT",
    "SASL_SSL",
)
SASL_MECHANISMS: Final[tuple[SaslMechanism, ...]] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Config:
    """Resolved settings of one definitions repo.

    ``repr`` shows every field with URLs redacted and secrets as ``***``, so a config may
    be logged. ``redis_url`` carries no credentials: they are in ``redis_username`` and
    ``redis_password`` (an explicit one beats the URL's).
    """

    repo_path: Path
    project: str = "skewless"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_partitions: int = 4
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret | None = None
    kafka_ssl_ca_location: str = ""
    kafka_ssl_certificate_location: str = ""
    kafka_ssl_key_location: str = ""
    kafka_ssl_key_password: Secret | None = None
    kafka_ssl_verify: bool = True
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_username: str = ""
    redis_password: Secret | None = None
    redis_tls: bool = False
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""
    redis_tls_verify: bool = True
    redis_cluster: bool = False  # Redis Cluster: redis_nodes (or redis_url's host:port) seed it
    redis_nodes: tuple[str, ...] = ()  # "host:port" startup nodes of a cluster
    event_log_root: str = ""
    state_dir: Path = field(default=Path())
    backfill_workers: int = 0  # 0 = one per CPU core
    worker_cache_entities: int = 200_000  # states a worker holds in memory per source
    worker_local_state: bool = False  # evicted states kept in RocksDB under <state dir>/worker
    decode_max_record_bytes: int = 1_048_576  # a bigger record (key + value) is a dead letter
    decode_max_future_ms: int = 86_400_000  # an event time further ahead is a dead letter
    # merge-on-write layout for views keyed by another entity than their source's records
    # (engine.plan.with_merged_tiles, docs/decisions.md): reads merge one tile set
    online_merge_rekeyed_views: bool = True
    # the FeatureStore's ReadCache follows Redis's invalidations (CLIENT TRACKING); False:
    # it revalidates each held entity in Redis, one round trip (docs/online.md)
    online_read_cache_tracking: bool = True

    def __post_init__(self) -> None:
        url, user, password = split_url_credentials(self.redis_url)
        if url.startswith("rediss://"):
            object.__setattr__(self, "redis_tls", True)
        elif self.redis_tls and url.startswith("redis://"):
            url = "rediss://" + url.removeprefix("redis://")
        object.__setattr__(self, "redis_url", url)
        if user and not self.redis_username:
            object.__setattr__(self, "redis_username", user)
        if password and self.redis_password is None:
            object.__setattr__(self, "redis_password", password)

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Config({', '.join(shown)})"

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.json"

    def effective_backfill_workers(self) -> int:
        return self.backfill_workers or (os.cpu_count() or 1)


# -- value parsers: (value, where, repo path) -> value ------------------------------------

Parser = Callable[[Any, str, Path], Any]


def _str(value: Any, where: str, _repo: Path) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _int(value: Any, where: str, _repo: Path) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected an integer, got {value!r}") from None


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", ""})


def _bool(value: Any, where: str, _repo: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _path(value: Any, where: str, repo: Path) -> str:
    text = _str(value, where, repo)
    if text and not Path(text).is_absolute():
        return str(repo / text)
    return text


def _nodes(value: Any, where: str, _repo: Path) -> tuple[str, ...]:
    """Startup nodes: a list of ``host:port`` or one comma-separated string of them."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(f"{where}: expected a list of host:port, got {value!r}")
    nodes: list[str] = []
    for item in items:
        host, sep, port = str(item).strip().rpartition(":")
        if not isinstance(item, str) or not sep or not host or not port.isdigit():
            raise ConfigError(f"{where}: expected host:port, got {item!r}")
        nodes.append(f"{host}:{int(port)}")
    return tuple(nodes)


def _secret(value: Any, where: str, _repo: Path) -> Secret:
    if not isinstance(value, str):  # never echo the value: it is a credential
        raise ConfigError(f"{where}: expected a string, got a {type(value).__name__}")
    return Secret(value)


def _secret_file(value: Any, where: str, repo: Path) -> Secret:
    path = Path(_path(value, where, repo))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{where}: cannot read the secret file {path}: {reason}") from None
    return Secret(text.rstrip("\r\n"))


def _choice(options: tuple[str, ...]) -> Parser:
    def parse(value: Any, where: str, repo: Path) -> str:
        text = _str(value, where, repo).strip().upper()
        if text not in options:
            raise ConfigError(f"{where}: expected one of {', '.join(options)}, got {value!r}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class _Key:
    attribute: str
    parse: Parser
    env: str


# (section, key) -> how to read it; a "*_file" key fills the same attribute as its plain key
_KEYS: dict[tuple[str, str], _Key] = {
    ("project", "name"): _Key("project", _str, "SKEWLESS_PROJECT"),
    ("kafka", "bootstrap_servers"): _Key("kafka_bootstrap", _str, "SKEWLESS_KAFKA_BOOTSTRAP"),
    ("kafka", "partitions"): _Key("kafka_partitions", _int, "SKEWLESS_KAFKA_PARTITIONS"),
    ("kafka", "security_protocol"): _Key(
        "kafka_security_protocol", _choice(SECURITY_PROTOCOLS), "SKEWLESS_KAFKA_SECURITY_PROTOCOL"
    ),
    ("kafka", "sasl_mechanism"): _Key(
        "kafka_sasl_mechanism", _choice(SASL_MECHANISMS), "SKEWLESS_KAFKA_SASL_MECHANISM"
    ),
    ("kafka", "sasl_username"): _Key("kafka_sasl_username", _str, "SKEWLESS_KAFKA_SASL_USERNAME"),
    ("kafka", "sasl_password"): _Key(
        "kafka_sasl_password", _secret, "SKEWLESS_KAFKA_SASL_PASSWORD"
    ),
    ("kafka", "sasl_password_file"): _Key(
        "kafka_sasl_password", _secret_file, "SKEWLESS_KAFKA_SASL_PASSWORD_FILE"
    ),
    ("kafka", "ssl_ca_location"): _Key(
        "kafka_ssl_ca_location", _path, "SKEWLESS_KAFKA_SSL_CA_LOCATION"
    ),
    ("kafka", "ssl_certificate_location"): _Key(
        "kafka_ssl_certificate_location", _path, "SKEWLESS_KAFKA_SSL_CERTIFICATE_LOCATION"
    ),
    ("kafka", "ssl_key_location"): _Key(
        "kafka_ssl_key_location", _path, "SKEWLESS_KAFKA_SSL_KEY_LOCATION"
    ),
    ("kafka", "ssl_key_password"): _Key(
        "kafka_ssl_key_password", _secret, "SKEWLESS_KAFKA_SSL_KEY_PASSWORD"
    ),
    ("kafka", "ssl_key_password_file"): _Key(
        "kafka_ssl_key_password", _secret_file, "SKEWLESS_KAFKA_SSL_KEY_PASSWORD_FILE"
    ),
    ("kafka", "ssl_verify"): _Key("kafka_ssl_verify", _bool, "SKEWLESS_KAFKA_SSL_VERIFY"),
    ("redis", "url"): _Key("redis_url", _str, "SKEWLESS_REDIS_URL"),
    ("redis", "username"): _Key("redis_username", _str, "SKEWLESS_REDIS_USERNAME"),
    ("redis", "password"): _Key("redis_password", _secret, "SKEWLESS_REDIS_PASSWORD"),
    ("redis", "password_file"): _Key(
        "redis_password", _secret_file, "SKEWLESS_REDIS_PASSWORD_FILE"
    ),
    ("redis", "tls"): _Key("redis_tls", _bool, "SKEWLESS_REDIS_TLS"),
    ("redis", "tls_ca_file"): _Key("redis_tls_ca_file", _path, "SKEWLESS_REDIS_TLS_CA_FILE"),
    ("redis", "tls_cert_file"): _Key("redis_tls_cert_file", _path, "SKEWLESS_REDIS_TLS_CERT_FILE"),
    ("redis", "tls_key_file"): _Key("redis_tls_key_file", _path, "SKEWLESS_REDIS_TLS_KEY_FILE"),
    ("redis", "tls_verify"): _Key("redis_tls_verify", _bool, "SKEWLESS_REDIS_TLS_VERIFY"),
    ("online", "merge_rekeyed_views"): _Key(
        "online_merge_rekeyed_views", _bool, "SKEWLESS_ONLINE_MERGE_REKEYED_VIEWS"
    ),
    ("online", "read_cache_tracking"): _Key(
        "online_read_cache_tracking", _bool, "SKEWLESS_ONLINE_READ_CACHE_TRACKING"
    ),
    ("redis", "cluster"): _Key("redis_cluster", _bool, "SKEWLESS_REDIS_CLUSTER"),
    ("redis", "nodes"): _Key("redis_nodes", _nodes, "SKEWLESS_REDIS_NODES"),
    ("event_log", "root"): _Key("event_log_root", _str, "SKEWLESS_EVENT_LOG"),
    ("state", "dir"): _Key("state_dir", _str, "SKEWLESS_STATE_DIR"),
    ("backfill", "workers"): _Key("backfill_workers", _int, "SKEWLESS_BACKFILL_WORKERS"),
    ("worker", "cache_entities"): _Key(
        "worker_cache_entities", _int, "SKEWLESS_WORKER_CACHE_ENTITIES"
    ),
    ("worker", "local_state"): _Key("worker_local_state", _bool, "SKEWLESS_WORKER_LOCAL_STATE"),
    ("decode", "max_record_bytes"): _Key(
        "decode_max_record_bytes", _int, "SKEWLESS_DECODE_MAX_RECORD_BYTES"
    ),
    ("decode", "max_future_ms"): _Key(
        "decode_max_future_ms", _int, "SKEWLESS_DECODE_MAX_FUTURE_MS"
    ),
}

# attribute -> "section.key (ENV)" of its first key (the plain one, before any "*_file")
_NAMES: dict[str, str] = {}
for (_section, _key), _spec in _KEYS.items():
    _NAMES.setdefault(_spec.attribute, f"{_section}.{_key} ({_spec.env})")


def describe_key(attribute: str) -> str:
    """``"section.key (SKEWLESS_VAR)"`` of a ``Config`` attribute, for messages that say what to set.

    Example:
        >>> describe_key("redis_password")
        'redis.password (SKEWLESS_REDIS_PASSWORD)'
    """
    return _NAMES.get(attribute, attribute)


def _layer(items: list[tuple[tuple[str, str], Any, str]], repo_path: Path) -> dict[str, Any]:
    """Parse one layer (the file or the environment); two keys for one attribute are an error."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value, where in items:
        spec = _KEYS[key]
        if spec.attribute in origin:
            raise ConfigError(
                f"{where} and {origin[spec.attribute]} set the same setting; keep one"
            )
        origin[spec.attribute] = where
        values[spec.attribute] = spec.parse(value, where, repo_path)
    return values


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
    from_file: list[tuple[tuple[str, str], Any, str]] = []
    known_sections = {s for s, _ in _KEYS}
    for section, body in data.items():
        if section not in known_sections:
            raise ConfigError(
                f"{path}: unknown section {section!r}; known: {', '.join(sorted(known_sections))}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
        for key, value in body.items():
            if (section, key) not in _KEYS:
                known = sorted(k for s, k in _KEYS if s == section)
                raise ConfigError(f"{path}: unknown key {section}.{key}; known: {', '.join(known)}")
            from_file.append(((section, key), value, f"{path} {section}.{key}"))
    from_env = [
        (key, env[spec.env], f"environment {spec.env}")
        for key, spec in _KEYS.items()
        if spec.env in env
    ]
    values = _layer(from_file, repo_path)
    values.update(_layer(from_env, repo_path))  # the environment beats the file
    if values.get("kafka_partitions", 1) < 1:
        raise ConfigError("kafka.partitions must be at least 1")
    if values.get("backfill_workers", 0) < 0:
        raise ConfigError("backfill.workers must be 0 (one per core) or more")
    if values.get("worker_cache_entities", 1) < 1:
        raise ConfigError("worker.cache_entities must be at least 1")
    if values.get("decode_max_record_bytes", 1) < 1:
        raise ConfigError("decode.max_record_bytes must be at least 1")
    if values.get("decode_max_future_ms", 0) < 0:
        raise ConfigError("decode.max_future_ms must be 0 or more")
    state_dir = Path(values.pop("state_dir", repo_path / ".skewless"))
    if not state_dir.is_absolute():
        state_dir = repo_path / state_dir
    log_root = values.pop("event_log_root", "") or str(state_dir / "log")
    if "://" not in log_root and not Path(log_root).is_absolute():
        log_root = str(repo_path / log_root)
    config = Config(repo_path=repo_path, state_dir=state_dir, event_log_root=log_root, **values)
    check_security(config)
    return config


def check_security(config: Config) -> None:
    """Raise ConfigError for credential and TLS settings that contradict each other.

    A setting that would be silently ignored (a SASL password with ``PLAINTEXT``, a CA file
    without TLS) is an error too: it almost always means a typo in the protocol.
    """
    problems: list[str] = []
    k = describe_key
    protocol = config.kafka_security_protocol
    sasl = protocol.startswith("SASL_")
    ssl = protocol in ("SSL", "SASL_SSL")
    if sasl:
        if not config.kafka_sasl_username:
            problems.append(
                f"kafka.security_protocol is {protocol}: set {k('kafka_sasl_username')}"
            )
        if not config.kafka_sasl_password:
            problems.append(
                f"kafka.security_protocol is {protocol}: set {k('kafka_sasl_password')} "
                "or kafka.sasl_password_file (SKEWLESS_KAFKA_SASL_PASSWORD_FILE)"
            )
    elif config.kafka_sasl_username or config.kafka_sasl_password is not None:
        problems.append(
            f"SASL credentials are set but kafka.security_protocol is {protocol}: set it to "
            "SASL_SSL (or SASL_PLAINTEXT) via kafka.security_protocol "
            "(SKEWLESS_KAFKA_SECURITY_PROTOCOL)"
        )
    ssl_files = {
        "kafka_ssl_ca_location": config.kafka_ssl_ca_location,
        "kafka_ssl_certificate_location": config.kafka_ssl_certificate_location,
        "kafka_ssl_key_location": config.kafka_ssl_key_location,
    }
    if not ssl and (any(ssl_files.values()) or config.kafka_ssl_key_password is not None):
        named = [k(a) for a, v in ssl_files.items() if v]
        if config.kafka_ssl_key_password is not None:
            named.append(k("kafka_ssl_key_password"))
        problems.append(
            f"{', '.join(named)} set but kafka.security_protocol is {protocol}: set it to SSL "
            "or SASL_SSL"
        )
    if bool(config.kafka_ssl_certificate_location) != bool(config.kafka_ssl_key_location):
        problems.append(
            f"a client certificate needs both {k('kafka_ssl_certificate_location')} and "
            f"{k('kafka_ssl_key_location')}"
        )
    if config.kafka_ssl_key_password is not None and not config.kafka_ssl_key_location:
        problems.append(
            f"{k('kafka_ssl_key_password')} is set without {k('kafka_ssl_key_location')}"
        )
    tls_files = {
        "redis_tls_ca_file": config.redis_tls_ca_file,
        "redis_tls_cert_file": config.redis_tls_cert_file,
        "redis_tls_key_file": config.redis_tls_key_file,
    }
    if config.redis_url.startswith("unix://") and config.redis_tls:
        problems.append("redis.tls is on but redis.url is a unix socket (unix://…)")
    elif not config.redis_tls and any(tls_files.values()):
        named = [k(a) for a, v in tls_files.items() if v]
        problems.append(
            f"{', '.join(named)} set but TLS is off: set redis.tls: true (SKEWLESS_REDIS_TLS=true) "
            "or use a rediss:// URL"
        )
    if config.redis_cluster and config.redis_url.startswith("unix://") and not config.redis_nodes:
        problems.append(
            f"redis.cluster is on but redis.url is a unix socket: set {k('redis_nodes')}"
        )
    if config.redis_cluster and not config.redis_url.startswith("unix://"):
        db = (
            config.redis_url.rstrip("/").rpartition("/")[2]
            if config.redis_url.count("/") > 2
            else ""
        )
        if db not in ("", "0"):
            problems.append(
                f"redis.cluster is on but redis.url names database {db}: a Redis Cluster has "
                "database 0 only"
            )
    if config.redis_nodes and not config.redis_cluster:
        problems.append(
            f"{k('redis_nodes')} is set but redis.cluster is off: set redis.cluster: true "
            "(SKEWLESS_REDIS_CLUSTER=true)"
        )
    if bool(config.redis_tls_cert_file) != bool(config.redis_tls_key_file):
        problems.append(
            f"a client certificate needs both {k('redis_tls_cert_file')} and "
            f"{k('redis_tls_key_file')}"
        )
    if len(problems) == 1:
        raise ConfigError(f"{config.repo_path}: {problems[0]}")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"{config.repo_path}: {len(problems)} security settings conflict:\n{listed}"
        )
