"""Entity keys on the wire: the Kafka record key of a row and the partition it lands in."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiokafka.partitioner import murmur2


def encode_key(values: Sequence[Any]) -> bytes:
    """Kafka key bytes for join-key values: the value's text for one key, a JSON array for more.

    Example:
        >>> encode_key(["c42"]), encode_key([7, "x"])
        (b'c42', b'[7,"x"]')
    """
    if len(values) == 1:
        return str(values[0]).encode("utf-8")
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner (murmur2) picks for ``key``.

    skewless producers are configured with ``partitioner=murmur2_random`` so the Python and
    Java clients, imports and pushes all agree.
    """
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions
