"""Live measurements of the demo: throughput and lag samples, freshness probes, the progress line.

Two clocks are measured, and named for what they are:

- **lag** — records produced to the topic minus records the workers' group has committed
  (a commit follows the Redis write and the event-log flush, so committed = applied);
- **freshness** — for probe payments of fresh customers, the time from the producer's send
  to the first online read that returns the payment (``get_online_features`` polled every
  few ms): what a model server would see.

The workers' ``late`` counter comes from their own metrics endpoints (``skewless_late_total``),
so the live line shows the number the workers count, explained once (``LATE_NOTE``).
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from prometheus_client.parser import text_string_to_metric_families

from engine.demo_data import probe_payment
from engine.errors import SkewlessError
from engine.status import OffsetsProbe, consumer_lag
from engine.stream.core import wall_clock_ms

__all__ = [
    "LATE_NOTE",
    "GroupProgress",
    "LiveProbes",
    "Monitor",
    "ProbeResult",
    "ProgressLine",
    "Sample",
    "WatchRead",
    "WorkerCounters",
    "counter_total",
    "percentile",
]

LATE_NOTE = (
    "  late = events older than a view's allowed lateness when they arrived (counted per view): "
    "still in the event log, not folded into that view, online or in the backfill; "
    "see docs/concepts/lateness.md"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One tick of the monitor: cumulative counts of the demo topic at ``t_ms``."""

    t_ms: int
    phase: str
    sent: int  # records produced so far (payments and probes)
    applied: int  # records the workers' group committed (written to Redis and the log)
    lag: int  # produced but not yet committed, over all partitions
    late: int = 0  # (event, view) pairs the workers did not admit: too late for the view


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """A probe payment: when it was sent and how long until an online read returned it."""

    customer_id: str
    sent_ms: int
    latency_ms: int | None  # None: not visible within the probe timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchRead:
    """An online read of the watched entity at ``t_ms``: values and the entity's write time."""

    t_ms: int
    values: Mapping[str, Any]
    freshness_ms: int | None  # newest write time of the entity (the view of the first ref)


class OnlineStore(Protocol):
    """The two ``FeatureStore`` calls a probe makes."""

    def push(self, source_name: str, rows: Any) -> int: ...

    def get_online_features(
        self, features: Sequence[str], entity_rows: Any, *, now_ms: int | None = None
    ) -> Any: ...


class GroupProgress:
    """Produced and committed records of one topic for one consumer group (``status``'s lag)."""

    def __init__(self, offsets: OffsetsProbe, group: str, topic: str) -> None:
        self.offsets = offsets
        self.group = group
        self.topic = topic

    def read(self) -> tuple[int, int]:
        """(records in the topic, records the group committed), summed over partitions."""
        lags = consumer_lag(self.offsets, self.group, [self.topic]).values()
        end = sum(p.end - p.start for p in lags)
        return end, end - sum(p.lag for p in lags)


def counter_total(text: str, name: str, labels: Mapping[str, str]) -> float:
    """The sum of counter ``name``'s samples whose labels include ``labels``, in a Prometheus
    text exposition (``name`` without the ``_total`` suffix); 0 when there is none."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_total" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


class WorkerCounters:
    """The ``late`` counter of the stream workers, summed over their ``/metrics`` endpoints
    (each worker started with ``--metrics-port 0``)."""

    def __init__(self, urls: Sequence[str], topic: str, *, timeout_s: float = 1.0) -> None:
        self.urls = list(urls)
        self.topic = topic
        self.timeout_s = timeout_s
        self._last: dict[str, int] = {}  # url -> its latest answer

    def late(self) -> int:
        """Events not admitted to a view, over all workers; a worker that does not answer
        counts with its latest answer (the counter only grows)."""
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                    text = response.read().decode("utf-8")
            except OSError:
                continue
            self._last[url] = int(counter_total(text, "skewless_late", {"topic": self.topic}))
        return sum(self._last.values())


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


class ProgressLine:
    """One refreshing line on a terminal; without one (CI, a pipe), a line every ``every_s``."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, every_s: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.every_s = every_s
        self._last = -math.inf
        self._width = 0

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own, above the refreshing one (redrawn by the next ``update``)."""
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
            self._last = -math.inf
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, text: str) -> None:
        """The phase's last line, always written."""
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._width = 0
        self._last = -math.inf


