"""Import historical events into the event log: judge every cell first, then write.

Each cell is judged by its field's Avro type. A CSV file is text, so its cells are parsed by
that type (``long`` accepts ``1767225628556``, ``double`` ``114.21``, ``boolean`` ``true``/
``false`` in any letter case or ``1``/``0``; an empty cell is null); a DataFrame or Parquet
column is typed already and is never parsed from text. A timestamp field (the source's event
time, a ``timestamp-millis``/``timestamp-micros`` field, and ``processed_at``) also takes
ISO-8601 text with a zone (CSV) or datetimes with a time zone (DataFrame, Parquet); a
timestamp without a zone is ambiguous and refused.

Any bad cell makes the import write nothing and raise an ``InputDataError`` that names the
file (when read from one) and the source, then the first 20 bad cells in file order with
their place — ``line N`` of a CSV file (the header is line 1), else ``row N`` (0-based, as
``df.iloc``) — and a count of the rest.

Rows are partitioned as a producer keyed by the source key would partition them (murmur2),
and offsets follow input order within a partition, continuing after earlier imports.
Imported history takes offsets from ``HISTORY_BASE`` (-10**18) up to 0, so it never collides
with the offsets (>= 0) Kafka gives the live stream of the same source.

A sink that takes columns (``ColumnarHistorySink``, the event log) gets them: a column is
validated with numpy/Arrow (a column that needs a closer look — text to parse, mixed
objects, a bad cell — is judged cell by cell), the payload is handed to the native log
writer once (``engine._native.Columns``) and each file selects its rows, so no Python object
is made per row. Keys are encoded and partitioned once per distinct key. Other sinks get
``Envelope`` records.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs
import pyarrow.compute as pc  # type: ignore[import-untyped]

from engine import _native
from engine.envelope import HISTORY_BASE, Envelope
from engine.errors import InputDataError
from engine.frames import csv_line_numbers, read_csv_text, source_path
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
_EXPECTED = {
    "int": "an integer",
    "float": "a finite number",
    "str": "a string",
    "bool": "a boolean",
    "bytes": "bytes",
}
_TIMESTAMP_TYPES = {"timestamp-millis": 1, "timestamp-micros": 1000}  # raw units per ms
_INT32 = (-(1 << 31), 1 << 31)
_INT64 = (-(1 << 63), 1 << 63)
_EXACT_FLOAT = 2.0**53  # float64 holds every integer below this exactly
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# CSV text, after trimming spaces. Integers are whole numbers in any decimal form ("12",
# "12.0" as pandas writes a nullable integer column, "1e3"); see ``_text_whole``.
_INT_TEXT = r"^[+-]?[0-9]+(\.0*)?$"
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_TIME = r"[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
_ISO_ZONED = rf"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}{_TIME}([Zz]|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$"
_ISO_NAIVE = re.compile(rf"[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}({_TIME})?")
_NO_TEXT = pa.scalar(None, pa.large_string())
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    """What an import wrote."""

    source: str
    rows: int
    per_partition: dict[int, int]
    files: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Target:
    """How one column is judged: its field, its place among the columns, its time role."""

    spec: FieldSpec
    index: int  # orders the messages about one row
    per_ms: int | None  # a timestamp: raw units per millisecond (1 ms, 1000 µs); else None
    event_time: bool  # the event time or processed_at: nothing before 1970

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def forms(self) -> str:
        """The accepted timestamp forms, for messages."""
        unit, example = (
            ("microseconds", 1_767_225_600_000_000)
            if self.per_ms == 1000
            else ("milliseconds", 1_767_225_600_000)
        )
        return f"epoch {unit} (e.g. {example}) or ISO-8601 with a zone (e.g. 2026-01-01T00:00:00Z)"


@dataclass(slots=True)
class _Problems:
    """What is wrong with a frame: column problems, and the first bad cells of each column."""

    columns: list[str] = field(default_factory=list)
    cells: list[tuple[int, int, str]] = field(default_factory=list)  # (row, column, text)
    bad_cells: int = 0
    text_in_typed: bool = False  # a DataFrame/Parquet cell held text instead of a value

    def add(self, target: _Target, mask: np.ndarray, describe: Callable[[int], str]) -> None:
        """Count the cells of ``mask`` as bad; keep the messages of the first ones."""
        rows = np.flatnonzero(mask)
        self.bad_cells += len(rows)
        self.cells.extend(
            (r, target.index, f"column {target.name!r}: {describe(r)}")
            for r in rows[:_MAX_PROBLEMS].tolist()
        )

    def __bool__(self) -> bool:
        return bool(self.columns or self.bad_cells)


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a frame came from: the file ``read_table`` read, if any."""

    path: str | None

    @property
    def csv(self) -> bool:
        return self.path is not None and self.path.lower().endswith(".csv")

    @staticmethod
    def of(df: pd.DataFrame) -> _Origin:
        return _Origin(source_path(df))


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _refuse(source: SourcePlan, origin: _Origin, problems: _Problems) -> InputDataError:
    """The error listing ``problems``: a headline, then one line per problem."""
    cells = sorted(problems.cells)[:_MAX_PROBLEMS]
    rows = [r for r, _, _ in cells]
    lines = csv_line_numbers(origin.path, rows) if origin.csv and origin.path else None
    counts = []
    if problems.columns:
        counts.append(_plural(len(problems.columns), "column problem"))
    if problems.bad_cells:
        counts.append(_plural(problems.bad_cells, "bad cell"))
    note = "nothing imported"
    if cells:
        note += "; line 1 is the header" if lines is not None else "; rows count from 0"
    head = f"{origin.path}: " if origin.path else ""
    body = [*problems.columns]
    body.extend(
        f"{f'line {lines[r]}' if lines is not None else f'row {r}'} {text}" for r, _, text in cells
    )
    if problems.bad_cells > len(cells):
        body.append(f"... and {_plural(problems.bad_cells - len(cells), 'more bad cell')}")
    if problems.text_in_typed:
        body.append(
            "(text is parsed in CSV files only: convert a DataFrame's or Parquet file's "
            "columns first, e.g. with pd.to_numeric or pd.to_datetime(..., utc=True))"
        )
    return InputDataError(
        f"{head}{' and '.join(counts)} for source {source.name!r} ({note}):\n  " + "\n  ".join(body)
    )


