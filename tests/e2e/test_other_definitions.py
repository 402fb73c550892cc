"""Definitions unlike the example, end to end: online reads equal the processing-time backfill.

The payments example has string keys, an Avro source and batch transforms only. These
definitions take the other branches a team may declare: a JSON source, an integer join key
(negative and past 2**32 included) and a two-key entity (so its view is re-keyed away from
the topic's key), a row transform with a filter beside a batch transform, nullable int and
double inputs, hop windows, lifetime windows, every kind of aggregation, and values at the
edges (±0.0, 1e300, 1e-300, an int32 at its limits). Events are pushed in chunks while a
kafka-runtime worker runs; once it has caught up, every online value of every entity is
compared bit for bit with ``get_historical_features(mode="processing_time")`` at the read
time, from the log the worker wrote.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from connectors.kafka import dead_letter_topic
from engine.store import FeatureStore
from tests.stream_harness import (
    WorkerThread,
    delete_topics,
    same,
    unique,
    wait_caught_up,
    write_repo,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.redis]

DEFS = """
import pandas as pd
from engine import Aggregation, Entity, FeatureView, KafkaSource

user = Entity("user", join_keys=["user_id"])
user_region = Entity("user_region", join_keys=["user_id", "region"])

clicks = KafkaSource(
    "SOURCE", topic="SOURCE", format="json", timestamp_field="ts", key_fields=["user_id"],
    schema={"type": "record", "name": "Click", "fields": [
        {"name": "user_id", "type": "long"},
        {"name": "region", "type": "string"},
        {"name": "session", "type": ["null", "string"], "default": None},
        {"name": "value", "type": ["null", "double"], "default": None},
        {"name": "qty", "type": ["null", "int"], "default": None},
        {"name": "flag", "type": "boolean"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ]},
)

def doubled(row):
    if row["value"] is None:
        return None
    out = dict(row)
    out["value2"] = row["value"] * 2
    return out

def flagged(row):
    return bool(row["flag"])

def scaled(batch: pd.DataFrame) -> pd.DataFrame:
    out = batch[batch["qty"].notna()].copy()
    out["qty10"] = out["qty"].astype("int64") * 10
    return out

u_all = FeatureView("u_all", entity=user, source=clicks, allowed_lateness="10m", aggregations=[
    Aggregation("value", "sum", window="1h", hop="10m"),
    Aggregation("value", "mean", window="1d"),
    Aggregation("value", "variance", window="1d"),
    Aggregation("value", "stddev", window="lifetime"),
    Aggregation("value", "min", window="2h"),
    Aggregation("value", "max", window="2h"),
    Aggregation("qty", "sum", window="30m"),
    Aggregation("session", "count", window="1d"),
    Aggregation("session", "count_distinct", window="7d"),
    Aggregation("session", "approx_count_distinct", window="7d"),
    Aggregation("region", "first_n", window="1d", n=3),
    Aggregation("value", "last_n", window="1d", n=2),
    Aggregation("region", "first", window="lifetime"),
    Aggregation("session", "last", window="lifetime"),
    Aggregation("qty", "min", window="lifetime"),
])

ur = FeatureView("ur", entity=user_region, source=clicks, transform=doubled, filter=flagged,
                 columns={"value2": "double"}, aggregations=[
    Aggregation("value2", "sum", window="30m"),
    Aggregation("value2", "count", window="lifetime"),
    Aggregation("value2", "max", window="1h", hop="5m"),
])

ub = FeatureView("ub", entity=user, source=clicks, batch_transform=scaled,
                 columns={"qty10": "long"}, aggregations=[
    Aggregation("qty10", "sum", window="1h"),
    Aggregation("qty10", "mean", window="lifetime"),
    Aggregation("region", "count_distinct", window="1d"),
])
"""
USERS = [*range(-3, 30), 2**40, -(2**40)]
REGIONS = ["eu", "us", "", "é", 'x"y']
EVENTS = 3000
HOUR = 3_600_000


def _events(rng: random.Random, now: int) -> list[dict[str, Any]]:
    def value() -> float | None:
        if rng.random() < 0.15:
            return None
        return rng.choice([rng.uniform(-1e3, 1e3), 0.0, -0.0, 1e300, 1e-300, rng.randint(-5, 5)])

    def qty() -> int | None:
        if rng.random() < 0.3:
            return None
        return rng.choice([-(2**31), 2**31 - 1]) if rng.random() < 0.05 else rng.randint(-10, 10)

    return [
        {"user_id": rng.choice(USERS), "region": rng.choice(REGIONS),
         "session": None if rng.random() < 0.2 else f"s{rng.randint(0, 30)}",
         "value": value(), "qty": qty(), "flag": rng.random() < 0.6,
         # half within the hour (most admitted), half over three days (most too late for u_all)
         "ts": now - rng.randint(0, HOUR if rng.random() < 0.5 else 72 * HOUR)}
        for _ in range(EVENTS)
    ]  # fmt: skip


def test_online_reads_equal_processing_time_backfill_on_other_definitions(
    tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    source = unique("other")
    project = unique("other")
    repo = write_repo(tmp_path / "repo", DEFS.replace("SOURCE", source), project=project,
                      bootstrap=kafka_service, redis_url=stream_redis_url)  # fmt: skip
    store = FeatureStore.from_repo(repo)
    assert store.plan.views["ur"].join_keys == ("user_id", "region")
    store.apply()
    rows = _events(random.Random(2026), int(time.time() * 1000))
    try:
        with WorkerThread(store):
            for i in range(0, len(rows), 500):
                assert store.push(source, rows[i : i + 500]) == len(rows[i : i + 500])
            wait_caught_up(kafka_service, f"skewless.{project}", [source], 180)
            t_read = int(time.time() * 1000)
            by_user = [{"user_id": u} for u in USERS]
            by_pair = [{"user_id": u, "region": r} for u in USERS for r in REGIONS]
            user_refs = [f"{v}:{a.feature}" for v in ("u_all", "ub")
                         for a in store.plan.views[v].aggregations]  # fmt: skip
            pair_refs = [f"ur:{a.feature}" for a in store.plan.views["ur"].aggregations]
            online = [
                store.get_online_features(refs, ents, now_ms=t_read, full_feature_names=True)
                for refs, ents in ((user_refs, by_user), (pair_refs, by_pair))
            ]
    finally:
        delete_topics(kafka_service, [source, dead_letter_topic(source)])
    checked = filled = 0
    for refs, ents, resp in ((user_refs, by_user, online[0]), (pair_refs, by_pair, online[1])):
        labels = pd.DataFrame(ents).assign(event_timestamp=t_read)
        replay = store.get_historical_features(
            labels, refs, mode="processing_time", full_feature_names=True
        )
        values = resp.to_dict()
        for ref in refs:
            column = ref.replace(":", "__")
            for row, (got, want) in enumerate(zip(values[column], replay[column], strict=True)):
                assert same(got, want), f"{column} {ents[row]}: online {got!r}, backfill {want!r}"
                checked += 1
                filled += got not in (None, 0, 0.0, []) and got == got
    assert checked == len(USERS) * len(user_refs) + len(USERS) * len(REGIONS) * len(pair_refs)
    assert filled > checked // 2, f"only {filled} of {checked} values hold something"
