"""Envelopes as columns: one partition's log records without a Python object per record.

An import (and, later, the stream worker) hands the event log whole columns — numpy
envelope fields plus a payload held natively (``engine._native.Columns``) or as Arrow
arrays — and the log encodes its Avro file natively (``engine._native.write_log_file``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