def _out_of_range(value: str, avro_type: str) -> str:
    bits = 32 if avro_type == "int" else 64
    return f"{value} is out of range for {avro_type} ({bits}-bit integers)"


def _show(value: Any) -> str:
    """A cell's value for a message (numpy scalars as their Python value)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _arrow(series: pd.Series) -> pa.Array:
    """``series`` as one Arrow array (NaN and None as nulls)."""
    arr = pa.array(series, from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _utc_micros(series: pd.Series) -> np.ndarray:
    """int64 µs since the epoch of a tz-aware datetime column."""
    naive = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return np.asarray(naive.to_numpy(dtype="datetime64[us]").astype("int64"))


def _is_text(series: pd.Series) -> bool:
    """Every non-null cell is a ``str``."""
    if isinstance(series.dtype, pd.StringDtype):
        return True
    if series.dtype != object:
        return False
    cells = series.dropna()
    return bool(len(cells)) and all(isinstance(v, str) for v in cells.tolist())


def _fast_array(
    target: _Target, series: pd.Series, nulls: np.ndarray, csv: bool
) -> pa.Array | None:
    """The column as an Arrow array when numpy/Arrow can show it is valid, else ``None``
    (the cell-by-cell check then finds and names the problems)."""
    spec = target.spec
    kind = spec.kind
    dtype = series.dtype
    if target.per_ms is not None and pd.api.types.is_datetime64_dtype(dtype):
        # a typed datetime without a zone means UTC, as everywhere in the engine (frames.py)
        series, dtype = series.dt.tz_localize("UTC"), pd.DatetimeTZDtype(tz="UTC")
    if target.per_ms is not None and isinstance(dtype, pd.DatetimeTZDtype):
        micros = _utc_micros(series)
        raw = micros if target.per_ms == 1000 else micros // 1000
        return pa.array(raw, mask=nulls if nulls.any() else None)
    if kind in ("int", "float") and (
        pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype)
    ):
        return None
    if kind == "int":
        if pd.api.types.is_float_dtype(dtype):
            vals = series.to_numpy(dtype="float64", na_value=np.nan)[~nulls]
            if not (np.isfinite(vals).all() and (vals == np.floor(vals)).all()):
                return None
            # CSV text of a big integer may have lost digits as a float: judge its text
            limit = _EXACT_FLOAT if csv else 2.0**63
            if len(vals) and not (vals.min() >= -limit and vals.max() < limit):
                return None
        try:
            return _arrow(series).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
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


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    """Which cells of ``text`` match ``pattern`` (nulls never do)."""
    found = pc.match_substring_regex(text, pattern).fill_null(False)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


def _text_whole(text: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which cells of ``text`` are whole numbers, their int64 values (0 elsewhere), and which
    of them are out of the int64 range.

    Integer text is exact at any size; a decimal or exponent form (``12.0``, ``1e3``) is
    whole below 2**53, where a double holds it exactly — as pandas reads such a column.
    """
    ok = _matches(text, _INT_TEXT)
    values = np.zeros(len(ok), dtype=np.int64)
    over = np.zeros(len(ok), dtype=bool)
    if ok.any():
        picked = text.filter(pa.array(ok))
        digits = pc.replace_substring_regex(
            pc.replace_substring_regex(picked, r"^\+", ""), r"\.0*$", ""
        )
        try:
            values[ok] = pc.cast(digits, pa.int64()).to_numpy()
        except pa.ArrowInvalid:  # out of the int64 range: find which (rare)
            big = [int(s) for s in digits.to_pylist()]
            values[ok] = [v if _INT64[0] <= v < _INT64[1] else 0 for v in big]
            over[ok] = [not _INT64[0] <= v < _INT64[1] for v in big]
    decimal = _matches(text, _FLOAT_TEXT) & ~ok
    if decimal.any():
        floats = pc.cast(text.filter(pa.array(decimal)), pa.float64()).to_numpy()
        whole = np.isfinite(floats) & (floats == np.floor(floats)) & (abs(floats) < _EXACT_FLOAT)
        values[decimal] = np.where(whole, floats, 0).astype(np.int64)
        decimal[decimal] = whole
    return ok | decimal, values, over


