"""What a view sees of a source record: transform → key → aggregation inputs, and admission.

The native core folds; this module runs the user's code. ``group_columns`` turns a batch of
payloads into a row group's key texts and input columns for the core — row transforms and
filters row by row (the slow path), batch transforms on a DataFrame per batch — and is what
the stream worker, the backfill and rebuild-online all call, so every path drops and
reshapes a record the same way. ``extract_all`` is the per-record form (``verify``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from engine.envelope import Envelope
from engine.keys import encode_key
from engine.plan import SourcePlan, ViewPlan

if TYPE_CHECKING:
    import pandas as pd

EntityKey = tuple[Any, ...]


class ColumnBatch(Protocol):
    """A batch of payloads held as columns (``engine._native.Columns``)."""

    @property
    def names(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def column(self, name: str) -> list[Any]: ...
    def to_pylist(self) -> list[dict[str, Any]]: ...


# a batch of payloads: row dicts (the backfill, verify) or native columns (the worker)
Payloads = Sequence[dict[str, Any]] | ColumnBatch


def _dicts(payloads: Payloads) -> Sequence[dict[str, Any]]:
    return payloads if isinstance(payloads, Sequence) else payloads.to_pylist()


def batch_frame(payloads: Payloads) -> pd.DataFrame:
    """The DataFrame a batch transform is given: one row per payload (index 0..n-1), one
    column per field, built column by column — the same dtypes as
    ``DataFrame.from_records`` of the payload dicts (``tests/unit/test_batch_transform.py``
    checks it), without a dict per row when the batch is already columnar."""
    import pandas as pd

    n = len(payloads)
    if isinstance(payloads, Sequence):
        names = dict.fromkeys(name for payload in payloads for name in payload)
        data = {name: [payload.get(name) for payload in payloads] for name in names}
    else:
        data = {name: _frame_column(payloads, name) for name in payloads.names}
    return pd.DataFrame(data, index=range(n))


def _frame_column(payloads: Any, name: str) -> Any:
    """One native column as ``batch_frame`` puts it in the frame: a string column with a
    non-null cell straight from its Arrow buffers when pandas holds such a list of ``str``
    as Arrow strings anyway (its default ``str`` dtype) — the same array, without a Python
    ``str`` per cell; any other column as a list of its cells."""
    dtype = _arrow_str_dtype()
    got = payloads.str_buffers(name) if dtype is not None else None
    if got is None:
        return payloads.column(name)
    import pandas as pd
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs

    validity, offsets, data = got
    buffers = [None if validity is None else pa.py_buffer(validity), pa.py_buffer(offsets),
               pa.py_buffer(data)]  # fmt: skip
    return pd.array(pa.Array.from_buffers(pa.large_string(), len(payloads), buffers), dtype=dtype)


@cache
def _arrow_str_dtype() -> Any:
    """The dtype pandas gives a column built from a list of ``str`` when it is Arrow
    ``large_string``-backed (pandas >= 3 with pyarrow: its default), else None. Asked once
    per process (pandas 3 deprecates turning that default off)."""
    import pandas as pd

    inferred = pd.DataFrame({"s": ["a", None]})["s"]
    arrow = getattr(inferred.array, "_pa_array", None)
    if arrow is None or str(arrow.type) != "large_string":
        return None
    return inferred.dtype


@dataclass(frozen=True, slots=True)
class Extracted:
    """What one record contributes to one view: its entity, aggregation inputs and order."""

    entity: EntityKey
    values: tuple[Any, ...]
    event_time_ms: int
    processed_at_ms: int
    partition: int
    offset: int


def event_time_ms(source: SourcePlan, payload: dict[str, Any]) -> int:
    """The event time in ms of a decoded payload (µs timestamps are floored to ms)."""
    return int(payload[source.timestamp_field]) // source.timestamp_divisor


def is_admitted(view: ViewPlan, event_time_ms: int, processed_at_ms: int) -> bool:
    """DESIGN §3 admission: not later than the view's allowed lateness."""
    lateness = view.allowed_lateness_ms
    return lateness is None or event_time_ms >= processed_at_ms - lateness


