"""The bad-input catalogue: records a worker must dead-letter, with the reason it must give.

One table serves the pure unit test (``tests/unit/test_serde_catalogue.py``), the integration
test against real Kafka with both runtimes (``tests/integration/test_bad_input.py``) and the
throughput benchmark (``benchmarks/bad_input.py``). Every entry is built for a source kind —
schemaless Avro (``avro``), Confluent wire format (``confluent``) or JSON (``json``) — from a
valid row, so it differs from a good record by exactly the defect it names.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from engine.keys import encode_key
from engine.serde import SourceCodec

Kind = str  # "avro" | "confluent" | "json"
KINDS: tuple[Kind, ...] = ("avro", "confluent", "json")
SCHEMA_ID = 7  # the Confluent source's schema id
MAX_RECORD_BYTES = 64_000  # the limit the tests configure (decode.max_record_bytes)
DAY_MS = 86_400_000

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": ["null", "string"], "default": None},
        {"name": "merchant_id", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "qty", "type": "int"},
        {"name": "ratio", "type": ["null", "float"], "default": None},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["web", "pos"]}},
        {"name": "ts", "type": "long"},
    ],
}

DEFS = f"""
from engine import Aggregation, Entity, FeatureView, KafkaSource

SCHEMA = {SCHEMA!r}
customer = Entity("customer", join_keys=["customer_id"])
AGGS = [
    Aggregation("amount", "sum", window="1h"),
    Aggregation("amount", "count", window="lifetime"),
    Aggregation("ratio", "sum", window="lifetime"),
    Aggregation("qty", "sum", window="lifetime"),
]
src_avro = KafkaSource("AVRO", topic="AVRO", schema=SCHEMA, timestamp_field="ts")
src_confluent = KafkaSource("CONFLUENT", topic="CONFLUENT", schema=SCHEMA, timestamp_field="ts",
                            wire="confluent", schema_id={SCHEMA_ID})
src_json = KafkaSource("JSON", topic="JSON", schema=SCHEMA, timestamp_field="ts", format="json")
v_avro = FeatureView("v_avro", entity=customer, source=src_avro, aggregations=AGGS)
v_confluent = FeatureView("v_confluent", entity=customer, source=src_confluent, aggregations=AGGS)
v_json = FeatureView("v_json", entity=customer, source=src_json, aggregations=AGGS)
"""
FEATURES = ("amount_sum_1h", "amount_count_lifetime", "ratio_sum_lifetime", "qty_sum_lifetime")


def defs(names: dict[Kind, str]) -> str:
    """The definitions with each kind's source (and topic) named ``names[kind]``."""
    text = DEFS
    for kind, name in names.items():
        text = text.replace(f'"{kind.upper()}"', f'"{name}"')
    return text


@dataclass(frozen=True)
class Sample:
    """What a catalogue entry needs to build its record: the source's codec and the clock."""

    kind: Kind
    codec: SourceCodec
    now_ms: int
    base: Mapping[str, Any] | None = None  # another schema's valid row (the benchmark's)

    def row(self, **changes: Any) -> dict[str, Any]:
        """A valid row, with ``changes``."""
        good = {
            "customer_id": "c001",
            "merchant_id": "m1",
            "amount": 12.5,
            "qty": 3,
            "ratio": 0.1,
            "channel": "web",
        }
        return {**(self.base or good), "ts": self.now_ms - 60_000, **changes}

    def value(self, **changes: Any) -> bytes:
        """The record value of a row in this kind's format; JSON may carry NaN and ±Infinity."""
        row = self.row(**changes)
        if self.kind == "json":
            return json.dumps(row, separators=(",", ":")).encode()
        return self.codec.encode(row)

    def json(self, **changes: Any) -> bytes:
        """A JSON object (fields in ``changes`` set to ``DROP`` are left out)."""
        row = {k: v for k, v in self.row(**changes).items() if v is not DROP}
        return json.dumps(row, separators=(",", ":")).encode()

    def record(self, **changes: Any) -> tuple[bytes | None, bytes]:
        row = self.row(**changes)
        key = None if row["customer_id"] is None else encode_key([row["customer_id"]])
        return key, self.value(**changes)


