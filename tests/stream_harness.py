"""Test harness for the streaming path: throwaway repos with unique topics, workers, Kafka reads.

Everything here talks to the real broker and Redis of the integration fixtures; nothing is
mocked. Topic, source and project names carry a random suffix so tests never share a topic
or a consumer group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from engine.log_files import whole_blocks
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.kafka_runtime import KafkaWorker, WorkerOptions, build_worker

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def write_repo(
    root: Path,
    defs: str,
    *,
    project: str,
    bootstrap: str,
    redis_url: str,
    partitions: int = 4,
) -> Path:
    """A definitions folder with ``defs.py`` and a ``skewless.yaml`` naming the services."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "defs.py").write_text(textwrap.dedent(defs))
    (root / "skewless.yaml").write_text(
        f"project:\n  name: {project}\nkafka:\n  bootstrap_servers: {bootstrap}\n"
        f"  partitions: {partitions}\nredis:\n  url: {redis_url}\n"
    )
    return root


def payments_repo(root: Path, source: str, *, project: str, bootstrap: str, redis_url: str) -> Path:
    """The example payments definitions with the source (and its topic) renamed to ``source``."""
    root.mkdir(parents=True, exist_ok=True)
    text = (REPO / "definitions" / "payments.py").read_text()
    old = '"transactions",\n    topic="transactions",'
    assert old in text, "definitions/payments.py changed: update the harness"
    (root / "payments.py").write_text(text.replace(old, f'"{source}",\n    topic="{source}",'))
    (root / "schemas").mkdir(exist_ok=True)
    schema = (REPO / "definitions" / "schemas" / "transaction.avsc").read_text()
    (root / "schemas" / "transaction.avsc").write_text(schema)
    (root / "skewless.yaml").write_text(
        f"project:\n  name: {project}\nkafka:\n  bootstrap_servers: {bootstrap}\n"
        f"  partitions: 4\nredis:\n  url: {redis_url}\n"
    )
    return root


def cluster_nodes() -> list[str]:
    """The Redis Cluster the tests run against (``SKEWLESS_REDIS_CLUSTER_NODES``: comma-separated
    ``host:port``), or ``[]`` for the single Redis."""
    raw = os.environ.get("SKEWLESS_REDIS_CLUSTER_NODES", "")
    return [n.strip() for n in raw.split(",") if n.strip()]


def raw_redis(url: str) -> Any:
    """A raw redis-py client to look behind the store: the cluster's in the cluster pass
    (``redis.cluster.RedisCluster``, every key routed to its node), else ``url``'s."""
    nodes = cluster_nodes()
    if not nodes:
        return redis.Redis.from_url(url)
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(
        startup_nodes=[ClusterNode(n.rpartition(":")[0], int(n.rpartition(":")[2])) for n in nodes]
    )


def online_store(url: str) -> Any:
    """The online store of ``url``: the cluster's in the cluster pass."""
    from connectors.redis_store import RedisOnlineStore

    nodes = cluster_nodes()
    if not nodes:
        return RedisOnlineStore(url)
    from connectors.redis_cluster_store import RedisClusterOnlineStore

    return RedisClusterOnlineStore(nodes)


def flush_redis(client: Any) -> None:
    """FLUSHDB on one Redis, FLUSHALL on every master of a cluster (the slot map read anew:
    a test may have failed a master over)."""
    if cluster_nodes():
        client.nodes_manager.initialize()
        client.flushall(target_nodes="primaries")
    else:
        client.flushdb()


@contextlib.contextmanager
def flushed_redis_db(redis_url: str, db: int) -> Iterator[str]:
    """The URL of database ``db`` on the Redis of ``redis_url``, flushed before and after
    (in the cluster pass: the cluster's database 0, every master flushed)."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{0 if cluster_nodes() else db}"
    client = raw_redis(url)
    flush_redis(client)
    try:
        yield url
    finally:
        flush_redis(client)
        client.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


# -- Kafka ------------------------------------------------------------------------------------


def _consumer(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or unique("skewless-test-reader"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )


_TRANSIENT = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def _retry(call: Callable[[], Any], attempts: int = 50) -> Any:
    """Retry a read that a broker may refuse for a moment (a leader not yet elected)."""
    for _ in range(attempts - 1):
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0]
            if not err.retriable() and err.code() not in _TRANSIENT:
                raise
            time.sleep(0.1)
    return call()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """High watermark (next offset) per partition."""
    c = _consumer(bootstrap)
    try:
        meta = c.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        return {
            p: _retry(lambda p=p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10))[1]
            for p in parts
        }
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none), without joining it."""
    c = _consumer(bootstrap, group)
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        got = _retry(lambda: c.committed([TopicPartition(topic, p) for p in parts], timeout=10))
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


