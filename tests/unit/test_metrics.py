"""Worker metrics: what each hook counts, the kafka runtime's loop calling the hooks, and the
HTTP exporter with its lag thread (scraped over a real socket).

A worker process scraped end to end over real Kafka and Redis: tests/integration/test_status.py.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from engine import metrics
from engine.errors import ConfigError, KafkaUnavailable, OnlineStoreUnavailable
from engine.metrics import WorkerMetrics, serve
from engine.stream.core import BatchOutcome
from tests.unit.stream.test_kafka_runtime_loop import TOPIC, FakeProcessor, rec, worker_for

NOW = 1_800_000_000_000


def outcome(**overrides: object) -> BatchOutcome:
    fields: dict[str, object] = dict(
        commits={0: 10}, processed_at_ms=NOW, records=12, refused=Counter(bad_avro=2, null_key=1),
        applied=14, late=1, fenced=3, entities_written=5,
        newest_event_ms={0: NOW - 250, 3: NOW - 4_000},
    )  # fmt: skip
    fields.update(overrides)
    return BatchOutcome(**fields)  # type: ignore[arg-type]


def value(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_a_batch_counts_records_outcomes_refusals_and_freshness() -> None:
    m = WorkerMetrics(CollectorRegistry())
    m.observe_batch("tx", outcome(), 0.02, now_ms=NOW)
    m.observe_batch(
        "tx", outcome(refused=Counter(bad_avro=1), newest_event_ms={}, rebuilt=3), 2.0, now_ms=NOW
    )
    assert value(m, "skewless_records_total", topic="tx") == 24
    assert value(m, "skewless_applied_total", topic="tx") == 28
    assert value(m, "skewless_late_total", topic="tx") == 2
    assert value(m, "skewless_fenced_total", topic="tx") == 6
    assert value(m, "skewless_entities_written_total", topic="tx") == 10
    assert value(m, "skewless_refused_total", topic="tx", reason="bad_avro") == 3
    assert value(m, "skewless_refused_total", topic="tx", reason="null_key") == 1
    assert value(m, "skewless_batches_total", topic="tx") == 2
    assert value(m, "skewless_state_rebuilds_total", topic="tx") == 3
    assert value(m, "skewless_batch_duration_seconds_count", topic="tx") == 2
    assert value(m, "skewless_batch_duration_seconds_bucket", topic="tx", le="0.025") == 1
    assert value(m, "skewless_batch_duration_seconds_sum", topic="tx") == pytest.approx(2.02)
    # one freshness observation per partition of a batch: 0.25 s and 4 s
    assert value(m, "skewless_freshness_seconds_count", topic="tx") == 2
    assert value(m, "skewless_freshness_seconds_sum", topic="tx") == pytest.approx(4.25)
    assert value(m, "skewless_freshness_seconds_bucket", topic="tx", le="0.25") == 1
    assert value(m, "skewless_freshness_seconds_bucket", topic="tx", le="2.5") == 1
    assert value(m, "skewless_newest_event_timestamp_seconds", topic="tx", partition="3") == (
        (NOW - 4_000) / 1000
    )
    assert value(m, "skewless_last_batch_timestamp_seconds", topic="tx") == NOW / 1000
    assert value(m, "skewless_records_total", topic="other") is None


def test_failures_set_the_backoff_until_a_batch_succeeds() -> None:
    m = WorkerMetrics(CollectorRegistry())
    m.observe_failure("tx", OnlineStoreUnavailable("Redis at h:1/0 failed"), 0.4)
    m.observe_failure("tx", KafkaUnavailable("Kafka at h:9092"), 0.8)
    m.observe_failure("tx", OnlineStoreUnavailable("again"), 1.6)
    err = "skewless_batch_failures_total"
    assert value(m, err, topic="tx", error="OnlineStoreUnavailable") == 2
    assert value(m, err, topic="tx", error="KafkaUnavailable") == 1
    assert value(m, "skewless_backoff_seconds", topic="tx") == 1.6
    m.observe_batch("tx", outcome(), 0.1, now_ms=NOW)
    assert value(m, "skewless_backoff_seconds", topic="tx") == 0


def test_rebalances_track_the_owned_partitions() -> None:
    m = WorkerMetrics(CollectorRegistry())
    m.observe_rebalance("assigned", [("tx", 0), ("tx", 1), ("tx", 3), ("ty", 0)])
    m.observe_batch("tx", outcome(), 0.1, now_ms=NOW)
    m.observe_rebalance("revoked", [("tx", 3), ("ty", 0)])
    m.observe_rebalance("lost", [("tx", 0)])
    assert value(m, "skewless_assigned_partitions", topic="tx") == 1
    assert value(m, "skewless_assigned_partitions", topic="ty") == 0
    assert value(m, "skewless_rebalances_total", kind="assigned") == 1
    assert value(m, "skewless_rebalances_total", kind="revoked") == 1
    assert value(m, "skewless_rebalances_total", kind="lost") == 1
    newest = "skewless_newest_event_timestamp_seconds"
    assert value(m, newest, topic="tx", partition="3") is None  # no longer ours
    assert value(m, newest, topic="tx", partition="0") is None


def test_commits_and_lag() -> None:
    m = WorkerMetrics(CollectorRegistry())
    m.observe_commit(ok=True, now_ms=NOW)
    m.observe_commit(ok=False)
    assert value(m, "skewless_commits_total") == 1
    assert value(m, "skewless_commit_failures_total") == 1
    assert value(m, "skewless_last_commit_timestamp_seconds") == NOW / 1000
    m.set_consumer_lag({("tx", 0): 7, ("tx", 1): 0}, now_ms=NOW)
    m.set_consumer_lag({("tx", 1): 3}, now_ms=NOW + 1000)
    assert value(m, "skewless_consumer_lag", topic="tx", partition="1") == 3
    assert value(m, "skewless_consumer_lag", topic="tx", partition="0") is None  # gone
    assert value(m, "skewless_consumer_lag_timestamp_seconds") == NOW / 1000 + 1


def test_the_kafka_runtime_calls_the_hooks() -> None:
    m = metrics.METRICS

    def read() -> dict[str, float | None]:
        return {
            "records": value(m, "skewless_records_total", topic=TOPIC),
            "batches": value(m, "skewless_batches_total", topic=TOPIC),
            "failures": value(
                m, "skewless_batch_failures_total", topic=TOPIC, error="ConnectionError"
            ),
            "commits": value(m, "skewless_commits_total"),
            "commit_failures": value(m, "skewless_commit_failures_total"),
            "assigned": value(m, "skewless_rebalances_total", kind="assigned"),
        }

    before = read()
    processor = FakeProcessor(failures=2)
    worker, consumer, stop = worker_for(processor, [[rec(0, 0), rec(1, 0)], [rec(0, 1)]])
    consumer.fail_commits = 1
    worker.run(stop)
    after = read()
    delta = {k: (after[k] or 0) - (before[k] or 0) for k in after}
    assert delta == {"records": 3, "batches": 2, "failures": 2, "commits": 1,
                     "commit_failures": 1, "assigned": 1}  # fmt: skip
    assert value(m, "skewless_backoff_seconds", topic=TOPIC) == 0
    assert value(m, "skewless_assigned_partitions", topic=TOPIC) == 2  # the fake assigns 0 and 1


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_serve_exposes_the_registry_and_refreshes_the_lag() -> None:
    m = WorkerMetrics(CollectorRegistry())
    calls = {"n": 0}

    def lag() -> Mapping[tuple[str, int], int]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KafkaUnavailable("Kafka at 127.0.0.1:1: listing topics failed")
        return {("tx", 0): 40 + calls["n"], ("tx", 2): 0}

    server = serve(0, host="127.0.0.1", lag=lag, lag_interval_s=0.01, metrics=m,
                   info={"runtime": "kafka", "group": "skewless.demo"})  # fmt: skip
    try:
        assert server.port > 0 and server.url.endswith(f":{server.port}/metrics")
        m.observe_batch("tx", outcome(), 0.01, now_ms=NOW)
        wait_for(lambda: calls["n"] >= 3, "three lag refreshes")
        got = scrape(server.url)
        assert got[("skewless_records_total", (("topic", "tx"),))] == 12
        assert (
            got[("skewless_worker_info", (("group", "skewless.demo"), ("runtime", "kafka")))] == 1
        )
        lag_now = got[("skewless_consumer_lag", (("partition", "0"), ("topic", "tx")))]
        assert lag_now >= 43  # refreshed again after the failed refresh
        assert got[("skewless_consumer_lag", (("partition", "2"), ("topic", "tx")))] == 0
        assert got[("skewless_consumer_lag_failures_total", ())] == 1
        assert not any(name.endswith("_created") for name, _ in got)
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
            serve(server.port, host="127.0.0.1", metrics=WorkerMetrics(CollectorRegistry()))
    finally:
        server.close()
