"""Owner epochs against real Redis (issue 11): the register, fenced scripts, and two batch
processors standing for a zombie and its successor on one partition, in the interleavings
that broke exactly-once before (docs/reliability.md#owner-epochs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors.eventlog import EventLogReader, EventLogWriter
from engine.errors import OwnerFenced
from engine.keys import encode_key
from engine.ports import DeadLetter, StateWrite, Watermark
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from engine.stream.ownership import Ownership, register_key
from engine.stream.recovery import StateRecovery
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


# -- the register and fenced scripts -----------------------------------------------------


def test_take_refuses_an_earlier_generation_and_epochs_only_grow(redis_url: str) -> None:
    store = online_store(redis_url)
    key = register_key("g", "tx", 0)
    assert store.take_epochs([key], 5, [0]) == [1]
    assert store.take_epochs([key], 5, [0]) == [2]  # the same member again: a new epoch
    assert store.take_epochs([key], 4, [0]) == [None]  # a zombie of generation 4
    assert store.take_epochs([key], 9, [10]) == [11]  # above what the log already holds
    other = register_key("g", "tx", 1)
    assert store.take_epochs([key, other], 3, [0, 0]) == [None, 1]


def test_a_fenced_call_applies_nothing_and_the_marks_stay(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = online_store(redis_url)
    key = register_key("g", "tx", 0)
    (mine,) = store.take_epochs([key], 1, [0])
    assert mine is not None
    write = StateWrite(key="sk:test:{c1}", fields={"f:0": b"1"})
    mark = Watermark(key="sk:wm:test:0", value=b"1")
    assert store.write([write], [mark], fence=[(key, mine)]) == [None]
    store.take_epochs([key], 2, [0])  # the next owner
    late = StateWrite(key="sk:test:{c2}", fields={"f:0": b"2"})
    with pytest.raises(OwnerFenced) as caught:
        store.write([late], [Watermark(key="sk:wm:test:0", value=b"9")], fence=[(key, mine)])
    assert caught.value.keys == (key,)
    assert redis_client.exists("sk:test:{c2}") == 0
    assert redis_client.get("sk:wm:test:0") == b"1"


def test_without_scripting_the_fence_holds_through_watch_and_multi(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = online_store(redis_url)
    store._scripts_allowed = False  # what an ACL without @scripting makes it learn
    key = register_key("g", "tx", 0)
    (mine,) = store.take_epochs([key], 1, [0])
    assert mine == 1
    store.write([StateWrite(key="sk:test:{a}", fields={"f": b"1"})], fence=[(key, 1)])
    assert store.take_epochs([key], 2, [0]) == [2]
    with pytest.raises(OwnerFenced):
        store.write([StateWrite(key="sk:test:{b}", fields={"f": b"1"})], fence=[(key, 1)])
    assert redis_client.exists("sk:test:{b}") == 0
    assert store.take_epochs([key], 1, [0]) == [None]


# -- a zombie and its successor -----------------------------------------------------------


class DeferredLog:
    """An event log sink whose appends land only when released: a worker paused between its
    Redis write and its log append (the window a SIGSTOP hits)."""

    def __init__(self, writer: EventLogWriter) -> None:
        self.writer = writer
        self.held: list[tuple[str, tuple[Any, ...]]] = []
        self.hold = False

    def append(self, records: Any) -> list[str]:
        if self.hold:
            self.held.append(("append", (records,)))
            return []
        return self.writer.append(records)

    def append_batch_columns(self, *args: Any) -> list[str]:
        if self.hold:
            self.held.append(("append_batch_columns", args))
            return []
        return self.writer.append_batch_columns(*args)

    def release(self) -> None:
        for name, args in self.held:
            getattr(self.writer, name)(*args)
        self.held.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


@pytest.fixture
def setup(tmp_path: Path, redis_url: str) -> Callable[..., Any]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(HEADER + BODY)
    (repo / "skewless.yaml").write_text(f"redis:\n  url: {redis_url}\n")
    store = FeatureStore.from_repo(repo)
    online = online_store(redis_url)
    root = str(tmp_path / "log")
    clock = iter(range(T0 + 1_000, T0 + 10**9, 1_000))

    def worker() -> tuple[BatchProcessor, DeferredLog]:
        log = DeferredLog(EventLogWriter(root, "tx", dict(store.plan.sources["tx"].schema)))
        recovery = StateRecovery(store.plan, EventLogReader(root), online, log_root=root,
                                 clock=lambda: next(clock))  # fmt: skip
        own = Ownership(online, group="g", topic="tx", log=log)
        core = BatchProcessor(store.plan, "tx", online=online, log=log, dead=Letters(),
                              clock=lambda: next(clock), recovery=recovery, ownership=own)  # fmt: skip
        return core, log

    codec = SourceCodec(store.plan.sources["tx"])
    records = [
        SourceRecord(topic="tx", partition=0, offset=i, key=encode_key(["c1"]),
                     value=codec.encode({"customer_id": "c1", "merchant_id": "m", "qty": i,
                                         "amount": float(i + 1), "ts": T0 + i}))
        for i in range(30)
    ]  # fmt: skip
    return lambda: (worker, records, store, online, root)


def _online_sum(store: FeatureStore) -> float:
    values = store.get_online_features(
        ["spend:amount_count_lifetime", "spend:amount_sum_1h"], [{"customer_id": "c1"}],
        now_ms=T0 + 60_000,
    ).to_dict()  # fmt: skip
    return float(values["amount_sum_1h"][0])


def test_a_zombie_batch_after_the_handover_is_refused_and_never_logged(
    setup: Callable[..., Any],
) -> None:
    worker, records, store, _online, root = setup()
    zombie, _ = worker()
    zombie.assign([0], generation=1)
    assert zombie.process(records[:10]).commits == {0: 10}
    owner, _ = worker()
    owner.assign([0], generation=2)
    assert owner.process(records[10:20]).commits == {0: 20}  # the zombie committed 10
    late = zombie.process(records[10:25])  # it wakes with a batch in hand
    assert late.commits == {} and late.dropped == 15 and late.fenced_partitions == (0,)
    assert zombie.process(records[25:30]).dropped == 5  # dropped until assigned again
    assert owner.process(records[20:30]).commits == {0: 30}
    logged = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in logged] == list(range(30))
    assert _online_sum(store) == sum(float(i + 1) for i in range(30))


def test_a_zombie_paused_between_its_redis_write_and_its_log_append(
    setup: Callable[..., Any],
) -> None:
    """The interleaving that left two copies with different processed_at (issue 11)."""
    worker, records, store, _online, root = setup()
    zombie, zombie_log = worker()
    zombie.assign([0], generation=1)
    zombie.process(records[:10])
    zombie_log.hold = True
    zombie.process(records[10:20])  # Redis written, the log append paused
    owner, _ = worker()
    owner.assign([0], generation=2)
    owner.process(records[10:30])  # the fences skip 10..19 online; it logs them itself
    zombie_log.release()  # the zombie's late file lands
    logged = list(EventLogReader(root).read("tx", 0))
    assert [e.offset for e in logged] == list(range(30))  # once each
    held = {e.offset: e.processed_at_ms for e in logged}
    journal = {o: held[o] for o in range(10, 20)}
    assert len(set(journal.values())) == 1  # the zombie's processed_at, from the journal
    assert _online_sum(store) == sum(float(i + 1) for i in range(30))
    files = [p.rsplit("/", 1)[1] for _, _, p in EventLogReader(root).files("tx", 0)]
    assert not any(name.endswith(".e1.avro") and name.startswith(f"{10:020d}") for name in files)


def test_a_stale_assignment_takes_nothing_and_writes_nothing(setup: Callable[..., Any]) -> None:
    """A worker stopped between its assignment and its first batch wakes after the group
    moved on: its take is refused, so it cannot fence the rightful owner."""
    worker, records, _store, _online, root = setup()
    owner, _ = worker()
    owner.assign([0], generation=2)
    owner.process(records[:10])
    stale, stale_log = worker()
    stale.assign([0], generation=1)
    outcome = stale.process(records[:20])
    assert outcome.commits == {} and outcome.fenced_partitions == (0,)
    assert stale_log.writer.max_epoch(0) == 1  # no marker of the stale worker
    assert owner.process(records[10:20]).commits == {0: 20}  # the owner was not disturbed
    assert [e.offset for e in EventLogReader(root).read("tx", 0)] == list(range(20))
