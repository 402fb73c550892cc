"""The kafka runtime against the real broker and Redis: apply, push, worker, drain, restart and
a shared consumer group (dead letters: test_bad_input.py). Every test has its own topics, group
and log."""

from __future__ import annotations

import math
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from connectors.kafka import KafkaSettings, dead_letter_topic, topic_partitions
from engine.errors import InputDataError, KafkaUnavailable
from engine.keys import encode_key, partition_for
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.kafka_runtime import WorkerOptions
from tests.stream_harness import (
    WorkerProcess,
    WorkerThread,
    committed,
    delete_topics,
    end_offsets,
    log_files,
    logged,
    raw_redis,
    read_topic,
    redis_dump,
    same,
    unique,
    wait_caught_up,
    wait_until,
    write_repo,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": ["null", "string"], "default": None},
        {"name": "merchant_id", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "ts", "type": "long"},
    ],
}
customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("AVRO", topic="AVRO", schema=SCHEMA, timestamp_field="ts")
txj = KafkaSource("JSON", topic="JSON", schema=SCHEMA, timestamp_field="ts", format="json")
spend = FeatureView(
    "spend",
    entity=customer,
    source=tx,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "count", window="1d"),
        Aggregation("amount", "mean", window="10m"),
        Aggregation("merchant_id", "count_distinct", window="1d"),
        Aggregation("amount", "last", window="lifetime"),
    ],
)
spend_json = FeatureView(
    "spend_json",
    entity=customer,
    source=txj,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "count", window="lifetime"),
    ],
)
"""
SPEND = [
    "spend:amount_sum_1h",
    "spend:amount_count_1d",
    "spend:amount_mean_10m",
    "spend:merchant_id_count_distinct_1d",
    "spend:amount_last_lifetime",
]
SPEND_JSON = ["spend_json:amount_sum_1h", "spend_json:amount_count_lifetime"]
CUSTOMERS = [f"c{i:03d}" for i in range(40)]
HOP_1H_MS = 300_000  # default hop of a 1h window


class Repo:
    """A throwaway definitions repo with its own two topics and consumer group."""

    def __init__(self, tmp_path: Path, bootstrap: str, redis_url: str, partitions: int = 4) -> None:
        self.avro = unique("tx")
        self.json = unique("txj")
        self.project = unique("it")
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        defs = DEFS.replace("AVRO", self.avro).replace("JSON", self.json)
        self.path = write_repo(
            tmp_path / "repo",
            defs,
            project=self.project,
            bootstrap=bootstrap,
            redis_url=redis_url,
            partitions=partitions,
        )
        self.store = FeatureStore.from_repo(self.path)
        self.group = f"skewless.{self.project}"
        self.log_root = self.store.config.event_log_root
        _REPOS.append(self)

    @property
    def topics(self) -> list[str]:
        return [t for s in (self.avro, self.json) for t in (s, dead_letter_topic(s))]


_REPOS: list[Repo] = []


@pytest.fixture(autouse=True)
def _drop_topics(kafka_service: str) -> Iterator[None]:
    """Each test's topics are deleted after it, so the shared broker does not fill up."""
    _REPOS.clear()
    yield
    for repo in _REPOS:
        if repo.bootstrap == kafka_service:
            delete_topics(kafka_service, repo.topics)
    _REPOS.clear()


def rows(n: int, seed: int, now_ms: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            {
                "customer_id": rng.choice(CUSTOMERS),
                "merchant_id": f"m{rng.randrange(7)}",
                "amount": None if rng.random() < 0.05 else round(rng.uniform(-5, 500), 2),
                "ts": now_ms - rng.randrange(50 * 60_000),  # out of order, all in the last 50 min
            }
        )
    return out


