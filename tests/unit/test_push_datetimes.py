"""Datetimes pushed for a source's timestamp field: dict rows take them as DataFrames do.

A ``datetime``/``pd.Timestamp`` in a dict row becomes the field's units (ms, or µs for a
``timestamp-micros`` field), a naive one meaning UTC; a DataFrame's datetime column keeps its
microseconds for a ``timestamp-micros`` field.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import InputDataError
from engine.push import encode_rows
from engine.serde import SourceCodec
from engine.store import FeatureStore

DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

def schema(unit):
    return {"type": "record", "name": "E", "fields": [
        {"name": "id", "type": "string"},
        {"name": "x", "type": ["null", "double"], "default": None},
        {"name": "ts", "type": {"type": "long", "logicalType": unit}},
    ]}

e = Entity("e", join_keys=["id"])
ms_json = KafkaSource("ms_json", format="json", schema=schema("timestamp-millis"),
                      timestamp_field="ts")
us_avro = KafkaSource("us_avro", schema=schema("timestamp-micros"), timestamp_field="ts")
a = FeatureView("a", entity=e, source=ms_json, aggregations=[Aggregation("x", "sum", window="1h")])
b = FeatureView("b", entity=e, source=us_avro, aggregations=[Aggregation("x", "sum", window="1h")])
"""
NOW_MS = 1_800_000_000_000
AT = pd.Timestamp(NOW_MS - 5_000, unit="ms", tz="UTC") + pd.Timedelta(microseconds=123)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    repo: Path = tmp_path_factory.mktemp("push_datetimes")
    (repo / "defs.py").write_text(DEFS)
    return FeatureStore.from_repo(repo)


def _pushed_ts(store: FeatureStore, source: str, rows: object) -> list[int]:
    plan = store.plan.sources[source]
    codec = SourceCodec(plan)
    encoded = encode_rows(plan, rows, now_ms=NOW_MS)  # type: ignore[arg-type]
    return [codec.decode(key, value, now_ms=NOW_MS)["ts"] for key, value in encoded]


@pytest.mark.parametrize(("source", "per_ms"), [("ms_json", 1), ("us_avro", 1000)])
def test_dict_rows_take_datetimes_as_dataframes_do(
    store: FeatureStore, source: str, per_ms: int
) -> None:
    want = AT.value // (1_000_000 // per_ms)
    paris = AT.tz_convert("Europe/Paris")
    forms = [AT, paris, AT.tz_localize(None), AT.to_pydatetime(), paris.to_pydatetime(),
             AT.tz_localize(None).to_datetime64(), want]  # fmt: skip
    rows = [{"id": "k", "x": 1.0, "ts": form} for form in forms]
    assert _pushed_ts(store, source, rows) == [want] * len(forms)
    frame = pd.DataFrame({"id": ["k", "k"], "x": [1.0, 2.0], "ts": [AT, AT]})
    assert _pushed_ts(store, source, frame) == [want, want]
    naive = frame.assign(ts=frame["ts"].dt.tz_localize(None))
    assert _pushed_ts(store, source, naive) == [want, want]
    assert isinstance(forms[3], dt.datetime) and isinstance(forms[5], np.datetime64)


def test_a_null_datetime_is_refused_as_a_null_timestamp(store: FeatureStore) -> None:
    for source in ("ms_json", "us_avro"):
        with pytest.raises(InputDataError, match=r"row 1: field 'ts' is null"):
            _pushed_ts(store, source, [{"id": "k", "ts": AT}, {"id": "k", "ts": pd.NaT}])
