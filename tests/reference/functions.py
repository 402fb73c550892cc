"""Mergeable accumulators for every aggregation function (init/add/merge/finalize + plain form).

Contract for each ``Aggregator``:

- ``init()`` returns a fresh empty state.
- ``add(state, value, order)`` folds one non-null value (``count`` also receives nulls) and
  returns the new state; it may mutate ``state``.
- ``merge(a, b)`` returns the combination; it may mutate ``a`` and never mutates ``b``.
  It is associative and commutative on the *finalized* value, bit for bit.
- ``finalize(state)`` returns the feature value (the empty-window default for ``init()``).
- ``to_plain`` / ``from_plain`` convert a state to and from a msgpack-able structure of
  ints (≤ 64 bit), floats, strings, bytes, bools, None and lists, for the tile codec.
- ``merge_plain(state, plains)`` merges stored plain forms into ``state``: by definition
  ``state = merge(state, from_plain(p))`` for each ``p``, which it is for most functions;
  count, sum, mean/variance/stddev and min/max do the same arithmetic without building the
  intermediate states (the online reader merges thousands of tiles per call).

Exactness: every finite double is a dyadic rational n / 2**k, so float sums are kept exactly
as ``[m, k]`` meaning m / 2**k (k grows only to the finest unit seen, so the integers stay
small); addition is exact and order-free, and finalize is Python's correctly rounded
int/int division. Mean and variance divide exact moments, rounding once.
"""

from __future__ import annotations

import math
import operator
from bisect import insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from tests.reference.hll import Sketch

Order = tuple[int, int, int]
"""(event_time_ms, partition, offset): the total order of source records."""

_S = TypeVar("_S")

ColumnKind = Literal["int", "float", "str", "bool", "bytes"]
NUMERIC: frozenset[str] = frozenset({"int", "float"})
ORDERED: frozenset[str] = frozenset({"int", "float", "str"})
ANY: frozenset[str] = frozenset({"int", "float", "str", "bool", "bytes"})


class Aggregator(Protocol):
    """One aggregation function bound to a column kind (see module docstring)."""

    @property
    def function(self) -> str: ...
    @property
    def counts_nulls(self) -> bool: ...

    def init(self) -> Any: ...
    def add(self, state: Any, value: Any, order: Order) -> Any: ...
    def merge(self, a: Any, b: Any) -> Any: ...
    def finalize(self, state: Any) -> Any: ...
    def to_plain(self, state: Any) -> Any: ...
    def from_plain(self, plain: Any) -> Any: ...
    def merge_plain(self, state: Any, plains: Sequence[Any]) -> Any: ...


