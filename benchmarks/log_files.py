"""Event-log files per partition-hour and backfill read speed, before and after the worker's log rolls.

Issue 11 part 3. For each mode, in one run, against the local Kafka and Redis
(``bash scripts/services.sh up``):

- **before**: ``skewless worker --compact-interval 60 --log-roll-mb 0`` (one fsynced log file
  per partition per batch, merged by the worker's own compaction every interval up to the
  committed offset: ``engine/stream/log_compaction.py``);
- **after**: ``--compact-interval 60 --log-roll-mb 64`` (the worker's defaults: each batch is
  an fsynced block appended to one open file per partition, rolled at 64 MiB or 5 minutes,
  ``--log-roll-seconds``; docs/event-log.md#rolling-files).

Each mode gets its own 4-partition topic, payments definitions (``definitions/payments.py``
with the source renamed, ``tests/stream_harness.payments_repo``), event-log root, consumer
group and a flushed Redis database (db 9: db 13 belongs to the streaming tests). ONE worker
process (``python -m engine.cli --repo R worker --runtime kafka --compact-interval X
--log-roll-mb M``) consumes payments (``tests/stream_harness.payment_events``: 10k customers, 1k merchants, event times
within the last 2 s) produced at a paced ``--rate`` (5,000 events/s) for ``--minutes``. Once
production ends the script waits until the group committed every offset (lag 0) and one more
compaction interval (+ a margin), then stops the worker with SIGTERM (which rolls its open
files).

Measured on the log at rest: live files (``EventLogReader.files``), files per partition-hour
(files / partitions / hours produced), bytes on disk. Then, alternating the two logs
``--repeat`` times so both see the same machine noise, best of the rounds:
backfill events/s (``FeatureStore.get_historical_features``, processing-time mode,
``--labels`` random customers and merchants at the end time: log records read / seconds),
once for all 23 features of the example and once for the 14 of its two views without a
transform (the core decodes their log files itself; the views with a batch transform take
the Python path), and raw read events/s (``EventLogReader.read_all``, every envelope
decoded). A line every 30 s shows progress: produced, consumer lag, live files so far. A
second table shows the write side: the worker's batches and the files it wrote (at rest +
merged away by its compaction).

Writes ``benchmarks/out/log_files.json`` and ``docs/img/log_files_rolling.png``; a run shorter than
10 minutes is a smoke run and writes ``benchmarks/out/log_files-quick.{json,png}`` instead.

Usage (from the repo root)::

    .venv/bin/python benchmarks/log_files.py                  # 2 x 10 min at 5k/s, ~30 min
    SKEWLESS_BENCH_REDIS_URL=redis://127.0.0.1:6394/9 .venv/bin/python benchmarks/log_files.py
    .venv/bin/python benchmarks/log_files.py --minutes 1      # a smoke run, ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
# this benchmark's Redis database (stream.py reads the variable when imported); not 13,
# which the streaming tests flush
os.environ.setdefault("SKEWLESS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")

import stream as bench  # noqa: E402  # benchmarks/stream.py: topics, producer, Redis

from connectors.eventlog import EventLogReader  # noqa: E402
from connectors.kafka import group_id  # noqa: E402
from engine.keys import encode_key  # noqa: E402
from engine.serde import SourceCodec  # noqa: E402
from engine.store import FeatureStore  # noqa: E402
from engine.stream.kafka_runtime import WorkerOptions  # noqa: E402
from engine.stream.log_compaction import CompactionOptions  # noqa: E402
from tests.faults.scenario import wait_assigned  # noqa: E402
from tests.stream_harness import (  # noqa: E402
    WorkerProcess,
    lag,
    payment_events,
    payments_repo,
    wait_caught_up,
)

RESULTS_JSON = bench.OUT / "log_files.json"
CHART = REPO / "docs" / "img" / "log_files_rolling.png"
PARTITIONS = bench.PARTITIONS
CUSTOMERS = [f"c{i:05d}" for i in range(10_000)]
MERCHANTS = [f"m{i:04d}" for i in range(1_000)]
CHUNK = 1_000  # events generated and encoded at a time by the paced producer
PROGRESS_S = 30.0
COMPACTION_MARGIN_S = 20.0  # after the last interval: time for the round itself to finish
CATCH_UP_TIMEOUT_S = 3600.0


@dataclass
class Mode:
    """One side of the comparison: its worker's compaction interval and what it left."""

    name: str
    interval_s: float
    roll_mb: float  # --log-roll-mb (0: one file per batch)
    topic: str = ""
    repo: Path = Path()
    log_root: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


