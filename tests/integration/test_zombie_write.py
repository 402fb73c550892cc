"""A worker that lost its partition but still finishes a batch (a "zombie") cannot overwrite
what the partition's new owner wrote since: each entity write is a compare-and-set on the
partition's fence, against real Redis. Two batch processors stand for the two workers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from connectors.eventlog import EventLogReader, EventLogWriter
from engine.errors import OnlineWriteConflict
from engine.keys import encode_key
from engine.online import parse_state, state_key
from engine.ports import DeadLetter
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.stream_harness import online_store
from tests.unit.conftest import HEADER

pytestmark = pytest.mark.redis

T0 = 1_800_000_000_000
BODY = """
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="1h"),
    Aggregation("amount", "count", window="lifetime"),
])
"""


class Letters:
    def send(self, letters: Sequence[DeadLetter]) -> None:
        raise AssertionError(f"no dead letters expected: {letters}")


def test_a_zombie_write_is_refused_after_the_new_owner_wrote(
    tmp_path: Path, redis_url: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(HEADER + BODY)
    (repo / "skewless.yaml").write_text(f"redis:\n  url: {redis_url}\n")
    store = FeatureStore.from_repo(repo)
    codec = SourceCodec(store.plan.sources["tx"])
    records = [
        SourceRecord(topic="tx", partition=0, offset=i, key=encode_key(["c1"]),
                     value=codec.encode({"customer_id": "c1", "merchant_id": "m", "qty": i,
                                         "amount": float(i + 1), "ts": T0 + i}))
        for i in range(6)
    ]  # fmt: skip
    online = online_store(redis_url)

    def worker(name: str) -> tuple[BatchProcessor, Path]:
        root = tmp_path / name
        log = EventLogWriter(str(root), "tx", dict(store.plan.sources["tx"].schema))
        clock = iter(range(T0 + 1_000, T0 + 10**6, 1_000))
        core = BatchProcessor(store.plan, "tx", online=online, log=log, dead=Letters(),
                              clock=lambda: next(clock))  # fmt: skip
        return core, root

    zombie, zombie_log = worker("zombie")
    owner, _ = worker("owner")
    zombie.process(records[:3])  # fence 2, cached by the zombie
    owner.process(records)  # the new owner replays from the last commit: 3..5 applied
    view = store.plan.views["spend"]
    key = state_key(view, ("c1",))
    after_owner = online.load([key])[0]
    assert parse_state(view, after_owner)[0].fence == 5

    with pytest.raises(OnlineWriteConflict) as caught:
        zombie.process(records[3:5])  # its stale cache says fence 2
    assert caught.value.keys == (key,)
    assert online.load([key])[0] == after_owner  # nothing of the zombie's write landed
    logged = sorted(e.offset for e in EventLogReader(str(zombie_log)).read("tx", 0))
    assert logged == [0, 1, 2]  # and it logged nothing of the refused batch
