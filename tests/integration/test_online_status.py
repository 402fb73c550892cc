"""Online statuses on a real Redis: a streamed entity is PRESENT (or OUTSIDE_WINDOW where its
events left a window, NULL_VALUE where the aggregate is null), an unknown one NOT_FOUND with
its defaults, a view nobody wrote NO_STATE — through the Python API, cached and uncached, and
over HTTP; the statuses cost no round trip of their own.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.redis_store import RedisOnlineStore
from engine.keys import encode_key, partition_for
from engine.online import stats_key
from engine.online_read import FeatureStatus, Held, read_online
from engine.ports import DeadLetter
from engine.serde import SourceCodec
from engine.serve import make_app
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.stream_harness import flushed_redis_db, raw_redis

pytestmark = pytest.mark.redis

STATUS_DB = 11  # this file's Redis database, flushed per test
MINUTE = 60_000
HOUR = 60 * MINUTE
PARTITIONS = 2

SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "ts", "type": "long"},
    ],
}

DEFINITIONS = f"""
from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("tx", schema={SCHEMA!r}, timestamp_field="ts", key_fields=["customer_id"])
refunds = KafkaSource("refunds", schema={SCHEMA!r}, timestamp_field="ts")

customer_spend = FeatureView(
    "customer_spend", entity=customer, source=tx,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "stddev", window="1d"),
        Aggregation("amount", "last", window="lifetime"),
    ],
)

# never streamed: its keyspace holds nothing
customer_refunds = FeatureView(
    "customer_refunds", entity=customer, source=refunds,
    aggregations=[Aggregation("amount", "sum", window="1h")],
)
"""

REFS = [
    "customer_spend:amount_sum_1h",
    "customer_spend:amount_stddev_1d",
    "customer_spend:amount_last_lifetime",
    "customer_refunds:amount_sum_1h",
]
ROWS = [{"customer_id": c} for c in ("c1", "c2", "c-unknown")]
PR, NV, OW, NF, NS = (FeatureStatus.PRESENT, FeatureStatus.NULL_VALUE,
                      FeatureStatus.OUTSIDE_WINDOW, FeatureStatus.NOT_FOUND,
                      FeatureStatus.NO_STATE)  # fmt: skip
# per column, per row (c1, c2, c-unknown), as of the scenario's read time
WANT = {
    "amount_sum_1h": ([30.0, 0.0, 0.0], [PR, OW, NF]),
    "amount_stddev_1d": ([pytest.approx(7.0710678118654755), None, None], [PR, NV, NF]),
    "amount_last_lifetime": ([20.0, 7.5, None], [PR, PR, NF]),
    "customer_refunds__amount_sum_1h": ([0.0, 0.0, 0.0], [NS, NS, NS]),
}


class _Discard:
    """EventLogSink and DeadLetterSink keeping nothing (the test needs Redis only)."""

    def __init__(self) -> None:
        self.high: dict[int, int] = {}

    def append(self, records: Sequence[Any]) -> list[str]:
        for env in records:
            self.high[env.partition] = max(self.high.get(env.partition, -1), env.offset)
        return []

    def last_offset(self, partition: int) -> int | None:
        return self.high.get(partition)

    def send(self, letters: Sequence[DeadLetter]) -> None:
        raise AssertionError(f"refused: {letters[:1]}")


class CountingProbe:
    """The real store, counting each kind of call the reader makes."""

    def __init__(self, inner: RedisOnlineStore) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        self.calls.append("load")
        return self.inner.load(keys)

    def load_and_probe(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes] | None], list[bool]]:
        self.calls.append("load_and_probe")
        return self.inner.load_and_probe(keys, held, probes)

    def write(self, writes: Any, marks: Any = ()) -> list[bytes | None]:
        raise AssertionError("a read never writes")


@pytest.fixture
def status_url(redis_service: str) -> Iterator[str]:
    with flushed_redis_db(redis_service, STATUS_DB) as url:
        yield url


@pytest.fixture
def scenario(tmp_path: Path, status_url: str) -> tuple[FeatureStore, int]:
    return build_scenario(tmp_path, status_url)


def build_scenario(tmp_path: Path, status_url: str) -> tuple[FeatureStore, int]:
    """c1: 10.0 and 20.0 ten minutes before t; c2: 7.5 two hours before t. Returns (store, t)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(textwrap.dedent(DEFINITIONS))
    (repo / "skewless.yaml").write_text(
        f"redis:\n  url: {status_url}\nkafka:\n  partitions: {PARTITIONS}\n"
    )
    store = FeatureStore.from_repo(repo)
    t = time.time_ns() // 1_000_000  # near the real clock: Redis expires keys by its own
    codec = SourceCodec(store.plan.sources["tx"])
    offsets = [0] * PARTITIONS
    clock = [t - 2 * HOUR + MINUTE]
    sink = _Discard()
    core = BatchProcessor(store.plan, "tx", online=store.online_store, log=sink, dead=sink,
                          clock=lambda: clock[0])  # fmt: skip

    def send(events: list[tuple[str, float, int]]) -> None:
        records = []
        for customer, amount, ts in events:
            key = encode_key([customer])
            p = partition_for(key, PARTITIONS)
            payload = {"customer_id": customer, "amount": amount, "ts": ts}
            records.append(SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key,
                                        value=codec.encode(payload)))  # fmt: skip
            offsets[p] += 1
        outcome = core.process(records)
        assert outcome.applied == len(events)

    send([("c2", 7.5, t - 2 * HOUR)])
    clock[0] = t - 5 * MINUTE
    send([("c1", 10.0, t - 10 * MINUTE), ("c1", 20.0, t - 9 * MINUTE)])
    return store, t


