"""Batch (vectorized) transforms: a DataFrame in, a DataFrame out, applied identically by the
stream worker, the backfill and rebuild-online — and equal to the same logic as a row transform.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from connectors.eventlog import EventLogReader
from engine import FeatureStore
from engine.errors import DefinitionError
from engine.processing import batch_rows, row_groups
from engine.rebuild import rebuild_view
from tests.unit.stream.test_core import (
    PARTITIONS,
    T0,
    FakeStore,
    backfill_values,
    make_records,
    online_values,
    run,
)

VIEWS = """
import pandas as pd

def double_big(row):
    if row["amount"] is not None and row["amount"] > 1e8:
        return None
    row["amount2"] = None if row["amount"] is None else row["amount"] * 2
    return row

def double_big_batch(batch):
    kept = batch[~(batch["amount"] > 1e8)].copy()
    kept["amount2"] = kept["amount"] * 2
    return kept

def fragile_batch(batch):
    if (batch["amount"] > 1e8).any():
        raise ValueError("a big amount somewhere in the batch")
    out = batch.copy()
    out["amount2"] = out["amount"] * 2
    return out

AGGS = [
    Aggregation("amount2", "sum", window="5m", hop="1m"),
    Aggregation("amount2", "max", window="10m", hop="1m"),
    Aggregation("qty", "last", window="lifetime"),
    Aggregation("customer_id", "count_distinct", window="5m", hop="1m"),
]
rowwise = FeatureView("rowwise", entity=customer, source=tx, transform=double_big,
                      columns={"amount2": "double"}, aggregations=AGGS)
batched = FeatureView("batched", entity=customer, source=tx, batch_transform=double_big_batch,
                      columns={"amount2": "double"}, aggregations=AGGS)
fragile = FeatureView("fragile", entity=customer, source=tx, batch_transform=fragile_batch,
                      columns={"amount2": "double"}, aggregations=AGGS)
"""
CUSTOMERS = [(f"c{i}",) for i in range(13)]


class _MarkingStore(FakeStore):
    """The unit tests' store, taking the watermarks a rebuild writes."""

    def write(self, writes, marks=()):  # type: ignore[no-untyped-def]
        self.marks = list(marks)
        return super().write(writes)


@pytest.fixture
def store(make_repo: Callable[..., Path]) -> FeatureStore:
    return FeatureStore.from_repo(make_repo(VIEWS, yaml=f"kafka:\n  partitions: {PARTITIONS}\n"))


