"""Kafka through confluent-kafka: client configs, topics, producers, dead letters and the batch consumer.

This module is the one boundary where confluent-kafka's exceptions are translated:
unreachable brokers, refused requests and failed deliveries become ``KafkaUnavailable``
(an operator can act on it: start the broker, create the topic), invalid client settings
become ``ConfigError``. Every client config is built by ``KafkaSettings.client_config``, the
single place where security settings (SASL/SSL, docs/security.md) enter a client config.

Producers use ``partitioner=murmur2_random`` (the Java client's default, the same function as
``engine.keys.partition_for``) and ``enable.idempotence=true``.
"""

from __future__ import annotations

import logging
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import confluent_kafka
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # OffsetSpec: re-exported implicitly
    AdminClient,
    OffsetSpec,
)
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it implicitly

from engine.errors import ConfigError, KafkaUnavailable
from engine.ports import DeadLetter
from engine.secrets import Secret
from engine.stream.core import SourceRecord

if TYPE_CHECKING:
    from engine.config import Config

__all__ = [
    "DLQ_HEADERS",
    "KafkaBatchConsumer",
    "KafkaDeadLetterSink",
    "KafkaOffsets",
    "KafkaPublisher",
    "KafkaSettings",
    "dead_letter_topic",
    "ensure_topics",
    "group_id",
]

START_HINT = (
    "start a local broker with `skewless services up` (or `bash scripts/services.sh up kafka`)"
)
DLQ_HEADERS = (
    "skewless.reason",
    "skewless.reason_code",
    "skewless.source_topic",
    "skewless.source_partition",
    "skewless.source_offset",
)
_MAX_REASON_BYTES = 4096
_CGMD_MAGIC = b"CGMDv2:"  # librdkafka's serialized consumer group metadata, version 2
_LIBRDKAFKA_LOG = logging.getLogger("skewless.kafka.librdkafka")
log = logging.getLogger("skewless.kafka")

Partition = tuple[str, int]
"""(topic, partition)"""

_CONNECTIVITY = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


_CREDENTIALS_HINT = (
    "check kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username and "
    "kafka.sasl_password (SKEWLESS_KAFKA_SECURITY_PROTOCOL, SKEWLESS_KAFKA_SASL_MECHANISM, "
    "SKEWLESS_KAFKA_SASL_USERNAME, SKEWLESS_KAFKA_SASL_PASSWORD[_FILE])"
)
_TLS_HINT = (
    "check kafka.security_protocol and kafka.ssl_ca_location / ssl_certificate_location / "
    "ssl_key_location (SKEWLESS_KAFKA_SSL_*)"
)
_ACL_HINT = "the broker's ACLs do not allow this user the operation; see docs/security.md"
_AUTH_HINTS = {
    KafkaError._AUTHENTICATION: _CREDENTIALS_HINT,
    KafkaError.SASL_AUTHENTICATION_FAILED: _CREDENTIALS_HINT,
    KafkaError.ILLEGAL_SASL_STATE: _CREDENTIALS_HINT,
    KafkaError.UNSUPPORTED_SASL_MECHANISM: _CREDENTIALS_HINT,
    KafkaError._SSL: _TLS_HINT,
    KafkaError.TOPIC_AUTHORIZATION_FAILED: _ACL_HINT,
    KafkaError.GROUP_AUTHORIZATION_FAILED: _ACL_HINT,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: _ACL_HINT,
}


def dead_letter_topic(source: str) -> str:
    """The dead-letter topic of a source: ``skewless.<source>.dlq`` (DESIGN §4)."""
    return f"skewless.{source}.dlq"


