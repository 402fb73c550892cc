"""Backfill streaming: clock blocks, the waiting heap and its spill, what the sweep keeps.

The runner reads each partition twice (engine/backfill.py): pass 1 notes clock minima per
block, pass 2 reads a label as soon as no remaining record can precede it. These tests
shrink the block size and the spill budget so the paths a 10M-event log takes show up on
the brute-force reference's 3,000 events, and check the memory-bounding rules directly.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine import FeatureStore, backfill
from engine.envelope import Envelope
from engine.errors import EventLogError
from tests.unit.test_backfill_reference import (
    ALL_REFS,
    VIEWS,
    World,
    _report,
    engine_values,
    mismatches,
    read_log,
    world,  # noqa: F401  (module fixture, used by name)
)
from tests.unit.test_backfill_reference import make_repo as make_reference_repo

MIN = 60_000
T0 = 1_700_000_000_000 // (60 * MIN) * (60 * MIN)  # an hour boundary


def _backfill(w: World, mode: str, include_late: bool, workers: int) -> pd.DataFrame:
    return w.store.get_historical_features(
        w.labels.frame(),
        ALL_REFS,
        mode=mode,
        include_late=include_late,
        workers=workers,
        full_feature_names=True,
    )


@pytest.fixture
def spills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count spilled runs (in this process) and spill after 3 waiting records."""
    count: list[int] = []
    spill = backfill._Held._spill

    def counted(self: backfill._Held) -> None:
        count.append(len(self.heap))
        spill(self)

    monkeypatch.setattr(backfill._Held, "_spill", counted)
    monkeypatch.setattr(
        backfill, "run_columns", functools.partial(backfill.run_columns, spill_items=3)
    )
    return count


@pytest.mark.parametrize("block", [1, 7])
@pytest.mark.parametrize(
    ("mode", "include_late"), [("event_time", False), ("processing_time", True)]
)
def test_small_blocks_and_spills_equal_reference(
    world: World,  # noqa: F811
    spills: list[int],
    monkeypatch: pytest.MonkeyPatch,
    block: int,
    mode: str,
    include_late: bool,
) -> None:
    """The log is out of clock order (local swaps, 5% stragglers at the end, processing
    delays): records wait for labels and spill, and every value still matches."""
    monkeypatch.setattr(backfill, "_BLOCK", block)
    out = _backfill(world, mode, include_late, workers=1)
    problems = mismatches(engine_values(out, ALL_REFS), world.reference(mode, include_late),
                          world.labels)  # fmt: skip
    assert not problems, _report(problems)
    assert spills, "no record waited: the test did not reach the spill path"


def test_small_blocks_two_workers_equal_reference(
    world: World,  # noqa: F811
    spills: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill, "_BLOCK", 5)  # forked workers inherit it
    out = _backfill(world, "event_time", False, workers=2)
    want = world.reference("event_time", False)
    problems = mismatches(engine_values(out, ALL_REFS), want, world.labels)
    assert not problems, _report(problems)


def test_log_in_clock_order_streams_without_waiting(
    world: World,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Imported in event-time order, no record ever waits for a label: pass 2 folds as it
    reads, so memory does not grow with the log."""
    store = FeatureStore.from_repo(make_reference_repo(tmp_path / "repo", VIEWS))
    rows = world.rows.sort_values("ts", kind="stable").reset_index(drop=True)
    store.import_events("tx", rows)
    ordered = World(store, rows, read_log(store, rows), world.labels)

    def refuse(*args: Any) -> None:
        raise AssertionError("a record waited in a log that is in clock order")

    monkeypatch.setattr(backfill._Held, "push", refuse)
    for block in (1, 7, 1024):
        monkeypatch.setattr(backfill, "_BLOCK", block)
        out = _backfill(ordered, "event_time", False, workers=1)
        want = ordered.reference("event_time", False)
        problems = mismatches(engine_values(out, ALL_REFS), want, ordered.labels)
        assert not problems, _report(problems)


VIEW = """
v = FeatureView("v", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="1h"),
    Aggregation("qty", "count", window="lifetime"),
])
def above_two(row):
    return row["amount"] > 2.0
big = FeatureView("big", entity=customer, source=tx, filter=above_two,
    aggregations=[Aggregation("amount", "sum", window="1h")])
