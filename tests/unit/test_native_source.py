"""``SourceCodec.decode_batch`` (native batch decoding) against ``SourceCodec.decode``: the same
records kept, their columns equal to ``decode``'s payloads (floats bit for bit), and every
refused record refused with the same code and the same reason text."""

from __future__ import annotations

import io
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _native
from engine.errors import RecordRefused
from engine.plan import Plan, SourcePlan
from engine.serde import DecodedBatch, DecodeLimits, SourceCodec
from engine.store import FeatureStore
from tests.bad_inputs import (
    CATALOGUE,
    KINDS,
    MAX_RECORD_BYTES,
    SCHEMA,
    SCHEMA_ID,
    Kind,
    Sample,
    bad_inputs,
    defs,
    edge_valid,
)

NOW = 1_800_000_000_000
LIMITS = DecodeLimits(max_record_bytes=MAX_RECORD_BYTES)
NAMES: dict[Kind, str] = {"avro": "tx_avro", "confluent": "tx_confluent", "json": "tx_json"}
DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"
Record = tuple[bytes | None, bytes | None]
Outcome = tuple[str, Any]  # ("kept", payload) or ("refused", (code, text))


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    repo = tmp_path_factory.mktemp("native_source")
    (repo / "defs.py").write_text(defs(NAMES))
    return FeatureStore.from_repo(repo).plan


@pytest.fixture(scope="module")
def transactions() -> SourcePlan:
    return FeatureStore.from_repo(DEFINITIONS).plan.sources["transactions"]


def sample(plan: Plan, kind: Kind, limits: DecodeLimits = LIMITS) -> Sample:
    return Sample(kind, SourceCodec(plan.sources[NAMES[kind]], limits), NOW)


def same(a: Any, b: Any) -> bool:
    """Equal, floats bit for bit."""
    if isinstance(a, float) and isinstance(b, float):
        return a.hex() == b.hex() or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def split(records: list[Record]) -> tuple[list[bytes | None], list[bytes | None]]:
    return [k for k, _ in records], [v for _, v in records]


def one_by_one(codec: SourceCodec, records: list[Record], now_ms: int = NOW) -> list[Outcome]:
    out: list[Outcome] = []
    for key, value in records:
        try:
            out.append(("kept", codec.decode(key, value, now_ms=now_ms)))
        except RecordRefused as exc:
            out.append(("refused", (exc.code, _text(exc))))
    return out


def _text(exc: RecordRefused) -> str:
    """The reason, without the object address some fastavro messages carry (which differs
    between two decodes of the same bytes)."""
    return re.sub(r" object at 0x[0-9a-f]+>", " object at 0x…>", str(exc))


def batched(codec: SourceCodec, records: list[Record], now_ms: int = NOW) -> list[Outcome]:
    """``decode_batch``'s outcome per record, checking the batch's own invariants."""
    batch = codec.decode_batch(*split(records), now_ms=now_ms)
    assert isinstance(batch, DecodedBatch)
    assert batch.columns.rows == len(batch.kept) == len(batch.columns)
    assert batch.kept == sorted(batch.kept)
    assert [i for i, _ in batch.refused] == sorted(i for i, _ in batch.refused)
    assert sorted([*batch.kept, *(i for i, _ in batch.refused)]) == list(range(len(records)))
    assert batch.columns.names == [f["name"] for f in codec.source.schema["fields"]]
    out: dict[int, Outcome] = {}
    for index, row in zip(batch.kept, batch.columns.to_pylist(), strict=True):
        out[index] = ("kept", row)
    for index, exc in batch.refused:
        out[index] = ("refused", (exc.code, _text(exc)))
    return [out[i] for i in range(len(records))]


def assert_same_outcomes(codec: SourceCodec, records: list[Record], now_ms: int = NOW) -> None:
    want, got = one_by_one(codec, records, now_ms), batched(codec, records, now_ms)
    for i, ((want_kind, want_what), (got_kind, got_what)) in enumerate(zip(want, got, strict=True)):
        assert got_kind == want_kind, (i, want_what, got_what)
        if want_kind == "refused":
            assert got_what == want_what, i
        else:
            assert got_what.keys() == want_what.keys(), i
            for name, value in want_what.items():
                assert same(got_what[name], value), (i, name, value, got_what[name])


def native_codes(codec: SourceCodec, records: list[Record]) -> dict[int, str]:
    """The codes the core alone gives (before Python builds the reasons)."""
    decoder = codec._wire
    assert decoder is not None
    _, _, refused = decoder.decode_batch(*split(records), NOW)
    return dict(refused)


