"""Faust runtime throughput next to the kafka runtime, and where the Faust runtime's time goes.

The same method as ``benchmarks/stream.py`` (whose helpers this imports): ``--events`` Avro
records (10k customers, out of order over the last 2 hours) on a fresh 4-partition topic; one
worker process (``python -m engine.cli worker --runtime R``) consumes the backlog with a fresh
consumer group; events/s per process = records committed between its first and last commit /
the time between. Legs, each on the same backlog:

- ``faust`` and ``kafka`` runtimes on the example ``definitions/`` (4 views, 23 aggregations)
  and on ``count`` (one 1-minute tumbling count per customer);
- ``faust no-op``: the Faust runtime (same app, agents, batching, acks and commits) with a
  processor that does nothing — the ceiling Faust's per-event machinery allows;
- ``core only``: ``BatchProcessor.process`` alone in this process on the same records read
  beforehand with confluent-kafka (Redis writes and log appends included) — the ceiling the
  processing core allows.

Writes ``benchmarks/out/stream-faust.json``. Usage (services up: ``scripts/services.sh up``)::

    .venv/bin/python benchmarks/stream_faust.py                 # 200k events
    .venv/bin/python benchmarks/stream_faust.py --events 50000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from stream import (  # noqa: E402  # benchmarks/stream.py: one method for both benchmarks
    BOOTSTRAP,
    OUT,
    PARTITIONS,
    WORK,
    create_topic,
    events,
    flush_redis,
    make_repo,
    produce_backlog,
    run_until_committed,
    worker_throughput,
)

from engine.serde import SourceCodec  # noqa: E402
from engine.store import FeatureStore  # noqa: E402
from engine.stream.core import BatchOutcome, BatchProcessor, SourceRecord  # noqa: E402

RESULTS_JSON = OUT / "stream-faust.json"


class _NoopProcessor:
    """Stands in for ``BatchProcessor``: accepts every batch and does nothing with it."""

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        commits: dict[int, int] = {}
        for r in records:
            commits[r.partition] = r.offset + 1
        return BatchOutcome(commits=commits, processed_at_ms=0, records=len(records),
                            refused=Counter(), applied=0, late=0, fenced=0,
                            entities_written=0)  # fmt: skip

    def forget_partitions(self, partitions: Any) -> None:
        pass


def noop_worker(repo: Path, batch_max: int) -> int:
    """The Faust runtime with no-op processors (run in a subprocess by ``noop_throughput``)."""
    import logging

    from engine.stream.faust_runtime import run_faust_worker
    from engine.stream.kafka_runtime import OwnedPartitionsLog, SourceWiring, WorkerOptions

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    store = FeatureStore.from_repo(repo)
    wiring = {
        source.topic: SourceWiring(
            processor=_NoopProcessor(),  # duck-typed: process() and forget_partitions()
            log=OwnedPartitionsLog(lambda: None),  # never appended to
        )
        for source in store.plan.sources.values()
    }
    return run_faust_worker(
        store.plan, store.config, WorkerOptions(batch_max=batch_max), wiring=wiring
    )


def noop_throughput(repo: Path, topic: str, total: int, batch_max: int) -> dict[str, Any]:
    """Like ``stream.worker_throughput``, for the no-op Faust worker."""
    store = FeatureStore.from_repo(repo)
    group = f"skewless.{store.config.project}"
    log = (WORK / f"worker-{repo.name}-faust-noop.log").open("wb")
    cmd = [sys.executable, __file__, "--noop-worker", str(repo), "--batch-max", str(batch_max)]
    samples = run_until_committed(cmd, log, group, topic, total, "no-op worker")
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return {"runtime": "faust no-op", "definitions": "none", "records": total,
            "measured_records": n1 - n0, "seconds": t1 - t0,
            "events_per_s": (n1 - n0) / (t1 - t0), "batch_max": batch_max}  # fmt: skip


def core_only(repo: Path, topic: str, total: int, batch_max: int) -> dict[str, Any]:
    """``BatchProcessor.process`` alone on the backlog, read into memory first."""
    from confluent_kafka import Consumer

    from connectors.eventlog import EventLogWriter
    from connectors.redis_store import RedisOnlineStore

    class Discard:
        def send(self, letters: Any) -> None:
            raise AssertionError(f"benchmark events were refused: {letters[:1]}")

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"core-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    records: list[SourceRecord] = []
    deadline = time.monotonic() + 300
    while len(records) < total and time.monotonic() < deadline:
        for m in consumer.consume(10_000, 1.0):
            if m.error() is None:
                records.append(SourceRecord(topic=m.topic(), partition=m.partition(),
                                            offset=m.offset(), key=m.key(), value=m.value()))  # fmt: skip
    consumer.close()
    flush_redis()
    store = FeatureStore.from_repo(repo)
    name, source = next(iter(store.plan.sources.items()))
    processor = BatchProcessor(
        store.plan,
        name,
        online=RedisOnlineStore.from_config(store.config),
        log=EventLogWriter(store.config.event_log_root, name, dict(source.schema)),
        dead=Discard(),
    )
    by_partition: dict[int, list[SourceRecord]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r)
    ordered = [r for p in sorted(by_partition) for r in by_partition[p]]
    started = time.perf_counter()
    for i in range(0, len(ordered), batch_max):
        processor.process(ordered[i : i + batch_max])
    seconds = time.perf_counter() - started
    return {"runtime": "core only", "definitions": repo.name.split("_")[0],
            "records": len(records), "measured_records": len(records), "seconds": seconds,
            "events_per_s": len(records) / seconds, "batch_max": batch_max}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-max", type=int, default=5000)
    parser.add_argument("--runtimes", default="faust,kafka")
    parser.add_argument("--definitions", default="example,count")
    parser.add_argument("--noop-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_worker:
        sys.exit(noop_worker(args.noop_worker, args.batch_max))
    WORK.mkdir(parents=True, exist_ok=True)
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    create_topic(topic)
    rows = events(args.events, 42, int(time.time() * 1000))
    plan = FeatureStore.from_repo(make_repo("count", topic)).plan
    produce_s = produce_backlog(topic, rows, SourceCodec(next(iter(plan.sources.values()))))
    print(
        f"produced {args.events} records to {topic} ({PARTITIONS} partitions) in {produce_s:.1f}s"
    )

    results: list[dict[str, Any]] = []

    def show(got: dict[str, Any]) -> None:
        print(f"{got['runtime']:>12} {got['definitions']:<8} {got['events_per_s']:>10,.0f} "
              f"events/s ({got['measured_records']} records in {got['seconds']:.1f}s)")  # fmt: skip
        results.append(got)

    for runtime in args.runtimes.split(","):
        for kind in args.definitions.split(","):
            show(worker_throughput(make_repo(kind, topic), topic, args.events, runtime,
                                   args.batch_max))  # fmt: skip
    show(noop_throughput(make_repo("count", topic), topic, args.events, args.batch_max))
    show(core_only(make_repo("example", topic), topic, args.events, args.batch_max))
    result = {
        "events": args.events,
        "partitions": PARTITIONS,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_at_end": os.getloadavg(),
        },
        "throughput": results,
        "produced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=2))
    print("\n| runtime | definitions | events/s per process |")
    print("| --- | --- | ---: |")
    for r in results:
        print(f"| {r['runtime']} | {r['definitions']} | {r['events_per_s']:,.0f} |")
    print(f"\nwrote {RESULTS_JSON.relative_to(REPO)}")


if __name__ == "__main__":
    main()
