"""The backfill runner: replay the event log through the native core's sweep, one value per label.

Every label gets each wanted feature as of its own time ``t``: exactly the admitted records
whose clock (event time or processing time, by mode) is ``< t`` are folded, with the same
kernel the stream worker and the online reader use (``engine._native``, DESIGN §3 and §8).

How it runs (docs/backfill.md):

1. The labels' entities become codes, one table per distinct set of join-key columns.
2. Views that see the same rows (same source, join keys, transform and filter) form a row
   group. A group without a transform or filter is *native*: the core decodes the event-log
   files itself and keeps, per group, the records of labelled entities that some label can
   still see, as compact columns. A group with a row transform or filter is fed by Python
   (the slow path): each logged record goes through the transform, then its keys and
   inputs go to the core in chunks.
3. Partitions are read concurrently by ``workers`` threads; decoding runs in the core with
   the GIL released, so threads (not forked processes) give the parallelism.
4. ``finish`` sorts each group's records by (entity, clock) and each view's labels by
   (entity, time), and sweeps every entity on its own, in parallel inside the core. An
   entity's records from all partitions meet there, so views keyed by another entity than
   their topic need no merge step, and the result does not depend on the thread count, the
   partitioning or the order in which files were read.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from engine import _native
from engine.envelope import Envelope
from engine.log_columns import decode_log_file
from engine.log_files import LogFiles, read_partition
from engine.plan import Plan, ViewPlan
from engine.ports import EventLogSource
from engine.processing import EntityKey, RowGroup, group_cells, user_code_input

Mode = Literal["event_time", "processing_time"]
MODES: tuple[Mode, ...] = ("event_time", "processing_time")
Progress = Callable[[int, int], None]
"""Called with (records read since the last call, partitions finished since the last call)."""

DEFAULT_SPILL_ITEMS = 1_000_000
"""Accepted for compatibility; the native sweep holds only the records some label can see."""

_ROWS_CHUNK = 65_536  # records of a Python-fed group handed to the core at a time
_I64_MIN, _I64_END = -(1 << 63), 1 << 63

Int64s = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewRequest:
    """Labels for one view: entity and time per label, and the aggregations wanted.

    ``entities`` may be an ``EntityColumns`` (one sequence per join key, no tuple per
    label) and ``times_ms`` a numpy int64 array; requests sharing the same ``entities``
    object share one entity table.
    """

    view: str
    entities: Sequence[EntityKey]
    times_ms: Sequence[int] | Int64s
    indices: tuple[int, ...]


class EntityColumns(Sequence[EntityKey]):
    """Entity keys as one sequence per join key: row ``i`` is ``tuple(c[i] for c in columns)``.

    Example:
        >>> keys = EntityColumns((["c1", "c2"], [7, 8]))
        >>> len(keys), keys[1], list(keys)
        (2, ('c2', 8), [('c1', 7), ('c2', 8)])
    """

    __slots__ = ("columns",)

    def __init__(self, columns: Sequence[Sequence[Any]]) -> None:
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            raise ValueError(f"entity key columns must have one equal length, got {lengths}")
        self.columns = tuple(columns)

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [tuple(c[j] for c in self.columns) for j in range(*i.indices(len(self)))]
        return tuple(c[i] for c in self.columns)

    def __iter__(self) -> Iterator[EntityKey]:
        return zip(*self.columns, strict=True)


@dataclass(frozen=True, slots=True)
class _Table:
    """Distinct entities of some requests (code -> key) and each label's code."""

    entities: list[EntityKey]
    codes: Int64s


@dataclass(frozen=True, slots=True)
class _Labels:
    table: int  # index into the tables
    times: Int64s


def _tables(requests: Sequence[ViewRequest]) -> tuple[tuple[_Table, ...], tuple[_Labels, ...]]:
    """Entity codes and int64 times of every request; one table per distinct ``entities``."""
    tables: list[_Table] = []
    by_entities: dict[int, int] = {}
    times: dict[int, Int64s] = {}
    labels: list[_Labels] = []
    for req in requests:
        t = by_entities.get(id(req.entities))
        if t is None:
            t = by_entities[id(req.entities)] = len(tables)
            tables.append(_encode(req.entities))
        got = times.get(id(req.times_ms))
        if got is None:
            got = times[id(req.times_ms)] = np.asarray(req.times_ms, dtype=np.int64)
        if len(got) != len(req.entities):
            raise ValueError(
                f"view {req.view!r} request: {len(req.entities)} entities but "
                f"{len(got)} times (expected one time per label)"
            )
        labels.append(_Labels(t, got))
    return tuple(tables), tuple(labels)


