"""Online reads: many features of many entities and views as of ``now_ms``, in one store round trip.

The read path (DESIGN §3, "an online read at wall time t returns the processing-time value
at t"): resolve the refs (memoized per tuple of refs), build each (view, entity) key with
``engine.online.state_key``, fetch every hash with ONE ``OnlineStateStore.load``, and
evaluate each hash as of ``now_ms`` with ``engine.online_eval.WindowReader``: the native core
decodes only the tiles the requested windows cover (``ceil(t/H) - W/H <= k < ceil(t/H)``,
the bounds the backfill's sweep uses), merges them over tiles and partitions and finalizes —
the same kernel the worker folds with and the backfill replays. A missing entity reads as an empty window
(counts and sums 0, everything else None); it is not an error.

Every value carries a ``FeatureStatus`` saying what stands behind it — computed from
events (``PRESENT``, ``NULL_VALUE``), or an empty-window default and why (``OUTSIDE_WINDOW``,
``NOT_FOUND``, ``NO_STATE``). The statuses come from what the read fetches anyway: the
entity hashes, the values, and per view the existence of its write-stats hash
(``engine.online.stats_key``), asked in the same round trip by a ``ProbingStore``
(docs/online.md#statuses).

Freshness of a (row, view) is the newest ``processed_at`` any partition wrote for that
entity (``u:<p>`` fields), in epoch milliseconds — a timestamp, not an age; None when the
store holds nothing for the entity.

``ReadCache`` keeps finalized values of recently read entities. With a ``TrackingStore``
Redis tells the cache which keys changed (server-assisted client-side caching), so a held
entity is served with no round trip; otherwise, with a store that can revalidate
(``RevalidatingStore.load_changed``), an unchanged entity is confirmed inside Redis and not
even sent. No Redis and no pandas here (``OnlineResponse.to_df`` imports
pandas when called).
"""

from __future__ import annotations

import base64
import itertools
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from engine.errors import CodecError, InputDataError
from engine.kernel.tiles import window_end
from engine.online import state_key, stats_key, values_at
from engine.online_eval import WINDOW_EMPTY, WINDOW_NULL, WINDOW_VALUE, WindowAt, WindowReader
from engine.plan import Plan, ViewPlan
from engine.ports import OnlineStateStore
from engine.schema import FieldSpec, int_range, outside

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EntityRows",
    "FRESHNESS_SUFFIX",
    "STATUS_SUFFIX",
    "FeatureStatus",
    "OnlineResponse",
    "OnlineResult",
    "Held",
    "InvalidationFeed",
    "ProbingStore",
    "ReadCache",
    "RevalidatingStore",
    "TrackingStore",
    "ReadPlan",
    "prepare_read",
    "read_online",
]

EntityRows = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
"""Entity rows as a list of ``{join_key: value}`` dicts, or columns ``{join_key: [values]}``."""

FRESHNESS_SUFFIX = "__freshness_ms"
STATUS_SUFFIX = "__status"
_PREPARED_MAX = 1024


class FeatureStatus(StrEnum):
    """What stands behind one online value (docs/online.md#statuses).

    Feast's ``FieldStatus`` names where they mean the same; ``OUTSIDE_WINDOW`` is the analogue
    of Feast's ``OUTSIDE_MAX_AGE`` and ``NO_STATE`` is skewless' own. Members are strings
    (``FeatureStatus.PRESENT == "PRESENT"``). Only ``PRESENT`` and ``NULL_VALUE`` values were
    computed from events; the other three are the empty-window default (counts and sums 0,
    everything else None).
    """

    PRESENT = "PRESENT"
    """The entity has state and at least one admitted event lies in the feature's window as
    of t; the value is computed from those events and is not null (it may be a real 0)."""
    NULL_VALUE = "NULL_VALUE"
    """As PRESENT, but the aggregate is null: a mean/min/max/first/last of only null inputs,
    a variance or stddev of a single value."""
    OUTSIDE_WINDOW = "OUTSIDE_WINDOW"
    """The entity has state in the view, but no admitted event lies in this feature's window
    as of t (its events are older): the value is the empty-window default."""
    NOT_FOUND = "NOT_FOUND"
    """The view's current keyspace has no state for this entity (never seen, or its state
    expired once no window could use it), while the view has state: the default."""
    NO_STATE = "NO_STATE"
    """The view's current keyspace has no state at all as far as the read can tell: no worker
    write is recorded for its fingerprint and no requested entity has state (a changed
    definition not rebuilt yet, workers never run, Redis emptied): the default."""


_PLAIN = {status: status.value for status in FeatureStatus}  # member → plain str, for output
_NO_STATE, _NOT_FOUND = FeatureStatus.NO_STATE, FeatureStatus.NOT_FOUND  # (enum lookups cost)

