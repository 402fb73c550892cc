"""``skewless status`` with fakes behind its Protocols: lag, dead letters, freshness from the
per-view stats hash the batch core writes, bounded key counts, log usage, unavailable services.

The real Kafka, Redis and event log are exercised in tests/integration/test_status.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from connectors.eventlog import EventLogWriter
from engine import FeatureStore
from engine.errors import EventLogMissing, KafkaUnavailable, OnlineStoreUnavailable
from engine.online import PartitionWriteStats, parse_stats, stats_key, stats_write
from engine.plan import Plan
from engine.ports import DeadLetter, StateWrite
from engine.serde import SourceCodec
from engine.status import (
    Connect,
    LogProbe,
    OffsetsProbe,
    OnlineProbe,
    StatusReport,
    collect_status,
    render_text,
)
from engine.stream.core import BatchProcessor, SourceRecord

VIEWS = """
spend = FeatureView("spend", entity=customer, source=tx, allowed_lateness="1h",
    aggregations=[Aggregation("amount", "sum", window="1h")])
spend_day = FeatureView("spend_day", entity=customer, source=tx,
    aggregations=[Aggregation("amount", "sum", window="1d")])
"""
NOW = 1_800_000_000_000
GROUP = "skewless.test"


def dlq(source: str) -> str:
    return f"skewless.{source}.dlq"


@pytest.fixture
def plan(make_repo: Callable[..., Path]) -> Plan:
    return FeatureStore.from_repo(make_repo(VIEWS)).plan


class FakeKafka:
    def __init__(
        self, marks: dict[tuple[str, int], tuple[int, int]], committed: dict[tuple[str, int], int]
    ) -> None:
        self.marks = marks
        self.commits = committed

    def watermarks(self, topics: Iterable[str]) -> dict[tuple[str, int], tuple[int, int]]:
        wanted = set(topics)
        return {tp: m for tp, m in self.marks.items() if tp[0] in wanted}

    def committed(
        self, group: str, partitions: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int | None]:
        assert group == GROUP
        return {tp: self.commits.get(tp) for tp in partitions}


class FakeRedis:
    """Hashes by key; ``scan_keys`` yields every key in insertion order."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.strings: dict[str, bytes] = {}
        self.scans = 0

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        return [dict(self.hashes.get(k, {})) for k in keys]

    def write(self, writes: Sequence[StateWrite], marks: Sequence[Any] = ()) -> list[bytes | None]:
        for w in writes:
            self.hashes.setdefault(w.key, {}).update({k.encode(): v for k, v in w.fields.items()})
        previous = [self.strings.get(m.key) for m in marks]  # SET … GET
        self.strings.update((m.key, m.value) for m in marks)
        return previous

    def scan_keys(self, pattern: str) -> Iterator[str]:
        assert pattern == "*"
        for key in list(self.hashes):
            self.scans += 1
            yield key

    def server_usage(self) -> tuple[int, int]:
        return 123_456, len(self.hashes)


class FakeLog:
    def __init__(self, usage: dict[str, dict[int, tuple[int, int]]]) -> None:
        self.by_source = usage

    def usage(self, source: str) -> dict[int, tuple[int, int]]:
        if source not in self.by_source:
            raise EventLogMissing(f"no event log for source {source!r}")
        return self.by_source[source]


def _raise(exc: Exception) -> Callable[[], object]:
    def fail() -> object:
        raise exc

    return fail


def collect(
    plan: Plan,
    kafka: OffsetsProbe | Exception,
    online: OnlineProbe | Exception,
    log: LogProbe | Exception,
    limit: int = 0,
) -> StatusReport:
    def conn(address: str, probe: object) -> Connect[object]:
        if isinstance(probe, Exception):
            return Connect(address=address, open=_raise(probe))
        return Connect(address=address, open=lambda: probe)

    return collect_status(
        plan,
        group=GROUP,
        dead_letter_topic=dlq,
        kafka=conn("kafka:9092", kafka),  # type: ignore[arg-type]
        online=conn("redis://cache:6379/7", online),  # type: ignore[arg-type]
        log=conn("/var/log/skewless", log),  # type: ignore[arg-type]
        now_ms=NOW,
        key_scan_limit=limit,
    )


def entity_keys(plan: Plan, view: str, n: int) -> dict[str, dict[bytes, bytes]]:
    fp = plan.views[view].fingerprint
    return {f"sk:{fp}:{{c{i}}}": {b"f:0": b"1"} for i in range(n)}


