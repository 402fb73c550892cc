"""`skewless demo`: the whole engine on real Kafka and Redis in a few minutes, with a report.

Steps: check (or start) the local services; copy the example definitions with a topic of
their own and apply them; start stream workers; send a day of generated payments, then a
live stream with freshness probes; read fresh features; build a point-in-time training set
for generated fraud labels; run ``verify``; stop the workers; write the Markdown + PNG report.

Each run has its own topic (``demo.transactions.<run>``), consumer group, event log and
online keyspace (the topic is part of every view's fingerprint), so runs never mix; Redis
database 3 holds the demo's keys. Everything a run writes is under its output folder.

Example:
    >>> result, files = Demo(DemoOptions(events=6_000, rate=1_000), sys.stdout).run()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import yaml

from engine.config import CONFIG_FILE, Config, load_config
from engine.demo_data import DAY_MS, fraud_labels, payments
from engine.demo_monitor import (
    GroupProgress,
    LiveProbes,
    Monitor,
    ProbeResult,
    ProgressLine,
    WorkerCounters,
    percentile,
)
from engine.demo_report import (
    DemoResult,
    ReportFiles,
    WatchPoint,
    cell_text,
    watch_summary,
    write_report,
)
from engine.errors import (
    ConfigError,
    InputDataError,
    KafkaUnavailable,
    OnlineStoreAuthError,
    OnlineStoreUnavailable,
    ServicesError,
    SkewlessError,
)
from engine.keys import encode_key, partition_for
from engine.online_read import FRESHNESS_SUFFIX
from engine.services import STOP_HINT, run_services, service_ports
from engine.store import FeatureStore
from engine.stream.core import wall_clock_ms

__all__ = ["EXAMPLE_DEFINITIONS", "Demo", "DemoOptions"]

EXAMPLE_DEFINITIONS = Path(__file__).resolve().parents[1] / "definitions"
SOURCE = "transactions"
DEMO_REDIS_DB = 3
CUSTOMERS = 500
MERCHANTS = 60
COUNT_REF = "customer_spend:amount_count_7d"  # a probe is visible once this reads 1
WATCH_REFS = ("customer_spend:amount_count_7d", "customer_spend:amount_mean_1h")
ONLINE_REFS = (
    "customer_spend:amount_sum_30d",
    "customer_spend:amount_count_7d",
    "customer_activity:amount_usd_last_5_1d",
    "customer_online:amount_sum_1h",
)
TRAINING_FEATURES = (
    "customer_spend:amount_sum_30d",
    "customer_spend:amount_count_7d",
    "customer_spend:amount_mean_1h",
    "customer_spend:amount_max_1d",
    "customer_activity:amount_usd_sum_1d",
    "customer_activity:merchant_id_approx_count_distinct_30d",
    "customer_activity:country_count_distinct_7d",
    "customer_activity:transaction_id_count_10m",
    "customer_online:amount_sum_1h",
    "merchant_risk:amount_count_1d",
)
# settings the demo writes into its own skewless.yaml; the environment must not override them
_OWN_SETTINGS_ENV = (
    "SKEWLESS_PROJECT",
    "SKEWLESS_KAFKA_BOOTSTRAP",
    "SKEWLESS_KAFKA_PARTITIONS",
    "SKEWLESS_REDIS_URL",
    "SKEWLESS_EVENT_LOG",
    "SKEWLESS_STATE_DIR",
)
_CATCH_UP_TIMEOUT_S = 600.0
_READY_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 60.0
_HISTORY_CHUNK = 2_000
_METRICS_URL = re.compile(rb"metrics on (http://\S+)")  # the worker logs its endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """Settings of a demo run (``skewless demo --help``)."""

    events: int = 60_000  # payments in all; the last third is streamed live
    rate: int = 1_000  # live payments per second
    workers: int = 2
    labels: int = 10_000  # labelled payments in the training set
    out_dir: Path | None = None  # default: .skewless/demo/<run>
    report_dir: Path | None = None  # default: <out_dir>/report
    definitions: Path = EXAMPLE_DEFINITIONS
    redis_db: int = DEMO_REDIS_DB
    start_services: bool = True
    verify_sample: int = 200
    seed: int = 7

    def check(self) -> None:
        """InputDataError for settings the demo cannot run with."""
        if self.events < 30:
            raise InputDataError(f"--events must be at least 30, got {self.events}")
        if self.rate < 1:
            raise InputDataError(f"--rate must be at least 1 payment per second, got {self.rate}")
        if self.workers < 1:
            raise InputDataError(f"--workers must be at least 1, got {self.workers}")
        if self.labels < 1:
            raise InputDataError(f"--labels must be at least 1, got {self.labels}")
        if not 0 <= self.redis_db <= 15:
            raise InputDataError(f"--redis-db must be 0..15, got {self.redis_db}")


class Demo:
    """One demo run; ``run()`` does every step and returns what it measured and wrote."""

    def __init__(self, options: DemoOptions, out: TextIO) -> None:
        options.check()
        self.options = options
        self.out = out
        self.run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]
        self.topic = f"demo.{SOURCE}.{self.run_id}"
        self.project = f"demo-{self.run_id}"
        self.dir = (options.out_dir or Path(".skewless") / "demo" / self.run_id).resolve()
        self.report_dir = (options.report_dir or self.dir / "report").resolve()
        self.repo = self.dir / "definitions"
        self.logs = self.dir / "logs"
        self.steps: list[tuple[str, float]] = []
        self._step_no = 0
        self._workers: list[subprocess.Popen[bytes]] = []
        self._worker_logs: list[IO[bytes]] = []
        self._metrics_urls: list[str] = []  # each worker's /metrics (for its late counter)
        self._env: dict[str, str] = {}
        self._pushing = False
        self._interrupted = False

    # -- the run -------------------------------------------------------------------------

    def run(self) -> tuple[DemoResult, ReportFiles]:
        """Every step in order; workers are stopped (SIGTERM) however the run ends, Ctrl-C
        included."""
        with self._interrupts_outside_pushes():
            return self._run()

    @contextlib.contextmanager
    def _interrupts_outside_pushes(self) -> Iterator[None]:
        """Ctrl-C raises KeyboardInterrupt at once, except during a push: a signal inside the
        producer's flush makes confluent-kafka fail with a SystemError, so it waits for the
        push to return (``_push``). Only the main thread can set signal handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(_signum: int, _frame: Any) -> None:
            if self._pushing:
                self._interrupted = True
            else:
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _push(self, store: FeatureStore, rows: pd.DataFrame) -> int:
        """The rows ``store.push`` produced to the topic."""
        self._pushing = True
        try:
            sent = store.push(SOURCE, rows)
        finally:
            self._pushing = False
        if self._interrupted:
            raise KeyboardInterrupt
        return sent

    def _run(self) -> tuple[DemoResult, ReportFiles]:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        base = load_config(self.options.definitions)
        config = self._demo_config(base)
        self._say(f"skewless demo {self.run_id}: everything goes to {self.dir}")
        with self._step("services: Kafka and Redis"):
            self._ensure_services(config)
        with self._step("apply the example definitions"):
            store = self._apply(base)
        probe_store = FeatureStore.from_repo(self.repo, environ=self._env)
        try:
            with self._step(f"start {self.options.workers} stream workers"):
                self._start_workers(store, probe_store)
            streamed = self._stream(store, probe_store)
            with self._step("read fresh features from Redis"):
                self._online_reads(store, streamed)
            with self._step("point-in-time training set (backfill)"):
                training, (watch, recheck) = self._training_set(store, streamed)
            with self._step("verify: online store vs the replayed event log"):
                report = store.verify(sample=self.options.verify_sample, seed=self.options.seed)
                self._say(report.to_text().rstrip())
        finally:
            codes = self._stop_workers()
        with self._step("write the report"):
            log_freshness = self._log_freshness(store, streamed.live_start_ms)
            result = DemoResult(
                run_id=self.run_id,
                started_at=started,
                cores=os.cpu_count() or 1,
                workers=self.options.workers,
                topic=self.topic,
                redis=_address(config.redis_url),
                history_events=streamed.history_events,
                live_events=streamed.live_events,
                rate=self.options.rate,
                steps=list(self.steps),
                samples=streamed.samples,
                history_start_ms=streamed.history_start_ms,
                live_start_ms=streamed.live_start_ms,
                live_end_ms=streamed.live_end_ms,
                history_catchup_s=streamed.history_catchup_s,
                probes=streamed.probes,
                log_freshness_ms=log_freshness,
                late=streamed.late,
                watch_entity=streamed.watch_entity,
                watch=watch,
                watch_recheck=recheck,
                training_rows=len(training.frame),
                training_columns=len(training.frame.columns),
                training_features=len(TRAINING_FEATURES),
                fraud_rate=float(training.frame["is_fraud"].mean()),
                training_head=_head(training.frame, self.options.seed),
                verify=report,
                paths=self._paths(store, training.path),
            )
            files = write_report(result, self.report_dir)
        self._summary(store, result, files, codes)
        return result, files

    # -- steps ---------------------------------------------------------------------------

    def _demo_config(self, base: Config) -> Config:
        """The settings the demo's copy will run with: the base services, its own names."""
        return dataclasses.replace(
            base,
            project=self.project,
            redis_url=_with_db(base.redis_url, self.options.redis_db),
        )

    def _ensure_services(self, config: Config) -> None:
        problems = _unreachable(config)
        if not problems:
            self._say(
                f"  Kafka at {config.kafka_bootstrap} and Redis at {_address(config.redis_url)} "
                "answer"
            )
            return
        local = True
        try:
            service_ports(config)
        except ConfigError:
            local = False  # remote services: nothing to start here
        if (
            not self.options.start_services
            or not local
            or any(isinstance(p, OnlineStoreAuthError) for p in problems)
        ):
            raise _combined(problems)
        self._say("  starting them: `skewless services up` (scripts/services.sh)")
        code = run_services("up", config)
        if code != 0:
            raise ServicesError(
                f"`skewless services up` failed (exit {code}); its messages are above. "
                "See docs/services.md"
            )
        problems = _unreachable(config)
        if problems:
            raise _combined(problems)

    def _apply(self, base: Config) -> FeatureStore:
        self.dir.mkdir(parents=True, exist_ok=True)
        src = self.options.definitions.resolve()
        shutil.copytree(
            src, self.repo, ignore=shutil.ignore_patterns(".skewless", "__pycache__", "*.pyc")
        )
        defs = self.repo / "payments.py"
        text = defs.read_text(encoding="utf-8") if defs.exists() else ""
        renamed = text.replace(f'topic="{SOURCE}"', f'topic="{self.topic}"')
        if renamed == text:
            raise ConfigError(
                f"{src}: the demo needs the example payments definitions "
                f'(payments.py with a source topic="{SOURCE}"); pass --definitions PATH'
            )
        defs.write_text(renamed, encoding="utf-8")
        self._write_settings(base)
        self._env = _child_environment(base)
        store = FeatureStore.from_repo(self.repo, environ=self._env)
        store.plan.resolve([*ONLINE_REFS, *TRAINING_FEATURES, *WATCH_REFS])
        result = store.apply()
        self._say(
            f"  {len(store.plan.views)} views, "
            f"{sum(len(v.aggregations) for v in store.plan.views.values())} features; "
            f"topics {', '.join(sorted(result.topics))}"
        )
        return store

    def _write_settings(self, base: Config) -> None:
        path = self.repo / CONFIG_FILE
        data: dict[str, Any] = {}
        if path.exists():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data.setdefault("project", {})["name"] = self.project
        kafka = data.setdefault("kafka", {})
        kafka["bootstrap_servers"] = base.kafka_bootstrap
        kafka["partitions"] = base.kafka_partitions
        redis = data.setdefault("redis", {})
        redis["url"] = _with_db(base.redis_url, self.options.redis_db)
        redis.pop("username", None)  # credentials come from the environment (see _env)
        header = (
            f"# Settings of demo run {self.run_id}, written by `skewless demo` from "
            f"{self.options.definitions}.\n"
        )
        path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    def _start_workers(self, store: FeatureStore, probe_store: FeatureStore) -> None:
        partitions = store.config.kafka_partitions
        if self.options.workers > partitions:
            raise InputDataError(
                f"--workers {self.options.workers} is more than the topic's {partitions} "
                "partitions: the extra workers would idle"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "engine.cli",
            "--repo",
            str(self.repo),
            "worker",
            "--runtime",
            "kafka",
            "--metrics-port",
            "0",  # any free port; the worker logs it (_wait_assigned)
            "--metrics-host",
            "127.0.0.1",
        ]
        for i in range(self.options.workers):
            log = open(self.logs / f"worker-{i}.log", "wb")  # noqa: SIM115  closed in _stop_workers
            self._worker_logs.append(log)
            self._workers.append(
                subprocess.Popen(
                    argv,
                    env=self._env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self._wait_assigned()
        # one probe per partition: each is visible online only once its owner consumes
        probes = LiveProbes(
            probe_store,
            source=SOURCE,
            count_ref=COUNT_REF,
            watch_entity={"customer_id": "-"},
            watch_refs=[COUNT_REF],
            prefix=f"ready-{self.run_id}-",
            timeout_s=_READY_TIMEOUT_S,
        )
        slowest = 0
        for customer in _one_key_per_partition(f"ready-{self.run_id}-", partitions):
            seen = probes.probe(customer)
            if seen.latency_ms is None:
                raise SkewlessError(
                    f"a probe payment on partition {partition_for(encode_key([customer]), partitions)} "
                    f"was not visible online within {_READY_TIMEOUT_S:.0f}s; see the worker logs "
                    f"in {self.logs}"
                )
            slowest = max(slowest, seen.latency_ms)
        self._say(
            f"  {self.options.workers} workers (pids "
            f"{', '.join(str(w.pid) for w in self._workers)}) own the {partitions} partitions; "
            f"pushed {probes.pushed} probe rows, one per partition: each visible online "
            f"(slowest {slowest} ms); logs in {self.logs}"
        )

    def _check_workers(self) -> None:
        """SkewlessError with the end of its log if a worker has exited."""
        for i, proc in enumerate(self._workers):
            if proc.poll() is not None:
                path = self.logs / f"worker-{i}.log"
                raise SkewlessError(
                    f"worker {i} exited with code {proc.returncode}:\n{_tail(path)}\n"
                    f"(full log: {path})"
                )

    def _wait_assigned(self) -> None:
        """Until every worker has logged a partition assignment (its metrics endpoint is
        logged before it); raise if one exits."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        paths = [self.logs / f"worker-{i}.log" for i in range(len(self._workers))]
        while True:
            self._check_workers()
            texts = [path.read_bytes() for path in paths]
            if all(b" assigned " in text for text in texts):
                found = [_METRICS_URL.search(text) for text in texts]
                self._metrics_urls = [m.group(1).decode() for m in found if m is not None]
                return
            if time.monotonic() > deadline:
                raise SkewlessError(
                    f"the workers did not join the consumer group within "
                    f"{_READY_TIMEOUT_S:.0f}s; see {self.logs}"
                )
            time.sleep(0.2)

    def _stream(self, store: FeatureStore, probe_store: FeatureStore) -> _Streamed:
        from connectors.kafka import KafkaOffsets, KafkaSettings, group_id

        options = self.options
        n_live = max(1, options.events // 3)
        n_history = options.events - n_live
        now = wall_clock_ms()
        history = payments(
            n_history,
            customers=CUSTOMERS,
            merchants=MERCHANTS,
            days=1,
            seed=options.seed,
            start_ms=now - DAY_MS - 60_000,
        )
        history = history.drop(columns=["processed_at"])
        live = payments(
            n_live, customers=CUSTOMERS, merchants=MERCHANTS, days=1, seed=options.seed + 1
        ).drop(columns=["processed_at"])
        live_seconds = n_live / options.rate
        watch_entity = _watched_customer(live, live_seconds)
        offsets = KafkaOffsets(KafkaSettings.from_config(store.config))
        progress = GroupProgress(offsets, group_id(store.config.project), self.topic)
        line = ProgressLine(self.out)
        counters = WorkerCounters(self._metrics_urls, self.topic) if self._metrics_urls else None
        monitor = Monitor(progress, line, late=None if counters is None else counters.late)
        probes = LiveProbes(
            probe_store,
            source=SOURCE,
            count_ref=COUNT_REF,
            watch_entity={"customer_id": watch_entity},
            watch_refs=WATCH_REFS,
            prefix=f"probe-{self.run_id}-",
        )
        probes_started = False
        monitor.start()
        try:
            with self._step(f"send {n_history:,} payments of the last day, as fast as possible"):
                monitor.begin("history", n_history)
                history_start_ms = wall_clock_ms()
                pushed = 0
                for start in range(0, n_history, _HISTORY_CHUNK):
                    stop = min(n_history, start + _HISTORY_CHUNK)
                    pushed += self._push(store, history.iloc[start:stop])
                    monitor.sent_payments = pushed
                caught = monitor.wait_caught_up(_CATCH_UP_TIMEOUT_S, "history", self._check_workers)
                catchup_s = (caught.t_ms - history_start_ms) / 1000
                late = None if counters is None else caught.late
                monitor.finish(_history_line(pushed, catchup_s, late))
            with self._step(
                f"stream {n_live:,} live payments at {options.rate:,}/s with freshness probes"
            ):
                monitor.begin("live", n_live, probes)
                probes.start()
                probes_started = True
                live_start_ms = wall_clock_ms()
                sent_ts, pushed = self._send_live(store, live, monitor)
                live_end_ms = wall_clock_ms()
                probes.stop()
                probes_started = False
                caught = monitor.wait_caught_up(_CATCH_UP_TIMEOUT_S, "live", self._check_workers)
                monitor.finish(
                    _live_line(
                        pushed, (live_end_ms - live_start_ms) / 1000, probes.pushed, probes.results
                    )
                )
        finally:
            if probes_started:
                with contextlib.suppress(Exception):
                    probes.stop()
            monitor.stop()
        live = live.assign(ts=sent_ts)
        return _Streamed(
            history=history,
            live=live,
            history_events=n_history,
            live_events=n_live,
            samples=monitor.samples,
            history_start_ms=history_start_ms,
            live_start_ms=live_start_ms,
            live_end_ms=live_end_ms,
            history_catchup_s=catchup_s,
            probes=probes.results,
            reads=probes.reads,
            watch_entity=watch_entity,
            late=None if counters is None else caught.late,
        )

    def _send_live(
        self, store: FeatureStore, live: pd.DataFrame, monitor: Monitor
    ) -> tuple[np.ndarray, int]:
        """Send ``live`` at the configured rate, each chunk stamped with its send time; the
        send times and the rows push reported sent."""
        sent_ts = np.zeros(len(live), dtype="int64")
        began = time.monotonic()
        sent = pushed = 0
        while sent < len(live):
            due = min(len(live), int((time.monotonic() - began) * self.options.rate) + 1)
            if due > sent:
                now = wall_clock_ms()
                pushed += self._push(store, live.iloc[sent:due].assign(ts=now))
                sent_ts[sent:due] = now
                sent = due
                monitor.sent_payments = pushed
            time.sleep(0.02)
        return sent_ts, pushed

    def _online_reads(self, store: FeatureStore, streamed: _Streamed) -> None:
        everyone = pd.concat([streamed.history["customer_id"], streamed.live["customer_id"]])
        customers = everyone.value_counts().index[:3].tolist()
        read_at = wall_clock_ms()
        frame = store.get_online_features(
            list(ONLINE_REFS),
            [{"customer_id": c} for c in customers],
            with_freshness=True,
            full_feature_names=True,
            now_ms=read_at,
        ).to_df()
        ages = [c for c in frame.columns if c.endswith(FRESHNESS_SUFFIX)]
        shown = frame.drop(columns=ages)
        shown["written"] = [
            f"{(read_at - frame[ages].loc[i].max()) / 1000:.1f}s ago" for i in frame.index
        ]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            self._say(_indent(shown.to_string(index=False, max_colwidth=40)))

    def _training_set(
        self, store: FeatureStore, streamed: _Streamed
    ) -> tuple[_Training, tuple[dict[str, list[WatchPoint]], dict[str, WatchPoint]]]:
        events = pd.concat([streamed.history, streamed.live], ignore_index=True)
        labels = fraud_labels(events, self.options.labels, seed=self.options.seed)
        frame = _training_frame(store, labels)
        path = self.dir / "training_set.parquet"
        frame.to_parquet(path, index=False)
        self._say(
            f"  {len(frame):,} labelled payments x {len(TRAINING_FEATURES)} features "
            f"(fraud rate {frame['is_fraud'].mean():.1%}) -> {path}"
        )
        head = _head(frame, self.options.seed)
        self._say(
            f"  {len(head)} rows drawn at random, one line per column: the label's, then each "
            "feature as <view>__<feature>"
        )
        self._say(_indent(_preview(head)))
        return _Training(frame=frame, path=path), self._watch_points(store, streamed)

    def _watch_points(
        self, store: FeatureStore, streamed: _Streamed
    ) -> tuple[dict[str, list[WatchPoint]], dict[str, WatchPoint]]:
        """Each online read of the watched customer next to the replay as of the read time;
        when a read is not equal, also a re-read of the customer now (the workers are idle)
        next to the replay as of now."""
        reads = streamed.reads
        if not reads:
            return {ref: [] for ref in WATCH_REFS}, {}
        times = [r.t_ms for r in reads] + [(r.freshness_ms or r.t_ms - 1) + 1 for r in reads]
        entity = pd.DataFrame({"customer_id": streamed.watch_entity, "event_timestamp": times})
        replay = store.get_historical_features(entity, list(WATCH_REFS), mode="processing_time")
        out: dict[str, list[WatchPoint]] = {}
        n = len(reads)
        for ref in WATCH_REFS:
            feature = ref.partition(":")[2]
            column = replay[feature].tolist()
            points = []
            for i, read in enumerate(reads):
                online, at_read, at_write = read.values[feature], column[i], column[n + i]
                if _same(online, at_read):
                    status = "equal"
                elif _same(online, at_write):
                    status = "in flight"
                else:
                    status = "differs"
                points.append(
                    WatchPoint(t_ms=read.t_ms, online=online, backfill=at_read, status=status)
                )
            out[ref] = points
        recheck: dict[str, WatchPoint] = {}
        if any(p.status != "equal" for points in out.values() for p in points):
            recheck = self._recheck(store, streamed.watch_entity)
        for line in watch_summary(streamed.watch_entity, out, recheck):
            self._say("  " + line)
        return out, recheck

    def _recheck(self, store: FeatureStore, entity: str) -> dict[str, WatchPoint]:
        """The watched customer read online now, next to the replay as of now: every batch
        has landed (the workers caught up and nothing is being sent)."""
        t_ms = wall_clock_ms()
        online = store.get_online_features(
            list(WATCH_REFS), [{"customer_id": entity}], now_ms=t_ms
        ).to_dict()
        frame = pd.DataFrame({"customer_id": [entity], "event_timestamp": [t_ms]})
        replay = store.get_historical_features(frame, list(WATCH_REFS), mode="processing_time")
        out = {}
        for ref in WATCH_REFS:
            feature = ref.partition(":")[2]
            value, expected = online[feature][0], replay[feature].tolist()[0]
            status = "equal" if _same(value, expected) else "differs"
            out[ref] = WatchPoint(t_ms=t_ms, online=value, backfill=expected, status=status)
        return out

    def _log_freshness(self, store: FeatureStore, live_start_ms: int) -> list[int]:
        """processed_at - event time of the live payments (probes excluded), from the log."""
        from connectors.eventlog import EventLogReader

        out = []
        for env in EventLogReader(store.config.event_log_root).read_all(SOURCE):
            if env.event_time_ms >= live_start_ms and not str(
                env.payload.get("transaction_id", "")
            ).startswith("probe-"):
                out.append(env.processed_at_ms - env.event_time_ms)
        return out

    def _stop_workers(self) -> list[int | None]:
        """SIGTERM every worker (each drains, commits and leaves the group), then wait."""
        for proc in self._workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for proc in self._workers:
            try:
                codes.append(proc.wait(timeout=_STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(None)
        for log in self._worker_logs:
            log.close()
        self._workers, self._worker_logs = [], []
        return codes

    # -- output --------------------------------------------------------------------------

    def _paths(self, store: FeatureStore, training: Path) -> dict[str, Path]:
        return {
            "report": self.report_dir / "demo-report.md",
            "training set": training,
            "event log": Path(store.config.event_log_root) / SOURCE,
            "worker logs": self.logs,
            "definitions (this run's copy)": self.repo,
        }

    def _summary(
        self,
        store: FeatureStore,
        result: DemoResult,
        files: ReportFiles,
        codes: list[int | None],
    ) -> None:
        total = sum(seconds for _, seconds in self.steps)
        stopped = (
            "stopped cleanly (SIGTERM, exit 0)"
            if all(c == 0 for c in codes)
            else f"stopped with exit codes {codes} (None: killed after {_STOP_TIMEOUT_S:.0f}s)"
        )
        width = max(len(k) for k in result.paths)
        self._say(f"\ndone in {total:,.0f}s; the {len(codes)} workers {stopped}.")
        self._say(f"  {'plots':<{width}}  {', '.join(p.name for p in files.plots)}")
        for what, path in result.paths.items():
            self._say(f"  {what:<{width}}  {path}")
        ref = ONLINE_REFS[0]
        customer = result.training_head["customer_id"].iloc[0]
        self._say(
            "\nThe topic, consumer group and Redis keys stay for you to explore, e.g.\n"
            f"  skewless --repo {self.repo} get {ref} customer_id={customer}\n"
            f"  skewless --repo {self.repo} worker      # resume streaming; Ctrl-C stops it\n"
            f"Stop the local Kafka and Redis with {STOP_HINT}."
        )

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        self._step_no += 1
        self._say(f"[{self._step_no}] {name}")
        began = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - began))

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


# -- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Streamed:
    history: pd.DataFrame
    live: pd.DataFrame  # with the send times as ``ts``
    history_events: int
    live_events: int
    samples: list[Any]
    history_start_ms: int
    live_start_ms: int
    live_end_ms: int
    history_catchup_s: float
    probes: list[ProbeResult]
    reads: list[Any]
    watch_entity: str
    late: int | None  # the workers' late counter once the live phase was applied; None:
    # no worker logged a metrics endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class _Training:
    frame: pd.DataFrame
    path: Path


def _unreachable(config: Config) -> list[SkewlessError]:
    """The errors of Redis and Kafka at ``config``'s addresses (quick checks), if any."""
    from connectors.kafka import KafkaSettings, topic_partitions
    from connectors.redis_store import RedisOnlineStore

    problems: list[SkewlessError] = []
    online = RedisOnlineStore.from_config(config)
    try:
        online.ping()
    except OnlineStoreUnavailable as exc:
        problems.append(exc)
    finally:
        online.close()
    settings = dataclasses.replace(KafkaSettings.from_config(config), timeout_s=3.0)
    try:
        topic_partitions(settings, [])
    except KafkaUnavailable as exc:
        problems.append(exc)
    return problems


def _combined(problems: list[SkewlessError]) -> SkewlessError:
    """The one problem, or a ServicesError listing both (Kafka and Redis both down)."""
    if len(problems) == 1:
        return problems[0]
    return ServicesError("neither service answers:\n  " + "\n  ".join(map(str, problems)))


def _child_environment(base: Config) -> dict[str, str]:
    """This environment minus the settings the demo's yaml fixes, plus Redis credentials
    that came inside a URL (the yaml holds the URL without them)."""
    env = {k: v for k, v in os.environ.items() if k not in _OWN_SETTINGS_ENV}
    if base.redis_username and "SKEWLESS_REDIS_USERNAME" not in env:
        env["SKEWLESS_REDIS_USERNAME"] = base.redis_username
    if (
        base.redis_password
        and "SKEWLESS_REDIS_PASSWORD" not in env
        and "SKEWLESS_REDIS_PASSWORD_FILE" not in env
    ):
        env["SKEWLESS_REDIS_PASSWORD"] = base.redis_password.reveal()
    return env


def _with_db(url: str, db: int) -> str:
    """``url`` with its database number replaced by ``db`` (TCP URLs; a unix URL's ``?db=``)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        base, _, query = url.partition("?")
        kept = [q for q in query.split("&") if q and not q.startswith("db=")]
        return f"{base}?{'&'.join([*kept, f'db={db}'])}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def _address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return url
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def _one_key_per_partition(prefix: str, partitions: int) -> list[str]:
    """Customer ids, one landing in each partition (the producers' murmur2 partitioner)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        customer = f"{prefix}{i}"
        found.setdefault(partition_for(encode_key([customer]), partitions), customer)
        i += 1
    return [found[p] for p in sorted(found)]


def _watched_customer(live: pd.DataFrame, seconds: float) -> str:
    """A customer with about one live payment per second: its values move visibly, and a
    read rarely races one of its batches."""
    counts = live["customer_id"].value_counts()
    target = max(1.0, seconds)
    best = min(counts.items(), key=lambda item: (abs(item[1] - target), str(item[0])))
    return str(best[0])


def _normal(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        return value.hex()  # bit for bit
    return value


def _same(a: Any, b: Any) -> bool:
    return bool(_normal(a) == _normal(b))


def _head(frame: pd.DataFrame, seed: int, rows: int = 5) -> pd.DataFrame:
    """A few rows drawn at random (the first rows are the day's first payments, with no
    history yet), in time order, without the transaction id."""
    picked = frame.sample(min(rows, len(frame)), random_state=seed).sort_index()
    return picked.drop(columns=["transaction_id"])


def _training_frame(store: FeatureStore, labels: pd.DataFrame) -> pd.DataFrame:
    """The labels with ``TRAINING_FEATURES`` as of each label's time, in columns named
    ``<view>__<feature>`` so each says which view it comes from."""
    return store.get_historical_features(labels, list(TRAINING_FEATURES), full_feature_names=True)


def _history_line(pushed: int, seconds: float, late: int | None) -> str:
    """The history phase's last line: rows push reported sent, how fast they were applied,
    the workers' late counter (None: unknown, left out)."""
    return (
        f"  history  pushed {pushed:,} rows; all applied in {seconds:.1f}s "
        f"({pushed / seconds:,.0f} events/s end to end)"
        + ("" if late is None else f"; late {late:,}")
    )


def _live_line(pushed: int, seconds: float, probe_rows: int, probes: list[ProbeResult]) -> str:
    """The live phase's last line: rows push reported sent (payments, then probes) and the
    probes' freshness."""
    seen = [p.latency_ms for p in probes if p.latency_ms is not None]
    return (
        f"  live     pushed {pushed:,} rows in {seconds:.1f}s (+{probe_rows:,} probe rows); "
        f"freshness (produce → visible online) p50 {percentile(seen, 0.5):,.0f} ms, "
        f"p99 {percentile(seen, 0.99):,.0f} ms over {len(seen)} probes"
    )


def _preview(rows: pd.DataFrame) -> str:
    """``rows`` turned on their side for a terminal: one line per column (long feature names
    stay readable), one value column per row; a missing value reads NaN."""
    names = [str(c) for c in rows.columns]
    width = max(len(n) for n in names)
    cells = [[cell_text(v) or "NaN" for v in rows[c]] for c in rows.columns]
    widths = [max(len(column[r]) for column in cells) for r in range(len(rows))]
    return "\n".join(
        (
            f"{name:<{width}}  "
            + "  ".join(f"{v:>{w}}" for v, w in zip(column, widths, strict=True))
        ).rstrip()
        for name, column in zip(names, cells, strict=True)
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("  " + line for line in text.splitlines()[-lines:])


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def options_from(values: Mapping[str, Any]) -> DemoOptions:
    """DemoOptions from parsed CLI values (keys named like the fields; None means default)."""
    fields = {f.name for f in dataclasses.fields(DemoOptions)}
    return DemoOptions(**{k: v for k, v in values.items() if k in fields and v is not None})