def wait_caught_up(bootstrap: str, group: str, topics: Iterable[str], timeout_s: float) -> None:
    """Until the group has committed every partition of ``topics`` up to its end."""
    topics = list(topics)

    def done() -> bool:
        for t in topics:
            ends, marks = end_offsets(bootstrap, t), committed(bootstrap, group, t)
            if any(end > 0 and marks.get(p) != end for p, end in ends.items()):
                return False
        return True

    wait_until(done, timeout_s, f"group {group} to commit the end of {topics}")


def delete_topics(bootstrap: str, names: Iterable[str], timeout_s: float = 10) -> None:
    """Remove a test's topics from the shared broker (best effort: a missing one is fine)."""
    from confluent_kafka.admin import AdminClient

    names = list(names)
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(names, operation_timeout=timeout_s).values():
        with contextlib.suppress(Exception):
            future.result(timeout_s)


@dataclass(frozen=True)
class Read:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30) -> list[Read]:
    """Every record of ``topic`` from the beginning to its current end."""
    ends = end_offsets(bootstrap, topic)
    c = _consumer(bootstrap)
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[Read] = []
    done = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + timeout_s
    try:
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic}: timed out")
            for m in c.consume(1000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition())
                        continue
                    raise AssertionError(f"reading {topic}: {err}")
                out.append(
                    Read(m.partition(), m.offset(), m.key(), m.value(), dict(m.headers() or []))
                )
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
    finally:
        c.close()
    return out


