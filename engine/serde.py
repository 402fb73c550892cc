"""Source record serde: decode Kafka values (schemaless Avro, Confluent wire format, JSON) into
validated payloads, and encode payloads for producers.

Every refusal is a ``RecordRefused`` whose ``code`` is one of ``REASON_CODES`` (stable: the
worker's ``refused`` counter and the dead-letter ``skewless.reason_code`` header) and whose
message names the source, the field and what was expected and got (docs/dead-letters.md).
``decode`` raises nothing else: a payload it returns can be written to the event log as is
and reads back equal, so a record is either refused here or never a poison pill later.

``decode_batch`` does the same for a batch of records in one native call (DESIGN §8): the
valid records come back as native ``Columns``, the refused ones with the ``RecordRefused``
``decode`` gives them (Python re-decodes each refused record to build the reason text).
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import fastavro

from engine import _native
from engine.errors import RecordRefused
from engine.plan import SourcePlan
from engine.schema import plain_schema

if TYPE_CHECKING:
    from engine.config import Config

__all__ = [
    "REASON_CODES",
    "DecodeLimits",
    "DecodedBatch",
    "ReasonCode",
    "RecordRefused",
    "SourceCodec",
]

ReasonCode = Literal[
    "null_value",
    "oversized",
    "bad_key",
    "bad_magic",
    "unknown_schema_id",
    "bad_avro",
    "bad_json",
    "bad_utf8",
    "missing_field",
    "null_key",
    "wrong_type",
    "out_of_range",
    "not_finite",
    "bad_timestamp",
    "future_timestamp",
    "decoder_error",
]
REASON_CODES: tuple[str, ...] = typing.get_args(ReasonCode)

_MAGIC = 0
_HEADER = 5  # Confluent wire format: magic byte, then a big-endian 4-byte schema id
_RANGES = {"int": (-(1 << 31), 1 << 31), "long": (-(1 << 63), 1 << 63)}
_FLOAT32 = struct.Struct("<f")
_MICROS_WINDOW_MS = 20 * 365 * 86_400_000  # µs read as ms: hint when it was recent as µs
_NO_SIZE_LIMIT = (1 << 64) - 1  # re-encoded payloads were size-checked as received


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeLimits:
    """Bounds beyond which a record is refused (DESIGN §6); ``decode.*`` in skewless.yaml."""

    max_record_bytes: int = 1_048_576  # key + value; Kafka's default message.max.bytes
    max_future_ms: int = 86_400_000  # event time at most a day ahead of the worker clock

    @classmethod
    def from_config(cls, config: Config) -> DecodeLimits:
        """``decode.max_record_bytes`` and ``decode.max_future_ms`` of a repo's config."""
        return cls(
            max_record_bytes=config.decode_max_record_bytes,
            max_future_ms=config.decode_max_future_ms,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodedBatch:
    """A decoded batch: the valid records' columns and who was refused.

    ``columns`` row ``r`` is input record ``kept[r]`` (``kept`` ascending); every other input
    index is in ``refused`` (ascending), with the exact ``RecordRefused`` ``decode`` raises.
    """

    columns: _native.Columns
    kept: list[int]
    refused: list[tuple[int, RecordRefused]]


def _refuse(code: ReasonCode, source: str, text: str) -> RecordRefused:
    return RecordRefused(code, f"source {source!r}: {text}")


def _show(value: Any, limit: int = 60) -> str:
    """A short JSON-ish rendering of a field value for a message."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like(value: bytes, source: SourcePlan) -> str:
    """A hint when a value seems written in another format than the source reads."""
    confluent = value[:1] == b"\x00" and len(value) >= _HEADER
    if source.format == "json":
        return (
            "; it starts like Confluent Avro: is the source's format 'avro'?" if confluent else ""
        )
    if value[:1] in (b"{", b"[") or value[:3] == b"\xef\xbb\xbf":
        return "; it looks like JSON: is the source's format 'json'?"
    if confluent and source.wire == "schemaless":
        (schema_id,) = struct.unpack(">I", value[1:_HEADER])
        return (
            f"; it starts like Confluent wire format (magic byte 0, schema id {schema_id}): "
            "is the source's wire 'confluent'?"
        )
    return ""


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
        self._keys = frozenset(source.key_fields)
        self._enums = {
            f["name"]: frozenset(f["type"]["symbols"])
            for f in self._plain["fields"]
            if isinstance(f["type"], dict) and f["type"].get("type") == "enum"
        }

    # -- native decoders (built on first use: ``decode`` never needs them) ---------------

    def _native_decoder(
        self, *, wire: str, schema_id: int | None, max_record_bytes: int
    ) -> _native.SourceDecoder:
        source = self.source
        return _native.SourceDecoder(
            json.dumps(self._plain),
            "avro",
            wire,
            schema_id,
            list(source.key_fields),
            source.timestamp_field,
            source.timestamp_divisor,
            list(self._floats),
            max_record_bytes,
            self.limits.max_future_ms,
        )

    @functools.cached_property
    def _wire(self) -> _native.SourceDecoder | None:
        """Reads an Avro source's records as they arrive (None for JSON sources)."""
        if self.source.format != "avro":
            return None
        return self._native_decoder(
            wire=self.source.wire,
            schema_id=self.source.schema_id,
            max_record_bytes=self.limits.max_record_bytes,
        )

    @functools.cached_property
    def _replay(self) -> _native.SourceDecoder:
        """Reads payloads ``decode`` accepted, re-encoded as schemaless Avro."""
        return self._native_decoder(
            wire="schemaless", schema_id=None, max_record_bytes=_NO_SIZE_LIMIT
        )

    # -- decoding ------------------------------------------------------------------------

    def decode(self, key: bytes | None, value: bytes | None, *, now_ms: int) -> dict[str, Any]:
        """The validated payload of one Kafka record; raises RecordRefused and nothing else."""
        try:
            return self._decode(key, value, now_ms)
        except RecordRefused:
            raise
        except Exception as exc:  # an input no rule foresaw must not stall the partition
            raise _refuse(
                "decoder_error",
                self.source.name,
                f"the decoder failed on this record ({type(exc).__name__}: {exc}); this is a "
                "skewless bug: please report it with this dead letter",
            ) from exc

    def decode_batch(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None], *, now_ms: int
    ) -> DecodedBatch:
        """The valid records of a batch as native columns, and each other record's refusal.

        Avro sources decode natively in one call with the GIL released. A record the core
        refuses is decoded again by ``decode``, whose ``RecordRefused`` (code and text) is
        the one reported. Should ``decode`` accept a record the core refused, its payload is
        kept: re-encoded as schemaless Avro and decoded with the batch's other valid records
        by a second native call, so ``columns`` always holds every record ``decode`` accepts.
        JSON sources take the slow path: ``decode`` per record, then the accepted payloads
        re-encoded as Avro and decoded natively into columns.

        Example:
            >>> batch = codec.decode_batch(keys, values, now_ms=now_ms)  # doctest: +SKIP
            >>> batch.columns.rows == len(batch.kept)  # doctest: +SKIP
            True
        """
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values: expected one per value")
        if self._wire is None:
            return self._decode_slowly(keys, values, now_ms)
        columns, kept, codes = self._wire.decode_batch(list(keys), list(values), now_ms)
        refused: list[tuple[int, RecordRefused]] = []
        rescued: dict[int, dict[str, Any]] = {}
        for index, _code in codes:
            try:
                rescued[index] = self.decode(keys[index], values[index], now_ms=now_ms)
            except RecordRefused as exc:  # the reason Python gives wins over the core's code
                refused.append((index, exc))
        if not rescued:
            return DecodedBatch(columns=columns, kept=kept, refused=refused)
        header = _HEADER if self.source.wire == "confluent" else 0
        datums = {i: typing.cast(bytes, values[i])[header:] for i in kept}
        datums.update((i, self._datum(payload)) for i, payload in rescued.items())
        return self._replayed(datums, refused, now_ms)

    def _decode_slowly(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None], now_ms: int
    ) -> DecodedBatch:
        """``decode`` per record; the accepted payloads become columns natively."""
        datums: dict[int, bytes] = {}
        refused: list[tuple[int, RecordRefused]] = []
        for index, (key, value) in enumerate(zip(keys, values, strict=True)):
            try:
                datums[index] = self._datum(self.decode(key, value, now_ms=now_ms))
            except RecordRefused as exc:
                refused.append((index, exc))
        return self._replayed(datums, refused, now_ms)

    def _datum(self, payload: dict[str, Any]) -> bytes:
        """A payload ``decode`` accepted, as a schemaless Avro datum."""
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self._parsed, payload)
        return out.getvalue()

    def _replayed(
        self, datums: dict[int, bytes], refused: list[tuple[int, RecordRefused]], now_ms: int
    ) -> DecodedBatch:
        """Columns of the accepted records' datums (by input index), with ``refused``."""
        order = sorted(datums)
        columns, kept, codes = self._replay.decode_batch(
            [None] * len(order), [datums[i] for i in order], now_ms
        )
        for row, code in codes:  # pragma: no cover - the checks are decode's own
            refused.append(
                (
                    order[row],
                    _refuse(
                        "decoder_error",
                        self.source.name,
                        f"the native decoder refused ({code}) a record the Python decoder "
                        "accepted; this is a skewless bug: please report it with this dead "
                        "letter",
                    ),
                )
            )
        refused.sort(key=lambda item: item[0])
        return DecodedBatch(columns=columns, kept=[order[r] for r in kept], refused=refused)

    def _decode(self, key: bytes | None, value: bytes | None, now_ms: int) -> dict[str, Any]:
        name = self.source.name
        if value is None:
            raise _refuse(
                "null_value", name, "record value is null (a tombstone); expected an event"
            )
        size = len(value) + (len(key) if key else 0)
        if size > self.limits.max_record_bytes:
            raise _refuse(
                "oversized",
                name,
                f"record is {size} bytes (key {len(key) if key else 0} + value {len(value)}), "
                f"over the {self.limits.max_record_bytes}-byte limit (decode.max_record_bytes)",
            )
        if key is not None and not key.isascii():
            try:
                key.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _refuse(
                    "bad_key",
                    name,
                    f"record key is not UTF-8 text (byte 0x{key[exc.start]:02x} at position "
                    f"{exc.start}): {key[:32]!r}; expected the key fields as text "
                    "(engine.keys.encode_key)",
                ) from None
        if self.source.format == "json":
            payload = self._decode_json(value)
        else:
            payload = self._decode_avro(value)
        self._check(payload, now_ms)
        return payload

    def _decode_avro(self, value: bytes) -> dict[str, Any]:
        src = self.source
        body = value
        if src.wire == "confluent":
            if len(value) < _HEADER:
                raise _refuse(
                    "bad_magic",
                    src.name,
                    f"value is {len(value)} bytes, shorter than the 5-byte Confluent wire-format "
                    "header (magic byte 0x00 + 4-byte schema id)",
                )
            if value[0] != _MAGIC:
                hint = _looks_like(value, src) or "; is the producer writing schemaless Avro?"
                raise _refuse(
                    "bad_magic",
                    src.name,
                    f"Confluent wire format starts with magic byte 0x00, got 0x{value[0]:02x}"
                    + hint,
                )
            (schema_id,) = struct.unpack(">I", value[1:_HEADER])
            if src.schema_id is not None and schema_id != src.schema_id:
                raise _refuse(
                    "unknown_schema_id",
                    src.name,
                    f"unknown schema id {schema_id}; this source reads schema id "
                    f"{src.schema_id} (its schema_id in the definitions)",
                )
            body = value[_HEADER:]
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, self._parsed, None)
        except UnicodeDecodeError as exc:
            raise _refuse(
                "bad_utf8",
                src.name,
                f"an Avro string is not UTF-8 text ({exc.reason} at byte {exc.start} of the "
                "string)",
            ) from exc
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise _refuse(
                "bad_avro",
                src.name,
                f"truncated or malformed Avro: decoding the {len(body)}-byte value with the "
                f"source's schema failed at byte {stream.tell()} ({what})"
                + _looks_like(value, src),
            ) from exc
        if stream.tell() != len(body):
            hint = _looks_like(value, src)
            raise _refuse(
                "bad_avro",
                src.name,
                f"{len(body) - stream.tell()} of {len(body)} bytes left after the Avro record: "
                "written with another schema, or corrupt" + hint,
            )
        if not isinstance(record, dict):  # pragma: no cover - a record schema yields dicts
            raise _refuse("bad_avro", src.name, "the Avro value is not a record")
        return record

    def _decode_json(self, value: bytes) -> dict[str, Any]:
        src = self.source
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(
                "bad_utf8",
                src.name,
                f"JSON value is not UTF-8 text (byte 0x{value[exc.start]:02x} at position "
                f"{exc.start})" + _looks_like(value, src),
            ) from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _refuse(
                "bad_json", src.name, f"invalid JSON ({exc})" + _looks_like(value, src)
            ) from exc
        except RecursionError:
            raise _refuse("bad_json", src.name, "JSON nested too deeply to decode") from None
        except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
            raise _refuse("bad_json", src.name, f"invalid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise _refuse(
                "bad_json",
                src.name,
                f"JSON value is {_a(record)} {_show(record, 40)}, expected an object with the "
                "source's fields",
            )
        payload: dict[str, Any] = {}
        for name, spec in self._fields.items():
            raw = record.get(name)
            if raw is None:
                missing = "missing" if name not in record else "null"
                if name in self._keys:
                    raise _refuse(
                        "null_key",
                        src.name,
                        f"key field {name!r} is {missing}: the record has no entity",
                    )
                if not spec.nullable:
                    what = " (the event timestamp)" if name == src.timestamp_field else ""
                    raise _refuse(
                        "missing_field",
                        src.name,
                        f"field {name!r}{what} is {missing}, but the schema requires "
                        f"{_an(spec.avro_type)}",
                    )
                payload[name] = None
                continue
            payload[name] = self._json_value(name, spec.kind, spec.avro_type, raw)
        return payload

    def _json_value(self, name: str, kind: str | None, avro_type: str, value: Any) -> Any:
        """The field's value as the log will store it (so online and backfill see the same)."""
        src = self.source.name
        if kind == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                low, high = _RANGES.get(avro_type, _RANGES["long"])
                if low <= value < high:
                    return value
                raise _refuse(
                    "out_of_range",
                    src,
                    f"field {name!r} is {_show(value)}, outside the range of an Avro {avro_type} "
                    f"[{low}, {high - 1}]",
                )
        elif kind == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                try:
                    number = float(value)
                    if avro_type == "float" and math.isfinite(number):  # the log keeps 32 bits
                        number = _FLOAT32.unpack(_FLOAT32.pack(number))[0]
                except OverflowError:
                    raise _refuse(
                        "out_of_range",
                        src,
                        f"field {name!r} is {_show(value)}, beyond the largest Avro {avro_type}",
                    ) from None
                return number
        elif kind == "str":
            if isinstance(value, str):
                if name in self._enums and value not in self._enums[name]:
                    raise _refuse(
                        "wrong_type",
                        src,
                        f"field {name!r} is {_show(value)}, not one of the enum's symbols "
                        f"{sorted(self._enums[name])}",
                    )
                if not value.isascii():
                    _utf8(src, name, value)
                return value
        elif kind == "bool":
            if isinstance(value, bool):
                return value
        elif kind == "bytes":  # Avro's JSON encoding: a string of code points 0..255
            if isinstance(value, str):
                try:
                    return value.encode("latin-1")
                except UnicodeEncodeError:
                    raise _refuse(
                        "wrong_type",
                        src,
                        f"field {name!r} expected bytes (a JSON string of code points 0-255, "
                        f"Avro's JSON encoding), got {_show(value)}",
                    ) from None
        else:
            raise _refuse(
                "wrong_type",
                src,
                f"field {name!r} has Avro type {avro_type!r}, which a JSON source carries only "
                f"as null; got {_show(value)}",
            )
        raise _refuse(
            "wrong_type",
            src,
            f"field {name!r} expected {_an(avro_type)}, got {_a(value)} {_show(value)}",
        )

    def _check(self, payload: dict[str, Any], now_ms: int) -> None:
        src = self.source
        for name in self._floats:
            value = payload.get(name)
            if value is not None and not math.isfinite(value):
                raise _refuse(
                    "not_finite",
                    src.name,
                    f"field {name!r} is {value}, not a finite number (send null for no value)",
                )
        for key in src.key_fields:
            if payload.get(key) is None:
                raise _refuse(
                    "null_key", src.name, f"key field {key!r} is null: the record has no entity"
                )
        field = src.timestamp_field
        raw_ts = payload.get(field)
        if raw_ts is None:  # pragma: no cover - the plan makes it a required long
            raise _refuse("missing_field", src.name, f"timestamp field {field!r} is missing")
        ts = raw_ts // src.timestamp_divisor
        unit = "ms" if src.timestamp_divisor == 1 else "µs"
        if ts < 0:
            raise _refuse(
                "bad_timestamp",
                src.name,
                f"timestamp {field!r}={raw_ts} is negative (before 1970); expected {unit} "
                "since the Unix epoch",
            )
        limit = self.limits.max_future_ms
        if ts > now_ms + limit:
            hint = ""
            if src.timestamp_divisor == 1 and now_ms - _MICROS_WINDOW_MS <= ts // 1000 <= now_ms:
                hint = (
                    "; it looks like microseconds: this source reads milliseconds (declare "
                    "logicalType timestamp-micros if the producer writes µs)"
                )
            raise _refuse(
                "future_timestamp",
                src.name,
                f"timestamp {field!r}={raw_ts} is {_duration(ts - now_ms)} ahead of the "
                f"worker clock (limit {_duration(limit)}, decode.max_future_ms)" + hint,
            )

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


def _utf8(source: str, name: str, value: str) -> None:
    """Refuse a string the log cannot store: an unpaired surrogate (``"\\ud800"`` in JSON)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _refuse(
            "bad_utf8",
            source,
            f"field {name!r} holds an unpaired surrogate {value[exc.start]!r} at position "
            f"{exc.start}, which is not valid UTF-8 text",
        ) from None


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms >= size:
            return f"{ms / size:,.1f}{unit}"
    return f"{ms / 1000:.1f}s"


def _a(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "an object", type(None): "null"}  # fmt: skip
    return kinds.get(type(value), type(value).__name__)


def _an(avro_type: str) -> str:
    return f"an {avro_type}" if avro_type[:1] in "aeiou" else f"a {avro_type}"
