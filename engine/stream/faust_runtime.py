"""The Faust runtime: one Faust agent per source topic feeds event batches to the processing core.

Each source topic gets one agent (``concurrency=1``) that takes events in batches with
``Stream.noack_take`` — which yields the events themselves and acks nothing — turns them
into ``SourceRecord`` s, runs ``BatchProcessor.process`` on a one-thread executor (it is
synchronous: Redis and file I/O, and the event loop must keep serving Faust meanwhile) and
acks the batch's events only after ``process`` returned. Faust commits acked offsets every
``commit_interval_s`` and when it stops, so a committed offset always follows the online
write and the log append. A failing batch is retried — the same records — with exponential
backoff until it succeeds: nothing is acked meanwhile, so nothing is committed.

Why not ``take_events``: it acks in a ``finally`` block, so an exception or a cancellation
that leaves the ``async for`` would ack (and later commit) events that were never
processed. Why never let the agent raise: Faust's supervisor restarts a crashed agent
without seeking back, leaving a gap that stalls commits until the next rebalance.

Rebalances: Faust revokes every partition at each rebalance (the eager protocol), after it
waited for every event in flight to be acked (``stream_wait_empty``), so the batch in flight
finishes first. On revoke each source forgets the revoked partitions: the processor's entity
cache and the log's high-water marks are valid only while this worker owned the partition
without interruption. SIGTERM/SIGINT: Faust's worker stops the agents first (the batch in
flight runs to completion and is acked), then the consumer, which commits what was acked.

Example:
    >>> run_faust_worker(plan, config)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faust

from engine import metrics
from engine.config import Config
from engine.errors import KafkaUnavailable
from engine.plan import Plan
from engine.ports import DeadLetterSink
from engine.stream.core import BatchOutcome, SourceRecord, wall_clock_ms
from engine.stream.kafka_runtime import (
    SourceWiring,
    WorkerOptions,
    WorkerStats,
    build_worker,
    close_local_state,
)
from engine.stream.log_compaction import BackgroundCompaction, CompactionOptions

__all__ = [
    "FaustOptions",
    "SourceRunner",
    "broker_credentials",
    "build_app",
    "run_faust_worker",
    "wire_sources",
]

log = logging.getLogger("skewless.worker")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaustOptions:
    """Settings only the Faust runtime has (the shared ones are in ``WorkerOptions``)."""

    commit_interval_s: float = 0.5  # how often Faust commits acked offsets
    store: str = "memory://"  # no Faust tables: state lives in the online store
    stream_buffer: int = 8_192  # per-agent queue of fetched events
    session_timeout_s: float = 10.0  # a killed worker's partitions move after this long
    loglevel: str = "info"  # only used when Faust sets up logging itself


def _record(event: Any) -> SourceRecord:
    """The raw Kafka record behind a Faust event (``message`` holds the undecoded bytes)."""
    m = event.message
    return SourceRecord(topic=m.topic, partition=m.partition, offset=m.offset, key=m.key,
                        value=m.value)  # fmt: skip


class _Stopped(asyncio.CancelledError):
    """The agent was cancelled while a batch was in flight; ``processed``: the batch completed."""

    def __init__(self, *, processed: bool) -> None:
        super().__init__()
        self.processed = processed


class _StatsLog:
    """Logs the worker's counters every ``interval_s`` (the kafka runtime's format)."""

    def __init__(self, interval_s: float) -> None:
        self.stats = WorkerStats()
        self.interval_s = interval_s
        self._last = time.monotonic()
        self._last_records = 0

    def maybe_log(self, *, force: bool = False) -> None:
        now = time.monotonic()
        span = now - self._last
        if not force and span < self.interval_s:
            return
        s = self.stats
        fresh = s.records - self._last_records
        log.info(
            "%d records (%.0f/s), applied %d, late %d, fenced %d, refused %s, batches %d, "
            "retries %d",
            s.records, fresh / max(span, 1e-9), s.applied, s.late, s.fenced,
            dict(s.refused) or 0, s.batches, s.retries,
        )  # fmt: skip
        self._last = now
        self._last_records = s.records


class _Worker(faust.Worker):
    """Faust's worker, saying what a stop signal does before it does it (``mode.Worker``
    installs these two methods as the loop's SIGTERM and SIGINT handlers)."""

    def _on_sigterm(self) -> None:
        log.info("SIGTERM: finishing the batch in hand, committing, leaving the group")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        log.info("SIGINT: finishing the batch in hand, committing, leaving the group")
        super()._on_sigint()


