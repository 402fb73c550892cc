"""Prometheus metrics of a stream worker: what the runtimes count, and the HTTP exporter.

Both runtimes call the module-level hooks (``observe_batch``, ``observe_failure``,
``observe_commit``, ``observe_rebalance``) — a few counter updates per *batch*, never per
record — which update ``METRICS``, registered in ``REGISTRY``. ``serve`` exposes
``REGISTRY`` on ``/metrics`` (``skewless worker --metrics-port``) and refreshes the consumer
group's lag in a background thread. Every metric is named ``skewless_*``; docs/metrics.md
lists them with their labels and meaning.

Example:
    >>> server = serve(9108, lag=store.consumer_lag)  # doctest: +SKIP
    >>> # curl http://127.0.0.1:9108/metrics
    >>> server.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from engine.errors import ConfigError
from engine.stream.core import BatchOutcome, wall_clock_ms

__all__ = [
    "METRICS",
    "REGISTRY",
    "MetricsServer",
    "WorkerMetrics",
    "observe_batch",
    "observe_commit",
    "observe_failure",
    "observe_rebalance",
    "serve",
]

log = logging.getLogger("skewless.metrics")

Partition = tuple[str, int]
Rebalance = Literal["assigned", "revoked", "lost"]

# seconds; a batch takes milliseconds, a stalled one seconds
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# seconds from event time to visible; replays of old events land in +Inf
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class WorkerMetrics:
    """The worker's metrics in one registry (a fresh registry per instance in tests).

    Example:
        >>> from prometheus_client import CollectorRegistry
        >>> m = WorkerMetrics(CollectorRegistry())
        >>> m.observe_rebalance("assigned", [("tx", 0), ("tx", 1)])
        >>> m.registry.get_sample_value("skewless_assigned_partitions", {"topic": "tx"})
        2.0
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.records = Counter("skewless_records", "Source records consumed and processed (valid or refused).", ["topic"], registry=r)  # fmt: skip
        self.applied = Counter("skewless_applied", "Events applied to a view's tiles (an event feeding two views counts twice).", ["topic"], registry=r)  # fmt: skip
        self.late = Counter("skewless_late", "Events not admitted to a view: later than its allowed lateness.", ["topic"], registry=r)  # fmt: skip
        self.fenced = Counter("skewless_fenced", "Events skipped because the online store already held them (replays).", ["topic"], registry=r)  # fmt: skip
        self.refused = Counter("skewless_refused", "Records sent to the dead-letter topic, by reason code.", ["topic", "reason"], registry=r)  # fmt: skip
        self.entities = Counter("skewless_entities_written", "Entity hashes written to the online store.", ["topic"], registry=r)  # fmt: skip
        self.rebuilds = Counter("skewless_state_rebuilds", "(view, partition) online states found lost (Redis emptied, restarted without its last writes, rolled back) and rebuilt from the event log.", ["topic"], registry=r)  # fmt: skip
        self.batches = Counter("skewless_batches", "Batches processed (online write, log append and dead letters durable).", ["topic"], registry=r)  # fmt: skip
        self.batch_seconds = Histogram("skewless_batch_duration_seconds", "Time to process a batch, from its first attempt to success (retries included).", ["topic"], buckets=_DURATION_BUCKETS, registry=r)  # fmt: skip
        self.freshness = Histogram("skewless_freshness_seconds", "Per batch and partition: wall clock when the batch was durable minus the event time of its newest applied event.", ["topic"], buckets=_FRESHNESS_BUCKETS, registry=r)  # fmt: skip
        self.newest_event = Gauge("skewless_newest_event_timestamp_seconds", "Event time of the newest event applied from a partition (in its latest batch).", ["topic", "partition"], registry=r)  # fmt: skip
        self.last_batch = Gauge("skewless_last_batch_timestamp_seconds", "When the latest batch of a topic was durable.", ["topic"], registry=r)  # fmt: skip
        self.failures = Counter("skewless_batch_failures", "Failed batch attempts (retried with backoff), by exception: OnlineStoreUnavailable = Redis, EventLogError = log, KafkaUnavailable = dead letters.", ["topic", "error"], registry=r)  # fmt: skip
        self.backoff = Gauge("skewless_backoff_seconds", "Current backoff before retrying a failed batch; 0 when the last attempt succeeded.", ["topic"], registry=r)  # fmt: skip
        self.commits = Counter("skewless_commits", "Offset commits (kafka runtime; Faust commits on its own timer).", registry=r)  # fmt: skip
        self.commit_failures = Counter("skewless_commit_failures", "Offset commits refused or unanswered (kept for the next commit).", registry=r)  # fmt: skip
        self.last_commit = Gauge("skewless_last_commit_timestamp_seconds", "When offsets were last committed (kafka runtime).", registry=r)  # fmt: skip
        self.rebalances = Counter("skewless_rebalances", "Partition assignment changes seen by this worker.", ["kind"], registry=r)  # fmt: skip
        self.assigned = Gauge("skewless_assigned_partitions", "Source partitions this worker owns.", ["topic"], registry=r)  # fmt: skip
        self.lag = Gauge("skewless_consumer_lag", "Records of a partition the consumer group has not committed (end offset minus committed offset), refreshed every --metrics-lag-interval.", ["topic", "partition"], registry=r)  # fmt: skip
        self.lag_updated = Gauge("skewless_consumer_lag_timestamp_seconds", "When skewless_consumer_lag was last refreshed.", registry=r)  # fmt: skip
        self.lag_failures = Counter("skewless_consumer_lag_failures", "Failed refreshes of skewless_consumer_lag (Kafka unreachable).", registry=r)  # fmt: skip
        self.info = Info("skewless_worker", "The worker's runtime and consumer group.", registry=r)
        self._owned: set[Partition] = set()
        self._lock = threading.Lock()

    # -- hooks --------------------------------------------------------------------------

    def observe_batch(
        self, topic: str, outcome: BatchOutcome, duration_s: float, *, now_ms: int | None = None
    ) -> None:
        """A batch of ``topic`` is durable (its offsets may be committed)."""
        now = wall_clock_ms() if now_ms is None else now_ms
        self.records.labels(topic).inc(outcome.records)
        self.applied.labels(topic).inc(outcome.applied)
        self.late.labels(topic).inc(outcome.late)
        self.fenced.labels(topic).inc(outcome.fenced)
        for reason, n in outcome.refused.items():
            self.refused.labels(topic, reason).inc(n)
        self.entities.labels(topic).inc(outcome.entities_written)
        self.batches.labels(topic).inc()
        if outcome.rebuilt:
            self.rebuilds.labels(topic).inc(outcome.rebuilt)
        self.batch_seconds.labels(topic).observe(duration_s)
        for partition, event_ms in outcome.newest_event_ms.items():
            self.newest_event.labels(topic, str(partition)).set(event_ms / 1000)
            self.freshness.labels(topic).observe(max(0, now - event_ms) / 1000)
        self.last_batch.labels(topic).set(now / 1000)
        self.backoff.labels(topic).set(0)

    def observe_failure(self, topic: str, exc: BaseException, delay_s: float) -> None:
        """A batch attempt of ``topic`` failed; the runtime retries it after ``delay_s``."""
        self.failures.labels(topic, type(exc).__name__).inc()
        self.backoff.labels(topic).set(delay_s)

    def observe_commit(self, *, ok: bool, now_ms: int | None = None) -> None:
        if ok:
            self.commits.inc()
            self.last_commit.set((wall_clock_ms() if now_ms is None else now_ms) / 1000)
        else:
            self.commit_failures.inc()

    def observe_rebalance(self, kind: Rebalance, partitions: Iterable[Partition]) -> None:
        """Partitions were assigned to this worker, or revoked from it, or lost."""
        parts = set(partitions)
        self.rebalances.labels(kind).inc()
        with self._lock:
            before = {t for t, _ in self._owned}
            if kind == "assigned":
                self._owned |= parts
            else:
                self._owned -= parts
                for topic, partition in parts:
                    _remove(self.newest_event, topic, str(partition))
            counts: dict[str, int] = dict.fromkeys(before, 0)
            for topic, _ in self._owned:
                counts[topic] = counts.get(topic, 0) + 1
            for topic, n in counts.items():
                self.assigned.labels(topic).set(n)

    def set_consumer_lag(self, lags: Mapping[Partition, int], *, now_ms: int | None = None) -> None:
        """Replace the lag gauges with ``lags`` (partitions not in it are removed)."""
        with self._lock:
            for (topic, partition), lag in lags.items():
                self.lag.labels(topic, str(partition)).set(lag)
            wanted = {(t, str(p)) for t, p in lags}
            for sample in [s for m in self.lag.collect() for s in m.samples]:
                labels = (sample.labels["topic"], sample.labels["partition"])
                if labels not in wanted:
                    _remove(self.lag, *labels)
        self.lag_updated.set((wall_clock_ms() if now_ms is None else now_ms) / 1000)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)