def _int_plain(x: int) -> int | bytes:
    if -(1 << 63) <= x < (1 << 63):
        return x
    return x.to_bytes((x.bit_length() + 8) // 8, "big", signed=True)


def _int_from_plain(p: int | bytes) -> int:
    if isinstance(p, int):
        return p
    return int.from_bytes(p, "big", signed=True)


def _merge_each(agg: Aggregator, state: _S, plains: Sequence[Any]) -> _S:
    """``merge_plain`` by its definition: one ``merge(state, from_plain(p))`` per plain form."""
    merge, from_plain = agg.merge, agg.from_plain
    for plain in plains:
        state = merge(state, from_plain(plain))
    return state


# ---------------------------------------------------------------------------------------------
# count and sum


@dataclass(frozen=True, slots=True)
class Count:
    function: str = "count"
    counts_nulls: bool = True

    def init(self) -> int:
        return 0

    def add(self, state: int, value: Any, order: Order) -> int:
        return state + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def finalize(self, state: int) -> int:
        return state

    def to_plain(self, state: int) -> Any:
        return state

    def from_plain(self, plain: Any) -> int:
        return int(plain)

    def merge_plain(self, state: int, plains: Sequence[Any]) -> int:
        return state + sum(map(int, plains))


@dataclass(frozen=True, slots=True)
class IntSum:
    """Sum of an integer column: an exact Python int."""

    function: str = "sum"
    counts_nulls: bool = False

    def init(self) -> int:
        return 0

    def add(self, state: int, value: int, order: Order) -> int:
        return state + value

    def merge(self, a: int, b: int) -> int:
        return a + b

    def finalize(self, state: int) -> int:
        return state

    def to_plain(self, state: int) -> Any:
        return _int_plain(state)

    def from_plain(self, plain: Any) -> int:
        return _int_from_plain(plain)

    def merge_plain(self, state: int, plains: Sequence[Any]) -> int:
        return state + sum(map(_int_from_plain, plains))


@dataclass(frozen=True, slots=True)
class FloatSum:
    """Sum of a float column: exact dyadic rational ``[m, k]`` = m / 2**k, rounded once."""

    function: str = "sum"
    counts_nulls: bool = False

    def init(self) -> list[int]:
        return [0, 0]

    def add(self, state: list[int], value: float, order: Order) -> list[int]:
        n, d = value.as_integer_ratio()
        k = d.bit_length() - 1
        s = state[1]
        if k <= s:
            state[0] += n << (s - k)
        else:
            state[0] = (state[0] << (k - s)) + n
            state[1] = k
        return state

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        m, k = b
        s = a[1]
        if k <= s:
            a[0] += m << (s - k)
        else:
            a[0] = (a[0] << (k - s)) + m
            a[1] = k
        return a

    def finalize(self, state: list[int]) -> float:
        try:
            return state[0] / (1 << state[1])
        except OverflowError:  # an exact sum beyond the double range: IEEE overflow
            return math.copysign(math.inf, state[0])

    def to_plain(self, state: list[int]) -> Any:
        return _exact_plain(state[0], state[1])

    def from_plain(self, plain: Any) -> list[int]:
        return [_int_from_plain(plain[0]), int(plain[1])]

    def merge_plain(self, state: list[int], plains: Sequence[Any]) -> list[int]:
        if plains:
            ms, ks = zip(*plains, strict=True)
            state[0], state[1] = _exact_sum(state[0], state[1], ms, ks)
        return state


def _exact_add(state: list[int], at: int, m: int, k: int) -> None:
    """state[at] / 2**state[at+1] += m / 2**k, exactly (the smaller unit wins)."""
    s = state[at + 1]
    if k <= s:
        state[at] += m << (s - k)
    else:
        state[at] = (state[at] << (k - s)) + m
        state[at + 1] = k


def _exact_sum(m: int, k: int, ms: Sequence[int | bytes], ks: Sequence[Any]) -> tuple[int, int]:
    """m / 2**k + the sum of plain ``ms[i] / 2**ks[i]``, as ``(m', k')``: exactly what a chain
    of ``_exact_add`` gives, as k' is the finest unit seen and m' the sum in that unit."""
    units = list(map(int, ks))
    top = max(k, *units)
    shifts = list(map(top.__sub__, units))
    try:
        total = sum(map(operator.lshift, ms, shifts))
    except TypeError:  # a sum beyond 64 bits is stored as bytes (``_int_plain``)
        total = sum(map(operator.lshift, map(_int_from_plain, ms), shifts))
    return (m << (top - k)) + total, top


def _exact_plain(m: int, k: int) -> list[int | bytes]:
    """Canonical plain form of m / 2**k: trailing zero bits folded into k."""
    if m == 0:
        return [0, 0]
    shift = min((m & -m).bit_length() - 1, k)
    return [_int_plain(m >> shift), k - shift]


# ---------------------------------------------------------------------------------------------
# mean, variance, stddev: exact moments [n, S1, k1, S2, k2] with S = m / 2**k


@dataclass(frozen=True, slots=True)
class Moments:
    """Exact count, sum and sum of squares as dyadic rationals; one rounding at finalize."""

    function: str
    counts_nulls: bool = False

    def init(self) -> list[int]:
        return [0, 0, 0, 0, 0]

    def add(self, state: list[int], value: float | int, order: Order) -> list[int]:
        state[0] += 1
        n, d = value.as_integer_ratio()
        k = d.bit_length() - 1
        _exact_add(state, 1, n, k)
        if self.function != "mean":
            _exact_add(state, 3, n * n, 2 * k)
        return state

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        a[0] += b[0]
        _exact_add(a, 1, b[1], b[2])
        _exact_add(a, 3, b[3], b[4])
        return a

    def finalize(self, state: list[int]) -> float | None:
        n, m1, k1, m2, k2 = state
        if self.function == "mean":
            if n == 0:
                return None
            return m1 / (n << k1)
        if n < 2:
            return None
        # sample variance (n*S2 - S1^2) / (n (n-1)) over a common denominator, one rounding
        numerator = ((n * m2) << (2 * k1)) - ((m1 * m1) << k2)
        denominator = (n * (n - 1)) << (k2 + 2 * k1)
        try:
            variance = numerator / denominator
        except OverflowError:  # beyond the double range (docs/semantics.md, "Overflow")
            if self.function == "variance":
                return math.inf
            return _sqrt_ratio(numerator, denominator)
        if self.function == "variance":
            return variance
        return math.sqrt(variance)

    def to_plain(self, state: list[int]) -> Any:
        return [state[0], *_exact_plain(state[1], state[2]), *_exact_plain(state[3], state[4])]

    def from_plain(self, plain: Any) -> list[int]:
        return [int(plain[0]), _int_from_plain(plain[1]), int(plain[2]),
                _int_from_plain(plain[3]), int(plain[4])]  # fmt: skip

    def merge_plain(self, state: list[int], plains: Sequence[Any]) -> list[int]:
        if plains:
            ns, m1s, k1s, m2s, k2s = zip(*plains, strict=True)
            state[0] += sum(map(int, ns))
            state[1], state[2] = _exact_sum(state[1], state[2], m1s, k1s)
            if self.function != "mean":  # a mean never adds squares: they stay 0 / 2**0
                state[3], state[4] = _exact_sum(state[3], state[4], m2s, k2s)
        return state


def _sqrt_ratio(a: int, b: int) -> float:
    """sqrt(a / b) correctly rounded (ties to even; ``inf`` beyond the double range), for
    ``a >= 0``, ``b > 0`` and a root in the normal range (the caller's overflowing variances):
    the integer root of a / b scaled to at least 112 bits, with a sticky bit for what the
    floors dropped."""
    s = max(0, (113 + b.bit_length() - a.bit_length()) // 2 + 1)
    scaled, rest = divmod(a << (2 * s), b)
    q = math.isqrt(scaled)
    sticky = rest != 0 or q * q != scaled
    drop = q.bit_length() - 53  # q has at least 56 bits, so drop >= 3
    kept, low, half = q >> drop, q & ((1 << drop) - 1), 1 << (drop - 1)
    if low > half or (low == half and (sticky or kept & 1)):
        kept += 1
    try:
        return math.ldexp(float(kept), drop - s)
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------------------------------------
# min and max


def _lt_total(a: Any, b: Any) -> bool:
    """a < b, with -0.0 < 0.0 so that min/max do not depend on arrival order."""
    if a == b:
        return (
            isinstance(a, float)
            and isinstance(b, float)
            and math.copysign(1.0, a) < 0 < (math.copysign(1.0, b))
        )
    return bool(a < b)


@dataclass(frozen=True, slots=True)
class Extreme:
    function: str  # "min" | "max"
    counts_nulls: bool = False

    def init(self) -> Any:
        return None

    def add(self, state: Any, value: Any, order: Order) -> Any:
        if state is None:
            return value
        if self.function == "min":
            return value if _lt_total(value, state) else state
        return value if _lt_total(state, value) else state

    def merge(self, a: Any, b: Any) -> Any:
        if b is None:
            return a
        return self.add(a, b, (0, 0, 0))

    def finalize(self, state: Any) -> Any:
        return state

    def to_plain(self, state: Any) -> Any:
        return state

    def from_plain(self, plain: Any) -> Any:
        return plain

    def merge_plain(self, state: Any, plains: Sequence[Any]) -> Any:
        merge = self.merge  # from_plain is the identity
        for plain in plains:
            state = merge(state, plain)
        return state


# ---------------------------------------------------------------------------------------------
# first, last, first_n, last_n: ordered by (event_time, partition, offset)


@dataclass(frozen=True, slots=True)
class Edge:
    """first/last: state is None or [event_time, partition, offset, value]."""

    function: str  # "first" | "last"
    counts_nulls: bool = False

    def init(self) -> Any:
        return None

    def add(self, state: Any, value: Any, order: Order) -> Any:
        if state is None:
            return [*order, value]
        held = (state[0], state[1], state[2])
        if (order < held) if self.function == "first" else (order > held):
            return [*order, value]
        return state

    def merge(self, a: Any, b: Any) -> Any:
        if b is None:
            return a
        return self.add(a, b[3], (b[0], b[1], b[2]))

    def finalize(self, state: Any) -> Any:
        return None if state is None else state[3]

    def to_plain(self, state: Any) -> Any:
        return state

    def from_plain(self, plain: Any) -> Any:
        return None if plain is None else list(plain)

    def merge_plain(self, state: Any, plains: Sequence[Any]) -> Any:
        return _merge_each(self, state, plains)


@dataclass(frozen=True, slots=True)
class EdgeN:
    """first_n/last_n: a sorted list of at most n [event_time, partition, offset, value]."""

    function: str  # "first_n" | "last_n"
    n: int
    counts_nulls: bool = False

    def init(self) -> list[list[Any]]:
        return []

    def add(self, state: list[list[Any]], value: Any, order: Order) -> list[list[Any]]:
        item = [*order, value]
        if len(state) < self.n:
            insort(state, item, key=_order_of)
        elif self.function == "first_n":
            if order < _order_of(state[-1]):
                state.pop()
                insort(state, item, key=_order_of)
        elif order > _order_of(state[0]):
            state.pop(0)
            insort(state, item, key=_order_of)
        return state

    def merge(self, a: list[list[Any]], b: list[list[Any]]) -> list[list[Any]]:
        for item in b:
            a = self.add(a, item[3], _order_of(item))
        return a

    def finalize(self, state: list[list[Any]]) -> list[Any] | None:
        # DESIGN §2: an empty window is null for everything but counts and sums
        return [item[3] for item in state] if state else None

    def to_plain(self, state: list[list[Any]]) -> Any:
        return state

    def from_plain(self, plain: Any) -> list[list[Any]]:
        return [list(item) for item in plain]

    def merge_plain(self, state: list[list[Any]], plains: Sequence[Any]) -> list[list[Any]]:
        return _merge_each(self, state, plains)


def _order_of(item: list[Any]) -> Order:
    return (item[0], item[1], item[2])


# ---------------------------------------------------------------------------------------------
# count_distinct (exact) and approx_count_distinct (HyperLogLog)


@dataclass(frozen=True, slots=True)
class CountDistinct:
    function: str = "count_distinct"
    counts_nulls: bool = False

    def init(self) -> set[Any]:
        return set()

    def add(self, state: set[Any], value: Any, order: Order) -> set[Any]:
        state.add(value)
        return state

    def merge(self, a: set[Any], b: set[Any]) -> set[Any]:
        a |= b
        return a

    def finalize(self, state: set[Any]) -> int:
        return len(state)

    def to_plain(self, state: set[Any]) -> Any:
        return sorted(state)

    def from_plain(self, plain: Any) -> set[Any]:
        return set(plain)

    def merge_plain(self, state: set[Any], plains: Sequence[Any]) -> set[Any]:
        return _merge_each(self, state, plains)


@dataclass(frozen=True, slots=True)
class ApproxCountDistinct:
    function: str = "approx_count_distinct"
    counts_nulls: bool = False

    def init(self) -> Sketch:
        return Sketch()

    def add(self, state: Sketch, value: Any, order: Order) -> Sketch:
        state.add(value)
        return state

    def merge(self, a: Sketch, b: Sketch) -> Sketch:
        a.merge(b)
        return a

    def finalize(self, state: Sketch) -> int:
        return state.estimate()

    def to_plain(self, state: Sketch) -> Any:
        regs = state.registers()
        return [[i for i, _ in regs], bytes(r for _, r in regs)]

    def from_plain(self, plain: Any) -> Sketch:
        sketch = Sketch()
        for index, rank in zip(plain[0], plain[1], strict=True):
            sketch.set(index, rank)
        return sketch

    def merge_plain(self, state: Sketch, plains: Sequence[Any]) -> Sketch:
        return _merge_each(self, state, plains)


# ---------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """What a function accepts and how to build its aggregator for a column kind."""

    kinds: frozenset[str]
    needs_n: bool
    build: Callable[[str, int | None], Aggregator]


def _sum(kind: str, n: int | None) -> Aggregator:
    return IntSum() if kind == "int" else FloatSum()


FUNCTIONS: dict[str, FunctionSpec] = {
    "count": FunctionSpec(ANY, False, lambda kind, n: Count()),
    "sum": FunctionSpec(NUMERIC, False, _sum),
    "mean": FunctionSpec(NUMERIC, False, lambda kind, n: Moments("mean")),
    "variance": FunctionSpec(NUMERIC, False, lambda kind, n: Moments("variance")),
    "stddev": FunctionSpec(NUMERIC, False, lambda kind, n: Moments("stddev")),
    "min": FunctionSpec(ORDERED, False, lambda kind, n: Extreme("min")),
    "max": FunctionSpec(ORDERED, False, lambda kind, n: Extreme("max")),
    "first": FunctionSpec(ANY, False, lambda kind, n: Edge("first")),
    "last": FunctionSpec(ANY, False, lambda kind, n: Edge("last")),
    "first_n": FunctionSpec(ANY, True, lambda kind, n: EdgeN("first_n", n or 1)),
    "last_n": FunctionSpec(ANY, True, lambda kind, n: EdgeN("last_n", n or 1)),
    "count_distinct": FunctionSpec(ANY, False, lambda kind, n: CountDistinct()),
    "approx_count_distinct": FunctionSpec(ANY, False, lambda kind, n: ApproxCountDistinct()),
}


def make_aggregator(function: str, kind: str, n: int | None = None) -> Aggregator:
    """Build the aggregator for ``function`` over a column of ``kind``.

    Example:
        >>> agg = make_aggregator("sum", "float")
        >>> s = agg.init()
        >>> for v in (0.1, 0.2, 0.3):
        ...     s = agg.add(s, v, (0, 0, 0))
        >>> agg.finalize(s) == 0.6
        True
    """
    return FUNCTIONS[function].build(kind, n)
