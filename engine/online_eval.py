"""One entity's feature values as of t straight from its stored hash, decoding only what t needs.

The online reader's hot path. For each field of an entity's hash (layout in
``engine.online``) the field name alone says whether a requested window as of ``t`` can use
it: a tile ``t:<p>:<hop>:<k>`` is kept only when ``start <= k < end`` for some requested
window of that hop (``kernel.tiles.window_tiles``, the bounds ``window_states`` uses), the
lifetime field ``l:<p>`` only when a lifetime aggregation is requested, ``u:<p>`` gives the
freshness, and everything else (fences, journals, tiles no requested window covers) is
skipped before any decoding. What a name means is parsed once per view (names repeat
across entities) and memoized. The kept tiles' bytes are decoded to plain forms
(``codec.decode_plain``) and each requested aggregation merges the plain states of its
window with ``Aggregator.merge_plain`` — by definition ``merge(state, from_plain(p))`` per
tile — then ``finalize``. Partitions are merged by the same ``merge``, in whatever order
the hash lists them: merge is associative and commutative bit for bit (kernel contract),
so the values equal ``value_as_of(layout, merged(view, parse_state(view, fields)), t)``,
which ``tests/unit/test_online_eval.py`` checks on random data. Unlike ``parse_state`` it
never decodes, so never rejects, a tile no requested window uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.codec import decode_plain
from engine.errors import CodecError
from engine.kernel.functions import Aggregator
from engine.kernel.tiles import window_end, window_tiles
from engine.online import field_name
from engine.plan import ViewPlan

__all__ = ["WindowAt", "WindowReader"]

_LIFETIME = -1  # name classes below 0; 0.. is the tile's hop group in the layout
_UPDATED = -2
_SKIP = (-3, 0)
_NAMES_MAX = 1 << 17  # memoized field names per view, then start afresh
_MEMOS: dict[str, dict[Any, tuple[int, int]]] = {}  # view fingerprint -> name memo


class WindowReader:
    """Reads aggregations ``indices`` of ``view`` from raw hashes; ``at(t)`` fixes the time.

    Example:
        >>> reader = WindowReader(view, (0, 3))  # doctest: +SKIP
        >>> values, updated_ms = reader.at(now_ms).evaluate(fields)  # doctest: +SKIP
    """

    __slots__ = (
        "_counts",
        "_hop_group",
        "_hops",
        "_last",
        "_lifetime_count",
        "_names",
        "_wanted",
        "view",
    )

    def __init__(self, view: ViewPlan, indices: tuple[int, ...]) -> None:
        layout = view.layout
        self.view = view
        # per requested aggregation: aggregator, hop group (-1: lifetime), position in that
        # group's tiles, window (0: lifetime), feature
        self._wanted = tuple(
            (layout.aggregators[i], *layout.slots[i], layout.windows_ms[i] or 0,
             view.aggregations[i].feature)
            for i in indices
        )  # fmt: skip
        self._hop_group = {group.hop_ms: g for g, group in enumerate(layout.groups)}
        self._counts = tuple(len(group.members) for group in layout.groups)
        self._hops = tuple(group.hop_ms for group in layout.groups)
        self._last: tuple[tuple[int, ...], WindowAt] | None = None
        lifetime = any(g < 0 for _, g, _, _, _ in self._wanted)
        self._lifetime_count = len(layout.lifetime) if lifetime else 0
        if len(_MEMOS) >= 256:
            _MEMOS.clear()
        self._names = _MEMOS.setdefault(view.fingerprint, {})

    def at(self, t_ms: int) -> WindowAt:
        """The evaluation as of ``t_ms``: build once per read, evaluate every entity with it.

        A ``WindowAt`` depends on ``t_ms`` only through ``ceil(t_ms / hop)`` per hop group,
        so the last one is reused while those are unchanged."""
        marks = tuple(window_end(hop, t_ms) for hop in self._hops)
        last = self._last
        if last is not None and last[0] == marks:
            return last[1]
        at = WindowAt(self, t_ms)
        self._last = (marks, at)
        return at

    def classify(self, name: bytes | str) -> tuple[int, int]:
        """``(group, k)`` of a tile field of this view's layout, ``(-1, 0)`` for a lifetime
        field, ``(-2, 0)`` for a write time, ``(-3, 0)`` for anything else."""
        parsed = field_name(name)
        if parsed is None:
            return _SKIP
        kind, _, hop, k = parsed
        if kind == "t":
            g = self._hop_group.get(hop)
            return _SKIP if g is None else (g, k)
        if kind == "u":
            return (_UPDATED, 0)
        if kind == "l":
            return (_LIFETIME, 0)
        return _SKIP


class WindowAt:
    """``WindowReader`` as of one time: which tiles each requested window merges."""

    __slots__ = ("_reader", "_wanted", "_windows", "ends", "lows")

    def __init__(self, reader: WindowReader, t_ms: int) -> None:
        self._reader = reader
        groups = reader.view.layout.groups
        # per requested aggregation, its window's tiles (lifetime: None)
        bounds = [
            None if g < 0 else window_tiles(groups[g].hop_ms, window, t_ms)
            for _, g, _, window, _ in reader._wanted
        ]
        starts = [None if b is None else b[0] for b in bounds]
        # per layout group, the tiles some requested window merges: lows[g] <= k < ends[g]
        # (an empty range for a group no requested aggregation lives in)
        lows = [0] * len(groups)
        ends = [0] * len(groups)
        for (_, g, _, _, _), b in zip(reader._wanted, bounds, strict=True):
            if b is not None:
                low, high = b
                lows[g] = min(lows[g], low) if ends[g] == high else low
                ends[g] = high
        self.lows = tuple(lows)
        self.ends = tuple(ends)
        # distinct windows as (group, start), a start at its group's low being None (no
        # per-tile test), and per requested aggregation the window it merges (-1: lifetime)
        windows: dict[tuple[int, int | None], int] = {}
        wanted: list[tuple[Aggregator, int, int, str]] = []
        for (agg, g, j, _, feature), start in zip(reader._wanted, starts, strict=True):
            w = -1
            if start is not None:
                w = windows.setdefault((g, None if start == lows[g] else start), len(windows))
            wanted.append((agg, w, j, feature))
        self._windows = tuple(windows)
        self._wanted = tuple(wanted)

    def uses(self, name: bytes | str) -> bool:
        """Whether ``evaluate`` decodes the field ``name`` (a tile or lifetime field it needs)."""
        g, k = self._reader.classify(name)
        if g >= 0:
            return self.lows[g] <= k < self.ends[g]
        return g == _LIFETIME and self._reader._lifetime_count > 0

    def evaluate(self, fields: Mapping[Any, bytes]) -> tuple[list[Any], int | None]:
        """The requested values (in request order) and the newest write time (None: none).

        Raises CodecError when a tile a requested window uses holds corrupt bytes.
        """
        reader = self._reader
        names = reader._names
        lows, ends = self.lows, self.ends
        tiles: list[list[tuple[int, bytes]]] = [[] for _ in lows]
        lifetime: list[bytes] = []
        updated = 0
        for name, value in fields.items():
            hit = names.get(name)
            if hit is None:
                if len(names) >= _NAMES_MAX:
                    names.clear()
                hit = names[name] = reader.classify(name)
            g, k = hit
            if g >= 0:
                if lows[g] <= k < ends[g]:
                    tiles[g].append((k, value))
            elif g == _UPDATED:
                written = int(value)
                if written > updated:
                    updated = written
            elif g == _LIFETIME:
                lifetime.append(value)
        counts = reader._counts
        try:
            decoded = [
                [(k, decode_plain(value, counts[g])) for k, value in held] if held else []
                for g, held in enumerate(tiles)
            ]
        except CodecError as exc:
            raise self._corrupt(fields, exc) from exc
        # per window, its tiles' plain states transposed: columns[w][j] holds member j's
        columns: list[tuple[tuple[Any, ...], ...]] = []
        for g, start in self._windows:
            rows = (
                [tile for _, tile in decoded[g]]
                if start is None
                else [tile for k, tile in decoded[g] if k >= start]
            )
            columns.append(tuple(zip(*rows, strict=True)) if rows else ())
        lifetime_columns: tuple[tuple[Any, ...], ...] = ()
        if lifetime and reader._lifetime_count:
            count = reader._lifetime_count
            try:
                lifetime_columns = tuple(
                    zip(*(decode_plain(v, count) for v in lifetime), strict=True)
                )
            except CodecError as exc:
                raise self._corrupt(fields, exc) from exc
        out: list[Any] = []
        for agg, w, j, feature in self._wanted:
            window = columns[w] if w >= 0 else lifetime_columns
            try:
                out.append(agg.finalize(agg.merge_plain(agg.init(), window[j] if window else ())))
            except (ValueError, TypeError, IndexError) as exc:
                raise CodecError(
                    f"view {reader.view.name!r}: corrupt stored state of {feature!r}: {exc}"
                ) from exc
        return out, updated or None

    def _corrupt(self, fields: Mapping[Any, bytes], exc: CodecError) -> CodecError:
        """The error naming the first field a requested window uses that does not decode."""
        reader = self._reader
        for name, value in fields.items():
            if not self.uses(name):
                continue
            g = reader.classify(name)[0]
            count = reader._counts[g] if g >= 0 else reader._lifetime_count
            try:
                decode_plain(value, count)
            except CodecError as found:
                return CodecError(f"view {reader.view.name!r}: field {_text(name)!r}: {found}")
        return exc  # pragma: no cover - the failure came from one of those fields


def _text(name: bytes | str) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else name