REGISTRY = CollectorRegistry()
"""The registry ``serve`` exposes: the worker's metrics and the process's (CPU, memory, fds)."""
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
METRICS = WorkerMetrics(REGISTRY)


def observe_batch(topic: str, outcome: BatchOutcome, duration_s: float) -> None:
    """Runtime hook: a batch of ``topic`` is durable (``WorkerMetrics.observe_batch``)."""
    METRICS.observe_batch(topic, outcome, duration_s)


def observe_failure(topic: str, exc: BaseException, delay_s: float) -> None:
    """Runtime hook: a batch attempt failed and is retried after ``delay_s``."""
    METRICS.observe_failure(topic, exc, delay_s)


def observe_commit(*, ok: bool) -> None:
    """Runtime hook: an offset commit succeeded or failed."""
    METRICS.observe_commit(ok=ok)


def observe_rebalance(kind: Rebalance, partitions: Iterable[Partition]) -> None:
    """Runtime hook: partitions assigned, revoked or lost."""
    METRICS.observe_rebalance(kind, partitions)


# -- the exporter -------------------------------------------------------------------------


@dataclass(slots=True)
class MetricsServer:
    """The running ``/metrics`` endpoint and its lag thread."""

    host: str
    port: int
    _close: Callable[[], None]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._close()