# -- the batch core writes the stats hash -------------------------------------------------


class NullDead:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


def test_batch_core_records_newest_event_and_write_time_per_view_and_partition(
    plan: Plan,
) -> None:
    store = FakeRedis()
    codec = SourceCodec(plan.sources["tx"])
    schema = dict(plan.sources["tx"].schema)
    core = BatchProcessor(plan, "tx", online=store, dead=NullDead(),
                          log=EventLogWriter("memory://status-core", "tx", schema),
                          clock=lambda: NOW)  # fmt: skip

    def rec(partition: int, offset: int, customer: str, ts: int) -> SourceRecord:
        row = {"customer_id": customer, "merchant_id": "m", "amount": 1.0, "qty": 1, "ts": ts}
        return SourceRecord(topic="tx", partition=partition, offset=offset,
                            key=customer.encode(), value=codec.encode(row))  # fmt: skip

    late = NOW - 2 * 3_600_000  # later than spend's 1h lateness, admitted to spend_day (1d)
    outcome = core.process(
        [
            rec(0, 0, "a", NOW - 5_000),
            rec(0, 1, "b", NOW - 9_000),  # older, after a newer one: the max counts
            rec(1, 0, "a", late),
            rec(1, 1, "c", NOW - 30_000),
        ]
    )
    assert outcome.applied == 7 and outcome.late == 1
    assert outcome.newest_event_ms == {0: NOW - 5_000, 1: NOW - 30_000}
    assert outcome.entities_written == 7  # 3 + 4 entity hashes; the 2 stats hashes are not
    spend = parse_stats(store.hashes[stats_key(plan.views["spend"].fingerprint)])
    day = parse_stats(store.hashes[stats_key(plan.views["spend_day"].fingerprint)])
    assert spend == {
        0: PartitionWriteStats(newest_event_ms=NOW - 5_000, written_ms=NOW),
        1: PartitionWriteStats(newest_event_ms=NOW - 30_000, written_ms=NOW),
    }
    assert day[1] == PartitionWriteStats(newest_event_ms=NOW - 30_000, written_ms=NOW)
    # a replay of the same records applies nothing, so it records nothing new
    store.hashes[stats_key(plan.views["spend"].fingerprint)].clear()
    core.forget_all()
    again = core.process([rec(0, 0, "a", NOW - 5_000)])
    assert again.applied == 0 and again.newest_event_ms == {}
    assert store.hashes[stats_key(plan.views["spend"].fingerprint)] == {}


def test_stats_write_round_trips_and_ignores_foreign_fields(plan: Plan) -> None:
    w = stats_write(plan.views["spend"], {3: 100, 0: 50}, 999)
    assert w.key == stats_key(plan.views["spend"].fingerprint) and w.expire_at_ms is None
    fields = {k.encode(): v for k, v in w.fields.items()}
    fields[b"e:7"] = b"5"  # no w:7: incomplete, skipped
    fields[b"zz"] = b"1"
    assert parse_stats(fields) == {
        0: PartitionWriteStats(newest_event_ms=50, written_ms=999),
        3: PartitionWriteStats(newest_event_ms=100, written_ms=999),
    }


# -- collect ------------------------------------------------------------------------------


def healthy(plan: Plan) -> tuple[FakeKafka, FakeRedis, FakeLog]:
    kafka = FakeKafka(
        marks={("tx", 0): (0, 120), ("tx", 1): (10, 50), (dlq("tx"), 0): (0, 3),
               (dlq("tx"), 1): (2, 2)},
        committed={("tx", 0): 100},  # partition 1 never committed
    )  # fmt: skip
    redis = FakeRedis()
    redis.hashes.update(entity_keys(plan, "spend", 5))
    redis.hashes.update(entity_keys(plan, "spend_day", 3))
    redis.hashes["sk:0123456789abcdef:{old}"] = {}  # a retired fingerprint
    redis.hashes["someone-else"] = {}
    redis.write([stats_write(plan.views["spend"], {0: NOW - 2_000, 1: NOW - 7_000}, NOW - 1_000)])
    log = FakeLog({"tx": {0: (2, 4096), 1: (1, 1000)}})
    return kafka, redis, log