def _encode(entities: Sequence[EntityKey]) -> _Table:
    """Each label's entity as a code into the distinct entities (in order of first sight)."""
    if isinstance(entities, EntityColumns):
        table = _encode_columns(entities.columns)
        if table is not None:
            return table
    keys: dict[EntityKey, int] = {}
    setdefault = keys.setdefault
    codes = np.fromiter(
        (setdefault(e, len(keys)) for e in entities), dtype=np.int64, count=len(entities)
    )
    return _Table(list(keys), codes)


def _encode_columns(columns: Sequence[Sequence[Any]]) -> _Table | None:
    """``_encode`` by Arrow's hash encoding when every key column is all str or all int64
    (where Arrow's equality is Python's); ``None`` otherwise (bools, floats, mixed types)."""
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs

    parts: list[tuple[Int64s, list[Any]]] = []
    for column in columns:
        try:
            array = pa.array(column)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return None
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
                or pa.types.is_int64(array.type)) or array.null_count:  # fmt: skip
            return None
        encoded = array.dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        parts.append((codes, encoded.dictionary.to_pylist()))
    if len(parts) == 1:
        codes, distinct = parts[0]
        return _Table([(v,) for v in distinct], codes)
    combined = np.zeros(len(parts[0][0]), dtype=np.int64)
    room = 1
    for codes, distinct in parts:
        room *= max(len(distinct), 1)
        if room >= 1 << 62:
            return None  # too many combinations for one int64: the dict way
        combined = combined * len(distinct) + codes
    encoded = pa.array(combined).dictionary_encode()
    first = encoded.dictionary.to_numpy()
    # the distinct combinations back to one index per part (last part varies fastest)
    index: list[Int64s] = []
    for _, distinct in reversed(parts):
        index.append(first % len(distinct))
        first = first // len(distinct)
    index.reverse()
    values = [[distinct[i] for i in idx.tolist()]
              for idx, (_, distinct) in zip(index, parts, strict=True)]  # fmt: skip
    entities = list(zip(*values, strict=True))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return _Table(entities, codes)


# ------------------------------------------------------------------------------------------
# output columns: a kind byte and an 8-byte value per label, objects aside

_NONE, _INT, _FLOAT, _BIG, _OBJECT = 0, 1, 2, 3, 4


class _ColumnWriter:
    """Finalized values of one feature in label order, appended compactly."""

    __slots__ = ("floats", "ints", "kinds", "others")

    def __init__(self) -> None:
        self.kinds = bytearray()
        self.ints = array("q")
        self.floats = array("d")
        self.others: list[Any] = []  # ints beyond int64 and every other object, in order

    def add(self, value: Any) -> None:
        kind = type(value)
        if kind is float:
            self.kinds.append(_FLOAT)
            self.floats.append(value)
        elif kind is int:
            if _I64_MIN <= value < _I64_END:
                self.kinds.append(_INT)
                self.ints.append(value)
            else:
                self.kinds.append(_BIG)
                self.others.append(value)
        elif value is None:
            self.kinds.append(_NONE)
        else:
            self.kinds.append(_OBJECT)
            self.others.append(value)


