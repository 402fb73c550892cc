"""Native event-log writer: files fastavro and both readers read back, the fastavro path's
header, import through columns == import through rows, the columnar append rules."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.eventlog import EventLogReader, EventLogWriter
from engine import FeatureStore, _native
from engine.envelope import HISTORY_BASE, Envelope
from engine.errors import EventLogError
from engine.importer import import_frame
from engine.keys import partition_for
from engine.log_columns import EnvelopeColumns

SYNC = b"0123456789abcdef"

# -- randomised payload schemas --------------------------------------------------------------

_I64 = st.integers(-(2**63), 2**63 - 1)
_I32 = st.integers(-(2**31), 2**31 - 1)


def _nan_double(bits: int) -> Any:
    """A double NaN with payload ``bits`` (sign and quiet bit included)."""
    return float(struct.unpack("<d", struct.pack("<Q", 0x7FF0_0000_0000_0001 | bits))[0])


_DOUBLES = st.one_of(
    st.floats(allow_nan=False),
    st.just(-0.0),
    st.integers(0, 2**51 - 1).map(lambda b: _nan_double(b | (1 << 63) * (b & 1))),
)
_TEXT = st.text(max_size=8)  # unicode, astral planes included
_BYTES = st.binary(max_size=8)

# (name, avro type, value strategy, arrow type or None for a list of Python objects)
_PRIMITIVES: list[tuple[str, Any, st.SearchStrategy[Any], pa.DataType | None]] = [
    ("boolean", "boolean", st.booleans(), pa.bool_()),
    ("int", "int", _I32, pa.int64()),
    ("long", "long", _I64, pa.int64()),
    ("float", "float", st.floats(width=32, allow_nan=False), pa.float64()),
    ("double", "double", _DOUBLES, pa.float64()),
    ("string", "string", _TEXT, pa.large_string()),
    ("bytes", "bytes", _BYTES, pa.binary()),
    (
        "enum",
        {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]},
        st.sampled_from(["RED", "GREEN", "BLUE"]),
        pa.string(),
    ),
    ("fixed", {"type": "fixed", "name": "Four", "size": 4}, st.binary(min_size=4, max_size=4), pa.binary(4)),
]  # fmt: skip
_COMPLEX: list[tuple[str, Any, st.SearchStrategy[Any], pa.DataType | None]] = [
    ("array", {"type": "array", "items": "long"}, st.lists(_I64, max_size=4), None),
    ("map", {"type": "map", "values": "string"}, st.dictionaries(_TEXT, _TEXT, max_size=3), None),
    (
        "record",
        {"type": "record", "name": "Inner", "fields": [
            {"name": "x", "type": "long"}, {"name": "y", "type": ["null", "string"]}]},
        st.fixed_dictionaries({"x": _I64, "y": st.none() | _TEXT}),
        None,
    ),
    ("union", ["null", "long", "string"], st.none() | _I64 | _TEXT, None),
]  # fmt: skip


@st.composite
def payloads(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A payload schema, its columns (Arrow arrays or lists) and the rows they hold."""
    picked = draw(st.lists(st.sampled_from(range(len(_PRIMITIVES) + len(_COMPLEX))), min_size=1, max_size=6))  # fmt: skip
    rows = draw(st.integers(0, 30))
    fields, columns = [], {}
    values: dict[str, list[Any]] = {}
    for i, k in enumerate(picked):
        label, avro, strategy, arrow = (_PRIMITIVES + _COMPLEX)[k]
        name = f"f{i}_{label}"
        nullable = arrow is not None and draw(st.booleans())
        if isinstance(avro, dict) and "name" in avro:
            avro = {**avro, "name": f"{avro['name']}{i}"}
        cell = st.none() | strategy if nullable else strategy
        vals = draw(st.lists(cell, min_size=rows, max_size=rows))
        fields.append({"name": name, "type": ["null", avro] if nullable else avro})
        columns[name] = list(vals) if arrow is None else pa.array(vals, type=arrow)
        values[name] = vals
    schema = {"type": "record", "name": "P", "fields": fields}
    records = [{n: values[n][r] for n in values} for r in range(rows)]
    return schema, columns, records