def publish(repo: Repo, n: int, seed: int) -> None:
    """Push ``n`` valid rows to each topic in three rounds. (Bad records mixed with valid ones,
    for both runtimes, are tests/integration/test_bad_input.py's, from the catalogue in
    tests/bad_inputs.py.)"""
    valid = rows(n, seed, int(time.time() * 1000))
    for part in range(3):
        chunk = valid[part::3]
        assert repo.store.push(repo.avro, chunk) == len(chunk)
        assert repo.store.push(repo.json, pd.DataFrame(chunk)) == len(chunk)


def all_coordinates(bootstrap: str, topic: str) -> set[tuple[int, int]]:
    return {(p, o) for p, end in end_offsets(bootstrap, topic).items() for o in range(end)}


def check_log_exactly_once(repo: Repo, bad: dict[tuple[str, int, int], Any]) -> None:
    for source in (repo.avro, repo.json):
        valid = all_coordinates(repo.bootstrap, source) - {(p, o) for t, p, o in bad if t == source}
        found = logged(repo.log_root, source)
        assert set(found) == valid, f"{source}: logged != valid records"
        assert all(n == 1 for n in found.values()), f"{source}: some records logged twice"


def check_online_equals_backfill(repo: Repo, t_ms: int, features: list[str] = SPEND) -> None:
    """Online values at ``t_ms`` == processing-time backfill at ``t_ms``, bit for bit."""
    rows_ = [{"customer_id": c} for c in CUSTOMERS]
    online = repo.store.get_online_features(features, rows_, now_ms=t_ms, full_feature_names=True)
    labels = pd.DataFrame({"customer_id": CUSTOMERS, "event_timestamp": [t_ms] * len(CUSTOMERS)})
    hist = repo.store.get_historical_features(
        labels, features, mode="processing_time", workers=1, full_feature_names=True
    )
    got_all = online.to_dict()
    compared = 0
    for ref in features:
        column = ref.replace(":", "__")
        for i, c in enumerate(CUSTOMERS):
            got, want = got_all[column][i], hist[column].iloc[i]
            assert same(got, want), f"{ref} {c}: online {got!r} != backfill {want!r}"
            compared += 1
    assert compared == len(features) * len(CUSTOMERS)


