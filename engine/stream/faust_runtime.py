"""The Faust runtime: one Faust agent per source topic feeds event batches to the processing core.

Each source topic gets one agent (``concurrency=1``) that takes events in batches with
``Stream.noack_take`` — which yields the events themselves and acks nothing — turns them
into ``SourceRecord`` s, runs ``BatchProcessor.process`` in a one-thread executor (it is
synchronous: Redis and file I/O, and the event loop must keep heartbeating meanwhile) and
acks the batch's events only after ``process`` returned. Faust commits acked offsets every
``commit_interval_ms`` and when it stops, so a committed offset always follows the online
write and the log append. A failing batch is retried, the same records, with exponential
backoff until it succeeds: nothing is acked meanwhile, so nothing is committed.

Why not ``take_events``: it acks in a ``finally`` block, so an exception or a cancellation
that leaves the ``async for`` would ack (and later commit) events that were never
processed. Why not an agent that raises: Faust's supervisor restarts the agent without
seeking back, which leaves a gap that stalls commits until the next rebalance.

Rebalances: Faust waits for every tracked event to be acked before it revokes partitions
(``stream_wait_empty``), so the batch in flight finishes first. When the new assignment
arrives, a source whose partitions changed gets a fresh processor: its entity cache and
its log writer's high-water marks are only valid for partitions this worker owned without
interruption. SIGTERM/SIGINT: Faust's worker stops the agents first (the batch in flight
runs to completion and is acked), then the consumer, which commits what was acked.

Example:
    >>> run_faust_worker(plan, config)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faust

from engine.config import Config
from engine.plan import Plan
from engine.stream.core import BatchOutcome, BatchProcessor, SourceRecord

__all__ = ["FaustOptions", "ProcessorFactory", "SourceRunner", "build_app", "run_faust_worker"]

log = logging.getLogger(__name__)

#: Builds a fresh processor for a source name (a new entity cache and a new log writer).
ProcessorFactory = Callable[[str], BatchProcessor]


@dataclass(frozen=True, slots=True, kw_only=True)
class FaustOptions:
    """Tuning of the Faust runtime; the defaults suit one worker per core."""

    batch_max: int = 2_000  # events per process() call
    batch_within_ms: int = 50  # flush a partial batch after this long
    commit_interval_ms: int = 500  # how often Faust commits acked offsets
    retry_first_ms: int = 100  # first backoff after a failed batch
    retry_max_ms: int = 30_000  # backoff ceiling
    group_id: str | None = None  # default: "skewless.<project>"
    store: str = "memory://"  # Faust tables are not used: state lives in the online store
    loglevel: str = "info"
    stream_buffer: int = 8_192  # per-agent queue of fetched events

    def __post_init__(self) -> None:
        if self.batch_max < 1 or self.batch_within_ms < 1 or self.commit_interval_ms < 1:
            raise ValueError("FaustOptions: batch_max, batch_within_ms and commit_interval_ms >= 1")


def group_id_for(config: Config, options: FaustOptions) -> str:
    """The consumer group (and Faust app id) of a repo's workers."""
    return options.group_id or f"skewless.{config.project}"


def _record(event: Any) -> SourceRecord:
    """The raw Kafka record behind a Faust event (``message`` holds the undecoded bytes)."""
    message = event.message
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
    )


class _Stopped(asyncio.CancelledError):
    """The agent was cancelled while a batch was in flight; ``processed``: it completed."""

    def __init__(self, *, processed: bool) -> None:
        super().__init__()
        self.processed = processed