def _text_array(cells: pd.Series) -> pa.Array:
    """A text column as an Arrow ``large_string`` array (nulls as nulls)."""
    try:
        arr = _arrow(cells)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all text: the text of each cell
        arr = pa.array([None if pd.isna(v) else str(v) for v in cells.tolist()])
    return arr.cast(pa.large_string())


def _from_text(
    target: _Target, cells: pd.Series, nulls: np.ndarray, problems: _Problems
) -> pa.Array | None:
    """Parse CSV text by the field's type; bad cells go to ``problems``, then ``None``."""
    spec = target.spec
    kind = spec.kind
    raw = _text_array(cells)
    text = pc.utf8_trim_whitespace(raw)
    mask = nulls if nulls.any() else None

    def show(r: int) -> str:
        return repr(raw[r].as_py())

    if target.per_ms is not None:
        is_int, values, over = _text_whole(text)
        zoned = _matches(text, _ISO_ZONED) & ~is_int
        if zoned.any():
            iso = pc.utf8_upper(text.filter(pa.array(zoned))).to_pandas()  # RFC 3339: t, z
            parsed = pd.to_datetime(iso, format="ISO8601", utc=True, errors="coerce")
            micros = _utc_micros(parsed)
            values[zoned] = micros if target.per_ms == 1000 else micros // 1000
            zoned[zoned] = parsed.notna().to_numpy()  # a day that does not exist is bad
        bad = ~((is_int & ~over) | zoned) & ~nulls

        def timestamp(r: int) -> str:
            if _ISO_NAIVE.fullmatch(str(text[r].as_py())):
                return f"{show(r)} has no time zone (ambiguous); expected {target.forms}"
            return f"{show(r)} is not a timestamp; expected {target.forms}"

        problems.add(target, bad, timestamp)
        return None if bad.any() else pa.array(values, mask=mask)
    if kind == "int":
        ok, values, over = _text_whole(text)
        low, high = _INT32 if spec.avro_type == "int" else _INT64
        over |= ok & ((values < low) | (values >= high))
        bad = ~ok & ~nulls
        problems.add(target, bad, lambda r: f"{show(r)} is not an integer ({spec.avro_type})")
        problems.add(target, over, lambda r: _out_of_range(show(r), spec.avro_type))
        return None if (bad | over).any() else pa.array(values, mask=mask)
    if kind == "float":
        ok = _matches(text, _FLOAT_TEXT)
        picked = pc.if_else(pa.array(ok), text, _NO_TEXT)
        floats = pc.cast(picked, pa.float64())
        ok &= np.asarray(pc.is_finite(floats).fill_null(False).to_numpy(zero_copy_only=False))
        bad = ~ok & ~nulls
        problems.add(target, bad, lambda r: f"{show(r)} is not {_EXPECTED['float']} (double)")
        return None if bad.any() else floats
    if kind == "bool":
        lower = pc.utf8_lower(text)
        ok = np.asarray(
            pc.is_in(lower, pa.array(list(_BOOL_TEXT))).to_numpy(zero_copy_only=False), dtype=bool
        )
        bad = ~ok & ~nulls
        problems.add(
            target,
            bad,
            lambda r: f"{show(r)} is not a boolean; expected true or false (any case), 1 or 0",
        )
        truth = pc.is_in(lower, pa.array([t for t, v in _BOOL_TEXT.items() if v]))
        return None if bad.any() else pc.if_else(pa.array(nulls), None, truth)
    if kind == "str":
        return raw
    if (~nulls).any():  # bytes
        problems.columns.append(
            f"column {target.name!r}: a bytes field cannot be read from CSV text; use Parquet"
        )
        return None
    return pa.nulls(len(raw), type=_ARROW_TYPES["bytes"])


