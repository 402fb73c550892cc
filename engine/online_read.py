"""Online reads: many features of many entities and views as of ``now_ms``, in one store round trip.

The read path (DESIGN §3, "an online read at wall time t returns the processing-time value
at t"): resolve the refs (memoized per tuple of refs), build each (view, entity) key with
``engine.online.state_key``, fetch every hash with ONE ``OnlineStateStore.load``, and
evaluate each hash as of ``now_ms`` with ``engine.online_eval.WindowReader``: the native core
decodes only the tiles the requested windows cover (``ceil(t/H) - W/H <= k < ceil(t/H)``,
the bounds the backfill's sweep uses), merges them over tiles and partitions and finalizes —
the same kernel the worker folds with and the backfill replays. A missing entity reads as an empty window
(counts and sums 0, everything else None); it is not an error.

Freshness of a (row, view) is the newest ``processed_at`` any partition wrote for that
entity (``u:<p>`` fields), in epoch milliseconds — a timestamp, not an age; None when the
store holds nothing for the entity.

``ReadCache`` keeps finalized values of recently read entities; with a store that can
revalidate (``RevalidatingStore.load_changed``) an unchanged entity is confirmed inside
Redis and not even sent. No Redis and no pandas here (``OnlineResponse.to_df`` imports
pandas when called).
"""

from __future__ import annotations

import base64
import itertools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from engine.errors import CodecError, InputDataError
from engine.kernel.tiles import window_end
from engine.online import state_key, values_at
from engine.online_eval import WindowAt, WindowReader
from engine.plan import Plan, ViewPlan
from engine.ports import OnlineStateStore

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EntityRows",
    "FRESHNESS_SUFFIX",
    "OnlineResponse",
    "OnlineResult",
    "Held",
    "ReadCache",
    "RevalidatingStore",
    "ReadPlan",
    "prepare_read",
    "read_online",
]

EntityRows = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
"""Entity rows as a list of ``{join_key: value}`` dicts, or columns ``{join_key: [values]}``."""

