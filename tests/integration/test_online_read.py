"""Online reads equal the processing-time backfill of the same events, bit for bit (real Redis).

Events go through the stream worker's ``BatchProcessor`` with the real ``RedisOnlineStore``
and a controllable clock; the envelopes it logs are written to the event log with
``EventLogWriter``; then ``get_online_features`` at several times must equal
``get_historical_features(..., mode="processing_time")`` at the same times — through the
Python API, the HTTP endpoint and ``skewless get``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.eventlog import EventLogWriter
from engine import backfill
from engine.cli import main as cli_main
from engine.envelope import Envelope
from engine.errors import CodecError, FeatureRefError, InputDataError
from engine.keys import encode_key, partition_for
from engine.online import state_key, values_at
from engine.online_eval import WindowReader
from engine.online_read import FeatureStatus, read_online
from engine.ports import DeadLetter, OnlineStateStore, StateWrite, Watermark
from engine.serde import SourceCodec
from engine.serve import make_app
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.integration.test_online_status import wait_tracked

pytestmark = pytest.mark.redis

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
PARTITIONS = 4

SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "merchant_id", "type": "string"},
        {"name": "store_id", "type": "long"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "qty", "type": "long"},
        {"name": "ts", "type": "long"},
    ],
}

DEFINITIONS = f"""
from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"])
store = Entity("store", join_keys=["store_id"])
tx = KafkaSource("tx", schema={SCHEMA!r}, timestamp_field="ts", key_fields=["customer_id"])

customer_spend = FeatureView(
    "customer_spend", entity=customer, source=tx,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "count", window="10m", hop="1m"),
        Aggregation("amount", "mean", window="1h"),
        Aggregation("amount", "max", window="1d"),
        Aggregation("merchant_id", "count_distinct", window="1h"),
        Aggregation("amount", "last", window="lifetime"),
        Aggregation("amount", "last_n", window="1h", n=3),
        Aggregation("amount", "stddev", window="1d"),
        Aggregation("merchant_id", "approx_count_distinct", window="1d"),
        Aggregation("amount", "first", window="10m", hop="1m"),
    ],
)

# keyed by store, not by the topic key: an entity's state spans source partitions
store_sales = FeatureView(
    "store_sales", entity=store, source=tx,
    aggregations=[
        Aggregation("qty", "sum", window="1h"),
        Aggregation("amount", "count", window="lifetime"),
        Aggregation("amount", "sum", window="10m", hop="1m"),
        Aggregation("amount", "max", window="1d"),  # same name as in customer_spend
    ],
)
"""

SPEND = [
    "customer_spend:amount_sum_1h",
    "customer_spend:amount_count_10m",
    "customer_spend:amount_mean_1h",
    "customer_spend:amount_max_1d",
    "customer_spend:merchant_id_count_distinct_1h",
    "customer_spend:amount_last_lifetime",
    "customer_spend:amount_last_3_1h",
    "customer_spend:amount_stddev_1d",
    "customer_spend:merchant_id_approx_count_distinct_1d",
    "customer_spend:amount_first_10m",
]
SALES = [
    "store_sales:qty_sum_1h",
    "store_sales:amount_count_lifetime",
    "store_sales:amount_sum_10m",
]
REFS = SPEND + SALES
CUSTOMERS = [f"c{i}" for i in range(8)]
STORES = [1, 2, 3, 4, 5]
# every customer and store, plus an unknown customer and an unknown store
ROWS = [{"customer_id": c, "store_id": STORES[i % 5]} for i, c in enumerate(CUSTOMERS)] + [
    {"customer_id": "c-unknown", "store_id": 99},
    {"customer_id": "c0", "store_id": 99},
]


class ListLog:
    """EventLogSink keeping envelopes in memory, dropping offsets it already holds."""

    def __init__(self) -> None:
        self.records: list[Envelope] = []
        self._high: dict[int, int] = {}

    def append(self, records: Sequence[Envelope]) -> list[str]:
        for env in records:
            if env.offset > self._high.get(env.partition, -1):
                self.records.append(env)
                self._high[env.partition] = env.offset
        return []

    def last_offset(self, partition: int) -> int | None:
        return self._high.get(partition)


class LogSource:
    """A ``ListLog``'s records as an ``EventLogSource`` for the backfill."""

    def __init__(self, log: ListLog) -> None:
        self.log = log

    def partitions(self, source: str) -> list[int]:
        return sorted({env.partition for env in self.log.records})

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        held = [env for env in self.log.records if env.partition == partition]
        return iter(sorted(held, key=lambda env: env.offset))