class LiveProbes:
    """A thread that sends a probe payment for a fresh customer every ``interval_s``, times it
    until an online read returns it, and reads the watched entity's features each round.

    ``store`` must be used by this thread only (a ``FeatureStore`` of its own): its producer
    is not thread-safe.
    """

    def __init__(
        self,
        store: OnlineStore,
        *,
        source: str,
        count_ref: str,
        watch_entity: Mapping[str, Any],
        watch_refs: Sequence[str],
        prefix: str,
        interval_s: float = 0.25,
        poll_s: float = 0.005,
        timeout_s: float = 20.0,
    ) -> None:
        self.store = store
        self.source = source
        self.count_ref = count_ref
        self.count_feature = count_ref.partition(":")[2]
        self.watch_entity = dict(watch_entity)
        self.watch_refs = list(watch_refs)
        self.prefix = prefix
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.results: list[ProbeResult] = []
        self.reads: list[WatchRead] = []
        self.pushed = 0  # rows push() reported sent
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-probes", daemon=True)
        self._next = 0

    def probe(self, customer_id: str | None = None) -> ProbeResult:
        """Send one probe payment and wait until an online read sees it (or the timeout)."""
        if customer_id is None:
            customer_id = f"{self.prefix}{self._next:05d}"
            self._next += 1
        sent = wall_clock_ms()
        self.pushed += self.store.push(self.source, [probe_payment(customer_id, sent)])
        deadline = time.monotonic() + self.timeout_s
        rows = [{"customer_id": customer_id}]
        while True:
            got = self.store.get_online_features([self.count_ref], rows).to_dict()
            if got[self.count_feature][0]:
                return ProbeResult(
                    customer_id=customer_id, sent_ms=sent, latency_ms=wall_clock_ms() - sent
                )
            if time.monotonic() > deadline:
                return ProbeResult(customer_id=customer_id, sent_ms=sent, latency_ms=None)
            time.sleep(self.poll_s)

    def read_watched(self) -> WatchRead:
        t_ms = wall_clock_ms()
        response = self.store.get_online_features(self.watch_refs, [self.watch_entity], now_ms=t_ms)
        values = {name: column[0] for name, column in response.to_dict().items()}
        view = self.watch_refs[0].partition(":")[0]
        return WatchRead(t_ms=t_ms, values=values, freshness_ms=response.freshness_ms[view][0])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the round in hand; re-raise what the thread failed with, if anything."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.results.append(self.probe())
                self.reads.append(self.read_watched())
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        except BaseException as exc:  # handed to the caller by stop()
            self.error = exc


