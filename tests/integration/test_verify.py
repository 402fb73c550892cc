"""`skewless verify` on real Kafka and Redis: a settled store verifies at 100%; a corrupted tile
and a deleted key are found, named and explained; reads while events flow raise no false alarm.

Redis database 8 (flushed before and after each test); topics are unique per test.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.eventlog import EventLogReader
from connectors.kafka import dead_letter_topic
from engine.cli import main
from engine.errors import EventLogMissing
from engine.online import state_key
from engine.store import FeatureStore
from engine.stream.kafka_runtime import WorkerOptions
from engine.verify import VerifyReport
from tests.stream_harness import (
    WorkerThread,
    delete_topics,
    flushed_redis_db,
    payments_repo,
    raw_redis,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

VERIFY_DB = 8
DAY = 86_400_000


@pytest.fixture
def verify_redis_url(redis_service: str) -> Iterator[str]:
    """Redis database 8, flushed at the start and the end of the test."""
    with flushed_redis_db(redis_service, VERIFY_DB) as url:
        yield url


@pytest.fixture
def payments(tmp_path: Path, kafka_service: str, verify_redis_url: str) -> Iterator[FeatureStore]:
    """The example payments definitions on a unique topic, applied."""
    source = unique("verify")
    repo = payments_repo(
        tmp_path / "repo",
        source,
        project=unique("verify"),
        bootstrap=kafka_service,
        redis_url=verify_redis_url,
    )
    store = FeatureStore.from_repo(repo)
    store.apply()
    try:
        yield store
    finally:
        delete_topics(kafka_service, [source, dead_letter_topic(source)])


def events(n: int, seed: int, now: int, customers: int = 30) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "transaction_id": f"t{seed}-{i}",
            "customer_id": f"c{rng.randrange(customers):03d}",
            "merchant_id": f"m{rng.randrange(8)}",
            "amount": rng.choice([None, 0.1, 12.5, 999.99, round(rng.uniform(1, 500), 2)]),
            "currency": rng.choice(["USD", "EUR", "GBP", "XXX"]),
            "country": rng.choice(["DE", "FR", "US"]),
            "card_present": rng.random() < 0.4,
            "ts": now - rng.randrange(3 * DAY),
        }
        for i in range(n)
    ]


def source_of(store: FeatureStore) -> str:
    (source,) = store.plan.sources
    return source


def logged(store: FeatureStore) -> int:
    try:
        return EventLogReader(store.config.event_log_root).count(source_of(store))
    except EventLogMissing:
        return 0


def cli_verify(store: FeatureStore, *args: str) -> int:
    return main(["--repo", str(store.config.repo_path), "verify", *args])


def test_settled_store_verifies_then_corruption_and_deletion_are_explained(
    payments: FeatureStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = payments
    now = int(time.time() * 1000)
    rows = events(600, seed=1, now=now)
    store.push(source_of(store), rows)
    with WorkerThread(store, WorkerOptions(batch_max=200)):
        wait_until(lambda: logged(store) == len(rows), 120, "every event in the log")

        # (1) settled: every sampled value equals the replay; exit 0
        report_md = tmp_path / "reports" / "ok.md"
        code = cli_verify(store, "--sample", "100", "--seed", "3", "--report", str(report_md))
        out = capsys.readouterr().out
        assert code == 0, out
        assert "consistency 100.00%" in out and "seed 3" in out
        text = report_md.read_text()
        assert text.startswith("# skewless verify report") and "**PASS**" in text
        for view in store.plan.views:
            assert f"| {view} |" in text

        # (2) a corrupted tile: the 1d-hop tiles of the busiest customer's customer_spend hash
        counts = Counter(r["customer_id"] for r in rows)
        (busy, _), (other, _) = counts.most_common(2)
        client = raw_redis(store.config.redis_url)
        try:
            key = state_key(store.plan.views["customer_spend"], (busy,))
            day_tiles = [n for n in client.hkeys(key) if b":86400000:" in n]
            assert day_tiles, client.hkeys(key)
            client.hdel(key, *day_tiles)
            report_md = tmp_path / "reports" / "tile.md"
            code = cli_verify(store, "--sample", "100", "--seed", "3", "--report", str(report_md))
            out = capsys.readouterr().out
            assert code == 1, out
            assert f"customer_spend:amount_sum_30d customer_id={busy}" in out
            report = store.verify(sample=100, seed=3)
            wrong = {
                (m.view, m.feature, m.entity["customer_id"], m.kind) for m in report.mismatches
            }
            assert ("customer_spend", "amount_sum_30d", busy, "value_differs") in wrong
            assert {m.entity["customer_id"] for m in report.mismatches} == {busy}
            assert report.unverifiable == () and 0 < report.rate < 1
            text = report_md.read_text()
            assert "**FAIL**" in text and f"customer_id={busy}" in text
            assert "amount_sum_30d" in text and "value differs: online" in text

            # (3) a deleted key: missing online, with the rebuild hint
            client.delete(state_key(store.plan.views["customer_activity"], (other,)))
            report_md = tmp_path / "reports" / "missing.md"
            code = cli_verify(
                store, "--sample", "100", "--view", "customer_activity", "--report", str(report_md)
            )
            out = capsys.readouterr().out
            assert code == 1, out
            report = store.verify(sample=100, views=["customer_activity"])
            assert report.views == ("customer_activity",)
            assert {(m.entity["customer_id"], m.kind) for m in report.mismatches} == {
                (other, "missing_online")
            }
            reason = report.mismatches[0].reason
            assert "entity missing online" in reason
            assert "`skewless rebuild-online customer_activity`" in reason
            text = report_md.read_text()
            assert "missing_online" in text and "rebuild-online customer_activity" in text

            # (4) online ahead of the log for good (a batch written, its log append lost):
            # unverifiable, not a match and not a mismatch; exit 3
            (third, _) = counts.most_common(3)[2]
            view = store.plan.views["customer_online"]
            key = state_key(view, (third,))
            fields = client.hgetall(key)
            fence = next(n for n in fields if n.startswith(b"f:"))
            client.hset(key, fence, int(fields[fence]) + 10_000)
            client.hdel(key, *[n for n in fields if n.startswith((b"t:", b"l:"))])
            code = cli_verify(store, "--view", "customer_online", "--retries", "1")
            out = capsys.readouterr().out
            assert code == 3, out
            assert "online is ahead of the log" in out and f"customer_id={third}" in out
            assert "mismatches (" not in out
        finally:
            client.close()


def test_reads_while_events_flow_raise_no_false_alarm(payments: FeatureStore) -> None:
    store = payments
    source = source_of(store)
    now = int(time.time() * 1000)
    pushed = threading.Event()
    failure: list[BaseException] = []
    total = 0

    def pusher() -> None:
        nonlocal total
        try:
            for chunk in range(12):
                batch = events(120, seed=100 + chunk, now=now, customers=40)
                store.push(source, batch)
                total += len(batch)
                time.sleep(0.15)
        except BaseException as exc:
            failure.append(exc)
        finally:
            pushed.set()

    reports: list[VerifyReport] = []
    with WorkerThread(store, WorkerOptions(batch_max=50, batch_timeout_s=0.02)):
        store.push(source, events(100, seed=99, now=now, customers=40))
        wait_until(lambda: logged(store) == 100, 120, "the first events in the log")
        feeding = threading.Thread(target=pusher)
        feeding.start()
        try:
            while not pushed.is_set() or len(reports) < 3:
                reports.append(store.verify(sample=40, seed=len(reports), retries=2))
        finally:
            feeding.join()
        assert not failure, failure
        wait_until(lambda: logged(store) == 100 + total, 120, "every event in the log")
        settled = store.verify(sample=40, seed=1)
    for report in reports:  # in flight is re-checked or reported unverifiable, never a mismatch
        assert report.mismatches == (), report.to_text()
        assert report.values_checked + report.skipped == sum(v.entities * len(
            store.plan.views[v.view].aggregations) for v in report.per_view)  # fmt: skip
    assert settled.ok, settled.to_text()
    assert sum(r.values_checked for r in reports) > 0
    print(
        f"\n{len(reports)} verify runs while events flowed: "
        f"{sum(r.values_checked for r in reports)} values checked, "
        f"{sum(r.skipped for r in reports)} skipped as in flight, "
        f"{sum(r.rounds - 1 for r in reports)} re-check rounds"
    )
