"""The Faust runtime's agent body with fakes for the stream and the processor: acks follow a
successful ``process`` only, a failing batch is retried with the same records, a stop while
backing off acks nothing, a stop during an attempt waits for it, a revoke forgets.

The real Faust app, broker and Redis are exercised in tests/integration/test_faust_runtime.py;
here the rare interleavings (a cancel in the middle of a batch) happen on purpose.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from engine.errors import OnlineStoreUnavailable
from engine.stream.core import BatchOutcome, SourceRecord
from engine.stream.faust_runtime import SourceRunner, _StatsLog
from engine.stream.kafka_runtime import OwnedPartitionsLog, SourceWiring, WorkerOptions

TOPIC = "tx"
FAST = WorkerOptions(backoff_initial_s=0.001, backoff_max_s=0.004)


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Event:
    message: Message
    journal: list[str]

    def ack(self) -> bool:
        self.journal.append(f"ack {self.message.partition}:{self.message.offset}")
        return True


@dataclass
class FakeStream:
    """Yields the given batches from ``noack_take`` (then ends, like a stopping stream)."""

    batches: list[list[Event]]
    journal: list[str]
    takes: list[tuple[int, float]] = field(default_factory=list)

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        self.takes.append((max_, within))
        for batch in self.batches:
            yield batch

    async def ack(self, event: Event) -> bool:
        return event.ack()


class FakeProcessor:
    """Fails ``failures`` times, then succeeds; can block an attempt until ``release``."""

    def __init__(self, journal: list[str], failures: int = 0, block: bool = False) -> None:
        self.journal = journal
        self.failures = failures
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.calls: list[list[tuple[int, int]]] = []
        self.forgotten: list[set[int]] = []

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        self.calls.append([(r.partition, r.offset) for r in records])
        self.journal.append(f"process {len(self.calls)}")
        self.started.set()
        self.release.wait(10)
        if self.failures:
            self.failures -= 1
            raise OnlineStoreUnavailable("Redis at 127.0.0.1:1/0 failed (write pipeline): down")
        commits: dict[int, int] = {}
        for r in records:
            commits[r.partition] = max(commits.get(r.partition, 0), r.offset + 1)
        return BatchOutcome(commits=commits, processed_at_ms=1, records=len(records),
                            refused=Counter(), applied=len(records), late=0, fenced=0,
                            entities_written=1)  # fmt: skip

    def forget_partitions(self, partitions: set[int]) -> None:
        self.forgotten.append(set(partitions))


def events(journal: list[str], *coords: tuple[int, int]) -> list[Event]:
    return [Event(Message(TOPIC, p, o, b"k", b"v"), journal) for p, o in coords]


def runner(processor: FakeProcessor, made: list[int] | None = None) -> SourceRunner:
    def make_log() -> OwnedPartitionsLog:
        if made is not None:
            made.append(1)
        return None  # type: ignore[return-value]  # never appended to by the fake processor

    wiring = SourceWiring(processor=processor, log=OwnedPartitionsLog(make_log))  # type: ignore[arg-type]
    return SourceRunner(TOPIC, wiring, FAST, _StatsLog(3600))


def test_acks_follow_success_and_a_failing_batch_is_retried_unchanged() -> None:
    journal: list[str] = []
    processor = FakeProcessor(journal, failures=2)
    batch = events(journal, (0, 5), (1, 7), (0, 6))
    run = runner(processor)
    asyncio.run(run.run(FakeStream([batch], journal)))
    assert processor.calls == [[(0, 5), (1, 7), (0, 6)]] * 3
    assert journal == ["process 1", "process 2", "process 3", "ack 0:5", "ack 1:7", "ack 0:6"]
    assert (run.stats.retries, run.stats.batches, run.stats.records) == (2, 1, 3)
    assert "OnlineStoreUnavailable" in (run.stats.last_error or "")
    run.close()


def test_batches_are_taken_with_the_options() -> None:
    journal: list[str] = []
    stream = FakeStream([events(journal, (0, 0)), events(journal, (0, 1))], journal)
    run = runner(FakeProcessor(journal))
    asyncio.run(run.run(stream))
    assert stream.takes == [(FAST.batch_max, FAST.batch_timeout_s)]
    assert journal == ["process 1", "ack 0:0", "process 2", "ack 0:1"]
    run.close()


def test_a_stop_while_backing_off_acks_nothing() -> None:
    journal: list[str] = []
    processor = FakeProcessor(journal, failures=10**6)
    run = runner(processor)

    async def scenario() -> None:
        task = asyncio.create_task(run.run(FakeStream([events(journal, (2, 40))], journal)))
        while len(processor.calls) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert not [line for line in journal if line.startswith("ack")]
    run.close()


def test_a_stop_during_an_attempt_waits_for_it_and_acks_what_it_processed() -> None:
    journal: list[str] = []
    processor = FakeProcessor(journal, block=True)
    run = runner(processor)

    async def scenario() -> None:
        task = asyncio.create_task(run.run(FakeStream([events(journal, (3, 1), (3, 2))], journal)))
        await asyncio.get_running_loop().run_in_executor(None, processor.started.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done(), "the stop must wait for the attempt in flight"
        processor.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert journal == ["process 1", "ack 3:1", "ack 3:2"]
    run.close()


def test_a_stop_during_a_failing_attempt_acks_nothing() -> None:
    journal: list[str] = []
    processor = FakeProcessor(journal, failures=1, block=True)
    run = runner(processor)

    async def scenario() -> None:
        task = asyncio.create_task(run.run(FakeStream([events(journal, (0, 9))], journal)))
        await asyncio.get_running_loop().run_in_executor(None, processor.started.wait, 10)
        task.cancel()
        processor.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert journal == ["process 1"]
    run.close()


def test_a_revoke_forgets_the_partitions_and_the_log_marks() -> None:
    journal: list[str] = []
    processor = FakeProcessor(journal)
    made: list[int] = []
    run = runner(processor, made)
    asyncio.run(run.on_revoked(set()))
    assert processor.forgotten == [] and len(made) == 1
    asyncio.run(run.on_revoked({1, 3}))
    assert processor.forgotten == [{1, 3}]
    assert len(made) == 2  # a fresh log writer: high-water marks are re-read from the files
    assert run.stats.rebalances == 1
    run.close()
