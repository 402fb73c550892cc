"""The aggregation kernel: mergeable accumulators and tile/window arithmetic, pure standard library.

Every path that computes a feature value — stream worker, backfill runner, online reader —
goes through this package, so the value a model trains on and the value it is served come
from one implementation.
"""

from engine.kernel.functions import FUNCTIONS, Aggregator, ColumnKind, Order, make_aggregator
from engine.kernel.tiles import EntityTiles, HopGroup, TileLayout

__all__ = [
    "FUNCTIONS",
    "Aggregator",
    "ColumnKind",
    "EntityTiles",
    "HopGroup",
    "Order",
    "TileLayout",
    "make_aggregator",
]
