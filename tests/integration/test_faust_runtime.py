"""The Faust runtime (``skewless worker --runtime faust``) against the real broker and Redis.

Each test runs the worker as a subprocess on the example payments definitions with its own
source (and topic), dead-letter topic, consumer group, log and Redis database 12; then it
checks the online state against an independent fold of the produced events, the log for each
valid (partition, offset) exactly once, and the dead-letter topic for each invalid record.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from connectors.kafka import DLQ_HEADERS, dead_letter_topic
from engine import backfill
from engine.envelope import Envelope
from engine.keys import encode_key
from engine.online import state_key, values_at
from engine.processing import extract
from engine.serde import SourceCodec
from engine.store import FeatureStore
from tests.stream_harness import (
    WorkerProcess,
    committed,
    end_offsets,
    flushed_redis_db,
    log_files,
    logged,
    payments_repo,
    produce_raw,
    raw_redis,
    read_topic,
    redis_dump,
    same,
    unique,
    wait_caught_up,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

FAUST_DB = 12  # this file's Redis database, flushed per test
CUSTOMERS = [f"c{i:03d}" for i in range(60)]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "XXX"]  # XXX: dropped by the to_usd transform


@pytest.fixture
def faust_redis_url(redis_service: str) -> Iterator[str]:
    with flushed_redis_db(redis_service, FAUST_DB) as url:
        yield url


class EnvelopeLog:
    """The produced valid records as an ``EventLogSource`` (in memory) for the backfill."""

    def __init__(self) -> None:
        self.by_partition: dict[int, list[Envelope]] = {}

    def partitions(self, source: str) -> list[int]:
        return sorted(self.by_partition)

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        return iter(sorted(self.by_partition.get(partition, ()), key=lambda e: e.offset))


@dataclass
class Produced:
    """What a test sent: valid records by coordinates, invalid ones with the reason expected."""

    valid: dict[tuple[int, int], tuple[bytes, bytes]]
    invalid: dict[tuple[int, int], tuple[bytes | None, bytes | None, str]]


class Repo:
    """The payments example with a unique source/topic and project (= consumer group)."""

    def __init__(self, tmp_path: Path, bootstrap: str, redis_url: str) -> None:
        self.source = unique("fx")
        self.project = unique("faust")
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.path = payments_repo(
            tmp_path / "repo",
            self.source,
            project=self.project,
            bootstrap=bootstrap,
            redis_url=redis_url,
        )
        self.store = FeatureStore.from_repo(self.path)
        self.plan = self.store.plan
        self.codec = SourceCodec(self.plan.sources[self.source])
        self.group = f"skewless.{self.project}"
        self.log_root = self.store.config.event_log_root
        self.produced = Produced(valid={}, invalid={})
        self.store.apply()  # creates the source and dead-letter topics

    def worker(self, *args: str) -> WorkerProcess:
        return WorkerProcess(self.path, "--runtime", "faust", *args)

    def produce(self, n: int, seed: int, *, invalid: bool = False) -> None:
        rng = random.Random(seed)
        now = int(time.time() * 1000)
        records: list[tuple[bytes | None, bytes | None]] = []
        for i in range(n):
            customer = rng.choice(CUSTOMERS)
            row = {
                "transaction_id": f"t{seed}-{i}",
                "customer_id": customer,
                "merchant_id": f"m{rng.randrange(9)}",
                "amount": None if rng.random() < 0.05 else round(rng.uniform(-5, 900), 2),
                "currency": rng.choice(CURRENCIES),
                "country": rng.choice(["DE", "FR", "US"]),
                "card_present": rng.random() < 0.5,
                "ts": now - rng.randrange(50 * 60_000),  # out of order, all in the last 50 min
            }
            records.append((encode_key([customer]), self.codec.encode(row)))
        bad = self._invalid(now) if invalid else []
        records.extend((k, v) for k, v, _ in bad)
        where = produce_raw(self.bootstrap, self.source, records)
        assert len(where) == len(records)
        for coords, (key, value) in zip(where[:n], records[:n], strict=True):
            assert key is not None and value is not None
            self.produced.valid[coords] = (key, value)
        for coords, letter in zip(where[n:], bad, strict=True):
            self.produced.invalid[coords] = letter

    def _invalid(self, now: int) -> list[tuple[bytes | None, bytes | None, str]]:
        good = {
            "transaction_id": "bad",
            "customer_id": "c001",
            "merchant_id": "m1",
            "amount": 1.0,
            "currency": "USD",
            "country": "DE",
            "card_present": False,
            "ts": now - 1000,
        }
        value = self.codec.encode(good)
        return [
            (b"c001", value[:-3], "bad_avro"),  # truncated
            (b"c002", b"\xff" * 12, "bad_avro"),
            (b"c003", None, "null_value"),
            (b"c004", self.codec.encode({**good, "ts": now + 3 * 86_400_000}), "future_timestamp"),
            (b"c005", self.codec.encode({**good, "amount": float("nan")}), "not_finite"),
            (b"\xc3\x28", value, "bad_key"),
        ]

    # -- checks ------------------------------------------------------------------------------

    def caught_up(self, timeout_s: float = 180) -> None:
        wait_caught_up(self.bootstrap, self.group, [self.source], timeout_s)

    def check_log_exactly_once(self) -> None:
        found = logged(self.log_root, self.source)
        assert set(found) == set(self.produced.valid), "logged != valid records"
        assert set(found.values()) == {1}, "some records logged twice"

    def check_online_equals_fold(self) -> int:
        """Every view's value for every entity, read from Redis, equals the backfill's replay of
        the produced events (an in-memory log of their envelopes, event time as of now: every
        event is minutes old, so none is late and all are older than now) — bit for bit.
        Returns how many values were compared."""
        src = self.plan.sources[self.source]
        views = [v for v in self.plan.views.values() if v.source == self.source]
        now = int(time.time() * 1000)
        log = EnvelopeLog()
        entities: dict[str, set[tuple[Any, ...]]] = {view.name: set() for view in views}
        for (p, o), (key, value) in sorted(self.produced.valid.items()):
            payload = self.codec.decode(key, value, now_ms=now)
            env = Envelope(partition=p, offset=o, key=key, event_time_ms=payload["ts"],
                           processed_at_ms=now, payload=payload)  # fmt: skip
            log.by_partition.setdefault(p, []).append(env)
            for view in views:
                found = extract(view, src, env, include_late=True)
                if found is not None:
                    entities[view.name].add(found.entity)
        t = int(time.time() * 1000)
        requests = [
            backfill.ViewRequest(view=name, entities=sorted(keys, key=repr),
                                 times_ms=[t] * len(keys),
                                 indices=tuple(range(len(self.plan.views[name].aggregations))))
            for name, keys in entities.items() if keys
        ]  # fmt: skip
        folds = backfill.run(self.plan, log, requests, mode="event_time", include_late=True)
        client = raw_redis(self.redis_url)
        compared = 0
        try:
            for request, wanted in zip(requests, folds, strict=True):
                view = self.plan.views[request.view]
                # decode_responses is off: field names and values are bytes
                hashes = [cast(dict[bytes, bytes], client.hgetall(state_key(view, e)))
                          for e in request.entities]  # fmt: skip
                online = values_at(view, hashes, t)
                for entity, fields, got, want in zip(
                    request.entities, hashes, online, wanted, strict=True
                ):
                    assert fields, f"{view.name} {entity}: no online state"
                    for agg, g, w in zip(view.aggregations, got, want, strict=True):
                        assert same(g, w), (
                            f"{view.name}:{agg.feature} {entity}: online {g!r} != fold {w!r}"
                        )
                        compared += 1
        finally:
            client.close()
        assert compared > 0
        return compared

    def check_dead_letters(self) -> None:
        letters = read_topic(self.bootstrap, dead_letter_topic(self.source))
        got: dict[tuple[int, int], tuple[bytes | None, bytes | None, str]] = {}
        for letter in letters:
            h = letter.headers
            assert set(DLQ_HEADERS) <= set(h), h
            assert h["skewless.source_topic"] == self.source.encode()
            assert h["skewless.reason"], "empty reason"
            where = (int(h["skewless.source_partition"]), int(h["skewless.source_offset"]))
            assert where not in got, f"dead letter {where} sent twice"
            got[where] = (letter.key, letter.value, h["skewless.reason_code"].decode())
        assert got == self.produced.invalid


def test_faust_worker_folds_logs_and_dead_letters_every_record(
    tmp_path: Path, kafka_service: str, faust_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, faust_redis_url)
    repo.produce(1500, seed=1, invalid=True)
    repo.produce(1500, seed=2, invalid=True)
    worker = repo.worker("--batch-max", "700")
    try:
        repo.caught_up(120)
    finally:
        code = worker.terminate()
    assert code == 0, worker.text()
    text = worker.text()
    assert "SIGTERM: finishing the batch in hand" in text
    assert "retries 0" in text and "refused {" in text, text[-2000:]
    repo.check_log_exactly_once()
    assert repo.check_online_equals_fold() > 1000
    repo.check_dead_letters()


def test_faust_sigterm_drains_commits_and_a_restart_repeats_nothing(
    tmp_path: Path, kafka_service: str, faust_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, faust_redis_url)
    stop_pushing = threading.Event()

    def pusher() -> None:  # events keep flowing while the worker stops and restarts
        for i in range(25):
            if stop_pushing.is_set():
                return
            repo.produce(400, seed=100 + i, invalid=i % 10 == 0)
            time.sleep(0.15)

    feeding = threading.Thread(target=pusher)
    feeding.start()
    try:
        first = repo.worker("--batch-max", "300")
        wait_until(
            lambda: any(o > 0 for o in committed(kafka_service, repo.group, repo.source).values()),
            90,
            "a first commit",
        )
        assert first.terminate() == 0, first.text()
        # the stop drained: committed offsets are exactly one past what the log holds
        done = committed(kafka_service, repo.group, repo.source)
        found = logged(repo.log_root, repo.source)
        for p, offset in done.items():
            mine = sorted(o for q, o in found if q == p)
            invalid = {o for q, o in repo.produced.invalid if q == p}
            expected = [o for o in range(max(offset, 0)) if o not in invalid]
            assert mine == expected, f"partition {p}: log != committed range"
    finally:
        stop_pushing.set()  # only when the first worker failed: the pusher ends on its own
        feeding.join()
    assert sum(max(o, 0) for o in done.values()) < len(repo.produced.valid)
    second = repo.worker()
    try:
        repo.caught_up()
    finally:
        assert second.terminate() == 0, second.text()
    repo.check_log_exactly_once()
    repo.check_online_equals_fold()
    repo.check_dead_letters()
    files, state = log_files(repo.log_root, repo.source), redis_dump(faust_redis_url)
    third = repo.worker()
    try:
        wait_until(lambda: "assigned " in third.text(), 60, "the third worker's assignment")
        time.sleep(2)
    finally:
        assert third.terminate() == 0, third.text()
    assert "]: 0 records" in third.text(), third.text()[-2000:]
    assert log_files(repo.log_root, repo.source) == files
    assert redis_dump(faust_redis_url) == state


def test_faust_kill_9_then_restart_loses_and_doubles_nothing(
    tmp_path: Path, kafka_service: str, faust_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, faust_redis_url)
    repo.produce(12_000, seed=7)
    first = repo.worker("--batch-max", "400")
    try:
        wait_until(
            lambda: (
                sum(max(o, 0) for o in committed(kafka_service, repo.group, repo.source).values())
                > 1000
            ),
            90,
            "a thousand committed records",
        )
    finally:
        first.kill()  # SIGKILL: no drain, no final commit
    replayed = sum(end_offsets(kafka_service, repo.source).values()) - sum(
        max(o, 0) for o in committed(kafka_service, repo.group, repo.source).values()
    )
    assert replayed > 0
    repo.produce(2_000, seed=8)
    second = repo.worker()
    try:
        repo.caught_up()
    finally:
        assert second.terminate() == 0, second.text()
    repo.check_log_exactly_once()
    repo.check_online_equals_fold()


def test_two_faust_workers_share_the_partitions_across_rebalances(
    tmp_path: Path, kafka_service: str, faust_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, faust_redis_url)
    repo.produce(4000, seed=11)
    a = repo.worker("--batch-max", "300")
    b: WorkerProcess | None = None
    try:
        wait_until(lambda: "assigned " in a.text(), 60, "the first worker's assignment")
        repo.produce(4000, seed=12)
        b = repo.worker("--batch-max", "300")  # joins mid-stream: a rebalance moves partitions
        wait_until(lambda: "revoked " in a.text(), 90, "a rebalance")
        repo.produce(4000, seed=13)
        repo.caught_up()
        mine_a, mine_b = _last_assignment(a.text()), _last_assignment(b.text())
        assert mine_a and mine_b and not (mine_a & mine_b), (mine_a, mine_b)
        assert mine_a | mine_b == {0, 1, 2, 3}
        repo.check_online_equals_fold()
        # b leaves: its partitions come back to a, whose cached state of them is now stale
        assert b.terminate() == 0, b.text()
        wait_until(lambda: _last_assignment(a.text()) == {0, 1, 2, 3}, 90, "a to own everything")
        repo.produce(4000, seed=14)
        repo.caught_up()
    finally:
        codes = [a.terminate()] + ([b.terminate()] if b is not None else [])
    assert codes == [0, 0], a.text()[-3000:] + (b.text()[-3000:] if b else "")
    repo.check_log_exactly_once()
    repo.check_online_equals_fold()


@pytest.mark.single_redis  # its own single Redis, started late
def test_faust_redis_outage_backs_off_without_committing_then_catches_up(
    tmp_path: Path, kafka_service: str
) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not on the PATH")
    with socket.socket() as s:  # a port where nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    repo = Repo(tmp_path, kafka_service, url)
    repo.produce(1500, seed=21, invalid=True)
    worker = repo.worker("--batch-max", "500")
    redis_proc: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: worker.text().count("failed, attempt") >= 3, 90, "retries")
        assert all(o < 0 for o in committed(kafka_service, repo.group, repo.source).values())
        assert logged(repo.log_root, repo.source) == Counter()
        assert "Redis at 127.0.0.1" in worker.text()
        redis_proc = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        repo.caught_up(120)
        assert worker.terminate() == 0, worker.text()[-3000:]
        repo.check_log_exactly_once()
        repo.check_online_equals_fold()
        repo.check_dead_letters()
    finally:
        worker.kill()  # a no-op when it stopped already
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(30)


def _last_assignment(text: str) -> set[int]:
    lines = [
        line for line in text.splitlines() if "skewless.worker" in line and "assigned " in line
    ]
    if not lines:
        return set()
    inside = lines[-1].rsplit("[", 1)[1].rstrip("]")
    return {int(p) for p in inside.split(",") if p.strip()}


def _local_counts(text: str, source: str) -> dict[str, int]:
    """The counts of the last "<source>: local state: …" line a worker logged at its stop."""
    lines = [line for line in text.splitlines() if f"{source}: local state:" in line]
    assert lines, f"no local-state line for {source}:\n{text[-3000:]}"
    words = lines[-1].split("local state:")[1].replace(",", "").split()
    return {"hits": int(words[0]), "stale": int(words[2]), "loaded": int(words[4]),
            "spilled": int(words[8])}  # fmt: skip


def test_faust_local_state_bounds_the_cache_and_a_restart_starts_warm(
    tmp_path: Path, kafka_service: str, faust_redis_url: str
) -> None:
    """`--cache-entities`/`--local-state` reach the Faust runtime: a bounded cache spills to
    RocksDB and loads back, Faust's revoke at shutdown spills the rest, and a restart takes
    its states from the local store (after the marks check) instead of Redis — with the
    online state still equal to the fold."""
    repo = Repo(tmp_path, kafka_service, faust_redis_url)
    repo.produce(900, seed=31)  # 60 customers, 9 merchants; 8 states cached
    first = repo.worker("--batch-max", "150", "--cache-entities", "8", "--local-state")
    try:
        repo.caught_up()
    finally:
        assert first.terminate() == 0, first.text()
    bounded = _local_counts(first.text(), repo.source)
    assert bounded["spilled"] > 60 and bounded["hits"] > 60 and bounded["stale"] == 0, bounded
    repo.check_online_equals_fold()

    repo.produce(300, seed=32)  # a restart: every state is in the local store
    second = repo.worker("--batch-max", "1000", "--local-state")
    try:
        repo.caught_up()
    finally:
        assert second.terminate() == 0, second.text()
    warm = _local_counts(second.text(), repo.source)
    assert warm["hits"] >= 60 and warm["stale"] == 0, warm
    assert warm["loaded"] < warm["hits"] / 4, warm  # Redis loaded only what it never saw
    repo.check_log_exactly_once()
    repo.check_online_equals_fold()