_Got = tuple[list[Any], int | None, tuple[FeatureStatus, ...]]
# evaluations (values, updated, seen or status key) and their window states
_Evaluated = tuple[list[tuple[list[Any], int | None, bytes]], list[tuple[int, ...]]]
"""What a read has for one (view, entity): values, freshness, statuses (in request order)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewRead:
    """The part of a read that touches one view: which aggregations, into which columns."""

    view: ViewPlan
    indices: tuple[int, ...]  # aggregation indices, in request order
    columns: tuple[int, ...]  # output column of each index
    key_kinds: tuple[str | None, ...]  # "str"/"int" per join key (None: declared by a transform)
    hops_ms: tuple[int, ...]  # the layout's hop groups: the window moves only at their boundaries
    reader: WindowReader  # evaluates a hash; memoizes what field names mean (never a value)
    marker: str  # the view's write-stats key: it exists once a worker wrote the view


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadPlan:
    """Resolved refs: the views to read and how the output columns are named."""

    refs: tuple[str, ...]
    views: tuple[ViewRead, ...]
    features: tuple[str, ...]  # per output column: the feature name
    feature_views: tuple[str, ...]  # per output column: its view
    join_keys: tuple[str, ...]  # every join key the views need, first-seen order
    key_kinds: Mapping[str, str | None]
    # an integer key's values that can name an entity: its field's Avro type's range (the
    # widest where views differ); past it a key is refused, as a wrong type is
    key_ranges: Mapping[str, tuple[int, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class OnlineResult:
    """Feature values per output column and row, the join keys as given, and freshness.

    ``values[c][r]`` is column ``c`` (``plan.features[c]``) of row ``r``, ``statuses[c][r]``
    what stands behind it; ``freshness_ms[view][r]`` is the newest write time of row ``r``'s
    entity in ``view``. ``row_statuses[v][r]`` holds row ``r``'s statuses in view read ``v``
    (``plan.views[v]``, in its ``columns`` order): shared tuples, turned into columns only
    when asked for.
    """

    plan: ReadPlan
    now_ms: int
    entities: Mapping[str, list[Any]]
    values: list[list[Any]]
    row_statuses: tuple[list[tuple[FeatureStatus, ...]], ...]
    freshness_ms: Mapping[str, list[int | None]]

    @property
    def rows(self) -> int:
        return len(self.values[0]) if self.values else 0

    @property
    def statuses(self) -> list[list[FeatureStatus]]:
        """Per output column, per row, the ``FeatureStatus`` of ``values[c][r]`` (new lists)."""
        out: list[list[FeatureStatus]] = [[] for _ in self.plan.features]
        for read, rows in zip(self.plan.views, self.row_statuses, strict=True):
            for pos, c in enumerate(read.columns):
                out[c] = [row[pos] for row in rows]
        return out


_PREPARED: dict[tuple[int, tuple[str, ...]], tuple[Plan, ReadPlan]] = {}


def prepare_read(plan: Plan, refs: Sequence[str]) -> ReadPlan:
    """Resolve ``refs`` once; memoized per (plan, tuple of refs).

    Raises FeatureRefError for unknown refs and InputDataError for a ref requested twice.
    """
    refs_t = (refs,) if isinstance(refs, str) else tuple(refs)
    cache_key = (id(plan), refs_t)
    hit = _PREPARED.get(cache_key)
    if hit is not None and hit[0] is plan:
        return hit[1]
    prepared = _prepare(plan, refs_t)
    if len(_PREPARED) >= _PREPARED_MAX:
        _PREPARED.clear()
    _PREPARED[cache_key] = (plan, prepared)  # holding the plan keeps its id from being reused
    return prepared


def _prepare(plan: Plan, refs: tuple[str, ...]) -> ReadPlan:
    if not refs:
        raise InputDataError("no features requested: pass one or more 'view:feature' refs")
    resolved = plan.resolve(refs)
    seen: dict[tuple[str, int], str] = {}
    by_view: dict[str, tuple[list[int], list[int]]] = {}
    join_keys: dict[str, str | None] = {}
    int_fields: dict[str, list[FieldSpec]] = {}  # an int key's fields, over the views
    for column, (ref, (view, index)) in enumerate(zip(refs, resolved, strict=True)):
        if (view.name, index) in seen:
            raise InputDataError(f"feature ref {ref!r} is requested twice")
        seen[(view.name, index)] = ref
        indices, columns = by_view.setdefault(view.name, ([], []))
        indices.append(index)
        columns.append(column)
    reads: list[ViewRead] = []
    for name, (indices, columns) in by_view.items():
        view = plan.views[name]
        fields = plan.sources[view.source].fields
        kinds = tuple(
            fields[k].kind if k in fields and fields[k].kind in ("str", "int") else None
            for k in view.join_keys
        )
        for key, kind in zip(view.join_keys, kinds, strict=True):
            join_keys.setdefault(key, kind)
            if kind == "int":
                int_fields.setdefault(key, []).append(fields[key])
        reads.append(
            ViewRead(
                view=view,
                indices=tuple(indices),
                columns=tuple(columns),
                key_kinds=kinds,
                hops_ms=tuple(g.hop_ms for g in view.layout.groups),
                reader=WindowReader(view, tuple(indices)),
                marker=stats_key(view.fingerprint),
            )
        )
    return ReadPlan(
        refs=refs,
        views=tuple(reads),
        features=tuple(view.aggregations[i].feature for view, i in resolved),
        feature_views=tuple(view.name for view, _ in resolved),
        join_keys=tuple(join_keys),
        key_kinds=join_keys,
        key_ranges={key: int_range(specs) for key, specs in int_fields.items()},
    )


def read_online(
    plan: Plan,
    store: OnlineStateStore,
    refs: Sequence[str],
    entity_rows: EntityRows,
    *,
    now_ms: int,
    cache: ReadCache | None = None,
) -> OnlineResult:
    """Features ``refs`` of every entity row as of ``now_ms``, with at most one store call
    (one round trip).

    With a ``cache``, an entity whose stored state and window boundaries are unchanged since
    an earlier read is not decoded again (see ``ReadCache``), and with a ``TrackingStore``
    not even asked for: a read of held entities only makes no store call.

    Each value gets a ``FeatureStatus``. Telling ``NOT_FOUND`` from ``NO_STATE`` needs to know
    whether the view's write-stats hash exists: a ``ProbingStore`` asks in the same round
    trip; another store is asked in a second call only when every requested entity of a
    view is missing.

    Raises FeatureRefError for unknown refs, InputDataError for a row that lacks a join key
    or holds a value of the wrong kind (nothing is coerced: ``"7"`` is not the int key 7),
    OnlineStoreUnavailable from the store, CodecError for corrupt stored tiles.

    Example:
        >>> result = read_online(plan, store, ["customer_spend:amount_sum_30d"],
        ...                      [{"customer_id": "c1"}], now_ms=1_767_225_600_000)  # doctest: +SKIP
        >>> result.values[0], result.statuses[0]  # doctest: +SKIP
        ([42.5], [<FeatureStatus.PRESENT: 'PRESENT'>])
    """
    prepared = prepare_read(plan, refs)
    columns = _columns(entity_rows, prepared)
    n = len(next(iter(columns.values()))) if columns else 0
    # one key per distinct (view, entity); rows with the same entity share it
    keys: dict[str, int] = {}
    row_keys: list[list[int]] = []
    all_ends: list[tuple[int, ...]] = []
    for read in prepared.views:
        key_columns = [columns[k] for k in read.view.join_keys]
        slots: list[int] = []
        memo = _state_keys(read.view)
        for entity in zip(*key_columns, strict=True):
            key = memo.get(entity)
            if key is None:
                key = _state_key(read.view, entity, memo)
            slot = keys.get(key)
            if slot is None:
                slot = keys[key] = len(keys)
            slots.append(slot)
        row_keys.append(slots)
        all_ends.append(tuple(window_end(h, now_ms) for h in read.hops_ms))
    slot_keys = list(keys)
    fetched: _Fetched = _DictHashes([])
    confirmed: dict[int, _Got] = {}  # held values, by slot
    marked: dict[str, bool] | None = None  # view marker → exists (None: not asked)
    # tracked: Redis invalidates what the cache holds (just drained), so a hit is served as
    # is; else a hit is revalidated in the load's round trip
    tracked = cache is not None and cache.sync(store)
    since = 0 if cache is None else cache.seq  # a put is dropped if invalidated after this
    if slot_keys:
        probe = getattr(store, "load_and_probe", None)  # ProbingStore
        probe_resp = getattr(store, "load_and_probe_resp", None)  # RespStore
        load_changed = None if cache is None else getattr(store, "load_changed", None)
        held: list[Held | None] | None = None
        send = slot_keys  # the keys the load asks for
        if cache is not None and tracked:
            for read, slots, ends in zip(prepared.views, row_keys, all_ends, strict=True):
                for slot in slots:
                    hit = cache.held(slot_keys[slot], read.indices, ends)
                    if hit is not None:
                        confirmed[slot] = hit[1]
            if confirmed:
                send = [k for slot, k in enumerate(slot_keys) if slot not in confirmed]
        elif cache is not None and (probe is not None or load_changed is not None):
            held = [None] * len(slot_keys)
            for read, slots, ends in zip(prepared.views, row_keys, all_ends, strict=True):
                for slot in slots:
                    hit = cache.held(slot_keys[slot], read.indices, ends)
                    if hit is not None:
                        held[slot], confirmed[slot] = hit
        if not send:
            pass  # every entity held and tracked: no round trip
        elif probe is not None:
            wanted = list(dict.fromkeys(read.marker for read in prepared.views))
            held_or_none = held or [None] * len(send)
            replies = None if probe_resp is None else probe_resp(send, held_or_none, wanted)
            if replies is not None:
                fetched = _RespHashes(replies, len(send))
                exist = [bool(replies.int_at(len(send) + i)) for i in range(len(wanted))]
            else:
                hashes, exist = probe(send, held_or_none, wanted)
                fetched = _DictHashes(hashes)
            marked = dict(zip(wanted, exist, strict=True))
        elif load_changed is not None and held is not None:
            fetched = _DictHashes(load_changed(send, held))
        else:
            fetched = _DictHashes(store.load(send))
        if send is not slot_keys:
            fetched = _Subset(fetched, [s for s in range(len(slot_keys)) if s not in confirmed],
                              len(slot_keys))  # fmt: skip
    sizes = fetched.sizes
    values: list[list[Any]] = [[None] * n for _ in prepared.features]
    row_statuses: list[list[tuple[FeatureStatus, ...]]] = []
    freshness: dict[str, list[int | None]] = {}
    found: list[tuple[dict[int, _Got], list[int]]] = []  # per view: its read entities, missing
    unsure = False  # some view's requested entities are all missing
    for read, slots, ends in zip(prepared.views, row_keys, all_ends, strict=True):
        done: dict[int, _Got] = {}
        missing: list[int] = []
        pending: list[int] = []  # slots to evaluate, in one native call
        for slot in dict.fromkeys(slots):
            size = sizes[slot]
            if size is None:  # held: tracked, or unchanged since the cached read (load_changed)
                done[slot] = confirmed[slot]
            elif not size:
                missing.append(slot)
            else:
                got = None
                if cache is not None:
                    got = cache.get(slot_keys[slot], read.indices, size, fetched.marks, slot, ends)
                if got is None:
                    pending.append(slot)
                else:
                    done[slot] = got
        if pending:
            at = read.reader.at(now_ms)  # only when something is evaluated
            for slot, got in zip(pending, _evaluate_many(at, slot_keys, fetched, pending),
                                 strict=True):  # fmt: skip
                done[slot] = got
                if cache is not None:
                    cache.put(slot_keys[slot], read.indices, sizes[slot], fetched.marks(slot),
                              ends, got, since=since)  # fmt: skip
        found.append((done, missing))
        unsure = unsure or (bool(missing) and not done)
    if marked is None:  # a store that cannot probe: ask only where the answer depends on it
        marked = {}
        if unsure:
            ask = list(dict.fromkeys(read.marker for read, (done, missing)
                                     in zip(prepared.views, found, strict=True)
                                     if missing and not done))  # fmt: skip
            marked = dict(zip(ask, map(bool, store.load(ask)), strict=True))
    for read, slots, (done, missing) in zip(prepared.views, row_keys, found, strict=True):
        if missing:
            empty = values_at(read.view, [{}], now_ms, read.indices)[0]
            status = _NOT_FOUND if done or marked.get(read.marker) else _NO_STATE
            every = (status,) * len(read.indices)
            for slot in missing:
                done[slot] = (list(empty), None, every)
        rows = list(map(done.__getitem__, slots))  # every row has an entity in every view
        if rows:
            for c, column in zip(read.columns, zip(*[row[0] for row in rows], strict=True),
                                 strict=True):  # fmt: skip
                values[c] = list(column)
        freshness[read.view.name] = [row[1] for row in rows]
        row_statuses.append([row[2] for row in rows])
    entities = {k: columns[k] for k in prepared.join_keys}
    return OnlineResult(
        plan=prepared,
        now_ms=now_ms,
        entities=entities,
        values=values,
        row_statuses=tuple(row_statuses),
        freshness_ms=freshness,
    )


class _Fetched(Protocol):
    """The hashes one load fetched, by slot (``_DictHashes`` or ``_RespHashes``)."""

    sizes: list[int | None]  # per slot: field count; 0 missing; None unchanged (held)

    def marks(self, slot: int) -> frozenset[tuple[bytes, bytes]]: ...

    def evaluate_states(self, at: WindowAt, slots: Sequence[int]) -> _Evaluated:
        """The evaluations of ``slots`` (``WindowAt.evaluate_seen``) and their window states
        (``WindowAt.windows_seen``)."""
        ...


class _DictHashes:
    """Hashes as dicts of bytes (``None``: unchanged since the cached read)."""

    __slots__ = ("hashes", "sizes")

    def __init__(self, hashes: Sequence[Mapping[bytes, bytes] | None]) -> None:
        self.hashes = hashes
        self.sizes: list[int | None] = [None if h is None else len(h) for h in hashes]

    def marks(self, slot: int) -> frozenset[tuple[bytes, bytes]]:
        return ReadCache._marks(self.hashes[slot] or {})

    def evaluate_states(self, at: WindowAt, slots: Sequence[int]) -> _Evaluated:
        got = at.evaluate_seen([self.hashes[s] or {} for s in slots])
        return got, at.windows_seen(got)


class _RespHashes:
    """Hashes left in the RESP buffer they arrived in (``engine._native.RespReplies``):
    the first ``keys`` replies are ``HGETALL`` hashes or the integer 1 (unchanged)."""

    __slots__ = ("replies", "sizes")

    def __init__(self, replies: Any, keys: int) -> None:
        self.replies = replies
        self.sizes: list[int | None] = [None if n < 0 else n for n in replies.shape()[:keys]]

    def marks(self, slot: int) -> frozenset[tuple[bytes, bytes]]:
        marks: frozenset[tuple[bytes, bytes]] = self.replies.marks(slot, _MARK_KIND_BYTES)
        return marks

    def evaluate_states(self, at: WindowAt, slots: Sequence[int]) -> _Evaluated:
        got = at.evaluate_replies(self.replies, slots, keyed=True)  # statuses by key
        return got, at.windows_keyed(got)


class _Subset:
    """Some slots' hashes (the rest held and tracked: size None), as their one load gave them."""

    __slots__ = ("inner", "pos", "sizes")

    def __init__(self, inner: _Fetched, slots: Sequence[int], n: int) -> None:
        self.inner = inner
        self.pos = [-1] * n  # slot → its place in the load
        self.sizes: list[int | None] = [None] * n
        for i, slot in enumerate(slots):
            self.pos[slot] = i
            self.sizes[slot] = inner.sizes[i]

    def marks(self, slot: int) -> frozenset[tuple[bytes, bytes]]:
        return self.inner.marks(self.pos[slot])

    def evaluate_states(self, at: WindowAt, slots: Sequence[int]) -> _Evaluated:
        return self.inner.evaluate_states(at, [self.pos[s] for s in slots])


