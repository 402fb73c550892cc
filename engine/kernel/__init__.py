"""The kernel's Python face: the function catalogue and tile-window arithmetic.

The kernel itself — every aggregation as a mergeable monoid, exact sums, HyperLogLog, tiles,
the tile codec, window evaluation — is native (``native/core``, imported as
``engine._native``); the stream worker, the backfill and the online reader all call it, so
the value a model trains on and the value it is served come from one implementation.
"""

from engine.kernel.functions import FUNCTIONS, ColumnKind, FunctionSpec
from engine.kernel.tiles import HopGroup, TileLayout, window_end, window_tiles

__all__ = [
    "FUNCTIONS",
    "ColumnKind",
    "FunctionSpec",
    "HopGroup",
    "TileLayout",
    "window_end",
    "window_tiles",
]
