"""Rows a user pushes to a source topic: validated exactly as a worker will decode them, then keyed.

Every row is encoded with the source's ``SourceCodec`` and decoded back with the same checks
a worker applies (types, nulls, finite floats, timestamps not absurdly in the future,
non-null keys), so a pushed row can never become a dead letter. A bad row pushes nothing:
``InputDataError`` names the row (0-based) and the problem.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DecodeError, InputDataError
from engine.frames import to_epoch_ms
from engine.keys import encode_key
from engine.plan import SourcePlan
from engine.serde import DecodeLimits, SourceCodec

Rows = Sequence[Mapping[str, Any]] | pd.DataFrame
_MAX_PROBLEMS = 20


def rows_of(source: SourcePlan, rows: Rows) -> list[Mapping[str, Any]]:
    """Plain Python rows; a DataFrame's missing values (NaN, NaT, None) become None. Datetimes
    for the timestamp field — a DataFrame's datetime column, or ``datetime``/``Timestamp``
    values in dict rows — become int ms (µs for a ``timestamp-micros`` source); without a
    time zone they mean UTC."""
    if not isinstance(rows, pd.DataFrame):
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
            raise InputDataError(
                f"push to source {source.name!r}: rows must be a list of dicts or a DataFrame, "
                f"got {type(rows).__name__}"
            )
        ts = source.timestamp_field
        return [
            {**row, ts: _epoch(row[ts], source.timestamp_divisor)}
            if isinstance(row, Mapping) and isinstance(row.get(ts), dt.datetime | np.datetime64)
            else row
            for row in rows
        ]
    df = rows
    ts = source.timestamp_field
    columns: dict[str, list[Any]] = {}
    for name in df.columns:
        series = df[name]
        if name == ts and pd.api.types.is_datetime64_any_dtype(series.dtype):
            per_ms = source.timestamp_divisor  # timestamp-micros: keep the microseconds
            columns[str(name)] = to_epoch_ms(series, str(name), per_ms=per_ms).tolist()
            continue
        missing = series.isna().to_numpy()
        plain = series.astype(object).tolist()
        columns[str(name)] = [None if m else v for v, m in zip(plain, missing, strict=True)]
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def encode_rows(
    source: SourcePlan, rows: Rows, *, now_ms: int, limits: DecodeLimits | None = None
) -> list[tuple[bytes, bytes]]:
    """(key, value) bytes per row, validated against the worker's ``limits`` too; raises
    InputDataError listing the bad rows.

    Example:
        >>> encode_rows(plan.sources["transactions"], [{"customer_id": "c1", ...}],
        ...             now_ms=now)  # doctest: +SKIP
        [(b'c1', b'...')]
    """
    codec = SourceCodec(source, limits)
    out: list[tuple[bytes, bytes]] = []
    problems: list[str] = []
    for i, row in enumerate(rows_of(source, rows)):
        if not isinstance(row, Mapping):
            problems.append(f"row {i}: expected a dict, got {type(row).__name__}")
            continue
        missing = _missing_fields(source, row)
        if missing:
            problems.append(f"row {i}: {missing}")
            continue
        try:
            value = codec.encode(row)
        except DecodeError as exc:
            problems.append(f"row {i}: {exc}")
            continue
        except Exception as exc:  # fastavro / json raise ValueError, TypeError, KeyError ...
            problems.append(f"row {i}: does not match the schema of source {source.name!r}: "
                            f"{type(exc).__name__}: {_short(exc, row)}")  # fmt: skip
            continue
        key_values = [row.get(k) for k in source.key_fields]
        key = (
            None
            if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in key_values)
            else encode_key(key_values)
        )
        try:
            payload = codec.decode(key, value, now_ms=now_ms)
        except DecodeError as exc:
            problems.append(f"row {i}: {exc}")
            continue
        out.append((encode_key([payload[k] for k in source.key_fields]), value))
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        more = (
            f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        )
        raise InputDataError(
            f"push to source {source.name!r} refused, nothing was sent "
            f"({len(problems)} bad row{'s' if len(problems) > 1 else ''}):\n  "
            + "\n  ".join(shown)
            + more
        )
    return out


def _epoch(value: Any, divisor: int) -> Any:
    """A datetime pushed for the timestamp field as the field's units: ms, or µs for a
    ``timestamp-micros`` field (``divisor`` 1000). Without a time zone it means UTC, as for
    a DataFrame's datetime column and ``entity_df``. NaT stays a null (refused as one)."""
    if pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.value // (1_000_000 // divisor)


def _missing_fields(source: SourcePlan, row: Mapping[str, Any]) -> str | None:
    """What is wrong when a required field is absent or null (None when nothing is)."""
    for name, spec in source.fields.items():
        if not spec.nullable and row.get(name) is None:
            how = "missing" if name not in row else "null"
            return f"field {name!r} is {how}, but the schema of source {source.name!r} requires a {spec.avro_type}"
    return None


def _short(exc: Exception, row: Mapping[str, Any]) -> str:
    text = str(exc) or repr(exc)
    if isinstance(exc, KeyError):
        text = f"field {text} is missing"
    return text if len(text) <= 200 else text[:197] + "..."