def _typed_cell(target: _Target, value: Any) -> tuple[Any, str | None]:
    """A DataFrame/Parquet cell's value for the field, or ``None`` and why it is refused."""
    spec = target.spec
    kind = spec.kind
    if target.per_ms is not None and isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return None, (
                f"expected {_typed_forms(target)}, got {_show(value)} (no time zone, so ambiguous)"
            )
        unit = dt.timedelta(microseconds=1 if target.per_ms == 1000 else 1000)
        return (value - _EPOCH) // unit, None
    if kind in ("int", "float"):
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            return None, None
        if kind == "float":
            number = float(value)
            return (number, None) if np.isfinite(number) else (None, None)
        if isinstance(value, (float, np.floating)) and not (
            np.isfinite(value) and value == np.floor(value)
        ):
            return None, None
        whole = int(value)
        low, high = _INT32 if spec.avro_type == "int" else _INT64
        if not low <= whole < high:
            return None, _out_of_range(str(whole), spec.avro_type)
        return whole, None
    if kind == "str":
        return (value, None) if isinstance(value, str) else (None, None)
    if kind == "bool":
        return (bool(value), None) if isinstance(value, (bool, np.bool_)) else (None, None)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    return None, None


def _typed_forms(target: _Target) -> str:
    unit = "microseconds" if target.per_ms == 1000 else "milliseconds"
    return f"epoch {unit} (an integer) or a datetime with a time zone"


