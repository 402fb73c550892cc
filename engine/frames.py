"""The pandas edge: read user tables and turn their timestamps into int milliseconds."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import InputDataError
from engine.schema import outside

# ``DataFrame.attrs`` keys: the path of the file ``read_table`` read the frame from and its
# row count, so the messages about its cells can name the file (and a CSV file's lines).
SOURCE_PATH = "skewless.source_path"
SOURCE_ROWS = "skewless.source_rows"


def read_table(data: Any, *, string_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A DataFrame from a DataFrame, or a ``.parquet`` / ``.csv`` path.

    ``string_columns`` are read as text from CSV so ids like ``007`` keep their form. A frame
    read from a file carries its path in ``df.attrs[SOURCE_PATH]``.
    """
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise InputDataError(f"{path}: file does not exist")
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            return _from_file(pd.read_parquet(path), path)
        if suffix == ".csv":
            header = pd.read_csv(path, nrows=0).columns
            dtypes = {c: "string" for c in string_columns if c in header}
            return _from_file(pd.read_csv(path, dtype=dtypes), path)
        raise InputDataError(
            f"{path}: expected a .parquet or .csv file, got {suffix or 'no suffix'!r}"
        )
    raise InputDataError(
        f"expected a pandas DataFrame or a path to a .parquet/.csv file, got {type(data).__name__}"
    )