class _Column:
    """One feature over all labels of a request: kinds (uint8) and values (int64 bits)."""

    __slots__ = ("bits", "default", "kinds", "others")

    def __init__(self, n: int, default: Any) -> None:
        one = _ColumnWriter()
        one.add(default)
        self.kinds = np.full(n, one.kinds[0], dtype=np.uint8)
        self.bits = np.zeros(n, dtype=np.int64)
        if one.ints:
            self.bits[:] = one.ints[0]
        elif one.floats:
            self.bits.view(np.float64)[:] = one.floats[0]
        self.others: dict[int, Any] = {}
        self.default = default  # the value of a _BIG/_OBJECT row without an entry in others

    @classmethod
    def from_native(cls, n: int, kinds: bytes, bits: bytes, objects: list[Any]) -> _Column:
        """The core's output column (kinds 0 None, 1 int64, 2 float64, 3 object)."""
        column = cls.__new__(cls)
        column.kinds = np.frombuffer(kinds, dtype=np.uint8).copy()
        column.bits = np.frombuffer(bits, dtype=np.int64).copy()
        if len(column.kinds) != n:
            raise ValueError(f"native sweep gave {len(column.kinds)} values for {n} labels")
        column.others = {}
        column.default = None
        native_object = column.kinds == 3
        column.kinds[native_object] = _OBJECT
        for i, value in objects:
            if type(value) is int:  # an exact integer sum beyond int64
                column.kinds[i] = _BIG
            column.others[i] = value
        return column

    def put(
        self,
        idx: Int64s,
        kinds: npt.NDArray[np.uint8],
        ints: Int64s,
        floats: npt.NDArray[np.float64],
        others: Sequence[Any],
    ) -> None:
        """Write values at label indices ``idx`` (as appended by a ``_ColumnWriter``)."""
        self.kinds[idx] = kinds
        if len(ints):
            self.bits[idx[kinds == _INT]] = ints
        if len(floats):
            self.bits.view(np.float64)[idx[kinds == _FLOAT]] = floats
        if len(others):
            at = idx[kinds >= _BIG].tolist()
            for i, value in zip(at, others, strict=True):
                self.others[i] = value

    def write(self, idx: Int64s, writer: _ColumnWriter) -> None:
        self.put(
            idx,
            np.frombuffer(writer.kinds, dtype=np.uint8),
            np.frombuffer(writer.ints, dtype=np.int64),
            np.frombuffer(writer.floats, dtype=np.float64),
            writer.others,
        )

    def _objects(self, where: npt.NDArray[np.bool_]) -> Iterator[tuple[int, Any]]:
        for i in np.flatnonzero(where).tolist():
            yield i, self.others.get(i, self.default)

    def to_list(self) -> list[Any]:
        """The values as Python objects."""
        out: list[Any] = [None] * len(self.kinds)
        for kind, view in ((_INT, self.bits), (_FLOAT, self.bits.view(np.float64))):
            at = np.flatnonzero(self.kinds == kind)
            for i, value in zip(at.tolist(), view[at].tolist(), strict=True):
                out[i] = value
        for i, value in self._objects(self.kinds >= _BIG):
            out[i] = value
        return out

    def to_numpy(self) -> npt.NDArray[Any]:
        """int64 when every value is an int64 int; float64 (NaN for None) when every value
        is a number or None and one is a float; object otherwise."""
        kinds = self.kinds
        if bool((kinds == _INT).all()):
            return self.bits.copy()
        if not bool((kinds == _OBJECT).any()) and bool((kinds == _FLOAT).any()):
            out = np.full(len(kinds), np.nan)
            floats = kinds == _FLOAT
            out[floats] = self.bits.view(np.float64)[floats]
            ints = kinds == _INT
            out[ints] = self.bits[ints].astype(np.float64)  # rounds to nearest, as float()
            for i, value in self._objects(kinds == _BIG):
                out[i] = float(value)
            return out
        objects = np.empty(len(kinds), dtype=object)  # None everywhere
        ints = kinds == _INT
        objects[ints] = self.bits[ints].astype(object)
        floats = kinds == _FLOAT
        objects[floats] = self.bits.view(np.float64)[floats].astype(object)
        for i, value in self._objects(kinds >= _BIG):
            objects[i] = value
        return objects


# ------------------------------------------------------------------------------------------
# the runner


def run(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    *,
    mode: Mode,
    include_late: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
    spill_items: int = DEFAULT_SPILL_ITEMS,
) -> list[list[Any]]:
    """Finalized feature values: ``result[r][label][j]`` for request r's j-th index.

    Labels whose entity has no admitted event before their time get the empty-window
    defaults. Results are bit-identical for any worker count.
    """
    columns = _execute(plan, log, requests, mode, include_late, workers, progress)
    rows: list[list[Any]] = []
    for req, cols in zip(requests, columns, strict=True):
        values = [c.to_list() for c in cols]
        rows.append([list(row) for row in zip(*values, strict=True)] if values
                    else [[] for _ in range(len(req.entities))])  # fmt: skip
    return rows


def run_columns(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    *,
    mode: Mode,
    include_late: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
    spill_items: int = DEFAULT_SPILL_ITEMS,
) -> list[list[npt.NDArray[Any]]]:
    """``run``'s values as one numpy array per request and index, in label order.

    An array is int64 when every value is an int that fits, float64 (NaN for None) when
    every value is a number or None and one is a float, object otherwise.
    """
    columns = _execute(plan, log, requests, mode, include_late, workers, progress)
    return [[c.to_numpy() for c in cols] for cols in columns]


@dataclass(frozen=True, slots=True)
class _Group:
    """Views that see the same rows: what the core's group spec says, plus the Python side."""

    source: str
    table: int
    join_keys: tuple[str, ...]
    first_view: ViewPlan  # its transform and filter are the group's
    inputs: list[str]  # payload (or transformed row) fields the group's views read

    @property
    def row_group(self) -> RowGroup:
        view = self.first_view
        return RowGroup(transform=view.transform, filter=view.filter, join_keys=self.join_keys,
                        members=((0, view),), batch_transform=view.batch_transform)  # fmt: skip

    @property
    def native(self) -> bool:
        view = self.first_view
        return view.transform is None and view.filter is None and view.batch_transform is None


