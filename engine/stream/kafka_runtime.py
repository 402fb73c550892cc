"""The lean confluent-kafka runtime: one consumer per process feeding ``BatchProcessor`` batches.

The loop (one thread; everything below happens inside it, rebalance callbacks included):

1. take up to ``batch_max`` records: those already fetched at once, else wait at most
   ``batch_timeout_s`` for a batch (``KafkaBatchConsumer.poll_batch``);
2. per source topic, ``BatchProcessor.process`` — online write, log append and dead letters
   are durable when it returns;
3. commit the next offsets of every partition in the batch — queued asynchronously, so the
   next ``consume`` need not wait a broker round trip; synchronously at revoke and stop.

A failing batch (Redis or Kafka unreachable, the log not writable, anything else) is retried
— the same records, never a subset skipped, never committed before it succeeds — with
exponential backoff capped at ``backoff_max_s``. While it waits the consumer is paused but
keeps polling, so it stays in the group and rebalances run; records of partitions revoked
meanwhile are dropped from the retry (their new owner replays them from the last commit,
and the core's offset fences make that idempotent).

SIGTERM/SIGINT (when ``install_signals``) or ``stop.set()`` ends the loop after the batch in
hand is processed and committed; the consumer then leaves the group. A batch still failing
``drain_timeout_s`` after the stop request is abandoned uncommitted and will be redelivered.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, cast

from engine import metrics
from engine.config import Config
from engine.envelope import Envelope
from engine.errors import ConfigError, KafkaUnavailable, SkewlessError
from engine.plan import Plan
from engine.ports import DeadLetterSink, EventLogSink, OnlineStateStore
from engine.serde import DecodeLimits
from engine.stream.core import (
    BatchInput,
    BatchOutcome,
    BatchProcessor,
    SourceRecord,
    wall_clock_ms,
)
from engine.stream.log_compaction import BackgroundCompaction, CompactionOptions
from engine.stream.ownership import OwnerRegister, Ownership
from engine.stream.recovery import StateRecovery

log = logging.getLogger("skewless.worker")

Partition = tuple[str, int]
TRACE_ENV = "SKEWLESS_WORKER_TRACE"
PIPELINE_ENV = "SKEWLESS_WORKER_PIPELINE"
# the pipeline decodes ahead only a batch of at least this many records (or a full one):
# a smaller one is a live stream's, kept until the batch in flight is done and topped up
# with what arrived meanwhile, so live batches do not shrink (docs/streaming.md#the-pipeline)
AHEAD_MIN_RECORDS = 10_000
PartitionsCallback = Callable[[list[Partition]], None]


class BatchConsumer(Protocol):
    """What the loop needs from a consumer (``connectors.kafka.KafkaBatchConsumer``)."""

    def poll_batch(self, max_records: int, timeout_s: float) -> list[SourceRecord]: ...

    def commit(self, offsets: Mapping[Partition, int], *, wait: bool = True) -> None: ...

    def failed_commits(self) -> tuple[dict[Partition, int], str]: ...

    def pause_all(self) -> None: ...

    def resume_all(self) -> None: ...

    def generation(self) -> int | None:
        """The consumer-group generation of the current assignment (None: unknown)."""
        ...

    def close(self) -> None: ...


ConsumerFactory = Callable[
    [PartitionsCallback, PartitionsCallback, PartitionsCallback], BatchConsumer
]
"""Builds the consumer given (on_assign, on_revoke, on_lost)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """Tuning of the loop (CLI: ``skewless worker --batch-max … --batch-timeout …``)."""

    # a batch is what the consumer holds (never a wait for more): under load it grows, and
    # each entity a batch touches is written once however many of its events it holds
    # (200,000: Redis's CPU per event halves against 50,000 on a backlog; docs/benchmarks.md)
    batch_max: int = 200_000
    batch_timeout_s: float = 0.05
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    drain_timeout_s: float = 30.0
    stats_interval_s: float = 10.0
    # Freeze the cyclic GC's view of everything alive after each batch, so a collection only
    # walks what the next batch allocates, not the whole entity cache (full collections of a
    # large cache measured 100-300 ms, the freshness p99); unfreeze and collect everything
    # once per ``gc_full_interval_s``. The cache holds no reference cycles.
    gc_freeze: bool = True
    gc_full_interval_s: float = 600.0
    # the worker merges its partitions' small log files this often (0: never; see
    # engine/stream/log_compaction.py and `skewless worker --compact-interval`)
    compact_interval_s: float = 60.0
    # the event log rolls: each batch is a synced block of one open file per partition,
    # closed at this size or age (0 bytes: one file per batch; docs/event-log.md#rolling-files,
    # `skewless worker --log-roll-mb/--log-roll-seconds`)
    log_roll_bytes: int = 64 * 1024 * 1024  # connectors.eventlog.DEFAULT_ROLL_BYTES
    log_roll_s: float = 300.0  # connectors.eventlog.DEFAULT_ROLL_SECONDS
    # (view, entity, partition) states held in memory per source (the native cache's bound,
    # least recently used evicted; `skewless worker --cache-entities`)
    cache_entities: int = 200_000
    # keep evicted states in a local RocksDB under <state dir>/worker/ instead of dropping
    # them, checked against Redis before use (engine/stream/local_state.py;
    # `skewless worker --local-state`)
    local_state: bool = False
    # batch n is processed on a helper thread while the loop fetches and decodes batch
    # n + 1 (KafkaWorker, "the pipeline"): Redis executes n's write while the worker decodes
    # n + 1. n + 1 is prepared only once n is written, checked, logged and its offsets
    # queued ($SKEWLESS_WORKER_PIPELINE=0/1 overrides, for A/B runs of benchmarks/stream.py)
    pipeline: bool = True


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker process, for logs now and a Prometheus exporter later."""

    records: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    applied: int = 0
    late: int = 0
    fenced: int = 0
    entities_written: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    retries: int = 0
    rebalances: int = 0
    rebuilds: int = 0  # (view, partition) states found lost and rebuilt from the log
    last_commit_ms: int | None = None
    last_error: str | None = None
    started_ms: int = field(default_factory=wall_clock_ms)

    def add(self, outcome: BatchOutcome) -> None:
        self.records += outcome.records
        self.refused.update(outcome.refused)
        self.applied += outcome.applied
        self.late += outcome.late
        self.fenced += outcome.fenced
        self.entities_written += outcome.entities_written
        self.rebuilds += outcome.rebuilt

    def as_dict(self) -> dict[str, Any]:
        """Plain values (``refused`` by reason code), e.g. for a metrics endpoint."""
        return {
            "records": self.records,
            "refused": dict(self.refused),
            "applied": self.applied,
            "late": self.late,
            "fenced": self.fenced,
            "entities_written": self.entities_written,
            "batches": self.batches,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "retries": self.retries,
            "rebalances": self.rebalances,
            "rebuilds": self.rebuilds,
            "last_commit_ms": self.last_commit_ms,
            "last_error": self.last_error,
            "started_ms": self.started_ms,
        }


class BatchTrace:
    """Per-batch timestamps of the loop as JSON lines (``$SKEWLESS_WORKER_TRACE``), read by
    ``benchmarks/stream.py --breakdown``: where a sampled event's freshness goes.

    Times are ``time.perf_counter()`` seconds (CLOCK_MONOTONIC on Linux, so comparable with
    another process's); one line per batch: ``poll`` (the loop asked for records), ``got``
    (it had them), ``start`` (the batch is handed to the pipeline's thread; absent in the
    serial loop, where it starts at ``got``), ``log0``/``log1`` (the event-log append
    began/ended — the online write is done at ``log0``), ``done`` (processed), ``commit``
    (its commit queued), ``gc`` (after the post-batch ``gc.freeze``), ``n`` and per
    partition the batch's first and last offset (``parts``).

    ``marks`` is the batch being processed: the serial loop marks it as it goes; the
    pipelined loop notes ``poll``/``got`` of the next batch aside and ``start``s it only
    once the batch before was joined and written out, so the pipeline's thread (``log0``,
    ``log1``, ``done``) and the loop never mark the same batch at once.
    """

    def __init__(self, path: str) -> None:
        self._out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.marks: dict[str, Any] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()

    def batch(self, records: Sequence[SourceRecord]) -> None:
        parts: dict[int, list[int]] = {}
        for rec in records:
            span = parts.get(rec.partition)
            if span is None:
                parts[rec.partition] = [rec.offset, rec.offset]
            else:
                span[0] = min(span[0], rec.offset)
                span[1] = max(span[1], rec.offset)
        self.marks["n"] = len(records)
        self.marks["parts"] = parts

    def start(self, asked: float, got: float, records: Sequence[SourceRecord]) -> None:
        """(pipeline) Write out the batch before, if still held, and begin the next one,
        fetched between ``asked`` and ``got``."""
        self.flush()
        self.marks = {"poll": asked, "got": got}
        self.batch(records)
        self.mark("start")

    def flush(self) -> None:
        if "got" in self.marks:
            self._out.write(json.dumps(self.marks) + "\n")
        self.marks = {}

    def close(self) -> None:
        self._out.close()


class OwnedPartitionsLog:
    """An ``EventLogSink`` whose per-partition high-water marks are re-learned after a revoke.

    ``EventLogWriter`` caches each partition's highest logged offset; once a partition has
    been owned by another worker that cache is stale, so ``forget`` replaces the writer
    (the new one re-reads the partition's file names on first use). Owner epochs
    (``begin_epoch``) are per assignment, so they go with it. An append is on disk when it
    returns; with ``trace`` set, it marks ``log0``/``log1`` around it.
    """

    def __init__(self, make: Callable[[], EventLogSink]) -> None:
        self._make = make
        self._writer: Any = make()
        self.trace: BatchTrace | None = None  # set by the worker when tracing

    def append(self, records: Sequence[Envelope]) -> list[str]:
        return cast(list[str], self._run(self._writer.append, (records,)))

    def last_offset(self, partition: int) -> int | None:
        return cast(int | None, self._writer.last_offset(partition))

    def __getattr__(self, name: str) -> Any:
        # append_batch_columns (the native columnar append), begin_epoch, max_epoch: only
        # when the writer has them, so BatchProcessor's getattr() checks still see a plain sink
        if name.startswith("_"):
            raise AttributeError(name)
        found = getattr(self._writer, name)
        if name == "append_batch_columns":
            return lambda *args: self._run(found, args)
        return found

    def _run(self, call: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        trace = self.trace
        if trace is None:
            return call(*args)
        trace.mark("log0")
        try:
            return call(*args)
        finally:
            trace.mark("log1")

    def forget(self) -> None:
        old: Any = self._writer
        self._writer = self._make()
        close = getattr(old, "close", None)
        if close is not None:  # roll the old writer's open files (readers need not wait)
            try:
                close()
            except SkewlessError as exc:  # its files stay open-named: readers cope
                log.warning("event log: %s", exc)


@dataclass(slots=True)
class SourceWiring:
    """One source's processor and the log it appends to."""

    processor: BatchProcessor
    log: OwnedPartitionsLog


@dataclass(slots=True)
class _Group:
    """One topic's share of a batch: its records, their partitions' assignment epochs when
    fetched, when it started, and (pipeline) its records decoded ahead."""

    topic: str
    recs: list[SourceRecord]
    epochs: dict[Partition, int | None]
    started: float = 0.0
    decoded: BatchInput | None = None


@dataclass(slots=True)
class _InFlight:
    """A batch on the pipeline's thread: per group its outcome, the exception of its one
    attempt, or (after a failed group) nothing — not attempted."""

    groups: list[_Group]
    future: Future[list[BatchOutcome | Exception | None]]


class KafkaWorker:
    """The consumer loop around one ``BatchProcessor`` per source topic.

    Example:
        >>> worker = build_worker(store.plan, store.config)  # doctest: +SKIP
        >>> worker.run(install_signals=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        sources: Mapping[str, SourceWiring],
        consumer_factory: ConsumerFactory,
        options: WorkerOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sources = dict(sources)  # topic → wiring
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self._factory = consumer_factory
        self._consumer: BatchConsumer | None = None
        self._assigned: set[Partition] = set()
        self._epoch: dict[Partition, int] = {}  # bumped on every assignment of a partition
        self._pending: dict[Partition, int] = {}  # processed, not yet committed
        # offsets queued since the last commit (a batch joined inside a rebalance callback)
        self._queued = False
        self._committed: dict[Partition, int] = {}  # the last offset asked to be committed
        self._stash: list[SourceRecord] = []  # fetched while a failed batch waited
        # the pipeline (WorkerOptions.pipeline): the batch on the helper thread, and the
        # groups of one that failed there, retried by the loop
        self.pipeline = _switch(PIPELINE_ENV, self.options.pipeline)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch") if self.pipeline else None
        self._inflight: _InFlight | None = None
        self._failed: list[tuple[_Group, Exception | None]] = []
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._sleep = sleep
        self._last_stats = time.monotonic()
        self._last_stats_records = 0
        self._last_full_gc = time.monotonic()
        self.compaction: BackgroundCompaction | None = None  # set by build_worker
        trace_path = os.environ.get(TRACE_ENV)
        self._trace = BatchTrace(trace_path) if trace_path else None
        if self._trace is not None:
            for wiring in self.sources.values():
                wiring.log.trace = self._trace

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def assignment(self) -> set[Partition]:
        return set(self._assigned)

    def owned_partitions(self) -> dict[str, list[int]]:
        """Source name → partitions this worker is assigned now (for log compaction)."""
        out: dict[str, list[int]] = {}
        for topic, p in sorted(self._assigned):
            wiring = self.sources.get(topic)
            if wiring is not None:
                out.setdefault(wiring.processor.source.name, []).append(p)
        return out

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit and leave (thread-safe)."""
        self._stop.set()

    def run(
        self, stop: threading.Event | None = None, *, install_signals: bool = False
    ) -> WorkerStats:
        """Consume until ``stop`` is set (or SIGTERM/SIGINT with ``install_signals``)."""
        if stop is not None:
            self._stop = stop
        with _signals(self._stop, install_signals):
            consumer = self._factory(self._on_assign, self._on_revoke, self._on_lost)
            self._consumer = consumer
            log.info("worker started: topics %s, %s", sorted(self.sources), self.options)
            if self.compaction is not None:
                self.compaction.start()
            try:
                if self.pipeline:
                    self._run_pipelined(consumer)
                else:
                    self._run_serial(consumer)
            finally:
                if self._inflight is not None:  # the loop raised: what succeeded is committed
                    self._join_inflight()
                    self._failed.clear()  # uncommitted: fetched again
                if self.compaction is not None:
                    self.compaction.stop()
                self._commit_pending(final=True)
                self._close_local()  # before on_revoke empties the caches
                consumer.close()  # leaves the group: runs on_revoke
                self._consumer = None
                self._log_stats(force=True)
                if self.options.gc_freeze:
                    gc.unfreeze()
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                if self._trace is not None:
                    self._trace.flush()  # a pipelined batch joined by a rebalance or a stop
                    self._trace.close()
        return self.stats

    def _run_serial(self, consumer: BatchConsumer) -> None:
        """The loop: fetch a batch, process it, commit; again."""
        trace = self._trace
        while not self._stop.is_set():
            if trace is not None:
                trace.mark("poll")
            records = self._take(consumer, self.options.batch_timeout_s, top_up=False)
            if records:
                if trace is not None:
                    trace.mark("got")
                    trace.batch(records)
                self._handle(records)
                self._collect_garbage()
                if trace is not None:
                    trace.mark("gc")
                    trace.flush()
            else:
                self._commit_queued()
            self._maybe_log_stats()

    def _run_pipelined(self, consumer: BatchConsumer) -> None:
        """The loop with the pipeline: batch n runs on the helper thread while this thread
        takes the records the client already holds (no wait) and, if they are a backlog's
        (``AHEAD_MIN_RECORDS`` or a full batch), decodes them as batch n + 1
        (``BatchProcessor.decode``: no entity state) — fewer wait in the stash and are
        topped up once n is done, so a live stream's batches are as large as in the
        serial loop;
        then n is joined and its offsets queued — or, if it failed, n + 1 goes back to the
        stash undecoded and n is retried here as in the serial loop — and only then is
        n + 1 handed to the thread. A rebalance inside the fetch joins n first
        (``_join_inflight``), so a revoke never overtakes a batch in flight. A stop request
        fetches nothing more and waits for n. ``$SKEWLESS_WORKER_TRACE`` marks a batch from
        the fetch that completed it to its ``gc`` after the join (``BatchTrace``)."""
        trace = self._trace
        asked = got = 0.0
        while True:
            stopping = self._stop.is_set()
            if stopping and self._inflight is None and not self._failed:
                return
            records: list[SourceRecord] = []
            if not stopping:  # beside a batch in flight, only what the client holds: no wait
                idle = self._inflight is None
                timeout = self.options.batch_timeout_s if idle else 0.0
                if trace is not None:
                    asked = time.perf_counter()
                records = self._take(consumer, timeout, top_up=idle)
                if trace is not None:
                    got = time.perf_counter()
            busy = self._inflight is not None  # (a rebalance inside the fetch joined it)
            if busy and records and len(records) < min(self.options.batch_max, AHEAD_MIN_RECORDS):
                self._stash = records + self._stash  # a live stream's: not worth a batch
                records = []
            groups = self._groups(records) if records else []
            if busy:
                for group in groups:  # beside batch n's write: decode batch n + 1
                    group.decoded = self._decode_ahead(group)
            if busy or self._failed:
                failed = self._finish_inflight()
                if trace is not None:
                    trace.mark("commit")
                if failed:  # n failed: n + 1 waits, undecoded
                    self._stash = records + self._stash
                    groups = []
                self._collect_garbage()
                if trace is not None:
                    trace.mark("gc")
                    trace.flush()
            if groups:
                self._submit(groups, asked, got)
            else:
                self._commit_queued()
            self._maybe_log_stats()

    def _take(
        self, consumer: BatchConsumer, timeout_s: float, *, top_up: bool
    ) -> list[SourceRecord]:
        """The next batch's records: the stash if it holds any (``top_up``: with what the
        client holds besides, up to ``batch_max``, without waiting), else a fetch that waits
        at most ``timeout_s``."""
        if not self._stash:
            return consumer.poll_batch(self.options.batch_max, timeout_s)
        records, self._stash = self._stash, []
        room = self.options.batch_max - len(records)
        if top_up and room > 0:  # and what arrived meanwhile
            records += consumer.poll_batch(room, 0.0)
        return records

    def _commit_queued(self) -> None:
        """Idle: commit the offsets of processed batches queued since the last commit."""
        if self._queued:
            self._commit_pending()

    def _commit_done(self) -> None:
        """After a batch: commit the offsets queued (async)."""
        self._queued = False
        self._commit_pending()

    def _groups(self, records: list[SourceRecord]) -> list[_Group]:
        """``records`` per source topic, in the order their topics first appear, each with
        its partitions' assignment epochs now (a record of a topic without a source is
        logged and skipped)."""
        out = []
        for topic, recs in _by_topic(records).items():
            if topic not in self.sources:  # pragma: no cover - subscribed to these topics only
                log.error("record of unexpected topic %r skipped", topic)
                continue
            epochs = {(topic, p): self._epoch.get((topic, p)) for p in {r.partition for r in recs}}
            out.append(_Group(topic, recs, epochs))
        return out

    def _decode_ahead(self, group: _Group) -> BatchInput | None:
        try:
            return self.sources[group.topic].processor.decode(group.recs)
        except Exception as exc:  # decoded again on the thread, which fails the batch there
            log.warning("decoding a batch of %s ahead failed: %s", group.topic, exc)
            return None

    def _submit(self, groups: list[_Group], asked: float = 0.0, got: float = 0.0) -> None:
        """Hand a batch to the pipeline's thread, without its records of partitions revoked
        since they were fetched (their decoding, if any, is of other records: redone);
        ``asked``/``got``: when the fetch that completed it began and returned (the trace)."""
        assert self._pool is not None and self._inflight is None
        live: list[_Group] = []
        for group in groups:
            if not all(self._owned(tp, group.epochs) for tp in group.epochs):
                group.recs = [r for r in group.recs
                              if self._owned((r.topic, r.partition), group.epochs)]  # fmt: skip
                if not group.recs:
                    continue
            group.started = time.perf_counter()
            live.append(group)
        if live:
            if self._trace is not None:
                self._trace.start(asked, got, [r for group in live for r in group.recs])
            self._inflight = _InFlight(live, self._pool.submit(self._attempt, live))

    def _attempt(self, groups: list[_Group]) -> list[BatchOutcome | Exception | None]:
        """(the pipeline's thread) One attempt of each group, in order, until one fails."""
        out: list[BatchOutcome | Exception | None] = []
        failed = False
        for group in groups:
            if failed:
                out.append(None)
                continue
            try:
                processor = self.sources[group.topic].processor
                if group.decoded is None:
                    out.append(processor.process(group.recs))
                else:
                    out.append(processor.process(group.recs, decoded=group.decoded))
            except Exception as exc:  # handed to the loop, which retries as ever
                out.append(exc)
                failed = True
            group.decoded = None  # its columns are no longer needed
        if self._trace is not None:
            self._trace.mark("done")
        return out

    def _join_inflight(self) -> None:
        """Wait for the batch on the pipeline's thread and queue the offsets of its groups
        that succeeded; keep the others for ``_finish_inflight``. Also called at the start
        of every rebalance callback, so a batch in flight is done (or failed) first."""
        job = self._inflight
        if job is None:
            return
        self._inflight = None
        results = job.future.result()
        for group, result in zip(job.groups, results, strict=True):
            if isinstance(result, BatchOutcome):
                self._done(group, result)
            else:
                self._failed.append((group, result))

    def _finish_inflight(self) -> bool:
        """Join the batch in flight, retry what failed of it (here, as the serial loop
        does) and queue and commit its offsets; True when part of it had failed."""
        self._join_inflight()
        failed, self._failed = self._failed, []
        for group, error in failed:
            outcome = self._process(
                self.sources[group.topic].processor, group.topic, group.recs, group.epochs,
                error=error,
            )  # fmt: skip
            if outcome is not None:
                self._done(group, outcome)
        self._commit_done()
        return bool(failed)

    def _done(self, group: _Group, outcome: BatchOutcome) -> None:
        """Count a group's outcome and queue its offsets (its log is on disk: committed
        next)."""
        topic, epochs = group.topic, group.epochs
        metrics.observe_batch(topic, outcome, time.perf_counter() - group.started)
        self.stats.add(outcome)
        self.stats.batches += 1
        for p, next_offset in outcome.commits.items():
            if self._owned((topic, p), epochs):
                self._pending[(topic, p)] = next_offset
        self._queued = True

    def _close_local(self) -> None:
        """Spill each source's cached states to its local tier, for a warm restart."""
        for topic, wiring in self.sources.items():
            close_local_state(topic, wiring.processor)

    def _collect_garbage(self) -> None:
        if not self.options.gc_freeze:
            return
        if time.monotonic() - self._last_full_gc >= self.options.gc_full_interval_s:
            gc.unfreeze()
            gc.collect()
            self._last_full_gc = time.monotonic()
        gc.freeze()

    # -- one batch ----------------------------------------------------------------------

    def _handle(self, records: list[SourceRecord]) -> None:
        """The serial loop's batch: each topic's share processed (retried until it
        succeeds), then its offsets queued and committed."""
        for group in self._groups(records):
            group.started = time.perf_counter()
            processor = self.sources[group.topic].processor
            outcome = self._process(processor, group.topic, group.recs, group.epochs)
            if outcome is None:
                continue
            if self._trace is not None:
                self._trace.mark("done")
            self._done(group, outcome)
        self._commit_done()
        if self._trace is not None:
            self._trace.mark("commit")

    def _owned(self, tp: Partition, epochs: Mapping[Partition, int | None]) -> bool:
        """Still assigned, and not revoked and re-assigned since the batch was fetched."""
        return tp in self._assigned and self._epoch.get(tp) == epochs.get(tp)

    def _process(
        self,
        processor: BatchProcessor,
        topic: str,
        recs: list[SourceRecord],
        epochs: Mapping[Partition, int | None],
        *,
        error: Exception | None = None,
    ) -> BatchOutcome | None:
        """Process ``recs`` until it succeeds; None when every record's partition was revoked
        or a stop request's drain deadline passed (nothing committed for them). ``error``:
        the failure of an attempt already made (the pipeline's thread): backed off first."""
        attempt = 0
        while True:
            if all(self._owned(tp, epochs) for tp in epochs):
                live = recs
            else:
                live = [r for r in recs if self._owned((r.topic, r.partition), epochs)]
            if not live:
                return None
            if len(live) != len(recs):
                log.warning("%d records of revoked partitions dropped from a retried batch of %s "
                            "(their new owner replays them)", len(recs) - len(live), topic)  # fmt: skip
                recs = live
            try:
                if error is not None:
                    failed, error = error, None
                    raise failed
                return processor.process(recs)
            except Exception as exc:  # retried forever: never drop, never skip, never commit
                delay = min(self.options.backoff_max_s, self.options.backoff_initial_s * 2**attempt)
                attempt += 1
                self.stats.retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                metrics.observe_failure(topic, exc, delay)
                log.error(
                    "batch of %d records of %s (%s) failed, attempt %d: %s: %s — not committed; "
                    "retrying the same records in %.1fs",
                    len(recs), topic, _span(recs), attempt, type(exc).__name__, exc, delay,
                    exc_info=attempt == 1 and not isinstance(exc, ConnectionError | OSError),
                )  # fmt: skip
                if not self._wait(delay):
                    log.error("stop requested and the batch of %s (%s) still fails after %.0fs: "
                              "leaving it uncommitted; it will be redelivered", topic,
                              _span(recs), self.options.drain_timeout_s)  # fmt: skip
                    return None

    def _wait(self, delay_s: float) -> bool:
        """Back off for ``delay_s`` with fetching paused but the group membership alive.

        False when a stop was requested longer than ``drain_timeout_s`` ago.
        """
        if self._stop.is_set():
            now = time.monotonic()
            if self._stop_requested_at is None:
                self._stop_requested_at = now
            if now - self._stop_requested_at >= self.options.drain_timeout_s:
                return False
        consumer = self._consumer
        if consumer is None:  # pragma: no cover - only called from run()
            self._sleep(delay_s)
            return True
        deadline = time.monotonic() + delay_s
        while True:
            consumer.pause_all()  # again each turn: covers partitions assigned meanwhile
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got = consumer.poll_batch(self.options.batch_max, min(remaining, 0.2))
            except Exception as exc:  # Kafka down too: keep backing off
                log.warning("poll while backing off failed: %s", exc)
                self._sleep(min(remaining, 0.2))
                continue
            if got:  # fetched before the pause took effect: process after the batch in hand
                self._stash.extend(got)
        consumer.resume_all()
        return True

    def _commit_pending(self, *, final: bool = False) -> None:
        """Commit what the processed batches allow: asynchronously after a batch (the next
        one need not wait a broker round trip), synchronously at shutdown. An asynchronous
        commit that failed is queued again unless a later offset is already pending."""
        if self._consumer is None:
            return
        failed, reason = self._consumer.failed_commits()
        if failed:
            self.stats.commit_failures += 1
            metrics.observe_commit(ok=False)
            self.stats.last_error = f"commit failed: {reason}"
            log.warning("asynchronous commit of %d partitions failed: %s — queued again",
                        len(failed), reason)  # fmt: skip
            for tp, offset in failed.items():
                if offset > self._pending.get(tp, -1) and offset >= self._committed.get(tp, -1):
                    self._pending[tp] = offset
        pending = {tp: o for tp, o in self._pending.items() if tp in self._assigned}
        self._pending = pending
        if not pending:
            return
        try:
            self._consumer.commit(pending, wait=final)
        except Exception as exc:
            # Not committing is safe: the records are replayed and the fences skip them.
            self.stats.commit_failures += 1
            metrics.observe_commit(ok=False)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("commit of %d partitions failed%s: %s — kept for the next commit",
                        len(pending), " at shutdown" if final else "", exc)  # fmt: skip
            return
        self._committed.update(pending)
        self._pending.clear()
        self.stats.commits += 1
        self.stats.last_commit_ms = wall_clock_ms()
        metrics.observe_commit(ok=True)

    # -- rebalances (called inside poll_batch / close, on this thread) -----------------

    def _on_assign(self, parts: list[Partition]) -> None:
        self._join_inflight()
        self.stats.rebalances += 1
        metrics.observe_rebalance("assigned", parts)
        self._assigned.update(parts)
        for tp in parts:
            self._epoch[tp] = self._epoch.get(tp, 0) + 1
        of = getattr(self._consumer, "generation", None)  # a test's fake consumer may not know
        generation = of() if of is not None else None
        if generation is not None:  # owner epochs are taken under it (engine/stream/ownership.py)
            for topic, ps in _partitions_by_topic(parts).items():
                wiring = self.sources.get(topic)
                if wiring is not None:
                    wiring.processor.assign(ps, generation)
        log.info("assigned %s", _describe(parts))  # the fault harness parses this line

    def _on_revoke(self, parts: list[Partition]) -> None:
        self._join_inflight()  # the batch in flight is done first: its offsets are committed
        self.stats.rebalances += 1
        metrics.observe_rebalance("revoked", parts)
        revoked = set(parts)
        # what was committed asynchronously is committed again, synchronously: the new owner
        # then starts where this worker stopped, even if an asynchronous commit failed
        mine = {tp: o for tp, o in self._committed.items() if tp in revoked}
        mine.update((tp, o) for tp, o in self._pending.items() if tp in revoked)
        if mine and self._consumer is not None:
            try:
                self._consumer.commit(mine)
                self.stats.commits += 1
                self.stats.last_commit_ms = wall_clock_ms()
            except Exception as exc:
                log.warning("commit on revoke failed (the new owner replays; fences skip): %s", exc)
        self._release(parts, "revoked")

    def _on_lost(self, parts: list[Partition]) -> None:
        self._join_inflight()
        self.stats.rebalances += 1
        metrics.observe_rebalance("lost", parts)
        self._release(parts, "lost")

    def _release(self, parts: list[Partition], how: str) -> None:
        gone = set(parts)
        self._assigned -= gone
        for tp in gone:
            self._pending.pop(tp, None)
            self._committed.pop(tp, None)
        for topic, ps in _partitions_by_topic(gone).items():
            wiring = self.sources.get(topic)
            if wiring is not None:
                wiring.processor.forget_partitions(ps)
                wiring.log.forget()
        self._stash = [r for r in self._stash if (r.topic, r.partition) not in gone]
        log.info("%s %s", how, _describe(parts))

    # -- stats --------------------------------------------------------------------------

    def _maybe_log_stats(self) -> None:
        if time.monotonic() - self._last_stats >= self.options.stats_interval_s:
            self._log_stats()

    def _log_stats(self, *, force: bool = False) -> None:
        now = time.monotonic()
        span = max(now - self._last_stats, 1e-9)
        fresh = self.stats.records - self._last_stats_records
        if fresh or force:
            s = self.stats
            log.info(
                "%d records (%.0f/s), applied %d, late %d, fenced %d, refused %s, batches %d, "
                "retries %d, commit failures %d",
                s.records, fresh / span, s.applied, s.late, s.fenced, dict(s.refused) or 0,
                s.batches, s.retries, s.commit_failures,
            )  # fmt: skip
        self._last_stats = now
        self._last_stats_records = self.stats.records


def _span(recs: Sequence[SourceRecord]) -> str:
    bounds: dict[int, tuple[int, int]] = {}
    for r in recs:
        lo, hi = bounds.get(r.partition, (r.offset, r.offset))
        bounds[r.partition] = (min(lo, r.offset), max(hi, r.offset))
    return ", ".join(f"p{p} offsets {lo}..{hi}" for p, (lo, hi) in sorted(bounds.items()))


def _by_topic(records: Sequence[SourceRecord]) -> dict[str, list[SourceRecord]]:
    """``records`` per topic, in their order, the topics in the order they first appear."""
    out: dict[str, list[SourceRecord]] = {}
    for rec in records:
        group = out.get(rec.topic)
        if group is None:
            group = out[rec.topic] = []
        group.append(rec)
    return out


def _partitions_by_topic(parts: Iterable[Partition]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic, p in parts:
        out.setdefault(topic, []).append(p)
    return out


def _describe(parts: Sequence[Partition]) -> str:
    by_topic = _partitions_by_topic(parts)
    return "; ".join(f"{t} {sorted(ps)}" for t, ps in sorted(by_topic.items())) or "nothing"


@contextmanager
def _signals(stop: threading.Event, install: bool) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` while the loop runs (main thread only)."""
    if not install or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: finishing the batch in hand, committing, leaving the group",
                 signal.Signals(signum).name)  # fmt: skip
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- wiring -------------------------------------------------------------------------------


def close_local_state(topic: str, processor: BatchProcessor) -> None:
    """Spill ``processor``'s cache to its local tier and close it (no-op without one), for a
    warm restart; logs the tier's counts. Both runtimes call it when they stop."""
    if getattr(processor, "local", None) is None:
        return
    try:
        processor.close()
    except Exception:  # a cache of Redis: losing it costs loads, not correctness
        log.exception("%s: could not spill the cache to the local state", topic)
        return
    counts = processor.local_counts
    log.info("%s: local state: %d hits, %d stale, %d loaded from Redis, %d spilled",
             topic, counts["hits"], counts["stale"], counts["loaded"],
             counts["spilled"])  # fmt: skip


def _switch(env: str, default: bool) -> bool:
    """An option overridden by ``$env`` set to 0 or 1 (A/B runs of the benchmarks)."""
    value = os.environ.get(env)
    return default if value not in ("0", "1") else value == "1"


def build_worker(
    plan: Plan,
    config: Config,
    options: WorkerOptions | None = None,
    *,
    online: OnlineStateStore | None = None,
    dead_letters: Callable[[str], DeadLetterSink] | None = None,
) -> KafkaWorker:
    """A worker for every source of ``plan``, wired to the connectors named by ``config``.

    ``online`` defaults to Redis at ``redis.url``; ``dead_letters(source)`` to the
    ``skewless.<source>.dlq`` topic; the log to ``event_log.root``; the group to
    ``skewless.<project>``.
    """
    from connectors.eventlog import EventLogReader, EventLogWriter
    from connectors.kafka import (
        KafkaBatchConsumer,
        KafkaDeadLetterSink,
        KafkaPublisher,
        KafkaSettings,
        group_id,
        topic_partitions,
    )

    opts = options or WorkerOptions()
    if opts.local_state:
        from engine.stream.local_state import LocalState
    settings = KafkaSettings.from_config(config)
    if online is None:
        from connectors.redis_store import RedisOnlineStore

        online = RedisOnlineStore.from_config(config)
    if dead_letters is None:
        publisher = KafkaPublisher(settings)

        def dead_letters(source: str) -> DeadLetterSink:
            return KafkaDeadLetterSink(publisher, source)

    limits = DecodeLimits.from_config(config)
    register = online
    # lost online state is rebuilt in place from the log (docs/reliability.md)
    recovery = StateRecovery(plan, EventLogReader(config.event_log_root), online,
                             log_root=config.event_log_root, clock=wall_clock_ms)  # fmt: skip
    sources: dict[str, SourceWiring] = {}
    for name, source in sorted(plan.sources.items()):
        if not any(v.source == name for v in plan.views.values()):
            continue

        def make_writer(name: str = name, schema: Any = source.schema) -> EventLogSink:
            return EventLogWriter(config.event_log_root, name, dict(schema),
                                  roll_bytes=opts.log_roll_bytes, roll_seconds=opts.log_roll_s)  # fmt: skip

        owned = OwnedPartitionsLog(make_writer)
        # owner epochs fence zombies (docs/reliability.md#owner-epochs); a store without an
        # owner register (a test fake) runs unfenced
        ownership = (
            Ownership(
                cast(OwnerRegister, online),
                group=group_id(config.project),
                topic=source.topic,
                log=owned,
            )
            if isinstance(register, OwnerRegister)
            else None
        )
        local = (
            LocalState.open(config.state_dir / "worker" / group_id(config.project) / name)
            if opts.local_state
            else None
        )
        processor = BatchProcessor(plan, name, online=online, log=owned, dead=dead_letters(name),
                                   limits=limits, recovery=recovery, ownership=ownership,
                                   cache_entities=opts.cache_entities, local=local)  # fmt: skip
        sources[source.topic] = SourceWiring(processor=processor, log=owned)
    topics = sorted(sources)
    if not topics:
        raise ConfigError(f"{config.repo_path}: no view reads any source; nothing to consume")
    counts = topic_partitions(settings, topics)
    missing = sorted(set(topics) - set(counts))
    if missing:
        raise KafkaUnavailable(
            f"{settings.describe()}: topic(s) {', '.join(missing)} do not exist; run "
            "`skewless apply` to create the topics of the definitions"
        )
    for topic, wiring in sources.items():  # a sole owner keeps its merged entries cached
        wiring.processor.set_source_partitions(counts[topic])
    group = group_id(config.project)

    def factory(
        on_assign: PartitionsCallback, on_revoke: PartitionsCallback, on_lost: PartitionsCallback
    ) -> BatchConsumer:
        return KafkaBatchConsumer(
            settings,
            group,
            topics,
            on_assign=on_assign,
            on_revoke=on_revoke,
            on_lost=on_lost,
        )

    worker = KafkaWorker(sources, factory, options)
    interval = (options or WorkerOptions()).compact_interval_s
    worker.compaction = BackgroundCompaction(
        config,
        {name: source.topic for name, source in plan.sources.items()},
        owned=worker.owned_partitions,
        options=CompactionOptions(interval_s=interval),
    )
    return worker


def run(plan: Plan, config: Config, options: WorkerOptions | None = None) -> WorkerStats:
    """Run a worker until SIGTERM/SIGINT (the ``skewless worker --runtime kafka`` entry point)."""
    return build_worker(plan, config, options).run(install_signals=True)
