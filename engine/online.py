"""The online-state layout (DESIGN §4): how an entity's tiles live in one Redis hash.

Pure functions — no Redis client here. One hash per (view fingerprint, entity):

    key   sk:<fingerprint>:{<entity>}      the braces are a Redis Cluster hash tag
    t:<p>:<hop_ms>:<k>   tile k of a hop group, written by the worker of source partition p
    l:<p>                lifetime accumulators from partition p
    f:<p>                fence: the last source offset of partition p applied to this entity
    u:<p>                processed_at (ms) of the newest write from partition p

One small hash per view fingerprint records its writes, for ``skewless status``:

    key   sk:stats:<fingerprint>       outside the entity keyspace ``sk:<fingerprint>:*``
    e:<p>                event time (ms) of the newest event in partition p's last write
    w:<p>                processed_at (ms) of partition p's last write

Fields are namespaced by source partition, so the workers of different partitions never
overwrite each other, even for a view whose entity is not the topic key; a read merges the
partitions' tiles with the kernel's ``merge`` (associative and commutative). A view on the
merge-on-write layout (``ViewPlan.merged``, ``online.merge_rekeyed_views``) keeps one tile
set instead, as slot 0, and its partitions' fences in a marks hash (``marks_key``). A changed
definition — or a new tile codec version — has a new fingerprint, hence a fresh keyspace.

Tiles are encoded, folded, evicted and evaluated by the native core
(``native/core/src/online.rs`` and ``codec.rs``); this module keeps the names and the
Python side of the layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine import _native
from engine.keys import encode_key
from engine.plan import ViewPlan
from engine.ports import StateWrite
from engine.processing import RowGroup, row_groups

PREFIX = "sk"
NO_FENCE = -(1 << 63)  # below every offset: imported history has negative offsets


def entity_text(entity: tuple[Any, ...]) -> str:
    """The entity as it appears in a key, with the hash-tag braces escaped."""
    text = encode_key(entity).decode("utf-8")
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def state_key(view: ViewPlan, entity: tuple[Any, ...]) -> str:
    """Redis key of one entity's state in one view."""
    return f"{PREFIX}:{view.fingerprint}:{{{entity_text(entity)}}}"


def marks_key(state_key: str) -> str:
    """The marks hash of an entity of a merge-on-write view (``ViewPlan.merged``), from its
    state key: ``sk:fm:<fingerprint>:{<entity>}``, outside ``keyspace_pattern``. It holds
    ``f:<p>`` (fence) and ``j:<p>`` (journal) of every source partition; the entity hash
    holds the one tile set as slot 0 (``t:0:<hop_ms>:<k>``, ``l:0``), ``f:0`` its write
    version (a compare-and-set on every write) and ``u:0`` the newest write time."""
    return f"{PREFIX}:fm:{state_key[len(PREFIX) + 1 :]}"


def marks_pattern(fingerprint: str) -> str:
    """SCAN pattern matching every marks hash of one (merge-on-write) view fingerprint."""
    return f"{PREFIX}:fm:{fingerprint}:*"


def keyspace_pattern(fingerprint: str) -> str:
    """SCAN pattern matching every key of one view fingerprint."""
    return f"{PREFIX}:{fingerprint}:*"


@dataclass(slots=True)
class PartitionState:
    """What one source partition has written for an entity: its fence and last write time."""

    fence: int = NO_FENCE
    updated_ms: int = 0


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def parse_state(
    view: ViewPlan, fields: Mapping[Any, bytes], partition: int | None = None
) -> dict[int, PartitionState]:
    """Partition fences and write times from a hash (only ``partition``'s when given).

    Tiles are the native core's business (``values_at``); this reads the marks only.
    """
    states: dict[int, PartitionState] = {}
    for raw_name, value in fields.items():
        parsed = field_name(raw_name)
        if parsed is None:
            continue
        kind, p, _, _ = parsed
        if partition is not None and p != partition:
            continue
        state = states.get(p)
        if state is None:
            state = states[p] = PartitionState()
        if kind == "f":
            state.fence = int(value)
        elif kind == "u":
            state.updated_ms = int(value)
    return states