_STATE_KEYS: dict[str, dict[tuple[Any, ...], str]] = {}  # fingerprint → entity → state key
_STATE_KEYS_MAX = 1 << 16  # keys memoized per view; all dropped when full


def _state_keys(view: ViewPlan) -> dict[tuple[Any, ...], str]:
    """The memo of ``view``'s state keys (join-key values are validated str or int: no two
    distinct entities compare equal)."""
    memo = _STATE_KEYS.get(view.fingerprint)
    if memo is None:
        memo = _STATE_KEYS[view.fingerprint] = {}
    return memo


def _state_key(view: ViewPlan, entity: tuple[Any, ...], memo: dict[tuple[Any, ...], str]) -> str:
    key = state_key(view, entity)
    if len(memo) >= _STATE_KEYS_MAX:
        memo.clear()
    memo[entity] = key
    return key


def _evaluate_many(
    at: WindowAt, keys: Sequence[str], fetched: _Fetched, slots: Sequence[int]
) -> list[_Got]:
    """The values, freshness and statuses of many entities' (non-empty) hashes in one native
    call; a corrupt tile's error names its Redis key."""
    try:
        got, states = fetched.evaluate_states(at, slots)
    except CodecError:
        for slot in slots:  # find the entity whose tile failed, to name it
            try:
                fetched.evaluate_states(at, [slot])
            except CodecError as exc:
                raise CodecError(f"Redis key {keys[slot]!r}: {exc}") from exc
        raise
    rows = _STATUS_ROWS
    out: list[_Got] = []
    for (values, updated, _), state in zip(got, states, strict=True):
        row = rows.get(state)
        if row is None:
            if len(rows) >= _STATUS_ROWS_MAX:
                rows.clear()
            row = rows[state] = tuple(_STATUS_OF_WINDOW[s] for s in state)
        out.append((values, updated, row))
    return out