def _from_file(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    df.attrs[SOURCE_PATH] = str(path)
    df.attrs[SOURCE_ROWS] = len(df)
    return df


def source_path(df: pd.DataFrame) -> str | None:
    """The file ``read_table`` read ``df`` from, while its rows are still the file's rows
    (a CSV frame keeps the 0..n-1 index ``read_csv`` gave it: rows map to file lines)."""
    path = df.attrs.get(SOURCE_PATH)
    if not isinstance(path, str) or df.attrs.get(SOURCE_ROWS) != len(df):
        return None
    index = df.index
    in_order = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
    return path if in_order or not path.lower().endswith(".csv") else None


def to_epoch_ms(series: pd.Series, column: str, *, per_ms: int = 1) -> np.ndarray:
    """int64 ms since the epoch from datetimes (tz-aware, or naive meaning UTC) or int ms.

    ``per_ms`` 1000: datetimes become µs instead (a ``timestamp-micros`` field's units);
    numbers are returned as they are either way.
    Raises InputDataError naming the first null or unusable row.
    """
    nulls = series.isna().to_numpy()
    if nulls.any():
        row = int(np.flatnonzero(nulls)[0])
        raise InputDataError(f"column {column!r} row {row}: timestamp is null")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        values = series
        if getattr(series.dt, "tz", None) is not None:
            values = series.dt.tz_convert("UTC").dt.tz_localize(None)
        unit = "datetime64[us]" if per_ms == 1000 else "datetime64[ms]"
        return np.asarray(values.to_numpy(dtype=unit).astype("int64"))
    if pd.api.types.is_bool_dtype(series.dtype):
        raise InputDataError(f"column {column!r}: expected datetimes or int ms, got booleans")
    if pd.api.types.is_integer_dtype(series.dtype):
        return np.asarray(series.to_numpy(dtype="int64"))
    if pd.api.types.is_float_dtype(series.dtype):
        arr = series.to_numpy(dtype="float64")
        bad = arr != np.floor(arr)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputDataError(f"column {column!r} row {row}: {arr[row]!r} is not whole ms")
        return arr.astype("int64")
    try:
        converted = pd.to_datetime(series, utc=True)
    except (ValueError, TypeError) as exc:
        raise InputDataError(
            f"column {column!r}: expected datetimes or int ms since the epoch ({exc})"
        ) from exc
    return to_epoch_ms(converted, column, per_ms=per_ms)


def label_keys(
    series: pd.Series, column: str, kind: str | None, bounds: tuple[int, int] | None = None
) -> list[Any]:
    """One join-key column of ``entity_df`` as the backfill matches it, checked.

    ``kind``: the type of the source field behind the join key, ``"str"`` or ``"int"``
    (None: a column a transform declares, not checked here). A null key, or a key of the
    other type — a string for an integer key, an int for a string key, a bool, a fraction —
    raises InputDataError naming the column, the row and the value, as ``get_online_features``
    does: such a label could match no event, and a training set must not quietly hold the
    empty default for it. Integral floats count as the integer they equal (a pandas int
    column that went through a NaN is float64). ``bounds``: an integer key's range (its
    field's Avro type, ``schema.int_range``); a key past it can name no entity either.
    """
    values = _label_keys(series, column, kind)
    if kind == "int" and bounds is not None and values:
        lo, hi = bounds
        if min(values) < lo or max(values) > hi:
            row = next(r for r, v in enumerate(values) if not lo <= v <= hi)
            raise InputDataError(f"entity_df column {column!r} row {row}: join key "
                                 f"{values[row]!r} is {outside(bounds)}")  # fmt: skip
    return values


def _label_keys(series: pd.Series, column: str, kind: str | None) -> list[Any]:
    nulls = series.isna().to_numpy()
    if nulls.any():
        raise InputDataError(f"entity_df column {column!r} row {int(np.flatnonzero(nulls)[0])}: "
                             "null join key")  # fmt: skip
    values = series.tolist()
    dtype = series.dtype
    if kind == "int":
        if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            return values
        if pd.api.types.is_float_dtype(dtype):
            arr = series.to_numpy(dtype="float64")
            bad = ~np.isfinite(arr) | (arr != np.floor(np.where(np.isfinite(arr), arr, 0.0)))
            if not bad.any():
                return values
            row = int(np.flatnonzero(bad)[0])
            raise _wrong_key(column, row, "an integer", values[row])
        for row, value in enumerate(values):
            if type(value) is int or (isinstance(value, float) and value.is_integer()):
                continue
            if isinstance(value, np.integer):  # an object column's numpy int: the same int
                values[row] = int(value)
                continue
            if isinstance(value, np.floating) and float(value).is_integer():
                values[row] = float(value)
                continue
            raise _wrong_key(column, row, "an integer", value)
    elif kind == "str" and not isinstance(dtype, pd.StringDtype):  # a string dtype holds str
        for row, value in enumerate(values):
            if not isinstance(value, str):
                raise _wrong_key(column, row, "a string", value)
    return values


def _wrong_key(column: str, row: int, expected: str, value: Any) -> InputDataError:
    return InputDataError(
        f"entity_df column {column!r} row {row}: join key must be {expected} (the type of the "
        f"source field), got {type(value).__name__} {value!r}"
    )


def read_csv_text(path: str | Path, column: str) -> pd.Series:
    """One CSV column as the text of its cells (nulls where ``read_table`` reads nulls).

    ``read_table`` lets pandas guess each column's type; a cell that needs judging by another
    type is judged by its text, as written in the file.
    """
    return pd.read_csv(path, usecols=[column], dtype=str)[column]


def csv_line_numbers(path: str | Path, rows: Iterable[int]) -> dict[int, int] | None:
    """The file line (1-based; the header is line 1) on which each 0-based data row starts.

    Rows are counted as ``read_table`` counts them: blank lines are skipped, and a quoted cell
    may span lines. ``None`` when the file ends before one of ``rows`` or cannot be scanned.
    """
    wanted = set(rows)
    found: dict[int, int] = {}
    if not wanted:
        return found
    row = -1  # the first non-blank record is the header
    start = 1
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as file:
            reader = csv.reader(file)
            for record in reader:
                if record:
                    if row in wanted:
                        found[row] = start
                        if len(found) == len(wanted):
                            break
                    row += 1
                start = reader.line_num + 1
    except (OSError, csv.Error):
        return None
    return found if len(found) == len(wanted) else None
