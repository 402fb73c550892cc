"""The native Avro decoder (engine._native.read_container / decode_datums) against fastavro.

Random record schemas (every primitive, enum, fixed, arrays, maps, nested records, unions of
one or several non-null branches, logical types) and random values are written by fastavro;
the native columns must equal what fastavro reads back after the same flattening (a record
field becomes ``<field>.<sub>`` columns), floats bit for bit. Also: a real event log, and
corrupt inputs that must raise DecodeError, never panic.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import pathlib
import random
import struct
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.eventlog import EventLogReader, EventLogWriter
from engine import _native
from engine.envelope import Envelope
from engine.errors import DecodeError

ROOT = pathlib.Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------
# Random schemas and values

PRIMS = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
LOGICAL = [
    {"type": "long", "logicalType": "timestamp-millis"},
    {"type": "long", "logicalType": "timestamp-micros"},
    {"type": "int", "logicalType": "date"},
    {"type": "int", "logicalType": "time-millis"},
    {"type": "long", "logicalType": "time-micros"},
    {"type": "string", "logicalType": "uuid"},
    {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
]
_names = itertools.count()


def _name(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def _kind(t: Any) -> str:
    """A key that two branches of one union must not share."""
    if isinstance(t, str):
        return t
    if isinstance(t, dict) and t["type"] in ("record", "enum", "fixed"):
        return t["name"]
    if isinstance(t, dict) and t["type"] in ("array", "map"):
        return t["type"]
    return t["type"] if isinstance(t, dict) else "union"


@st.composite
def types(draw: st.DrawFn, depth: int = 0, in_union: bool = False, branch: bool = False) -> Any:
    # a branch of a multi-type union holds no logical type, at any depth: fastavro's writer
    # tries the branches in order and a logical converter raises on another branch's value
    # (a dict meant for a record branch is tried as a map of dates first)
    choices = ["prim", "prim", "enum", "fixed"] + ([] if branch else ["logical"])
    if depth < 2:
        choices += ["array", "map", "record"] + ([] if in_union else ["opt", "union"])
    kind = draw(st.sampled_from(choices))
    if kind == "prim":
        return draw(st.sampled_from(PRIMS))
    if kind == "logical":
        return dict(draw(st.sampled_from(LOGICAL)))
    if kind == "enum":
        n = draw(st.integers(1, 4))
        return {"type": "enum", "name": _name("E"), "symbols": [f"S{i}" for i in range(n)]}
    if kind == "fixed":
        return {"type": "fixed", "name": _name("F"), "size": draw(st.integers(0, 6))}
    if kind == "array":
        return {"type": "array", "items": draw(types(depth + 1, branch=branch))}
    if kind == "map":
        return {"type": "map", "values": draw(types(depth + 1, branch=branch))}
    if kind == "record":
        return draw(records(depth + 1, branch=branch))
    if kind == "opt":
        inner = draw(types(depth + 1, in_union=True).filter(lambda t: t != "null"))
        return ["null", inner] if draw(st.booleans()) else [inner, "null"]
    branches = draw(
        st.lists(
            types(depth + 1, in_union=True, branch=True), min_size=2, max_size=4, unique_by=_kind
        )
    )
    return branches


@st.composite
def records(draw: st.DrawFn, depth: int = 0, branch: bool = False) -> dict[str, Any]:
    n = draw(st.integers(1, 5))
    return {
        "type": "record",
        "name": _name("R"),
        "fields": [{"name": f"f{i}", "type": draw(types(depth, branch=branch))} for i in range(n)],
    }


def values(t: Any) -> st.SearchStrategy[Any]:
    """Values of Avro type ``t`` as fastavro writes them (logical types as raw values)."""
    if isinstance(t, list):
        return st.one_of([values(b) for b in t])
    if isinstance(t, dict):
        kind = t["type"]
        if "logicalType" in t:
            return values(kind)
        if kind == "enum":
            return st.sampled_from(t["symbols"])
        if kind == "fixed":
            return st.binary(min_size=t["size"], max_size=t["size"])
        if kind == "array":
            return st.lists(values(t["items"]), max_size=3)
        if kind == "map":
            return st.dictionaries(st.text(max_size=3), values(t["values"]), max_size=3)
        if kind == "record":
            return st.fixed_dictionaries({f["name"]: values(f["type"]) for f in t["fields"]})
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32),
        "double": st.floats(),
        "bytes": st.binary(max_size=5),
        "string": st.text(max_size=5),
    }[t]


def strip(schema: Any) -> Any:
    """``schema`` without logicalType annotations (fastavro then reads raw values)."""
    if isinstance(schema, dict):
        return {k: strip(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip(v) for v in schema]
    return schema


def norm(v: Any) -> Any:
    """A comparable form in which floats compare by their bits (NaN, -0.0)."""
    if isinstance(v, float):
        return ("f", struct.pack("<d", v))
    if isinstance(v, dict):
        return ("d", [(k, norm(x)) for k, x in v.items()])
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


def _record_branch(t: Any) -> dict[str, Any] | None:
    if isinstance(t, dict) and t.get("type") == "record":
        return t
    if isinstance(t, list) and len(t) == 2 and "null" in t:
        other = t[1] if t[0] == "null" else t[0]
        if isinstance(other, dict) and other.get("type") == "record":
            return other
    return None


def flatten(schema: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """fastavro's records as the native columns: record fields flattened one level."""
    cols: dict[str, list[Any]] = {}
    for f in schema["fields"]:
        rec = _record_branch(f["type"])
        if rec is None:
            cols[f["name"]] = [r[f["name"]] for r in rows]
            continue
        for sub in rec["fields"]:
            cols[f"{f['name']}.{sub['name']}"] = [
                None if r[f["name"]] is None else r[f["name"]][sub["name"]] for r in rows
            ]
    return cols