def serve(
    port: int,
    *,
    host: str = "0.0.0.0",
    lag: Callable[[], Mapping[Partition, int]] | None = None,
    lag_interval_s: float = 15.0,
    info: Mapping[str, str] | None = None,
    metrics: WorkerMetrics = METRICS,
) -> MetricsServer:
    """Serve ``metrics.registry`` on ``http://host:port/metrics`` (port 0: any free port) and,
    when ``lag`` is given, refresh ``skewless_consumer_lag`` from it every ``lag_interval_s``.

    Raises ConfigError when the port cannot be bound.
    """
    if lag_interval_s <= 0:
        raise ConfigError(f"the metrics lag interval must be above 0 seconds, got {lag_interval_s}")
    # no *_created series: they double what a scrape sends
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another "
            "--metrics-port (each worker on a machine needs its own)"
        ) from exc
    if info:
        metrics.info.info(dict(info))
    stop = threading.Event()
    poller: threading.Thread | None = None
    if lag is not None:
        poller = threading.Thread(
            target=_poll_lag, args=(lag, lag_interval_s, stop, metrics),
            name="skewless-metrics-lag", daemon=True,
        )  # fmt: skip
        poller.start()

    def close() -> None:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
        if poller is not None:
            poller.join(5)

    return MetricsServer(host=host, port=int(server.server_port), _close=close)


def _poll_lag(
    lag: Callable[[], Mapping[Partition, int]],
    interval_s: float,
    stop: threading.Event,
    metrics: WorkerMetrics,
) -> None:
    while not stop.is_set():
        try:
            metrics.set_consumer_lag(lag())
        except Exception as exc:  # a background thread must survive Kafka being away
            metrics.lag_failures.inc()
            log.warning("refreshing skewless_consumer_lag failed: %s", exc)
        stop.wait(interval_s)
