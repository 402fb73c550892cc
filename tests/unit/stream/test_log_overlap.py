"""The event-log append behind the loop (``WorkerOptions.overlap_log_append``): what becomes
durable keeps its order — online write n, log n, online write n + 1 — and offsets are
committed only once their batch's log is on disk; a failed background append is retried.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from engine.stream.core import BatchOutcome, SourceRecord
from engine.stream.kafka_runtime import (
    KafkaWorker,
    OwnedPartitionsLog,
    SettledOnlineStore,
    SourceWiring,
    WorkerOptions,
)

from .test_kafka_runtime_loop import FAST, TOPIC, ScriptedConsumer, rec


class SlowWriter:
    """A log writer whose appends wait for ``gate`` and fail ``failures`` times first."""

    def __init__(self, events: list[str], gate: threading.Event, failures: int = 0) -> None:
        self.events = events
        self.gate = gate
        self.failures = failures
        self.appended: list[tuple[int, ...]] = []

    def append_batch_columns(self, offsets: tuple[int, ...]) -> list[str]:
        self.gate.wait(5)
        if self.failures:
            self.failures -= 1
            raise OSError("No space left on device")
        self.appended.append(offsets)
        self.events.append(f"log {offsets}")
        return []

    def append(self, records: Sequence[object]) -> list[str]:
        return []

    def last_offset(self, partition: int) -> int | None:
        return max((o for batch in self.appended for o in batch), default=None)


class Online:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def write(self, what: tuple[int, ...]) -> None:
        self.events.append(f"write {what}")

    def load(self, keys: list[str]) -> list[dict[bytes, bytes]]:
        self.events.append("load")
        return []


class WritingProcessor:
    """Writes the batch's offsets online, then appends them to the log, like BatchProcessor."""

    def __init__(self, online: Any, owned: OwnedPartitionsLog) -> None:
        self.online = online
        self.log = owned

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        offsets = tuple(r.offset for r in records)
        self.online.load([])
        self.online.write(offsets)
        self.log.append_batch_columns(offsets)
        commits: dict[int, int] = {}
        for r in records:
            commits[r.partition] = max(commits.get(r.partition, 0), r.offset + 1)
        return BatchOutcome(commits=commits, processed_at_ms=0, records=len(records),
                            refused=Counter(), applied=len(records), late=0, fenced=0,
                            entities_written=0)  # fmt: skip

    def forget_partitions(self, partitions: Sequence[int]) -> None:
        pass


def test_an_append_returns_at_once_and_settles_before_the_log_is_read() -> None:
    events: list[str] = []
    gate = threading.Event()
    writer = SlowWriter(events, gate)
    owned = OwnedPartitionsLog(lambda: writer, overlap=True)
    try:
        assert owned.append_batch_columns((1, 2)) == []
        assert owned.submitted == 1 and owned.durable == 0 and writer.appended == []
        gate.set()
        assert owned.last_offset(0) == 2  # waits for the append in flight
        assert owned.durable == 1
    finally:
        owned.shutdown()


def test_a_failed_background_append_is_retried_at_settle_and_raises_while_failing() -> None:
    events: list[str] = []
    gate = threading.Event()
    gate.set()
    writer = SlowWriter(events, gate, failures=2)
    owned = OwnedPartitionsLog(lambda: writer, overlap=True)
    try:
        owned.append_batch_columns((7,))
        with pytest.raises(OSError):
            owned.settle()  # the background attempt failed, and the retry here too
        assert owned.durable == 0
        owned.settle()  # the third attempt lands
        assert writer.appended == [(7,)] and owned.durable == 1
    finally:
        owned.shutdown()


def test_the_next_online_write_waits_for_the_log_and_offsets_wait_for_their_log() -> None:
    events: list[str] = []
    gate = threading.Event()
    writer = SlowWriter(events, gate)
    owned = OwnedPartitionsLog(lambda: writer, overlap=True)
    online = SettledOnlineStore(Online(events), [owned])  # type: ignore[arg-type]
    stop = threading.Event()
    consumer = ScriptedConsumer([[rec(0, 0), rec(0, 1)], [rec(1, 0)]], stop)
    commits_before_log: list[Any] = []

    def release() -> None:  # the second poll: batch 1 was processed, its append is held
        commits_before_log.extend(consumer.commits)
        gate.set()

    consumer.events[2] = release
    processor = WritingProcessor(online, owned)
    wiring = SourceWiring(processor=processor, log=owned)  # type: ignore[arg-type]
    worker = KafkaWorker({TOPIC: wiring}, consumer.factory, FAST)  # type: ignore[arg-type]
    worker.run(stop)
    assert commits_before_log == []  # batch 1's offsets waited for its log
    # reads may run beside the append; the next write may not
    assert [e for e in events if e != "load"] == [
        "write (0, 1)", "log (0, 1)", "write (0,)", "log (0,)"
    ]  # fmt: skip
    committed: dict[tuple[str, int], int] = {}
    for c in consumer.commits:
        committed.update(c)
    assert committed == {(TOPIC, 0): 2, (TOPIC, 1): 1}


def test_without_overlap_the_append_is_done_when_it_returns() -> None:
    events: list[str] = []
    gate = threading.Event()
    gate.set()
    writer = SlowWriter(events, gate)
    owned = OwnedPartitionsLog(lambda: writer)
    owned.append_batch_columns((3,))
    assert writer.appended == [(3,)] and owned.durable == owned.submitted == 1
    assert not WorkerOptions().overlap_log_append  # opt-in (docs/streaming.md)


def test_a_batch_whose_append_still_fails_at_a_revoke_is_never_committed() -> None:
    events: list[str] = []
    gate = threading.Event()
    gate.set()
    writer = SlowWriter(events, gate, failures=1_000)  # the disk stays full
    owned = OwnedPartitionsLog(lambda: writer, overlap=True)
    online = SettledOnlineStore(Online(events), [owned])  # type: ignore[arg-type]
    stop = threading.Event()
    consumer = ScriptedConsumer([[rec(0, 0), rec(1, 0)]], stop)
    consumer.events[2] = lambda: consumer.on_revoke([(TOPIC, 0), (TOPIC, 1)])
    wiring = SourceWiring(processor=WritingProcessor(online, owned), log=owned)  # type: ignore[arg-type]
    worker = KafkaWorker({TOPIC: wiring}, consumer.factory, FAST)  # type: ignore[arg-type]
    worker.run(stop)
    assert events == ["load", "write (0, 0)"] and writer.appended == []
    assert consumer.commits == []  # replayed from the last commit by whoever owns it next
