"""Import historical events into the event log: validate every row first, then write.

A bad row makes the import write nothing and raise an InputDataError naming the row
(0-based position in the input) and the problem. Rows are partitioned as a producer keyed
by the source key would partition them (murmur2), and offsets follow input order within
a partition, continuing after earlier imports. Imported history takes offsets from
``HISTORY_BASE`` (-10**18) up to 0, so it never collides with the offsets (>= 0) Kafka
gives the live stream of the same source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.envelope import HISTORY_BASE, Envelope
from engine.errors import InputDataError
from engine.keys import encode_key, partition_for
from engine.plan import SourcePlan
from engine.ports import HistorySink
from engine.schema import FieldSpec

PROCESSED_AT = "processed_at"
_MAX_PROBLEMS = 20
_CHUNK = 500_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    """What an import wrote."""

    source: str
    rows: int
    per_partition: dict[int, int]
    files: tuple[str, ...]


def _first_rows(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)[:_MAX_PROBLEMS]]


def _column_values(
    spec: FieldSpec, series: pd.Series, problems: list[str], is_timestamp: bool
) -> list[Any]:
    """Validated Python values of one column (None for nulls)."""
    name = spec.name
    nulls = series.isna().to_numpy()
    if not spec.nullable and nulls.any():
        what = "timestamp is missing" if is_timestamp else "null, but the field is not nullable"
        problems.extend(f"row {r} column {name!r}: {what}" for r in _first_rows(nulls))
        return []
    dtype = series.dtype
    kind = spec.kind
    if is_timestamp and pd.api.types.is_datetime64_any_dtype(dtype):
        values = series.dt.tz_convert("UTC") if getattr(series.dt, "tz", None) else series
        unit = "datetime64[us]" if spec.logical_type == "timestamp-micros" else "datetime64[ms]"
        ints = values.dt.tz_localize(None) if getattr(values.dt, "tz", None) else values
        return list(ints.to_numpy(dtype=unit).astype("int64").tolist())
    raw = series.tolist()
    out: list[Any] = []
    bad: list[int] = []
    for row, value in enumerate(raw):
        if nulls[row]:
            out.append(None)
            continue
        if kind == "int":
            if isinstance(value, bool) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                bad.append(row)
                out.append(None)
                continue
            if isinstance(value, (float, np.floating)) and (
                not math.isfinite(value) or value != math.floor(value)
            ):
                bad.append(row)
                out.append(None)
                continue
            value = int(value)
            if not -(1 << 63) <= value < (1 << 63):
                bad.append(row)
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                bad.append(row)
                out.append(None)
                continue
            value = float(value)
            if not math.isfinite(value):
                bad.append(row)
        elif kind == "str":
            if not isinstance(value, str):
                bad.append(row)
        elif kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                bad.append(row)
            value = bool(value)
        elif kind == "bytes" and not isinstance(value, (bytes, bytearray)):
            bad.append(row)
        out.append(value)
    if bad:
        expected = {
            "int": "an integer",
            "float": "a finite number",
            "str": "a string",
            "bool": "a boolean",
            "bytes": "bytes",
        }.get(kind or "", spec.avro_type)
        problems.extend(
            f"row {r} column {name!r}: expected {expected} ({spec.avro_type}), got {raw[r]!r}"
            for r in bad[:_MAX_PROBLEMS]
        )
    if is_timestamp and not bad:
        negative = [r for r, v in enumerate(out) if v is not None and v < 0]
        problems.extend(
            f"row {r} column {name!r}: timestamp {out[r]} is before 1970" for r in negative[:5]
        )
    return out


def prepare_import(source: SourcePlan, df: pd.DataFrame) -> tuple[list[dict[str, Any]], list[int]]:
    """Validated payloads and processed_at per row; raises InputDataError listing problems."""
    problems: list[str] = []
    columns: dict[str, list[Any]] = {}
    for name, spec in source.fields.items():
        if spec.kind is None:
            problems.append(f"column {name!r}: Avro type {spec.avro_type} cannot be imported yet")
            continue
        if name not in df.columns:
            if spec.nullable:
                columns[name] = [None] * len(df)
            else:
                problems.append(f"column {name!r} is missing (the source schema requires it)")
            continue
        columns[name] = _column_values(spec, df[name], problems, name == source.timestamp_field)
    for key in source.key_fields:
        values = columns.get(key)
        if values:
            problems.extend(
                f"row {r} column {key!r}: null key" for r, v in enumerate(values) if v is None
            )
    processed: list[int] = []
    if PROCESSED_AT in df.columns and PROCESSED_AT not in source.fields:
        spec = FieldSpec(
            name=PROCESSED_AT, kind="int", nullable=False, avro_type="long", logical_type=None
        )
        processed = _column_values(spec, df[PROCESSED_AT], problems, True)
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        more = (
            f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        )
        raise InputDataError(
            f"import into source {source.name!r} refused, nothing was written "
            f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  "
            + "\n  ".join(shown)
            + more
        )
    names = list(columns)
    payloads = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    if not processed:
        divisor = source.timestamp_divisor
        processed = [int(p[source.timestamp_field]) // divisor for p in payloads]
    return payloads, processed


def import_frame(
    source: SourcePlan,
    df: pd.DataFrame,
    sink: HistorySink,
    partitions: int,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Validate ``df`` against the source schema and write it into the log as history.

    Imported rows take offsets from ``HISTORY_BASE`` (-10**18) upwards, continuing after
    earlier imports, in input row order within each partition: Kafka offsets are never
    negative, so history and the live stream of the same source never collide, and history
    sorts before the stream on an event-time tie.
    """
    payloads, processed = prepare_import(source, df)
    divisor = source.timestamp_divisor
    ts_field = source.timestamp_field
    keys = source.key_fields
    rows: dict[int, list[tuple[bytes, dict[str, Any], int]]] = {}
    for payload, processed_at in zip(payloads, processed, strict=True):
        key = encode_key([payload[k] for k in keys])
        rows.setdefault(partition_for(key, partitions), []).append((key, payload, processed_at))
    files: list[str] = []
    counts: dict[int, int] = {}
    for p in sorted(rows):
        part = rows[p]
        held = sink.last_history_offset(p)
        base = HISTORY_BASE if held is None else held + 1
        if base + len(part) > 0:
            raise InputDataError(
                f"import into source {source.name!r} partition {p}: the history offset range "
                f"is exhausted ({-base} offsets left, {len(part)} rows)"
            )
        for start in range(0, len(part), _CHUNK):
            chunk = [
                Envelope(partition=p, offset=base + i, key=key,
                         event_time_ms=int(payload[ts_field]) // divisor,
                         processed_at_ms=processed_at, payload=payload)
                for i, (key, payload, processed_at) in enumerate(part[start : start + _CHUNK], start)
            ]  # fmt: skip
            files.extend(sink.append_history(chunk))
            if progress:
                progress(len(chunk))
        counts[p] = len(part)
    return ImportResult(
        source=source.name, rows=len(payloads), per_partition=counts, files=tuple(files)
    )