def _same(a: Any, b: Any) -> bool:
    """Equal, doubles compared bit for bit (NaN payloads and -0.0 included)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)


def _native_file(
    writer: EventLogWriter, columns: Any, rows: int, codec: str, keys: Any = None
) -> bytes:
    offsets = np.arange(rows, dtype=np.int64) - 7
    return _native.write_log_file(
        writer._schema_json, {"skewless.envelope_version": "1"}, codec, 1, 3, offsets,
        keys, offsets * 10, offsets * 11, columns, sync=SYNC, block_bytes=200,
    )  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads(), st.sampled_from(["null", "deflate"]))
def test_fastavro_reads_back_what_was_written(
    case: tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]], codec: str
) -> None:
    schema, columns, records = case
    writer = EventLogWriter("memory://logwrite-prop", "src", schema, codec="null")
    data = _native_file(writer, columns, len(records), codec)
    reader = fastavro.reader(io.BytesIO(data))
    assert reader.metadata["avro.codec"] == codec
    back: list[Any] = list(reader)
    assert len(back) == len(records)
    for i, (got, want) in enumerate(zip(back, records, strict=True)):
        assert (got["partition"], got["offset"], got["key"]) == (3, i - 7, None)
        assert (got["event_time"], got["processed_at"]) == ((i - 7) * 10, (i - 7) * 11)
        payload = got["payload"]
        for name, value in want.items():
            if name.endswith("_float") and value is not None:
                assert payload[name] == struct.unpack("<f", struct.pack("<f", value))[0]
            else:
                assert _same(payload[name], value), (name, payload[name], value)


SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def _envelopes(n: int, partition: int = 0) -> list[Envelope]:
    return [
        Envelope(partition=partition, offset=HISTORY_BASE + i, key=f"c{i % 3}".encode(),
                 event_time_ms=1_000 + i, processed_at_ms=2_000 + i,
                 payload={"customer_id": f"c{i % 3}", "amount": None if i % 4 == 0 else i * 0.5,
                          "kind": "AB"[i % 2], "ts": 1_000 + i})
        for i in range(n)
    ]  # fmt: skip


def _as_columns(envs: list[Envelope]) -> EnvelopeColumns:
    return EnvelopeColumns(
        partition=envs[0].partition,
        offsets=np.array([e.offset for e in envs], dtype=np.int64),
        keys=[e.key for e in envs],
        event_time_ms=np.array([e.event_time_ms for e in envs], dtype=np.int64),
        processed_at_ms=np.array([e.processed_at_ms for e in envs], dtype=np.int64),
        payload={
            "customer_id": pa.array([e.payload["customer_id"] for e in envs]),
            "amount": pa.array([e.payload["amount"] for e in envs], type=pa.float64()),
            "kind": pa.array([e.payload["kind"] for e in envs]),
            "ts": np.array([e.payload["ts"] for e in envs], dtype=np.int64),
        },
    )


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_log_files_match_the_fastavro_path(tmp_path: Path, codec: Any) -> None:
    envs = _envelopes(2_000)
    old = EventLogWriter(str(tmp_path / "old"), "tx", SCHEMA, codec=codec)
    new = EventLogWriter(str(tmp_path / "new"), "tx", SCHEMA, codec=codec)
    [old_path] = old.append_history(envs)
    [new_path] = new.append_history_columns([_as_columns(envs)])
    assert Path(old_path).name == Path(new_path).name
    assert new.last_history_offset(0) == envs[-1].offset == new.last_offset(0)
    assert list(EventLogReader(str(tmp_path / "new")).read_all("tx")) == envs
    old_head = fastavro.reader(io.BytesIO(Path(old_path).read_bytes())).metadata
    new_head = fastavro.reader(io.BytesIO(Path(new_path).read_bytes())).metadata
    assert list(new_head.items()) == list(old_head.items())
    cols, meta = _native.read_container(Path(new_path).read_bytes())
    assert meta["skewless.records"] == b"2000"
    assert cols["offset"].to_pylist() == [e.offset for e in envs]
    assert cols["payload.kind"].to_pylist() == [e.payload["kind"] for e in envs]
    assert cols["key"].to_pylist() == [e.key for e in envs]


def test_null_codec_is_byte_identical_to_fastavro(tmp_path: Path) -> None:
    envs = _envelopes(3_000, partition=5)
    writer = EventLogWriter(str(tmp_path), "tx", SCHEMA, codec="null")
    meta = {"skewless.envelope_version": "1", "skewless.source": "tx", "skewless.records": "3000"}
    rows = [
        {"partition": e.partition, "offset": e.offset, "key": e.key, "event_time": e.event_time_ms,
         "processed_at": e.processed_at_ms, "payload": e.payload}
        for e in envs
    ]  # fmt: skip
    out = io.BytesIO()
    fastavro.writer(out, writer._schema, rows, codec="null", sync_interval=64 * 1024,
                    metadata=dict(meta), sync_marker=SYNC)  # fmt: skip
    cols = _as_columns(envs)
    ours = _native.write_log_file(
        writer._schema_json, meta, "null", 1, 5, cols.offsets, cols.keys, cols.event_time_ms,
        cols.processed_at_ms, cols.payload, sync=SYNC,
    )  # fmt: skip
    assert ours == out.getvalue()


def test_errors_name_the_field_and_row(tmp_path: Path) -> None:
    envs = _envelopes(5)
    cols = _as_columns(envs)
    bad = dict(cols.payload, kind=pa.array(["A", "B", "A", "C", "A"]))
    writer = EventLogWriter(str(tmp_path), "tx", SCHEMA)
    with pytest.raises(EventLogError, match=r"payload\.kind' row 3: \"C\" is not a symbol"):
        writer.append_history_columns([EnvelopeColumns(**{**_fields(cols), "payload": bad})])
    missing = {k: v for k, v in cols.payload.items() if k != "customer_id"}
    with pytest.raises(EventLogError, match="customer_id"):
        writer.append_history_columns([EnvelopeColumns(**{**_fields(cols), "payload": missing})])
    assert not list(tmp_path.rglob("*.avro"))  # nothing committed, no temp file left


def _fields(cols: EnvelopeColumns) -> dict[str, Any]:
    return {n: getattr(cols, n) for n in cols.__dataclass_fields__}


def test_append_columns_drops_held_and_repeated_offsets(tmp_path: Path) -> None:
    writer = EventLogWriter(str(tmp_path), "tx", SCHEMA)
    writer.append([Envelope(partition=2, offset=4, key=None, event_time_ms=0, processed_at_ms=0,
                            payload={"customer_id": "c", "amount": 1.0, "kind": "A", "ts": 0})])  # fmt: skip
    payload = _native.columns_from_arrays({
        "customer_id": pa.array(["a", "b", "c", "d", "e"]),
        "amount": pa.array([1.0, None, 3.0, 4.0, 5.0]),
        "kind": pa.array(["A", "B", "A", "B", "A"]),
        "ts": np.arange(5, dtype=np.int64),
    })  # fmt: skip
    offsets = np.array([9, 3, 6, 6, 4], dtype=np.int64)
    times = np.arange(5, dtype=np.int64) * 100
    paths = writer.append_columns(2, offsets, [b"a", None, b"c", b"d", b"e"], times, times, payload)
    assert [Path(p).name for p in paths] == ["00000000000000000006-00000000000000000009.avro"]
    assert writer.last_offset(2) == 9
    log = list(EventLogReader(str(tmp_path)).read("tx", 2))
    assert [(e.offset, e.key, e.payload["customer_id"]) for e in log] == [
        (4, None, "c"), (6, b"c", "c"), (9, b"a", "a"),
    ]  # fmt: skip
    assert writer.append_columns(2, offsets, None, times, times, payload) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=50), st.integers(1, 300))
def test_kafka_partitions_is_partition_for(keys: list[bytes], partitions: int) -> None:
    got = _native.kafka_partitions(keys, partitions).tolist()
    assert got == [partition_for(k, partitions) for k in keys]


# -- import: columns vs rows -------------------------------------------------------------------


class RowSink:
    """The log as a plain HistorySink: import takes the row path."""

    def __init__(self, writer: EventLogWriter) -> None:
        self._writer = writer

    def append_history(self, records: Any) -> list[str]:
        return self._writer.append_history(records)

    def last_history_offset(self, partition: int) -> int | None:
        return self._writer.last_history_offset(partition)


HEADER = """
from engine import Entity, KafkaSource, FeatureView, Aggregation
customer = Entity("customer", join_keys=["customer_id", "region"])
tx = KafkaSource("tx", schema={
    "type": "record", "name": "Tx", "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "region", "type": "long"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "qty", "type": "int"},
        {"name": "flag", "type": ["null", "boolean"], "default": None},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]},
    timestamp_field="ts", key_fields=KEYS)