@dataclass(frozen=True, slots=True)
class _Spec:
    """What the core's ``Sweep`` is built from, and the row groups behind it."""

    tables: tuple[_Table, ...]
    groups: list[_Group]
    keys: list[list[tuple[Any, ...]]]  # per table, the entity keys as the core matches them
    group_specs: list[tuple[Any, ...]]
    view_specs: list[tuple[Any, ...]]
    request_specs: list[tuple[Any, ...]]

    def sweep(self, mode: Mode, include_late: bool) -> Any:
        """A fresh ``engine._native.Sweep`` over every label."""
        return _native.Sweep(mode, include_late, self.keys, self.group_specs, self.view_specs,
                             self.request_specs)  # fmt: skip


def _spec(plan: Plan, requests: Sequence[ViewRequest], mode: Mode) -> _Spec:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    tables, labels = _tables(requests)
    groups: list[_Group] = []
    group_of: dict[tuple[Any, ...], int] = {}
    view_specs: list[tuple[Any, ...]] = []
    view_of: dict[tuple[str, int], int] = {}
    request_specs: list[tuple[Any, ...]] = []
    buffers: dict[int, bytes] = {}
    for req, lab in zip(requests, labels, strict=True):
        view = plan.views[req.view]
        gkey = (view.source, view.transform, view.filter, view.batch_transform, view.join_keys,
                lab.table)  # fmt: skip
        g = group_of.get(gkey)
        if g is None:
            g = group_of[gkey] = len(groups)
            groups.append(_Group(view.source, lab.table, view.join_keys, view, []))
        group = groups[g]
        v = view_of.get((view.name, g))
        if v is None:
            v = view_of[(view.name, g)] = len(view_specs)
            inputs = []
            for column in view.input_columns:
                if column not in group.inputs:
                    group.inputs.append(column)
                inputs.append(group.inputs.index(column))
            kinds = view.input_kinds or ("str",) * len(view.aggregations)
            functions = [(a.function, kind, a.n, a.window_ms, a.hop_ms)
                         for a, kind in zip(view.aggregations, kinds, strict=True)]  # fmt: skip
            view_specs.append((g, functions, inputs, view.allowed_lateness_ms))
        # requests over the same labels share their buffers (sent once to a cluster)
        codes = buffers.get(id(tables[lab.table].codes))
        if codes is None:
            codes = buffers[id(tables[lab.table].codes)] = tables[lab.table].codes.tobytes()
        times = buffers.get(id(lab.times))
        if times is None:
            times = buffers[id(lab.times)] = lab.times.tobytes()
        request_specs.append((v, codes, times, list(req.indices)))
    return _Spec(
        tables,
        groups,
        [[_key(e) for e in t.entities] for t in tables],
        [(g.source, g.table, list(g.join_keys), list(g.inputs), g.native) for g in groups],
        view_specs,
        request_specs,
    )


def _execute(
    plan: Plan,
    log: EventLogSource,
    requests: Sequence[ViewRequest],
    mode: Mode,
    include_late: bool,
    workers: int,
    progress: Progress | None,
) -> list[list[_Column]]:
    spec = _spec(plan, requests, mode)
    sweep = spec.sweep(mode, include_late)
    groups = spec.groups
    tasks = [(s, p) for s in sorted({g.source for g in groups}) for p in log.partitions(s)]
    reader = _Reader(plan, log, sweep, groups, progress)
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            reader.partition(*task)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            for _ in pool.map(lambda task: reader.partition(*task), tasks):
                pass
    out = sweep.finish()
    return [
        [_Column.from_native(len(req.entities), *col) for col in cols]
        for req, cols in zip(requests, out, strict=True)
    ]


def _key(entity: EntityKey) -> tuple[Any, ...]:
    """A label's key as the core matches it: str and int parts; an integral float is the
    int it equals (as Python's ``==`` has it); any other part can match no record."""
    parts: list[Any] = []
    for part in entity:
        if isinstance(part, float) and part.is_integer():
            parts.append(int(part))
        elif isinstance(part, (str, int)):
            parts.append(part)
        else:
            parts.append("\x00unmatchable:" + repr(part))  # no logged key is a str like this
    return tuple(parts)


