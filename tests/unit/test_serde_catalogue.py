"""The bad-input catalogue through ``SourceCodec.decode``: each bad record is refused with its
reason code and a reason naming the field or problem; valid and unusual-but-valid records are
accepted and come back from the event log's schema exactly as the worker folded them."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.eventlog import envelope_schema
from engine.config import load_config
from engine.errors import ConfigError, InputDataError, RecordRefused
from engine.plan import Plan
from engine.push import encode_rows
from engine.serde import REASON_CODES, DecodeLimits, SourceCodec
from engine.store import FeatureStore
from tests.bad_inputs import (
    CATALOGUE,
    KINDS,
    MAX_RECORD_BYTES,
    BadInput,
    Kind,
    Sample,
    bad_inputs,
    defs,
    edge_valid,
    float32,
)

NOW = 1_800_000_000_000
LIMITS = DecodeLimits(max_record_bytes=MAX_RECORD_BYTES)
NAMES: dict[Kind, str] = {"avro": "tx_avro", "confluent": "tx_confluent", "json": "tx_json"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "dead-letters.md"


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    repo = tmp_path_factory.mktemp("catalogue")
    (repo / "defs.py").write_text(defs(NAMES))
    return FeatureStore.from_repo(repo).plan


def sample(plan: Plan, kind: Kind) -> Sample:
    return Sample(kind, SourceCodec(plan.sources[NAMES[kind]], LIMITS), NOW)


def same(a: Any, b: Any) -> bool:
    """Equal, floats bit for bit."""
    if isinstance(a, float) and isinstance(b, float):
        return a.hex() == b.hex() or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def through_the_log(codec: SourceCodec, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` written in a log envelope and read back (what the backfill will see)."""
    schema = fastavro.parse_schema(envelope_schema(codec.source.name, dict(codec.source.schema)))
    out = io.BytesIO()
    envelope = {"partition": 0, "offset": 0, "key": None, "event_time": 0, "processed_at": 0,
                "payload": payload}  # fmt: skip
    fastavro.schemaless_writer(out, schema, envelope)
    back = fastavro.schemaless_reader(io.BytesIO(out.getvalue()), schema, None)
    assert isinstance(back, dict)
    return dict(back["payload"])


def assert_logged_as_folded(codec: SourceCodec, payload: dict[str, Any]) -> None:
    back = through_the_log(codec, payload)
    assert back.keys() == payload.keys()
    for name, value in payload.items():
        assert same(back[name], value), f"{name}: folded {value!r}, the log keeps {back[name]!r}"


CASES = [(kind, bad) for kind in KINDS for bad in bad_inputs(kind)]


@pytest.mark.parametrize(("kind", "bad"), CASES, ids=[f"{k}: {b.name}" for k, b in CASES])
def test_each_bad_input_is_refused_with_its_code_and_a_reason(
    plan: Plan, kind: Kind, bad: BadInput
) -> None:
    s = sample(plan, kind)
    key, value = bad.build(s)
    with pytest.raises(RecordRefused) as info:
        s.codec.decode(key, value, now_ms=NOW)
    reason = str(info.value)
    assert info.value.code == bad.code, reason
    assert reason.startswith(f"source {NAMES[kind]!r}: "), reason
    for fragment in bad.says:
        assert fragment in reason, f"{fragment!r} not in {reason!r}"
    assert len(reason) < 600, "a reason is read by a person: keep it short"


@pytest.mark.parametrize("kind", KINDS)
def test_the_valid_twins_and_unusual_valid_records_are_accepted_and_logged_as_folded(
    plan: Plan, kind: Kind
) -> None:
    s = sample(plan, kind)
    records = [s.record(), *edge_valid(s)]
    assert len(records) >= 6
    for key, value in records:
        payload = s.codec.decode(key, value, now_ms=NOW)
        assert payload["customer_id"] == "c001"
        if payload["ratio"] is not None:
            assert same(payload["ratio"], float32(payload["ratio"])), "ratio is an Avro float"
        assert_logged_as_folded(s.codec, payload)


def test_a_json_float_field_is_rounded_as_the_log_will_store_it(plan: Plan) -> None:
    s = sample(plan, "json")
    payload = s.codec.decode(*s.record(ratio=0.1), now_ms=NOW)
    assert payload["ratio"] != 0.1 and same(payload["ratio"], float32(0.1))
    assert same(payload["amount"], 12.5)  # a double stays a double
    avro = sample(plan, "avro")
    assert same(avro.codec.decode(*avro.record(ratio=0.1), now_ms=NOW)["ratio"], payload["ratio"])