def view_row(view: ViewPlan, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The row a view aggregates: the payload after its transform and filter (None = dropped).

    A transform or filter that raises drops the record for this view only; the record
    stays in the log, so every path drops it the same way.
    """
    if view.batch_transform is not None:
        rows = batch_rows(view, [payload])
        return rows[0]
    row: dict[str, Any] | None = payload
    try:
        if view.transform is not None:
            row = view.transform(dict(payload))
            if not isinstance(row, dict):
                return None
        if view.filter is not None and not view.filter(row):  # type: ignore[arg-type]
            return None
    except Exception:  # user code; the record is dropped for this view on every path
        return None
    return row


def _entity(join_keys: tuple[str, ...], row: dict[str, Any]) -> EntityKey | None:
    try:
        entity = tuple(map(row.__getitem__, join_keys))
    except KeyError:
        return None
    return None if None in entity else entity


def _values(view: ViewPlan, row: dict[str, Any]) -> tuple[Any, ...]:
    values = tuple(map(row.get, view.input_columns))
    for i in view.float_inputs:
        value = values[i]
        # a transform's 0/0 or overflow counts as null: it has no exact sum
        if value is not None and not math.isfinite(value):
            values = (*values[:i], None, *values[i + 1 :])
    return values


def extract(
    view: ViewPlan,
    source: SourcePlan,
    envelope: Envelope,
    *,
    include_late: bool = False,
) -> Extracted | None:
    """The view's share of one logged record, or None when the view drops or refuses it."""
    found = extract_all(row_groups([view]), source, envelope, include_late=include_late)
    return found[0][1] if found else None


@dataclass(frozen=True, slots=True)
class RowGroup:
    """Views that see the same row and entity (same transform, filter and join keys)."""

    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None
    filter: Callable[[dict[str, Any]], bool] | None
    join_keys: tuple[str, ...]
    members: tuple[tuple[int, ViewPlan], ...]  # (caller's slot, view)
    batch_transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None

    @property
    def native(self) -> bool:
        """No user code: the core reads keys and inputs straight from the payload."""
        return self.transform is None and self.filter is None and self.batch_transform is None


def row_groups(views: Sequence[ViewPlan]) -> tuple[RowGroup, ...]:
    """Group views so each record's transform and key extraction run once per group.

    The slot of a view is its position in ``views``.
    """
    groups: dict[tuple[Any, Any, tuple[str, ...], Any], list[tuple[int, ViewPlan]]] = {}
    for slot, view in enumerate(views):
        key = (view.transform, view.filter, view.join_keys, view.batch_transform)
        groups.setdefault(key, []).append((slot, view))
    return tuple(
        RowGroup(transform=t, filter=f, join_keys=k, members=tuple(m), batch_transform=b)
        for (t, f, k, b), m in groups.items()
    )


def batch_rows(
    view: ViewPlan, payloads: Payloads, frame: pd.DataFrame | None = None
) -> list[dict[str, Any] | None]:
    """The rows a view with a batch transform sees: ``payloads[i]`` → its transformed row, or
    None when the transform dropped it.

    The transform gets one DataFrame of the batch (a copy; index 0..n-1) and returns one
    whose index is a subset of it (a dropped index drops that record). If it raises or
    returns anything else, each record is retried alone in a one-row frame and the records
    that still fail are dropped for this view only — the same rows as a row transform that
    raised, whatever else shared the batch.
    """
    fn = view.batch_transform
    assert fn is not None
    if not len(payloads):
        return []
    if frame is None:
        frame = batch_frame(payloads)
    try:
        return _rows_of(fn(frame.copy()), len(payloads), range(len(payloads)))
    except Exception:  # user code: fall back to one record at a time
        out: list[dict[str, Any] | None] = []
        for i in range(len(payloads)):
            one = frame.iloc[i : i + 1]
            try:
                out.extend(_rows_of(fn(one.copy()), 1, range(i, i + 1)))
            except Exception:
                out.append(None)
        return out


def _rows_of(result: Any, n: int, index: range) -> list[dict[str, Any] | None]:

    _check_result(result, index)
    out: list[dict[str, Any] | None] = [None] * n
    records = result.to_dict("records")
    for label, row in zip(result.index, records, strict=True):
        out[int(label) - index.start] = {str(k): _plain(v) for k, v in row.items()}
    return out


def _plain(value: Any) -> Any:
    """A DataFrame cell as the plain value a row transform would give (NaN/NaT → None)."""
    if value is None:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value
    item = getattr(value, "item", None)  # numpy scalars
    if item is not None and not isinstance(value, (str, bytes)):
        value = item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def user_code_input(
    groups: Sequence[RowGroup], batch: ColumnBatch
) -> tuple[Payloads, pd.DataFrame | None]:
    """What the user code of ``groups`` reads of one columnar batch, built once for all of
    them: the row dicts when a row transform or filter is among them, else the columns and
    the one DataFrame every batch transform copies (``batch_frame``)."""
    if any(g.batch_transform is None for g in groups):
        return batch.to_pylist(), None
    return batch, batch_frame(batch) if len(batch) else None


def group_rows(group: RowGroup, payloads: Payloads) -> Sequence[dict[str, Any] | None]:
    """The rows a row group's views see of ``payloads`` (None: dropped for them)."""
    if group.batch_transform is not None:
        return batch_rows(group.members[0][1], payloads)
    dicts = _dicts(payloads)
    if group.native:
        return dicts
    view = group.members[0][1]
    return [view_row(view, payload) for payload in dicts]


def group_cells(
    group: RowGroup,
    input_names: Sequence[str],
    payloads: Payloads,
    frame: pd.DataFrame | None = None,
    *,
    arrays: bool = False,
) -> tuple[list[Any], list[Any]]:
    """A row group's join-key columns and input columns over ``payloads`` (one cell per
    payload; None where the view drops the record or the field is missing). A batch
    transform's input is built column by column and its output read column by column, never
    as a dict per row; ``frame`` is the batch's ``batch_frame`` when the caller has it.

    With ``arrays`` a batch transform's result column of a plain type comes back as a
    pyarrow array instead of a list (``_arrow_cells``: the same cells, no Python object per
    cell) for the native core to read from its buffers; every other column is a list."""
    n = len(payloads)
    names = [*group.join_keys, *input_names]
    if group.batch_transform is not None:
        keyed = len(group.join_keys) if arrays else -1
        cells = _batch_cells(group.members[0][1], payloads, names, frame, keyed)
    elif group.native and not isinstance(payloads, Sequence):
        cells = [payloads.column(name) if name in payloads.names else [None] * n for name in names]
    else:
        rows = group_rows(group, payloads)
        cells = [[None if row is None else row.get(name) for row in rows] for name in names]
    keys, inputs = cells[: len(group.join_keys)], cells[len(group.join_keys) :]
    for column in keys:  # a NaN key (a batch transform's missing value) is no entity
        if not isinstance(column, list):
            continue  # an array key (int64 or str): its nulls are already nulls
        if not any(issubclass(t, float) for t in set(map(type, column))):
            continue  # no float at all (the usual case): no per-cell Python
        for i, value in enumerate(column):
            if isinstance(value, float) and value != value:
                column[i] = None
    assert all(len(c) == n for c in cells)
    return keys, inputs


def _batch_cells(
    view: ViewPlan,
    payloads: Payloads,
    names: Sequence[str],
    frame: pd.DataFrame | None,
    keyed: int = -1,
) -> list[Any]:
    """The cells of ``names`` in a batch transform's result, one per payload (None where it
    dropped the record). ``keyed`` >= 0: the first ``keyed`` names are join keys and a
    column ``_arrow_cells`` can express comes back as a pyarrow array; -1: lists only (the
    list path, ``_batch_lists``)."""
    fn = view.batch_transform
    assert fn is not None
    n = len(payloads)
    if not n:
        return [[] for _ in names]
    if frame is None:
        frame = batch_frame(payloads)
    try:
        result = fn(frame.copy())
        _check_result(result, range(n))
    except Exception:  # user code: one record at a time, as a row transform
        rows = batch_rows(view, payloads, frame)
        return [[None if row is None else row.get(name) for row in rows] for name in names]
    if keyed < 0 or result.index.dtype.kind not in "iu":
        return _batch_lists(result, n, names)
    import numpy as np
    import pyarrow as pa

    labels = result.index.to_numpy()
    take = None  # the rows in order: the result's own arrays
    if len(labels) != n or not bool((labels == np.arange(n)).all()):
        where = np.zeros(n, dtype=np.int64)  # record i ← result row where[i] (null: dropped)
        where[labels] = np.arange(len(labels))
        dropped = np.ones(n, dtype=bool)
        dropped[labels] = False
        take = pa.array(where, mask=dropped)
    out: list[Any] = []
    listed: list[int] = []
    for j, name in enumerate(names):
        if name not in result.columns:
            out.append([None] * n)
            continue
        column = _arrow_cells(result[name], key=j < keyed)
        if column is None:
            listed.append(j)
            out.append(None)
        else:
            out.append(column if take is None else column.take(take))
    if listed:
        lists = _batch_lists(result, n, [names[j] for j in listed])
        for j, column in zip(listed, lists, strict=True):
            out[j] = column
    return out


def _batch_lists(result: pd.DataFrame, n: int, names: Sequence[str]) -> list[list[Any]]:
    """The list path: each of ``names`` in ``result`` as a list of n cells (None where the
    result has no such row or column)."""
    whole = len(result.index) == n  # a subset of 0..n-1 as long: every row, in some order
    at = result.index.tolist()
    in_order = whole and at == list(range(n))
    out: list[list[Any]] = []
    for name in names:
        if name not in result.columns:
            out.append([None] * n)
        elif in_order:
            out.append(result[name].tolist())
        else:
            column: list[Any] = [None] * n
            for i, value in zip(at, result[name].tolist(), strict=True):
                column[i] = value
            out.append(column)
    return out


def _arrow_cells(series: Any, *, key: bool) -> Any:
    """A result column as a pyarrow array holding what its ``tolist()`` holds, read by the
    core as the same keys and inputs — or None when it cannot say the same (the list path):

    - float64/float32: float64, NaN kept as a (valid) NaN as in the list; not for a key (a
      float key's text is ``str(float)``, the core reads no float key);
    - signed ints and unsigned up to 32 bits: int64 (a key's text is its decimal, as
      ``encode_key``'s);
    - numpy bool: bool; not for a key;
    - pandas' Arrow-backed ``str`` (NaN as its missing value): its own large_string array,
      a null where ``tolist()`` has NaN — as a key (a NaN key is no entity either way), or
      as an input without a missing value (the list path gives a NaN float cell there).

    Anything else (object, datetime, category, nullable Int64/boolean/Float64, pd.NA
    strings, uint64) goes to the list path."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if not isinstance(series, pd.Series):
        return None  # a duplicated column name: the list path raises as it always has
    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        kind = dtype.kind
        if kind == "f" and not key and dtype.itemsize in (4, 8):
            return pa.array(series.to_numpy(dtype=np.float64, copy=False))
        if kind == "i" or (kind == "u" and dtype.itemsize <= 4):
            return pa.array(series.to_numpy(dtype=np.int64, copy=False))
        if kind == "b" and not key:
            return pa.array(series.to_numpy(copy=False))
        return None
    if (
        isinstance(dtype, pd.StringDtype)
        and dtype.storage == "pyarrow"
        and dtype.na_value is not pd.NA
    ):
        arr = getattr(series.array, "_pa_array", None)
        if arr is None:
            return None
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        if not (pa.types.is_large_string(arr.type) or pa.types.is_string(arr.type)):
            return None
        if arr.null_count and not key:
            return None
        return arr
    return None


def _check_result(result: Any, index: range) -> None:
    import pandas as pd

    if not isinstance(result, pd.DataFrame):
        raise TypeError(f"a batch transform must return a DataFrame, got {type(result).__name__}")
    if not result.index.is_unique or not _labels_within(result.index, index):
        raise ValueError("a batch transform's index must be a subset of its input's")


def _labels_within(labels: pd.Index, index: range) -> bool:
    """Whether every label is in ``index``: for integer labels a bounds check (the same
    answer as the set test, without a Python int per row)."""
    if not len(labels):
        return True
    if labels.dtype.kind in "iu" and index.step == 1:
        return bool(labels.min() >= index.start and labels.max() < index.stop)
    return set(labels).issubset(index)


_STR_OR_NONE = frozenset((str, type(None)))

# the batch size from which ``group_columns`` hands a batch transform's result columns to
# the core as arrays: a pyarrow array costs the binding ~5 µs per column to read whatever
# its length, a list ~0.07 µs per cell (measured: equal near 100-300 cells, arrays 5-30x
# cheaper from 1,000); a live batch stays on lists
ARRAY_ROWS = 1024


def group_columns(
    group: RowGroup,
    input_names: Sequence[str],
    payloads: Payloads,
    frame: pd.DataFrame | None = None,
    *,
    arrays: bool | None = None,
) -> tuple[list[Any], list[Any]]:
    """A row group's entity texts (one key column: ``engine.keys.encode_key`` of the join
    keys, None when the view drops the record or a key is missing/null) and its input
    columns, for the native core's ``prepare``. A batch transform's plain result columns
    come as pyarrow arrays (``group_cells(arrays=True)``): an int64 key column stands for
    its decimal texts, which the core writes as ``encode_key`` does. By default only a batch
    of at least ``ARRAY_ROWS`` records goes as arrays (below it a live batch's few cells cost
    less as lists than the arrays' fixed cost per column); ``arrays=False``: lists only (the
    list path, which the array path must equal cell for cell)."""
    if arrays is None:
        arrays = len(payloads) >= ARRAY_ROWS
    keys, inputs = group_cells(group, input_names, payloads, frame, arrays=arrays)
    texts: Any
    if len(keys) == 1 and not isinstance(keys[0], list):
        texts = keys[0]  # str or int64 array: its texts are the core's to write
        if texts.null_count:
            import numpy as np

            null = texts.is_null().to_numpy(zero_copy_only=False)
            inputs = _null_where(np.flatnonzero(null).tolist(), inputs)
        return [texts], inputs
    keys = [c if isinstance(c, list) else c.to_pylist() for c in keys]
    if len(keys) == 1 and set(map(type, keys[0])) <= _STR_OR_NONE:
        texts = keys[0]  # a str is its own text: the column as it is
    elif len(keys) == 1:  # one join key: its text
        texts = [
            v if v is None or type(v) is str else encode_key((v,)).decode("utf-8") for v in keys[0]
        ]
    else:
        texts = [
            None if None in entity else encode_key(entity).decode("utf-8")
            for entity in zip(*keys, strict=True)
        ]
    if None in texts:
        inputs = _null_where([i for i, text in enumerate(texts) if text is None], inputs)
    return [texts], inputs


def _null_where(rows: list[int], inputs: list[Any]) -> list[Any]:
    """``inputs`` with the cells of ``rows`` set to None (a record without an entity feeds
    no input): in place in a list, through a mask in a pyarrow array."""
    out: list[Any] = []
    mask = None
    for column in inputs:
        if isinstance(column, list):
            for i in rows:
                column[i] = None
            out.append(column)
            continue
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc  # type: ignore[import-untyped]

        if mask is None:
            null = np.zeros(len(column), dtype=bool)
            null[rows] = True
            mask = pa.array(null)
        out.append(pc.if_else(mask, pa.scalar(None, type=column.type), column))
    return out


def extract_many(
    groups: Sequence[RowGroup],
    source: SourcePlan,
    envelopes: Sequence[Envelope],
    *,
    include_late: bool = False,
) -> list[list[tuple[int, Extracted]]]:
    """``extract_all`` of each envelope, with each batch transform run once over all of them
    (one DataFrame per group, not one per record): the same rows, so the same results."""
    if not any(g.batch_transform is not None for g in groups):
        return [extract_all(groups, source, e, include_late=include_late) for e in envelopes]
    payloads = [e.payload for e in envelopes]
    transformed: dict[int, list[dict[str, Any] | None]] = {
        g: batch_rows(group.members[0][1], payloads)
        for g, group in enumerate(groups)
        if group.batch_transform is not None
    }
    return [
        extract_all(groups, source, e, include_late=include_late,
                    rows={g: rows[i] for g, rows in transformed.items()})
        for i, e in enumerate(envelopes)
    ]  # fmt: skip


def extract_all(
    groups: Sequence[RowGroup],
    source: SourcePlan,
    envelope: Envelope,
    *,
    include_late: bool = False,
    rows: Mapping[int, dict[str, Any] | None] | None = None,
) -> list[tuple[int, Extracted]]:
    """Every view's share of one logged record as (slot, Extracted); views that drop or
    refuse the record are absent. Transforms and keys run once per row group; ``rows``
    holds the record's row of groups whose batch transform already ran (``extract_many``)."""
    payload = envelope.payload
    et = payload[source.timestamp_field] // source.timestamp_divisor
    pt = envelope.processed_at_ms
    out: list[tuple[int, Extracted]] = []
    for g, group in enumerate(groups):
        members = group.members
        if not include_late:
            members = tuple((s, v) for s, v in members if is_admitted(v, et, pt))
            if not members:
                continue
        row = payload
        if rows is not None and g in rows:
            transformed = rows[g]
            if transformed is None:
                continue
            row = transformed
        elif not group.native:
            transformed = view_row(members[0][1], payload)
            if transformed is None:
                continue
            row = transformed
        entity = _entity(group.join_keys, row)
        if entity is None:
            continue
        for slot, view in members:
            out.append(
                (slot, Extracted(entity=entity, values=_values(view, row), event_time_ms=et,
                                 processed_at_ms=pt, partition=envelope.partition,
                                 offset=envelope.offset))
            )  # fmt: skip
    return out