def group_id(project: str) -> str:
    """The consumer group of a project's workers: ``skewless.<project>``."""
    return f"skewless.{project}"


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaSettings:
    """Where the brokers are and how to talk to them; builds every client config.

    Example:
        >>> KafkaSettings(bootstrap_servers="127.0.0.1:9092").client_config()["bootstrap.servers"]
        '127.0.0.1:9092'
    """

    bootstrap_servers: str
    client_id: str = "skewless"
    timeout_s: float = 10.0  # admin requests, metadata checks, producer flushes
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: Secret | None = None  # repr shows Secret('***')
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: Secret | None = None
    ssl_verify: bool = True

    @classmethod
    def from_config(cls, config: Config) -> KafkaSettings:
        """The brokers and security settings of the ``kafka`` section (and ``SKEWLESS_KAFKA_*``)."""
        return cls(
            bootstrap_servers=config.kafka_bootstrap,
            client_id=f"skewless.{config.project}",
            security_protocol=config.kafka_security_protocol,
            sasl_mechanism=config.kafka_sasl_mechanism,
            sasl_username=config.kafka_sasl_username,
            sasl_password=config.kafka_sasl_password,
            ssl_ca_location=config.kafka_ssl_ca_location,
            ssl_certificate_location=config.kafka_ssl_certificate_location,
            ssl_key_location=config.kafka_ssl_key_location,
            ssl_key_password=config.kafka_ssl_key_password,
            ssl_verify=config.kafka_ssl_verify,
        )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.upper().startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.upper() in ("SSL", "SASL_SSL")

    def security_config(self) -> dict[str, Any]:
        """librdkafka's ``security.protocol``, ``sasl.*`` and ``ssl.*`` properties.

        The returned dict holds the revealed passwords: hand it to a client, never log it.
        """
        conf: dict[str, Any] = {"security.protocol": self.security_protocol.upper()}
        if self.uses_sasl:
            conf["sasl.mechanism"] = self.sasl_mechanism.upper()
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.reveal() if self.sasl_password else ""
        if self.uses_ssl:
            for key, value in (
                ("ssl.ca.location", self.ssl_ca_location),
                ("ssl.certificate.location", self.ssl_certificate_location),
                ("ssl.key.location", self.ssl_key_location),
            ):
                if value:
                    conf[key] = value
            if self.ssl_key_password:
                conf["ssl.key.password"] = self.ssl_key_password.reveal()
            if not self.ssl_verify:
                conf["enable.ssl.certificate.verification"] = False
                conf["ssl.endpoint.identification.algorithm"] = "none"
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same TLS settings as an ``ssl.SSLContext`` (for aiokafka / the Faust runtime)."""
        if not self.uses_ssl:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ssl_ca_location or None)
            if self.ssl_certificate_location:
                ctx.load_cert_chain(
                    self.ssl_certificate_location,
                    self.ssl_key_location or None,
                    password=self.ssl_key_password.reveal() if self.ssl_key_password else None,
                )
        except (OSError, ssl.SSLError) as exc:  # the text names the file, never the password
            raise ConfigError(f"Kafka TLS settings for {self.describe()}: {exc}") from None
        if not self.ssl_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """The base config of every client; ``overrides`` use librdkafka's dotted names."""
        base: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "logger": _LIBRDKAFKA_LOG,
            **self.security_config(),
        }
        base.update(overrides)
        return base

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Keyed like the Java client (murmur2), idempotent, bounded delivery time."""
        return self.client_config(
            **{
                "partitioner": "murmur2_random",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": int(self.timeout_s * 3 * 1000),
                **overrides,
            }
        )

    def consumer_config(self, group: str, **overrides: Any) -> dict[str, Any]:
        """A group member that commits explicitly and starts from the earliest offset."""
        return self.client_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                **overrides,
            }
        )

    def describe(self) -> str:
        if self.uses_sasl:
            return (
                f"Kafka at {self.bootstrap_servers} ({self.security_protocol.upper()}, "
                f"{self.sasl_mechanism.upper()} user {self.sasl_username!r})"
            )
        if self.uses_ssl:
            return f"Kafka at {self.bootstrap_servers} (SSL)"
        return f"Kafka at {self.bootstrap_servers}"


# -- errors -------------------------------------------------------------------------------


def _error_of(exc: KafkaException) -> KafkaError | None:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def _unavailable(settings: KafkaSettings, what: str, err: KafkaError | str) -> KafkaUnavailable:
    if isinstance(err, KafkaError):
        detail = f"{err.str()} ({err.name()})"
        if err.code() in _CONNECTIVITY:
            hint = (
                f"is the broker running? {START_HINT}, or set kafka.bootstrap_servers / "
                "SKEWLESS_KAFKA_BOOTSTRAP"
            )
            if settings.uses_sasl or settings.uses_ssl:
                # librdkafka reports a refused login or handshake as a transport failure; the
                # reason is in its log ("SASL authentication error", "SSL handshake failed")
                hint += (
                    "; if it runs, it may have refused the SASL login (librdkafka's log says "
                    f"why): {_CREDENTIALS_HINT}"
                    if settings.uses_sasl
                    else f"; if it runs, the TLS handshake may have failed: {_TLS_HINT}"
                )
        else:
            hint = _AUTH_HINTS.get(err.code(), "see the broker log")
    else:
        detail, hint = err, "see the broker log"
    return KafkaUnavailable(f"{settings.describe()}: {what} failed: {detail}; {hint}")


def _refusal(client: Any, reported: Sequence[KafkaError]) -> KafkaError | None:
    """The refused login or TLS handshake behind a request's transport failure, if any.

    librdkafka tells only the error callback (served by ``poll``) why a broker connection
    failed; the request itself just times out as a transport failure.
    """
    client.poll(0)
    return next((e for e in reported if e.code() in _AUTH_HINTS), None)


def _client(
    settings: KafkaSettings, factory: Callable[[dict[str, Any]], Any], conf: dict[str, Any]
) -> Any:
    try:
        return factory(conf)
    except KafkaException as exc:
        err = _error_of(exc)
        raise ConfigError(
            f"invalid Kafka client settings for {settings.describe()}: {err.str() if err else exc}"
        ) from exc


# -- topics -------------------------------------------------------------------------------


def topic_partitions(settings: KafkaSettings, names: Iterable[str] | None = None) -> dict[str, int]:
    """Partition counts of existing topics (all topics when ``names`` is None).

    Every command that talks to Kafka asks this first, so a refused login surfaces here.
    """
    reported: list[KafkaError] = []
    admin = _client(settings, AdminClient, settings.client_config(error_cb=reported.append))
    try:
        meta = admin.list_topics(timeout=settings.timeout_s)
    except KafkaException as exc:
        err = _refusal(admin, reported) or _error_of(exc)
        raise _unavailable(settings, "listing topics", err or str(exc)) from exc
    wanted = None if names is None else set(names)
    return {
        name: len(t.partitions)
        for name, t in meta.topics.items()
        if t.error is None and (wanted is None or name in wanted)
    }


def ensure_topics(settings: KafkaSettings, topics: Mapping[str, int]) -> list[str]:
    """Create the topics of ``topics`` (name → partitions) that do not exist; return those created.

    Idempotent: existing topics are left as they are (whatever their partition count), and a
    topic that another client creates concurrently counts as existing. The replication
    factor is the broker's default.

    Example:
        >>> ensure_topics(settings, {"transactions": 4, "skewless.transactions.dlq": 4})  # doctest: +SKIP
        ['transactions', 'skewless.transactions.dlq']
    """
    for name, count in topics.items():
        if not isinstance(count, int) or count < 1:
            raise ConfigError(
                f"topic {name!r}: partitions must be a positive integer, got {count!r}"
            )
    existing = topic_partitions(settings, topics)
    missing = [name for name in topics if name not in existing]
    if not missing:
        return []
    admin = _client(settings, AdminClient, settings.client_config())
    new = [NewTopic(name, num_partitions=topics[name], replication_factor=-1) for name in missing]
    try:
        futures = admin.create_topics(
            new, operation_timeout=settings.timeout_s, request_timeout=settings.timeout_s
        )
    except KafkaException as exc:
        raise _unavailable(settings, "creating topics", _error_of(exc) or str(exc)) from exc
    created: list[str] = []
    for name in missing:
        try:
            futures[name].result(timeout=settings.timeout_s * 2)
        except KafkaException as exc:
            err = _error_of(exc)
            if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise _unavailable(settings, f"creating topic {name!r}", err or str(exc)) from exc
        except TimeoutError as exc:
            raise _unavailable(settings, f"creating topic {name!r}", "no answer in time") from exc
        created.append(name)
    _wait_for_leaders(settings, admin, created)
    return created


def _wait_for_leaders(settings: KafkaSettings, admin: Any, names: Sequence[str]) -> None:
    """Return once every partition of ``names`` has a leader, so the topics are usable."""
    deadline = time.monotonic() + settings.timeout_s
    waiting = list(names)
    while waiting:
        try:
            meta = admin.list_topics(timeout=settings.timeout_s)
        except KafkaException as exc:
            raise _unavailable(settings, "listing topics", _error_of(exc) or str(exc)) from exc
        waiting = [
            n
            for n in waiting
            if n not in meta.topics
            or meta.topics[n].error is not None
            or any(part.leader < 0 for part in meta.topics[n].partitions.values())
        ]
        if waiting and time.monotonic() > deadline:
            raise _unavailable(settings, f"waiting for leaders of {waiting}", "no leader in time")
        if waiting:
            time.sleep(0.05)


# -- producing ----------------------------------------------------------------------------

Headers = list[tuple[str, bytes]]
OutRecord = tuple[bytes | None, bytes | None, Headers | None]
"""(key, value, headers) of a record to produce."""


class KafkaPublisher:
    """An idempotent producer that delivers batches and says, per batch, whether all landed.

    Not thread-safe: use one per thread. A fatal producer error (the idempotent producer
    lost its sequence) replaces the producer on the next ``send``.

    Example:
        >>> pub = KafkaPublisher(KafkaSettings(bootstrap_servers="127.0.0.1:9092"))  # doctest: +SKIP
        >>> pub.send("transactions", [(b"c1", b"...", None)])  # doctest: +SKIP
        1
    """

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        self.settings = settings
        self._conf = settings.producer_config(**overrides)
        self._producer: Any = _client(settings, Producer, self._conf)
        self._topics: dict[str, int] = {}

    def partitions(self, topic: str) -> int:
        """Partition count of ``topic``; raises KafkaUnavailable if it is missing or unreachable."""
        known = self._topics.get(topic)
        if known is not None:
            return known
        try:
            meta = self._producer.list_topics(topic, timeout=self.settings.timeout_s)
        except KafkaException as exc:
            raise _unavailable(
                self.settings, f"metadata of topic {topic!r}", _error_of(exc) or str(exc)
            ) from exc
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            raise KafkaUnavailable(
                f"{self.settings.describe()}: topic {topic!r} does not exist; run `skewless apply` "
                "to create the topics of the definitions"
            )
        self._topics[topic] = len(found.partitions)
        return self._topics[topic]

    def send(self, topic: str, records: Iterable[OutRecord]) -> int:
        """Produce every record to ``topic``, flush, and return how many were delivered.

        Raises KafkaUnavailable (after the flush) if any record was not delivered; the
        caller retries the whole batch, so a retried batch may deliver some records twice.
        """
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err)

        producer = self._producer
        produce = producer.produce
        count = 0
        for key, value, headers in records:
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: serve delivery reports, then retry
                    producer.poll(0.05)
                except KafkaException as exc:
                    raise _unavailable(
                        self.settings, f"producing to {topic!r}", _error_of(exc) or str(exc)
                    ) from exc
            count += 1
            if count % 10_000 == 0:
                producer.poll(0)
        remaining = producer.flush(self.settings.timeout_s * 3)
        if failures or remaining:
            first = failures[0] if failures else None
            if first is not None and first.fatal():
                self._producer = _client(self.settings, Producer, self._conf)
            what = f"delivering {len(failures) + remaining} of {count} records to {topic!r}" + (
                f" ({remaining} still queued after the flush)" if remaining else ""
            )
            raise _unavailable(self.settings, what, first or "flush timed out")
        return count

    def close(self) -> None:
        """Deliver what is queued (bounded by the settings' timeout)."""
        self._producer.flush(self.settings.timeout_s)


class KafkaDeadLetterSink:
    """``engine.ports.DeadLetterSink`` on ``skewless.<source>.dlq``: same key and value bytes,
    with the reason and source coordinates in headers (``DLQ_HEADERS``).

    Delivery is at least once: a batch retried after a failure may send a letter twice;
    readers deduplicate by (``skewless.source_partition``, ``skewless.source_offset``).
    """

    def __init__(self, publisher: KafkaPublisher, source: str) -> None:
        self.publisher = publisher
        self.topic = dead_letter_topic(source)

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Deliver every letter (flushed) or raise KafkaUnavailable."""
        if letters:
            self.publisher.send(self.topic, (_letter(x) for x in letters))


def _letter(letter: DeadLetter) -> OutRecord:
    # cut at a character boundary, so the header stays valid UTF-8
    reason = letter.reason.encode("utf-8")[:_MAX_REASON_BYTES]
    reason = reason.decode("utf-8", "ignore").encode("utf-8")
    headers: Headers = [
        ("skewless.reason", reason),
        ("skewless.reason_code", letter.code.encode("ascii")),
        ("skewless.source_topic", letter.topic.encode("utf-8")),
        ("skewless.source_partition", str(letter.partition).encode("ascii")),
        ("skewless.source_offset", str(letter.offset).encode("ascii")),
    ]
    return letter.key, letter.value, headers


# -- consuming ----------------------------------------------------------------------------

PartitionsCallback = Callable[[list[Partition]], None]


class KafkaBatchConsumer:
    """A group member that hands out batches of ``SourceRecord`` and commits explicit offsets.

    Rebalance callbacks run inside ``poll_batch`` / ``close`` on the caller's thread, with
    ``(topic, partition)`` lists. Offsets are committed only through ``commit``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        **overrides: Any,
    ) -> None:
        self.settings = settings
        self.group = group
        self._failed_commits: dict[Partition, int] = {}
        self._failed_reason = ""
        self._consumer: Any = _client(
            settings,
            Consumer,
            settings.consumer_config(group, on_commit=self._on_commit, **overrides),
        )

        def assign(consumer: Any, parts: list[TopicPartition]) -> None:
            on_assign([(tp.topic, tp.partition) for tp in parts])
            # librdkafka keeps a partition's pause across assignments: one paused while this
            # worker backed off, then revoked and given back, would stay paused for good
            # (issue 11). Assign here (the binding then skips its own assign) and resume.
            consumer.assign(parts)
            if parts:
                consumer.resume(parts)

        def revoke(_c: Any, parts: list[TopicPartition]) -> None:
            on_revoke([(tp.topic, tp.partition) for tp in parts])

        def lost(_c: Any, parts: list[TopicPartition]) -> None:
            on_lost([(tp.topic, tp.partition) for tp in parts])

        try:
            self._consumer.subscribe(list(topics), on_assign=assign, on_revoke=revoke, on_lost=lost)
        except KafkaException as exc:
            raise _unavailable(
                settings, f"subscribing to {list(topics)}", _error_of(exc) or str(exc)
            ) from exc
        self._last_error_log = 0.0

    def poll_batch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Up to ``max_records`` records; serves rebalances.

        Records the client already holds are handed out at once (natural batching: under
        load a batch is what arrived while the previous one was processed). Only when it
        holds none does this wait, until ``max_records`` arrive or ``timeout_s`` passes, so
        an idle worker still gathers a trickle into batches (librdkafka's ``consume(n,
        timeout)`` waits like that even with records in hand).
        Per-partition errors the client reports (a broker restarting, a topic deleted) are
        logged at most every 5 s and skipped — they are not records; a fatal client error
        raises KafkaUnavailable.
        """
        consumer = self._consumer
        try:
            messages = consumer.consume(num_messages=max_records, timeout=0)
            if not messages:
                messages = consumer.consume(num_messages=max_records, timeout=timeout_s)
        except KafkaException as exc:
            raise _unavailable(self.settings, "consuming", _error_of(exc) or str(exc)) from exc
        out: list[SourceRecord] = []
        append = out.append
        make = SourceRecord._make
        for m in messages:
            err = m.error()
            if err is not None:
                self._message_error(err)
                continue
            append(make((m.topic(), m.partition(), m.offset(), m.key(), m.value())))
        return out

    def _message_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise _unavailable(self.settings, "consuming (fatal client error)", err)
        now = time.monotonic()
        if now - self._last_error_log >= 5.0:
            self._last_error_log = now
            log.warning(
                "%s: consumer error: %s (%s)", self.settings.describe(), err.str(), err.name()
            )

    def commit(self, offsets: Mapping[Partition, int], *, wait: bool = True) -> None:
        """Commit ``offsets`` (next offset to read per partition).

        ``wait=True``: synchronously; raises KafkaUnavailable if the broker refused or could
        not be reached — e.g. the group rebalanced and these partitions now belong to another
        member. ``wait=False``: the request is queued and this returns at once (a synchronous
        commit costs a broker round trip per batch, milliseconds the next batch would wait);
        librdkafka sends commits in order, and an asynchronous one that fails is reported by
        ``failed_commits`` after a later ``poll_batch``.
        """
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            result = self._consumer.commit(offsets=tps, asynchronous=not wait)
        except KafkaException as exc:
            raise _unavailable(
                self.settings,
                f"committing offsets of group {self.group!r}",
                _error_of(exc) or str(exc),
            ) from exc
        if not wait:
            return
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            tp = failed[0]
            raise _unavailable(
                self.settings,
                f"committing {tp.topic}[{tp.partition}]@{tp.offset} of group {self.group!r}",
                tp.error,
            )

    def failed_commits(self) -> tuple[dict[Partition, int], str]:
        """Offsets whose asynchronous commit failed since the last call (and why), drained."""
        failed, self._failed_commits = self._failed_commits, {}
        reason, self._failed_reason = self._failed_reason, ""
        return failed, reason

    def _on_commit(self, err: Any, parts: list[TopicPartition]) -> None:
        """librdkafka's commit report (served inside ``poll_batch``/``commit``)."""
        for tp in parts:
            error = tp.error or err
            if error is None:
                continue
            key = (tp.topic, tp.partition)
            if tp.offset > self._failed_commits.get(key, -1):
                self._failed_commits[key] = tp.offset
            self._failed_reason = str(error)

    def assignment(self) -> list[Partition]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def generation(self) -> int | None:
        """The consumer-group generation of the current assignment, or None before the first.

        Read from librdkafka's consumer group metadata (``rd_kafka_consumer_group_metadata``,
        serialized as ``CGMDv2:`` + the generation id in host byte order + group id + member
        id); Kafka gives every rebalance a higher generation (engine/stream/ownership.py).
        """
        raw = self._consumer.consumer_group_metadata()
        if not isinstance(raw, bytes) or not raw.startswith(_CGMD_MAGIC):
            raise KafkaUnavailable(
                f"{self.settings.describe()}: unexpected consumer group metadata from "
                f"librdkafka {confluent_kafka.libversion()[0]} (expected {_CGMD_MAGIC!r}…); "
                "owner epochs need the group generation"
            )
        (generation,) = struct.unpack_from("=i", raw, len(_CGMD_MAGIC))
        return generation if generation > 0 else None

    def pause_all(self) -> None:
        """Stop fetching from every assigned partition (``poll_batch`` still serves rebalances)."""
        parts = self._consumer.assignment()
        if parts:
            self._consumer.pause(parts)

    def resume_all(self) -> None:
        parts = self._consumer.assignment()
        if parts:
            self._consumer.resume(parts)

    def close(self) -> None:
        """Leave the group (runs the revoke callback) and release the client."""
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("%s: closing the consumer: %s", self.settings.describe(), exc)