# -- the catalogue ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_catalogue_mixed_with_valid_records_decodes_as_one_by_one(
    plan: Plan, kind: Kind
) -> None:
    s = sample(plan, kind)
    valid = [s.record(), *edge_valid(s)]
    bad = [entry.build(s) for entry in bad_inputs(kind)]
    records: list[Record] = []
    for i, record in enumerate(bad):  # a valid record between bad ones, and runs of each
        records.append(record)
        records.append(valid[i % len(valid)])
    records += valid
    assert_same_outcomes(s.codec, records)
    codes = [o[1][0] for o in batched(s.codec, records) if o[0] == "refused"]
    assert codes == [entry.code for entry in bad_inputs(kind)]


@pytest.mark.parametrize("kind", ["avro", "confluent"])
def test_the_core_gives_python_s_code_for_every_catalogue_entry(plan: Plan, kind: Kind) -> None:
    s = sample(plan, kind)
    entries = bad_inputs(kind)
    codes = native_codes(s.codec, [entry.build(s) for entry in entries])
    assert codes == {i: entry.code for i, entry in enumerate(entries)}


def test_every_catalogue_entry_alone_and_the_empty_batch(plan: Plan) -> None:
    for kind in KINDS:
        s = sample(plan, kind)
        for entry in bad_inputs(kind):
            assert_same_outcomes(s.codec, [entry.build(s)])
        empty = s.codec.decode_batch([], [], now_ms=NOW)
        assert (empty.columns.rows, empty.kept, empty.refused) == (0, [], [])
        assert empty.columns.names == [f["name"] for f in SCHEMA["fields"]]
    assert {e.code for e in CATALOGUE} <= {c for k in KINDS for c in codes_of(plan, k)}


def codes_of(plan: Plan, kind: Kind) -> set[str]:
    s = sample(plan, kind)
    records = [entry.build(s) for entry in bad_inputs(kind)]
    return {exc.code for _, exc in s.codec.decode_batch(*split(records), now_ms=NOW).refused}


# -- records the core refuses but Python accepts ---------------------------------------------


def _with_channel_index(s: Sample, index: int) -> bytes:
    """A valid record whose enum ``channel`` is written as the raw index ``index``."""
    fields = [{**f, "type": "int"} if f["name"] == "channel" else f for f in SCHEMA["fields"]]
    schema = fastavro.parse_schema({**SCHEMA, "fields": fields})
    out = io.BytesIO()
    if s.kind == "confluent":
        out.write(struct.pack(">bI", 0, SCHEMA_ID))
    fastavro.schemaless_writer(out, schema, {**s.row(), "channel": index})
    return out.getvalue()


@pytest.mark.parametrize("kind", ["avro", "confluent"])
def test_a_record_only_python_accepts_is_spliced_into_the_columns_in_input_order(
    plan: Plan, kind: Kind
) -> None:
    s = sample(plan, kind)
    # fastavro reads enum index -1 as the last symbol (Python's negative indexing); the core
    # refuses it: a disagreement, whose payload must still reach the columns.
    odd = (b"c001", _with_channel_index(s, -1))
    records: list[Record] = [s.record(qty=1), odd, (b"c001", None), s.record(qty=4), odd]
    assert native_codes(s.codec, records) == {1: "bad_avro", 2: "null_value", 4: "bad_avro"}
    assert s.codec.decode(*odd, now_ms=NOW)["channel"] == "pos"
    batch = s.codec.decode_batch(*split(records), now_ms=NOW)
    assert batch.kept == [0, 1, 3, 4]
    assert [exc.code for _, exc in batch.refused] == ["null_value"]
    assert batch.columns.column("channel") == ["web", "pos", "web", "pos"]
    assert batch.columns.column("qty") == [1, 3, 4, 3]
    assert_same_outcomes(s.codec, records)


# -- randomised valid and mutated records -----------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
DOUBLES = st.floats(allow_nan=False, allow_infinity=False)
FLOAT32S = st.floats(width=32, allow_nan=False, allow_infinity=False)
TIMES = st.integers(0, NOW + 86_400_000)

