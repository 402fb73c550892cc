"""``skewless status`` and the worker's ``/metrics`` against the real broker, Redis and log:
every number is checked against what the test reads from the services itself.

Redis database 7 (flushed before and after each test); every test has its own topics and group.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka import dead_letter_topic
from engine.cli import main
from engine.keys import encode_key, partition_for
from engine.online import stats_key
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.kafka_runtime import WorkerOptions
from tests.stream_harness import (
    WorkerProcess,
    WorkerThread,
    committed,
    delete_topics,
    end_offsets,
    flushed_redis_db,
    log_files,
    produce_raw,
    raw_redis,
    unique,
    wait_caught_up,
    wait_until,
    write_repo,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

STATUS_DB = 7
PARTITIONS = 4
DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": ["null", "string"], "default": None},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "ts", "type": "long"},
    ],
}
customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("TOPIC", topic="TOPIC", schema=SCHEMA, timestamp_field="ts")
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="1h"),
    Aggregation("amount", "count", window="1d"),
])
"""


@pytest.fixture
def status_redis_url(redis_service: str) -> Iterator[str]:
    """Redis database 7, flushed at the start and the end of the test."""
    with flushed_redis_db(redis_service, STATUS_DB) as url:
        yield url


class Repo:
    def __init__(self, root: Path, bootstrap: str, redis_url: str) -> None:
        self.topic = unique("st")
        self.project = unique("status")
        self.bootstrap = bootstrap
        self.path = write_repo(root / "repo", DEFS.replace("TOPIC", self.topic),
                               project=self.project, bootstrap=bootstrap, redis_url=redis_url,
                               partitions=PARTITIONS)  # fmt: skip
        self.store = FeatureStore.from_repo(self.path)
        self.group = f"skewless.{self.project}"
        self.dlq = dead_letter_topic(self.topic)
        self.rows: list[dict[str, Any]] = []

    def push(self, n: int, seed: int) -> None:
        """``n`` valid rows with event times increasing in push order (so the last write of
        each partition holds its newest event)."""
        rng = random.Random(seed)
        now = int(time.time() * 1000)
        rows = [
            {"customer_id": f"c{rng.randrange(30):02d}", "amount": float(rng.randrange(100)),
             "ts": now - 600_000 + len(self.rows) + i}
            for i in range(n)
        ]  # fmt: skip
        assert self.store.push(self.topic, rows) == n
        self.rows += rows

    def push_invalid(self) -> Counter[str]:
        codec = SourceCodec(self.store.plan.sources[self.topic])
        good = codec.encode({"customer_id": "c01", "amount": 1.0, "ts": int(time.time() * 1000)})
        bad = [(b"c01", good[:-2], "bad_avro"), (b"c02", None, "null_value"),
               (b"c03", good[:-1], "bad_avro")]  # fmt: skip
        produce_raw(self.bootstrap, self.topic, [(k, v) for k, v, _ in bad])
        return Counter(code for _, _, code in bad)

    def newest_per_partition(self, count: int | None = None) -> dict[int, int]:
        """Newest event time per partition among the first ``count`` rows pushed."""
        out: dict[int, int] = {}
        for row in self.rows[:count]:
            p = partition_for(encode_key([row["customer_id"]]), PARTITIONS)
            out[p] = max(out.get(p, row["ts"]), row["ts"])
        return out


@pytest.fixture
def repos(kafka_service: str) -> Iterator[list[Repo]]:
    made: list[Repo] = []
    yield made
    for repo in made:
        delete_topics(kafka_service, [repo.topic, repo.dlq])