def live_files(log_root: str, source: str) -> dict[int, int]:
    """Partition → live files (what a reader reads); empty before the first append."""
    reader = EventLogReader(log_root)
    if source not in reader.sources():
        return {}
    return {p: len(reader.files(source, p)) for p in reader.partitions(source)}


class Progress:
    """Prints produced, lag and live files every ``PROGRESS_S`` while a mode runs."""

    def __init__(self, mode: Mode, group: str) -> None:
        self.mode = mode
        self.group = group
        self.produced = 0
        self.phase = "producing"
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def sample(self) -> dict[str, Any]:
        try:
            behind: int | None = sum(lag(bench.BOOTSTRAP, self.group, self.mode.topic).values())
        except Exception as exc:  # a slow broker: show it, keep running
            print(f"  (lag unavailable: {exc})")
            behind = None
        files = sum(live_files(self.mode.log_root, self.mode.topic).values())
        got = {
            "t_s": round(time.monotonic() - self.started, 1),
            "phase": self.phase,
            "produced": self.produced,
            "lag": behind,
            "files": files,
            "load_1m": os.getloadavg()[0],
        }
        self.mode.samples.append(got)
        print(f"  [{self.mode.name}] {got['t_s']:6.0f} s {self.phase:<10} produced "
              f"{self.produced:>10,}  lag {behind if behind is not None else '?':>8}  "
              f"live files {files:>7,}  load {got['load_1m']:.2f}", flush=True)  # fmt: skip
        return got

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_S):
            self.sample()


def produce_paced(
    topic: str, codec: SourceCodec, rate: int, seconds: float, progress: Progress
) -> dict[str, Any]:
    """``rate`` payments a second for ``seconds``, keyed by customer like skewless; the
    schedule is cumulative, so a pause (generation, a GC) is caught up at once."""
    rng = random.Random(11)
    producer = bench.producer()
    failed: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    total = int(rate * seconds)
    pending: list[tuple[bytes, bytes]] = []
    sent = 0
    started = time.monotonic()
    while sent < total:
        due = min(total, int(rate * (time.monotonic() - started)))
        while sent < due:
            if not pending:
                now_ms = int(time.time() * 1000)
                rows, _ = payment_events(
                    CHUNK, rng, codec, event_time=lambda r, _s, now=now_ms: now - r.randrange(2_000),
                    customers=CUSTOMERS, merchants=MERCHANTS, invalid_kinds=("garbage",),
                    now_ms=now_ms,
                )  # fmt: skip  # the ~1% invalid records are dropped: valid payments only
                for i, row in enumerate(rows):
                    row["transaction_id"] = f"t{sent + i}"
                pending = [(encode_key([r["customer_id"]]), codec.encode(r)) for r in rows]
                pending.reverse()
            key, value = pending[-1]
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
            except BufferError:
                producer.poll(0.05)
                continue
            pending.pop()
            sent += 1
        progress.produced = sent
        producer.poll(0)
        time.sleep(0.005)
    produce_s = time.monotonic() - started
    left = producer.flush(120)
    if left or failed:
        raise SystemExit(f"producing to {topic}: {left} undelivered, errors {failed[:3]}")
    return {"events": total, "seconds": produce_s, "rate": total / produce_s}


def worker_log_facts(text: str) -> dict[str, Any]:
    """Batches from the worker's last stats line; files merged away by its compaction."""
    batches = re.findall(r"batches (\d+)", text)
    merged = [int(n) for n in re.findall(r"log compaction: (\d+) files merged away", text)]
    return {
        "batches": int(batches[-1]) if batches else None,
        "compaction_rounds_that_merged": len(merged),
        "files_merged_away": sum(merged),
        "compaction_warnings": text.count("log compaction skipped")
        + text.count("log compaction failed"),
    }


