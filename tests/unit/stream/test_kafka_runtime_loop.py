"""The kafka runtime's loop with fakes behind its Protocols: retry without commit, revokes
during a backoff, re-assignment, commit failures, drain on stop.

The real broker and Redis are exercised in tests/integration/test_kafka_runtime.py; here a
scripted consumer makes the rare interleavings happen on purpose.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from engine.stream.core import BatchOutcome, SourceRecord
from engine.stream.kafka_runtime import (
    KafkaWorker,
    OwnedPartitionsLog,
    PartitionsCallback,
    SourceWiring,
    WorkerOptions,
)

TOPIC = "tx"
FAST = WorkerOptions(backoff_initial_s=0.001, backoff_max_s=0.004, drain_timeout_s=0.05)


def rec(partition: int, offset: int) -> SourceRecord:
    return SourceRecord(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=b"v")


class FakeProcessor:
    """Fails ``failures`` times, then succeeds; remembers what it was given."""

    def __init__(self, failures: int = 0, on_failure: Callable[[int], None] | None = None) -> None:
        self.failures = failures
        self.on_failure = on_failure
        self.calls: list[list[tuple[int, int]]] = []
        self.forgotten: list[list[int]] = []

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
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
    worker, consumer, stop = worker_for(processor, [[rec(0, 5), rec(1, 7), rec(1, 8)]])
    consumer.events[2] = lambda: consumer.on_revoke([(TOPIC, 1)])  # the first poll of the wait
    worker.run(stop)
    assert processor.calls == [[(0, 5), (1, 7), (1, 8)], [(0, 5)]]
    assert processor.forgotten == [[1]]
    assert consumer.commits == [{(TOPIC, 0): 6}]  # nothing for the partition now owned elsewhere


def test_a_partition_revoked_and_assigned_back_is_not_committed_from_the_stale_batch() -> None:
    processor = FakeProcessor(failures=1)
    worker, consumer, stop = worker_for(processor, [[rec(0, 5), rec(1, 7)]])

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


def test_stop_while_a_batch_keeps_failing_leaves_it_uncommitted_after_the_drain_timeout() -> None:
    processor = FakeProcessor(failures=10_000)
    worker, consumer, stop = worker_for(processor, [[rec(0, 0)], [rec(0, 1)]])
    processor.on_failure = lambda n: stop.set() if n == 2 else None
    started = time.monotonic()
    stats = worker.run(stop)
    assert time.monotonic() - started < 5
    assert consumer.commits == [] and stats.records == 0
    assert consumer.batches == [[rec(0, 1)]]  # the loop did not move on to newer records
    assert consumer.closed