# an entity with state: its window states (engine.online_eval.WINDOW_*) → statuses
_STATUS_OF_WINDOW = {
    WINDOW_EMPTY: FeatureStatus.OUTSIDE_WINDOW,
    WINDOW_NULL: FeatureStatus.NULL_VALUE,
    WINDOW_VALUE: FeatureStatus.PRESENT,
}
_STATUS_ROWS: dict[tuple[int, ...], tuple[FeatureStatus, ...]] = {}
_STATUS_ROWS_MAX = 4096


Held = tuple[int, tuple[tuple[bytes, bytes], ...]]
"""What a reader holds of a hash: its field count and its mark fields with their values."""


@runtime_checkable
class RevalidatingStore(Protocol):
    """An online store that can skip sending hashes a reader already holds (optional)."""

    def load_changed(
        self, keys: Sequence[str], held: Sequence[Held | None]
    ) -> list[dict[bytes, bytes] | None]:
        """Like ``load``, one round trip, but None where ``held[i]`` is still current."""
        ...


@runtime_checkable
class ProbingStore(Protocol):
    """An online store that says, in the round trip of a load, which of some keys exist
    (optional): the reader's view markers (``engine.online.stats_key``) for the statuses."""

    def load_and_probe(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes] | None], list[bool]]:
        """``load_changed(keys, held)`` (all ``held`` None: ``load``) and whether each key of
        ``probes`` exists, in one round trip."""
        ...