class ListDeadLetters:
    """DeadLetterSink keeping letters in memory."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


class CountingStore:
    """A real OnlineStateStore that counts the calls made to it."""

    def __init__(self, inner: OnlineStateStore) -> None:
        self.inner = inner
        self.loads: list[int] = []

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        self.loads.append(len(keys))
        return self.inner.load(keys)

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        return self.inner.write(writes, marks)


@dataclass
class Clock:
    now_ms: int

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Scenario:
    repo: Path
    store: FeatureStore
    base_ms: int
    snapshots: list[tuple[int, dict[str, list[Any]]]]  # online reads taken mid-stream
    last_processed_ms: int
    log: ListLog
    dead: ListDeadLetters


def _events(base_ms: int, rng: random.Random) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(420):
        amount = None if rng.random() < 0.08 else round(rng.uniform(-5, 500), rng.choice([0, 2, 7]))
        events.append(
            {
                "customer_id": rng.choice(CUSTOMERS),
                "merchant_id": f"m{rng.randrange(12)}",
                "store_id": rng.choice(STORES),
                "amount": amount,
                "qty": rng.randrange(1, 9),
                "ts": base_ms + rng.randrange(0, 2 * HOUR),
            }
        )
    events.sort(key=lambda e: e["ts"] + rng.randrange(-3 * MINUTE, 3 * MINUTE))  # out of order
    return events


@pytest.fixture
def scenario(tmp_path: Path, redis_url: str) -> Scenario:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(textwrap.dedent(DEFINITIONS))
    # store_sales on the per-partition layout: each store's hash holds one tile set per
    # source partition (the merge-on-write default: tests/integration/test_merged_tiles.py)
    (repo / "skewless.yaml").write_text(
        f"redis:\n  url: {redis_url}\nkafka:\n  partitions: {PARTITIONS}\n"
        "online:\n  merge_rekeyed_views: false\n"
    )
    store = FeatureStore.from_repo(repo)
    assert not store.plan.views["store_sales"].merged
    # near the real clock: Redis expires keys by its own clock
    base_ms = (time.time_ns() // 1_000_000 // HOUR - 3) * HOUR
    rng = random.Random(20260101)
    codec = SourceCodec(store.plan.sources["tx"])
    records: list[SourceRecord] = []
    offsets = [0] * PARTITIONS
    for payload in _events(base_ms, rng):
        key = encode_key([payload["customer_id"]])
        p = partition_for(key, PARTITIONS)
        records.append(
            SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key,
                         value=codec.encode(payload))
        )  # fmt: skip
        offsets[p] += 1
    # a malformed record (dead letter) and two events too late for both views
    records.insert(50, SourceRecord(topic="tx", partition=0, offset=offsets[0], key=b"c1",
                                    value=b"\x07garbage"))  # fmt: skip
    offsets[0] += 1
    # too late for both views (lateness 1d and 1h), then too late for store_sales only
    for late, amount in ((base_ms - 2 * DAY, 1e6), (base_ms - 2 * HOUR, 777.25)):
        payload = {"customer_id": "c1", "merchant_id": "m0", "store_id": 1, "amount": amount,
                   "qty": 1000, "ts": late}  # fmt: skip
        p = partition_for(b"c1", PARTITIONS)
        records.insert(200, SourceRecord(topic="tx", partition=p, offset=offsets[p], key=b"c1",
                                         value=codec.encode(payload)))  # fmt: skip
        offsets[p] += 1
    # Kafka order is per partition: keep offsets ascending within each partition
    by_partition: dict[int, list[SourceRecord]] = {}
    for rec in records:
        by_partition.setdefault(rec.partition, []).append(rec)
    for p, recs in by_partition.items():
        by_partition[p] = [
            SourceRecord(topic=r.topic, partition=p, offset=i, key=r.key, value=r.value)
            for i, r in enumerate(recs)
        ]
    ordered: list[SourceRecord] = []
    cursors = dict.fromkeys(by_partition, 0)
    for rec in records:  # interleave partitions in the original arrival order
        p = rec.partition
        ordered.append(by_partition[p][cursors[p]])
        cursors[p] += 1

    clock = Clock(base_ms)
    log, dead = ListLog(), ListDeadLetters()
    core = BatchProcessor(store.plan, "tx", online=store.online_store, log=log, dead=dead,
                          clock=clock)  # fmt: skip
    snapshots: list[tuple[int, dict[str, list[Any]]]] = []
    start = 0
    batch_no = 0
    while start < len(ordered):
        batch = ordered[start : start + rng.randrange(5, 40)]
        start += len(batch)
        batch_no += 1
        newest = max(codec.decode(r.key, r.value, now_ms=base_ms + DAY)["ts"]
                     for r in batch if r.value != b"\x07garbage")  # fmt: skip
        clock.now_ms = max(clock.now_ms + 1, newest + rng.randrange(0, 90_000))
        core.process(batch)
        if batch_no == 3:  # a redelivery of the batch: fences keep it from counting twice
            core.forget_all()
            core.process(batch)
        if batch_no % 4 == 0:
            t = clock.now_ms + 1
            snapshots.append((t, store.get_online_features(REFS, ROWS, now_ms=t).to_dict()))
    return Scenario(repo=repo, store=store, base_ms=base_ms, snapshots=snapshots,
                    last_processed_ms=clock.now_ms, log=log, dead=dead)  # fmt: skip


def _backfill(scenario: Scenario, t_ms: int) -> dict[str, list[Any]]:
    store = scenario.store
    frame = pd.DataFrame(
        {
            "customer_id": [r["customer_id"] for r in ROWS],
            "store_id": [r["store_id"] for r in ROWS],
            "event_timestamp": [t_ms] * len(ROWS),
        }
    )
    out = store.get_historical_features(frame, REFS, mode="processing_time", workers=1)
    return {c: out[c].tolist() for c in out.columns if c != "event_timestamp"}


def _write_log(scenario: Scenario) -> None:
    writer = EventLogWriter(
        scenario.store.config.event_log_root, "tx", dict(scenario.store.plan.sources["tx"].schema)
    )
    writer.append(scenario.log.records)


def _bits(value: Any) -> Any:
    """A comparable form that tells 0.1 from 0.1000000000000001 and None from 0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None  # pandas shows a missing float as NaN
    if isinstance(value, float):
        return ("float", value.hex()) if not value.is_integer() else ("num", int(value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("num", value)
    if isinstance(value, list):
        return [_bits(v) for v in value]
    return value


def _assert_same(online: dict[str, list[Any]], offline: dict[str, list[Any]], t: int) -> None:
    assert list(online) == list(offline)
    for column in online:
        assert [_bits(v) for v in online[column]] == [_bits(v) for v in offline[column]], (
            f"column {column} at t={t}"
        )


def test_online_equals_processing_time_backfill(scenario: Scenario) -> None:
    _write_log(scenario)
    assert {(d.partition, d.offset, d.code) for d in scenario.dead.letters} == {(0, 0, "bad_avro")}
    end = scenario.last_processed_ms + 1
    times = [
        end,
        end + 7 * MINUTE,  # 10m windows lose events: values age with no new event
        end + 61 * MINUTE,
        scenario.base_ms + DAY + 2 * HOUR + 1,  # 1h and 1d windows empty; lifetime stays
    ]
    seen: dict[int, dict[str, list[Any]]] = {}
    for t in times:
        online = scenario.store.get_online_features(REFS, ROWS, now_ms=t).to_dict()
        _assert_same(online, _backfill(scenario, t), t)
        seen[t] = online
    for t, online in scenario.snapshots:  # online state as it was mid-stream
        _assert_same(online, _backfill(scenario, t), t)
    assert len(scenario.snapshots) >= 3

    # the values really move: with no new event, windows age
    first, later, day = seen[times[0]], seen[times[2]], seen[times[3]]
    assert first["amount_count_10m"] != seen[times[1]]["amount_count_10m"]
    assert any(v != 0 for v in first["amount_sum_1h"][:8])
    assert later["amount_count_10m"][:8] == [0] * 8
    assert day["amount_max_1d"][:8] == [None] * 8
    assert day["amount_last_lifetime"][:8] == first["amount_last_lifetime"][:8]
    assert day["amount_count_lifetime"] == first["amount_count_lifetime"]
    # the late events were refused by both paths: no 1e6 anywhere
    assert 1e6 not in first["amount_max_1d"]


def test_missing_entities_read_as_empty_windows(scenario: Scenario) -> None:
    t = scenario.last_processed_ms + 1
    got = scenario.store.get_online_features(REFS, ROWS, now_ms=t, with_freshness=True).to_dict()
    unknown = ROWS.index({"customer_id": "c-unknown", "store_id": 99})
    assert got["customer_id"][unknown] == "c-unknown" and got["store_id"][unknown] == 99
    assert got["amount_sum_1h"][unknown] == 0
    assert got["amount_count_10m"][unknown] == 0
    assert got["merchant_id_count_distinct_1h"][unknown] == 0
    for name in ("amount_mean_1h", "amount_max_1d", "amount_last_lifetime", "amount_last_3_1h",
                 "amount_stddev_1d", "amount_first_10m"):  # fmt: skip
        assert got[name][unknown] is None, name
    assert got["amount_count_lifetime"][unknown] == 0
    assert got["amount_sum_1h__freshness_ms"][unknown] is None
    assert got["qty_sum_1h__freshness_ms"][unknown] is None
    # c0 is known, store 99 is not: each view answers for its own entity
    both = len(ROWS) - 1
    assert got["amount_count_lifetime"][both] == 0 and got["qty_sum_1h__freshness_ms"][both] is None
    assert got["amount_last_lifetime"][both] == got["amount_last_lifetime"][0]


def test_freshness_is_the_newest_write(scenario: Scenario) -> None:
    t = scenario.last_processed_ms + 1
    resp = scenario.store.get_online_features(REFS, ROWS[:8], now_ms=t, with_freshness=True)
    newest: dict[str, int] = {}
    for env in scenario.log.records:
        c = env.payload["customer_id"]
        newest[c] = max(newest.get(c, 0), env.processed_at_ms)
    # a customer's newest logged event may have been late (not applied): at most that
    fresh = resp.freshness_ms["customer_spend"]
    for row, value in zip(ROWS[:8], fresh, strict=True):
        assert value is not None and scenario.base_ms <= value <= newest[str(row["customer_id"])]
    assert max(v for v in fresh if v is not None) == scenario.last_processed_ms
    assert resp.to_dict()["amount_sum_1h__freshness_ms"] == fresh


def test_many_entities_and_views_in_one_round_trip(scenario: Scenario) -> None:
    counting = CountingStore(scenario.store.online_store)
    t = scenario.last_processed_ms + 1
    rows = ROWS * 12  # 120 rows, duplicates share a key
    result = read_online(scenario.store.plan, counting, REFS, rows, now_ms=t)
    assert counting.loads == [len(CUSTOMERS) + 1 + len(STORES) + 1]
    assert result.rows == len(rows)
    direct = scenario.store.get_online_features(REFS, ROWS, now_ms=t).to_dict()
    assert result.values[0] == direct["amount_sum_1h"] * 12
    # columnar input gives the same answer as row dicts
    columns = {"customer_id": [r["customer_id"] for r in rows],
               "store_id": [r["store_id"] for r in rows]}  # fmt: skip
    again = read_online(scenario.store.plan, counting, REFS, columns, now_ms=t)
    assert again.values == result.values


def test_replies_read_in_place_equal_parsed_replies(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Redis store's replies indexed in the socket's buffer (``load_and_probe_resp``)
    and redis-py's parsed replies (its fallback, e.g. for a parser other than hiredis) give
    the same values, statuses and freshness — uncached, and through a ReadCache (misses,
    then revalidated hits)."""
    from engine.online_read import ReadCache

    online = scenario.store.online_store
    rows = [*ROWS, {"customer_id": "nobody", "store_id": 99}]
    answers = []
    for raw in (True, False):
        if not raw:
            monkeypatch.setattr(online, "load_and_probe_resp", lambda *_: None)
        cache = ReadCache()
        for t in (scenario.last_processed_ms + 1, scenario.last_processed_ms + 3_600_000):
            for c in (None, cache, cache):
                result = read_online(scenario.store.plan, online, REFS, rows, now_ms=t, cache=c)
                exact = [[repr(v) for v in column] for column in result.values]  # -0.0, nan
                answers.append((exact, result.statuses, result.freshness_ms))
    half = len(answers) // 2
    assert answers[:half] == answers[half:]
    statuses = {s for _, columns, _ in answers for column in columns for s in column}
    assert {"PRESENT", "NOT_FOUND"} <= statuses


def test_full_feature_names_and_dataframe(scenario: Scenario) -> None:
    t = scenario.last_processed_ms + 1
    resp = scenario.store.get_online_features(
        ["customer_spend:amount_sum_1h", "store_sales:amount_sum_10m"],
        ROWS[:3],
        now_ms=t,
        full_feature_names=True,
    )
    frame = resp.to_df()
    assert list(frame.columns) == [
        "customer_id",
        "store_id",
        "customer_spend__amount_sum_1h",
        "store_sales__amount_sum_10m",
    ]
    assert (
        frame["customer_spend__amount_sum_1h"].tolist()
        == resp.to_dict()["customer_spend__amount_sum_1h"]
    )


def test_bad_requests_are_clear_errors(scenario: Scenario) -> None:
    store = scenario.store
    with pytest.raises(InputDataError, match=r"entity row 1: missing join key 'store_id'"):
        store.get_online_features(REFS, [ROWS[0], {"customer_id": "c1"}])
    with pytest.raises(InputDataError, match=r"row 0: join key 'store_id' must be an integer"):
        store.get_online_features(SALES, [{"store_id": "3"}])  # nothing is coerced
    past = r"row 1: join key 'store_id' is 9223372036854775808, outside the 64-bit range"
    for rows in ([{"store_id": 1}, {"store_id": 2**63}], {"store_id": [1, 2**63]},
                 [{"store_id": 1}, {"store_id": np.uint64(2**63)}]):  # fmt: skip
        with pytest.raises(InputDataError, match=past):  # a long can hold no such key
            store.get_online_features(SALES, rows)
    edge = store.get_online_features(SALES, [{"store_id": 2**63 - 1}, {"store_id": -(2**63)}])
    assert all(  # the long's own limits are keys (of no entity here)
        statuses == [FeatureStatus.NOT_FOUND] * 2 for statuses in edge.statuses.values()
    )
    with pytest.raises(InputDataError, match=r"join key 'customer_id' is null"):
        store.get_online_features(SPEND, [{"customer_id": None}])
    with pytest.raises(FeatureRefError, match="no feature 'nope'"):
        store.get_online_features(["customer_spend:nope"], ROWS)
    with pytest.raises(InputDataError, match="requested twice"):
        store.get_online_features(SPEND[:1] * 2, ROWS)
    clash = ["customer_spend:amount_max_1d", "store_sales:amount_max_1d"]
    with pytest.raises(InputDataError, match="full_feature_names"):
        store.get_online_features(clash, ROWS)
    assert (
        "store_sales__amount_max_1d"
        in store.get_online_features(clash, ROWS, full_feature_names=True).to_dict()
    )
    with pytest.raises(InputDataError, match="differ in length"):
        store.get_online_features(REFS, {"customer_id": ["c1"], "store_id": [1, 2]})


def test_http_endpoint_serves_the_same_json(scenario: Scenario) -> None:
    t = scenario.last_processed_ms + 1
    expected = scenario.store.get_online_features(REFS, ROWS, now_ms=t).to_json()
    body = {
        "features": REFS,
        "entities": {k: [r[k] for r in ROWS] for k in ("customer_id", "store_id")},
        "now_ms": t,
    }

    async def scenario_calls() -> list[tuple[int, Any]]:
        async with TestClient(TestServer(make_app(scenario.store))) as client:
            out = []
            for method, path, payload in [
                ("post", "/get-online-features", body),
                ("get", "/health", None),
                ("post", "/get-online-features", {**body, "features": ["customer_spend:x"]}),
                ("post", "/get-online-features", {**body, "entities": {"customer_id": ["c1"]}}),
                ("post", "/get-online-features", {"features": "customer_spend:amount_sum_1h"}),
            ]:
                resp = await getattr(client, method)(path, json=payload)
                out.append((resp.status, await resp.json()))
            resp = await client.post("/get-online-features", data=b"{not json")
            out.append((resp.status, await resp.json()))
            return out

    (ok, got), (health, status), *errors = asyncio.run(scenario_calls())
    assert ok == 200
    assert got == json.loads(json.dumps(expected))
    names = got["metadata"]["feature_names"]
    assert names[:2] == ["customer_id", "store_id"] and len(names) == 2 + len(REFS)
    assert got["results"][2]["values"] == expected["results"][2]["values"]
    assert health == 200 and status["status"] == "ok"
    for code, payload in errors:
        assert code == 400 and isinstance(payload["error"], str) and payload["error"]
    assert "no feature 'x'" in errors[0][1]["error"]
    assert "store_id" in errors[1][1]["error"]


def test_cli_get(scenario: Scenario, capsys: pytest.CaptureFixture[str]) -> None:
    t = scenario.last_processed_ms + 1
    repo = str(scenario.repo)
    refs = ["customer_spend:amount_sum_1h", "store_sales:qty_sum_1h"]
    code = cli_main(["--repo", repo, "get", *refs, "customer_id=c1", "store_id=2",
                     "customer_id=c2", "store_id=3", "--json", "--now-ms", str(t)])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = scenario.store.get_online_features(
        refs, [{"customer_id": "c1", "store_id": 2}, {"customer_id": "c2", "store_id": 3}],
        now_ms=t,
    ).to_json()  # fmt: skip
    assert printed == json.loads(json.dumps(expected))

    code = cli_main(["--repo", repo, "get", refs[1], "store_id=2", "--freshness",
                     "--now-ms", str(t)])  # fmt: skip
    table = capsys.readouterr().out.splitlines()
    assert code == 0
    value = scenario.store.get_online_features(refs[1:], [{"store_id": 2}], now_ms=t)
    assert table[0].split() == ["store_id", "2"]
    assert table[1].split() == ["qty_sum_1h", str(value.to_dict()["qty_sum_1h"][0])]
    assert table[2].split()[0] == "qty_sum_1h__freshness_ms"

    assert cli_main(["--repo", repo, "get", refs[1], "store_id=two"]) == 1
    assert "join key 'store_id' is an integer; got 'two'" in capsys.readouterr().err
    assert cli_main(["--repo", repo, "get", refs[0], "customer=c1"]) == 1
    assert "not a join key" in capsys.readouterr().err


def test_cli_get_marks_what_is_not_there(
    scenario: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: a missing entity printed `0.0` and exit 0, exactly like a real zero."""
    t = scenario.last_processed_ms + 1
    repo = str(scenario.repo)
    ref = "customer_spend:amount_last_lifetime"
    argv = ["--repo", repo, "get", ref, "customer_id=c1", "customer_id=c99999", "--now-ms", str(t)]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0].split() == ["customer_id", "c1", "c99999"]
    name, real, missing = table[1].split(None, 2)
    assert name == "amount_last_lifetime" and float(real) == float(real)
    assert missing == "- (not found)"  # the empty-window default (null), marked
    assert captured.err.strip() == (
        "note: 1 of 2 entities not found (NOT_FOUND): customer_id=c99999 in customer_spend — "
        "the store holds no state for them; their values are the empty-window defaults"
    )
    assert cli_main([*argv, "--status"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["amount_last_lifetime__status"] == ["PRESENT", "NOT_FOUND"]
    assert cli_main([*argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["results"][1]["statuses"] == ["PRESENT", "NOT_FOUND"]


def test_cached_reads_follow_new_writes(scenario: Scenario) -> None:
    store, plan = scenario.store, scenario.store.plan
    t = scenario.last_processed_ms + 1
    first = store.get_online_features(REFS, ROWS, now_ms=t).to_dict()
    again = store.get_online_features(REFS, ROWS, now_ms=t).to_dict()  # held: no round trip
    assert again == first
    # more events for c1 and store 2, by a fresh worker core that resumes from Redis's fences
    codec = SourceCodec(plan.sources["tx"])
    key = encode_key(["c1"])
    p = partition_for(key, PARTITIONS)
    next_offset = max(e.offset for e in scenario.log.records if e.partition == p) + 1
    clock = Clock(t + 5_000)
    core = BatchProcessor(plan, "tx", online=store.online_store, log=ListLog(),
                          dead=ListDeadLetters(), clock=clock)  # fmt: skip
    payload = {"customer_id": "c1", "merchant_id": "m-new", "store_id": 2, "amount": 123.5,
               "qty": 3, "ts": t + 1_000}  # fmt: skip
    cache = store._read_cache
    seq = cache.seq
    core.process([SourceRecord(topic="tx", partition=p, offset=next_offset, key=key,
                               value=codec.encode(payload))])  # fmt: skip
    # the write's invalidation reaches the ReadCache's tracking connection (a bounded wait)
    wait_tracked(store, lambda: cache.sync(store.online_store) and cache.seq > seq,
                 "the invalidation")  # fmt: skip
    later = t + 10_000
    cached = store.get_online_features(REFS, ROWS, now_ms=later, with_freshness=True).to_dict()
    fresh = FeatureStore.from_repo(scenario.repo)  # a new store: nothing cached
    uncached = fresh.get_online_features(REFS, ROWS, now_ms=later, with_freshness=True).to_dict()
    assert cached == uncached
    c1 = ROWS.index({"customer_id": "c1", "store_id": 2})
    assert cached["amount_last_lifetime"][c1] == 123.5
    assert cached["amount_sum_1h__freshness_ms"][c1] == t + 5_000
    assert cached["qty_sum_1h__freshness_ms"][c1] == t + 5_000
    assert cached["amount_count_lifetime"][c1] == first["amount_count_lifetime"][c1] + 1
    assert read_online(plan, store.online_store, REFS, ROWS, now_ms=later).values == [
        cached[c] for c in list(cached)[2 : 2 + len(REFS)]
    ]


def test_hash_evaluation_equals_values_at_and_the_replay_on_real_hashes(
    scenario: Scenario,
) -> None:
    """The reader's evaluation of each stored hash (``WindowReader``, for index subsets) equals
    ``values_at`` of all indices, projected, and the processing-time replay of the scenario's
    log (what the online store served, by definition) — store_sales' entities span source
    partitions."""
    plan, online = scenario.store.plan, scenario.store.online_store
    end = scenario.last_processed_ms + 1
    times = (end, -(-end // MINUTE) * MINUTE, end + 7 * MINUTE, end + 61 * MINUTE, end + DAY)
    checked = 0
    hashes: list[dict[bytes, bytes]] = []
    for view_name, entities in (("customer_spend", CUSTOMERS), ("store_sales", STORES)):
        view = plan.views[view_name]
        every = tuple(range(len(view.aggregations)))
        hashes = online.load([state_key(view, (e,)) for e in entities])
        assert all(hashes), f"{view_name}: an entity without online state"
        request = backfill.ViewRequest(view=view_name,
                                       entities=[(e,) for t in times for e in entities],
                                       times_ms=[t for t in times for _ in entities],
                                       indices=every)  # fmt: skip
        (replay,) = backfill.run(plan, LogSource(scenario.log), [request], mode="processing_time")
        for at, t in enumerate(times):
            full = values_at(view, hashes, t)
            for entity, all_values, logged in zip(
                entities, full, replay[at * len(entities) : (at + 1) * len(entities)], strict=True
            ):
                assert repr(all_values) == repr(logged), f"{view_name} {entity} at t={t}"
        for indices in (every, every[::-1][:3], every[1::2]):
            reader = WindowReader(view, indices)
            for t in times:
                for fields, all_values in zip(hashes, values_at(view, hashes, t), strict=True):
                    want = [all_values[i] for i in indices]
                    assert repr(reader.at(t).evaluate(fields)[0]) == repr(want)
                    checked += 1
    assert checked == 3 * len(times) * (len(CUSTOMERS) + len(STORES))
    spans = [len({n.split(b":")[1] for n in h if n.startswith(b"t:")}) for h in hashes]
    assert max(spans) > 1  # a store's tiles come from several partitions


def test_corrupt_stored_tile_names_key_and_field(scenario: Scenario) -> None:
    store = scenario.store
    view = store.plan.views["customer_spend"]
    key = state_key(view, ("c1",))
    t = scenario.last_processed_ms + 1
    hop = view.layout.groups[0].hop_ms
    name = f"t:0:{hop}:{-(-t // hop) - 1}"  # the newest tile of the shortest hop: in its window
    store.online_store.write([StateWrite(key=key, fields={name: b"\xc1"})])
    fresh = FeatureStore.from_repo(scenario.repo)  # no cached values
    with pytest.raises(CodecError, match=rf"Redis key '{re.escape(key)}': view 'customer_spend': "
                       rf"field '{name}': cannot decode"):  # fmt: skip
        fresh.get_online_features(SPEND, [{"customer_id": "c1"}], now_ms=t)
    # other entities and other views still read
    sales = fresh.get_online_features(SALES, [{"store_id": 1}], now_ms=t).to_dict()
    assert sales["store_id"] == [1] and sales["qty_sum_1h"][0] > 0