"""


def _envelope(offset: int, customer: str, amount: float, ts: int) -> Envelope:
    payload = {"customer_id": customer, "merchant_id": "m", "amount": amount, "qty": 1, "ts": ts}
    return Envelope(partition=0, offset=offset, key=customer.encode(), event_time_ms=ts,
                    processed_at_ms=ts, payload=payload)  # fmt: skip


class _Log:
    """An ``EventLogSource`` of one partition; ``second`` (if given) is what pass 2 reads."""

    def __init__(self, first: list[Envelope], second: list[Envelope] | None = None) -> None:
        self.reads = [first, second if second is not None else first]
        self.count = 0

    def partitions(self, source: str) -> list[int]:
        return [0]

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        self.count += 1
        return iter(self.reads[min(self.count, 2) - 1])


@pytest.fixture
def plan(make_repo: Callable[..., Path]) -> Any:
    return FeatureStore.from_repo(make_repo(VIEW, yaml="kafka:\n  partitions: 1\n")).plan


def _request(view: str, entities: list[str], times: list[int]) -> backfill.ViewRequest:
    return backfill.ViewRequest(
        view=view,
        entities=backfill.EntityColumns([entities]),
        times_ms=np.asarray(times, dtype=np.int64),
        indices=(0, 1) if view == "v" else (0,),
    )


def test_entity_tiles_dropped_after_its_last_label(
    plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records at or after an entity's last label are not folded; filtered views agree."""
    events = [_envelope(k, "a" if k % 2 else "b", float(k), T0 + k * MIN) for k in range(100)]
    folded: list[str] = []
    apply = backfill.apply_extracted

    def counting(view: Any, tiles: Any, item: Any) -> None:
        folded.append(item.entity[0])
        apply(view, tiles, item)

    monkeypatch.setattr(backfill, "apply_extracted", counting)
    monkeypatch.setattr(backfill, "_BLOCK", 8)
    t_a, t_b = T0 + 20 * MIN, T0 + 90 * MIN
    requests = [_request("v", ["a", "b", "a"], [t_a, t_b, t_a]),
                _request("big", ["a", "b"], [t_a, t_b])]  # fmt: skip
    got = backfill.run(plan, _Log(events), requests, mode="event_time", workers=1)
    odd = [k for k in range(20) if k % 2]  # a's events before T0+20m
    even = list(range(0, 90, 2))  # b's events before T0+90m
    window_b = [k for k in even if k >= 30]  # [T0+30m, T0+90m)
    assert got[0] == [[float(sum(odd)), len(odd)], [float(sum(window_b)), len(even)],
                      [float(sum(odd)), len(odd)]]  # fmt: skip
    assert got[1] == [[float(sum(k for k in odd if k > 2))], [float(sum(window_b))]]
    # each view folds a's 10 events before its label, never the 40 after; b's 45 likewise
    assert folded.count("a") == 10 + sum(k > 2 for k in odd)
    assert folded.count("b") == 45 + sum(k > 2 for k in even)


def test_log_changing_between_passes_is_an_error(plan: Any) -> None:
    first = [_envelope(k, "a", 1.0, T0 + k * MIN) for k in (0, 10, 20)]
    second = [_envelope(k, "a", 1.0, T0 + k * MIN) for k in (0, 20, 5)]
    request = _request("v", ["a", "a"], [T0 + 15 * MIN, T0 + 25 * MIN])
    with pytest.raises(EventLogError, match="changed while the backfill read it"):
        backfill.run(plan, _Log(first, second), [request], mode="event_time", workers=1)
    # appended records (pass 2 sees more) are ignored: the backfill reads what pass 1 saw
    grown = [*first, _envelope(30, "a", 1.0, T0)]
    got = backfill.run(plan, _Log(first, grown), [request], mode="event_time", workers=1)
    assert got == [[[2.0, 2], [3.0, 3]]]


# ---------------------------------------------------------------------------------------------
# output columns


def _rule(values: list[Any]) -> Any:
    """The dtype rule of the row-based output the columns replaced."""
    if all(type(v) is int and -(1 << 63) <= v < (1 << 63) for v in values):
        return np.dtype("int64")
    if all(v is None or type(v) in (int, float) for v in values) and any(
        type(v) is float for v in values
    ):
        return np.dtype("float64")
    return np.dtype(object)


COLUMNS = [
    [1, 2, -(1 << 63), (1 << 63) - 1],
    [1, None, 3],
    [1.5, None, 2, -0.0, math.inf],
    [1.5, 1 << 70, None],
    [1, 1 << 64],
    [True, 1, 2.0],
    ["x", None, 3],
    [[1.0, 2.0], None, 1],
    [],
]


@pytest.mark.parametrize("values", COLUMNS)
def test_columns_keep_values_and_dtype(values: list[Any]) -> None:
    """Values come back as they went in, and the dtype follows the row-based rule."""
    default = values[0] if values else 0
    column = backfill._Column(len(values) + 2, default)  # the last two keep the default
    writer = backfill._ColumnWriter()
    for v in reversed(values):
        writer.add(v)
    column.write(np.arange(len(values), dtype=np.int64)[::-1].copy(), writer)  # any order
    want = [*values, default, default]
    got = column.to_list()
    assert [type(v) for v in got] == [type(v) for v in want]
    assert [_bits(v) for v in got] == [_bits(v) for v in want]
    array = column.to_numpy()
    expected = pd.Series(want, dtype=_rule(want))
    assert array.dtype == expected.dtype
    pd.testing.assert_series_equal(pd.Series(array), expected)


def _bits(x: Any) -> Any:
    return struct.pack("<d", x) if type(x) is float else x