@pytest.mark.parametrize("array_rows", [None, 1])
def test_batch_and_row_transforms_agree_on_every_path(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch, array_rows: int | None
) -> None:
    """With ``array_rows`` = 1 the worker and rebuild-online get every batch transform's
    plain result columns as Arrow arrays (``group_columns``), else as shipped (lists for
    batches this small): the same values either way."""
    import engine.processing as processing

    arrays: list[object] = []
    if array_rows is not None:
        monkeypatch.setattr(processing, "ARRAY_ROWS", array_rows)
        arrow_cells = processing._arrow_cells

        def counted(series: object, *, key: bool) -> object:
            got = arrow_cells(series, key=key)
            if got is not None:
                arrays.append(got)
            return got

        monkeypatch.setattr(processing, "_arrow_cells", counted)
    records = make_records(store, 600, seed=5)
    fake, _ = run(store, records)
    end = T0 + 20_000 * (len(records) // 37 + 2)
    entities = {name: CUSTOMERS for name in ("rowwise", "batched", "fragile")}
    for t in (end, end + 60_000, end + 7 * 60_000):
        online = online_values(store, fake, entities, t)
        backfill = backfill_values(store, entities, t)
        assert online == backfill  # the worker and the backfill apply the batch transform alike
        for (c,) in CUSTOMERS:
            assert online[("batched", (c,))] == online[("rowwise", (c,))]
        assert sum(1 for (v, _), vals in online.items() if v == "batched" and vals[0]) > 3
    # a batch transform that raises on a batch is retried row by row: the rows that fail
    # alone are dropped (the big amounts, as the row transform drops them), the rest kept
    for (c,) in CUSTOMERS:
        assert online[("fragile", (c,))] == online[("rowwise", (c,))]
    # rebuild-online replays the log through the same transforms
    rebuilt = _MarkingStore()
    for name in ("rowwise", "batched", "fragile"):
        rebuild_view(store.plan, name, EventLogReader(store.config.event_log_root), rebuilt,
                     now_ms=end)  # fmt: skip
    again = online_values(store, rebuilt, entities, end + 60_000)
    assert again == online_values(store, fake, entities, end + 60_000)
    assert bool(arrays) == (array_rows is not None)  # the arrays path ran when asked


def test_batch_rows_keep_index_subsets_and_plain_values(store: FeatureStore) -> None:
    view = store.plan.views["batched"]
    payloads = [
        {"customer_id": "c1", "merchant_id": "m", "amount": 1.5, "qty": 3, "ts": T0},
        {"customer_id": "c2", "merchant_id": "m", "amount": 2e9, "qty": 4, "ts": T0},
        {"customer_id": "c3", "merchant_id": "m", "amount": None, "qty": 5, "ts": T0},
    ]
    rows = batch_rows(view, payloads)
    assert rows[1] is None  # dropped by the transform
    assert rows[0] is not None and rows[0]["amount2"] == 3.0 and type(rows[0]["qty"]) is int
    assert rows[2] is not None and rows[2]["amount2"] is None  # NaN becomes None
    group = next(g for g in row_groups([view]) if g.batch_transform is not None)
    assert not group.native


def test_a_batch_transform_returning_rows_not_in_its_input_is_dropped_row_by_row(
    make_repo: Callable[..., Path],
) -> None:
    body = """
def invent(batch):
    return pd.DataFrame({"customer_id": ["x"], "amount": [1.0]}, index=[10_000])
v = FeatureView("v", entity=customer, source=tx, batch_transform=invent,
                aggregations=[Aggregation("amount", "sum", window="1h")])
"""
    store = FeatureStore.from_repo(make_repo("import pandas as pd\n" + body))
    payload = {"customer_id": "c1", "merchant_id": "m", "amount": 1.5, "qty": 3, "ts": T0}
    assert batch_rows(store.plan.views["v"], [payload, payload]) == [None, None]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'v = FeatureView("v", entity=customer, source=tx, transform=f, batch_transform=f,'
            ' aggregations=[Aggregation("amount", "sum", window="1h")])',
            "a row transform/filter or a batch transform, not both",
        ),
        (
            'v = FeatureView("v", entity=customer, source=tx, batch_transform=lambda b: b,'
            ' aggregations=[Aggregation("amount", "sum", window="1h")])',
            "batch_transform: a lambda cannot be fingerprinted",
        ),
    ],
)
def test_batch_transform_definition_errors(
    make_repo: Callable[..., Path], body: str, message: str
) -> None:
    repo = make_repo("def f(x):\n    return x\n" + body)
    with pytest.raises(DefinitionError, match=message):
        FeatureStore.from_repo(repo)


