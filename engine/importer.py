"""Import historical events into the event log: validate every row first, then write.

A bad row makes the import write nothing and raise an InputDataError naming the row
(0-based position in the input) and the problem. Rows are partitioned as a producer keyed
by the source key would partition them (murmur2), and offsets follow input order within
a partition, continuing after earlier imports. Imported history takes offsets from
``HISTORY_BASE`` (-10**18) up to 0, so it never collides with the offsets (>= 0) Kafka
gives the live stream of the same source.

A sink that takes columns (``ColumnarHistorySink``, the event log) gets them: each column
is validated with numpy/Arrow (a column that needs a closer look — mixed objects, a bad
cell — is checked cell by cell, giving the same messages), the payload is handed to the
native log writer once (``engine._native.Columns``) and each file selects its rows, so no
Python object is made per row. Keys are encoded and partitioned once per distinct key.
Other sinks get ``Envelope`` records as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs
import pyarrow.compute as pc  # type: ignore[import-untyped]

from engine import _native
from engine.envelope import HISTORY_BASE, Envelope
from engine.errors import InputDataError
from engine.keys import encode_key, partition_for
from engine.log_columns import ColumnarHistorySink, EnvelopeColumns
from engine.plan import SourcePlan
from engine.ports import HistorySink
from engine.schema import FieldSpec

PROCESSED_AT = "processed_at"
_MAX_PROBLEMS = 20
_CHUNK = 500_000
_ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.large_string(),
    "bool": pa.bool_(),
    "bytes": pa.large_binary(),
}


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
    sorts before the stream on an event-time tie. A ``ColumnarHistorySink`` is written from
    columns (the fast path), any other sink from ``Envelope`` records.
    """
    if isinstance(sink, ColumnarHistorySink):
        return _import_columns(source, df, sink, partitions, progress)
    return _import_rows(source, df, sink, partitions, progress)


def _import_rows(
    source: SourcePlan,
    df: pd.DataFrame,
    sink: HistorySink,
    partitions: int,
    progress: Callable[[int], None] | None,
) -> ImportResult:
    """The row path: one payload dict and one ``Envelope`` per row."""
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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Columns:
    """A validated frame: payload arrays by field, event and processed times per row."""

    payload: dict[str, pa.Array]
    event_time_ms: np.ndarray
    processed_at_ms: np.ndarray


def _refuse(source: SourcePlan, problems: list[str]) -> InputDataError:
    shown = problems[:_MAX_PROBLEMS]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return InputDataError(
        f"import into source {source.name!r} refused, nothing was written "
        f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  "
        + "\n  ".join(shown)
        + more
    )


def _arrow(series: pd.Series) -> pa.Array:
    """``series`` as one Arrow array (NaN and None as nulls)."""
    arr = pa.array(series, from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _fast_array(spec: FieldSpec, series: pd.Series, is_timestamp: bool) -> pa.Array | None:
    """The column as an Arrow array when numpy/Arrow can show it is valid, else ``None``
    (the cell-by-cell check then finds and names the problems)."""
    kind = spec.kind
    dtype = series.dtype
    nulls = series.isna().to_numpy()
    has_nulls = bool(nulls.any())
    if has_nulls and (not spec.nullable or is_timestamp):
        return None
    if is_timestamp and pd.api.types.is_datetime64_any_dtype(dtype):
        values = series.dt.tz_convert("UTC") if getattr(series.dt, "tz", None) else series
        unit = "datetime64[us]" if spec.logical_type == "timestamp-micros" else "datetime64[ms]"
        ints = values.dt.tz_localize(None) if getattr(values.dt, "tz", None) else values
        out = np.asarray(ints.to_numpy(dtype=unit).astype("int64"))
        return pa.array(out) if not (out < 0).any() else None
    if kind in ("int", "float") and (
        pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype)
    ):
        return None
    if kind == "int":
        if pd.api.types.is_float_dtype(dtype):
            vals = series.to_numpy(dtype="float64", na_value=np.nan)[~nulls]
            if not (np.isfinite(vals).all() and (vals == np.floor(vals)).all()):
                return None
            if len(vals) and not (vals.min() >= -(2.0**63) and vals.max() < 2.0**63):
                return None
        try:
            arr = _arrow(series).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        if is_timestamp and pc.any(pc.less(arr, 0)).as_py():
            return None
        return arr
    if kind == "float":
        arr = _arrow(series).cast(pa.float64(), safe=False)
        finite = pc.is_finite(arr)
        return arr if pc.all(finite).as_py() in (True, None) else None
    try:
        arr = _arrow(series)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    accept = {
        "str": (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view),
        "bool": (pa.types.is_boolean,),
        "bytes": (pa.types.is_binary, pa.types.is_large_binary),
    }.get(kind or "", ())
    return arr if any(test(arr.type) for test in accept) else None


def _checked_array(
    spec: FieldSpec, series: pd.Series, problems: list[str], is_timestamp: bool
) -> pa.Array | None:
    """The validated column as an Arrow array; ``None`` when it has problems (appended)."""
    fast = _fast_array(spec, series, is_timestamp)
    if fast is not None:
        return fast
    before = len(problems)
    values = _column_values(spec, series, problems, is_timestamp)
    if len(problems) > before:
        return None
    return pa.array(values, type=_ARROW_TYPES[spec.kind or ""])


