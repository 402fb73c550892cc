"""One entity's feature values as of t straight from its stored hash, evaluated by the native core.

The online reader's hot path. ``WindowAt.evaluate_seen`` hands entities' hashes to the core
(``engine._native.ReadKernel``, ``native/core/src/read.rs``; ``evaluate_replies`` the hashes
still in the RESP buffer they arrived in), which decodes only the tiles a requested window
as of ``t`` covers (``start <= k < ceil(t / hop)``, DESIGN §3) and the lifetime accumulators
when a lifetime aggregation is requested, merges each straight into every requested window
holding it (merge is associative and commutative bit for bit) and finalizes. Fences,
journals and tiles no requested window covers are never decoded, so never rejected. The
newest write time (``u:<p>`` fields) is the freshness.

``WindowAt.windows_seen`` says, per entity and requested aggregation, whether any admitted
event lies in the window as of ``t`` and whether the value is null — what tells an
empty-window default from a value computed from events (the online statuses,
``engine.online_read.FeatureStatus``). It reads the values first and, only where they cannot
tell, whether the evaluation found a tile in the window (``windows_many`` settles the same
from a scan of the field names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine import _native
from engine.errors import CodecError
from engine.kernel.tiles import window_end, window_tiles
from engine.online import field_name, functions_of
from engine.plan import ViewPlan

__all__ = ["WINDOW_EMPTY", "WINDOW_NULL", "WINDOW_VALUE", "WindowAt", "WindowReader"]

WINDOW_EMPTY = 0
"""No admitted event lies in the window as of t: the value is the empty-window default."""
WINDOW_NULL = 1
"""Admitted events lie in the window and their aggregate is null."""
WINDOW_VALUE = 2
"""Admitted events lie in the window and their aggregate is a value (maybe a real 0)."""

# What a value says about its window (``WindowReader._says``): a count is exact (0 iff no
# event), a function whose empty-window default is 0 has an event when its value is not 0,
# any other when its value is not None. What values leave open is settled from field names.
_SAYS_COUNT, _SAYS_NONZERO, _SAYS_NOT_NONE = 0, 1, 2
_ZERO_DEFAULT = frozenset({"sum", "count_distinct", "approx_count_distinct"})
_LIFETIME = -1  # the "hop" of lifetime aggregations in the window tables
_PATTERNS_MAX = 4096
_CODES: dict[Any, int] = {None: 0, 0: 1}  # a value's pattern code (0.0, -0.0, False are 0)


class WindowReader:
    """Reads aggregations ``indices`` of ``view`` from raw hashes; ``at(t)`` fixes the time.

    Example:
        >>> reader = WindowReader(view, (0, 3))  # doctest: +SKIP
        >>> values, updated_ms = reader.at(now_ms).evaluate(fields)  # doctest: +SKIP
    """

    __slots__ = (
        "_all_value",
        "_functions",
        "_hops",
        "_kernel",
        "_keyed",
        "_last",
        "_narrower",
        "_patterns",
        "_says",
        "_settled",
        "_twos",
        "_wider",
        "_windows",
        "indices",
        "view",
    )

    def __init__(self, view: ViewPlan, indices: tuple[int, ...]) -> None:
        self.view = view
        self.indices = list(indices)
        self._functions = functions_of(view)
        self._kernel = _native.ReadKernel(self._functions, list(indices))
        self._hops = tuple(group.hop_ms for group in view.layout.groups)
        self._last: tuple[tuple[int, ...], WindowAt] | None = None
        # per requested position: (hop or _LIFETIME, window or None), what its value says, and
        # the positions of the same hop whose window is narrower / wider (or equal): an event
        # in a window is in every wider one of its hop, an empty window has empty narrower ones
        layout = view.layout
        windows = []
        says = []
        for i in indices:
            window, hop = layout.windows_ms[i], layout.hops_ms[i]
            windows.append((_LIFETIME, None) if window is None or hop is None else (hop, window))
            function = view.aggregations[i].function
            says.append(
                _SAYS_COUNT
                if function == "count"
                else _SAYS_NONZERO
                if function in _ZERO_DEFAULT
                else _SAYS_NOT_NONE
            )
        self._windows: tuple[tuple[int, int | None], ...] = tuple(windows)
        self._says: tuple[int, ...] = tuple(says)
        self._narrower = tuple(
            tuple(j for j, (hop_j, w_j) in enumerate(windows)
                  if j != pos and hop_j == hop and (w_j or 0) <= (w or 0))
            for pos, (hop, w) in enumerate(windows)
        )  # fmt: skip
        self._wider = tuple(
            tuple(j for j, (hop_j, w_j) in enumerate(windows)
                  if j != pos and hop_j == hop and (w_j or 0) >= (w or 0))
            for pos, (hop, w) in enumerate(windows)
        )  # fmt: skip
        self._all_value = (WINDOW_VALUE,) * len(windows)
        self._twos = (2,) * len(windows)  # the pattern code of any other value
        # value pattern (per position 0: None, 1: zero, 2: other) → the window states values
        # alone say, None where the field names must tell
        self._patterns: dict[tuple[int, ...], tuple[int | None, ...]] = {}
        # (value pattern, what the evaluation saw per window) → the window states
        self._settled: dict[tuple[tuple[int, ...], bytes], tuple[int, ...]] = {}
        # status key (``ReadKernel.evaluate_replies(..., keyed=True)``) → window states
        self._keyed: dict[bytes, tuple[int, ...]] = {}

    def _from_values(self, pattern: tuple[int, ...]) -> tuple[int | None, ...]:
        """Window states per position from a value pattern alone; None where it cannot tell."""
        said: list[bool | None] = []
        for code, says in zip(pattern, self._says, strict=True):
            if says == _SAYS_COUNT:
                said.append(code != 1)
            elif code == 0 or (code == 1 and says == _SAYS_NONZERO):
                said.append(None)
            else:
                said.append(True)
        states: list[int | None] = []
        for pos, got in enumerate(said):
            if got is None:  # an event in a narrower window of the hop is in this one too...
                if any(said[j] is True for j in self._narrower[pos]):
                    got = True
                elif any(said[j] is False for j in self._wider[pos]):  # ...and vice versa
                    got = False
            states.append(
                None
                if got is None
                else WINDOW_EMPTY
                if not got
                else WINDOW_NULL
                if pattern[pos] == 0
                else WINDOW_VALUE
            )
        return tuple(states)

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

    __slots__ = ("_bounds", "_reader", "t_ms")

    def __init__(self, reader: WindowReader, t_ms: int) -> None:
        self._reader = reader
        self.t_ms = t_ms
        self._bounds: tuple[tuple[int, ...], dict[int, int]] | None = None

    def _window_bounds(self) -> tuple[tuple[int, ...], dict[int, int]]:
        """Per requested position the first tile of its window (lifetime: 0), and per hop the
        tile its windows end before; computed when a field scan first needs them."""
        if self._bounds is None:
            ends: dict[int, int] = {}
            starts: list[int] = []
            for hop, window in self._reader._windows:
                if window is None:
                    starts.append(0)
                else:
                    start, ends[hop] = window_tiles(hop, window, self.t_ms)
                    starts.append(start)
            self._bounds = (tuple(starts), ends)
        return self._bounds

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
        return [(values, updated) for values, updated, _ in self.evaluate_seen(hashes)]

    def evaluate_seen(
        self, hashes: Sequence[Mapping[Any, bytes]]
    ) -> list[tuple[list[Any], int | None, bytes]]:
        """``evaluate`` for many entities in one native call, with per entity and requested
        aggregation whether a tile of its window (a lifetime accumulator) exists:
        ``seen[i]`` is 1 then, else 0 (``windows_seen`` turns it into window states)."""
        reader = self._reader
        try:
            got: list[tuple[list[Any], int | None, bytes]] = reader._kernel.evaluate(
                [h if type(h) is dict else dict(h) for h in hashes], self.t_ms
            )
        except CodecError as exc:
            raise CodecError(f"view {reader.view.name!r}: {exc}") from exc
        return got

    def evaluate_replies(
        self, replies: Any, slots: Sequence[int], *, keyed: bool = False
    ) -> list[tuple[list[Any], int | None, bytes]]:
        """``evaluate_seen`` of hash replies ``slots`` of a ``_native.RespReplies`` (the
        fields stay in the socket's buffer). ``keyed``: each row's third element is its
        status key instead of ``seen`` (``windows_keyed``)."""
        reader = self._reader
        try:
            got: list[tuple[list[Any], int | None, bytes]] = reader._kernel.evaluate_replies(
                replies, list(slots), self.t_ms, keyed
            )
        except CodecError as exc:
            raise CodecError(f"view {reader.view.name!r}: {exc}") from exc
        return got

    def windows_seen(
        self, got: Sequence[tuple[Sequence[Any], int | None, bytes]]
    ) -> list[tuple[int, ...]]:
        """``windows_many`` from what ``evaluate_seen`` gave: values decide first, exactly
        as there; what they leave open is settled by ``seen`` (the tiles the evaluation
        found in each window) instead of a scan of the field names."""
        reader = self._reader
        all_value = reader._all_value
        out: list[tuple[int, ...]] = []
        for row, _, seen in got:
            if None not in row and 0 not in row:  # every value needs an event (C-speed test)
                out.append(all_value)
                continue
            pattern, states = self._said(row)
            if None in states:
                settled = reader._settled.get((pattern, seen))
                if settled is None:
                    if len(reader._settled) >= _PATTERNS_MAX:
                        reader._settled.clear()
                    settled = reader._settled[(pattern, seen)] = tuple(
                        state
                        if state is not None
                        else WINDOW_EMPTY
                        if not seen[pos]
                        else WINDOW_NULL
                        if pattern[pos] == 0
                        else WINDOW_VALUE
                        for pos, state in enumerate(states)
                    )
                states = settled
            out.append(states)  # type: ignore[arg-type]  # no None left
        return out

    def windows_keyed(
        self, got: Sequence[tuple[Sequence[Any], int | None, bytes]]
    ) -> list[tuple[int, ...]]:
        """``windows_seen`` from what ``evaluate_replies(..., keyed=True)`` gave. A row's key
        (per requested aggregation ``2 * code + seen``, the code of its value as ``_said``
        makes it: 0 None, 1 equal to 0, 2 other) holds all that ``windows_seen`` decides
        from, so each distinct key is settled once by ``windows_seen`` and then looked up."""
        keyed = self._reader._keyed
        out: list[tuple[int, ...] | None] = [keyed.get(key) for _, _, key in got]
        if None in out:
            for i, (row, updated, key) in enumerate(got):
                if out[i] is None:
                    seen = bytes(k & 1 for k in key)
                    (states,) = self.windows_seen([(row, updated, seen)])
                    if len(keyed) >= _PATTERNS_MAX:
                        keyed.clear()
                    out[i] = keyed[key] = states
        return out  # type: ignore[return-value]  # no None left

    def _said(self, row: Sequence[Any]) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
        """A row's value pattern (per value 0: None, 1: zero, 2: other) and the window
        states the values alone say (None where they cannot tell)."""
        reader = self._reader
        try:  # in C
            pattern = tuple(map(_CODES.get, row, reader._twos))
        except TypeError:  # a list (first_n/last_n) is not hashable
            pattern = tuple(0 if v is None else 1 if v == 0 else 2 for v in row)
        patterns = reader._patterns
        states = patterns.get(pattern)
        if states is None:
            if len(patterns) >= _PATTERNS_MAX:
                patterns.clear()
            states = patterns[pattern] = reader._from_values(pattern)
        return pattern, states

    def windows_many(
        self, hashes: Sequence[Mapping[Any, bytes]], values: Sequence[Sequence[Any]]
    ) -> list[tuple[int, ...]]:
        """Per entity (its hash and the values ``evaluate_many`` gave for it), per requested
        aggregation: ``WINDOW_EMPTY`` when no admitted event lies in its window as of ``t``,
        else ``WINDOW_NULL`` or ``WINDOW_VALUE`` as the value is null or not.

        A windowed aggregation's window holds an event when a tile ``start <= k < end`` of
        its hop exists in some partition, a lifetime one's when a lifetime accumulator
        (``l:<p>``) exists — exactly what ``evaluate`` merges. Values decide first, without a
        look at the fields: a count is 0 iff its window is empty; a value other than the
        function's empty-window default (0 for sums and distinct counts, None otherwise)
        needs an event; within a hop group an event in a window is in every wider one, an
        empty window has empty narrower ones. The field names are scanned only for what is
        still open.

        Example:
            >>> at = WindowReader(view, (0, 1)).at(now_ms)  # doctest: +SKIP
            >>> [(values, _)] = at.evaluate_many([fields])  # doctest: +SKIP
            >>> at.windows_many([fields], [values]) == [(WINDOW_VALUE, WINDOW_EMPTY)]  # doctest: +SKIP
            True
        """
        reader = self._reader
        all_value = reader._all_value
        out: list[tuple[int, ...]] = []
        for fields, row in zip(hashes, values, strict=True):
            if None not in row and 0 not in row:  # every value needs an event (C-speed test)
                out.append(all_value)
                continue
            pattern, states = self._said(row)
            if None in states:
                states = self._from_fields(fields, pattern, states)
            out.append(states)  # type: ignore[arg-type]  # no None left
        return out

    def _from_fields(
        self, fields: Mapping[Any, bytes], pattern: tuple[int, ...], said: tuple[int | None, ...]
    ) -> tuple[int, ...]:
        """``said`` with its open positions settled from the hash's tile names."""
        windows = self._reader._windows
        starts, ends = self._window_bounds()
        newest = self._newest_tiles(
            fields, {windows[p][0] for p, s in enumerate(said) if s is None}, ends
        )
        states = []
        for pos, state in enumerate(said):
            if state is None:
                start = starts[pos]
                state = (
                    WINDOW_EMPTY
                    if newest.get(windows[pos][0], start - 1) < start
                    else WINDOW_NULL
                    if pattern[pos] == 0
                    else WINDOW_VALUE
                )
            states.append(state)
        return tuple(states)

    @staticmethod
    def _newest_tiles(
        fields: Mapping[Any, bytes], hops: set[int], ends: dict[int, int]
    ) -> dict[int, int]:
        """Per hop in ``hops``, the newest tile (over partitions) below ``ends[hop]``;
        ``_LIFETIME`` maps to 0 when a lifetime accumulator exists. Absent: none."""
        newest: dict[int, int] = {}
        for name in fields:
            parsed = field_name(name)
            if parsed is None:
                continue
            kind, _, hop, k = parsed
            if kind == "t":
                if hop in hops and k < ends[hop] and k > newest.get(hop, k - 1):
                    newest[hop] = k
            elif kind == "l" and _LIFETIME in hops:
                newest[_LIFETIME] = 0
        return newest
