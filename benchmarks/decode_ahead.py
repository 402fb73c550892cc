"""CPU per event of ``BatchProcessor.decode`` — the part of a batch the kafka worker's
pipeline runs ahead, beside the batch before's Redis write (docs/streaming.md#the-pipeline):
Avro decode and validation plus the batch transforms of the example definitions, on one
batch of 50,000 records like ``benchmarks/stream.py``'s. No Kafka, no Redis.

Usage (from the repo root)::

    .venv/bin/python benchmarks/decode_ahead.py [--events 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from stream import events  # noqa: E402

from engine.keys import encode_key  # noqa: E402
from engine.store import FeatureStore  # noqa: E402
from engine.stream.core import BatchProcessor, SourceRecord  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plan = FeatureStore.from_repo(REPO / "definitions").plan
    name = next(n for n in plan.sources if any(v.source == n for v in plan.views.values()))
    # decode() touches no store: none is given
    processor = BatchProcessor(plan, name, online=None, log=None, dead=None)  # type: ignore[arg-type]
    rows = events(args.events, 42, int(time.time() * 1000))
    records = [
        SourceRecord("t", i % 4, i, encode_key([r["customer_id"]]), processor.codec.encode(r))
        for i, r in enumerate(rows)
    ]
    processor.decode(records)  # warm-up
    cpu = []
    for _ in range(args.rounds):
        started = time.thread_time()  # the native decode runs on this thread, GIL released
        processor.decode(records)
        cpu.append((time.thread_time() - started) / len(records) * 1e6)
    print(f"decode ahead of {len(records):,} records: median {statistics.median(cpu):.2f} µs "
          f"CPU per event (min {min(cpu):.2f}, max {max(cpu):.2f}, {args.rounds} rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