# -- offsets (status, lag) ----------------------------------------------------------------


class KafkaOffsets:
    """Watermarks of topics and committed offsets of a consumer group, read with the admin API.

    Reading a group's offsets does not join the group, so asking never causes a rebalance.

    Example:
        >>> offsets = KafkaOffsets(KafkaSettings(bootstrap_servers="127.0.0.1:9092"))  # doctest: +SKIP
        >>> marks = offsets.watermarks(["transactions"])  # doctest: +SKIP
        >>> marks[("transactions", 0)]  # doctest: +SKIP
        (0, 1250)
        >>> offsets.committed("skewless.payments", marks)  # doctest: +SKIP
        {('transactions', 0): 1200, ('transactions', 1): None, ...}
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._admin: Any = _client(settings, AdminClient, settings.client_config())

    def watermarks(self, topics: Iterable[str]) -> dict[Partition, tuple[int, int]]:
        """(low, high) offsets of every partition of each existing topic (missing ones are left
        out): the partition retains ``high - low`` records and the next one gets ``high``."""
        wanted = set(topics)
        try:
            meta = self._admin.list_topics(timeout=self.settings.timeout_s)
        except KafkaException as exc:
            raise _unavailable(self.settings, "listing topics", _error_of(exc) or str(exc)) from exc
        tps = [
            TopicPartition(name, p)
            for name, t in sorted(meta.topics.items())
            if name in wanted and t.error is None
            for p in sorted(t.partitions)
        ]
        if not tps:
            return {}
        low = self._list_offsets(tps, OffsetSpec.earliest())  # type: ignore[no-untyped-call]  # untyped in confluent-kafka
        high = self._list_offsets(tps, OffsetSpec.latest())  # type: ignore[no-untyped-call]  # untyped in confluent-kafka
        return {tp: (low[tp], high[tp]) for tp in high}

    def committed(self, group: str, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        """The group's committed offset (next offset to read) per partition; None: no commit."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return {}
        what = f"reading the offsets of group {group!r}"
        try:
            futures = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, tps)], request_timeout=self.settings.timeout_s
            )
            result = futures[group].result(timeout=self.settings.timeout_s * 2)
        except KafkaException as exc:
            raise _unavailable(self.settings, what, _error_of(exc) or str(exc)) from exc
        except TimeoutError as exc:
            raise _unavailable(self.settings, what, "no answer in time") from exc
        out: dict[Partition, int | None] = {}
        for tp in result.topic_partitions:
            if tp.error is not None:
                raise _unavailable(self.settings, f"{what} ({tp.topic}[{tp.partition}])", tp.error)
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return out

    def _list_offsets(self, tps: list[TopicPartition], spec: Any) -> dict[Partition, int]:
        try:
            futures = self._admin.list_offsets(
                dict.fromkeys(tps, spec), request_timeout=self.settings.timeout_s
            )
            return {
                (tp.topic, tp.partition): int(f.result(timeout=self.settings.timeout_s * 2).offset)
                for tp, f in futures.items()
            }
        except KafkaException as exc:
            raise _unavailable(
                self.settings, "listing partition offsets", _error_of(exc) or str(exc)
            ) from exc
        except TimeoutError as exc:
            raise _unavailable(
                self.settings, "listing partition offsets", "no answer in time"
            ) from exc