def _from_values(
    target: _Target, series: pd.Series, nulls: np.ndarray, problems: _Problems
) -> pa.Array | None:
    """Judge a DataFrame/Parquet column cell by cell; bad cells go to ``problems``."""
    spec = target.spec
    kind = spec.kind or ""
    if target.per_ms is not None and pd.api.types.is_datetime64_dtype(series.dtype):
        name = target.name
        problems.columns.append(
            f"column {name!r}: datetimes without a time zone are ambiguous; expected "
            f"{_typed_forms(target)}: localize them first, "
            f"e.g. df[{name!r}] = df[{name!r}].dt.tz_localize('UTC')"
        )
        return None
    if kind != "str" and _is_text(series):
        expected = (
            _typed_forms(target)
            if target.per_ms is not None
            else (f"{_EXPECTED.get(kind, spec.avro_type)} ({spec.avro_type})")
        )
        problems.columns.append(
            f"column {target.name!r}: holds text, expected {expected}; a DataFrame's or "
            f"Parquet file's text is not parsed (only a CSV file's is): convert the column"
        )
        return None
    raw = series.tolist()
    values: list[Any] = [None] * len(raw)
    bad = np.zeros(len(raw), dtype=bool)
    why: dict[int, str] = {}
    for row, value in enumerate(raw):
        if nulls[row]:
            continue
        parsed, reason = _typed_cell(target, value)
        if parsed is None:
            bad[row] = True
            if reason is not None:
                why[row] = reason
            elif isinstance(value, str):
                problems.text_in_typed = True
        values[row] = parsed
    expected = (
        _typed_forms(target)
        if target.per_ms is not None
        else f"{_EXPECTED.get(kind, spec.avro_type)} ({spec.avro_type})"
    )
    problems.add(target, bad, lambda r: why.get(r) or f"expected {expected}, got {_show(raw[r])}")
    return None if bad.any() else pa.array(values, type=_ARROW_TYPES[kind])


def _after_checks(target: _Target, arr: pa.Array, problems: _Problems) -> bool:
    """Checks on a parsed column: event times from 1970 on, Avro ``int`` in 32 bits."""
    if target.event_time and pc.any(pc.less(arr, 0)).as_py():
        below = pc.less(arr, 0).fill_null(False).to_numpy(zero_copy_only=False)
        values = arr.to_numpy(zero_copy_only=False)
        problems.add(target, below, lambda r: f"timestamp {int(values[r])} is before 1970")
        return False
    if target.spec.avro_type == "int" and target.per_ms is None and arr.null_count < len(arr):
        low, high = _INT32
        extremes = pc.min_max(arr)
        if extremes["min"].as_py() < low or extremes["max"].as_py() >= high:
            outside = pc.or_(pc.less(arr, low), pc.greater_equal(arr, high)).fill_null(False)
            values = arr.to_numpy(zero_copy_only=False)
            problems.add(
                target,
                outside.to_numpy(zero_copy_only=False),
                lambda r: _out_of_range(str(int(values[r])), "int"),
            )
            return False
    return True


def _checked_array(
    target: _Target, series: pd.Series, problems: _Problems, origin: _Origin
) -> pa.Array | None:
    """The validated column as an Arrow array; ``None`` when it has problems (recorded)."""
    spec = target.spec
    nulls = series.isna().to_numpy()
    missing = not spec.nullable and bool(nulls.any())
    if missing:
        if target.per_ms is not None and target.event_time:
            what = "timestamp is missing"
        elif origin.csv:
            what = "empty or NA, but the field is not nullable"
        else:
            what = "null, but the field is not nullable"
        problems.add(target, nulls, lambda _r: what)
    arr = None if missing else _fast_array(target, series, nulls, origin.csv)
    if arr is None:
        if origin.csv and origin.path is not None:
            arr = _from_text(target, _csv_text(origin.path, target, series), nulls, problems)
        else:
            arr = _from_values(target, series, nulls, problems)
    if arr is None or not _after_checks(target, arr, problems):
        return None
    return None if missing else arr


def _csv_text(path: str, target: _Target, series: pd.Series) -> pd.Series:
    """The text of a CSV column's cells: as read when pandas kept it as text, else re-read."""
    if _is_text(series) or not series.notna().any():
        return series
    text = read_csv_text(path, target.name)
    if len(text) != len(series):
        raise InputDataError(
            f"{path}: column {target.name!r} read {len(text)} rows the second time, "
            f"{len(series)} the first; did the file change during the import?"
        )
    return text


