"""Import speed: ``skewless import`` of Parquet rows through the row path vs the columnar path.

Generates ``--rows`` events shaped like ``benchmarks/backfill.py``'s (customer_id string,
amount double, merchant_id string, ts long; 100k customers, 8 partitions) into a Parquet
file, then for each size times what ``skewless import`` does — read the Parquet file
(``engine.frames.read_table``), validate, partition by key, write the event log (deflate)
— two ways into fresh logs:

- ``old``: the row path (a payload dict and an ``Envelope`` per row, fastavro writes);
- ``new``: the columnar path (``EventLogWriter.append_history_columns``, native writer).

Prints rows/s of both and the ratio, and checks the two logs hold the same records (count
and a sample of whole envelopes) at the smallest size.

Usage (from the repo root)::

    .venv/bin/python benchmarks/import_speed.py                      # 1M and 10M rows
    .venv/bin/python benchmarks/import_speed.py --rows 1000000 --old-max 1000000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from connectors.eventlog import EventLogReader, EventLogWriter  # noqa: E402
from engine import FeatureStore  # noqa: E402
from engine.envelope import Envelope  # noqa: E402
from engine.frames import read_table  # noqa: E402
from engine.importer import import_frame  # noqa: E402

DEFS = HERE / "defs_backfill"
SOURCE = "events"
START_MS = 1_704_067_200_000
DAY_MS = 86_400_000
PARTITIONS = 8


class RowSink:
    """The event log seen as a plain ``HistorySink``: forces the row path."""

    def __init__(self, writer: EventLogWriter) -> None:
        self._writer = writer

    def append_history(self, records: Any) -> list[str]:
        return self._writer.append_history(records)

    def last_history_offset(self, partition: int) -> int | None:
        return self._writer.last_history_offset(partition)


def generate(rows: int, path: Path, entities: int = 100_000, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    customers = np.array([f"c{i:07d}" for i in range(entities)], dtype=object)
    merchants = np.array([f"m{i:05d}" for i in range(5_000)], dtype=object)
    pd.DataFrame(
        {
            "customer_id": customers[rng.integers(0, entities, rows)],
            "amount": np.round(rng.lognormal(3.0, 1.0, rows), 2),
            "merchant_id": merchants[rng.integers(0, 5_000, rows)],
            "ts": np.sort(START_MS + rng.integers(0, 30 * DAY_MS, rows, dtype=np.int64)),
        }
    ).to_parquet(path, index=False)


def run(store: FeatureStore, parquet: Path, log: Path, path: str) -> float:
    """Seconds for one import of ``parquet`` into a fresh log at ``log``."""
    shutil.rmtree(log, ignore_errors=True)
    source = store.plan.sources[SOURCE]
    t0 = time.perf_counter()
    df = read_table(parquet, string_columns=("customer_id", "merchant_id"))
    writer = EventLogWriter(str(log), SOURCE, dict(source.schema))
    sink: Any = writer if path == "new" else RowSink(writer)
    import_frame(source, df, sink, PARTITIONS)
    return time.perf_counter() - t0


def same_logs(a: Path, b: Path, sample: int = 50_000) -> bool:
    ra, rb = EventLogReader(str(a)), EventLogReader(str(b))
    if ra.count(SOURCE) != rb.count(SOURCE):
        return False
    for p in ra.partitions(SOURCE):
        xs: list[Envelope] = []
        for x in ra.read(SOURCE, p):
            xs.append(x)
            if len(xs) >= sample:
                break
        ys = [y for _, y in zip(range(len(xs)), rb.read(SOURCE, p), strict=False)]
        if xs != ys:
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument(
        "--old-max", type=int, default=None, help="skip the row path above this many rows"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="skewless-import-speed-"))
    try:
        store = FeatureStore.from_repo(DEFS)
        for n in sorted(args.rows):
            parquet = work / f"events-{n}.parquet"
            generate(n, parquet)
            new_s = run(store, parquet, work / "log-new", "new")
            line = f"{n:>11,} rows  new {n / new_s:>12,.0f} rows/s ({new_s:6.2f} s)"
            if args.old_max is None or n <= args.old_max:
                old_s = run(store, parquet, work / "log-old", "old")
                line += f"  old {n / old_s:>10,.0f} rows/s ({old_s:6.2f} s)"
                line += f"  ratio {old_s / new_s:5.1f}x"
                if n == min(args.rows):
                    line += f"  same log: {same_logs(work / 'log-old', work / 'log-new')}"
            print(line, flush=True)
            parquet.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