_FIELD_NAMES: dict[Any, tuple[str, int, int, int] | None] = {}


def field_name(name: bytes | str) -> tuple[str, int, int, int] | None:
    """``(kind, partition, hop, k)`` of a state field name (hop and k 0 but for tiles);
    None for a name without a partition. Memoized: names repeat across entities."""
    try:
        return _FIELD_NAMES[name]
    except KeyError:
        pass
    kind, _, rest = _text(name).partition(":")
    p_text, _, tail = rest.partition(":")
    parsed: tuple[str, int, int, int] | None = None
    if p_text.isdigit():
        if kind == "t":
            hop_text, _, k_text = tail.partition(":")
            try:
                parsed = (kind, int(p_text), int(hop_text), int(k_text))
            except ValueError:  # not a tile field of this layout
                parsed = None
        elif not tail:
            parsed = (kind, int(p_text), 0, 0)
    if len(_FIELD_NAMES) >= 1 << 17:
        _FIELD_NAMES.clear()
    _FIELD_NAMES[name] = parsed
    return parsed


def tile_field(partition: int, hop_ms: int, k: int) -> str:
    return f"t:{partition}:{hop_ms}:{k}"


# -- the native core's view of a layout --------------------------------------------------------

AggSpec = tuple[str, str, int | None, int | None, int | None]


def functions_of(view: ViewPlan) -> list[AggSpec]:
    """``(function, column kind, n, window_ms, hop_ms)`` per aggregation, for the core."""
    kinds = view.input_kinds or ("str",) * len(view.aggregations)
    return [(a.function, kind, a.n, a.window_ms, a.hop_ms)
            for a, kind in zip(view.aggregations, kinds, strict=True)]  # fmt: skip


@dataclass(frozen=True, slots=True)
class CoreSpec:
    """The views of one source as the native ``OnlineCore`` takes them, and their row groups
    (views sharing a transform, filter and join keys; slot = position in ``views``)."""

    groups: tuple[RowGroup, ...]
    group_inputs: tuple[tuple[str, ...], ...]  # per group: the fields its views aggregate
    views: tuple[
        tuple[Any, ...], ...
    ]  # per view: (fingerprint, functions, group, inputs, lateness)
    merged: tuple[int, ...] = ()  # slots of the views on the merge-on-write layout

    def new_core(self, capacity: int) -> Any:
        groups = [(list(g.join_keys), list(inputs))
                  for g, inputs in zip(self.groups, self.group_inputs, strict=True)]  # fmt: skip
        core = _native.OnlineCore(list(self.views), groups, capacity)
        if self.merged:
            core.set_merged(list(self.merged))
        return core


def core_spec(views: Sequence[ViewPlan]) -> CoreSpec:
    """The ``CoreSpec`` of ``views`` (all of one source)."""
    groups = row_groups(views)
    group_of = {slot: g for g, group in enumerate(groups) for slot, _ in group.members}
    inputs: list[list[str]] = [[] for _ in groups]
    specs: list[tuple[Any, ...]] = []
    for slot, view in enumerate(views):
        g = group_of[slot]
        at = []
        for column in view.input_columns:
            if column not in inputs[g]:
                inputs[g].append(column)
            at.append(inputs[g].index(column))
        specs.append((view.fingerprint, functions_of(view), g, at, view.allowed_lateness_ms))
    merged = tuple(slot for slot, view in enumerate(views) if view.merged)
    return CoreSpec(groups, tuple(map(tuple, inputs)), tuple(specs), merged)


