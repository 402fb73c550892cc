"""Tile arithmetic: fold an event into its tiles, merge the tiles of a window as of time t.

Tile ``k`` of hop ``H`` holds events with ``k*H <= event_time < (k+1)*H``. The value of a
window ``W`` as of ``t`` merges tiles ``ceil(t/H) - W/H .. ceil(t/H) - 1`` (DESIGN §3);
lifetime aggregations keep one accumulator. Which events have been folded (event time or
processing time before ``t``) is the caller's business: the stream worker folds what it
has processed, the backfill folds in the order of its mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.reference.functions import Aggregator, Order


@dataclass(frozen=True, slots=True, kw_only=True)
class HopGroup:
    """The aggregations sharing one hop: one tile holds one state per member."""

    hop_ms: int
    members: tuple[int, ...]
    longest_window_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TileLayout:
    """How a view's aggregations map onto tiles; built once per view by the compiler."""

    aggregators: tuple[Aggregator, ...]
    windows_ms: tuple[int | None, ...]
    hops_ms: tuple[int | None, ...]
    groups: tuple[HopGroup, ...] = field(init=False)
    lifetime: tuple[int, ...] = field(init=False)
    # where aggregation i lives: (group index or -1 for lifetime, position in that group)
    slots: tuple[tuple[int, int], ...] = field(init=False)
    # per group (lifetime last, as group -1): (group, hop, ((position, input, add, counts_nulls), ...))
    folds: tuple[tuple[int, int, tuple[tuple[int, int, Any, bool], ...]], ...] = field(init=False)
    inits: dict[int, tuple[Any, ...]] = field(init=False)  # group (-1: lifetime) -> init functions
    hop_aggregators: dict[int, tuple[Aggregator, ...]] = field(init=False)  # hop (-1: lifetime)
    spans: dict[int, int] = field(init=False)  # hop -> tiles its longest window spans

    def __post_init__(self) -> None:
        by_hop: dict[int, list[int]] = {}
        lifetime: list[int] = []
        for i, (window, hop) in enumerate(zip(self.windows_ms, self.hops_ms, strict=True)):
            if window is None:
                lifetime.append(i)
            else:
                assert hop is not None and window % hop == 0
                by_hop.setdefault(hop, []).append(i)
        groups = tuple(
            HopGroup(
                hop_ms=hop,
                members=tuple(members),
                longest_window_ms=max(self.windows_ms[i] or 0 for i in members),
            )
            for hop, members in sorted(by_hop.items())
        )
        slots: dict[int, tuple[int, int]] = {}
        for g, group in enumerate(groups):
            for j, i in enumerate(group.members):
                slots[i] = (g, j)
        for j, i in enumerate(lifetime):
            slots[i] = (-1, j)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "lifetime", tuple(lifetime))
        object.__setattr__(self, "slots", tuple(slots[i] for i in range(len(self.windows_ms))))
        aggs = self.aggregators
        folds = [
            (g, group.hop_ms,
             tuple((j, i, aggs[i].add, aggs[i].counts_nulls) for j, i in enumerate(group.members)))
            for g, group in enumerate(groups)
        ]  # fmt: skip
        if lifetime:
            folds.append(
                (
                    -1,
                    0,
                    tuple(
                        (j, i, aggs[i].add, aggs[i].counts_nulls) for j, i in enumerate(lifetime)
                    ),
                )
            )
        object.__setattr__(self, "folds", tuple(folds))
        inits = {g: tuple(aggs[i].init for i in group.members) for g, group in enumerate(groups)}
        inits[-1] = tuple(aggs[i].init for i in lifetime)
        object.__setattr__(self, "inits", inits)
        by_hop_aggs = {g.hop_ms: tuple(aggs[i] for i in g.members) for g in groups}
        by_hop_aggs[-1] = tuple(aggs[i] for i in lifetime)
        object.__setattr__(self, "hop_aggregators", by_hop_aggs)
        spans = {g.hop_ms: g.longest_window_ms // g.hop_ms for g in groups}
        object.__setattr__(self, "spans", spans)

    def new_tile(self, group: int) -> list[Any]:
        return [init() for init in self.inits[group]]


class EntityTiles:
    """The live tiles of one (view, entity): ``by_hop[hop_ms][k]`` and the lifetime tile."""

    __slots__ = ("by_hop", "lifetime")

    def __init__(self) -> None:
        self.by_hop: dict[int, dict[int, list[Any]]] = {}
        self.lifetime: list[Any] | None = None

    def __len__(self) -> int:
        return sum(len(d) for d in self.by_hop.values()) + (self.lifetime is not None)


def fold(
    layout: TileLayout,
    tiles: EntityTiles,
    values: Sequence[Any],
    event_time_ms: int,
    order: Order,
) -> None:
    """Fold one admitted event (``values[i]`` is aggregation i's input) into its tiles."""
    by_hop = tiles.by_hop
    for g, hop, members in layout.folds:
        if g < 0:
            tile = tiles.lifetime
            if tile is None:
                tile = tiles.lifetime = layout.new_tile(-1)
        else:
            k = event_time_ms // hop
            per_hop = by_hop.get(hop)
            if per_hop is None:
                per_hop = by_hop[hop] = {}
            tile = per_hop.get(k)
            if tile is None:
                tile = per_hop[k] = layout.new_tile(g)
        for j, i, add, counts_nulls in members:
            value = values[i]
            if value is not None or counts_nulls:
                tile[j] = add(tile[j], value, order)


def window_end(hop_ms: int, t_ms: int) -> int:
    """``ceil(t / H)``: windows of hop ``H`` as of ``t`` end before this tile (DESIGN §3)."""
    return -(-t_ms // hop_ms)


def window_tiles(hop_ms: int, window_ms: int, t_ms: int) -> tuple[int, int]:
    """``(start, end)``: a window ``W`` of hop ``H`` as of ``t`` merges tiles ``start <= k < end``.

    ``end = ceil(t / H)`` and ``start = end - W / H`` (DESIGN §3). The one definition of a
    window's tiles: ``window_states`` and the online reader's hash evaluation both use it.
    """
    end = window_end(hop_ms, t_ms)
    return end - window_ms // hop_ms, end


def window_states(
    layout: TileLayout,
    tiles: EntityTiles | None,
    t_ms: int,
    indices: Sequence[int] | None = None,
) -> list[Any]:
    """Merged (not finalized) state of each aggregation's window as of ``t_ms``.

    The returned states are fresh objects: merging them further never touches ``tiles``.
    """
    aggs = layout.aggregators
    wanted = range(len(aggs)) if indices is None else indices
    out: list[Any] = []
    for i in wanted:
        agg = aggs[i]
        acc = agg.init()
        if tiles is not None:
            g, j = layout.slots[i]
            if g < 0:
                if tiles.lifetime is not None:
                    acc = agg.merge(acc, tiles.lifetime[j])
            else:
                hop = layout.groups[g].hop_ms
                per_hop = tiles.by_hop.get(hop)
                if per_hop:
                    window = layout.windows_ms[i]
                    assert window is not None
                    start, end = window_tiles(hop, window, t_ms)
                    if len(per_hop) <= end - start:
                        for k, tile in per_hop.items():
                            if start <= k < end:
                                acc = agg.merge(acc, tile[j])
                    else:
                        for k in range(start, end):
                            found = per_hop.get(k)
                            if found is not None:
                                acc = agg.merge(acc, found[j])
        out.append(acc)
    return out


def value_as_of(
    layout: TileLayout,
    tiles: EntityTiles | None,
    t_ms: int,
    indices: Sequence[int] | None = None,
) -> list[Any]:
    """Feature values as of ``t_ms`` (empty-window defaults when ``tiles`` is None)."""
    wanted = range(len(layout.aggregators)) if indices is None else indices
    states = window_states(layout, tiles, t_ms, wanted)
    return [layout.aggregators[i].finalize(s) for i, s in zip(wanted, states, strict=True)]


def stale_tiles(
    layout: TileLayout, tiles: EntityTiles, t_ms: int, slack: int = 0
) -> list[tuple[int, int]]:
    """(hop, k) of tiles no window can use at any time >= ``t_ms``.

    A hop group holding at most its window span plus ``slack`` tiles is scanned only when
    its oldest tile is stale (one ``min`` over the keys), so calling this often is cheap.
    """
    stale: list[tuple[int, int]] = []
    for group in layout.groups:
        per_hop = tiles.by_hop.get(group.hop_ms)
        if not per_hop:
            continue
        span = group.longest_window_ms // group.hop_ms
        oldest = window_end(group.hop_ms, t_ms) - span
        if len(per_hop) <= span + slack and min(per_hop) >= oldest:
            continue
        stale.extend((group.hop_ms, k) for k in per_hop if k < oldest)
    return stale


def stale_at_ms(hop_ms: int, span: int, k: int) -> int:
    """The first time at which tile ``k`` of a hop group whose longest window spans ``span``
    tiles is stale: ``k < ceil(t / hop) - span`` first holds at ``(k + span) * hop + 1``."""
    return (k + span) * hop_ms + 1


def next_stale_ms(layout: TileLayout, tiles: EntityTiles) -> int:
    """When the first of these tiles becomes stale (``NEVER_MS`` when none can)."""
    earliest = NEVER_MS
    for group in layout.groups:
        per_hop = tiles.by_hop.get(group.hop_ms)
        if per_hop:
            at = stale_at_ms(group.hop_ms, group.longest_window_ms // group.hop_ms, min(per_hop))
            earliest = min(earliest, at)
    return earliest


NEVER_MS = 1 << 62  # a time no tile reaches


def evict(
    layout: TileLayout, tiles: EntityTiles, t_ms: int, slack: int = 0
) -> list[tuple[int, int]]:
    """Drop the ``stale_tiles`` and return them."""
    stale = stale_tiles(layout, tiles, t_ms, slack)
    for hop, k in stale:
        del tiles.by_hop[hop][k]
    return stale


def merge_into(layout: TileLayout, dst: EntityTiles, src: EntityTiles) -> None:
    """Merge ``src`` into ``dst`` tile by tile (partials of one entity from several partitions).

    ``src`` is never mutated, and after the call ``dst`` shares no state object with it.
    """
    for g, group in enumerate(layout.groups):
        theirs = src.by_hop.get(group.hop_ms)
        if not theirs:
            continue
        ours = dst.by_hop.setdefault(group.hop_ms, {})
        for k, tile in theirs.items():
            held = ours.get(k)
            if held is None:
                held = ours[k] = layout.new_tile(g)
            for j, i in enumerate(group.members):
                held[j] = layout.aggregators[i].merge(held[j], tile[j])
    if src.lifetime is not None:
        if dst.lifetime is None:
            dst.lifetime = layout.new_tile(-1)
        for j, i in enumerate(layout.lifetime):
            dst.lifetime[j] = layout.aggregators[i].merge(dst.lifetime[j], src.lifetime[j])
