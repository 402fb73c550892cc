"""Versioned binary codec for accumulator states and tiles (msgpack framing, never pickle).

Layout: ``[version, payload]`` packed with msgpack; the payload is the aggregators'
``to_plain`` forms. Unknown versions and corrupt bytes raise CodecError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from engine.errors import CodecError
from tests.reference.functions import Aggregator

VERSION = 1
_PACK = msgpack.Packer(use_bin_type=True).pack  # one Packer: packb builds a new one per call


def encode_states(aggregators: Sequence[Aggregator], states: Sequence[Any]) -> bytes:
    """Encode one state per aggregator (a tile, or a window's merged states)."""
    if len(aggregators) != len(states):
        raise CodecError(f"{len(states)} states for {len(aggregators)} aggregators")
    return bytes(
        _PACK((VERSION, [agg.to_plain(s) for agg, s in zip(aggregators, states, strict=True)]))
    )


def decode_states(aggregators: Sequence[Aggregator], data: bytes) -> list[Any]:
    """Inverse of ``encode_states``; raises CodecError on corrupt or foreign bytes."""
    plain = decode_plain(data, len(aggregators))
    try:
        return [agg.from_plain(p) for agg, p in zip(aggregators, plain, strict=True)]
    except (ValueError, TypeError, IndexError) as exc:
        raise CodecError(f"corrupt accumulator state: {exc}") from exc


def decode_plain(data: bytes, count: int) -> list[Any]:
    """The ``count`` plain forms inside ``encode_states`` bytes, not yet turned into states.

    For readers that merge plain forms directly (``Aggregator.merge_plain``); raises
    CodecError on corrupt or foreign bytes, an unknown version or a wrong state count.
    """
    try:
        version, plain = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise CodecError(f"cannot decode accumulator bytes: {exc}") from exc
    if version != VERSION:
        raise CodecError(f"accumulator codec version {version!r} is not supported (want {VERSION})")
    if type(plain) is not list or len(plain) != count:
        raise CodecError(
            f"encoded tile holds {len(plain) if isinstance(plain, list) else '?'} states, "
            f"expected {count}"
        )
    return plain