class EntityWrites(Sequence[StateWrite]):
    """A batch's writes: the entity writes the native core built (``engine._native.Writes``,
    packed into script calls natively by stores that can, ``PackedWrites``) and ``extra``
    writes built in Python. As a sequence it yields every write as a ``StateWrite``.
    """

    __slots__ = ("_all", "extra", "native")

    def __init__(self, native: Any, extra: Sequence[StateWrite] = ()) -> None:
        self.native = native
        self.extra = list(extra)
        self._all: list[StateWrite] | None = None

    def _materialized(self) -> list[StateWrite]:
        if self._all is None:
            self._all = [*map(write_of, self.native.to_list()), *self.extra]
        return self._all

    def __len__(self) -> int:
        return len(self.native) + len(self.extra)

    def __getitem__(self, i: Any) -> Any:
        return self._materialized()[i]

    def script_chunks(self, max_args: int) -> list[tuple[int, int, int, bytes]]:
        return list(self.native.script_chunks(max_args))

    def slot_chunks(
        self, max_args: int
    ) -> tuple[list[int], list[tuple[int, int, int, int, bytes, bytes]]]:
        """The native writes grouped by Redis Cluster slot into write-script calls: the write
        order and ``(slot, elements, first, count, keys, arguments)`` per call, its writes
        ``order[first:first + count]`` (``extra`` apart; RESP bulk strings)."""
        order, chunks = self.native.slot_chunks(max_args)
        return list(order), list(chunks)

    def key(self, i: int) -> str:
        return str(self.native.key(i))


def write_of(raw: tuple[Any, ...]) -> StateWrite:
    """A ``StateWrite`` from the core's ``(key, fields, delete, expire_at_ms, expect)``."""
    key, fields, delete, expire_at_ms, expect = raw
    return StateWrite(key=key, fields=fields, delete=tuple(delete), expire_at_ms=expire_at_ms,
                      expect=None if expect is None else (expect[0], expect[1]))  # fmt: skip


def values_at(
    view: ViewPlan,
    hashes: Sequence[Mapping[Any, bytes]],
    t_ms: int,
    indices: Sequence[int] | None = None,
) -> list[list[Any]]:
    """Feature values as of ``t_ms`` of many entities of ``view``, from their stored hashes
    (empty for a missing entity: the empty-window defaults), in one native call.

    Raises CodecError when a tile holds bytes of another codec version or is corrupt.
    """
    wanted = list(range(len(view.aggregations)) if indices is None else indices)
    got = _native.online_values(functions_of(view), [dict(h) for h in hashes], t_ms, wanted)
    return [values for values, _ in got]


# -- per-view write stats ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionWriteStats:
    """What the last write of one source partition into a view recorded."""

    newest_event_ms: int  # event time of the newest event that write applied
    written_ms: int  # processed_at of that write


def stats_key(fingerprint: str) -> str:
    """Redis key of a view's write stats (never matched by ``keyspace_pattern``)."""
    return f"{PREFIX}:stats:{fingerprint}"


def stats_write(view: ViewPlan, newest_event_ms: Mapping[int, int], written_ms: int) -> StateWrite:
    """The stats update of one batch: per source partition it applied events of, the newest
    event time and the write time. One ``HSET`` riding in the batch's write pipeline."""
    fields: dict[str, bytes] = {}
    for partition, event_ms in newest_event_ms.items():
        fields[f"e:{partition}"] = str(event_ms).encode()
        fields[f"w:{partition}"] = str(written_ms).encode()
    return StateWrite(key=stats_key(view.fingerprint), fields=fields)


def parse_stats(fields: Mapping[Any, bytes]) -> dict[int, PartitionWriteStats]:
    """Partition → stats from a view's stats hash (partitions missing a field are skipped)."""
    raw: dict[int, dict[str, int]] = {}
    for name, value in fields.items():
        kind, _, p_text = _text(name).partition(":")
        if kind in ("e", "w") and p_text.isdigit():
            raw.setdefault(int(p_text), {})[kind] = int(value)
    return {
        p: PartitionWriteStats(newest_event_ms=got["e"], written_ms=got["w"])
        for p, got in sorted(raw.items())
        if "e" in got and "w" in got
    }