def _validate_columns(source: SourcePlan, df: pd.DataFrame) -> _Columns:
    """``prepare_import``'s checks and messages, column at a time."""
    problems: list[str] = []
    arrays: dict[str, pa.Array] = {}
    n = len(df)
    for name, spec in source.fields.items():
        if spec.kind is None:
            problems.append(f"column {name!r}: Avro type {spec.avro_type} cannot be imported yet")
            continue
        if name not in df.columns:
            if spec.nullable:
                arrays[name] = pa.nulls(n, type=_ARROW_TYPES[spec.kind])
            else:
                problems.append(f"column {name!r} is missing (the source schema requires it)")
            continue
        arr = _checked_array(spec, df[name], problems, name == source.timestamp_field)
        if arr is not None:
            arrays[name] = arr
    for key in source.key_fields:
        arr = arrays.get(key)
        if arr is not None and arr.null_count:
            rows = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
            problems.extend(f"row {r} column {key!r}: null key" for r in rows.tolist())
    processed: np.ndarray | None = None
    if PROCESSED_AT in df.columns and PROCESSED_AT not in source.fields:
        spec = FieldSpec(
            name=PROCESSED_AT, kind="int", nullable=False, avro_type="long", logical_type=None
        )
        arr = _checked_array(spec, df[PROCESSED_AT], problems, True)
        if arr is not None:
            processed = arr.to_numpy()
    ts = arrays.get(source.timestamp_field)
    if ts is not None and ts.null_count:
        rows = np.flatnonzero(ts.is_null().to_numpy(zero_copy_only=False))[:_MAX_PROBLEMS]
        problems.extend(
            f"row {r} column {source.timestamp_field!r}: timestamp is missing"
            for r in rows.tolist()
        )
    if problems:
        raise _refuse(source, problems)
    assert ts is not None  # a timestamp field is never optional once validated
    event_time = ts.to_numpy() // source.timestamp_divisor
    return _Columns(
        payload=arrays,
        event_time_ms=event_time,
        processed_at_ms=event_time if processed is None else processed,
    )


def _keys(source: SourcePlan, payload: dict[str, pa.Array]) -> pa.Array:
    """The key bytes of every row (``encode_key``), as one Arrow binary array."""
    names = source.key_fields
    if len(names) == 1:
        arr = payload[names[0]]
        if pa.types.is_integer(arr.type):
            arr = pc.cast(arr, pa.large_string())  # str(int): the same decimal text
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return arr.cast(pa.large_binary())  # str(s).encode("utf-8"): the same bytes
    # Other kinds and compound keys: encode_key once per distinct combination.
    frame = pd.DataFrame({n: payload[n].to_pandas() for n in names})
    codes = frame.groupby(list(names), sort=False, dropna=False).ngroup().to_numpy()
    distinct = frame.drop_duplicates()
    keys = [
        encode_key([v.item() if isinstance(v, np.generic) else v for v in row])
        for row in distinct.itertuples(index=False, name=None)
    ]
    return pa.array(keys, type=pa.large_binary()).take(pa.array(codes))


def _import_columns(
    source: SourcePlan,
    df: pd.DataFrame,
    sink: ColumnarHistorySink,
    partitions: int,
    progress: Callable[[int], None] | None,
) -> ImportResult:
    """The columnar path: the same rows, offsets and files as ``_import_rows``."""
    cols = _validate_columns(source, df)
    keys = _keys(source, cols.payload)
    # engine.keys.partition_for, batched natively (tests hold the two equal)
    part = _native.kafka_partitions(keys, partitions)
    small = np.int16 if partitions < 2**15 else np.int64  # int16 sorts by radix
    order = np.argsort(part.astype(small), kind="stable")  # by partition, input order within
    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
    payload = _native.columns_from_arrays(cols.payload)
    per_partition: dict[int, np.ndarray] = {}
    bases: dict[int, int] = {}
    for p in range(partitions):
        rows = order[bounds[p] : bounds[p + 1]]
        if not len(rows):
            continue
        held = sink.last_history_offset(p)
        base = HISTORY_BASE if held is None else held + 1
        if base + len(rows) > 0:
            raise InputDataError(
                f"import into source {source.name!r} partition {p}: the history offset range "
                f"is exhausted ({-base} offsets left, {len(rows)} rows)"
            )
        per_partition[p], bases[p] = rows, base
    files: dict[int, list[str]] = {p: [] for p in per_partition}
    longest = max((len(r) for r in per_partition.values()), default=0)
    for start in range(0, longest, _CHUNK):
        batches = []
        for p, rows in per_partition.items():
            chunk = rows[start : start + _CHUNK]
            if not len(chunk):
                continue
            batches.append(
                EnvelopeColumns(
                    partition=p,
                    offsets=bases[p] + np.arange(start, start + len(chunk), dtype=np.int64),
                    keys=keys.take(pa.array(chunk)),
                    event_time_ms=cols.event_time_ms[chunk],
                    processed_at_ms=cols.processed_at_ms[chunk],
                    payload=payload,
                    rows=chunk.astype(np.int64),
                )
            )
        written = sink.append_history_columns(batches)  # one file per batch, in order
        for batch, path in zip(batches, written, strict=True):
            files[batch.partition].append(path)
            if progress:
                progress(len(batch))
    return ImportResult(
        source=source.name,
        rows=len(df),
        per_partition={p: len(rows) for p, rows in per_partition.items()},
        files=tuple(path for p in sorted(files) for path in files[p]),
    )