class _Reader:
    """Feeds one partition's records to the sweep: log files natively, transforms in Python."""

    def __init__(
        self,
        plan: Plan,
        log: EventLogSource,
        sweep: Any,
        groups: list[_Group],
        progress: Progress | None,
    ) -> None:
        self.plan = plan
        self.log = log
        self.sweep = sweep
        self.groups = groups
        self.progress = progress
        self.files = isinstance(log, LogFiles)

    def partition(self, source: str, partition: int) -> None:
        src = self.plan.sources[source]
        mine = [g for g, group in enumerate(self.groups) if group.source == source]
        native = [g for g in mine if self.groups[g].native]
        fed = [g for g in mine if g not in native]
        read = 0
        if self.files and native:
            read = self._files(source, partition, src.timestamp_field, src.timestamp_divisor)
        if self.files and fed:  # user code over columns decoded natively, file by file
            counted = self._fed_files(source, partition, fed)
            if not read:
                read = counted
                self.sweep.note_read(counted)
            envelope_groups = []
        else:
            envelope_groups = fed if self.files and native else mine
        if envelope_groups:
            counted = self._envelopes(source, partition, envelope_groups)
            if not read:
                read = counted
                self.sweep.note_read(counted)
        if self.progress is not None:
            self.progress(read, 1)

    def _files(self, source: str, partition: int, ts_field: str, divisor: int) -> int:
        log = self.log
        assert isinstance(log, LogFiles)
        read = 0

        def take(data: bytes, high: int, last: int) -> int:
            nonlocal read
            high, taken = self.sweep.add_log_file(source, partition, data, high, ts_field,
                                                  divisor, upto=last)  # fmt: skip
            read += taken
            return int(high)

        read_partition(log, source, partition, take)
        return read

    def _fed_files(self, source: str, partition: int, groups: list[int]) -> int:
        """Groups with user code (transforms, filters) over a log of files: each file is
        decoded natively into columns (``decode_log_file``), and each group's transform runs
        once per file — a batch transform on a DataFrame built column by column, as the
        worker builds it. Returns the records read."""
        log = self.log
        assert isinstance(log, LogFiles)
        src = self.plan.sources[source]
        read = 0

        def take(data: bytes, high: int, upto: int) -> int:
            nonlocal read
            got = decode_log_file(data, high, src.timestamp_field, upto)
            if got is None:
                return high
            read += len(got)
            offsets = got.offsets.tobytes()
            event_time = (got.raw_event_time // src.timestamp_divisor).tobytes()
            processed = got.processed_at_ms.tobytes()
            payloads, frame = user_code_input(
                [self.groups[g].row_group for g in groups], got.payload
            )
            for g in groups:
                group = self.groups[g]
                keys, inputs = group_cells(group.row_group, group.inputs, payloads, frame)
                self.sweep.add_rows(g, partition, offsets, event_time, processed,
                                    [("any", c) for c in keys], [("any", c) for c in inputs])  # fmt: skip
            return max(high, int(got.offsets.max()))

        read_partition(log, source, partition, take)
        return read

    def _envelopes(self, source: str, partition: int, groups: list[int]) -> int:
        """The slow path: records through Python (transforms, filters, logs without files)."""
        src = self.plan.sources[source]
        ts, divisor = src.timestamp_field, src.timestamp_divisor
        count = 0
        batch: list[Envelope] = []
        for envelope in self.log.read(source, partition):
            count += 1
            batch.append(envelope)
            if len(batch) >= _ROWS_CHUNK:
                self._feed(batch, groups, partition, ts, divisor)
                batch = []
        if batch:
            self._feed(batch, groups, partition, ts, divisor)
        return count

    def _feed(
        self, batch: list[Envelope], groups: list[int], partition: int, ts: str, divisor: int
    ) -> None:
        payloads = [e.payload for e in batch]
        for g in groups:
            group = self.groups[g]
            keys, inputs = group_cells(group.row_group, group.inputs, payloads)
            self.sweep.add_rows(
                g,
                partition,
                array("q", (e.offset for e in batch)).tobytes(),
                array("q", (e.payload[ts] // divisor for e in batch)).tobytes(),
                array("q", (e.processed_at_ms for e in batch)).tobytes(),
                [("any", c) for c in keys],
                [("any", c) for c in inputs],
            )


def requests_by_view(refs: Sequence[tuple[ViewPlan, int]]) -> Mapping[str, tuple[int, ...]]:
    """Group resolved refs by view, keeping first-seen order of aggregation indices."""
    grouped: dict[str, list[int]] = {}
    for view, index in refs:
        lst = grouped.setdefault(view.name, [])
        if index not in lst:
            lst.append(index)
    return {k: tuple(v) for k, v in grouped.items()}
