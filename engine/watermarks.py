"""Watermarks: per (view fingerprint, source partition), how far into the log Redis is known to hold.

Pure functions — no Redis client here. One string key per view fingerprint and source partition:

    key    sk:wm:<fingerprint>:<partition>     outside the entity keyspace ``sk:<fingerprint>:*``
    value  the highest source offset of the partition that the writer had applied to the
           view's state *or* that the event log held, as ASCII digits

A worker swaps it (``SET … GET``) in the same pipeline as each batch's entity writes and
before the batch's log append, so — unless Redis lost writes — a watermark is never below the
highest offset the log holds for that partition, and never differs from what the partition's
owner wrote last. ``engine.stream.recovery`` turns a violation into an in-place rebuild.
"""

from __future__ import annotations

import re

from engine.online import PREFIX
from engine.plan import ViewPlan


def watermark_key(view: ViewPlan, partition: int) -> str:
    """Redis key of the watermark of ``view``'s state from one source partition."""
    return f"{PREFIX}:wm:{view.fingerprint}:{partition}"


_OFFSET = re.compile(r"-?[0-9]+")


def watermark_pattern(fingerprint: str) -> str:
    """SCAN pattern matching every watermark of one view fingerprint."""
    return f"{PREFIX}:wm:{fingerprint}:*"


def encode_watermark(offset: int) -> bytes:
    return str(offset).encode("ascii")


def decode_watermark(raw: bytes) -> int | None:
    """The offset a watermark value holds, or None when it is not one (corrupt or foreign).

    Negative offsets are imported history (``EventLogWriter.append_history``): a partition whose
    log holds nothing else has a negative last offset.
    """
    text = raw.decode("ascii", errors="replace")
    return int(text) if _OFFSET.fullmatch(text) else None
