"""The kafka runtime's loop with fakes behind its Protocols: retry without commit, revokes
during a backoff, re-assignment, commit failures, drain on stop.

The real broker and Redis are exercised in tests/integration/test_kafka_runtime.py; here a
scripted consumer makes the rare interleavings happen on purpose.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from engine.stream import kafka_runtime
from engine.stream.core import BatchOutcome, SourceRecord
from engine.stream.kafka_runtime import (
    PIPELINE_ENV,
    KafkaWorker,
    OwnedPartitionsLog,
    PartitionsCallback,
    SourceWiring,
    WorkerOptions,
)

TOPIC = "tx"


@pytest.fixture(autouse=True, params=[False, True], ids=["serial", "pipeline"])
def pipeline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test runs with the loop serial and with the pipeline (which here decodes every
    batch ahead, however small)."""
    monkeypatch.setenv(PIPELINE_ENV, "1" if request.param else "0")
    monkeypatch.setattr(kafka_runtime, "AHEAD_MIN_RECORDS", 1)
    return bool(request.param)


FAST = WorkerOptions(backoff_initial_s=0.001, backoff_max_s=0.004, drain_timeout_s=0.05)
# a retry's wait long enough that its first poll falls inside it on a loaded machine too
BACKOFF = WorkerOptions(backoff_initial_s=0.05, backoff_max_s=0.05, drain_timeout_s=0.05)


def rec(partition: int, offset: int) -> SourceRecord:
    return SourceRecord(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=b"v")


class FakeProcessor:
    """Fails ``failures`` times, then succeeds; remembers what it was given."""

    def __init__(self, failures: int = 0, on_failure: Callable[[int], None] | None = None) -> None:
        self.failures = failures
        self.on_failure = on_failure
        self.calls: list[list[tuple[int, int]]] = []
        self.forgotten: list[list[int]] = []
        self.decoded: list[list[tuple[int, int]]] = []  # decoded ahead (the pipeline)

    def decode(self, records: Sequence[SourceRecord]) -> object:
        self.decoded.append([(r.partition, r.offset) for r in records])
        return records

    def process(self, records: Sequence[SourceRecord], *, decoded: object = None) -> BatchOutcome:
        self.calls.append([(r.partition, r.offset) for r in records])
        if self.failures:
            self.failures -= 1
            if self.on_failure is not None:
                self.on_failure(len(self.calls))
            raise ConnectionError("Redis at 127.0.0.1:6379/0 failed")
        commits: dict[int, int] = {}
        for r in records:
            commits[r.partition] = max(commits.get(r.partition, 0), r.offset + 1)
        return BatchOutcome(commits=commits, processed_at_ms=0, records=len(records),
                            refused=Counter(), applied=len(records), late=0, fenced=0,
                            entities_written=0)  # fmt: skip

    def forget_partitions(self, partitions: Sequence[int]) -> None:
        self.forgotten.append(sorted(partitions))


class NullLog:
    def append(self, records: Sequence[object]) -> list[str]:
        return []

    def last_offset(self, partition: int) -> int | None:
        return None


