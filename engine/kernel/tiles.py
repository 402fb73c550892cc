"""Tile-window arithmetic in Python: how a view's aggregations map onto hop groups, and which
tiles a window as of ``t`` merges (DESIGN §3).

Tile ``k`` of hop ``H`` holds events with ``k*H <= event_time < (k+1)*H``; the window
``W`` as of ``t`` merges tiles ``ceil(t/H) - W/H .. ceil(t/H) - 1``. Folding and merging
happen in the native core (``native/core/src/tiles.rs``); Python needs the layout's shape
for key expiry, read caching and reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class HopGroup:
    """The aggregations sharing one hop: one tile holds one state per member."""

    hop_ms: int
    members: tuple[int, ...]
    longest_window_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TileLayout:
    """How a view's aggregations map onto tiles; built once per view by the compiler."""

    windows_ms: tuple[int | None, ...]
    hops_ms: tuple[int | None, ...]
    groups: tuple[HopGroup, ...] = field(init=False)
    lifetime: tuple[int, ...] = field(init=False)
    # where aggregation i lives: (group index or -1 for lifetime, position in that group)
    slots: tuple[tuple[int, int], ...] = field(init=False)
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
        spans = {g.hop_ms: g.longest_window_ms // g.hop_ms for g in groups}
        object.__setattr__(self, "spans", spans)


def window_end(hop_ms: int, t_ms: int) -> int:
    """``ceil(t / H)``: windows of hop ``H`` as of ``t`` end before this tile (DESIGN §3)."""
    return -(-t_ms // hop_ms)


def window_tiles(hop_ms: int, window_ms: int, t_ms: int) -> tuple[int, int]:
    """``(start, end)``: a window ``W`` of hop ``H`` as of ``t`` merges tiles ``start <= k < end``.

    ``end = ceil(t / H)`` and ``start = end - W / H`` (DESIGN §3).
    """
    end = window_end(hop_ms, t_ms)
    return end - window_ms // hop_ms, end


def stale_at_ms(hop_ms: int, span: int, k: int) -> int:
    """The first time at which tile ``k`` of a hop group whose longest window spans ``span``
    tiles is stale: ``k < ceil(t / hop) - span`` first holds at ``(k + span) * hop + 1``."""
    return (k + span) * hop_ms + 1
