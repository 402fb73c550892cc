"""Reading an event log's files as bytes for the native core, with the reader's relisting rule.

A log whose files the core can decode itself (``EventLogReader``) implements ``LogFiles``.
``read_partition`` hands each file of a partition, in offset order, to a callback that
decodes it natively and returns the highest offset taken; a file compacted away after the
listing makes the partition be listed again, and reading goes on after that offset — the
rule ``EventLogReader.read`` follows, so the backfill and rebuild-online see each logged
record exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from engine.errors import EventLogError

_RELISTS = 20
BEFORE_ALL = -(1 << 63)  # below every offset


@runtime_checkable
class LogFiles(Protocol):
    """An event log whose files the core can decode itself (``EventLogReader``)."""

    def files(self, source: str, partition: int) -> list[tuple[int, int, str]]:
        """Final files of a partition as (first offset, last offset, path), by offset."""
        ...

    def read_file(self, path: str) -> bytes:
        """A file's bytes; FileNotFoundError when it was compacted away since listing."""
        ...


def read_partition(
    log: LogFiles, source: str, partition: int, take: Callable[[bytes, int], int]
) -> None:
    """Call ``take(file bytes, highest offset taken so far)`` per file of the partition, in
    offset order; ``take`` returns the new highest offset (records at or below the one it
    was given must be skipped). A ValueError from ``take`` becomes an EventLogError naming
    the file."""
    high = BEFORE_ALL
    for _ in range(_RELISTS):
        try:
            for _, last, path in log.files(source, partition):
                if last <= high:
                    continue  # wholly covered by files already read
                data = log.read_file(path)
                try:
                    high = take(data, high)
                except ValueError as exc:
                    raise EventLogError(f"cannot read event-log file {path}: {exc}") from exc
            return
        except FileNotFoundError:
            continue  # compacted away since the listing: list again, go on after `high`
    raise EventLogError(
        f"event log for source {source!r} partition {partition}: files kept vanishing "
        f"while being read ({_RELISTS} listings); is something deleting them?"
    )
