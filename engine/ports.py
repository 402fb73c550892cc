"""The Protocols between roles (import, backfill, worker) and the event-log connector."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from engine.envelope import Envelope


@runtime_checkable
class EventLogSink(Protocol):
    """Where a stream worker or an import appends envelopes of one source."""

    def append(self, records: Sequence[Envelope]) -> list[str]:
        """Durably store ``records``, skipping offsets already held; return the files written."""
        ...

    def last_offset(self, partition: int) -> int | None:
        """Highest offset held for ``partition``, or ``None`` when it holds nothing."""
        ...


@runtime_checkable
class EventLogSource(Protocol):
    """Where a backfill reads envelopes of a source back, partition by partition."""

    def partitions(self, source: str) -> list[int]:
        """Partitions of ``source`` that hold records, ascending."""
        ...

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        """Envelopes of one partition in ascending offset order, each offset once."""
        ...