def native_lists(cols: dict[str, Any]) -> dict[str, list[Any]]:
    return {k: (v if isinstance(v, list) else v.to_pylist()) for k, v in cols.items()}


def container(schema: Any, rows: list[Any], codec: str) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, schema, rows, codec=codec, sync_interval=200)
    return buf.getvalue()


@st.composite
def schema_and_rows(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    schema = draw(records())
    rows = draw(st.lists(values(schema), min_size=0, max_size=12))
    return schema, rows


FAST = settings(max_examples=70, deadline=None, suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------------------------
# Round trips


@FAST
@given(schema_and_rows(), st.sampled_from(["null", "deflate"]))
def test_container_matches_fastavro(case: tuple[dict[str, Any], list[Any]], codec: str) -> None:
    schema, rows = case
    data = container(schema, rows, codec)
    expected_rows = list(fastavro.reader(io.BytesIO(container(strip(schema), rows, codec))))
    cols, meta = _native.read_container(data, None)
    assert meta["avro.codec"] == codec.encode()
    assert json.loads(meta["avro.schema"])["name"] == schema["name"]
    expected = flatten(schema, expected_rows)
    got = native_lists(cols)
    assert list(got) == list(expected)
    assert norm(got) == norm(expected)
    # A projection builds only the named columns, with the same cells.
    if expected:
        pick = sorted(random.Random(len(rows)).sample(list(expected), k=1 + len(expected) // 2))
        sub = native_lists(_native.read_container(data, pick)[0])
        assert sorted(sub) == pick
        assert norm(sub) == norm({k: expected[k] for k in sub})


@FAST
@given(schema_and_rows())
def test_datums_match_fastavro_and_bad_ones_are_reported(
    case: tuple[dict[str, Any], list[Any]],
) -> None:
    schema, rows = case
    parsed = fastavro.parse_schema(strip(schema))
    datums = []
    for r in rows:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        datums.append(buf.getvalue())
    expected_rows = [fastavro.schemaless_reader(io.BytesIO(d), parsed, None) for d in datums]
    # Interleave failures: trailing bytes, and a truncation of a non-empty datum.
    bad: list[int] = []
    mixed: list[bytes] = []
    for d in datums:
        mixed.append(d)
        if d:
            bad.append(len(mixed))
            mixed.append(d[:-1] if len(d) % 2 else d + b"\x00")
    cols, errors = _native.decode_datums(json.dumps(schema), mixed, None)
    got_bad = [i for i, _ in errors]
    # A cut datum can still be a valid (shorter) record only if the schema allows it;
    # every index reported must be one of the mangled ones, and the good rows must match.
    assert set(got_bad) <= set(bad)
    assert all(isinstance(reason, str) and reason for _, reason in errors)
    got = native_lists(cols)
    if len(got_bad) == len(bad):
        assert norm(got) == norm(flatten(schema, expected_rows))


# ---------------------------------------------------------------------------------------
# The event log


def test_event_log_matches_event_log_reader(tmp_path: pathlib.Path) -> None:
    payload_schema = json.loads((ROOT / "definitions/schemas/transaction.avsc").read_text())
    writer = EventLogWriter(str(tmp_path), "tx", payload_schema)
    rng = random.Random(3)
    recs = [
        Envelope(
            partition=p,
            offset=o,
            key=None if o % 7 == 0 else f"c{o}".encode(),
            event_time_ms=1_700_000_000_000 + o,
            processed_at_ms=1_700_000_000_500 + o,
            payload={
                "transaction_id": f"t{o}",
                "customer_id": f"c{rng.randrange(50)}",
                "merchant_id": "m\u00e9",
                "amount": None if o % 5 == 0 else rng.choice([1.5, -0.0, math.inf, 1e-310]),
                "currency": "EUR",
                "country": "DE",
                "card_present": o % 2 == 0,
                "ts": 1_700_000_000_000 + o,
            },
        )
        for p in range(2)
        for o in range(p * 1000, p * 1000 + 3000)
    ]
    paths = writer.append(recs)
    assert len(paths) == 2
    expected = list(EventLogReader(str(tmp_path)).read_all("tx"))
    got: dict[str, list[Any]] = {}
    for path in sorted(paths):
        cols, meta = _native.read_container(pathlib.Path(path).read_bytes(), None)
        assert meta["avro.codec"] == b"deflate"
        for k, v in native_lists(cols).items():
            got.setdefault(k, []).extend(v)
    assert got["partition"] == [e.partition for e in expected]
    assert got["offset"] == [e.offset for e in expected]
    assert got["key"] == [e.key for e in expected]
    assert got["event_time"] == [e.event_time_ms for e in expected]
    assert got["processed_at"] == [e.processed_at_ms for e in expected]
    for f in payload_schema["fields"]:
        assert norm(got[f"payload.{f['name']}"]) == norm([e.payload[f["name"]] for e in expected])


# ---------------------------------------------------------------------------------------
# Corrupt input

SIMPLE = {
    "type": "record",
    "name": "S",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": ["null", "string"]},
        {"name": "x", "type": "double"},
    ],
}


def _simple_file(codec: str = "deflate") -> bytes:
    rows = [{"id": i, "name": None if i % 3 else f"n{i}", "x": i / 7} for i in range(500)]
    return container(SIMPLE, rows, codec)


def test_truncated_file_is_a_clear_error() -> None:
    data = _simple_file()
    with pytest.raises(DecodeError, match=r"block \d+ \(file byte \d+\)"):
        _native.read_container(data[:-40], None)


def test_bad_sync_marker_is_a_clear_error() -> None:
    data = bytearray(_simple_file("null"))
    data[-1] ^= 0xFF
    with pytest.raises(DecodeError, match="sync marker"):
        _native.read_container(bytes(data), None)


def test_not_avro_and_unknown_codec_and_projection() -> None:
    with pytest.raises(DecodeError, match="not an Avro object container"):
        _native.read_container(b"PAR1....", None)
    buf = io.BytesIO()
    fastavro.writer(buf, SIMPLE, [{"id": 1, "name": None, "x": 0.0}], codec="null")
    patched = buf.getvalue().replace(b"\x08null", b"\x08zstd", 1)
    with pytest.raises(DecodeError, match="codec"):
        _native.read_container(patched, None)
    with pytest.raises(DecodeError, match="nope"):
        _native.read_container(_simple_file(), ["id", "nope"])
    with pytest.raises(DecodeError, match="unknown type"):
        _native.decode_datums(
            '{"type":"record","name":"R","fields":[{"name":"a","type":"X"}]}', [], None
        )


def test_garbage_and_bad_union_datums_are_reported_by_index() -> None:
    good = io.BytesIO()
    fastavro.schemaless_writer(
        good, fastavro.parse_schema(SIMPLE), {"id": 5, "name": "a", "x": 1.0}
    )
    ok = good.getvalue()
    bad_union = ok[:1] + b"\x06" + ok[2:]  # branch index 3 of a 2-branch union
    cols, errors = _native.decode_datums(
        json.dumps(SIMPLE), [ok, b"\xff" * 11, bad_union, ok[:-3], ok], None
    )
    assert [i for i, _ in errors] == [1, 2, 3]
    assert "varint" in errors[0][1]
    assert "field 'name' at byte 1" in errors[1][1] and "branch index 3" in errors[1][1]
    assert "field 'x'" in errors[2][1] and "truncated" in errors[2][1]
    assert cols["id"].to_pylist() == [5, 5]
    assert cols["name"].to_pylist() == ["a", "a"]


def test_random_corruption_never_panics() -> None:
    rng = random.Random(11)
    for codec in ("null", "deflate"):
        data = _simple_file(codec)
        for _ in range(300):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            cut = rng.choice([len(mutated), rng.randrange(len(mutated))])
            with contextlib.suppress(DecodeError):
                _native.read_container(bytes(mutated[:cut]), None)
