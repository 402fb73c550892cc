"""The Protocols between roles (import, backfill, worker, online reader) and their connectors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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


class HistorySink(Protocol):
    """Where an import writes history of one source: offsets in [HISTORY_BASE, 0)."""

    def append_history(self, records: Sequence[Envelope]) -> list[str]:
        """Durably store ``records`` (offsets above ``last_history_offset``, below 0)."""
        ...

    def last_history_offset(self, partition: int) -> int | None:
        """Highest history offset held for ``partition``, or ``None`` when it holds none."""
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


@dataclass(frozen=True, slots=True, kw_only=True)
class StateWrite:
    """One entity hash update: fields to set, fields to delete, and when the key may expire."""

    key: str
    fields: Mapping[str, bytes]
    delete: tuple[str, ...] = ()
    expire_at_ms: int | None = None
    # compare-and-set: (field, the value it must hold, None = absent) or None for no check;
    # a write whose check fails is not applied and ``write`` raises OnlineWriteConflict
    expect: tuple[str, bytes | None] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Watermark:
    """A string key swapped in the same pipeline as a batch's entity writes: set to ``value``,
    its previous value handed back (``SET … GET``), so the writer sees at no extra round trip
    whether the store still holds what it wrote last (engine/stream/recovery.py)."""

    key: str
    value: bytes


@runtime_checkable
@runtime_checkable
class PackedWrites(Protocol):
    """Entity writes whose script calls the native core has already packed (a store may send
    them as they are); iterating gives the same writes as ``StateWrite`` objects."""

    extra: Sequence[StateWrite]  # writes that are not packed (e.g. per-view stats)

    def script_chunks(self, max_args: int) -> list[tuple[int, int, int, bytes]]:
        """``(elements, first write, writes, RESP body)`` per call of the store's write script."""
        ...

    def key(self, i: int) -> str:
        """The key of packed write ``i``."""
        ...


@runtime_checkable
class OnlineStateStore(Protocol):
    """The online store as the stream worker and the online reader see it."""

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """Every field of each key (empty dict for a missing key), in one round trip."""
        ...

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        """Apply all writes, then set every mark, in one pipeline; each entity's update is one
        atomic command. Returns each mark's previous value (None where it had none), in order.

        Raises OnlineStoreUnavailable when the store cannot be reached, and
        OnlineWriteConflict (after applying the rest and setting the marks) when a write's
        ``expect`` does not hold — a store that cannot check (no scripting) applies it.
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A refused source record with the reason it was refused."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    code: str
    reason: str


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where refused records go; durable when ``send`` returns."""

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Deliver every letter (flushed) or raise."""
        ...