def wait_until(done: Callable[[], object], why: str, bound_s: float = 5.0) -> None:
    """Poll ``done()`` until it is true; fail after ``bound_s`` (for a message Redis sends
    another connection: an invalidation reaching a ReadCache)."""
    deadline = time.monotonic() + bound_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {bound_s}s for {why}")
        time.sleep(0.001)


def wait_tracked(store: FeatureStore, done: Callable[[], object], why: str) -> None:
    """``wait_until`` an invalidation reaches the store's ReadCache; a cluster store has none
    to wait for (its cache revalidates every read in Redis: docs/online.md)."""
    from connectors.redis_cluster_store import RedisClusterOnlineStore

    if not isinstance(store.online_store, RedisClusterOnlineStore):
        wait_until(done, why)


def _by_column(got: dict[str, list[Any]]) -> dict[str, tuple[list[Any], list[Any]]]:
    return {
        name: (got[name], got[name + "__status"])
        for name in got
        if not name.endswith("__status") and name != "customer_id"
    }


def test_statuses_over_the_python_api(scenario: tuple[FeatureStore, int]) -> None:
    store, t = scenario
    for _ in range(2):  # the second read is served from the ReadCache
        resp = store.get_online_features(REFS, ROWS, now_ms=t, full_feature_names=True)
        got = resp.to_dict(include_status=True)
        assert got["customer_id"] == ["c1", "c2", "c-unknown"]
        assert _by_column({k.removeprefix("customer_spend__"): v for k, v in got.items()}) == WANT
        # the default output is what it was before statuses existed
        assert list(resp.to_dict()) == ["customer_id", *(r.replace(":", "__") for r in REFS)]
    frame = resp.to_df(include_status=True)
    assert frame["customer_refunds__amount_sum_1h__status"].tolist() == ["NO_STATE"] * 3
    # one round trip, uncached and cached: the view markers ride along with the hashes
    online = store.online_store
    assert isinstance(online, RedisOnlineStore)
    counting = CountingProbe(online)
    uncached = read_online(store.plan, counting, REFS, ROWS, now_ms=t)
    assert counting.calls == ["load_and_probe"]
    assert uncached.statuses == [WANT[c][1] for c in WANT]


def test_statuses_follow_what_redis_holds(
    scenario: tuple[FeatureStore, int], status_url: str
) -> None:
    store, t = scenario
    spend = store.plan.views["customer_spend"]
    alone = store.get_online_features(REFS[:1], ROWS[2:], now_ms=t)  # only the unknown entity
    assert alone.statuses == {"amount_sum_1h": [NF]}  # the view's write stats say it has state
    client = raw_redis(status_url)
    try:
        # as right after a rebuild, before a worker writes: no write stats, but an entity
        # with state in the same read shows the view has state; alone, an unknown one cannot
        assert client.delete(stats_key(spend.fingerprint)) == 1
        both = store.get_online_features(REFS[:1], [ROWS[0], ROWS[2]], now_ms=t)
        assert both.statuses == {"amount_sum_1h": [PR, NF]}
        alone = store.get_online_features(REFS[:1], ROWS[2:], now_ms=t)
        assert alone.statuses == {"amount_sum_1h": [NS]}
        # Redis emptied: nothing is reported as there, though the ReadCache holds c1 and c2
        held = store.get_online_features(REFS[:2], ROWS, now_ms=t)
        assert held.statuses["amount_sum_1h"] == [PR, OW, NF]
        client.flushdb()
    finally:
        client.close()
    # the flush message reaches the ReadCache's invalidation connection (a bounded wait)
    cache = store._read_cache
    wait_tracked(store, lambda: cache.sync(store.online_store) and len(cache) == 0,
                 "the flush message")  # fmt: skip
    after = store.get_online_features(REFS[:2], ROWS, now_ms=t).to_dict(include_status=True)
    assert after["amount_sum_1h"] == [0, 0, 0] and after["amount_stddev_1d"] == [None] * 3
    assert after["amount_sum_1h__status"] == [NS] * 3
    assert after["amount_stddev_1d__status"] == [NS] * 3


def test_statuses_over_http(scenario: tuple[FeatureStore, int]) -> None:
    store, t = scenario
    expected = store.get_online_features(REFS, ROWS, now_ms=t, full_feature_names=True).to_json()
    body = {
        "features": REFS,
        "entities": {"customer_id": [r["customer_id"] for r in ROWS]},
        "full_feature_names": True,
        "now_ms": t,
    }

    async def call() -> tuple[int, Any]:
        async with TestClient(TestServer(make_app(store))) as client:
            resp = await client.post("/get-online-features", json=body)
            return resp.status, await resp.json()

    status, got = asyncio.run(call())
    assert status == 200
    assert got == expected
    results = dict(zip(got["metadata"]["feature_names"], got["results"], strict=True))
    assert results["customer_id"] == {"values": ["c1", "c2", "c-unknown"],
                                      "statuses": ["PRESENT"] * 3}  # fmt: skip
    sums = results["customer_spend__amount_sum_1h"]
    assert sums["values"] == [30.0, 0.0, 0.0]
    assert sums["statuses"] == ["PRESENT", "OUTSIDE_WINDOW", "NOT_FOUND"]
    assert sums["freshness_ms"][2] is None and sums["freshness_ms"][0] == t - 5 * MINUTE
    assert results["customer_spend__amount_stddev_1d"]["statuses"] == [
        "PRESENT", "NULL_VALUE", "NOT_FOUND"]  # fmt: skip
    assert results["customer_refunds__amount_sum_1h"] == {
        "values": [0.0, 0.0, 0.0], "statuses": ["NO_STATE"] * 3, "freshness_ms": [None] * 3}  # fmt: skip