@runtime_checkable
class InvalidationFeed(Protocol):
    """What the store tells a ``ReadCache`` about keys changed in it (server-assisted
    client-side caching: ``connectors.redis_invalidations``)."""

    def poll(self) -> tuple[bool, list[bytes], bool]:
        """``(flushed, keys, trusted)`` — drop everything held (a flush, the feed's
        connection lost or made anew), the keys changed since the last poll, and whether
        every change up to now is known but for messages in flight. Reads what arrived
        without blocking (a feed may take one round trip to confirm a quiet connection)."""
        ...

    def expect_changes(self) -> None:
        """Writes were acknowledged before this call: the next poll must not report
        ``trusted`` until their invalidations have arrived."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TrackingStore(Protocol):
    """An online store that can report changed keys to a cache (optional)."""

    def invalidations(self) -> InvalidationFeed | None:
        """A new feed for one cache, or None when the store cannot track now."""
        ...


_MARK_KIND_BYTES = b"fu"  # fence and write time: rewritten with every tile change
_MARK_KINDS = frozenset(_MARK_KIND_BYTES)
_DROPPED_MAX = 8192  # invalidated keys remembered for reads in flight (ReadCache.put)
_ATTACH_EVERY_NS = 1_000_000_000  # a store that could not give a feed is asked again after


class ReadCache:
    """Finalized values of recently read entities, reused while nothing they depend on moved.

    A value as of ``t`` is a pure function of the entity's stored fields and, per hop group,
    of ``ceil(t / hop)`` (``kernel.tiles.window_states``), so an entry is reused only while
    the window boundaries match and the hash is unchanged. Values that are lists
    (first_n/last_n) are never cached, so callers may mutate what they get. At most
    ``max_entries`` (entity, feature set) entries are held, oldest dropped first.

    How "unchanged" is known (docs/online.md#readcache-and-invalidation):

    - ``tracking=True`` (the default), with a ``TrackingStore``: Redis sends the name of
      every state key any client changes (``CLIENT TRACKING`` in broadcasting mode) to a
      connection of the cache's own; each read first drains those messages without blocking
      and drops what they name, then serves what is left without a round trip (after a
      burst of names larger than the socket buffers, the feed first catches up to a
      ``PING``'s answer: one round trip). A flush, or the connection lost, drops
      everything. What a hit may miss: a change whose message is still in flight when the
      read starts (a write acknowledged to its writer a moment earlier), or, on a network
      path that died silently, up to two heartbeats (~1 s) of changes; while the feed is
      not live the cache revalidates as below.
    - ``tracking=False``, or a store without tracking (the Redis Cluster store): every state
      write of partition ``p`` carries its fence ``f:<p>`` — which only grows — and write
      time ``u:<p>`` in the same HSET as its tiles (``engine.online.encode_fields``), and
      evictions ride along with a write; so while those marks and the field count are
      unchanged, so are the tiles. A held entry is revalidated in the read's one round trip
      (``RevalidatingStore.load_changed``: compared inside Redis, an unchanged hash is not
      sent): never stale, one round trip per read.
    """

    __slots__ = ("_attached_ns", "_by_key", "_dropped", "_entries", "_feed", "_feed_store",
                 "_floor", "_flushed", "_seq", "max_entries", "tracking")  # fmt: skip

    def __init__(self, max_entries: int = 50_000, *, tracking: bool = True) -> None:
        self.max_entries = max_entries
        self.tracking = tracking
        self._entries: dict[
            tuple[str, tuple[int, ...]],
            tuple[int, frozenset[tuple[bytes, bytes]], tuple[int, ...], _Got, Held],
        ] = {}
        self._by_key: dict[bytes, list[tuple[str, tuple[int, ...]]]] = {}  # Redis key → entries
        self._feed: InvalidationFeed | None = None
        self._feed_store: object = None  # the store the feed is of
        self._attached_ns = 0  # when the store was last asked for a feed
        self._seq = 0  # bumped by every batch of invalidations and every flush
        self._flushed = 0  # seq of the last flush
        self._floor = 0  # invalidations at or before this seq are no longer in _dropped
        self._dropped: dict[bytes, int] = {}  # key → seq of its last invalidation

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def seq(self) -> int:
        """A counter of invalidations seen: ``put(..., since=seq)`` before a load."""
        return self._seq

    def sync(self, store: object) -> bool:
        """Drain the invalidations the store sent since the last call and drop what they name;
        True when what is held may be served without asking the store (``tracking`` on, the
        store a ``TrackingStore`` whose feed is live)."""
        if not self.tracking:
            return False
        feed = self._feed
        if feed is None or self._feed_store is not store:
            feed = self._attach(store)
            if feed is None:
                return False
        flushed, keys, trusted = feed.poll()
        if flushed:
            self._seq += 1
            self._flushed = self._seq
            self._entries.clear()
            self._by_key.clear()
        if keys:
            self._seq = seq = self._seq + 1
            dropped, by_key, entries = self._dropped, self._by_key, self._entries
            if len(dropped) + len(keys) > _DROPPED_MAX:
                dropped.clear()
                self._floor = seq
            for key in keys:
                dropped[key] = seq
                held = by_key.pop(key, None)
                if held is not None:
                    for entry in held:
                        entries.pop(entry, None)
        return trusted

    def _attach(self, store: object) -> InvalidationFeed | None:
        if self._feed_store is not store:
            self.close()
            self.clear()
            self._feed_store = store
            self._attached_ns = 0
        now = time.monotonic_ns()
        if self._attached_ns and now - self._attached_ns < _ATTACH_EVERY_NS:
            return None
        self._attached_ns = now
        make = getattr(store, "invalidations", None)  # TrackingStore
        self._feed = None if make is None else make()
        return self._feed

    def catch_up(self) -> None:
        """Make the next tracked read first catch up with every write Redis acknowledged
        before this call, by any client (a ``PING`` round trip on the feed): what a hit may
        otherwise miss is a change whose invalidation is still in flight. No-op without a
        feed (revalidating reads ask Redis anyway)."""
        if self._feed is not None:
            self._feed.expect_changes()

    def close(self) -> None:
        """Close the invalidation feed (a later tracked read opens one again)."""
        feed, self._feed, self._feed_store = self._feed, None, None
        if feed is not None:
            feed.close()

    @staticmethod
    def _marks(fields: Mapping[bytes, bytes]) -> frozenset[tuple[bytes, bytes]]:
        kinds = _MARK_KINDS
        return frozenset((n, v) for n, v in fields.items() if n[0] in kinds)

    def get(
        self,
        key: str,
        indices: tuple[int, ...],
        count: int,
        marks: Callable[[int], frozenset[tuple[bytes, bytes]]],
        slot: int,
        ends: tuple[int, ...],
    ) -> _Got | None:
        """The values held for ``key`` if its hash (``count`` fields, mark fields
        ``marks(slot)``, asked only when all else matches) and the window ends are as then."""
        entry = self._entries.get((key, indices))
        if entry is None or entry[0] != count or entry[2] != ends or entry[1] != marks(slot):
            return None
        return entry[3]

    def held(
        self, key: str, indices: tuple[int, ...], ends: tuple[int, ...]
    ) -> tuple[Held, _Got] | None:
        """What to revalidate ``key`` with, and the values that hold if it is current."""
        entry = self._entries.get((key, indices))
        if entry is None or entry[2] != ends:
            return None
        return entry[4], entry[3]

    def put(
        self,
        key: str,
        indices: tuple[int, ...],
        count: int | None,
        marks: frozenset[tuple[bytes, bytes]],
        ends: tuple[int, ...],
        got: _Got,
        *,
        since: int | None = None,
    ) -> None:
        """Hold ``got``, the values of ``key``'s hash of ``count`` fields and mark fields
        ``marks`` as of window ends ``ends`` — unless, with ``since`` (``seq`` before the
        load), an invalidation of ``key`` or a flush came after it (the value may be older)."""
        if any(isinstance(v, list) for v in got[0]):
            return
        name = key.encode()
        if since is not None and (
            self._flushed > since or self._floor > since or self._dropped.get(name, 0) > since
        ):
            return
        entries = self._entries
        if len(entries) >= self.max_entries:
            by_key = self._by_key
            for old in list(itertools.islice(entries, max(1, self.max_entries // 8))):
                entries.pop(old, None)
                same = by_key.get(old[0].encode())
                if same is not None:
                    if old in same:
                        same.remove(old)
                    if not same:
                        del by_key[old[0].encode()]
        count = count or 0
        entry = (key, indices)
        if entry not in entries:
            self._by_key.setdefault(name, []).append(entry)
        entries[entry] = (count, marks, ends, got, (count, tuple(marks)))

    def clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()


def _columns(entity_rows: EntityRows, prepared: ReadPlan) -> dict[str, list[Any]]:
    """Validated join-key columns (row-major input is transposed); values are not coerced."""
    kinds = prepared.key_kinds
    out: dict[str, list[Any]] = {}
    if isinstance(entity_rows, Mapping):
        n: int | None = None
        for key, kind in kinds.items():
            if key not in entity_rows:
                raise InputDataError(
                    f"entity rows have no column {key!r}, a join key needed by "
                    f"{_needed_by(prepared, key)}; columns: {sorted(map(str, entity_rows))}"
                )
            column = entity_rows[key]
            if isinstance(column, str | bytes) or not isinstance(column, Sequence):
                raise InputDataError(
                    f"entity column {key!r} must be a list of values, got {type(column).__name__}"
                )
            if n is None:
                n = len(column)
            elif len(column) != n:
                raise InputDataError(
                    f"entity columns differ in length: {key!r} has {len(column)} values, "
                    f"{next(iter(out))!r} has {n}"
                )
            bounds = prepared.key_ranges.get(key)
            out[key] = [_checked(v, kind, r, key, bounds) for r, v in enumerate(column)]
        return out
    if isinstance(entity_rows, str | bytes) or not isinstance(entity_rows, Sequence):
        raise InputDataError(
            "entity_rows must be a list of {join_key: value} dicts or a dict of columns, "
            f"got {type(entity_rows).__name__}"
        )
    if all(type(row) is dict for row in entity_rows):  # the common case, checked in C
        try:
            for key, kind in kinds.items():
                column = [row[key] for row in entity_rows]
                wanted = str if kind == "str" else int if kind == "int" else None
                if wanted is None or not all(type(v) is wanted for v in column):
                    raise KeyError(key)  # something to check value by value
                bounds = prepared.key_ranges.get(key)
                if (
                    bounds is not None
                    and column
                    and (min(column) < bounds[0] or max(column) > bounds[1])
                ):
                    raise KeyError(key)  # out of range: the row-by-row path names it
                out[key] = column
            return out
        except KeyError:
            out.clear()
    for key in kinds:
        out[key] = []
    for r, row in enumerate(entity_rows):
        if not isinstance(row, Mapping):
            raise InputDataError(
                f"entity row {r}: expected a {{join_key: value}} dict, got {type(row).__name__}"
            )
        for key, kind in kinds.items():
            try:
                value = row[key]
            except KeyError:
                raise InputDataError(
                    f"entity row {r}: missing join key {key!r} needed by "
                    f"{_needed_by(prepared, key)}; the row has: {sorted(map(str, row))}"
                ) from None
            out[key].append(_checked(value, kind, r, key, prepared.key_ranges.get(key)))
    return out


def _checked(
    value: Any, kind: str | None, row: int, key: str, bounds: tuple[int, int] | None = None
) -> Any:
    cls = type(value)
    if kind == "str" and cls is str:
        return value
    if kind == "int" and cls is int:
        return _in_range(value, row, key, bounds)
    if value is None:
        raise InputDataError(f"entity row {row}: join key {key!r} is null")
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and not isinstance(value, bool | float | str):
        try:
            integer = operator.index(value)  # numpy integers: the same integer, not a coercion
        except TypeError:
            pass
        else:
            return _in_range(integer, row, key, bounds)
    if kind is None and isinstance(value, str | int) and not isinstance(value, bool):
        return value
    expected = {"str": "a string", "int": "an integer"}.get(kind or "", "a string or an integer")
    raise InputDataError(
        f"entity row {row}: join key {key!r} must be {expected}, got {cls.__name__} {value!r}"
    )


def _in_range(value: int, row: int, key: str, bounds: tuple[int, int] | None) -> int:
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise InputDataError(f"entity row {row}: join key {key!r} is {value}, {outside(bounds)}")
    return value


def _needed_by(prepared: ReadPlan, key: str) -> str:
    names = [r.view.name for r in prepared.views if key in r.view.join_keys]
    return "view " + ", ".join(repr(n) for n in names)


class OnlineResponse:
    """What ``FeatureStore.get_online_features`` returns: columns of join keys and features.

    Feature columns are named by the feature (``amount_sum_30d``) or, with
    ``full_feature_names``, ``<view>__<feature>``. With ``with_freshness`` each feature
    column ``C`` gains ``C__freshness_ms``: the epoch-ms time of the newest write to that
    entity's state in the feature's view (None when the store holds nothing for it).
    ``freshness_ms`` always maps view name → per-row write times; ``statuses`` maps each
    feature column → per-row ``FeatureStatus``, which ``to_dict(include_status=True)`` adds
    as ``C__status`` columns.

    Example:
        >>> resp = store.get_online_features(["customer_spend:amount_sum_30d"],
        ...                                  [{"customer_id": "c1"}, {"customer_id": "c99"}])  # doctest: +SKIP
        >>> resp.to_dict()  # doctest: +SKIP
        {'customer_id': ['c1', 'c99'], 'amount_sum_30d': [42.5, 0.0]}
        >>> resp.to_dict(include_status=True)["amount_sum_30d__status"]  # doctest: +SKIP
        [<FeatureStatus.PRESENT: 'PRESENT'>, <FeatureStatus.NOT_FOUND: 'NOT_FOUND'>]
    """

    __slots__ = ("columns", "result", "with_freshness")

    def __init__(
        self,
        result: OnlineResult,
        *,
        full_feature_names: bool = False,
        with_freshness: bool = False,
    ) -> None:
        prepared = result.plan
        names = (
            [f"{v}__{f}" for v, f in zip(prepared.feature_views, prepared.features, strict=True)]
            if full_feature_names
            else list(prepared.features)
        )
        taken = set(prepared.join_keys)
        for name in names:
            if name in taken:
                raise InputDataError(
                    f"output column {name!r} would appear twice (a feature of two views, or a "
                    "join key); use full_feature_names=True"
                )
            taken.add(name)
        self.result = result
        self.columns: tuple[str, ...] = tuple(names)
        self.with_freshness = with_freshness

    @property
    def freshness_ms(self) -> Mapping[str, list[int | None]]:
        """View name → per-row epoch-ms time of the newest write (None: nothing stored)."""
        return self.result.freshness_ms

    @property
    def statuses(self) -> dict[str, list[FeatureStatus]]:
        """Feature column name (as in ``to_dict``) → per-row ``FeatureStatus`` of its values."""
        return dict(zip(self.columns, self.result.statuses, strict=True))

    def to_dict(self, *, include_status: bool = False) -> dict[str, list[Any]]:
        """``{join_key: [...], feature: [...], …}``, rows in input order (lists are fresh).

        With ``with_freshness`` (set on the read) the ``<feature>__freshness_ms`` columns
        follow; ``include_status=True`` then adds one ``<feature>__status`` column per
        feature (``FeatureStatus`` members, which are strings).
        """
        result = self.result
        out: dict[str, list[Any]] = {k: list(v) for k, v in result.entities.items()}
        views = result.plan.feature_views
        for c, name in enumerate(self.columns):
            out[name] = list(result.values[c])
        if self.with_freshness:
            for c, name in enumerate(self.columns):
                out[name + FRESHNESS_SUFFIX] = list(result.freshness_ms[views[c]])
        if include_status:
            for name, statuses in zip(self.columns, result.statuses, strict=True):
                out[name + STATUS_SUFFIX] = statuses
        return out

    def to_df(self, *, include_status: bool = False) -> pd.DataFrame:
        """The same columns as ``to_dict`` as a pandas DataFrame (status columns hold the
        status names as strings)."""
        import pandas as pd

        frame = self.to_dict(include_status=include_status)
        if include_status:
            for name in self.columns:
                frame[name + STATUS_SUFFIX] = list(
                    map(_PLAIN.__getitem__, frame[name + STATUS_SUFFIX])
                )
        return pd.DataFrame(frame)

    def to_json(self) -> dict[str, Any]:
        """The JSON document of the HTTP API and ``skewless get --json`` (docs/online.md).

        ``{"metadata": {"feature_names": [join keys…, features…], "now_ms": t},
        "results": [{"values": [...], "statuses": [...]}, … {"values": [...],
        "statuses": [...], "freshness_ms": [...]}]}`` — one result per name, values per
        entity row, Feast's shape; join keys' statuses are all ``"PRESENT"``; bytes values
        are base64 strings.
        """
        result = self.result
        results: list[dict[str, Any]] = [
            {
                "values": [_jsonable(v) for v in values],
                "statuses": [_PLAIN[FeatureStatus.PRESENT]] * len(values),
            }
            for values in result.entities.values()
        ]
        views = result.plan.feature_views
        statuses = result.statuses
        for c in range(len(self.columns)):
            results.append(
                {
                    "values": [_jsonable(v) for v in result.values[c]],
                    "statuses": list(map(_PLAIN.__getitem__, statuses[c])),
                    "freshness_ms": result.freshness_ms[views[c]],
                }
            )
        return {
            "metadata": {
                "feature_names": [*result.entities, *self.columns],
                "now_ms": result.now_ms,
            },
            "results": results,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