class SourceRunner:
    """Drives one source's ``BatchProcessor`` from a Faust stream; acks only processed events.

    Every call into the processor and its log runs on one private thread, in order, so a
    batch and the rebalance bookkeeping never overlap.
    """

    def __init__(
        self, topic: str, wiring: SourceWiring, options: WorkerOptions, stats: _StatsLog
    ) -> None:
        self.topic = topic
        self.wiring = wiring
        self.options = options
        self.stats = stats.stats
        self._stats_log = stats
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"skewless-{topic}")
        self.assigned: set[int] = set()  # the partitions Faust gave this worker now

    async def run(self, stream: Any) -> None:
        """The agent body: batch, process until it succeeds, then ack."""
        opts = self.options
        async for events in stream.noack_take(opts.batch_max, within=opts.batch_timeout_s):
            records = [_record(e) for e in events]
            started = time.perf_counter()
            try:
                outcome = await self._process_until_done(records)
            except _Stopped as stop:
                if stop.processed:  # the attempt in flight succeeded: its events are done
                    for event in events:
                        event.ack()
                raise
            for event in events:
                await stream.ack(event)
            metrics.observe_batch(self.topic, outcome, time.perf_counter() - started)
            self.stats.add(outcome)
            self.stats.batches += 1
            self._stats_log.maybe_log()

    async def _process_until_done(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        loop = asyncio.get_running_loop()
        processor = self.wiring.processor
        attempt = 0
        while True:
            future = loop.run_in_executor(self._executor, processor.process, records)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # stopping: let the attempt in flight finish, so that its effects and our
                # acks agree (whatever it wrote is fenced: a replay never applies it twice)
                await asyncio.wait([future])
                raise _Stopped(processed=future.exception() is None) from None
            except Exception as exc:  # retried forever: never drop, never skip, never commit
                opts = self.options
                delay = min(opts.backoff_max_s, opts.backoff_initial_s * 2**attempt)
                attempt += 1
                self.stats.retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                metrics.observe_failure(self.topic, exc, delay)
                log.error(
                    "batch of %d records of %s (%s) failed, attempt %d: %s: %s — not acked; "
                    "retrying the same records in %.1fs",
                    len(records), self.topic, _span(records), attempt, type(exc).__name__, exc,
                    delay, exc_info=attempt == 1 and not isinstance(exc, ConnectionError | OSError),
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def on_revoked(self, partitions: set[int]) -> None:
        """Forget what this worker knew of partitions it may not own any more."""
        if not partitions:
            return
        self.stats.rebalances += 1
        metrics.observe_rebalance("revoked", [(self.topic, p) for p in partitions])

        def forget() -> None:
            self.wiring.processor.forget_partitions(partitions)
            self.wiring.log.forget()

        await asyncio.get_running_loop().run_in_executor(self._executor, forget)
        self.assigned -= set(partitions)
        log.info("revoked %s %s", self.topic, sorted(partitions))

    async def on_assigned(self, partitions: set[int], generation: int | None) -> None:
        """Owner epochs of ``partitions`` are taken under ``generation`` by the next batch."""
        self.stats.rebalances += 1
        metrics.observe_rebalance("assigned", [(self.topic, p) for p in partitions])
        self.assigned |= set(partitions)
        if partitions and generation is not None and generation > 0:
            assign = self.wiring.processor.assign
            await asyncio.get_running_loop().run_in_executor(
                self._executor, assign, partitions, generation
            )
        log.info("assigned %s %s", self.topic, sorted(partitions))  # the harness parses this

    def close(self) -> None:
        """After the agent stopped: spill the cache to the local tier (if any), for a warm
        restart, then stop the processor's thread."""
        try:
            self._executor.submit(close_local_state, self.topic, self.wiring.processor).result()
        finally:
            self._executor.shutdown(wait=True)


def _span(recs: Sequence[SourceRecord]) -> str:
    bounds: dict[int, tuple[int, int]] = {}
    for r in recs:
        lo, hi = bounds.get(r.partition, (r.offset, r.offset))
        bounds[r.partition] = (min(lo, r.offset), max(hi, r.offset))
    return ", ".join(f"p{p} offsets {lo}..{hi}" for p, (lo, hi) in sorted(bounds.items()))


def _partitions_of(tps: Iterable[Any], topic: str) -> set[int]:
    return {tp.partition for tp in tps if tp.topic == topic}


def wire_sources(
    plan: Plan, config: Config, options: WorkerOptions | None = None
) -> dict[str, SourceWiring]:
    """Source topic → processor and log, wired to the connectors named by ``config``.

    The same wiring as the kafka runtime (``build_worker``, with the same ``options``: cache
    size, local state tier, log rolling), except that each source gets its own dead-letter
    producer: each source's processor runs on its own thread.
    """
    from connectors.kafka import KafkaDeadLetterSink, KafkaPublisher, KafkaSettings

    settings = KafkaSettings.from_config(config)

    def dead_letters(source: str) -> DeadLetterSink:
        return KafkaDeadLetterSink(KafkaPublisher(settings), source)

    return build_worker(plan, config, options, dead_letters=dead_letters).sources


def build_app(
    config: Config,
    wiring: Mapping[str, SourceWiring],
    options: WorkerOptions | None = None,
    faust_options: FaustOptions | None = None,
) -> tuple[faust.App, list[SourceRunner], _StatsLog]:
    """A Faust app with one agent per source topic of ``wiring``, in group ``skewless.<project>``."""
    from connectors.kafka import group_id

    opts = options or WorkerOptions()
    fopts = faust_options or FaustOptions()
    datadir = config.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        group_id(config.project),  # the app id is the consumer group: the same as --runtime kafka
        broker=[f"kafka://{host.strip()}" for host in config.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(config),
        store=fopts.store,
        datadir=str(datadir),
        web_enabled=False,
        topic_disable_leader=True,  # no <id>-__assignor-__leader topic: there are no tables
        broker_commit_interval=fopts.commit_interval_s,
        # commit on the timer only: Faust's fetch loop would otherwise await a commit every
        # 10,000 acks, and one commit that never returned (seen once, while another client
        # deleted hundreds of topics) then stopped all fetching
        broker_commit_every=1 << 30,
        broker_session_timeout=fopts.session_timeout_s,
        broker_heartbeat_interval=min(3.0, fopts.session_timeout_s / 5),
        stream_buffer_maxsize=max(fopts.stream_buffer, opts.batch_max),
        stream_wait_empty=True,  # revoke only once the batch in flight is acked
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_threaded=False,
        autodiscover=False,
    )
    stats = _StatsLog(opts.stats_interval_s)
    runners: dict[str, SourceRunner] = {}
    for topic_name, source_wiring in sorted(wiring.items()):
        runner = SourceRunner(topic_name, source_wiring, opts, stats)
        topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")  # fmt: skip
        app.agent(topic, name=f"skewless.{topic_name}", concurrency=1)(runner.run)
        runners[topic_name] = runner

    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[Any] = args[0]  # sent as send(revoked)
        for topic_name, runner in runners.items():
            await runner.on_revoked(_partitions_of(revoked, topic_name))

    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned: set[Any] = args[0]  # sent as send(assigned)
        # Faust sets the generation of this assignment just before sending the signal
        generation = getattr(app, "consumer_generation_id", None)
        for topic_name, runner in runners.items():
            await runner.on_assigned(_partitions_of(assigned, topic_name), generation)

    app.on_partitions_revoked.connect(on_revoked)
    app.on_partitions_assigned.connect(on_assigned)
    return app, list(runners.values()), stats


def broker_credentials(config: Config) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """The kafka section's SASL/SSL settings in Faust's (aiokafka's) form; None for PLAINTEXT.

    The same settings as ``KafkaSettings.client_config`` gives librdkafka (docs/security.md).
    """
    from connectors.kafka import KafkaSettings

    settings = KafkaSettings.from_config(config)
    context = settings.ssl_context()
    if settings.uses_sasl:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.reveal() if settings.sasl_password else None,
            ssl_context=context,
            mechanism=settings.sasl_mechanism.upper(),
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _check_topics(config: Config, topics: Iterable[str]) -> dict[str, int]:
    """Fail fast (Faust would wait forever) when a source topic does not exist; the
    partition count of each."""
    from connectors.kafka import KafkaSettings, topic_partitions

    wanted = sorted(topics)
    found = topic_partitions(KafkaSettings.from_config(config), wanted)
    missing = [t for t in wanted if t not in found]
    if missing:
        raise KafkaUnavailable(
            f"Kafka at {config.kafka_bootstrap}: topic(s) {', '.join(missing)} do not exist; "
            "run `skewless apply` to create the topics of the definitions"
        )
    return {t: found[t] for t in wanted}


def run_faust_worker(
    plan: Plan,
    config: Config,
    options: WorkerOptions | None = None,
    faust_options: FaustOptions | None = None,
    *,
    wiring: Mapping[str, SourceWiring] | None = None,
    setup_logging: bool = False,
) -> int:
    """Run a Faust worker until SIGTERM/SIGINT (``skewless worker --runtime faust``).

    Returns the exit code Faust's worker ends with: 0 after a clean stop. ``wiring``
    defaults to ``wire_sources(plan, config)``; ``setup_logging`` lets Faust configure
    logging itself (the CLI configures it beforehand). Raises KafkaUnavailable when Kafka
    cannot be reached or a source topic does not exist.

    Example:
        >>> store = FeatureStore.from_repo("definitions")  # doctest: +SKIP
        >>> run_faust_worker(store.plan, store.config, WorkerOptions(batch_max=2000))  # doctest: +SKIP
        0
    """
    opts = options or WorkerOptions()
    fopts = faust_options or FaustOptions()
    if wiring is None:
        wiring = wire_sources(plan, config, opts)
    counts = _check_topics(config, wiring)
    for topic, source in wiring.items():  # a sole owner keeps its merged entries cached
        source.processor.set_source_partitions(counts[topic])
    app, runners, stats = build_app(config, wiring, opts, fopts)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = _Worker(
        app, loglevel=fopts.loglevel, quiet=True, loop=loop, override_logging=setup_logging
    )
    worker.spinner = None  # a terminal spinner would write escape codes into the log
    started = wall_clock_ms()
    log.info("faust worker started: topics %s, %s, %s", sorted(wiring), opts, fopts)
    names = {source.topic: name for name, source in plan.sources.items()}
    compaction = BackgroundCompaction(
        config,
        {name: source.topic for name, source in plan.sources.items()},
        owned=lambda: {names[r.topic]: sorted(r.assigned) for r in runners if r.topic in names},
        options=CompactionOptions(interval_s=opts.compact_interval_s),
    )
    compaction.start()
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # Faust's worker always ends with SystemExit
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        compaction.stop()
        for runner in runners:
            runner.close()
        stats.maybe_log(force=True)
        log.info("faust worker stopped after %.1fs (exit code %d)",
                 (wall_clock_ms() - started) / 1000, code)  # fmt: skip
    return code