DROP = object()  # a field left out of a JSON object
KEY = b"c001"

Build = Callable[[Sample], tuple[bytes | None, bytes | None]]


@dataclass(frozen=True)
class BadInput:
    """One bad record: the kinds it applies to, how to build it, the reason code expected, and
    fragments the human-readable reason must contain (the field or the problem it names)."""

    name: str
    kinds: tuple[Kind, ...]
    build: Build
    code: str
    says: tuple[str, ...]


def _replace_text(value: bytes, old: str, new: bytes) -> bytes:
    raw = old.encode()
    assert value.count(raw) == 1, (value, old)
    return value.replace(raw, new)


def _other_schema(s: Sample) -> bytes:
    """A value written with a schema that has one more field than the source's."""
    schema = {**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "extra", "type": "long"}]}
    out = io.BytesIO()
    if s.kind == "confluent":
        out.write(struct.pack(">bI", 0, SCHEMA_ID))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), {**s.row(), "extra": 99})
    return out.getvalue()


def _framed(s: Sample, magic: int, schema_id: int) -> bytes:
    return struct.pack(">bI", magic, schema_id) + s.codec.encode(s.row())[5:]


AVRO = ("avro", "confluent")
ALL = KINDS

CATALOGUE: tuple[BadInput, ...] = (
    # -- framing -----------------------------------------------------------------------------
    BadInput("tombstone", ALL, lambda s: (KEY, None), "null_value", ("null", "tombstone")),
    BadInput("empty Avro value", ("avro",), lambda s: (KEY, b""), "bad_avro", ("truncated",)),
    BadInput(
        "empty Confluent value",
        ("confluent",),
        lambda s: (KEY, b""),
        "bad_magic",
        ("0 bytes", "5-byte"),
    ),
    BadInput("empty JSON value", ("json",), lambda s: (KEY, b""), "bad_json", ("invalid JSON",)),
    BadInput(
        "oversized",
        ALL,
        lambda s: (KEY, s.value(merchant_id="m" * (MAX_RECORD_BYTES + 10))),
        "oversized",
        ("bytes", f"{MAX_RECORD_BYTES}-byte limit", "decode.max_record_bytes"),
    ),
    BadInput(
        "non-UTF-8 key",
        ALL,
        lambda s: (b"c\xc3\x28", s.value()),
        "bad_key",
        ("key is not UTF-8", "0xc3"),
    ),
    # -- Avro ----------------------------------------------------------------------------------
    BadInput(
        "truncated Avro",
        AVRO,
        lambda s: (KEY, s.value()[:-2]),
        "bad_avro",
        ("truncated or malformed Avro",),
    ),
    BadInput(
        "garbage bytes",
        ("avro",),
        lambda s: (KEY, b"\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
        "bad_avro",
        ("malformed Avro",),
    ),
    BadInput(
        "Avro of another schema (bytes left over)",
        AVRO,
        lambda s: (KEY, _other_schema(s)),
        "bad_avro",
        ("bytes left after the Avro record", "another schema"),
    ),
    BadInput(
        "Avro string not UTF-8",
        AVRO,
        lambda s: (KEY, _replace_text(s.value(merchant_id="mé"), "é", b"\xc3\x28")),
        "bad_utf8",
        ("not UTF-8",),
    ),
    BadInput(
        "JSON sent to an Avro source",
        ("avro",),
        lambda s: (KEY, json.dumps(s.row()).encode()),
        "bad_avro",
        ("looks like JSON", "format 'json'"),
    ),
    BadInput(
        "Confluent framing sent to a schemaless source",
        ("avro",),
        lambda s: (KEY, struct.pack(">bI", 0, 123) + s.value()),
        "bad_avro",
        ("Confluent wire format", "schema id 123", "wire 'confluent'"),
    ),
    BadInput(
        "wrong magic byte",
        ("confluent",),
        lambda s: (KEY, _framed(s, 1, SCHEMA_ID)),
        "bad_magic",
        ("magic byte 0x00", "got 0x01"),
    ),
    BadInput(
        "header shorter than 5 bytes",
        ("confluent",),
        lambda s: (KEY, b"\x00\x00\x07"),
        "bad_magic",
        ("3 bytes", "5-byte"),
    ),
    BadInput(
        "unknown schema id",
        ("confluent",),
        lambda s: (KEY, _framed(s, 0, SCHEMA_ID + 1)),
        "unknown_schema_id",
        (f"unknown schema id {SCHEMA_ID + 1}", f"reads schema id {SCHEMA_ID}"),
    ),
    # -- JSON ----------------------------------------------------------------------------------
    BadInput(
        "invalid JSON",
        ("json",),
        lambda s: (KEY, b'{"customer_id": "c001", "amount": '),
        "bad_json",
        ("invalid JSON",),
    ),
    BadInput(
        "JSON array, not an object",
        ("json",),
        lambda s: (KEY, b'[{"customer_id": "c001"}]'),
        "bad_json",
        ("an array", "expected an object"),
    ),
    BadInput(
        "JSON number, not an object",
        ("json",),
        lambda s: (KEY, b"42"),
        "bad_json",
        ("an integer", "expected an object"),
    ),
    BadInput(
        "JSON nested too deeply",
        ("json",),
        lambda s: (KEY, b"[" * 50_000),
        "bad_json",
        ("nested too deeply",),
    ),
    BadInput(
        "JSON integer of 5000 digits",
        ("json",),
        lambda s: (KEY, s.json(qty=DROP)[:-1] + b',"qty":' + b"7" * 5000 + b"}"),
        "bad_json",
        ("invalid JSON", "digits"),
    ),
    BadInput(
        "JSON bytes not UTF-8",
        ("json",),
        lambda s: (KEY, _replace_text(s.json(merchant_id="m_"), "m_", b"m\xff")),
        "bad_utf8",
        ("not UTF-8", "0xff"),
    ),
    BadInput(
        "JSON string with an unpaired surrogate",
        ("json",),
        lambda s: (KEY, _replace_text(s.json(merchant_id="m_"), "m_", b"m\\ud800")),
        "bad_utf8",
        ("'merchant_id'", "surrogate"),
    ),
    BadInput(
        "Avro sent to a JSON source",
        ("json",),
        lambda s: (KEY, b"\x00\x00\x00\x00\x07\x02\x08c001"),
        "bad_json",
        ("Confluent Avro", "format 'avro'"),
    ),
    # -- keys ----------------------------------------------------------------------------------
    BadInput(
        "null join key",
        ALL,
        lambda s: (None, s.value(customer_id=None)),
        "null_key",
        ("key field 'customer_id'", "null"),
    ),
    BadInput(
        "missing join key",
        ("json",),
        lambda s: (None, s.json(customer_id=DROP)),
        "null_key",
        ("key field 'customer_id'", "missing"),
    ),
    # -- timestamps ----------------------------------------------------------------------------
    BadInput(
        "missing timestamp",
        ("json",),
        lambda s: (KEY, s.json(ts=DROP)),
        "missing_field",
        ("'ts'", "missing", "a long"),
    ),
    BadInput(
        "null timestamp",
        ("json",),
        lambda s: (KEY, s.json(ts=None)),
        "missing_field",
        ("'ts'", "null"),
    ),
    BadInput(
        "negative timestamp",
        ALL,
        lambda s: (KEY, s.value(ts=-5)),
        "bad_timestamp",
        ("'ts'=-5", "negative"),
    ),
    BadInput(
        "timestamp 3 days ahead",
        ALL,
        lambda s: (KEY, s.value(ts=s.now_ms + 3 * DAY_MS)),
        "future_timestamp",
        ("'ts'", "ahead of the worker clock", "decode.max_future_ms"),
    ),
    BadInput(
        "timestamp in microseconds",
        ("avro", "json"),
        lambda s: (KEY, s.value(ts=s.now_ms * 1000)),
        "future_timestamp",
        ("looks like microseconds",),
    ),
    # -- field types and values ----------------------------------------------------------------
    BadInput(
        "string for an int",
        ("json",),
        lambda s: (KEY, s.json(qty="3")),
        "wrong_type",
        ("'qty'", "expected an int", 'a string "3"'),
    ),
    BadInput(
        "fraction for an int",
        ("json",),
        lambda s: (KEY, s.json(qty=3.5)),
        "wrong_type",
        ("'qty'", "expected an int", "3.5"),
    ),
    BadInput(
        "boolean for a double",
        ("json",),
        lambda s: (KEY, s.json(amount=True)),
        "wrong_type",
        ("'amount'", "expected a double", "a boolean"),
    ),
    BadInput(
        "object for a string",
        ("json",),
        lambda s: (KEY, s.json(merchant_id={"id": 1})),
        "wrong_type",
        ("'merchant_id'", "expected a string", "an object"),
    ),
    BadInput(
        "symbol not in the enum",
        ("json",),
        lambda s: (KEY, s.json(channel="fax")),
        "wrong_type",
        ("'channel'", '"fax"', "symbols"),
    ),
    BadInput(
        "int beyond 32 bits",
        ("json",),
        lambda s: (KEY, s.json(qty=2**40)),
        "out_of_range",
        ("'qty'", "Avro int"),
    ),
    BadInput(
        "float beyond 32 bits",
        ("json",),
        lambda s: (KEY, s.json(ratio=1e39)),
        "out_of_range",
        ("'ratio'", "Avro float"),
    ),
    BadInput(
        "NaN",
        ALL,
        lambda s: (KEY, s.value(amount=math.nan)),
        "not_finite",
        ("'amount'", "nan", "not a finite number"),
    ),
    BadInput(
        "-Infinity",
        ALL,
        lambda s: (KEY, s.value(amount=-math.inf)),
        "not_finite",
        ("'amount'", "-inf"),
    ),
    BadInput(
        "JSON 1e400 (overflows to inf)",
        ("json",),
        lambda s: (KEY, _replace_text(s.json(amount=12.5), "12.5", b"1e400")),
        "not_finite",
        ("'amount'", "inf"),
    ),
)


def bad_inputs(kind: Kind) -> list[BadInput]:
    """The catalogue entries that apply to a source of ``kind``."""
    return [b for b in CATALOGUE if kind in b.kinds]


def edge_valid(s: Sample) -> list[tuple[bytes | None, bytes]]:
    """Unusual records that are valid and must not be refused."""
    out = [
        s.record(amount=None),  # nullable field null
        s.record(merchant_id="café ☕ 東京"),  # non-ASCII text
        s.record(ratio=3.4e38),  # close to the largest float32
        (None, s.value()),  # unkeyed record: the entity comes from the payload
        s.record(ts=s.now_ms + 3_600_000),  # an hour ahead: within decode.max_future_ms
    ]
    if s.kind == "json":
        out += [
            (KEY, s.json(amount=7)),  # an integer for a double
            (KEY, s.json(amount=DROP, ratio=DROP)),  # nullable fields left out
            (KEY, s.json()[:-1] + b',"unknown":[1,2]}'),  # a field the schema does not have
            (KEY, s.json(merchant_id="m\U0001f600")),  # an escaped surrogate pair: fine
            (KEY, json.dumps(s.row(merchant_id="ü"), ensure_ascii=False).encode()),  # raw UTF-8
        ]
    return out


def float32(value: float) -> float:
    """``value`` rounded to an Avro float (32 bits), as every path stores ``ratio``."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])