def _targets(source: SourcePlan) -> dict[str, _Target]:
    """How each field of the source is judged."""
    out: dict[str, _Target] = {}
    for index, (name, spec) in enumerate(source.fields.items()):
        event_time = name == source.timestamp_field
        if event_time:
            per_ms: int | None = source.timestamp_divisor
        elif spec.kind == "int":
            per_ms = _TIMESTAMP_TYPES.get(spec.logical_type or "")
        else:
            per_ms = None
        out[name] = _Target(spec=spec, index=index, per_ms=per_ms, event_time=event_time)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class _Columns:
    """A validated frame: payload arrays by field, event and processed times per row."""

    payload: dict[str, pa.Array]
    event_time_ms: np.ndarray
    processed_at_ms: np.ndarray


def _validate_columns(source: SourcePlan, df: pd.DataFrame) -> _Columns:
    """Every cell of ``df`` judged against the source schema; raises ``InputDataError``
    listing the problems, so nothing is written unless every cell is valid."""
    origin = _Origin.of(df)
    problems = _Problems()
    arrays: dict[str, pa.Array] = {}
    n = len(df)
    targets = _targets(source)
    for name, target in targets.items():
        spec = target.spec
        if spec.kind is None:
            problems.columns.append(
                f"column {name!r}: Avro type {spec.avro_type} cannot be imported yet"
            )
            continue
        if name not in df.columns:
            if spec.nullable:
                arrays[name] = pa.nulls(n, type=_ARROW_TYPES[spec.kind])
            else:
                problems.columns.append(
                    f"column {name!r} is missing (the source schema requires it)"
                )
            continue
        arr = _checked_array(target, df[name], problems, origin)
        if arr is not None:
            arrays[name] = arr
    for key in source.key_fields:
        arr = arrays.get(key)
        if arr is not None and arr.null_count:
            nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
            problems.add(targets[key], nulls, lambda _r: "null key")
    processed: np.ndarray | None = None
    if PROCESSED_AT in df.columns and PROCESSED_AT not in source.fields:
        spec = FieldSpec(
            name=PROCESSED_AT, kind="int", nullable=False, avro_type="long", logical_type=None
        )
        target = _Target(spec=spec, index=len(targets), per_ms=1, event_time=True)
        arr = _checked_array(target, df[PROCESSED_AT], problems, origin)
        if arr is not None:
            processed = arr.to_numpy()
    if problems:
        raise _refuse(source, origin, problems)
    ts = arrays[source.timestamp_field]
    event_time = ts.to_numpy() // source.timestamp_divisor
    return _Columns(
        payload=arrays,
        event_time_ms=event_time,
        processed_at_ms=event_time if processed is None else processed,
    )


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
    cols = _validate_columns(source, df)
    names = list(cols.payload)
    values = [cols.payload[n].to_pylist() for n in names]
    payloads = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
    event_times = cols.event_time_ms.tolist()
    processed = cols.processed_at_ms.tolist()
    keys = source.key_fields
    rows: dict[int, list[tuple[bytes, dict[str, Any], int, int]]] = {}
    for payload, event_time, processed_at in zip(payloads, event_times, processed, strict=True):
        key = encode_key([payload[k] for k in keys])
        rows.setdefault(partition_for(key, partitions), []).append(
            (key, payload, event_time, processed_at)
        )
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
                Envelope(partition=p, offset=base + i, key=key, event_time_ms=event_time,
                         processed_at_ms=processed_at, payload=payload)
                for i, (key, payload, event_time, processed_at)
                in enumerate(part[start : start + _CHUNK], start)
            ]  # fmt: skip
            files.extend(sink.append_history(chunk))
            if progress:
                progress(len(chunk))
        counts[p] = len(part)
    return ImportResult(
        source=source.name, rows=len(payloads), per_partition=counts, files=tuple(files)
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
