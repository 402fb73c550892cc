"""The worker's hash update (``engine.online.entity_write``): stale tiles leave the hash at the
first write after they went stale — also in sparse hashes holding fewer tiles than a window
spans, and when a late event made a tile older than every tile held."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.kernel.tiles import fold
from engine.online import PartitionState, entity_write, tile_field
from engine.plan import ViewPlan
from engine.store import FeatureStore

MINUTE = 60_000
BODY = """
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="10m", hop="1m"),
    Aggregation("amount", "count", window="1h", hop="10m"),
])
"""


def _view(make_repo: Callable[..., Path]) -> ViewPlan:
    return FeatureStore.from_repo(make_repo(BODY)).plan.views["spend"]


def _apply(view: ViewPlan, state: PartitionState, et: int, offset: int) -> set[tuple[int, int]]:
    fold(view.layout, state.tiles, (1.0, 1.0), et, (et, 0, offset))
    state.fence = offset
    return {(g.hop_ms, et // g.hop_ms) for g in view.layout.groups}


def _write(view: ViewPlan, state: PartitionState, touched: set[tuple[int, int]], now: int):  # type: ignore[no-untyped-def]
    return entity_write(view, ("c1",), 0, state, touched, False, [[state.fence, now]], now)


def test_stale_tiles_of_a_sparse_hash_are_deleted_at_the_next_write(
    make_repo: Callable[..., Path],
) -> None:
    view = _view(make_repo)
    state = PartitionState()
    t0 = 1_000 * MINUTE
    touched = _apply(view, state, t0, 1)
    assert _write(view, state, touched, t0).delete == ()
    # 30 minutes on, the 1-minute tile of t0 is stale (10m window), the 10-minute one is not
    now = t0 + 30 * MINUTE
    touched = _apply(view, state, now, 2)
    write = _write(view, state, touched, now)
    assert write.delete == (tile_field(0, MINUTE, t0 // MINUTE),)
    assert t0 // MINUTE not in state.tiles.by_hop[MINUTE]
    # an hour on, the 10-minute tile goes too
    now = t0 + 75 * MINUTE
    write = _write(view, state, _apply(view, state, now, 3), now)
    assert tile_field(0, 10 * MINUTE, t0 // (10 * MINUTE)) in write.delete


def test_a_write_before_anything_is_stale_scans_nothing(make_repo: Callable[..., Path]) -> None:
    view = _view(make_repo)
    state = PartitionState()
    t0 = 1_000 * MINUTE
    _write(view, state, _apply(view, state, t0, 1), t0)
    first = state.evict_at_ms
    assert first == (t0 // MINUTE + 10) * MINUTE + 1  # the 1-minute tile of t0 goes stale then
    touched = _apply(view, state, t0 + 5 * MINUTE, 2)
    assert _write(view, state, touched, t0 + 5 * MINUTE).delete == ()
    assert state.evict_at_ms == first


def test_a_late_tile_older_than_every_tile_held_moves_the_eviction_earlier(
    make_repo: Callable[..., Path],
) -> None:
    view = _view(make_repo)
    state = PartitionState()
    t0 = 1_000 * MINUTE
    _write(view, state, _apply(view, state, t0, 1), t0)
    late = t0 - 8 * MINUTE  # still inside the 10m window at t0
    _write(view, state, _apply(view, state, late, 2), t0)
    assert state.evict_at_ms == (late // MINUTE + 10) * MINUTE + 1
    now = state.evict_at_ms
    write = _write(view, state, _apply(view, state, now, 3), now)
    assert tile_field(0, MINUTE, late // MINUTE) in write.delete