def fold_by_hand(events: list[dict[str, Any]], t_ms: int) -> dict[str, tuple[int, float]]:
    """customer → (count of events, exact sum of amounts in the 1h window as of t)."""
    start = -(-t_ms // HOP_1H_MS) * HOP_1H_MS - 3_600_000
    out: dict[str, tuple[int, float]] = {}
    for c in CUSTOMERS:
        mine = [e for e in events if e["customer_id"] == c]
        window = [e["amount"] for e in mine if e["amount"] is not None and start <= e["ts"] < t_ms]
        out[c] = (len(mine), math.fsum(window))
    return out


# -- apply and push --------------------------------------------------------------------------


def test_apply_creates_source_and_dead_letter_topics_once(
    tmp_path: Path, kafka_service: str, stream_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    repo = Repo(tmp_path, kafka_service, stream_redis_url, partitions=3)
    wanted = {
        repo.avro: 3,
        repo.json: 3,
        dead_letter_topic(repo.avro): 3,
        dead_letter_topic(repo.json): 3,
    }
    first = repo.store.apply()
    assert first.topics_created == wanted
    assert first.diff.added == ("spend", "spend_json")
    assert topic_partitions(KafkaSettings.from_config(repo.store.config), wanted) == wanted
    assert main(["--repo", str(repo.path), "apply"]) == 0
    out = capsys.readouterr().out
    assert f"exists   topic {repo.avro}" in out and "created" not in out
    assert "no changes" in out
    assert repo.store.apply().topics_created == {}


def test_apply_without_kafka_says_where_and_how_and_records_nothing(
    tmp_path: Path, stream_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SKEWLESS_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    repo = Repo(tmp_path, f"127.0.0.1:{port}", stream_redis_url)
    with pytest.raises(KafkaUnavailable, match=rf"127\.0\.0\.1:{port}.*services\.sh up kafka"):
        repo.store.apply()
    assert not repo.store.config.registry_path.exists()


def test_push_validates_every_row_and_keys_like_the_java_client(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    with pytest.raises(KafkaUnavailable, match="does not exist; run `skewless apply`"):
        repo.store.push(repo.avro, rows(1, 1, int(time.time() * 1000)))
    repo.store.apply()
    now = int(time.time() * 1000)
    good = rows(200, 2, now)
    bad = [
        dict(good[0]),
        dict(good[1], amount=float("nan")),
        dict(good[2], ts=now + 5 * 86_400_000),
    ]
    bad[0]["customer_id"] = None
    with pytest.raises(InputDataError) as info:
        repo.store.push(repo.avro, good[:3] + bad)
    text = str(info.value)
    assert "nothing was sent (3 bad rows)" in text
    assert "row 3:" in text and "row 4:" in text and "not a finite number" in text
    assert "row 5:" in text and "ahead of the worker clock" in text
    assert sum(end_offsets(kafka_service, repo.avro).values()) == 0
    with pytest.raises(InputDataError, match=r"row 0: .*missing"):
        repo.store.push(repo.avro, [{"customer_id": "c1", "ts": now}])
    assert repo.store.push(repo.avro, good) == 200
    codec = SourceCodec(repo.store.plan.sources[repo.avro])
    records = read_topic(kafka_service, repo.avro)
    assert len(records) == 200
    sent = Counter(encode_key([r["customer_id"]]) for r in good)
    assert Counter(r.key for r in records) == sent
    for r in records:
        assert r.key is not None and r.partition == partition_for(r.key, 4)
        payload = codec.decode(r.key, r.value, now_ms=now)
        assert encode_key([payload["customer_id"]]) == r.key


# -- the worker ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "latency",
    [{"pipeline": False}, {"pipeline": True}],  # the serial loop, and the default
    ids=["serial", "pipeline"],
)
def test_worker_folds_and_logs_every_record(
    tmp_path: Path, kafka_service: str, stream_redis_url: str, latency: dict[str, bool]
) -> None:
    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    repo.store.apply()
    publish(repo, 900, seed=3)
    with WorkerThread(repo.store, WorkerOptions(batch_max=700, **latency)) as worker:
        wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 120)
        worker.stop()
    stats = worker.worker.stats
    assert stats.records == 2 * 900
    assert stats.refused == Counter()
    assert stats.retries == 0
    check_log_exactly_once(repo, {})
    t = int(time.time() * 1000)
    check_online_equals_backfill(repo, t, SPEND + SPEND_JSON)
    # and an independent fold: counts and exact sums by hand
    events = rows(900, 3, 0)  # same draws, timestamps shifted: only the keys and amounts matter
    online = repo.store.get_online_features(
        ["spend:amount_count_1d", "spend_json:amount_count_lifetime"],
        [{"customer_id": c} for c in CUSTOMERS],
    ).to_dict()
    expected = fold_by_hand(events, t)
    assert online["amount_count_1d"] == [expected[c][0] for c in CUSTOMERS]
    assert online["amount_count_lifetime"] == [expected[c][0] for c in CUSTOMERS]


def test_online_sums_match_an_exact_fold_by_hand(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    repo.store.apply()
    now = int(time.time() * 1000)
    events = rows(1500, 11, now)
    repo.store.push(repo.avro, events)
    with WorkerThread(repo.store) as worker:
        wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 120)
        worker.stop()
    t = int(time.time() * 1000)
    online = repo.store.get_online_features(
        ["spend:amount_sum_1h", "spend:amount_count_1d"],
        [{"customer_id": c} for c in CUSTOMERS],
        now_ms=t,
    ).to_dict()
    expected = fold_by_hand(events, t)
    for i, c in enumerate(CUSTOMERS):
        assert online["amount_count_1d"][i] == expected[c][0]
        assert same(online["amount_sum_1h"][i], expected[c][1]), c


def test_sigterm_drains_commits_and_a_restart_repeats_nothing(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    repo.store.apply()
    stop_pushing = threading.Event()

    def pusher() -> None:  # events keep flowing while the worker is stopped
        for i in range(30):
            if stop_pushing.is_set():
                return
            repo.store.push(repo.avro, rows(400, 100 + i, int(time.time() * 1000)))
            time.sleep(0.1)

    feeding = threading.Thread(target=pusher)
    feeding.start()
    try:
        first = WorkerProcess(repo.path, "--batch-max", "500")
        wait_until(lambda: any(o > 0 for o in committed(kafka_service, repo.group, repo.avro).values()),
                   60, "a first commit")  # fmt: skip
        assert first.terminate() == 0, first.text()
        assert "SIGTERM: finishing the batch in hand" in first.text()
        # commit follows the log: committed offsets are exactly one past the logged ones
        done = committed(kafka_service, repo.group, repo.avro)
        found = logged(repo.log_root, repo.avro)
        for p, offset in done.items():
            mine = sorted(o for q, o in found if q == p)
            assert mine == list(range(offset if offset > 0 else 0)), f"partition {p}"
    finally:
        feeding.join()
    second = WorkerProcess(repo.path)
    try:
        wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 180)
    finally:
        assert second.terminate() == 0, second.text()
    check_log_exactly_once(repo, {})
    check_online_equals_backfill(repo, int(time.time() * 1000))
    files, state = log_files(repo.log_root, repo.avro), redis_dump(stream_redis_url)
    third = WorkerProcess(repo.path)
    try:
        wait_until(lambda: "assigned" in third.text(), 60, "the third worker's assignment")
        time.sleep(2)
    finally:
        assert third.terminate() == 0, third.text()
    assert re.search(r"\]: 0 records", third.text()), third.text()
    assert log_files(repo.log_root, repo.avro) == files
    assert redis_dump(stream_redis_url) == state


def test_two_workers_share_the_partitions(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    repo.store.apply()
    a = WorkerProcess(repo.path, "--batch-max", "500")
    b = WorkerProcess(repo.path, "--batch-max", "500")
    try:

        def both_assigned() -> bool:
            return all(_last_assignment(w.text(), repo.avro) for w in (a, b))

        wait_until(both_assigned, 90, "both workers to get partitions")
        for seed in range(6):
            repo.store.push(repo.avro, rows(1000, 200 + seed, int(time.time() * 1000)))
        wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 180)
        mine_a, mine_b = (_last_assignment(w.text(), repo.avro) for w in (a, b))
        assert mine_a and mine_b and not (mine_a & mine_b), (mine_a, mine_b)
        assert mine_a | mine_b == {0, 1, 2, 3}
    finally:
        codes = [a.terminate(), b.terminate()]
    assert codes == [0, 0], a.text() + b.text()
    for w in (a, b):
        processed = [int(n) for n in re.findall(r"\]: (\d+) records", w.text())]
        assert processed and processed[-1] > 0, w.text()
    check_log_exactly_once(repo, {})
    check_online_equals_backfill(repo, int(time.time() * 1000))


def _last_assignment(text: str, topic: str) -> set[int]:
    found = re.findall(rf"assigned .*?{re.escape(topic)} \[([\d, ]*)\]", text)
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


@pytest.mark.single_redis  # its own single Redis, started late
def test_redis_outage_backs_off_without_committing_then_catches_up(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not on the PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    repo = Repo(tmp_path, kafka_service, url)
    repo.store.apply()
    events = rows(600, 21, int(time.time() * 1000))
    repo.store.push(repo.avro, events)
    options = WorkerOptions(backoff_initial_s=0.05, backoff_max_s=0.5)
    with WorkerThread(repo.store, options) as worker:
        wait_until(lambda: worker.worker.stats.retries >= 3, 60, "retries against a dead Redis")
        assert all(o < 0 for o in committed(kafka_service, repo.group, repo.avro).values())
        assert logged(repo.log_root, repo.avro) == Counter()
        assert worker.worker.stats.applied == 0
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
        try:
            wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 120)
            worker.stop()
            assert "Redis at 127.0.0.1" in (worker.worker.stats.last_error or "")
            check_log_exactly_once(repo, {})
            check_online_equals_backfill(repo, int(time.time() * 1000))
            client = raw_redis(url)
            entity_keys = set(client.scan_iter("sk:*:{*"))  # not the stats/watermark keys
            assert len(entity_keys) == len({e["customer_id"] for e in events})
            client.close()
        finally:
            redis_proc.terminate()
            redis_proc.wait(30)


def test_worker_refuses_to_start_before_apply(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    from engine.cli import main

    repo = Repo(tmp_path, kafka_service, stream_redis_url)
    with pytest.raises(KafkaUnavailable, match=r"do not exist; run `skewless apply`"):
        WorkerThread(repo.store)
    assert main(["--repo", str(repo.path), "worker"]) == 1


def test_compacting_the_log_beside_a_live_worker_loses_and_repeats_nothing(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    """Compactions and full reads of the log run while the worker appends small files."""
    from connectors.eventlog import EventLogReader

    repo = Repo(tmp_path, kafka_service, stream_redis_url, partitions=2)
    repo.store.apply()
    valid = rows(600, 11, int(time.time() * 1000))
    reader = EventLogReader(repo.log_root)
    merged = reads = 0
    with WorkerThread(
        repo.store, WorkerOptions(batch_max=15, batch_timeout_s=0.005, log_roll_bytes=0)
    ) as worker:
        pushed = 0
        for part in range(12):
            chunk = valid[part::12]
            assert repo.store.push(repo.avro, chunk) == len(chunk)
            assert repo.store.push(repo.json, pd.DataFrame(chunk)) == len(chunk)
            pushed += 2 * len(chunk)
            # the round's small files are logged before this round's compaction
            wait_until(lambda n=pushed: worker.worker.stats.records >= n, 60, "the round logged")
            for done in repo.store.compact_log(small_records=40, target_records=200):
                merged += done.records_merged
            for source in (repo.avro, repo.json):
                if source in reader.sources():
                    offsets = [(e.partition, e.offset) for e in reader.read_all(source)]
                    assert len(offsets) == len(set(offsets)), "a read saw a record twice"
                    reads += 1
        wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 120)
        worker.stop()
    assert worker.worker.stats.records == 2 * 600
    repo.store.compact_log(small_records=40, target_records=200)
    assert merged > 0 and reads > 0
    again = repo.store.compact_log(small_records=40, target_records=200)
    assert [c.records_merged for c in again] == [0] * len(again)  # nothing left to merge
    assert sum(c.files_after for c in again) < worker.worker.stats.batches
    check_log_exactly_once(repo, {})  # every file read on its own: no leftover copies either
    check_online_equals_backfill(repo, int(time.time() * 1000), SPEND + SPEND_JSON)


def test_the_worker_compacts_its_own_log_and_readers_see_every_record_once(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    """Issue 11: no `skewless compact-log` needed; what it merges is below the commits."""
    from connectors.eventlog import EventLogReader
    from engine.stream.log_compaction import CompactionOptions

    repo = Repo(tmp_path, kafka_service, stream_redis_url, partitions=2)
    repo.store.apply()
    valid = rows(600, 12, int(time.time() * 1000))
    options = WorkerOptions(
        batch_max=15, batch_timeout_s=0.005, compact_interval_s=0.3, log_roll_bytes=0
    )
    with WorkerThread(repo.store, options) as worker:
        compaction = worker.worker.compaction
        assert compaction is not None
        compaction.options = CompactionOptions(interval_s=0.3, small_records=40, target_records=200)
        for part in range(12):
            chunk = valid[part::12]
            assert repo.store.push(repo.avro, chunk) == len(chunk)
            time.sleep(0.2)
        wait_caught_up(kafka_service, repo.group, [repo.avro], 120)
        wait_until(lambda: compaction.files_merged > 0, 60, "the worker compacted its log")
        worker.stop()
    reader = EventLogReader(repo.log_root)
    offsets = [(e.partition, e.offset) for e in reader.read_all(repo.avro)]
    assert len(offsets) == len(set(offsets)) == 600
    files = sum(len(reader.files(repo.avro, p)) for p in reader.partitions(repo.avro))
    assert files < worker.worker.stats.batches  # fewer files than batches were written


def test_a_rolling_log_beside_a_live_worker_is_read_once_and_rolls(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    """Issue 11 part 3: each batch is a synced block of one open file per partition (rolled
    here at 4 KiB); reads while the worker appends see each record once; the worker rolls
    its open files when it leaves; at rest online == backfill."""
    from connectors.eventlog import EventLogReader, is_open

    repo = Repo(tmp_path, kafka_service, stream_redis_url, partitions=2)
    repo.store.apply()
    valid = rows(600, 13, int(time.time() * 1000))
    reader = EventLogReader(repo.log_root)
    options = WorkerOptions(
        batch_max=15, batch_timeout_s=0.005, compact_interval_s=0.3, log_roll_bytes=4096
    )
    reads = 0
    open_seen = False
    with WorkerThread(repo.store, options) as worker:
        pushed = 0
        for part in range(12):
            chunk = valid[part::12]
            assert repo.store.push(repo.avro, chunk) == len(chunk)
            assert repo.store.push(repo.json, pd.DataFrame(chunk)) == len(chunk)
            pushed += 2 * len(chunk)
            wait_until(lambda n=pushed: worker.worker.stats.records >= n, 60, "the round logged")
            for source in (repo.avro, repo.json):
                if source in reader.sources():
                    offsets = [(e.partition, e.offset) for e in reader.read_all(source)]
                    assert len(offsets) == len(set(offsets)), "a read saw a record twice"
                    reads += 1
                    open_seen = open_seen or any(
                        is_open(path)
                        for p in reader.partitions(source)
                        for _, _, path in reader.files(source, p)
                    )
        wait_caught_up(kafka_service, repo.group, [repo.avro, repo.json], 120)
        worker.stop()
    assert worker.worker.stats.records == 2 * 600
    assert reads > 0 and open_seen
    files = [
        path
        for source in (repo.avro, repo.json)
        for p in reader.partitions(source)
        for _, _, path in reader.files(source, p)
    ]
    assert not [f for f in files if is_open(f)]  # rolled when the worker left
    assert len(files) < worker.worker.stats.batches
    check_log_exactly_once(repo, {})
    check_online_equals_backfill(repo, int(time.time() * 1000), SPEND + SPEND_JSON)


def test_cli_push_reports_the_rows_it_produced(
    tmp_path: Path, kafka_service: str, stream_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: `skewless push` from a file or stdin says how many rows it produced."""
    import io
    import json

    from engine.cli import main
    from tests.stream_harness import end_offsets

    repo = Repo(tmp_path, kafka_service, stream_redis_url, partitions=2)
    repo.store.apply()
    valid = rows(7, 21, int(time.time() * 1000))
    table = tmp_path / "new.parquet"
    pd.DataFrame(valid).to_parquet(table)
    assert main(["push", repo.avro, str(table), "--repo", str(repo.path)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"pushed 7 rows to topic {repo.avro} (source {repo.avro})"
    )
    lines = "\n".join(json.dumps(r) for r in valid[:3])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(lines))
        assert main(["--repo", str(repo.path), "push", repo.avro, "-"]) == 0
    assert "pushed 3 rows" in capsys.readouterr().out
    assert sum(end_offsets(kafka_service, repo.avro).values()) == 10
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO('{"amount": "x"}'))
        assert main(["--repo", str(repo.path), "push", repo.avro, "-"]) == 1
    assert "nothing was sent" in capsys.readouterr().err
    assert sum(end_offsets(kafka_service, repo.avro).values()) == 10