def run_mode(mode: Mode, args: argparse.Namespace, work: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    mode.topic = f"logfiles_{mode.name}_{suffix}"
    bench.create_topic(mode.topic)
    mode.repo = payments_repo(
        work / mode.name, mode.topic, project=f"logfiles-{mode.name}-{suffix}",
        bootstrap=bench.BOOTSTRAP, redis_url=bench.REDIS_URL,
    )  # fmt: skip
    bench.flush_redis()
    store = FeatureStore.from_repo(mode.repo)
    store.apply()
    bench.CREATED.extend(store.topics())
    mode.log_root = store.config.event_log_root
    group = group_id(store.config.project)
    codec = SourceCodec(store.plan.sources[mode.topic])
    print(f"\n== {mode.name}: worker --compact-interval {mode.interval_s:g} --log-roll-mb "
          f"{mode.roll_mb:g}, topic {mode.topic}, {args.rate:,} events/s for {args.minutes:g} "
          f"min", flush=True)  # fmt: skip
    load_before = os.getloadavg()
    worker = WorkerProcess(mode.repo, "--runtime", "kafka", "--compact-interval",
                           f"{mode.interval_s:g}", "--log-roll-mb", f"{mode.roll_mb:g}")  # fmt: skip
    try:
        wait_assigned(worker, mode.topic)
        with Progress(mode, group) as progress:
            produced = produce_paced(mode.topic, codec, args.rate, args.minutes * 60, progress)
            progress.phase = "catch-up"
            caught_from = time.monotonic()
            wait_caught_up(bench.BOOTSTRAP, group, [mode.topic], CATCH_UP_TIMEOUT_S)
            catch_up_s = time.monotonic() - caught_from
            end_ms = int(time.time() * 1000)
            print(f"  [{mode.name}] caught up {catch_up_s:.1f} s after the last event", flush=True)
            if mode.interval_s > 0:
                progress.phase = "compact"
                time.sleep(mode.interval_s + COMPACTION_MARGIN_S)
            progress.phase = "at rest"
            progress.sample()
        code = worker.terminate(120)
    finally:
        worker.kill()
    text = worker.text()
    if code != 0:
        raise SystemExit(f"the {mode.name} worker exited {code}:\n{text[-3000:]}")
    reader = EventLogReader(mode.log_root)
    per_partition = live_files(mode.log_root, mode.topic)
    files = sum(per_partition.values())
    records = reader.count(mode.topic)
    if records != produced["events"]:
        raise SystemExit(f"{mode.name}: the log holds {records:,} records, "
                         f"{produced['events']:,} were produced")  # fmt: skip
    hours = produced["seconds"] / 3600
    size = reader.size_bytes(mode.topic)
    mode.result = {
        "mode": mode.name,
        "compact_interval_s": mode.interval_s,
        "log_roll_mb": mode.roll_mb,
        "events": records,
        "produced": produced,
        "catch_up_s": catch_up_s,
        "end_ms": end_ms,
        "files": files,
        "files_per_partition": per_partition,
        "files_per_partition_hour": files / PARTITIONS / hours,
        "records_per_file": records / files,
        "bytes": size,
        "worker": worker_log_facts(text),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "samples": mode.samples,
    }
    w = mode.result["worker"]
    print(f"  [{mode.name}] {records:,} events in {files:,} live files "
          f"({mode.result['files_per_partition_hour']:,.0f} per partition-hour), "
          f"{size / 1e6:.1f} MB; worker batches {w['batches']}, files merged away by its "
          f"compaction {w['files_merged_away']:,}", flush=True)  # fmt: skip


# -- reads ------------------------------------------------------------------------------------


def features(store: FeatureStore, *, native_only: bool = False) -> list[str]:
    """Every feature of the example (``view:feature``), or those of the views without a
    transform, filter or batch transform: the core decodes their log files itself, while
    the others take the Python path (``engine/backfill.py``)."""
    return [
        f"{v.name}:{a.feature}"
        for v in store.plan.views.values()
        if not native_only
        or (v.transform is None and v.filter is None and v.batch_transform is None)
        for a in v.aggregations
    ]


READS = ("backfill", "backfill_native", "read")  # what measure_reads times, in this order


def time_backfill(mode: Mode, labels: Any, *, native_only: bool) -> tuple[float, int]:
    """Seconds of one processing-time backfill, and the log records it read."""
    import pandas as pd

    store = FeatureStore.from_repo(mode.repo)
    frame = labels.assign(
        event_timestamp=pd.to_datetime(mode.result["end_ms"], unit="ms", utc=True)
    )
    read = [0]

    def progress(records: int, _parts: int) -> None:
        read[0] += records

    started = time.perf_counter()
    out = store.get_historical_features(
        frame,
        features(store, native_only=native_only),
        mode="processing_time",
        full_feature_names=True,  # views share feature names (amount_sum_1h)
        progress=progress,
    )
    seconds = time.perf_counter() - started
    assert len(out) == len(frame)
    return seconds, read[0]


def time_read(mode: Mode) -> tuple[float, int]:
    """Seconds to decode every envelope of the log (``EventLogReader.read_all``)."""
    started = time.perf_counter()
    n = sum(1 for _ in EventLogReader(mode.log_root).read_all(mode.topic))
    return time.perf_counter() - started, n


def measure_reads(modes: list[Mode], labels_n: int, repeat: int) -> None:
    """Each read of each log ``repeat`` times, the logs alternating; the best run counts."""
    import pandas as pd

    rng = random.Random(7)
    labels = pd.DataFrame(
        {
            "customer_id": [rng.choice(CUSTOMERS) for _ in range(labels_n)],
            "merchant_id": [rng.choice(MERCHANTS) for _ in range(labels_n)],
        }
    )
    store = FeatureStore.from_repo(modes[0].repo)
    n_all, n_native = len(features(store)), len(features(store, native_only=True))
    print(f"\nreads, {repeat} rounds alternating the logs: backfill of all {n_all} features "
          f"and of the {n_native} native-path ones for {labels_n:,} labels; read_all",
          flush=True)  # fmt: skip
    timers = {
        "backfill": lambda m: time_backfill(m, labels, native_only=False),
        "backfill_native": lambda m: time_backfill(m, labels, native_only=True),
        "read": time_read,
    }
    for mode in modes:
        for what in READS:
            mode.result[f"{what}_runs"] = []
    for r in range(repeat):
        for mode in modes:
            shown = []
            for what in READS:
                load = os.getloadavg()[0]
                seconds, read = timers[what](mode)
                if read != mode.result["events"]:
                    raise SystemExit(f"{mode.name}: {what} read {read:,} records, "
                                     f"the log holds {mode.result['events']:,}")  # fmt: skip
                mode.result[f"{what}_runs"].append({"seconds": seconds, "load_1m": load})
                shown.append(f"{what} {seconds:6.2f} s ({read / seconds:>9,.0f}/s)")
            print(f"  round {r + 1} {mode.name:<6} " + "  ".join(shown)
                  + f"  load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    for mode in modes:
        res = mode.result
        for what in READS:
            best = min(x["seconds"] for x in res[f"{what}_runs"])
            res[f"{what}_s"], res[f"{what}_events_per_s"] = best, res["events"] / best
        res["labels"] = labels_n
        res["features"] = {"backfill": n_all, "backfill_native": n_native}


# -- report -----------------------------------------------------------------------------------

COLUMNS = ("events", "files", "files_per_partition_hour", "bytes", "backfill_events_per_s",
           "backfill_native_events_per_s", "read_events_per_s")  # fmt: skip


def report(rows: list[dict[str, Any]]) -> dict[str, float]:
    n_all, n_native = rows[0]["features"]["backfill"], rows[0]["features"]["backfill_native"]
    print(f"\n| mode | events | files | files/partition-hour | MB | backfill events/s "
          f"({n_all} features) | backfill events/s ({n_native} native-path features) | "
          f"read events/s |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} ({_flags(r)}) | "
              f"{r['events']:,} | {r['files']:,} | {r['files_per_partition_hour']:,.0f} | "
              f"{r['bytes'] / 1e6:,.1f} | {r['backfill_events_per_s']:,.0f} | "
              f"{r['backfill_native_events_per_s']:,.0f} | "
              f"{r['read_events_per_s']:,.0f} |")  # fmt: skip
    before, after = rows
    ratio = {c: after[c] / before[c] for c in COLUMNS}
    print(f"| after / before | {ratio['events']:.2f}x | {ratio['files']:.4f}x | "
          f"{ratio['files_per_partition_hour']:.4f}x | {ratio['bytes']:.2f}x | "
          f"{ratio['backfill_events_per_s']:.2f}x | {ratio['backfill_native_events_per_s']:.2f}x | "
          f"{ratio['read_events_per_s']:.2f}x |")  # fmt: skip
    # the write side: one fsynced file (before) or block (after) per partition per batch;
    # how many batches a worker makes depends on how far behind it runs (a lagging worker
    # takes bigger batches)
    print("\n| mode | worker batches | records per batch | files written | files written "
          "per partition-hour | merged away by the worker | max lag seen |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        w, hours = r["worker"], r["produced"]["seconds"] / 3600
        written = r["files"] + w["files_merged_away"]
        r["files_written"] = written
        r["files_written_per_partition_hour"] = written / PARTITIONS / hours
        most = max((x["lag"] or 0 for x in r["samples"]), default=0)
        per_batch = f"{r['events'] / w['batches']:,.0f}" if w["batches"] else "?"
        batches = f"{w['batches']:,}" if w["batches"] else "?"
        print(f"| {r['mode']} | {batches} | {per_batch} | {written:,} | "
              f"{r['files_written_per_partition_hour']:,.0f} | {w['files_merged_away']:,} | "
              f"{most:,} |")  # fmt: skip
    return ratio


def _flags(row: dict[str, Any]) -> str:
    return f"--compact-interval {row['compact_interval_s']:g} --log-roll-mb {row['log_roll_mb']:g}"


def chart(rows: list[dict[str, Any]], minutes: float, rate: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['mode']}\n{_flags(r)}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    per_hour = [r["files_per_partition_hour"] for r in rows]
    left.bar(names, per_hour, color=["#999999", "#2b6cb0"])
    left.set_yscale("log")
    left.set_ylim(1, max(per_hour) * 4)
    left.set_ylabel("live log files per partition-hour (log scale)")
    left.set_title(f"Files at rest: one worker, {rate:,} events/s for {minutes:g} min")
    for i, v in enumerate(per_hour):
        left.text(i, v, f"{v:,.0f}", ha="center", va="bottom")
    feats = rows[0]["features"]
    series = [
        ("backfill_events_per_s", f"backfill, all {feats['backfill']} features", "#2b6cb0"),
        ("backfill_native_events_per_s",
         f"backfill, {feats['backfill_native']} native-path features", "#63b3ed"),
        ("read_events_per_s", "EventLogReader.read_all", "#a0aec0"),
    ]  # fmt: skip
    width = 0.27
    for k, (column, label, color) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        values = [r[column] / 1e3 for r in rows]
        right.bar(xs, values, width, color=color, label=label)
        for x, v in zip(xs, values, strict=True):
            right.text(x, v, f"{v:,.0f}k", ha="center", va="bottom", fontsize=8)
    right.set_xticks(range(len(rows)), names)
    right.set_ylabel("thousand log records read per second (best run)")
    right.set_title(f"Read speed of that log ({rows[0]['events']:,} events)")
    top = max(r[c] for r in rows for c, _, _ in series) / 1e3
    right.set_ylim(0, top * 1.35)
    right.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="production per mode")
    parser.add_argument("--rate", type=int, default=5_000, help="events/s produced")
    parser.add_argument("--labels", type=int, default=10_000, help="backfill label rows")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds of each read")
    parser.add_argument(
        "--compact-interval",
        type=float,
        default=CompactionOptions().interval_s,
        help="both modes' compaction interval (default: the worker's)",
    )
    parser.add_argument(
        "--log-roll-mb",
        type=float,
        default=WorkerOptions().log_roll_bytes / (1 << 20),
        help="the after mode's --log-roll-mb (default: the worker's; before: 0)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and worker logs")
    args = parser.parse_args()
    modes = [
        Mode("before", args.compact_interval, 0.0),
        Mode("after", args.compact_interval, args.log_roll_mb),
    ]
    work = Path(tempfile.mkdtemp(prefix="skewless-log-files-"))
    started = time.monotonic()
    try:
        for mode in modes:
            run_mode(mode, args, work)
        measure_reads(modes, args.labels, args.repeat)
    finally:
        bench.drop_topics()
        bench.flush_redis()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = [m.result for m in modes]
    ratio = report(rows)
    result = {
        "minutes": args.minutes,
        "rate": args.rate,
        "partitions": PARTITIONS,
        "compaction": {
            "interval_s": args.compact_interval,
            "small_records": CompactionOptions().small_records,
            "target_records": CompactionOptions().target_records,
        },
        "log_roll": {"mb": args.log_roll_mb, "seconds": WorkerOptions().log_roll_s},
        "modes": rows,
        "after_over_before": ratio,
        "total_s": time.monotonic() - started,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "produced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    smoke = args.minutes < 10  # a smoke run never overwrites the published results
    results = bench.OUT / "log_files-quick.json" if smoke else RESULTS_JSON
    image = bench.OUT / "log_files-quick.png" if smoke else CHART
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2))
    chart(rows, args.minutes, args.rate, image)
    print(f"\nwrote {results.relative_to(REPO)} and {image.relative_to(REPO)} "
          f"({result['total_s'] / 60:.1f} min in all)")  # fmt: skip


if __name__ == "__main__":
    main()