v = FeatureView("v", entity=customer, source=tx,
                aggregations=[Aggregation("amount", "sum", window="1d")])
"""


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.random(n) * 100
    amount[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}é" for i in rng.integers(0, 40, n)],
            "region": rng.integers(-3, 3, n),
            "amount": amount,
            "qty": rng.integers(-5, 5, n).astype("float64"),  # integral floats are fine
            "flag": pd.array([None if i % 5 == 0 else bool(i % 2) for i in range(n)]),
            "ts": pd.to_datetime(1_700_000_000_000 + rng.integers(0, 10**8, n), unit="ms"),
            "processed_at": 1_800_000_000_000 + np.arange(n),
        }
    )


@pytest.mark.parametrize("keys", ['["customer_id"]', '["region"]', '["customer_id", "region"]'])
def test_import_through_columns_equals_import_through_rows(
    make_repo: Callable[..., Path], tmp_path: Path, keys: str
) -> None:
    repo = make_repo("", yaml="kafka:\n  partitions: 5\n", header=HEADER.replace("KEYS", keys))
    store = FeatureStore.from_repo(repo)
    source = store.plan.sources["tx"]
    df = _frame(700, seed=len(keys))
    logs = {}
    for path in ("rows", "columns"):
        root = str(tmp_path / path)
        writer = EventLogWriter(root, "tx", dict(source.schema))
        sink: Any = writer if path == "columns" else RowSink(writer)
        for part in (df.iloc[:300], df.iloc[300:]):  # a second import continues the offsets
            result = import_frame(source, part, sink, 5)
            assert result.rows == len(part)
        logs[path] = list(EventLogReader(root).read_all("tx"))
    assert len(logs["columns"]) == len(df)
    assert logs["columns"] == logs["rows"]