FRESHNESS_SUFFIX = "__freshness_ms"
_PREPARED_MAX = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewRead:
    """The part of a read that touches one view: which aggregations, into which columns."""

    view: ViewPlan
    indices: tuple[int, ...]  # aggregation indices, in request order
    columns: tuple[int, ...]  # output column of each index
    key_kinds: tuple[str | None, ...]  # "str"/"int" per join key (None: declared by a transform)
    hops_ms: tuple[int, ...]  # the layout's hop groups: the window moves only at their boundaries
    reader: WindowReader  # evaluates a hash; memoizes what field names mean (never a value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadPlan:
    """Resolved refs: the views to read and how the output columns are named."""

    refs: tuple[str, ...]
    views: tuple[ViewRead, ...]
    features: tuple[str, ...]  # per output column: the feature name
    feature_views: tuple[str, ...]  # per output column: its view
    join_keys: tuple[str, ...]  # every join key the views need, first-seen order
    key_kinds: Mapping[str, str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class OnlineResult:
    """Feature values per output column and row, the join keys as given, and freshness.

    ``values[c][r]`` is column ``c`` (``plan.features[c]``) of row ``r``;
    ``freshness_ms[view][r]`` is the newest write time of row ``r``'s entity in ``view``.
    """

    plan: ReadPlan
    now_ms: int
    entities: Mapping[str, list[Any]]
    values: list[list[Any]]
    freshness_ms: Mapping[str, list[int | None]]

    @property
    def rows(self) -> int:
        return len(self.values[0]) if self.values else 0


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
        reads.append(
            ViewRead(
                view=view,
                indices=tuple(indices),
                columns=tuple(columns),
                key_kinds=kinds,
                hops_ms=tuple(g.hop_ms for g in view.layout.groups),
                reader=WindowReader(view, tuple(indices)),
            )
        )
    return ReadPlan(
        refs=refs,
        views=tuple(reads),
        features=tuple(view.aggregations[i].feature for view, i in resolved),
        feature_views=tuple(view.name for view, _ in resolved),
        join_keys=tuple(join_keys),
        key_kinds=join_keys,
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
    """Features ``refs`` of every entity row as of ``now_ms``, with one store call (one round trip).

    With a ``cache``, an entity whose stored state and window boundaries are unchanged since
    an earlier read is not decoded again (see ``ReadCache``); the answer is the same.

    Raises FeatureRefError for unknown refs, InputDataError for a row that lacks a join key
    or holds a value of the wrong kind (nothing is coerced: ``"7"`` is not the int key 7),
    OnlineStoreUnavailable from the store, CodecError for corrupt stored tiles.

    Example:
        >>> result = read_online(plan, store, ["customer_spend:amount_sum_30d"],
        ...                      [{"customer_id": "c1"}], now_ms=1_767_225_600_000)  # doctest: +SKIP
        >>> result.values[0]  # doctest: +SKIP
        [42.5]
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
        for entity in zip(*key_columns, strict=True):
            key = state_key(read.view, entity)
            slot = keys.get(key)
            if slot is None:
                slot = keys[key] = len(keys)
            slots.append(slot)
        row_keys.append(slots)
        all_ends.append(tuple(window_end(h, now_ms) for h in read.hops_ms))
    slot_keys = list(keys)
    hashes: Sequence[Mapping[bytes, bytes] | None] = []
    confirmed: dict[int, tuple[list[Any], int | None]] = {}  # held values, by slot
    if slot_keys:
        load_changed = None if cache is None else getattr(store, "load_changed", None)
        if load_changed is not None and cache is not None:
            held: list[Held | None] = [None] * len(slot_keys)
            for read, slots, ends in zip(prepared.views, row_keys, all_ends, strict=True):
                for slot in slots:
                    hit = cache.held(slot_keys[slot], read.indices, ends)
                    if hit is not None:
                        held[slot], confirmed[slot] = hit
            hashes = load_changed(slot_keys, held)
        else:
            hashes = store.load(slot_keys)
    values: list[list[Any]] = [[None] * n for _ in prepared.features]
    freshness: dict[str, list[int | None]] = {}
    for read, slots, ends in zip(prepared.views, row_keys, all_ends, strict=True):
        view = read.view
        at = read.reader.at(now_ms)
        done: dict[int, tuple[list[Any], int | None]] = {}
        pending: list[int] = []  # slots to evaluate, in one native call
        empty: tuple[list[Any], int | None] | None = None
        for slot in dict.fromkeys(slots):
            fields = hashes[slot]
            if fields is None:  # unchanged since the cached read (load_changed)
                done[slot] = confirmed[slot]
            elif not fields:
                if empty is None:
                    empty = (values_at(view, [{}], now_ms, read.indices)[0], None)
                done[slot] = (list(empty[0]), None)
            else:
                got = None
                if cache is not None:
                    got = cache.get(slot_keys[slot], read.indices, fields, ends)
                if got is None:
                    pending.append(slot)
                else:
                    done[slot] = got
        if pending:
            for slot, got in zip(pending, _evaluate_many(at, slot_keys, hashes, pending),
                                 strict=True):  # fmt: skip
                done[slot] = got
                if cache is not None:
                    cache.put(slot_keys[slot], read.indices, hashes[slot], ends, got)  # type: ignore[arg-type]
        fresh: list[int | None] = [None] * n
        for r, slot in enumerate(slots):
            row_values, fresh[r] = done[slot]
            for c, value in zip(read.columns, row_values, strict=True):
                values[c][r] = value
        freshness[view.name] = fresh
    entities = {k: columns[k] for k in prepared.join_keys}
    return OnlineResult(
        plan=prepared, now_ms=now_ms, entities=entities, values=values, freshness_ms=freshness
    )


def _evaluate_many(
    at: WindowAt,
    keys: Sequence[str],
    hashes: Sequence[Mapping[bytes, bytes] | None],
    slots: Sequence[int],
) -> list[tuple[list[Any], int | None]]:
    """The values and freshness of many entities' hashes in one native call; a corrupt
    tile's error names its Redis key."""
    try:
        return at.evaluate_many([hashes[s] or {} for s in slots])
    except CodecError:
        for slot in slots:  # find the entity whose tile failed, to name it
            try:
                at.evaluate(hashes[slot] or {})
            except CodecError as exc:
                raise CodecError(f"Redis key {keys[slot]!r}: {exc}") from exc
        raise


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


_MARK_KINDS = frozenset(b"fu")  # fence and write time: rewritten with every tile change


class ReadCache:
    """Finalized values of recently read entities, reused while nothing they depend on moved.

    A value as of ``t`` is a pure function of the entity's stored fields and, per hop group,
    of ``ceil(t / hop)`` (``kernel.tiles.window_states``). Every state write of partition
    ``p`` carries its fence ``f:<p>`` — which only grows, as a write applies at least one
    newer offset — and write time ``u:<p>`` in the same HSET as its tiles
    (``engine.online.encode_fields``, ``stream.core``), and evictions ride along with a
    write; so while those marks and the field count are unchanged, so are the tiles. An
    entry is reused only when the marks and the window boundaries match; values that are
    lists (first_n/last_n) are never cached, so callers may mutate what they get. With a
    store that has ``load_changed`` (``RevalidatingStore``), the marks are compared inside
    Redis and an unchanged hash is not even sent.
    At most ``max_entries`` (entity, feature set) entries are held, oldest dropped first.
    """

    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[
            tuple[str, tuple[int, ...]],
            tuple[
                int, frozenset[tuple[bytes, bytes]], tuple[int, ...], tuple[list[Any], int | None]
            ],
        ] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _marks(fields: Mapping[bytes, bytes]) -> frozenset[tuple[bytes, bytes]]:
        kinds = _MARK_KINDS
        return frozenset((n, v) for n, v in fields.items() if n[0] in kinds)

    def get(
        self,
        key: str,
        indices: tuple[int, ...],
        fields: Mapping[bytes, bytes],
        ends: tuple[int, ...],
    ) -> tuple[list[Any], int | None] | None:
        entry = self._entries.get((key, indices))
        if (
            entry is None
            or entry[0] != len(fields)
            or entry[2] != ends
            or entry[1] != self._marks(fields)
        ):
            return None
        return entry[3]

    def held(
        self, key: str, indices: tuple[int, ...], ends: tuple[int, ...]
    ) -> tuple[Held, tuple[list[Any], int | None]] | None:
        """What to revalidate ``key`` with, and the values that hold if it is current."""
        entry = self._entries.get((key, indices))
        if entry is None or entry[2] != ends:
            return None
        return (entry[0], tuple(entry[1])), entry[3]

    def put(
        self,
        key: str,
        indices: tuple[int, ...],
        fields: Mapping[bytes, bytes],
        ends: tuple[int, ...],
        got: tuple[list[Any], int | None],
    ) -> None:
        if any(isinstance(v, list) for v in got[0]):
            return
        entries = self._entries
        if len(entries) >= self.max_entries:
            for old in list(itertools.islice(entries, max(1, self.max_entries // 8))):
                entries.pop(old, None)
        entries[(key, indices)] = (len(fields), self._marks(fields), ends, got)

    def clear(self) -> None:
        self._entries.clear()


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
            out[key] = [_checked(v, kind, r, key) for r, v in enumerate(column)]
        return out
    if isinstance(entity_rows, str | bytes) or not isinstance(entity_rows, Sequence):
        raise InputDataError(
            "entity_rows must be a list of {join_key: value} dicts or a dict of columns, "
            f"got {type(entity_rows).__name__}"
        )
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
            out[key].append(_checked(value, kind, r, key))
    return out


def _checked(value: Any, kind: str | None, row: int, key: str) -> Any:
    cls = type(value)
    if (kind == "str" and cls is str) or (kind == "int" and cls is int):
        return value
    if value is None:
        raise InputDataError(f"entity row {row}: join key {key!r} is null")
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and not isinstance(value, bool | float | str):
        try:
            return operator.index(value)  # numpy integers: the same integer, not a coercion
        except TypeError:
            pass
    if kind is None and isinstance(value, str | int) and not isinstance(value, bool):
        return value
    expected = {"str": "a string", "int": "an integer"}.get(kind or "", "a string or an integer")
    raise InputDataError(
        f"entity row {row}: join key {key!r} must be {expected}, got {cls.__name__} {value!r}"
    )


def _needed_by(prepared: ReadPlan, key: str) -> str:
    names = [r.view.name for r in prepared.views if key in r.view.join_keys]
    return "view " + ", ".join(repr(n) for n in names)


class OnlineResponse:
    """What ``FeatureStore.get_online_features`` returns: columns of join keys and features.

    Feature columns are named by the feature (``amount_sum_30d``) or, with
    ``full_feature_names``, ``<view>__<feature>``. With ``with_freshness`` each feature
    column ``C`` gains ``C__freshness_ms``: the epoch-ms time of the newest write to that
    entity's state in the feature's view (None when the store holds nothing for it).
    ``freshness_ms`` always maps view name → per-row write times.

    Example:
        >>> resp = store.get_online_features(["customer_spend:amount_sum_30d"],
        ...                                  [{"customer_id": "c1"}])  # doctest: +SKIP
        >>> resp.to_dict()  # doctest: +SKIP
        {'customer_id': ['c1'], 'amount_sum_30d': [42.5]}
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

    def to_dict(self) -> dict[str, list[Any]]:
        """``{join_key: [...], feature: [...], …}``, rows in input order (lists are fresh)."""
        result = self.result
        out: dict[str, list[Any]] = {k: list(v) for k, v in result.entities.items()}
        views = result.plan.feature_views
        for c, name in enumerate(self.columns):
            out[name] = list(result.values[c])
        if self.with_freshness:
            for c, name in enumerate(self.columns):
                out[name + FRESHNESS_SUFFIX] = list(result.freshness_ms[views[c]])
        return out

    def to_df(self) -> pd.DataFrame:
        """The same columns as ``to_dict`` as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.to_dict())

    def to_json(self) -> dict[str, Any]:
        """The JSON document of the HTTP API and ``skewless get --json`` (docs/online.md).

        ``{"metadata": {"feature_names": [join keys…, features…], "now_ms": t},
        "results": [{"values": [...]}, … {"values": [...], "freshness_ms": [...]}]}`` —
        one result per name, values per entity row; bytes values are base64 strings.
        """
        result = self.result
        results: list[dict[str, Any]] = [
            {"values": [_jsonable(v) for v in values]} for values in result.entities.values()
        ]
        views = result.plan.feature_views
        for c in range(len(self.columns)):
            results.append(
                {
                    "values": [_jsonable(v) for v in result.values[c]],
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
