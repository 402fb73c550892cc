"""Throughput under bad input: kafka-runtime events/s on clean input vs the same input with 1% bad.

The method and helpers are ``benchmarks/stream.py``'s (imported, not copied): ``--events``
Avro records (10k customers, out of order over the last 2 hours) go to a fresh 4-partition
topic; a second topic gets the same records with one bad record after every 99 valid ones
(1% of the records), drawn in turn from the bad-input catalogue (``tests/bad_inputs.py``:
its schemaless-Avro entries that the payments schema can express). One worker process
(``python -m engine.cli worker``, kafka runtime) consumes each backlog with a fresh consumer
group; events/s = records committed between its first and its last commit / the time
between. Clean and bad runs alternate for ``--repeat`` rounds in one run, so both see the same
machine noise; the medians and their ratio are reported. Every bad run checks that the
dead-letter topic received exactly the bad records.

Usage (from the repo root, with ``bash scripts/services.sh up``)::

    .venv/bin/python benchmarks/bad_input.py                        # 100k events, 3 rounds
    .venv/bin/python benchmarks/bad_input.py --definitions count    # the one-view count job
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
# this benchmark's Redis database (stream.py reads the variable when imported)
os.environ.setdefault("SKEWLESS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

import stream as bench  # noqa: E402  # benchmarks/stream.py: one method for every stream benchmark

from engine.keys import encode_key  # noqa: E402
from engine.serde import DecodeLimits, RecordRefused, SourceCodec  # noqa: E402
from engine.store import FeatureStore  # noqa: E402
from tests.bad_inputs import KEY, MAX_RECORD_BYTES, Sample, bad_inputs  # noqa: E402

BAD_EVERY = 100  # one bad record per 100 records: 1%
RESULTS = bench.OUT / "bad_input.json"


def bad_mix(codec: SourceCodec, rows: list[dict[str, Any]], now_ms: int) -> list[Any]:
    """(name, code, key, value) of the catalogue's schemaless-Avro entries this schema can
    express, each checked to be refused with its code by the decoder."""
    limited = SourceCodec(codec.source, DecodeLimits(max_record_bytes=MAX_RECORD_BYTES))
    sample = Sample("avro", limited, now_ms, base=rows[0])
    mix = []
    for entry in bad_inputs("avro"):
        try:
            key, value = entry.build(sample)
        except (ValueError, TypeError, KeyError, AssertionError):
            continue  # the entry names a field or type the payments schema does not have
        try:
            limited.decode(key, value, now_ms=now_ms)
        except RecordRefused as exc:
            if exc.code == entry.code:
                mix.append((entry.name, entry.code, key, value))
    return mix


def produce_with_bad(topic: str, rows: list[dict[str, Any]], codec: SourceCodec,
                     mix: list[Any]) -> int:  # fmt: skip
    """The clean backlog with a bad record after every ``BAD_EVERY - 1`` valid ones; returns
    the number of bad records. A bad record keyed like the catalogue's default key takes the
    key of a neighbouring valid row, so bad records spread over the partitions."""
    p = bench.producer()
    bad = 0
    for i, row in enumerate(rows):
        records = [(encode_key([row["customer_id"]]), codec.encode(row))]
        if i % (BAD_EVERY - 1) == BAD_EVERY - 2:
            _name, _code, key, value = mix[bad % len(mix)]
            records.append((encode_key([row["customer_id"]]) if key == KEY else key, value))
            bad += 1
        for key, value in records:
            while True:
                try:
                    p.produce(topic, value, key)
                    break
                except BufferError:
                    p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return bad


def with_limits(repo: Path) -> Path:
    """The catalogue's size limit, so its oversized entry is refused (clean and bad alike)."""
    with (repo / "skewless.yaml").open("a") as fh:
        fh.write(f"decode:\n  max_record_bytes: {MAX_RECORD_BYTES}\n")
    return repo


