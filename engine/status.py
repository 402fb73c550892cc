"""``skewless status``: consumer lag, view freshness, dead letters, event-log size and online
keys, collected from the services behind small Protocols and rendered as a table or JSON.

Each service is asked on its own. One that cannot be reached is reported as unavailable,
with the address tried (credentials redacted) and the error, and everything else is still
collected; ``StatusReport.ok`` is then False and the CLI exits non-zero.

Where the numbers come from:

- lag: the workers' group committed offsets against the source topics' end offsets
  (Kafka admin API; the group is not joined, so asking never rebalances it);
- dead letters: records retained in ``skewless.<source>.dlq`` (end minus start offset);
- freshness: the per-view stats hash the workers write in each batch's pipeline
  (``engine.online.stats_write``) — never a scan of the entities;
- online keys: one bounded ``SCAN`` of the database, counted per view fingerprint; past
  ``key_scan_limit`` keys the counts are estimated from the sample (SCAN visits keys in
  hash order, so a prefix of the scan is a uniform sample) and scaled by ``DBSIZE``;
- event log: files and bytes per source partition, from directory listings (no file is read).

Example:
    >>> report = store.status()  # doctest: +SKIP
    >>> print(render_text(report))  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from engine.errors import EventLogMissing, SkewlessError
from engine.online import PREFIX, PartitionWriteStats, parse_stats, stats_key
from engine.plan import Plan

__all__ = [
    "DEFAULT_KEY_SCAN_LIMIT",
    "Connect",
    "StatusReport",
    "collect_status",
    "consumer_lag",
    "render_text",
]

Partition = tuple[str, int]
"""(topic, partition)"""

DEFAULT_KEY_SCAN_LIMIT = 1_000_000
"""Keys one ``status`` scans at most before it estimates the key counts (~2 s of SCAN)."""


class OffsetsProbe(Protocol):
    """Kafka as status sees it (``connectors.kafka.KafkaOffsets``)."""

    def watermarks(self, topics: Iterable[str]) -> dict[Partition, tuple[int, int]]: ...

    def committed(
        self, group: str, partitions: Iterable[Partition]
    ) -> dict[Partition, int | None]: ...


class OnlineProbe(Protocol):
    """The online store as status sees it (``connectors.redis_store.RedisOnlineStore``)."""

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]: ...

    def scan_keys(self, pattern: str) -> Iterator[str]: ...

    def server_usage(self) -> tuple[int, int]: ...


class LogProbe(Protocol):
    """The event log as status sees it (``connectors.eventlog.EventLogReader``)."""

    def usage(self, source: str) -> dict[int, tuple[int, int]]: ...


T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect(Generic[T]):
    """How to reach one service: the address to print (no credentials) and a factory that
    connects (it may raise a SkewlessError, reported as the service being unavailable)."""

    address: str
    open: Callable[[], T]


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceState:
    """One service the report asked: where, and the error if it could not be used."""

    name: str
    address: str
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionLag:
    """One source partition: the group's committed offset (None: never committed) and the
    partition's start and end offsets."""

    partition: int
    committed: int | None
    start: int
    end: int

    @property
    def lag(self) -> int:
        """Records not yet committed: from the commit (or the start, without one) to the end."""
        return max(0, self.end - (self.start if self.committed is None else self.committed))


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceLag:
    """Consumer lag of one source topic (``exists`` False: the topic is missing)."""

    source: str
    topic: str
    exists: bool
    partitions: tuple[PartitionLag, ...] = ()

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterCount:
    """Records retained in a source's dead-letter topic, per partition."""

    source: str
    topic: str
    exists: bool
    partitions: Mapping[int, int]

    @property
    def total(self) -> int:
        return sum(self.partitions.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewStatus:
    """One view: its online key count and the freshness of the workers' writes."""

    name: str
    source: str
    fingerprint: str
    keys: int | None  # None: Redis was unavailable
    keys_estimated: bool
    partitions: Mapping[int, PartitionWriteStats]

    @property
    def newest_event_ms(self) -> int | None:
        """Event time of the newest event of the latest writes (max over partitions)."""
        return max((s.newest_event_ms for s in self.partitions.values()), default=None)

    @property
    def last_write_ms(self) -> int | None:
        return max((s.written_ms for s in self.partitions.values()), default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyScan:
    """How the online keys were counted."""

    db_keys: int  # DBSIZE
    scanned: int  # keys the SCAN returned (a key may come twice while Redis resizes)
    capped: bool  # the scan stopped at the limit: view counts are estimates
    retired_keys: int  # keys of fingerprints no view of the plan has (drop: rebuild-online)
    other_keys: int  # keys that are not skewless entity hashes


@dataclass(frozen=True, slots=True, kw_only=True)
class LogUsage:
    """Event-log files and bytes of one source, per partition (``exists`` False: no log yet)."""

    source: str
    exists: bool
    partitions: Mapping[int, tuple[int, int]]  # partition → (files, bytes)

    @property
    def files(self) -> int:
        return sum(f for f, _ in self.partitions.values())

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.partitions.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """Everything ``skewless status`` shows; ``ok`` is False when a service was unavailable."""

    generated_at_ms: int
    group: str
    kafka: ServiceState
    redis: ServiceState
    event_log: ServiceState
    lag: tuple[SourceLag, ...]
    dead_letters: tuple[DeadLetterCount, ...]
    views: tuple[ViewStatus, ...]
    used_memory: int | None
    key_scan: KeyScan | None
    log: tuple[LogUsage, ...]

    @property
    def services(self) -> tuple[ServiceState, ...]:
        return (self.kafka, self.redis, self.event_log)

    @property
    def ok(self) -> bool:
        return all(s.available for s in self.services)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready document (``skewless status --json``); times are epoch ms."""
        now = self.generated_at_ms
        return {
            "ok": self.ok,
            "generated_at_ms": now,
            "group": self.group,
            "services": {
                s.name: {"address": s.address, "available": s.available, "error": s.error}
                for s in self.services
            },
            "consumer_lag": {
                s.source: {
                    "topic": s.topic,
                    "exists": s.exists,
                    "lag": s.lag,
                    "partitions": [
                        {
                            "partition": p.partition,
                            "committed": p.committed,
                            "start": p.start,
                            "end": p.end,
                            "lag": p.lag,
                        }
                        for p in s.partitions
                    ],
                }
                for s in self.lag
            },
            "dead_letters": {
                d.source: {
                    "topic": d.topic,
                    "exists": d.exists,
                    "total": d.total,
                    "partitions": [{"partition": p, "records": n} for p, n in d.partitions.items()],
                }
                for d in self.dead_letters
            },
            "views": {v.name: _view_json(v, now) for v in self.views},
            "redis": None
            if self.key_scan is None
            else {
                "used_memory_bytes": self.used_memory,
                "db_keys": self.key_scan.db_keys,
                "keys_scanned": self.key_scan.scanned,
                "scan_capped": self.key_scan.capped,
                "retired_keys": self.key_scan.retired_keys,
                "other_keys": self.key_scan.other_keys,
            },
            "event_log": {
                u.source: {
                    "exists": u.exists,
                    "files": u.files,
                    "bytes": u.bytes,
                    "partitions": [
                        {"partition": p, "files": f, "bytes": b}
                        for p, (f, b) in u.partitions.items()
                    ],
                }
                for u in self.log
            },
        }


def _view_json(v: ViewStatus, now_ms: int) -> dict[str, Any]:
    newest, written = v.newest_event_ms, v.last_write_ms
    return {
        "source": v.source,
        "fingerprint": v.fingerprint,
        "keys": v.keys,
        "keys_estimated": v.keys_estimated,
        "newest_event_ms": newest,
        "newest_event_age_ms": None if newest is None else now_ms - newest,
        "last_write_ms": written,
        "last_write_age_ms": None if written is None else now_ms - written,
        "partitions": [
            {"partition": p, "newest_event_ms": s.newest_event_ms, "written_ms": s.written_ms}
            for p, s in v.partitions.items()
        ],
    }


# -- collecting ---------------------------------------------------------------------------


def consumer_lag(
    offsets: OffsetsProbe, group: str, topics: Iterable[str]
) -> dict[Partition, PartitionLag]:
    """Lag of ``group`` on every partition of the existing ``topics``.

    Example:
        >>> consumer_lag(KafkaOffsets(settings), "skewless.payments", ["transactions"])  # doctest: +SKIP
        {('transactions', 0): PartitionLag(partition=0, committed=1200, start=0, end=1250), ...}
    """
    marks = offsets.watermarks(topics)
    committed = offsets.committed(group, sorted(marks))
    return {
        tp: PartitionLag(partition=tp[1], committed=committed.get(tp), start=low, end=high)
        for tp, (low, high) in sorted(marks.items())
    }


def collect_status(
    plan: Plan,
    *,
    group: str,
    dead_letter_topic: Callable[[str], str],
    kafka: Connect[OffsetsProbe],
    online: Connect[OnlineProbe],
    log: Connect[LogProbe],
    now_ms: int,
    key_scan_limit: int = DEFAULT_KEY_SCAN_LIMIT,
) -> StatusReport:
    """Ask each service for its numbers; an unreachable one is reported, not raised.

    ``key_scan_limit`` bounds the keys scanned (0: no bound, exact counts).
    """
    sources = {
        name: src.topic
        for name, src in sorted(plan.sources.items())
        if any(v.source == name for v in plan.views.values())
    }
    kafka_state, lag, dead = _kafka_section(sources, group, dead_letter_topic, kafka)
    redis_state, views, used, scan = _online_section(plan, online, key_scan_limit)
    log_state, usage = _log_section(sources, log)
    return StatusReport(
        generated_at_ms=now_ms, group=group, kafka=kafka_state, redis=redis_state,
        event_log=log_state, lag=lag, dead_letters=dead, views=views, used_memory=used,
        key_scan=scan, log=usage,
    )  # fmt: skip


def _kafka_section(
    sources: Mapping[str, str],
    group: str,
    dead_letter_topic: Callable[[str], str],
    kafka: Connect[OffsetsProbe],
) -> tuple[ServiceState, tuple[SourceLag, ...], tuple[DeadLetterCount, ...]]:
    dlq = {name: dead_letter_topic(name) for name in sources}
    try:
        probe = kafka.open()
        lags = consumer_lag(probe, group, sources.values())
        marks = probe.watermarks(dlq.values())
    except SkewlessError as exc:
        return ServiceState(name="kafka", address=kafka.address, error=str(exc)), (), ()
    lag: list[SourceLag] = []
    dead: list[DeadLetterCount] = []
    for name, topic in sources.items():
        parts = tuple(p for tp, p in lags.items() if tp[0] == topic)
        lag.append(SourceLag(source=name, topic=topic, exists=bool(parts), partitions=parts))
        counts = {
            tp[1]: high - low for tp, (low, high) in sorted(marks.items()) if tp[0] == dlq[name]
        }
        dead.append(
            DeadLetterCount(source=name, topic=dlq[name], exists=bool(counts), partitions=counts)
        )
    return ServiceState(name="kafka", address=kafka.address), tuple(lag), tuple(dead)


def _online_section(
    plan: Plan, online: Connect[OnlineProbe], limit: int
) -> tuple[ServiceState, tuple[ViewStatus, ...], int | None, KeyScan | None]:
    views = sorted(plan.views.values(), key=lambda v: v.name)
    try:
        probe = online.open()
        used, db_keys = probe.server_usage()
        stats = probe.load([stats_key(v.fingerprint) for v in views])
        counts, scanned, capped = _count_keys(probe, limit)
    except SkewlessError as exc:
        state = ServiceState(name="redis", address=online.address, error=str(exc))
        missing = tuple(
            ViewStatus(name=v.name, source=v.source, fingerprint=v.fingerprint, keys=None,
                       keys_estimated=False, partitions={})
            for v in views
        )  # fmt: skip
        return state, missing, None, None
    current = {v.fingerprint for v in views}
    entity_keys = sum(n for fp, n in counts.items() if fp)
    scan = KeyScan(
        db_keys=db_keys,
        scanned=scanned,
        capped=capped,
        retired_keys=_scaled(sum(n for fp, n in counts.items() if fp and fp not in current),
                             scanned, db_keys, capped),
        other_keys=_scaled(scanned - entity_keys, scanned, db_keys, capped),
    )  # fmt: skip
    out = tuple(
        ViewStatus(
            name=v.name, source=v.source, fingerprint=v.fingerprint,
            keys=_scaled(counts.get(v.fingerprint, 0), scanned, db_keys, capped),
            keys_estimated=capped, partitions=parse_stats(fields),
        )
        for v, fields in zip(views, stats, strict=True)
    )  # fmt: skip
    return ServiceState(name="redis", address=online.address), out, used, scan


def _count_keys(probe: OnlineProbe, limit: int) -> tuple[Counter[str], int, bool]:
    """Keys per view fingerprint ("" for keys that are not entity hashes), keys scanned,
    and whether the scan stopped at ``limit``."""
    counts: Counter[str] = Counter()
    scanned = 0
    entity_prefix = f"{PREFIX}:"
    for key in probe.scan_keys("*"):
        if limit and scanned >= limit:
            return counts, scanned, True
        scanned += 1
        if key.startswith(entity_prefix):
            fingerprint, sep, rest = key[len(entity_prefix) :].partition(":")
            if sep and rest.startswith("{"):  # sk:<fingerprint>:{<entity>}
                counts[fingerprint] += 1
                continue
        counts[""] += 1
    return counts, scanned, False


def _scaled(count: int, scanned: int, db_keys: int, capped: bool) -> int:
    """``count`` keys of a sample of ``scanned`` keys, scaled to the database when capped."""
    if not capped or not scanned:
        return count
    return round(count * db_keys / scanned)


def _log_section(
    sources: Mapping[str, str], log: Connect[LogProbe]
) -> tuple[ServiceState, tuple[LogUsage, ...]]:
    try:
        probe = log.open()
        usage: list[LogUsage] = []
        for name in sources:
            try:
                parts = probe.usage(name)
            except EventLogMissing:
                usage.append(LogUsage(source=name, exists=False, partitions={}))
                continue
            usage.append(LogUsage(source=name, exists=True, partitions=dict(sorted(parts.items()))))
    except SkewlessError as exc:
        return ServiceState(name="event_log", address=log.address, error=str(exc)), ()
    return ServiceState(name="event_log", address=log.address), tuple(usage)


# -- rendering ----------------------------------------------------------------------------


def render_text(report: StatusReport) -> str:
    """The report as aligned tables, one section per service."""
    now = report.generated_at_ms
    lines = [f"skewless status at {_iso(now)}  (consumer group {report.group})", ""]
    lines.append(_heading("Kafka", report.kafka))
    if report.kafka.available:
        rows: list[list[str]] = [["source", "topic", "partition", "committed", "end", "lag"]]
        for s in report.lag:
            if not s.exists:
                rows.append([s.source, s.topic, "-", "-", "-", "topic missing: run skewless apply"])
            for i, p in enumerate(s.partitions):
                committed = "none" if p.committed is None else f"{p.committed:,}"
                names = [s.source, s.topic] if i == 0 else ["", ""]
                rows.append([*names, str(p.partition), committed, f"{p.end:,}", f"{p.lag:,}"])
            if len(s.partitions) > 1:
                rows.append(["", "", "total", "", "", f"{s.lag:,}"])
        lines += _table(rows, right={2, 3, 4, 5})
        lines.append("")
        rows = [["dead letters", "records", "per partition"]]
        for d in report.dead_letters:
            spread = ", ".join(f"p{p} {n:,}" for p, n in d.partitions.items() if n)
            rows.append([d.topic, f"{d.total:,}" if d.exists else "topic missing", spread])
        lines += _table(rows, right={1})
    lines += ["", _heading("Redis", report.redis)]
    if report.redis.available and report.key_scan is not None:
        scan = report.key_scan
        memory = "?" if report.used_memory is None else _bytes(report.used_memory)
        lines.append(f"  used memory {memory}; {scan.db_keys:,} keys in the database")
    rows = [["view", "fingerprint", "keys", "newest event", "age", "last write", "age"]]
    for v in report.views:
        newest, written = v.newest_event_ms, v.last_write_ms
        keys = "?" if v.keys is None else ("~" if v.keys_estimated else "") + f"{v.keys:,}"
        if not report.redis.available:
            rows.append([v.name, v.fingerprint, keys, "?", "", "?", ""])
        elif newest is None or written is None:
            rows.append([v.name, v.fingerprint, keys, "no worker write recorded", "", "", ""])
        else:
            rows.append([v.name, v.fingerprint, keys, _iso(newest), _age(now - newest),
                         _iso(written), _age(now - written)])  # fmt: skip
    lines += _table(rows, right={2, 4, 6})
    if report.key_scan is not None:
        scan = report.key_scan
        if scan.capped:
            lines.append(
                f"  ~ estimated: the scan stopped after {scan.scanned:,} of {scan.db_keys:,} keys "
                "(raise --key-scan-limit, 0 for no limit)"
            )
        if scan.retired_keys:
            lines.append(
                f"  {scan.retired_keys:,} keys of retired fingerprints (`skewless rebuild-online "
                "VIEW` drops them)"
            )
    lines += ["", _heading("Event log", report.event_log)]
    if report.event_log.available:
        rows = [["source", "partition", "files", "size"]]
        for u in report.log:
            if not u.exists:
                rows.append([u.source, "-", "0", "no log yet"])
            for i, (partition, (files, size)) in enumerate(u.partitions.items()):
                rows.append(
                    [u.source if i == 0 else "", str(partition), f"{files:,}", _bytes(size)]
                )
            if len(u.partitions) > 1:
                rows.append(["", "total", f"{u.files:,}", _bytes(u.bytes)])
        lines += _table(rows, right={1, 2, 3})
    return "\n".join(lines)


def _heading(title: str, state: ServiceState) -> str:
    if state.available:
        return f"{title} {state.address}"
    return f"{title} {state.address}  UNAVAILABLE: {state.error}"


def _table(rows: Sequence[Sequence[str]], *, right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in right and row is not rows[0] else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append(("  " + "  ".join(cells)).rstrip())
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _age(ms: int) -> str:
    """A short age: ``850ms``, ``12.3s``, ``4m05s``, ``3h02m``, ``2d04h``; negative: future."""
    if ms < 0:
        return f"in {_age(-ms)}"
    if ms < 1_000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    s = ms // 1000
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