def produce_raw(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Produce records as-is (keyed like skewless: murmur2); return their (partition, offset),
    in the order given."""
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5})
    records = list(records)
    where: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[Any] = []

    def report(i: int) -> Callable[[Any, Any], None]:
        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                where[i] = (msg.partition(), msg.offset())

        return delivered

    for i, (key, value) in enumerate(records):
        p.produce(topic, value, key, on_delivery=report(i))
        p.poll(0)
    assert p.flush(30) == 0 and not errors, errors
    return [w for w in where if w is not None]


# -- event log and Redis ---------------------------------------------------------------------


def logged(log_root: str, source: str) -> Counter[tuple[int, int]]:
    """(partition, offset) → how many live log files hold it, reading every file on its own.

    Live: what readers read. Files of a fenced owner epoch (a killed worker's or a zombie's
    uncommitted batches, re-logged by the next owner) are ignored by every reader and deleted
    by compaction (docs/reliability.md#owner-epochs); two *live* copies would be a bug."""
    from connectors.eventlog import EventLogReader

    found: Counter[tuple[int, int]] = Counter()
    reader = EventLogReader(log_root)
    files = [
        (Path(path), last)
        for p in (reader.partitions(source) if (Path(log_root) / source).exists() else [])
        for _, last, path in reader.files(source, p)
    ]
    for path, last in files:
        # what readers take of a file: its whole blocks, up to the listing's limit (a rolling
        # file a fenced owner appended to past the next epoch's start: docs/event-log.md)
        for rec in fastavro.reader(io.BytesIO(whole_blocks(path.read_bytes()))):
            if rec["offset"] <= last:  # type: ignore[call-overload,index]
                found[(rec["partition"], rec["offset"])] += 1  # type: ignore[call-overload,index]
    return found


def log_files(log_root: str, source: str) -> dict[str, int]:
    """Log file name → size, to show that a restart wrote nothing."""
    return {
        str(p.relative_to(log_root)): p.stat().st_size
        for p in (Path(log_root) / source).glob("partition=*/*.avro")
    }


def redis_dump(url: str) -> dict[bytes, Any]:
    """Every key of the database: a hash's fields, a string's value (watermarks)."""
    client = raw_redis(url)
    try:
        return {
            k: client.hgetall(k) if client.type(k) == b"hash" else client.get(k)
            for k in client.scan_iter(count=1000)
        }
    finally:
        client.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays from a DataFrame
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of feature values (floats by their hex form); NaN and None both
    mean "no value", because a float column of a DataFrame holds a missing value as NaN."""
    a, b = _plain(a), _plain(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, float) and isinstance(b, float) and a.hex() == b.hex()
    return bool(a == b)


# -- workers ---------------------------------------------------------------------------------


class WorkerThread:
    """A kafka-runtime worker running in a thread of the test process."""

    def __init__(self, store: FeatureStore, options: WorkerOptions | None = None) -> None:
        self.worker: KafkaWorker = build_worker(store.plan, store.config, options)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(self.stop_event)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 60) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker thread did not stop"
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


class WorkerProcess:
    """``python -m engine.cli --repo R worker`` in its own process, stderr kept in a file."""

    def __init__(self, repo: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = repo / f"worker-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "engine.cli", "--repo", str(repo), "worker", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait: the worker drains, commits and leaves the group."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout_s)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()


def holds_partitions(worker: WorkerProcess, source: str) -> bool:
    """Whether the worker has logged an assignment of at least one partition of ``source``
    (both runtimes log ``assigned <source> [0, 2]``). A bare ``"assigned"`` is not enough:
    aiokafka logs ``Revoking previously assigned partitions set()`` as a Faust worker joins,
    before it holds anything."""
    return re.search(rf"assigned {re.escape(source)} \[\d", worker.text()) is not None


# -- generated payments (the e2e parity test and the fault tests) ----------------------------

Payment = dict[str, Any]
Invalid = tuple[bytes | None, bytes | None, str]  # key, value, the reason code expected
DAY_MS = 86_400_000


def payment_events(
    n: int,
    rng: random.Random,
    codec: SourceCodec,
    *,
    event_time: Callable[[random.Random, list[Payment]], int],
    customers: list[str],
    merchants: list[str],
    invalid_kinds: Iterable[str],
    now_ms: int,
) -> tuple[list[Payment], list[Invalid]]:
    """``n`` valid payments of the example schema, times from ``event_time(rng, so_far)``,
    with null and extreme amounts; then ~1% invalid records drawn from ``invalid_kinds``
    (``truncated``, ``garbage``, ``future_timestamp``, ``not_finite``, ``null_value``)."""
    valid: list[Payment] = []
    for i in range(n):
        ts = event_time(rng, valid)
        amount: float | None = round(rng.uniform(0.01, 2000), 2)
        roll = rng.random()
        if roll < 0.03:
            amount = None
        elif roll < 0.04:
            amount = rng.choice([1e-9, 1e12, -0.0, 123456789.123456789])
        valid.append(
            {
                "transaction_id": f"t{i}",
                "customer_id": rng.choice(customers),
                "merchant_id": rng.choice(merchants),
                "amount": amount,
                "currency": rng.choice(["USD", "EUR", "GBP", "JPY", "USD", "XXX"]),
                "country": rng.choice(["DE", "FR", "US", "GB", "JP", "BR"]),
                "card_present": rng.random() < 0.4,
                "ts": ts,
            }
        )
    kinds = list(invalid_kinds)
    invalid: list[Invalid] = []
    for _ in range(max(5, n // 100)):
        base = dict(rng.choice(valid))
        key = base["customer_id"].encode()
        kind = rng.choice(kinds)
        if kind == "truncated":
            good = codec.encode(base)
            invalid.append((key, good[: len(good) // 2], "bad_avro"))
        elif kind == "garbage":
            invalid.append((key, bytes(rng.randrange(256) | 0x80 for _ in range(12)), "bad_avro"))
        elif kind == "future_timestamp":
            future = now_ms + rng.randrange(2, 30) * DAY_MS
            invalid.append((key, codec.encode({**base, "ts": future}), "future_timestamp"))
        elif kind == "not_finite":
            bad = rng.choice([math.nan, math.inf, -math.inf])
            invalid.append((key, codec.encode({**base, "amount": bad}), "not_finite"))
        elif kind == "null_value":
            invalid.append((key, None, "null_value"))
        else:
            raise ValueError(f"unknown invalid kind {kind!r}")
    return valid, invalid


# -- consumer-group lag and physical log copies (the zombie fault tests) ---------------------


def lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Records per partition of ``topic`` that the group has not committed yet: the end
    offset minus the committed one (the whole partition when it committed nothing)."""
    ends, marks = end_offsets(bootstrap, topic), committed(bootstrap, group, topic)
    # the two reads are not atomic: a commit between them may pass the end read first
    return {p: max(0, end - max(marks.get(p, 0), 0)) for p, end in ends.items()}


@dataclass(frozen=True)
class LogCopy:
    """One copy of a (partition, offset) in a log file."""

    file: str  # relative to the log root
    processed_at_ms: int
    event_time_ms: int


@dataclass
class LogListing:
    """Every file of every partition folder of a source's log, read on its own.

    ``copies``: (partition, offset) → each copy of it in a published file (a non-hidden Avro
    container file, whatever its name). Hidden files (``.tmp-…``, ``.compact-…``, locks) are
    never read by a reader and are listed apart, as are files that are not Avro containers
    and files that cannot be decoded."""

    copies: dict[tuple[int, int], list[LogCopy]]
    files: int = 0
    hidden: list[str] = dataclasses.field(default_factory=list)
    other: list[str] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)
    misplaced: int = 0  # records whose partition is not their folder's

    def in_several(self) -> dict[tuple[int, int], list[LogCopy]]:
        """The (partition, offset)s held by more than one file (or twice by one)."""
        return {k: v for k, v in self.copies.items() if len(v) > 1}

    def disagreeing(self) -> dict[tuple[int, int], list[LogCopy]]:
        """Of those, the ones whose copies differ in ``processed_at`` or event time."""
        return {
            k: v
            for k, v in self.in_several().items()
            if len({(c.processed_at_ms, c.event_time_ms) for c in v}) > 1
        }

    def describe(self, limit: int = 5, *, disagreeing: bool = False) -> str:
        """A few offsets held twice (or only those whose copies disagree), with their files
        and ``processed_at`` (for messages)."""
        out = []
        held = self.disagreeing() if disagreeing else self.in_several()
        for (p, o), copies in sorted(held.items())[:limit]:
            where = ", ".join(f"{c.file} (processed_at {c.processed_at_ms})" for c in copies)
            out.append(f"p{p} offset {o} in {where}")
        return "; ".join(out)


_AVRO_MAGIC = b"Obj\x01"


def log_listing(log_root: str, source: str) -> LogListing:
    """Lists every file of every ``partition=*`` folder of ``source`` (see ``LogListing``)."""
    listing = LogListing(copies={})
    base = Path(log_root)
    for folder in sorted((base / source).glob("partition=*")):
        if not folder.is_dir():
            continue
        expected = int(folder.name.split("=", 1)[1])
        for path in sorted(folder.iterdir()):
            rel = str(path.relative_to(base))
            if path.name.startswith("."):
                listing.hidden.append(rel)
                continue
            if not path.is_file():
                listing.other.append(rel)
                continue
            try:
                with open(path, "rb") as raw:
                    if raw.read(4) != _AVRO_MAGIC:
                        listing.other.append(rel)
                        continue
                    raw.seek(0)
                    listing.files += 1
                    # an open rolling file may end in a block being written: not a record yet
                    fh = io.BytesIO(whole_blocks(raw.read()))
                    for rec in fastavro.reader(fh):
                        r: Any = rec
                        if r["partition"] != expected:
                            listing.misplaced += 1
                        listing.copies.setdefault((r["partition"], r["offset"]), []).append(
                            LogCopy(rel, r["processed_at"], r["event_time"])
                        )
            except Exception as exc:  # a torn or foreign file: reported, not fatal
                listing.unreadable.append(f"{rel}: {type(exc).__name__}: {exc}")
    return listing
