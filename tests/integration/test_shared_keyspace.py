"""Two views defined alike share one online keyspace (it is named by the definition's
fingerprint): changing one and rebuilding it must not drop the keyspace the other still
reads."""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from connectors.eventlog import EventLogWriter
from engine.keys import encode_key, partition_for
from engine.registry import read_retired, write_applied
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.integration.test_rebuild_online import DEFS, Letters
from tests.stream_harness import raw_redis

pytestmark = pytest.mark.redis

TWIN = """
twin = FeatureView("twin", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="5m", hop="1m"),
    Aggregation("amount", "max", window="10m", hop="1m"),
    Aggregation("amount", "count", window="lifetime"),
])
"""


def make_store(tmp_path: Path, window: str, monkeypatch: pytest.MonkeyPatch) -> FeatureStore:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "defs.py").write_text(textwrap.dedent(DEFS.format(window=window)) + TWIN)
    (repo / "skewless.yaml").write_text("kafka:\n  partitions: 3\n")
    return FeatureStore.from_repo(repo)


def test_rebuilding_a_changed_view_keeps_the_keyspace_its_twin_still_uses(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_URL", redis_url)
    store = make_store(tmp_path, "5m", monkeypatch)
    shared = store.plan.views["spend"].fingerprint
    assert store.plan.views["twin"].fingerprint == shared  # defined alike: one keyspace
    write_applied(store.config.registry_path, store.plan)
    codec = SourceCodec(store.plan.sources["tx"])
    rnd = random.Random(3)
    now = time.time_ns() // 1_000_000
    customers = [f"c{i}" for i in range(12)]
    offsets = [0, 0, 0]
    records = []
    for _ in range(600):
        c = rnd.choice(customers)
        key = encode_key([c])
        p = partition_for(key, 3)
        value = codec.encode(
            {
                "customer_id": c,
                "amount": rnd.choice([None, 0.5, 2.5]),
                "ts": now - rnd.randrange(240_000),
            }
        )
        records.append(
            SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key, value=value)
        )
        offsets[p] += 1
    log = EventLogWriter(store.config.event_log_root, "tx", dict(store.plan.sources["tx"].schema))
    core = BatchProcessor(store.plan, "tx", online=store.online_store, log=log, dead=Letters())
    for start in range(0, len(records), 200):
        core.process(records[start : start + 200])
    read_at = time.time_ns() // 1_000_000 + 1
    rows = [{"customer_id": c} for c in customers]
    twin_refs = [f"twin:{f}" for f in store.plan.views["twin"].features]
    twin_before = store.get_online_features(twin_refs, rows, now_ms=read_at).to_dict()
    assert any(v for v in twin_before["amount_count_lifetime"])
    # two views wrote one keyspace and nothing counted twice: the reads equal the replay
    labels = pd.DataFrame({"customer_id": customers, "event_timestamp": [read_at] * len(customers)})
    replay = store.get_historical_features(labels, twin_refs, mode="processing_time", workers=1)
    for feature in store.plan.views["twin"].features:
        expected = [None if isinstance(v, float) and v != v else v for v in replay[feature]]
        assert twin_before[feature] == expected, feature
    client = raw_redis(redis_url)
    shared_keys = len(list(client.scan_iter(f"sk:{shared}:*")))
    assert shared_keys == len(customers)

    changed = make_store(tmp_path, "10m", monkeypatch)
    assert changed.plan.views["spend"].fingerprint != shared
    assert changed.plan.views["twin"].fingerprint == shared
    write_applied(changed.config.registry_path, changed.plan)
    assert read_retired(changed.config.registry_path) == {"spend": [shared]}
    outcome = changed.rebuild_online("spend")
    assert outcome.dropped_keys == {}  # `twin` still reads it: not retired after all
    assert read_retired(changed.config.registry_path) == {}
    assert len(list(client.scan_iter(f"sk:{shared}:*"))) == shared_keys
    assert changed.get_online_features(twin_refs, rows, now_ms=read_at).to_dict() == twin_before
    spend_refs = [f"spend:{f}" for f in changed.plan.views["spend"].features]
    spend = changed.get_online_features(spend_refs, rows, now_ms=read_at).to_dict()
    assert spend["amount_count_lifetime"] == twin_before["amount_count_lifetime"]