class ScriptedConsumer:
    """Hands out ``batches`` one per unpaused poll; ``events[n]`` runs at the n-th poll."""

    def __init__(self, batches: list[list[SourceRecord]], stop: threading.Event) -> None:
        self.batches = list(batches)
        self.stop = stop
        self.polls = 0
        self.events: dict[int, Callable[[], None]] = {}
        self.paused = False
        self.pauses = 0
        self.commits: list[dict[tuple[str, int], int]] = []
        self.fail_commits = 0
        self.fail_async = 0  # asynchronous commits to fail (reported by failed_commits)
        self.failed: dict[tuple[str, int], int] = {}
        self.closed = False
        self.on_assign: PartitionsCallback = lambda parts: None
        self.on_revoke: PartitionsCallback = lambda parts: None
        self.on_lost: PartitionsCallback = lambda parts: None

    def factory(
        self,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> ScriptedConsumer:
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost
        return self

    def poll_batch(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        self.polls += 1
        if self.polls == 1:
            self.on_assign([(TOPIC, 0), (TOPIC, 1)])
        event = self.events.pop(self.polls, None)
        if event is not None:
            event()
        if self.paused:
            time.sleep(min(timeout_s, 0.001))
            return []
        if not self.batches:
            self.stop.set()
            return []
        return self.batches.pop(0)

    def commit(self, offsets: Mapping[tuple[str, int], int], *, wait: bool = True) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise ConnectionError("coordinator unavailable")
        if not wait and self.fail_async:
            self.fail_async -= 1
            self.failed.update(offsets)  # reported by the next failed_commits()
            return
        self.commits.append(dict(offsets))

    def failed_commits(self) -> tuple[dict[tuple[str, int], int], str]:
        failed, self.failed = self.failed, {}
        return failed, "REBALANCE_IN_PROGRESS" if failed else ""

    def pause_all(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_all(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


def worker_for(
    processor: FakeProcessor, batches: list[list[SourceRecord]], options: WorkerOptions = FAST
) -> tuple[KafkaWorker, ScriptedConsumer, threading.Event]:
    stop = threading.Event()
    consumer = ScriptedConsumer(batches, stop)
    wiring = SourceWiring(processor=processor, log=OwnedPartitionsLog(NullLog))  # type: ignore[arg-type]
    worker = KafkaWorker({TOPIC: wiring}, consumer.factory, options)  # type: ignore[arg-type]
    return worker, consumer, stop


def test_commits_after_each_batch_with_the_next_offsets() -> None:
    processor = FakeProcessor()
    worker, consumer, stop = worker_for(processor, [[rec(0, 0), rec(1, 0), rec(0, 1)], [rec(1, 1)]])
    stats = worker.run(stop)
    assert consumer.commits == [{(TOPIC, 0): 2, (TOPIC, 1): 1}, {(TOPIC, 1): 2}]
    assert stats.records == 4 and stats.batches == 2 and stats.commits == 2
    assert consumer.closed


def test_a_failing_batch_is_retried_whole_and_not_committed_until_it_succeeds() -> None:
    processor = FakeProcessor(failures=3)
    worker, consumer, stop = worker_for(processor, [[rec(0, 0), rec(0, 1), rec(1, 0)]])
    stats = worker.run(stop)
    assert processor.calls == [[(0, 0), (0, 1), (1, 0)]] * 4  # the same records every time
    assert consumer.commits == [{(TOPIC, 0): 2, (TOPIC, 1): 1}]
    assert stats.retries == 3 and "Redis at 127.0.0.1" in (stats.last_error or "")
    assert consumer.pauses >= 3 and not consumer.paused  # paused while waiting, resumed after


def test_records_of_a_partition_revoked_during_the_backoff_leave_the_retry() -> None:
    processor = FakeProcessor(failures=1)
    worker, consumer, stop = worker_for(processor, [[rec(0, 5), rec(1, 7), rec(1, 8)]], BACKOFF)
    consumer.events[2] = lambda: consumer.on_revoke([(TOPIC, 1)])  # the first poll of the wait
    worker.run(stop)
    assert processor.calls == [[(0, 5), (1, 7), (1, 8)], [(0, 5)]]
    assert processor.forgotten == [[1]]
    assert consumer.commits == [{(TOPIC, 0): 6}]  # nothing for the partition now owned elsewhere


def test_a_partition_revoked_and_assigned_back_is_not_committed_from_the_stale_batch() -> None:
    processor = FakeProcessor(failures=1)
    worker, consumer, stop = worker_for(processor, [[rec(0, 5), rec(1, 7)]], BACKOFF)

    def bounce() -> None:
        consumer.on_revoke([(TOPIC, 1)])
        consumer.on_assign([(TOPIC, 1)])  # a new assignment: it restarts from the commit

    consumer.events[2] = bounce
    worker.run(stop)
    assert processor.calls[-1] == [(0, 5)]
    assert consumer.commits == [{(TOPIC, 0): 6}]


def test_a_failed_commit_is_kept_and_sent_with_the_next_one() -> None:
    processor = FakeProcessor()
    worker, consumer, stop = worker_for(processor, [[rec(0, 0)], [rec(1, 0)]])
    consumer.fail_commits = 1
    stats = worker.run(stop)
    assert consumer.commits == [{(TOPIC, 0): 1, (TOPIC, 1): 1}]
    assert stats.commit_failures == 1


def test_a_failed_asynchronous_commit_is_queued_again_unless_superseded() -> None:
    processor = FakeProcessor()
    worker, consumer, stop = worker_for(processor, [[rec(0, 0)], [rec(1, 0)], [rec(1, 1)]])
    consumer.fail_async = 2  # both partitions' first asynchronous commits fail
    stats = worker.run(stop)
    # partition 0's failed offset 1 is sent again; partition 1's failed 1 was superseded by 2
    assert consumer.commits[-1] == {(TOPIC, 0): 1, (TOPIC, 1): 2}
    assert all(offsets.get((TOPIC, 1), 2) == 2 for offsets in consumer.commits)
    assert stats.commit_failures >= 1


def test_stop_while_a_batch_keeps_failing_leaves_it_uncommitted_after_the_drain_timeout(
    pipeline: bool,
) -> None:
    processor = FakeProcessor(failures=10_000)
    worker, consumer, stop = worker_for(processor, [[rec(0, 0)], [rec(0, 1)]])
    processor.on_failure = lambda n: stop.set() if n == 2 else None
    started = time.monotonic()
    stats = worker.run(stop)
    assert time.monotonic() - started < 5
    assert consumer.commits == [] and stats.records == 0
    # the loop did not move on to newer records (the pipeline fetched the next batch while
    # the first was in flight, but never processed it)
    assert all(call == [(0, 0)] for call in processor.calls)
    assert consumer.batches == ([] if pipeline else [[rec(0, 1)]])
    assert consumer.closed


# -- the pipeline (WorkerOptions.pipeline): batch n on a thread while n + 1 is fetched -----


class GatedProcessor(FakeProcessor):
    """A FakeProcessor whose ``process`` of the k-th batch on the pipeline's thread lasts
    until the loop decoded k batches ahead ("the write"; or ``stop``, or ``opened``), and
    that logs what happened in which order (``timeline``)."""

    def __init__(self, stop: threading.Event, failures: int = 0) -> None:
        super().__init__(failures)
        self.stop = stop
        self.opened = threading.Event()  # ends every wait
        self.timeline: list[tuple[str, list[tuple[int, int]]]] = []
        self.busy = threading.Lock()
        self.on_thread = 0

    def decode(self, records: Sequence[SourceRecord]) -> object:
        self.timeline.append(("decode", [(r.partition, r.offset) for r in records]))
        return super().decode(records)

    def process(self, records: Sequence[SourceRecord], *, decoded: object = None) -> BatchOutcome:
        which = [(r.partition, r.offset) for r in records]
        assert self.busy.acquire(blocking=False), "two batches processed at once"
        try:
            self.timeline.append(("start", which))
            if threading.current_thread() is not threading.main_thread():
                self.on_thread += 1
                deadline = time.monotonic() + 2
                while (len(self.decoded) < self.on_thread and not self.stop.is_set()
                       and not self.opened.is_set() and time.monotonic() < deadline):  # fmt: skip
                    time.sleep(0.001)
            out = super().process(records)
            self.timeline.append(("end", which))
            return out
        except Exception:
            self.timeline.append(("failed", which))
            raise
        finally:
            self.busy.release()


def pipelined(
    batches: list[list[SourceRecord]], failures: int = 0
) -> tuple[KafkaWorker, ScriptedConsumer, threading.Event, GatedProcessor]:
    stop = threading.Event()
    processor = GatedProcessor(stop, failures)
    worker, consumer, _ = worker_for(processor, batches)
    consumer.stop = stop
    commit = consumer.commit

    def logged_commit(offsets: Mapping[tuple[str, int], int], *, wait: bool = True) -> None:
        processor.timeline.append(("commit", sorted((p, o) for (_, p), o in offsets.items())))
        commit(offsets, wait=wait)

    consumer.commit = logged_commit  # type: ignore[method-assign]
    return worker, consumer, stop, processor


def test_the_pipeline_decodes_the_next_batch_beside_a_write_and_applies_it_after(
    pipeline: bool,
) -> None:
    if not pipeline:
        return
    worker, _, stop, processor = pipelined([[rec(0, 0), rec(1, 0)], [rec(0, 1)], [rec(1, 1)]])
    assert worker.pipeline
    stats = worker.run(stop)
    at = {(what, tuple(which)): i for i, (what, which) in enumerate(processor.timeline)}
    b1, b2, b3 = ((0, 0), (1, 0)), ((0, 1),), ((1, 1),)
    # batch 2 was fetched and decoded while batch 1 was in flight ...
    assert at["decode", b2] < at["end", b1]
    # ... and applied only once batch 1 was done and its offsets committed
    assert at["end", b1] < at["commit", ((0, 1), (1, 1))] < at["start", b2]
    assert at["decode", b3] < at["end", b2]
    assert at["end", b2] < at["commit", ((0, 2),)] < at["start", b3] < at["end", b3]
    assert at["end", b3] < at["commit", ((1, 2),)]
    assert stats.batches == 3 and stats.records == 4


def test_a_failed_batch_holds_the_next_one_back_until_its_retry_succeeded(
    pipeline: bool,
) -> None:
    if not pipeline:
        return
    worker, _, stop, processor = pipelined([[rec(0, 0)], [rec(0, 1)]], failures=2)
    worker.run(stop)
    events = [(what, which) for what, which in processor.timeline if what != "decode"]
    assert events == [
        ("start", [(0, 0)]),
        ("failed", [(0, 0)]),  # on the thread, while batch 2 was fetched and decoded
        ("start", [(0, 0)]),
        ("failed", [(0, 0)]),  # retried by the loop, batch 2 waiting in the stash
        ("start", [(0, 0)]),
        ("end", [(0, 0)]),
        ("commit", [(0, 1)]),
        ("start", [(0, 1)]),  # only now, and decoded again (its first decoding was dropped)
        ("end", [(0, 1)]),
        ("commit", [(0, 2)]),
    ]
    assert processor.decoded.count([(0, 1)]) == 1  # the stash's records go to the thread whole


def test_a_revoke_while_a_batch_is_in_flight_waits_for_it_and_commits_it(
    pipeline: bool,
) -> None:
    if not pipeline:
        return
    worker, consumer, stop, processor = pipelined([[rec(0, 3), rec(1, 4)], [rec(0, 4), rec(1, 5)]])
    revoked: list[list[str]] = []

    def revoke() -> None:  # inside the poll that fetches batch 2, batch 1 still in flight
        deadline = time.monotonic() + 2
        while not processor.timeline and time.monotonic() < deadline:
            time.sleep(0.001)  # batch 1 has started on the thread
        revoked.append([what for what, _ in processor.timeline])
        processor.opened.set()  # batch 1's "write" ends while the revoke waits for it
        consumer.on_revoke([(TOPIC, 1)])

    consumer.events[2] = revoke
    worker.run(stop)
    assert revoked == [["start"]]  # batch 1 was in flight when the revoke began
    commit_at = processor.timeline.index(("commit", [(1, 5)]))  # the revoke's, of batch 1
    assert processor.timeline.index(("end", [(0, 3), (1, 4)])) < commit_at
    assert processor.calls[1] == [(0, 4)]  # batch 2 without the revoked partition's records
    assert consumer.commits[-1] == {(TOPIC, 0): 5}


def test_stop_waits_for_the_batch_in_flight_and_commits_it(pipeline: bool) -> None:
    if not pipeline:
        return
    worker, consumer, stop, processor = pipelined([[rec(0, 0)], [rec(0, 1)]])
    consumer.events[3] = stop.set  # during the poll beside batch 2
    stats = worker.run(stop)
    # the loop fetched nothing more, and batch 2 was finished and committed before it left
    assert consumer.polls == 3 and processor.timeline[-1] == ("commit", [(0, 2)])
    assert processor.calls == [[(0, 0)], [(0, 1)]] and stats.batches == 2


def test_a_live_streams_small_batch_waits_for_the_one_in_flight_and_is_topped_up(
    pipeline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pipeline:
        return
    monkeypatch.setattr(kafka_runtime, "AHEAD_MIN_RECORDS", 2)
    processor = FakeProcessor()
    worker, consumer, stop = worker_for(processor, [[rec(0, 0)], [rec(0, 1)], [rec(0, 2)]])
    worker.run(stop)
    # [(0, 1)] came beside batch 1, too small to decode ahead: once batch 1 was done, it
    # went out with what had arrived meanwhile, as one batch
    assert processor.calls == [[(0, 0)], [(0, 1), (0, 2)]] and processor.decoded == []
    assert consumer.commits == [{(TOPIC, 0): 1}, {(TOPIC, 0): 3}]


# -- the batch trace ($SKEWLESS_WORKER_TRACE, benchmarks/stream.py --breakdown) ------------


class LoggingProcessor(FakeProcessor):
    """A FakeProcessor that appends each batch to its log, as ``BatchProcessor`` does after
    the online write."""

    def __init__(self, log: OwnedPartitionsLog) -> None:
        super().__init__()
        self.log = log

    def process(self, records: Sequence[SourceRecord], *, decoded: object = None) -> BatchOutcome:
        out = super().process(records)
        self.log.append(records)  # type: ignore[arg-type]
        return out


def test_the_trace_marks_every_step_of_every_batch_in_both_loops(
    pipeline: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(kafka_runtime.TRACE_ENV, str(path))
    owned = OwnedPartitionsLog(NullLog)  # type: ignore[arg-type]
    stop = threading.Event()
    consumer = ScriptedConsumer([[rec(0, 0), rec(1, 0), rec(0, 1)], [rec(1, 1)]], stop)
    wiring = SourceWiring(processor=LoggingProcessor(owned), log=owned)  # type: ignore[arg-type]
    KafkaWorker({TOPIC: wiring}, consumer.factory, FAST).run(stop)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(b["n"], b["parts"]) for b in lines] == [
        (3, {"0": [0, 1], "1": [0, 0]}),
        (1, {"1": [1, 1]}),
    ]
    # asked, had, (pipeline: handed to its thread), log began/ended, done, committed, gc
    steps = ["poll", "got", *(["start"] if pipeline else []), "log0", "log1", "done"]
    steps += ["commit", "gc"]
    for batch in lines:
        assert set(batch) == {*steps, "n", "parts"}
        times = [batch[step] for step in steps]
        assert times == sorted(times), batch
