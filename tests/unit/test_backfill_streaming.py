"""Backfill sweep: out-of-order logs, threads, compaction races, what the sweep keeps.

The runner hands every record to the native sweep (engine/backfill.py), which sorts each
entity's records by clock, so a log far out of clock order needs no waiting heap. These
tests check that on the brute-force reference's 3,000 events, with one and two threads,
on the native file path and on the Python (envelope) path, and check the rules about
which records a label may see.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from connectors.eventlog import EventLogReader
from engine import FeatureStore, backfill
from engine.envelope import Envelope
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


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("mode", "include_late"), [("event_time", False), ("processing_time", True)]
)
def test_out_of_order_log_equals_reference(
    world: World,  # noqa: F811
    workers: int,
    mode: str,
    include_late: bool,
) -> None:
    """The log is out of clock order (local swaps, 5% stragglers at the end, processing
    delays), read by one or two threads: every value still matches the reference."""
    out = _backfill(world, mode, include_late, workers=workers)
    problems = mismatches(engine_values(out, ALL_REFS), world.reference(mode, include_late),
                          world.labels)  # fmt: skip
    assert not problems, _report(problems)


def test_log_in_clock_order_equals_reference(
    world: World,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same events imported in event-time order give the reference values too."""
    store = FeatureStore.from_repo(make_reference_repo(tmp_path / "repo", VIEWS))
    rows = world.rows.sort_values("ts", kind="stable").reset_index(drop=True)
    store.import_events("tx", rows)
    ordered = World(store, rows, read_log(store, rows), world.labels)
    out = _backfill(ordered, "event_time", False, workers=1)
    want = ordered.reference("event_time", False)
    problems = mismatches(engine_values(out, ALL_REFS), want, ordered.labels)
    assert not problems, _report(problems)


class _Envelopes:
    """The same log as an ``EventLogSource`` without files: the Python (envelope) path."""

    def __init__(self, log: EventLogReader) -> None:
        self.log = log

    def partitions(self, source: str) -> list[int]:
        return self.log.partitions(source)

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        return self.log.read(source, partition)


def test_envelope_path_equals_file_path(world: World) -> None:  # noqa: F811
    """A log the core cannot read files of (verify's kept records, fakes) goes through
    Python; the values are the same as the native file path's."""
    store = world.store
    refs = store.plan.resolve(ALL_REFS)
    frame = world.labels.frame()
    times = np.asarray(frame["event_timestamp"].astype("int64") // 10**6, dtype=np.int64)
    requests = []
    for view, indices in backfill.requests_by_view(refs).items():
        keys = store.plan.views[view].join_keys
        entities = backfill.EntityColumns([frame[k].tolist() for k in keys])
        requests.append(backfill.ViewRequest(view=view, entities=entities, times_ms=times,
                                             indices=indices))  # fmt: skip
    log = EventLogReader(store.config.event_log_root)
    native = backfill.run(store.plan, log, requests, mode="event_time", workers=2)
    python = backfill.run(store.plan, _Envelopes(log), requests, mode="event_time", workers=1)
    assert [[list(map(_bits, row)) for row in req] for req in native] == [
        [list(map(_bits, row)) for row in req] for req in python
    ]


class _Compacting(EventLogReader):
    """Each file vanishes the first time it is read, as if a compaction merged it away."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.vanished: set[str] = set()

    def read_file(self, path: str) -> bytes:
        if path not in self.vanished:
            self.vanished.add(path)
            raise FileNotFoundError(path)
        return super().read_file(path)


def test_files_vanishing_mid_read_are_listed_again(world: World) -> None:  # noqa: F811
    """A compaction that removes a file after the listing: the partition is listed again
    and reading goes on after the last offset taken; nothing is lost or read twice."""
    store = world.store
    requests = [backfill.ViewRequest(view=v, entities=backfill.EntityColumns(
        [world.labels.frame()[k].tolist() for k in store.plan.views[v].join_keys]),
        times_ms=np.asarray(world.labels.frame()["event_timestamp"].astype("int64") // 10**6),
        indices=tuple(range(len(store.plan.views[v].aggregations))))
        for v in sorted(store.plan.views)]  # fmt: skip
    root = store.config.event_log_root
    want = backfill.run(store.plan, EventLogReader(root), requests, mode="event_time")
    flaky = _Compacting(root)
    got = backfill.run(store.plan, flaky, requests, mode="event_time")
    assert flaky.vanished, "no file vanished: the test did not reach the relisting path"
    assert [[list(map(_bits, row)) for row in req] for req in got] == [
        [list(map(_bits, row)) for row in req] for req in want
    ]


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
    """An ``EventLogSource`` of one partition."""

    def __init__(self, events: list[Envelope]) -> None:
        self.events = events

    def partitions(self, source: str) -> list[int]:
        return [0]

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        return iter(self.events)


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


def test_labels_see_only_earlier_records(plan: Any) -> None:
    """Records at or after a label are never seen by it (filtered views agree); records
    after an entity's last label change nothing."""
    events = [_envelope(k, "a" if k % 2 else "b", float(k), T0 + k * MIN) for k in range(100)]
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
    shorter = backfill.run(plan, _Log(events[:90]), requests, mode="event_time", workers=1)
    assert shorter == got


def test_a_record_at_the_label_time_is_not_seen(plan: Any) -> None:
    events = [_envelope(k, "a", 1.0, T0 + k * MIN) for k in (0, 10, 20)]
    request = _request("v", ["a", "a"], [T0 + 10 * MIN, T0 + 10 * MIN + 1])
    got = backfill.run(plan, _Log(events), [request], mode="event_time", workers=1)
    assert got == [[[1.0, 1], [2.0, 2]]]


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
