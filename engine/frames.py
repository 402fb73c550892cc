"""The pandas edge: read user tables and turn their timestamps into int milliseconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import InputDataError


def read_table(data: Any, *, string_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A DataFrame from a DataFrame, or a ``.parquet`` / ``.csv`` path.

    ``string_columns`` are read as text from CSV so ids like ``007`` keep their form.
    """
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise InputDataError(f"{path}: file does not exist")
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".csv":
            header = pd.read_csv(path, nrows=0).columns
            dtypes = {c: "string" for c in string_columns if c in header}
            return pd.read_csv(path, dtype=dtypes)
        raise InputDataError(
            f"{path}: expected a .parquet or .csv file, got {suffix or 'no suffix'!r}"
        )
    raise InputDataError(
        f"expected a pandas DataFrame or a path to a .parquet/.csv file, got {type(data).__name__}"
    )


def to_epoch_ms(series: pd.Series, column: str) -> np.ndarray:
    """int64 ms since the epoch from datetimes (tz-aware, or naive meaning UTC) or int ms.

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
        return np.asarray(values.to_numpy(dtype="datetime64[ms]").astype("int64"))
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
    return to_epoch_ms(converted, column)