class Monitor:
    """A thread that samples the group's progress every ``tick_s`` and renders the live line.

    The producer calls ``begin`` per phase and sets ``sent_payments`` as it goes; a phase's
    ``probes`` feed the freshness figures. ``samples`` keeps every tick for the report's
    throughput plot. The line reads: payments sent in the phase (rate), records applied
    since the phase began (rate; probes included), lag, the workers' ``late`` counter (when
    ``late`` is given; ``LATE_NOTE`` explains it once, the first time it is not 0),
    freshness of the probes so far.
    """

    def __init__(
        self,
        progress: GroupProgress,
        line: ProgressLine,
        *,
        late: Callable[[], int] | None = None,
        tick_s: float = 0.5,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.progress = progress
        self.line = line
        self.late = late
        self.tick_s = tick_s
        self.clock = clock
        self.phase = "start"
        self.target = 0  # payments the phase will send, for "sent x/y"
        self.sent_payments = 0
        self.probes: LiveProbes | None = None
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self._started_ms = clock()
        self._baseline = 0  # records applied before the phase began
        self._late_explained = False
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one writer of the line at a time
        self._thread = threading.Thread(target=self._run, name="demo-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def sample(self) -> Sample:
        """Read the group's progress now, keep the sample and return it."""
        end, applied = self.progress.read()
        late = 0 if self.late is None else self.late()
        sample = Sample(
            t_ms=self.clock(),
            phase=self.phase,
            sent=end,
            applied=applied,
            lag=end - applied,
            late=late,
        )
        self.samples.append(sample)
        return sample

    def begin(self, phase: str, target: int, probes: LiveProbes | None = None) -> None:
        """Start a phase that will send ``target`` payments; ``applied`` counts from here."""
        self._baseline = self.samples[-1].applied if self.samples else 0
        self.phase, self.target, self.sent_payments, self.probes = phase, target, 0, probes

    def finish(self, text: str) -> None:
        """End the phase's live line with ``text`` (and explain ``late`` if not done yet)."""
        with self._lock:
            self.line.done(text)
            self._explain_late()

    def _explain_late(self) -> None:
        """``LATE_NOTE`` once, after the first sample with a non-zero ``late``; hold the lock."""
        if not self._late_explained and self.samples and self.samples[-1].late:
            self._late_explained = True
            self.line.note(LATE_NOTE)

    def wait_caught_up(
        self, timeout_s: float, what: str, check: Callable[[], None] | None = None
    ) -> Sample:
        """Until a sample taken from now on shows lag 0 (and something sent); SkewlessError
        after ``timeout_s``. Samples come from the monitor thread, or are taken here.
        ``check`` runs every round and may raise (a worker that died)."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.samples)
        while True:
            if check is not None:
                check()
            if self._thread.is_alive():
                fresh = self.samples[seen:]
                latest = fresh[-1] if fresh else None
            else:
                latest = self.sample()
            if latest is not None and latest.lag == 0 and latest.sent > 0:
                return latest
            if time.monotonic() > deadline:
                state = "no sample" if latest is None else f"lag {latest.lag:,} of {latest.sent:,}"
                raise SkewlessError(
                    f"{what}: the workers did not catch up within {timeout_s:.0f}s "
                    f"({state} records); see the worker logs"
                )
            time.sleep(self.tick_s / 5)

    def render(self, sample: Sample) -> str:
        recent = [s for s in self.samples if s.t_ms >= sample.t_ms - 2_000]
        first = recent[0] if recent else sample
        span_s = max((sample.t_ms - first.t_ms) / 1000, 1e-9)
        sent_rate = (sample.sent - first.sent) / span_s if len(recent) > 1 else 0.0
        applied_rate = (sample.applied - first.applied) / span_s if len(recent) > 1 else 0.0
        text = (
            f"  {self.phase:<8} sent {self.sent_payments:>7,}/{self.target:<7,} "
            f"({sent_rate:>6,.0f}/s)  applied {sample.applied - self._baseline:>7,} "
            f"({applied_rate:>6,.0f}/s)  lag {sample.lag:>6,}"
        )
        if self.late is not None:
            text += f"  late {sample.late:,}"
        if self.probes is not None:
            seen = [p.latency_ms for p in self.probes.results if p.latency_ms is not None]
            if seen:
                text += (
                    f"  freshness p50 {percentile(seen, 0.5):,.0f} ms "
                    f"p99 {percentile(seen, 0.99):,.0f} ms ({len(seen)} probes)"
                )
        return text + f"  {(sample.t_ms - self._started_ms) / 1000:5.1f}s"

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                text = self.render(self.sample())
                with self._lock:
                    self._explain_late()
                    self.line.update(text)
                self._stop.wait(max(0.0, self.tick_s - (time.monotonic() - started)))
        except BaseException as exc:  # handed to the caller by stop()
            self.error = exc