def test_every_reason_code_is_in_the_catalogue_and_in_the_docs() -> None:
    exercised = {b.code for b in CATALOGUE}
    assert exercised == set(REASON_CODES) - {"decoder_error"}
    text = DOCS.read_text()
    for code in REASON_CODES:
        assert f"`{code}`" in text, f"docs/dead-letters.md does not describe {code}"


def test_an_unforeseen_decoder_failure_is_a_dead_letter_not_a_stalled_partition(
    plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = sample(plan, "avro")

    def boom(_value: bytes) -> dict[str, Any]:
        raise KeyError("surprise")

    monkeypatch.setattr(s.codec, "_decode_avro", boom)
    with pytest.raises(RecordRefused) as info:
        s.codec.decode(*s.record(), now_ms=NOW)
    assert info.value.code == "decoder_error"
    assert "KeyError" in str(info.value) and "report it" in str(info.value)


# -- properties: decode classifies every input, and what it accepts the log stores as is ------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = ("customer_id", "merchant_id", "amount", "qty", "ratio", "channel", "ts")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4),
    dropped=st.sets(st.sampled_from(FIELDS), max_size=2),
)
def test_any_json_object_is_refused_by_a_rule_or_logged_exactly_as_folded(
    plan: Plan, changes: dict[str, Any], dropped: set[str]
) -> None:
    s = sample(plan, "json")
    row = {k: v for k, v in s.row(**changes).items() if k not in dropped}
    value = json.dumps(row).encode()
    try:
        payload = s.codec.decode(b"k", value, now_ms=NOW)
    except RecordRefused as exc:
        assert exc.code in REASON_CODES and exc.code != "decoder_error", str(exc)
        return
    assert_logged_as_folded(s.codec, payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["avro", "confluent"]))
def test_any_mutation_of_an_avro_record_is_refused_by_a_rule_or_logged_as_folded(
    plan: Plan, data: st.DataObject, kind: Kind
) -> None:
    s = sample(plan, kind)
    value = bytearray(s.value())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(value)))
    try:
        payload = s.codec.decode(b"k", bytes(value[:cut] if cut < 3 else value), now_ms=NOW)
    except RecordRefused as exc:
        assert exc.code != "decoder_error", str(exc)
        return
    assert_logged_as_folded(s.codec, payload)


# -- limits come from the config, and push applies the worker's ---------------------------------


def test_decode_limits_come_from_skewless_yaml_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "skewless.yaml").write_text("decode:\n  max_record_bytes: 2048\n")
    config = load_config(tmp_path, environ={"SKEWLESS_DECODE_MAX_FUTURE_MS": "60000"})
    assert DecodeLimits.from_config(config) == DecodeLimits(
        max_record_bytes=2048, max_future_ms=60_000
    )
    assert DecodeLimits.from_config(load_config(tmp_path / "x", environ={})) == DecodeLimits()
    with pytest.raises(ConfigError, match=r"decode\.max_record_bytes must be at least 1"):
        load_config(tmp_path, environ={"SKEWLESS_DECODE_MAX_RECORD_BYTES": "0"})
    with pytest.raises(ConfigError, match=r"decode\.max_future_ms must be 0 or more"):
        load_config(tmp_path, environ={"SKEWLESS_DECODE_MAX_FUTURE_MS": "-1"})


def test_push_refuses_what_the_worker_would_dead_letter_under_its_limits(plan: Plan) -> None:
    source = plan.sources[NAMES["json"]]
    s = sample(plan, "json")
    rows = [s.row(), s.row(merchant_id="m" * 3000), s.row(ts=NOW + 7_200_000)]
    assert len(encode_rows(source, rows, now_ms=NOW)) == 3  # default limits: all fine
    tight = DecodeLimits(max_record_bytes=2048, max_future_ms=3_600_000)
    with pytest.raises(InputDataError) as info:
        encode_rows(source, rows, now_ms=NOW, limits=tight)
    text = str(info.value)
    assert "2 bad rows" in text and "row 1:" in text and "2048-byte limit" in text
    assert "row 2:" in text and "ahead of the worker clock" in text


def test_reasons_survive_the_dead_letter_header_limit_as_valid_utf8() -> None:
    from connectors.kafka import _letter
    from engine.ports import DeadLetter

    reason = "source 'x': field " + "é" * 3000  # 6000 bytes, cut at 4096 mid-character
    letter = DeadLetter(topic="t", partition=0, offset=1, key=None, value=b"v",
                        code="wrong_type", reason=reason)  # fmt: skip
    headers = dict(_letter(letter)[2] or [])
    text = headers["skewless.reason"].decode("utf-8")  # must not raise
    assert reason.startswith(text) and len(headers["skewless.reason"]) <= 4096
