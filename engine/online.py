"""The online-state layout (DESIGN §4): how an entity's tiles live in one Redis hash.

Pure functions — no Redis client here. One hash per (view fingerprint, entity):

    key   sk:<fingerprint>:{<entity>}      the braces are a Redis Cluster hash tag
    t:<p>:<hop_ms>:<k>   tile k of a hop group, written by the worker of source partition p
    l:<p>                lifetime accumulators from partition p
    f:<p>                fence: the last source offset of partition p applied to this entity
    u:<p>                processed_at (ms) of the newest write from partition p

One small hash per view fingerprint records its writes, for ``skewless status``:

    key   sk:stats:<fingerprint>       outside the entity keyspace ``sk:<fingerprint>:*``
    e:<p>                event time (ms) of the newest event in partition p's last write
    w:<p>                processed_at (ms) of partition p's last write

Fields are namespaced by source partition, so the workers of different partitions never
overwrite each other, even for a view whose entity is not the topic key; a read merges the
partitions' tiles with the kernel's ``merge`` (associative and commutative). A changed
definition has a new fingerprint, hence a fresh keyspace.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from engine.codec import decode_states, encode_states
from engine.kernel.tiles import (
    EntityTiles,
    TileLayout,
    evict,
    merge_into,
    next_stale_ms,
    stale_at_ms,
)
from engine.keys import encode_key
from engine.plan import ViewPlan
from engine.ports import StateWrite

PREFIX = "sk"
NO_FENCE = -(1 << 63)  # below every offset: imported history has negative offsets


def entity_text(entity: tuple[Any, ...]) -> str:
    """The entity as it appears in a key, with the hash-tag braces escaped."""
    text = encode_key(entity).decode("utf-8")
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def state_key(view: ViewPlan, entity: tuple[Any, ...]) -> str:
    """Redis key of one entity's state in one view."""
    return f"{PREFIX}:{view.fingerprint}:{{{entity_text(entity)}}}"


def keyspace_pattern(fingerprint: str) -> str:
    """SCAN pattern matching every key of one view fingerprint."""
    return f"{PREFIX}:{fingerprint}:*"


@dataclass(slots=True)
class PartitionState:
    """What one source partition has contributed to an entity: tiles, fence, last write."""

    tiles: EntityTiles = field(default_factory=EntityTiles)
    fence: int = NO_FENCE
    updated_ms: int = 0
    # when the oldest tile becomes stale: a write at or after it evicts (0: not known yet)
    evict_at_ms: int = 0


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def parse_state(
    view: ViewPlan, fields: Mapping[Any, bytes], partition: int | None = None
) -> dict[int, PartitionState]:
    """Partition states from a hash (only ``partition``'s when given).

    Raises CodecError when a tile field holds bytes of an unknown codec version.
    """
    members = view.layout.hop_aggregators  # hop -> its group's aggregators; -1: lifetime
    states: dict[int, PartitionState] = {}
    for raw_name, value in fields.items():
        parsed = field_name(raw_name)
        if parsed is None:
            continue
        kind, p, hop, k = parsed
        if partition is not None and p != partition:
            continue
        state = states.get(p)
        if state is None:
            state = states[p] = PartitionState()
        if kind == "t":
            aggs = members.get(hop) if hop > 0 else None
            if aggs is None:  # pragma: no cover - the fingerprint pins the layout
                continue
            state.tiles.by_hop.setdefault(hop, {})[k] = decode_states(aggs, value)
        elif kind == "l":
            state.tiles.lifetime = decode_states(members[-1], value)
        elif kind == "f":
            state.fence = int(value)
        elif kind == "u":
            state.updated_ms = int(value)
    return states


_FIELD_NAMES: dict[Any, tuple[str, int, int, int] | None] = {}


def field_name(name: bytes | str) -> tuple[str, int, int, int] | None:
    """``(kind, partition, hop, k)`` of a state field name (hop and k 0 but for tiles);
    None for a name without a partition. Memoized: names repeat across entities."""
    try:
        return _FIELD_NAMES[name]
    except KeyError:
        pass
    kind, _, rest = _text(name).partition(":")
    p_text, _, tail = rest.partition(":")
    parsed: tuple[str, int, int, int] | None = None
    if p_text.isdigit():
        if kind == "t":
            hop_text, _, k_text = tail.partition(":")
            try:
                parsed = (kind, int(p_text), int(hop_text), int(k_text))
            except ValueError:  # not a tile field of this layout
                parsed = None
        elif not tail:
            parsed = (kind, int(p_text), 0, 0)
    if len(_FIELD_NAMES) >= 1 << 17:
        _FIELD_NAMES.clear()
    _FIELD_NAMES[name] = parsed
    return parsed


def merged(view: ViewPlan, states: Iterable[PartitionState]) -> EntityTiles:
    """One entity's tiles merged over every partition that contributed."""
    out = EntityTiles()
    for state in states:
        merge_into(view.layout, out, state.tiles)
    return out