def test_collect_reports_every_number(plan: Plan) -> None:
    report = collect(plan, *healthy(plan))
    assert report.ok
    (lag,) = report.lag
    assert (lag.source, lag.topic, lag.exists) == ("tx", "tx", True)
    assert [(p.partition, p.committed, p.end, p.lag) for p in lag.partitions] == [
        (0, 100, 120, 20),
        (1, None, 50, 40),  # no commit: everything retained (end - start) is unread
    ]
    assert lag.lag == 60
    (dead,) = report.dead_letters
    assert (dead.topic, dead.total, dict(dead.partitions)) == (dlq("tx"), 3, {0: 3, 1: 0})
    views = {v.name: v for v in report.views}
    assert (views["spend"].keys, views["spend_day"].keys) == (5, 3)
    assert not views["spend"].keys_estimated
    assert views["spend"].newest_event_ms == NOW - 2_000
    assert views["spend"].last_write_ms == NOW - 1_000
    assert views["spend_day"].newest_event_ms is None  # no worker wrote it yet
    scan = report.key_scan
    assert scan is not None
    assert (scan.db_keys, scan.scanned, scan.capped) == (11, 11, False)
    assert (scan.retired_keys, scan.other_keys) == (1, 2)  # the stats hash is not an entity
    assert report.used_memory == 123_456
    (usage,) = report.log
    assert (usage.files, usage.bytes) == (3, 5096)
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["ok"] is True
    assert doc["consumer_lag"]["tx"]["lag"] == 60
    assert doc["views"]["spend"]["newest_event_age_ms"] == 2_000
    assert doc["views"]["spend"]["last_write_age_ms"] == 1_000
    assert doc["dead_letters"]["tx"]["total"] == 3
    assert doc["event_log"]["tx"]["bytes"] == 5096
    text = render_text(report)
    assert "Kafka kafka:9092\n" in text
    for needle in ("20", "40", "60", dlq("tx"), "spend_day", "no worker write recorded",
                   "2.0s", "1.0s", "120.6 KiB", "4.0 KiB", "1 keys of retired fingerprints"):  # fmt: skip
        assert needle in text, needle


def test_key_counts_past_the_scan_limit_are_estimated_and_the_scan_stops(plan: Plan) -> None:
    kafka, _, log = healthy(plan)
    redis = FakeRedis()
    spend = list(entity_keys(plan, "spend", 300).items())
    day = list(entity_keys(plan, "spend_day", 100).items())
    for i in range(100):  # 3:1 all along, as SCAN's hash order mixes keyspaces
        redis.hashes.update([*spend[3 * i : 3 * i + 3], day[i]])
    report = collect(plan, kafka, redis, log, limit=40)
    views = {v.name: v for v in report.views}
    assert redis.scans <= 41
    assert views["spend"].keys_estimated and report.key_scan and report.key_scan.capped
    assert views["spend"].keys == 300 and views["spend_day"].keys == 100
    assert "~300" in render_text(report)
    exact = collect(plan, kafka, redis, log, limit=0)
    assert {v.name: v.keys for v in exact.views} == {"spend": 300, "spend_day": 100}


def test_a_service_down_is_reported_and_the_rest_still_collected(plan: Plan) -> None:
    kafka, redis, log = healthy(plan)
    down = OnlineStoreUnavailable("Redis at cache:6379/7 failed (PING): Connection refused")
    report = collect(plan, kafka, down, log)
    assert not report.ok
    assert report.redis.error is not None and "Connection refused" in report.redis.error
    assert report.lag[0].lag == 60 and report.log[0].bytes == 5096
    assert [v.keys for v in report.views] == [None, None]
    text = render_text(report)
    assert "Redis redis://cache:6379/7  UNAVAILABLE: Redis at cache:6379/7 failed" in text
    assert "Event log /var/log/skewless\n" in text
    doc = report.to_json()
    assert doc["services"]["redis"] == {
        "address": "redis://cache:6379/7", "available": False, "error": str(down),
    }  # fmt: skip
    assert doc["services"]["kafka"]["available"] is True

    report = collect(
        plan, KafkaUnavailable("Kafka at kafka:9092: listing topics failed"), redis, log
    )
    assert not report.ok and report.lag == () and report.dead_letters == ()
    assert report.views[0].keys == 5
    assert "Kafka kafka:9092  UNAVAILABLE: Kafka at kafka:9092: listing topics" in render_text(
        report
    )


def test_missing_topics_and_a_missing_log_are_not_failures(plan: Plan) -> None:
    _, redis, _ = healthy(plan)
    report = collect(plan, FakeKafka({}, {}), redis, FakeLog({}))
    assert report.ok
    assert not report.lag[0].exists and not report.dead_letters[0].exists
    assert not report.log[0].exists
    text = render_text(report)
    assert "topic missing: run skewless apply" in text and "no log yet" in text
