"""The event-log envelope: one source record with the Kafka coordinates and times it was logged with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HISTORY_BASE = -(10**18)
"""First offset of imported history in every partition: history fills ``[HISTORY_BASE, 0)``,
below every offset (>= 0) Kafka gives the live stream of the same source."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One logged source record (DESIGN §4).

    ``key`` is the Kafka record key bytes (``None`` for unkeyed records); ``payload`` is the
    record decoded against the source's Avro schema, exactly as it arrived (before any view
    transform). Times are int milliseconds since the Unix epoch, UTC.

    Example:
        >>> Envelope(partition=0, offset=7, key=b"c1", event_time_ms=1_700_000_000_000,
        ...          processed_at_ms=1_700_000_000_050, payload={"customer_id": "c1"})
        Envelope(partition=0, offset=7, key=b'c1', event_time_ms=1700000000000, processed_at_ms=1700000000050, payload={'customer_id': 'c1'})
    """

    partition: int
    offset: int
    key: bytes | None
    event_time_ms: int
    processed_at_ms: int
    payload: dict[str, Any]
