"""rebuild-online against a real Redis: a lost store and a changed definition both come back
exactly from the event log, and the retired keyspace is dropped."""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from connectors.eventlog import EventLogWriter
from engine.cli import main
from engine.keys import encode_key, partition_for
from engine.online import stats_key
from engine.online_read import FeatureStatus
from engine.ports import DeadLetter
from engine.registry import read_retired, write_applied
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.stream_harness import raw_redis

pytestmark = pytest.mark.redis

DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource
customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("tx", schema={{"type": "record", "name": "Tx", "fields": [
    {{"name": "customer_id", "type": "string"}},
    {{"name": "amount", "type": ["null", "double"]}},
    {{"name": "ts", "type": "long"}}]}}, timestamp_field="ts")
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="{window}", hop="1m"),
    Aggregation("amount", "max", window="10m", hop="1m"),
    Aggregation("amount", "count", window="lifetime"),
])
"""


class Letters:
    def send(self, letters: list[DeadLetter]) -> None:
        raise AssertionError(f"unexpected dead letters: {letters}")


def make_store(
    tmp_path: Path, window: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> FeatureStore:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "defs.py").write_text(textwrap.dedent(DEFS.format(window=window)))
    (repo / "skewless.yaml").write_text("kafka:\n  partitions: 3\n")
    monkeypatch.setenv("SKEWLESS_REDIS_URL", redis_url)
    return FeatureStore.from_repo(repo)


def online(store: FeatureStore, customers: list[str], now_ms: int) -> list[list[object]]:
    refs = [f"spend:{f}" for f in store.plan.views["spend"].features]
    resp = store.get_online_features(refs, [{"customer_id": c} for c in customers], now_ms=now_ms)
    table = resp.to_dict()
    return [
        [table[f][i] for f in store.plan.views["spend"].features] for i in range(len(customers))
    ]


def test_rebuild_restores_lost_state_and_replaces_a_changed_definition(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, "5m", redis_url, monkeypatch)
    write_applied(store.config.registry_path, store.plan)
    source = store.plan.sources["tx"]
    codec = SourceCodec(source)
    rnd = random.Random(5)
    now = time.time_ns() // 1_000_000
    customers = [f"c{i}" for i in range(25)]
    offsets = [0, 0, 0]
    records = []
    stamped = []  # (record, its event time)
    for _ in range(2_000):
        c = rnd.choice(customers)
        key = encode_key([c])
        p = partition_for(key, 3)
        ts = now - rnd.randrange(15 * 60_000)
        value = codec.encode({"customer_id": c, "amount": rnd.choice([None, 0.1, 2.5, 1e6]),
                              "ts": ts})  # fmt: skip
        records.append(
            SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key, value=value)
        )
        stamped.append((records[-1], ts))
        offsets[p] += 1
    log = EventLogWriter(store.config.event_log_root, "tx", dict(source.schema))
    core = BatchProcessor(store.plan, "tx", online=store.online_store, log=log, dead=Letters())
    for start in range(0, len(records), 250):
        core.process(records[start : start + 250])
    read_at = time.time_ns() // 1_000_000 + 1
    before = online(store, customers, read_at)
    assert sum(1 for row in before if row[0]) > 10

    client = raw_redis(redis_url)
    stats = stats_key(store.plan.views["spend"].fingerprint)
    newest_before = {k: v for k, v in client.hgetall(stats).items() if k.startswith(b"e:")}
    assert len(newest_before) == 3  # the workers' newest event time per partition
    client.flushdb()  # Redis lost everything
    store.catch_up_reads()  # a flush's invalidation may still be in flight (docs/online.md)
    assert online(store, customers, read_at) != before
    outcome = store.rebuild_online("spend")
    assert outcome.result.records == len(records)
    assert online(store, customers, read_at) == before
    # the view's stats hash comes back too: per partition the newest event replayed (the
    # workers' is their last batch's newest, never newer), so an entity nobody sent is
    # NOT_FOUND, not NO_STATE (no state at all)
    newest_after = {k: v for k, v in client.hgetall(stats).items() if k.startswith(b"e:")}
    assert newest_after.keys() == newest_before.keys()
    assert all(int(newest_before[k]) <= int(v) <= read_at for k, v in newest_after.items())
    logged = {p: max(ts for r, ts in stamped if r.partition == p) for p in range(3)}
    assert {int(k[2:]): int(v) for k, v in newest_after.items()} == logged
    refs = [f"spend:{f}" for f in store.plan.views["spend"].features]
    resp = store.get_online_features(refs, [{"customer_id": "nobody"}, {"customer_id": "c1"}],
                                     now_ms=read_at)  # fmt: skip
    statuses = resp.statuses
    assert {column[0] for column in statuses.values()} == {FeatureStatus.NOT_FOUND}
    assert FeatureStatus.NO_STATE not in {st for column in statuses.values() for st in column}

    old_fp = store.plan.views["spend"].fingerprint
    changed = make_store(tmp_path, "10m", redis_url, monkeypatch)
    assert changed.plan.views["spend"].fingerprint != old_fp
    write_applied(changed.config.registry_path, changed.plan)
    assert read_retired(changed.config.registry_path) == {"spend": [old_fp]}
    outcome = changed.rebuild_online("spend")
    assert outcome.dropped_keys[old_fp] > 0
    assert not list(client.scan_iter(f"sk:{old_fp}:*"))
    assert read_retired(changed.config.registry_path) == {}
    labels = pd.DataFrame({"customer_id": customers, "event_timestamp": [read_at] * len(customers)})
    refs = [f"spend:{f}" for f in changed.plan.views["spend"].features]
    expected = changed.get_historical_features(labels, refs, mode="processing_time", workers=1)
    rows = [
        [None if isinstance(v, float) and v != v else v for v in row]
        for row in expected[list(changed.plan.views["spend"].features)].itertuples(index=False)
    ]
    assert online(changed, customers, read_at) == rows


TWO_VIEWS = """
big = FeatureView("big", entity=customer, source=tx, filter=big_only, aggregations=[
    Aggregation("amount", "max", window="10m", hop="1m"),
])
"""


def test_rebuild_online_of_several_views_in_one_pass_equals_each_alone(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``skewless rebuild-online --all`` (every view of the source in one pass over the log)
    leaves Redis as ``rebuild-online`` of each view alone does, and reads what the workers
    wrote."""
    make_store(tmp_path, "5m", redis_url, monkeypatch)
    repo = tmp_path / "repo"
    (repo / "defs.py").write_text(
        (repo / "defs.py")
        .read_text()
        .replace(
            "spend = FeatureView",
            "def big_only(row):\n    return row if (row['amount'] or 0) > 1 else None\n\n"
            "spend = FeatureView",
        )
        + textwrap.dedent(TWO_VIEWS)
    )
    store = FeatureStore.from_repo(repo)
    assert sorted(store.plan.views) == ["big", "spend"]
    source = store.plan.sources["tx"]
    codec = SourceCodec(source)
    rnd = random.Random(9)
    now = time.time_ns() // 1_000_000
    customers = [f"c{i}" for i in range(25)]
    offsets = [0, 0, 0]
    records = []
    for _ in range(1_500):
        c = rnd.choice(customers)
        key = encode_key([c])
        p = partition_for(key, 3)
        value = codec.encode({"customer_id": c, "amount": rnd.choice([None, 0.5, 2.5, 1e6]),
                              "ts": now - rnd.randrange(15 * 60_000)})  # fmt: skip
        records.append(
            SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key, value=value)
        )
        offsets[p] += 1
    log = EventLogWriter(store.config.event_log_root, "tx", dict(source.schema))
    core = BatchProcessor(store.plan, "tx", online=store.online_store, log=log, dead=Letters())
    for start in range(0, len(records), 250):
        core.process(records[start : start + 250])
    read_at = time.time_ns() // 1_000_000 + 1
    refs = [f"{v}:{f}" for v in ("spend", "big") for f in store.plan.views[v].features]
    rows = [{"customer_id": c} for c in customers]
    before = store.get_online_features(
        refs, rows, now_ms=read_at, full_feature_names=True
    ).to_dict()
    assert any(v is not None for v in before["big__amount_max_10m"])

    client = raw_redis(redis_url)

    def fields() -> dict[bytes, dict[bytes, bytes]]:
        """Every hash's fields, but the stats' write times (the rebuild's `now`)."""
        return {
            k: {n: v for n, v in client.hgetall(k).items() if not n.startswith(b"w:")}
            for k in client.scan_iter("sk:*")
            if client.type(k) == b"hash"
        }

    client.flushdb()
    for name in ("spend", "big"):
        store.rebuild_online(name)
    alone = fields()
    client.flushdb()
    assert main(["--repo", str(repo), "rebuild-online", "--all"]) == 0
    out = capsys.readouterr().out
    assert "rebuilt view big" in out and "rebuilt view spend" in out and "2 views" in out
    assert fields() == alone  # every key and field (expiries: the unit test, same `now`)
    assert (
        store.get_online_features(refs, rows, now_ms=read_at, full_feature_names=True).to_dict()
        == before
    )
    assert main(["--repo", str(repo), "rebuild-online"]) == 2  # a view or --all
    assert main(["--repo", str(repo), "rebuild-online", "nope"]) == 1