def test_status_matches_the_services_after_a_worker_run(
    tmp_path: Path,
    kafka_service: str,
    status_redis_url: str,
    repos: list[Repo],
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = Repo(tmp_path, kafka_service, status_redis_url)
    repos.append(repo)
    repo.store.apply()
    repo.push(300, seed=1)
    refused = repo.push_invalid()
    started = int(time.time() * 1000)
    with WorkerThread(repo.store, WorkerOptions(batch_max=120)) as worker:
        wait_caught_up(kafka_service, repo.group, [repo.topic], 120)
        worker.stop()
    stopped = int(time.time() * 1000)
    repo.push(25, seed=2)  # not consumed: lag

    report = repo.store.status()
    assert report.ok, [s.error for s in report.services]
    ends, commits = (
        end_offsets(kafka_service, repo.topic),
        committed(kafka_service, repo.group, repo.topic),
    )
    (lag,) = report.lag
    assert [(p.partition, p.committed, p.end) for p in lag.partitions] == [
        (p, commits[p], ends[p]) for p in range(PARTITIONS)
    ]
    assert lag.lag == 25 == sum(ends[p] - commits[p] for p in range(PARTITIONS))
    assert repo.store.consumer_lag() == {
        (repo.topic, p): ends[p] - commits[p] for p in range(PARTITIONS)
    }
    (dead,) = report.dead_letters
    assert dead.total == sum(refused.values()) == sum(end_offsets(kafka_service, repo.dlq).values())

    (view,) = report.views
    customers = {r["customer_id"] for r in repo.rows[:300]}
    assert (view.keys, view.keys_estimated) == (len(customers), False)
    newest = repo.newest_per_partition(300)  # the 25 rows came after the worker stopped
    assert {p: s.newest_event_ms for p, s in view.partitions.items()} == newest
    assert view.newest_event_ms == max(r["ts"] for r in repo.rows[:300])
    client = raw_redis(status_redis_url)
    try:
        raw = client.hgetall(stats_key(view.fingerprint))
    finally:
        client.close()
    names = {k if isinstance(k, str) else k.decode() for k in raw}
    assert names == {f"{kind}:{p}" for kind in "ew" for p in newest}
    assert view.last_write_ms is not None and started <= view.last_write_ms <= stopped
    assert report.key_scan is not None
    scan = report.key_scan
    assert scan.db_keys == scan.scanned and not scan.capped
    # besides the entities: the stats hash and other bookkeeping keys, not counted as entities
    assert scan.other_keys == scan.db_keys - len(customers) >= 1 and scan.retired_keys == 0
    assert report.used_memory is not None and report.used_memory > 0

    (usage,) = report.log
    files = log_files(repo.store.config.event_log_root, repo.topic)
    assert usage.files == len(files) and usage.bytes == sum(files.values()) > 0
    per_partition = Counter(int(name.split("partition=")[1].split("/")[0]) for name in files)
    assert {p: f for p, (f, _) in usage.partitions.items()} == dict(per_partition)

    assert main(["--repo", str(repo.path), "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["consumer_lag"][repo.topic]["lag"] == 25
    assert doc["views"]["spend"]["keys"] == len(customers)
    assert doc["dead_letters"][repo.topic]["total"] == 3
    assert main(["--repo", str(repo.path), "status"]) == 0
    text = capsys.readouterr().out
    assert f"Kafka {kafka_service}" in text and f"Redis {status_redis_url}" in text
    assert repo.dlq in text and view.fingerprint in text


@pytest.mark.single_redis  # a single Redis where none listens
def test_status_says_which_service_is_down_prints_the_rest_and_no_secret(
    tmp_path: Path,
    kafka_service: str,
    status_redis_url: str,
    repos: list[Repo],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "s3cr3t-Pw"
    repo = Repo(tmp_path, kafka_service, f"redis://app:{secret}@127.0.0.1:{port}/{STATUS_DB}")
    repos.append(repo)
    repo.store.apply()
    repo.push(20, seed=3)
    assert main(["--repo", str(repo.path), "status"]) == 1
    text = capsys.readouterr().out
    assert f"127.0.0.1:{port}/{STATUS_DB}  UNAVAILABLE" in text  # the Redis heading
    assert f"127.0.0.1:{port}/{STATUS_DB} failed" in text  # the address the error names
    assert secret not in text
    assert f"Kafka {kafka_service}\n" in text and repo.topic in text  # the rest is there
    assert "no log yet" in text
    assert main(["--repo", str(repo.path), "status", "--json"]) == 1
    out = capsys.readouterr().out
    assert secret not in out
    doc = json.loads(out)
    assert doc["ok"] is False and doc["services"]["redis"]["available"] is False
    assert doc["consumer_lag"][repo.topic]["lag"] == 20

    other = Repo(tmp_path / "down", f"127.0.0.1:{port}", status_redis_url)
    assert main(["--repo", str(other.path), "status", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    kafka = doc["services"]["kafka"]
    assert kafka["available"] is False and f"127.0.0.1:{port}" in kafka["error"]
    assert doc["services"]["redis"]["available"] is True and doc["views"]["spend"]["keys"] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return got.get((name, frozenset(labels.items())))


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_worker_metrics_match_what_it_consumed(
    tmp_path: Path, kafka_service: str, status_redis_url: str, repos: list[Repo], runtime: str
) -> None:
    repo = Repo(tmp_path, kafka_service, status_redis_url)
    repos.append(repo)
    repo.store.apply()
    repo.push(150, seed=4)
    refused = repo.push_invalid()
    port = free_port()
    worker = WorkerProcess(repo.path, "--runtime", runtime, "--metrics-port", str(port),
                           "--metrics-host", "127.0.0.1", "--metrics-lag-interval", "0.2")  # fmt: skip
    try:
        wait_caught_up(kafka_service, repo.group, [repo.topic], 120)
        caught_up_s = time.time()
        t = repo.topic

        def settled() -> bool:
            try:
                got = scrape(port)
            except OSError:
                return False
            lags = [sample(got, "skewless_consumer_lag", topic=t, partition=str(p))
                    for p in range(PARTITIONS)]  # fmt: skip
            stamp = sample(got, "skewless_consumer_lag_timestamp_seconds") or 0
            return (
                sample(got, "skewless_records_total", topic=t) == 153
                and stamp > caught_up_s
                and all(lag == 0 for lag in lags)
            )

        wait_until(settled, 60, "the metrics to show every record and no lag")
        got = scrape(port)
    finally:
        assert worker.terminate() == 0, worker.text()
    assert sample(got, "skewless_applied_total", topic=t) == 150
    assert sample(got, "skewless_late_total", topic=t) == 0
    for reason, n in refused.items():
        assert sample(got, "skewless_refused_total", topic=t, reason=reason) == n
    batches = sample(got, "skewless_batches_total", topic=t)
    assert batches is not None and batches >= 1
    assert sample(got, "skewless_batch_duration_seconds_count", topic=t) == batches
    assert sample(got, "skewless_assigned_partitions", topic=t) == PARTITIONS
    assert sample(got, "skewless_backoff_seconds", topic=t) == 0
    for p, newest_ms in repo.newest_per_partition().items():
        assert sample(
            got, "skewless_newest_event_timestamp_seconds", topic=t, partition=str(p)
        ) == (newest_ms / 1000)
    freshness = sample(got, "skewless_freshness_seconds_count", topic=t)
    assert freshness is not None and freshness >= PARTITIONS  # every partition had a batch
    assert sample(got, "skewless_worker_info", runtime=runtime, group=repo.group) == 1
    assert (sample(got, "process_resident_memory_bytes") or 0) > 0
