"""Envelopes as columns: one partition's log records without a Python object per record.

An import (and, later, the stream worker) hands the event log whole columns — numpy
envelope fields plus a payload held natively (``engine._native.Columns``) or as Arrow
arrays — and the log encodes its Avro file natively (``engine._native.write_log_file``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ColumnarHistorySink", "EnvelopeColumns"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeColumns:
    """Records of one partition: record ``i`` has offset ``offsets[i]``, key ``keys[i]``,
    event time ``event_time_ms[i]``, processed-at ``processed_at_ms[i]`` and payload row
    ``rows[i]`` of ``payload`` (row ``i`` when ``rows`` is None).

    ``keys`` is a pyarrow binary/string array, a list of ``bytes | None``, or ``None`` (every
    key null); ``payload`` is an ``engine._native.Columns`` or a dict of pyarrow/numpy
    arrays named by the payload schema's fields. Int arrays are int64.
    """

    partition: int
    offsets: np.ndarray
    keys: Any
    event_time_ms: np.ndarray
    processed_at_ms: np.ndarray
    payload: Any
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets)


@runtime_checkable
class ColumnarHistorySink(Protocol):
    """A history sink that also takes columns (``connectors.eventlog.EventLogWriter``)."""

    def append_history_columns(self, batches: Sequence[EnvelopeColumns]) -> list[str]:
        """Durably store each batch as one file, as ``append_history`` would store its rows."""
        ...

    def last_history_offset(self, partition: int) -> int | None:
        """Highest history offset held for ``partition``, or ``None`` when it holds none."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRecords:
    """The records one event-log file adds: offsets, processed-at times, raw event-time
    field values and the payload as native ``Columns`` (row ``i`` is record ``i``)."""

    offsets: np.ndarray
    processed_at_ms: np.ndarray
    raw_event_time: np.ndarray
    payload: Any  # engine._native.Columns

    def __len__(self) -> int:
        return len(self.offsets)


def decode_log_file(
    data: bytes, high: int, timestamp_field: str, upto: int | None = None
) -> FileRecords | None:
    """Decode one event-log file natively into columns, keeping each offset once: a record
    at or below ``high`` or below an earlier record of the file is skipped (the file order
    of ``engine.log_files.read_partition``), and so is one above ``upto`` (the listing's
    limit of the file: a fenced owner's rolling file past the next epoch's start). None
    when the file adds nothing."""
    return next(decode_log_file_chunks(data, high, timestamp_field, upto), None)


def decode_log_file_chunks(
    data: bytes,
    high: int,
    timestamp_field: str,
    upto: int | None = None,
    rows: int | None = None,
) -> Iterator[FileRecords]:
    """``decode_log_file`` cut into runs of at most ``rows`` consecutive records (None: one
    run), the file decoded once (none: the file adds nothing), each run's columns built as
    it is taken: slices of the decoded arrays, so a caller's per-run work (frames, lists)
    stays small and its memory warm."""
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs

    from engine import _native

    arrays, _ = _native.read_container(data, ["offset", "processed_at", "payload"])
    offsets = np.asarray(arrays["offset"], dtype=np.int64)
    if not len(offsets):
        return
    before = np.maximum.accumulate(np.concatenate([[high], offsets[:-1]]))
    keep = offsets > before
    if upto is not None:
        keep &= offsets <= upto
    if not keep.any():
        return
    whole = bool(keep.all())
    mask = None if whole else pa.array(keep)
    payload = {
        name.removeprefix("payload."): array if whole
        else array.filter(mask) if isinstance(array, pa.Array)
        else [v for v, k in zip(array, keep, strict=True) if k]
        for name, array in arrays.items() if name.startswith("payload.")
    }  # fmt: skip
    offsets = offsets[keep]
    processed_at = np.asarray(arrays["processed_at"], dtype=np.int64)[keep]
    raw_event_time = np.asarray(payload[timestamp_field], dtype=np.int64)
    n = len(offsets)
    step = n if rows is None else max(1, rows)
    for at in range(0, n, step):
        run = payload if step >= n else {k: a[at : at + step] for k, a in payload.items()}
        yield FileRecords(
            offsets=offsets[at : at + step],
            processed_at_ms=processed_at[at : at + step],
            raw_event_time=raw_event_time[at : at + step],
            payload=_native.columns_from_arrays(run),
        )