class SourceRunner:
    """Drives one source's ``BatchProcessor`` from a Faust stream; acks only processed events.

    All calls into the processor run on one private thread, in order, so ``process`` and
    the rebalance bookkeeping never overlap.
    """

    def __init__(self, source: str, topic: str, make_processor: ProcessorFactory,
                 options: FaustOptions) -> None:  # fmt: skip
        self.source = source
        self.topic = topic
        self.options = options
        self._make_processor = make_processor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"skewless-{source}")
        self.processor = make_processor(source)
        self.owned: set[int] = set()
        self.batches = 0
        self.records = 0

    async def run(self, stream: Any) -> None:
        """The agent body: batch, process until it succeeds, then ack."""
        opts = self.options
        async for events in stream.noack_take(opts.batch_max, within=opts.batch_within_ms / 1000):
            records = [_record(e) for e in events]
            try:
                await self._process_until_done(records)
            except _Stopped as stop:
                if stop.processed:  # the attempt in flight succeeded: its events are done
                    for event in events:
                        event.ack()
                raise
            for event in events:
                await stream.ack(event)
            self.batches += 1
            self.records += len(records)

    async def _process_until_done(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        loop = asyncio.get_running_loop()
        delay_ms = self.options.retry_first_ms
        attempt = 0
        while True:
            attempt += 1
            future = loop.run_in_executor(self._executor, self.processor.process, records)
            try:
                outcome = await asyncio.shield(future)
            except asyncio.CancelledError:
                # stopping: let the attempt in flight finish, so that its effects and our
                # acks agree (whatever it wrote is fenced: a replay never applies it twice)
                await asyncio.wait([future])
                raise _Stopped(processed=future.exception() is None) from None
            except Exception as exc:
                first, last = records[0], records[-1]
                log.warning(
                    "source %r: batch of %d records (partition %d offset %d .. partition %d "
                    "offset %d) failed on attempt %d, retrying in %.1fs without committing: %s",
                    self.source, len(records), first.partition, first.offset, last.partition,
                    last.offset, attempt, delay_ms / 1000, exc,
                )  # fmt: skip
                await asyncio.sleep(delay_ms / 1000)
                delay_ms = min(delay_ms * 2, self.options.retry_max_ms)
                continue
            if attempt > 1:
                log.info("source %r: batch succeeded on attempt %d", self.source, attempt)
            if outcome.refused:
                log.info(
                    "source %r: %d records sent to the dead-letter topic (%s)",
                    self.source, sum(outcome.refused.values()),
                    ", ".join(f"{k}={v}" for k, v in sorted(outcome.refused.items())),
                )  # fmt: skip
            return outcome

    async def on_assigned(self, partitions: set[int]) -> None:
        """Forget partitions we lost; start afresh when we gained any (others may have
        written them since we last owned them, so cached state and log marks are stale)."""
        lost = self.owned - partitions
        gained = partitions - self.owned
        self.owned = set(partitions)
        if not lost and not gained:
            return
        loop = asyncio.get_running_loop()
        if gained:
            log.info("source %r: assigned partitions %s; fresh processor", self.source,
                     sorted(partitions))  # fmt: skip
            self.processor = await loop.run_in_executor(
                self._executor, self._make_processor, self.source
            )
        else:
            log.info("source %r: partitions %s revoked", self.source, sorted(lost))
            await loop.run_in_executor(self._executor, self.processor.forget_partitions, lost)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _partitions_of(tps: Iterable[Any], topic: str) -> set[int]:
    return {tp.partition for tp in tps if tp.topic == topic}


def build_app(
    plan: Plan,
    config: Config,
    make_processor: ProcessorFactory,
    options: FaustOptions | None = None,
    sources: Sequence[str] | None = None,
) -> tuple[faust.App, list[SourceRunner]]:
    """A Faust app with one agent per source (all of the plan's sources by default)."""
    opts = options or FaustOptions()
    names = list(sources) if sources is not None else sorted(plan.sources)
    app_id = group_id_for(config, opts)
    datadir = config.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{host.strip()}" for host in config.kafka_bootstrap.split(",")],
        store=opts.store,
        datadir=str(datadir),
        web_enabled=False,
        topic_disable_leader=True,  # no <id>-__assignor-__leader topic: we have no tables
        broker_commit_interval=opts.commit_interval_ms / 1000,
        broker_commit_every=max(opts.batch_max, 10_000),
        stream_buffer_maxsize=opts.stream_buffer,
        stream_wait_empty=True,  # revoke only after the batch in flight is acked
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_threaded=False,
        autodiscover=False,
    )
    runners: list[SourceRunner] = []
    for name in names:
        src = plan.sources[name]
        runner = SourceRunner(name, src.topic, make_processor, opts)
        topic = app.topic(
            src.topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        app.agent(topic, name=f"skewless.{name}", concurrency=1)(runner.run)
        runners.append(runner)

    by_topic: Mapping[str, SourceRunner] = {r.topic: r for r in runners}

    async def _on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned: set[Any] = args[0]  # the signal is sent as send(assigned)
        for topic, runner in by_topic.items():
            await runner.on_assigned(_partitions_of(assigned, topic))

    app.on_partitions_assigned.connect(_on_assigned)

    return app, runners


def run_faust_worker(
    plan: Plan,
    config: Config,
    make_processor: ProcessorFactory,
    *,
    options: FaustOptions | None = None,
    sources: Sequence[str] | None = None,
) -> int:
    """Run a Faust worker until SIGTERM/SIGINT; returns the process exit code (0 on a clean stop)."""
    opts = options or FaustOptions()
    app, runners = build_app(plan, config, make_processor, opts, sources)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = faust.Worker(app, loglevel=opts.loglevel, quiet=True, loop=loop)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # Faust's worker always ends with SystemExit
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for runner in runners:
            runner.close()
    return code
