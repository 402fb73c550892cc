"""The floor under the backfill's speed: what one core of pure Python does per log record.

Issue #2 asks the backfill for 1M events/s on this 2-core machine (500k per core) with a
pure-standard-library kernel (CONVENTIONS.md). This script measures, in one process on the
backfill benchmark's cached 1M-event log (``benchmarks/backfill.py --events 1000000
--entities 10000 --labels 100000`` makes it), rungs of work per record:

0. **raw read**: fastavro's reader over the log files, records as its dicts — the decoding
   alone;
1. **read**: every log record decoded by ``EventLogReader`` (fastavro) into an ``Envelope``,
   nothing else — the least any replay through Python objects does;
2. **read + least fold**: as 1, plus per record and per each of the 12 features one dict
   lookup of the entity and one integer add — a count with no windows, tiles or labels,
   far less than any real aggregation;
Compare with the real backfill's events per CPU-second in ``benchmarks/backfill.py``'s table
(docs/benchmarks.md). Prints records per CPU-second for each rung and what two cores would
give at best beside the 1M events/s target, and writes ``benchmarks/out/floor.json``.

Usage (from the repo root)::

    .venv/bin/python benchmarks/backfill.py --events 1000000 --entities 10000 --labels 100000
    .venv/bin/python benchmarks/floor.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import fastavro  # noqa: E402

from connectors.eventlog import EventLogReader  # noqa: E402

DATA = HERE / "out" / "backfill" / "e1000000-n10000-l100000-d90-s42-p8-v2"
TARGET_EVENTS_PER_S = 1_000_000
CORES = 2
FEATURES = 12


def read_raw(folder: Path) -> int:
    """fastavro's reader over every log file, records as fastavro's dicts: no envelope."""
    n = 0
    for path in sorted(folder.rglob("*.avro")):
        with path.open("rb") as fh:
            for _ in fastavro.reader(fh):
                n += 1
    return n


def read_only(reader: EventLogReader) -> int:
    n = 0
    for _ in reader.read_all("events"):
        n += 1
    return n


def read_and_count(reader: EventLogReader) -> int:
    counts: dict[str, list[int]] = {}
    n = 0
    for env in reader.read_all("events"):
        key = env.payload["customer_id"]
        for _ in range(FEATURES):
            slot = counts.get(key)
            if slot is None:
                slot = counts[key] = [0]
            slot[0] += 1
        n += 1
    return n


def timed(fn: Any, *args: Any) -> tuple[int, float]:
    started = time.process_time()
    n = fn(*args)
    return n, time.process_time() - started


def main() -> None:
    if not (DATA / "log").is_dir():
        raise SystemExit(
            f"no cached log in {DATA}; run: .venv/bin/python benchmarks/backfill.py "
            "--events 1000000 --entities 10000 --labels 100000"
        )
    reader = EventLogReader(str(DATA / "log"))
    rows: list[tuple[str, int, float]] = []
    for name, fn, args in (
        ("raw read (fastavro dicts, no envelope)", read_raw, (DATA / "log",)),
        ("read (fastavro decode into Envelopes)", read_only, (reader,)),
        ("read + least fold (12 dict lookups and adds)", read_and_count, (reader,)),
    ):
        n, cpu = timed(fn, *args)
        rows.append((name, n, cpu))
        print(f"{name:<48} {n / cpu:>12,.0f} records per CPU-s", flush=True)
    result: dict[str, Any] = {
        "records": rows[0][1],
        "rungs": [{"what": w, "records": n, "cpu_s": c, "per_cpu_s": n / c} for w, n, c in rows],
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "cores": CORES,
    }
    for what, n, cpu in rows:
        best = CORES * n / cpu
        print(f"  {what}: at best {best:,.0f} events/s on {CORES} cores = "
              f"{best / TARGET_EVENTS_PER_S:.2f}x the target")  # fmt: skip
    (HERE / "out" / "floor.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {HERE / 'out' / 'floor.json'}")


if __name__ == "__main__":
    main()