CATALOGUE_ROWS = st.fixed_dictionaries(
    {
        "customer_id": TEXT,
        "merchant_id": TEXT,
        "amount": st.none() | DOUBLES,
        "qty": st.integers(-(2**31), 2**31 - 1),
        "ratio": st.none() | FLOAT32S,
        "channel": st.sampled_from(["web", "pos"]),
        "ts": TIMES,
    }
)
TRANSACTION_ROWS = st.fixed_dictionaries(
    {
        "transaction_id": TEXT,
        "customer_id": TEXT,
        "merchant_id": TEXT,
        "amount": st.none() | DOUBLES,
        "currency": TEXT,
        "country": TEXT,
        "card_present": st.booleans(),
        "ts": TIMES,
    }
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_random_valid_records_of_the_catalogue_schema(
    plan: Plan, data: st.DataObject, kind: Kind
) -> None:
    s = sample(plan, kind)
    rows = data.draw(st.lists(CATALOGUE_ROWS, max_size=20))
    encode = (lambda row: json.dumps(row).encode()) if kind == "json" else s.codec.encode
    keys = data.draw(
        st.lists(
            st.none() | st.binary(max_size=8).map(bytes.hex), min_size=len(rows), max_size=len(rows)
        )
    )
    records: list[Record] = [
        (None if key is None else key.encode(), encode(row))
        for key, row in zip(keys, rows, strict=True)
    ]
    assert_same_outcomes(s.codec, records)
    batch = s.codec.decode_batch(*split(records), now_ms=NOW)
    assert batch.kept == list(range(len(rows)))


@FAST
@given(rows=st.lists(TRANSACTION_ROWS, max_size=20))
def test_random_valid_transactions(transactions: SourcePlan, rows: list[dict[str, Any]]) -> None:
    codec = SourceCodec(transactions)
    records: list[Record] = [(row["customer_id"].encode(), codec.encode(row)) for row in rows]
    assert_same_outcomes(codec, records)
    batch = codec.decode_batch(*split(records), now_ms=NOW)
    assert batch.kept == list(range(len(rows)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["avro", "confluent"]))
def test_mutated_avro_records_decode_as_one_by_one(
    plan: Plan, data: st.DataObject, kind: Kind
) -> None:
    s = sample(plan, kind)
    records: list[Record] = []
    for _ in range(data.draw(st.integers(1, 4))):
        value = bytearray(s.value(merchant_id=data.draw(TEXT)))
        for _ in range(data.draw(st.integers(0, 3))):
            i = data.draw(st.integers(0, len(value) - 1))
            value[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(value)))
        records.append((b"c001", bytes(value[:cut] if data.draw(st.booleans()) else value)))
    assert_same_outcomes(s.codec, records)


JSON_VALUES = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | TEXT


@FAST
@given(changes=st.dictionaries(st.sampled_from([f["name"] for f in SCHEMA["fields"]]), JSON_VALUES))
def test_random_json_objects_take_the_slow_path_as_one_by_one(
    plan: Plan, changes: dict[str, Any]
) -> None:
    s = sample(plan, "json")
    assert_same_outcomes(s.codec, [(b"k", json.dumps(s.row(**changes)).encode()), s.record()])


# -- limits, schema ids, the native decoder's own arguments ------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_limits_are_honoured_at_their_bounds(plan: Plan, kind: Kind) -> None:
    s = sample(plan, kind)
    key, value = s.record(ts=NOW + 3_600_000)
    assert key is not None and value is not None
    size = len(key) + len(value)
    for limits, kept in [
        (DecodeLimits(max_record_bytes=size, max_future_ms=3_600_000), [0]),
        (DecodeLimits(max_record_bytes=size - 1, max_future_ms=3_600_000), []),
        (DecodeLimits(max_record_bytes=size, max_future_ms=3_599_999), []),
    ]:
        codec = SourceCodec(s.codec.source, limits)
        assert codec.decode_batch([key], [value], now_ms=NOW).kept == kept
        assert_same_outcomes(codec, [(key, value)])


def test_the_confluent_schema_id_is_checked_only_when_the_source_names_one(plan: Plan) -> None:
    s = sample(plan, "confluent")
    good = s.value()
    other = struct.pack(">bI", 0, SCHEMA_ID + 1) + good[5:]
    batch = s.codec.decode_batch([None, None], [good, other], now_ms=NOW)
    assert batch.kept == [0]
    assert batch.refused[0][1].code == "unknown_schema_id"
    fields = s.codec.source.fields
    any_id = _native.SourceDecoder(
        json.dumps(SCHEMA), "avro", "confluent", None, ["customer_id"], "ts", 1,
        [n for n, f in fields.items() if f.kind == "float"], 1 << 20, 86_400_000,
    )  # fmt: skip
    columns, kept, refused = any_id.decode_batch([None, None], [good, other], NOW)
    assert (columns.rows, kept, refused) == (2, [0, 1], [])


def test_the_native_decoder_refuses_what_it_cannot_decode() -> None:
    schema = json.dumps(SCHEMA)
    args: list[Any] = [schema, "avro", "schemaless", None, ["customer_id"], "ts", 1, [], 10, 10]
    _native.SourceDecoder(*args)
    for i, bad, says in [
        (1, "json", "JSON sources decode in Python"),
        (2, "raw", "wire must be"),
        (5, "merchant_id", "not an int or long"),
        (4, ["nope"], '"nope" is not a column'),
        (7, ["qty"], "not a float or double"),
    ]:
        with pytest.raises(ValueError, match=says):
            call = list(args)
            call[i] = bad
            _native.SourceDecoder(*call)
    decoder = _native.SourceDecoder(*args)
    with pytest.raises(ValueError, match="2 keys for 1 values"):
        decoder.decode_batch([None, None], [b""], NOW)
    with pytest.raises(ValueError, match="2 keys for 1 values"):
        SourceCodec(FeatureStore.from_repo(DEFINITIONS).plan.sources["transactions"]).decode_batch(
            [None, None], [b""], now_ms=NOW
        )
