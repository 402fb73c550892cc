"""The backfill on a rolling event log (issue 11 part 3): a zombie that kept appending to
its open file past the next owner's start, and a torn tail on the current owner's open
file, change nothing — on the native file path (``Sweep.add_log_file``'s upper limit) and
on the Python path alike. Compared with the same records logged cleanly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from connectors.eventlog import EventLogReader, EventLogWriter, open_file_name
from engine import FeatureStore
from engine.envelope import Envelope
from engine.rebuild import _replay
from tests.unit.test_backfill_reference import (
    ALL_REFS,
    World,
    world,  # noqa: F401  (module fixture, used by name)
)
from tests.unit.test_backfill_reference import make_repo as make_reference_repo

BATCH = 200


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory, world: World) -> FeatureStore:  # noqa: F811
    """``world``'s records as stream offsets, written by two owners of rolling files."""
    store = FeatureStore.from_repo(make_reference_repo(tmp_path_factory.mktemp("rolled") / "repo"))
    root = store.config.event_log_root
    schema = dict(store.plan.sources["tx"].schema)
    by_partition: dict[int, list[Envelope]] = {}
    for e in EventLogReader(world.store.config.event_log_root).read_all("tx"):
        mine = by_partition.setdefault(e.partition, [])
        mine.append(replace(e, offset=len(mine)))
    clean = EventLogWriter(str(Path(root).parent / "clean-log"), "tx", schema, roll_bytes=0)
    for p, envs in sorted(by_partition.items()):
        clean.append(envs)
        half = len(envs) // 2
        zombie = EventLogWriter(root, "tx", schema, roll_bytes=1 << 30)
        zombie.begin_epoch(p, 1, start=0)
        for i in range(0, half, BATCH):
            zombie.append(envs[i : min(i + BATCH, half)])
        owner = EventLogWriter(root, "tx", schema, roll_bytes=1 << 30)
        owner.begin_epoch(p, 2, start=half)
        # the zombie wakes and appends its stale copies past the handover: other values,
        # other processing times (each would change features if it were read)
        junk = [
            replace(e, processed_at_ms=e.processed_at_ms + 3_600_000,
                    payload={**e.payload, "amount": 1e6, "qty": 999})
            for e in envs[half : half + 300]
        ]  # fmt: skip
        zombie.append(junk)
        for i in range(half, len(envs), BATCH):
            owner.append(envs[i : i + BATCH])
        folder = Path(root) / "tx" / f"partition={p}"
        with open(folder / open_file_name(half, 2), "ab") as out:
            out.write(b"\x02\x90\x03torn: a block being written when the worker died")
    return store


@pytest.mark.parametrize(
    ("mode", "include_late"), [("event_time", False), ("processing_time", True)]
)
def test_a_rolling_log_with_a_zombie_and_a_torn_tail_backfills_as_the_clean_log(
    world: World,  # noqa: F811
    rolled: FeatureStore,
    mode: str,
    include_late: bool,
) -> None:
    got = rolled.get_historical_features(
        world.labels.frame(),
        ALL_REFS,
        mode=mode,
        include_late=include_late,
        workers=1,
        full_feature_names=True,
    )
    pd.testing.assert_frame_equal(got, world.backfill(mode, include_late))


def test_a_rolling_log_reads_back_each_record_once(
    world: World,  # noqa: F811
    rolled: FeatureStore,
) -> None:
    clean = list(EventLogReader(world.store.config.event_log_root).read_all("tx"))
    read = list(EventLogReader(rolled.config.event_log_root).read_all("tx"))
    assert len(read) == len(clean)
    assert [(e.partition, e.payload, e.processed_at_ms) for e in read] == [
        (e.partition, e.payload, e.processed_at_ms) for e in clean
    ]
    assert EventLogReader(rolled.config.event_log_root).count("tx") == len(clean)


def test_rebuild_replays_a_rolling_log_with_a_zombie_as_the_clean_log(
    rolled: FeatureStore,
) -> None:
    """``skewless rebuild-online``'s replay (engine/rebuild.py, the core decoding files)."""
    root = rolled.config.event_log_root
    plan = rolled.plan
    views = [v for v in plan.views.values() if v.source == "tx"]
    clean_log = EventLogReader(str(Path(root).parent / "clean-log"))
    for p in EventLogReader(root).partitions("tx"):
        for view in views:
            got = _replay([view], plan, EventLogReader(root), p, None, 2_000_000_000_000,
                          drop_expired=False)  # fmt: skip
            want = _replay([view], plan, clean_log, p, None, 2_000_000_000_000,
                           drop_expired=False)  # fmt: skip
            assert got.records == want.records > 0
            assert got.last_offset == want.last_offset
            assert [(v, list(w)) for v, w in got.writes] == [(v, list(w)) for v, w in want.writes]
