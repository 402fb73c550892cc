"""Tile arithmetic: which tiles a window as of t covers, at and around boundaries."""

from __future__ import annotations

from tests.reference.functions import make_aggregator
from tests.reference.tiles import (
    NEVER_MS,
    EntityTiles,
    TileLayout,
    evict,
    fold,
    next_stale_ms,
    stale_at_ms,
    value_as_of,
)

H = 60_000  # 1m hop
W = 10 * H  # 10m window


def layout() -> TileLayout:
    return TileLayout(
        aggregators=(make_aggregator("count", "int"), make_aggregator("sum", "int")),
        windows_ms=(W, None),
        hops_ms=(H, None),
    )


def test_window_covers_tiles_start_to_ceil_minus_one() -> None:
    lay, tiles = layout(), EntityTiles()
    for i, et in enumerate([0, H - 1, H, 5 * H, 10 * H - 1, 10 * H, 10 * H + 1]):
        fold(lay, tiles, (1, 1), et, (et, 0, i))
    # t on a boundary: tiles [0, 10) -> every event with et < 10H
    assert value_as_of(lay, tiles, 10 * H) == [5, 7]
    # just after the boundary: ceil(t/H) = 11, tiles [1, 11): tile 0 drops, tile 10 enters
    assert value_as_of(lay, tiles, 10 * H + 1)[0] == 5
    # the span never exceeds W: at 11H tile 0 is out, tiles 1..10 are in
    assert value_as_of(lay, tiles, 11 * H)[0] == 5
    # empty before anything
    assert value_as_of(lay, None, 0) == [0, 0]


def test_evict_keeps_what_a_later_window_needs() -> None:
    lay, tiles = layout(), EntityTiles()
    for k in range(30):
        fold(lay, tiles, (1, 1), k * H, (k * H, 0, k))
    before = value_as_of(lay, tiles, 30 * H)
    evict(lay, tiles, 30 * H)
    assert len(tiles.by_hop[H]) == 10
    assert value_as_of(lay, tiles, 30 * H) == before


def test_a_sparse_group_loses_its_stale_tiles_too() -> None:
    """Fewer tiles than the window spans does not mean none is stale."""
    lay, tiles = layout(), EntityTiles()
    for k in (0, 3, 25):
        fold(lay, tiles, (1, 1), k * H, (k * H, 0, k))
    assert sorted(evict(lay, tiles, 30 * H)) == [(H, 0), (H, 3)]
    assert list(tiles.by_hop[H]) == [25]


def test_next_stale_ms_is_the_first_moment_a_tile_is_stale() -> None:
    lay, tiles = layout(), EntityTiles()
    assert next_stale_ms(lay, tiles) == NEVER_MS
    for k in (7, 4, 9):
        fold(lay, tiles, (1, 1), k * H, (k * H, 0, k))
    at = next_stale_ms(lay, tiles)
    assert at == stale_at_ms(H, W // H, 4)
    assert evict(lay, tiles, at - 1) == []  # tile 4 still in the window at at - 1
    assert evict(lay, tiles, at) == [(H, 4)]
