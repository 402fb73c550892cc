"""One entity's feature values as of t straight from its stored hash, evaluated by the native core.

The online reader's hot path. ``WindowAt.evaluate`` hands an entity's hash to the core
(``engine._native.online_values``, ``native/core/src/online.rs``), which decodes only the
tiles a requested window as of ``t`` covers (``start <= k < ceil(t / hop)``, DESIGN §3) and
the lifetime accumulators when a lifetime aggregation is requested, merges partitions tile
by tile (merge is associative and commutative bit for bit) and finalizes. Fences, journals
and tiles no requested window covers are never decoded, so never rejected. The newest write
time (``u:<p>`` fields) is the freshness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine import _native
from engine.errors import CodecError
from engine.kernel.tiles import window_end, window_tiles
from engine.online import field_name, functions_of
from engine.plan import ViewPlan

__all__ = ["WindowAt", "WindowReader"]


class WindowReader:
    """Reads aggregations ``indices`` of ``view`` from raw hashes; ``at(t)`` fixes the time.

    Example:
        >>> reader = WindowReader(view, (0, 3))  # doctest: +SKIP
        >>> values, updated_ms = reader.at(now_ms).evaluate(fields)  # doctest: +SKIP
    """

    __slots__ = ("_functions", "_hops", "_last", "indices", "view")

    def __init__(self, view: ViewPlan, indices: tuple[int, ...]) -> None:
        self.view = view
        self.indices = list(indices)
        self._functions = functions_of(view)
        self._hops = tuple(group.hop_ms for group in view.layout.groups)
        self._last: tuple[tuple[int, ...], WindowAt] | None = None

    def at(self, t_ms: int) -> WindowAt:
        """The evaluation as of ``t_ms`` (reused while no window boundary moved)."""
        marks = tuple(window_end(hop, t_ms) for hop in self._hops)
        last = self._last
        if last is not None and last[0] == marks and last[1].t_ms == t_ms:
            return last[1]
        at = WindowAt(self, t_ms)
        self._last = (marks, at)
        return at


class WindowAt:
    """``WindowReader`` as of one time."""

    __slots__ = ("_reader", "t_ms")

    def __init__(self, reader: WindowReader, t_ms: int) -> None:
        self._reader = reader
        self.t_ms = t_ms

    def uses(self, name: bytes | str) -> bool:
        """Whether ``evaluate`` decodes the field ``name``: a tile some requested window as of
        ``t`` covers, or the lifetime accumulators when a lifetime feature is requested."""
        parsed = field_name(name)
        if parsed is None:
            return False
        kind, _, hop, k = parsed
        view = self._reader.view
        for i in self._reader.indices:
            window, tile_hop = view.layout.windows_ms[i], view.layout.hops_ms[i]
            if kind == "l" and window is None:
                return True
            if kind == "t" and window is not None and tile_hop == hop:
                start, end = window_tiles(hop, window, self.t_ms)
                if start <= k < end:
                    return True
        return False

    def evaluate(self, fields: Mapping[Any, bytes]) -> tuple[list[Any], int | None]:
        """The requested values (in request order) and the newest write time (None: none).

        Raises CodecError when a tile a requested window uses holds corrupt bytes.
        """
        return self.evaluate_many([fields])[0]

    def evaluate_many(
        self, hashes: Sequence[Mapping[Any, bytes]]
    ) -> list[tuple[list[Any], int | None]]:
        """``evaluate`` for many entities in one native call."""
        reader = self._reader
        try:
            got = _native.online_values(
                reader._functions,
                [h if type(h) is dict else dict(h) for h in hashes],
                self.t_ms,
                reader.indices,
            )
        except CodecError as exc:
            raise CodecError(f"view {reader.view.name!r}: {exc}") from exc
        return [(list(values), updated) for values, updated in got]