def dead_letters(repo: Path) -> int:
    """How many records the repo's dead-letter topic holds."""
    from confluent_kafka import Consumer, TopicPartition

    from connectors.kafka import dead_letter_topic

    (source,) = FeatureStore.from_repo(repo).plan.sources
    topic = dead_letter_topic(source)
    c = Consumer({"bootstrap.servers": bench.BOOTSTRAP, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def cpu_run(repo: Path, topic: str, total: int, batch_max: int) -> dict[str, Any]:
    """The kafka loop in this process on the backlog (fresh group): records per CPU-second of
    the process (every thread: the loop, librdkafka's, Redis I/O), from the first record to
    the last. CPU time is what a record costs; it moves far less than wall time when other
    work shares the machine."""
    from engine.stream.kafka_runtime import WorkerOptions, build_worker

    bench.flush_redis()
    store = FeatureStore.from_repo(repo)
    store.apply()
    bench.CREATED.extend(store.topics())
    worker = build_worker(store.plan, store.config, WorkerOptions(batch_max=batch_max))
    stop = threading.Event()
    marks: list[tuple[float, float]] = []

    def watch() -> None:  # the loop's own clock: CPU and wall at the first and the last record
        while worker.stats.records == 0 and not stop.is_set():
            time.sleep(0.001)
        marks.append((time.process_time(), time.perf_counter()))
        while worker.stats.records < total:
            time.sleep(0.002)
        marks.append((time.process_time(), time.perf_counter()))
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    worker.run(stop)
    (c0, w0), (c1, w1) = marks
    records = worker.stats.records
    return {"records": records, "cpu_s": c1 - c0, "wall_s": w1 - w0,
            "records_per_cpu_s": records / (c1 - c0)}  # fmt: skip


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="valid events per backlog")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (clean, bad)")
    parser.add_argument("--batch-max", type=int, default=5000)
    parser.add_argument("--definitions", choices=("example", "count"), default="example")
    args = parser.parse_args()
    bench.WORK.mkdir(parents=True, exist_ok=True)
    clean_topic, bad_topic = (f"bench_{k}_{uuid.uuid4().hex[:8]}" for k in ("clean", "bad"))
    bench.create_topic(clean_topic)
    bench.create_topic(bad_topic)
    now = int(time.time() * 1000)
    rows = bench.events(args.events, 42, now)
    plan = FeatureStore.from_repo(bench.make_repo("count", clean_topic)).plan
    codec = SourceCodec(next(iter(plan.sources.values())))
    mix = bad_mix(codec, rows, now)
    print(f"bad mix: {len(mix)} catalogue entries: " + ", ".join(sorted({m[1] for m in mix})))
    bench.produce_backlog(clean_topic, rows, codec)
    bad = produce_with_bad(bad_topic, rows, codec, mix)
    totals = {"clean": args.events, "bad": args.events + bad}
    print(f"produced {args.events} records to {clean_topic}; {totals['bad']} ({bad} bad, "
          f"{bad / totals['bad']:.2%}) to {bad_topic}")  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {"clean": [], "bad": []}
    for _ in range(args.repeat):
        for kind, topic in (("clean", clean_topic), ("bad", bad_topic)):
            want = bad if kind == "bad" else 0
            repo = with_limits(bench.make_repo(args.definitions, topic))
            got = bench.worker_throughput(repo, topic, totals[kind], "kafka", args.batch_max)
            got["dead_letters"] = dead_letters(repo)
            got["valid_events_per_s"] = got["events_per_s"] * args.events / totals[kind]
            repo = with_limits(bench.make_repo(args.definitions, topic))
            cpu = cpu_run(repo, topic, totals[kind], args.batch_max)
            got["records_per_cpu_s"] = cpu["records_per_cpu_s"]
            for letters in (got["dead_letters"], dead_letters(repo)):
                if letters != want:
                    raise SystemExit(f"{kind}: {letters} dead letters, expected {want}")
            runs[kind].append(got)
            print(f"  {kind:5} {got['events_per_s']:>10,.0f} records/s "
                  f"({got['valid_events_per_s']:,.0f} valid events/s, "
                  f"{got['dead_letters']} dead letters); in-process "
                  f"{cpu['records_per_cpu_s']:,.0f} records per CPU-second")  # fmt: skip
    med = {k: statistics.median(r["events_per_s"] for r in v) for k, v in runs.items()}
    med_valid = {k: statistics.median(r["valid_events_per_s"] for r in v) for k, v in runs.items()}
    pairs = zip(runs["clean"], runs["bad"], strict=True)
    rounds = [b["events_per_s"] / c["events_per_s"] for c, b in pairs]
    med_cpu = {k: statistics.median(r["records_per_cpu_s"] for r in v) for k, v in runs.items()}
    result = {
        "definitions": args.definitions,
        "events": args.events,
        "bad_records": bad,
        "bad_share": bad / totals["bad"],
        "bad_mix": sorted({m[1] for m in mix}),
        "batch_max": args.batch_max,
        "partitions": bench.PARTITIONS,
        "runs": runs,
        "median_records_per_s": med,
        "median_valid_events_per_s": med_valid,
        "ratio_records": med["bad"] / med["clean"],
        "ratio_valid_events": med_valid["bad"] / med_valid["clean"],
        "ratio_per_round": rounds,
        "median_records_per_cpu_s": med_cpu,
        "ratio_records_per_cpu_s": med_cpu["bad"] / med_cpu["clean"],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "produced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = RESULTS.with_name(f"bad_input-{args.definitions}.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"\n| input | records/s (median of {args.repeat}) | valid events/s | ratio to clean |")
    print("| --- | --- | --- | --- |")
    print(f"| clean | {med['clean']:,.0f} | {med_valid['clean']:,.0f} | 1.00 |")
    print(f"| 1% bad | {med['bad']:,.0f} | {med_valid['bad']:,.0f} | "
          f"{result['ratio_records']:.2f} (valid events: {result['ratio_valid_events']:.2f}) |")  # fmt: skip
    print(f"per-round ratios: {', '.join(f'{r:.2f}' for r in rounds)}")
    print(f"records per CPU-second (in-process loop): clean {med_cpu['clean']:,.0f}, 1% bad "
          f"{med_cpu['bad']:,.0f}, ratio {result['ratio_records_per_cpu_s']:.2f}")  # fmt: skip
    print(f"wrote {path.relative_to(REPO)}")


def main() -> None:
    try:
        run()
    finally:
        bench.drop_topics()


if __name__ == "__main__":
    main()
