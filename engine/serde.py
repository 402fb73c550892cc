"""Source record serde: decode Kafka values (schemaless Avro, Confluent wire format, JSON) into
validated payloads, and encode payloads for producers. Every refusal is a DecodeError whose
``code`` is stable (for metrics and the dead-letter ``skewless.reason_code`` header) and whose
message says what was wrong, where, and what was expected.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from engine.errors import DecodeError
from engine.plan import SourcePlan
from engine.schema import plain_schema

_MAGIC = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeLimits:
    """Bounds beyond which a record is refused (DESIGN §6)."""

    max_record_bytes: int = 1_048_576
    max_future_ms: int = 86_400_000  # event time at most a day ahead of the worker clock


class RecordRefused(DecodeError):
    """A record that goes to the dead-letter topic: ``code`` names the rule it broke."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_INT_RANGE = (-(1 << 63), 1 << 63)


class SourceCodec:
    """Decode and encode the records of one source.

    Example:
        >>> codec = SourceCodec(plan.sources["transactions"])  # doctest: +SKIP
        >>> payload = codec.decode(key, value, now_ms=...)  # doctest: +SKIP
    """

    def __init__(self, source: SourcePlan, limits: DecodeLimits | None = None) -> None:
        self.source = source
        self.limits = limits or DecodeLimits()
        self._plain = plain_schema(dict(source.schema))
        self._parsed = fastavro.parse_schema(self._plain)
        self._fields = source.fields
        self._floats = tuple(n for n, f in source.fields.items() if f.kind == "float")
        self._enums = {
            f["name"]: frozenset(f["type"]["symbols"])
            for f in self._plain["fields"]
            if isinstance(f["type"], dict) and f["type"].get("type") == "enum"
        }

    # -- decoding ------------------------------------------------------------------------

    def decode(self, key: bytes | None, value: bytes | None, *, now_ms: int) -> dict[str, Any]:
        """The validated payload of one Kafka record; raises RecordRefused."""
        src = self.source
        if value is None:
            raise RecordRefused(
                "null_value", f"source {src.name!r}: record value is null (tombstone)"
            )
        size = len(value) + (len(key) if key else 0)
        if size > self.limits.max_record_bytes:
            raise RecordRefused(
                "oversized",
                f"source {src.name!r}: record is {size} bytes, over the "
                f"{self.limits.max_record_bytes}-byte limit",
            )
        if key is not None:
            try:
                key.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordRefused(
                    "bad_key", f"source {src.name!r}: record key is not UTF-8: {key[:32]!r}"
                ) from None
        payload = self._decode_json(value) if src.format == "json" else self._decode_avro(value)
        self._check(payload, now_ms)
        return payload

    def _decode_avro(self, value: bytes) -> dict[str, Any]:
        src = self.source
        body = value
        if src.wire == "confluent":
            if len(value) < 5 or value[0] != _MAGIC:
                got = f"0x{value[0]:02x}" if value else "an empty value"
                raise RecordRefused(
                    "bad_magic",
                    f"source {src.name!r}: Confluent wire format starts with magic byte 0x00, "
                    f"got {got}",
                )
            (schema_id,) = struct.unpack(">I", value[1:5])
            if src.schema_id is not None and schema_id != src.schema_id:
                raise RecordRefused(
                    "unknown_schema_id",
                    f"source {src.name!r}: unknown schema id {schema_id} (this source reads "
                    f"schema id {src.schema_id})",
                )
            body = value[5:]
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, self._parsed, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
            raise RecordRefused(
                "bad_avro",
                f"source {src.name!r}: truncated or malformed Avro ({type(exc).__name__}: {exc})",
            ) from exc
        if stream.tell() != len(body):
            raise RecordRefused(
                "bad_avro",
                f"source {src.name!r}: {len(body) - stream.tell()} bytes left after the Avro "
                "record (wrong schema or corrupt value)",
            )
        if not isinstance(record, dict):  # pragma: no cover - a record schema yields dicts
            raise RecordRefused("bad_avro", f"source {src.name!r}: Avro value is not a record")
        return record

    def _decode_json(self, value: bytes) -> dict[str, Any]:
        src = self.source
        try:
            record = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordRefused("bad_json", f"source {src.name!r}: invalid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise RecordRefused(
                "bad_json",
                f"source {src.name!r}: JSON value is a {type(record).__name__}, not an object",
            )
        payload: dict[str, Any] = {}
        for name, spec in self._fields.items():
            if name not in record or record[name] is None:
                if not spec.nullable:
                    missing = "missing" if name not in record else "null"
                    raise RecordRefused(
                        "missing_field",
                        f"source {src.name!r}: field {name!r} is {missing}, but the schema "
                        f"requires a {spec.avro_type}",
                    )
                payload[name] = None
                continue
            payload[name] = self._json_value(name, spec.kind, spec.avro_type, record[name])
        return payload

    def _json_value(self, name: str, kind: str | None, avro_type: str, value: Any) -> Any:
        ok = True
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok and _INT_RANGE[0] <= value < _INT_RANGE[1]
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif kind == "str":
            ok = isinstance(value, str) and (name not in self._enums or value in self._enums[name])
        elif kind == "bool":
            ok = isinstance(value, bool)
        else:
            ok = False
        if not ok:
            raise RecordRefused(
                "wrong_type",
                f"source {self.source.name!r}: field {name!r} expected {avro_type}, "
                f"got {json.dumps(value)[:60]}",
            )
        return value

    def _check(self, payload: dict[str, Any], now_ms: int) -> None:
        src = self.source
        for name in self._floats:
            value = payload.get(name)
            if value is not None and not math.isfinite(value):
                raise RecordRefused(
                    "not_finite",
                    f"source {src.name!r}: field {name!r} is {value}, not a finite number",
                )
        raw_ts = payload.get(src.timestamp_field)
        if raw_ts is None:  # pragma: no cover - the schema makes it required
            raise RecordRefused("missing_field", f"source {src.name!r}: no timestamp")
        ts = raw_ts // src.timestamp_divisor
        if ts < 0:
            raise RecordRefused(
                "bad_timestamp",
                f"source {src.name!r}: timestamp {src.timestamp_field!r}={raw_ts} is before 1970",
            )
        if ts > now_ms + self.limits.max_future_ms:
            raise RecordRefused(
                "future_timestamp",
                f"source {src.name!r}: timestamp {src.timestamp_field!r}={raw_ts} is "
                f"{(ts - now_ms) // 1000}s ahead of the worker clock (limit "
                f"{self.limits.max_future_ms // 1000}s)",
            )
        for key in src.key_fields:
            if payload.get(key) is None:
                raise RecordRefused("null_key", f"source {src.name!r}: key field {key!r} is null")

    # -- encoding ------------------------------------------------------------------------

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        """Bytes a producer sends for ``payload`` in this source's format."""
        if self.source.format == "json":
            return json.dumps(dict(payload), separators=(",", ":"), allow_nan=False).encode()
        out = io.BytesIO()
        if self.source.wire == "confluent":
            out.write(struct.pack(">bI", _MAGIC, self.source.schema_id or 0))
        fastavro.schemaless_writer(out, self._parsed, dict(payload))
        return out.getvalue()