def test_changing_a_batch_transform_changes_the_fingerprint(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    one = FeatureStore.from_repo(make_repo(VIEWS)).plan.views["batched"].fingerprint
    changed = VIEWS.replace("* 2\n    return kept", "* 3\n    return kept")
    assert changed != VIEWS
    (tmp_path / "repo" / "defs.py").unlink()
    two = FeatureStore.from_repo(make_repo(changed)).plan.views["batched"].fingerprint
    assert one != two


def test_frames_are_copies(store: FeatureStore) -> None:
    """A transform that mutates its input frame cannot change what other groups see."""
    payloads = [{"customer_id": "c1", "merchant_id": "m", "amount": 1.0, "qty": 1, "ts": T0}]
    before = pd.DataFrame.from_records(payloads)
    batch_rows(store.plan.views["batched"], payloads)
    assert payloads[0]["amount"] == 1.0 and before.equals(pd.DataFrame.from_records(payloads))


def test_extract_many_equals_extract_all_record_by_record(store: FeatureStore) -> None:
    """verify (and other envelope paths) run each batch transform once per chunk of records:
    the same rows as one record at a time, including the fragile transform's fallback."""
    from engine.processing import extract_all, extract_many

    run(store, make_records(store, 400, seed=9))
    src = store.plan.sources["tx"]
    groups = row_groups(list(store.plan.views.values()))
    reader = EventLogReader(store.config.event_log_root)
    envelopes = [e for p in reader.partitions("tx") for e in reader.read("tx", p)]
    assert len(envelopes) > 300
    for late in (False, True):
        one_by_one = [extract_all(groups, src, e, include_late=late) for e in envelopes]
        assert extract_many(groups, src, envelopes, include_late=late) == one_by_one
        assert any(one_by_one) and any(not x for x in one_by_one)  # kept and dropped rows


def test_batch_frame_matches_from_records_for_dicts_and_native_columns() -> None:
    """The worker builds a batch transform's DataFrame column by column from the decoded
    columns; the backfill from row dicts. Both must equal ``DataFrame.from_records`` of the
    rows (dtypes and cells), nulls of every kind included, or a transform could see other
    data online than in training."""
    import random

    from engine._native import Columns
    from engine.processing import batch_frame

    rng = random.Random(11)
    kinds = {"i": "int", "f": "float", "s": "str", "b": "bool", "y": "bytes", "t": "str"}

    def cell(kind: str) -> object:
        if rng.random() < 0.2:
            return None
        return {
            "i": lambda: rng.randrange(-(2**40), 2**40),
            "f": lambda: rng.uniform(-1e6, 1e6),
            "s": lambda: rng.choice(["a", "b", "ü", ""]),
            "t": lambda: rng.choice(["a", "b", "ü", "", "a" * 40]),
            "b": lambda: rng.random() < 0.5,
            "y": lambda: bytes([rng.randrange(256)]),
        }[kind]()

    for n in (0, 1, 7, 200):
        rows = [{name: cell(name) for name in kinds} for _ in range(n)]
        if n:  # one column with no null at all, one with nothing but nulls
            for row in rows:
                row["i"] = row["i"] if row["i"] is not None else 5
                row["s"] = None
        names = list(kinds)
        columns = Columns.from_rows(names, [kinds[k] for k in names], rows)
        expected = pd.DataFrame.from_records(rows, index=range(n), columns=names)
        # a string column with cells reaches the frame from its Arrow buffers, not as strs
        assert (columns.str_buffers("t") is not None) == (n > 0)
        assert columns.str_buffers("s") is None and columns.str_buffers("i") is None
        for frame in (batch_frame(rows), batch_frame(columns)):
            if not n:
                assert len(frame) == 0
                continue
            assert list(frame.columns) == names
            assert frame.dtypes.to_dict() == expected.dtypes.to_dict(), (n, frame.dtypes)
            pd.testing.assert_frame_equal(frame, expected)


@pytest.mark.parametrize(
    ("labels", "index"),
    [
        ([0, 1, 2], range(3)),
        ([2, 0], range(3)),
        ([0, 3], range(3)),
        ([-1], range(3)),
        ([4], range(4, 5)),
        ([3], range(4, 5)),
        ([1.0, 2.0], range(3)),
        ([1.5], range(3)),
        (["a"], range(3)),
        ([], range(3)),
    ],
)
def test_a_batch_transforms_index_is_checked_as_a_subset_of_its_input(
    labels: list[object], index: range
) -> None:
    """The bounds check of integer labels answers as the set test does, whatever the labels."""
    from engine.processing import _labels_within

    frame = pd.DataFrame({"x": range(len(labels))}, index=labels)
    assert _labels_within(frame.index, index) == set(labels).issubset(index)


def test_a_nan_key_from_a_batch_transform_is_no_entity(store: FeatureStore) -> None:
    """A batch transform's missing key (NaN in its output) drops the record for the view,
    whatever else the key column holds; a key column without floats is left as it is."""
    from dataclasses import replace

    from engine.processing import RowGroup, group_cells

    def nan_keys(batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["customer_id"] = out["customer_id"].where(out["amount"] < 100.0)  # NaN above
        return out

    view = replace(store.plan.views["batched"], batch_transform=nan_keys)
    group = RowGroup(transform=None, filter=None, join_keys=view.join_keys,
                     members=((0, view),), batch_transform=nan_keys)  # fmt: skip
    payloads = [
        {"customer_id": f"c{i}", "merchant_id": "m", "amount": float(a), "qty": i, "ts": T0}
        for i, a in enumerate((1.0, 500.0, 2.0, 700.0))
    ]
    keys, inputs = group_cells(group, ["amount"], payloads)
    assert keys == [["c0", None, "c2", None]]
    assert inputs == [[1.0, 500.0, 2.0, 700.0]]
    plain = RowGroup(transform=None, filter=None, join_keys=view.join_keys,
                     members=((0, store.plan.views["batched"]),),
                     batch_transform=store.plan.views["batched"].batch_transform)  # fmt: skip
    keys, _ = group_cells(plain, ["amount"], payloads)
    assert keys == [["c0", "c1", "c2", "c3"]]


def test_a_transform_mutating_its_input_changes_nothing_another_group_or_a_fallback_sees(
    store: FeatureStore,
) -> None:
    """The batch's one frame is shared by its groups, each transform given a copy of it.
    Transforms that scribble over their input in place — and one that does so and then fails
    on the whole batch (its one-record fallback must start from the batch as decoded) — give
    each group the cells it gets alone, in any order."""
    from dataclasses import replace

    from engine.processing import RowGroup, group_cells, user_code_input

    def scribble(batch: pd.DataFrame) -> pd.DataFrame:
        batch["amount"] = -1.0  # in place
        batch.loc[batch.index[2], "customer_id"] = "scribbled"  # in place, one cell
        return batch.drop(index=batch.index[:1])  # (pandas 3.1 deprecates inplace=True)

    def scribble_then_fail(batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["amount2"] = out["amount"] * 2
        batch["amount"] = -7.0
        batch["customer_id"] = "nobody"
        if len(batch) > 1:
            raise ValueError("whole batches fail")
        return out

    def doubled(batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["amount2"] = out["amount"] * 2
        return out

    base = store.plan.views["batched"]
    groups = [
        RowGroup(transform=None, filter=None, join_keys=base.join_keys,
                 members=((0, replace(base, batch_transform=fn)),), batch_transform=fn)
        for fn in (scribble, scribble_then_fail, doubled)
    ]  # fmt: skip
    payloads = [
        {"customer_id": f"c{i}", "merchant_id": "m", "amount": float(a), "qty": i, "ts": T0}
        for i, a in enumerate((1.5, 2.0, 3.25, 4.0))
    ]
    names = ["amount", "amount2"]
    alone = [group_cells(group, names, payloads) for group in groups]
    assert alone[0] == ([[None, "c1", "scribbled", "c3"]],
                        [[None, -1.0, -1.0, -1.0], [None] * 4])  # fmt: skip
    assert alone[1] == alone[2] == ([["c0", "c1", "c2", "c3"]], [[1.5, 2.0, 3.25, 4.0],
                                                                [3.0, 4.0, 6.5, 8.0]])  # fmt: skip
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]):
        chosen = [groups[i] for i in order]
        shared, frame = user_code_input(chosen, payloads)
        assert frame is not None
        got = [group_cells(g, names, shared, frame) for g in chosen]
        assert got == [alone[i] for i in order], order