def tile_field(partition: int, hop_ms: int, k: int) -> str:
    return f"t:{partition}:{hop_ms}:{k}"


def encode_fields(
    view: ViewPlan,
    partition: int,
    state: PartitionState,
    touched: Iterable[tuple[int, int]],
    lifetime_touched: bool,
) -> dict[str, bytes]:
    """Fields to HSET for the tiles a batch touched, with the fence and write time."""
    members = view.layout.hop_aggregators
    by_hop = state.tiles.by_hop
    out: dict[str, bytes] = {}
    for hop, k in touched:
        tile = by_hop.get(hop, {}).get(k)
        if tile is None:
            continue  # evicted in the same batch
        out[f"t:{partition}:{hop}:{k}"] = encode_states(members[hop], tile)
    if lifetime_touched and state.tiles.lifetime is not None:
        out[f"l:{partition}"] = encode_states(members[-1], state.tiles.lifetime)
    out[f"f:{partition}"] = str(state.fence).encode()
    out[f"u:{partition}"] = str(state.updated_ms).encode()
    return out


def expire_at_ms(layout: TileLayout, tiles: EntityTiles) -> int | None:
    """When no window can use any of these tiles any more (None: lifetime state never expires)."""
    if layout.lifetime:
        return None
    horizon = 0
    for group in layout.groups:
        per_hop = tiles.by_hop.get(group.hop_ms)
        if per_hop:
            horizon = max(horizon, (max(per_hop) + 1) * group.hop_ms + group.longest_window_ms)
    return horizon or None


def entity_write(
    view: ViewPlan,
    entity: tuple[Any, ...],
    partition: int,
    state: PartitionState,
    touched: Collection[tuple[int, int]],
    lifetime_touched: bool,
    journal: list[list[int]],
    now_ms: int,
    expect_fence: int | None = None,
) -> StateWrite:
    """The hash update for one entity's partition state: evicts tiles stale at ``now_ms``,
    encodes the touched tiles, fence, write time and journal, and the key's expiry.

    With ``expect_fence`` (the partition's fence the writer read before this batch) the write
    is a compare-and-set: the store refuses it if another writer moved the fence since.

    Eviction scans the tiles only once the oldest may be stale (``state.evict_at_ms``, kept
    up to date with the tiles this write touched), so a write usually pays one comparison
    per touched tile, and no stale tile outlives the next write after it went stale."""
    layout = view.layout
    evict_at = state.evict_at_ms
    spans = layout.spans
    for hop, k in touched:  # a tile made by this batch may be older than the oldest held
        at = stale_at_ms(hop, spans[hop], k)
        if at < evict_at:
            evict_at = at
    stale: list[tuple[int, int]] = []
    if now_ms >= evict_at:
        stale = evict(layout, state.tiles, now_ms)
        evict_at = next_stale_ms(layout, state.tiles)
    state.evict_at_ms = evict_at
    fields = encode_fields(view, partition, state, touched, lifetime_touched)
    fields[f"j:{partition}"] = msgpack.packb(journal)
    return StateWrite(
        key=state_key(view, entity),
        fields=fields,
        delete=tuple(tile_field(partition, h, k) for h, k in stale),
        expire_at_ms=expire_at_ms(view.layout, state.tiles),
        expect=None
        if expect_fence is None
        else (f"f:{partition}", None if expect_fence == NO_FENCE else str(expect_fence).encode()),
    )


# -- per-view write stats ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionWriteStats:
    """What the last write of one source partition into a view recorded."""

    newest_event_ms: int  # event time of the newest event that write applied
    written_ms: int  # processed_at of that write


def stats_key(fingerprint: str) -> str:
    """Redis key of a view's write stats (never matched by ``keyspace_pattern``)."""
    return f"{PREFIX}:stats:{fingerprint}"


def stats_write(view: ViewPlan, newest_event_ms: Mapping[int, int], written_ms: int) -> StateWrite:
    """The stats update of one batch: per source partition it applied events of, the newest
    event time and the write time. One ``HSET`` riding in the batch's write pipeline."""
    fields: dict[str, bytes] = {}
    for partition, event_ms in newest_event_ms.items():
        fields[f"e:{partition}"] = str(event_ms).encode()
        fields[f"w:{partition}"] = str(written_ms).encode()
    return StateWrite(key=stats_key(view.fingerprint), fields=fields)


def parse_stats(fields: Mapping[Any, bytes]) -> dict[int, PartitionWriteStats]:
    """Partition → stats from a view's stats hash (partitions missing a field are skipped)."""
    raw: dict[int, dict[str, int]] = {}
    for name, value in fields.items():
        kind, _, p_text = _text(name).partition(":")
        if kind in ("e", "w") and p_text.isdigit():
            raw.setdefault(int(p_text), {})[kind] = int(value)
    return {
        p: PartitionWriteStats(newest_event_ms=got["e"], written_ms=got["w"])
        for p, got in sorted(raw.items())
        if "e" in got and "w" in got
    }
