"""Read speed of one partition's records logged as rolled files vs as per-batch files merged
by compaction (issue 11 part 3), A/B in one process.

The same ``--records`` records (``tests/unit/connectors/test_eventlog``'s 4-field payload)
are appended in batches of ``--batch`` to two local logs: *per-batch* (``roll_bytes=0``, one
file per append, then ``EventLogCompactor`` with the worker's thresholds: small 50,000,
target 500,000) and *rolled* (one open file, appends of synced blocks, ``close()``). Then,
``--rounds`` times, alternating the two logs: ``EventLogReader.read_all`` (every envelope
decoded in Python) and the native file path (``engine.log_files.read_partition`` handing
each file to ``engine._native.read_container``). Best round of each; records/s.

Usage (from the repo root)::

    .venv/bin/python benchmarks/log_rolling_reads.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from connectors.eventlog import EventLogReader, EventLogWriter  # noqa: E402
from connectors.eventlog_compaction import EventLogCompactor  # noqa: E402
from engine import _native  # noqa: E402
from engine.log_files import read_partition  # noqa: E402
from tests.unit.connectors.test_eventlog import PAYLOAD_SCHEMA, env  # noqa: E402


def native_read(root: str) -> int:
    taken = [0]

    def take(data: bytes, high: int, last: int) -> int:
        arrays, _ = _native.read_container(data, ["offset", "processed_at", "payload.amount"])
        taken[0] += len(arrays["offset"])
        return high

    read_partition(EventLogReader(root), "tx", 0, take)
    return taken[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1_200, help="records per append")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    records = [env(o) for o in range(args.records)]
    roots: dict[str, str] = {}
    try:
        for mode in ("per-batch + compaction", "rolled"):
            root = tempfile.mkdtemp(prefix="skewless-rolling-reads-")
            roots[mode] = root
            rolled = mode == "rolled"
            writer = EventLogWriter(root, "tx", PAYLOAD_SCHEMA, roll_bytes=(1 << 30) * rolled)
            for i in range(0, args.records, args.batch):
                writer.append(records[i : i + args.batch])
            writer.close()
            if not rolled:
                EventLogCompactor(root).compact(
                    "tx", 0, small_records=50_000, target_records=500_000
                )
            files = len(EventLogReader(root).files("tx", 0))
            print(f"{mode}: {files} file(s)")
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.rounds):
            for mode, root in roots.items():
                for what, read in (
                    ("read_all", lambda r: sum(1 for _ in EventLogReader(r).read_all("tx"))),
                    ("native", native_read),
                ):
                    started = time.perf_counter()
                    n = read(root)
                    seconds = time.perf_counter() - started
                    assert n == args.records, (mode, what, n)
                    key = (mode, what)
                    best[key] = min(best.get(key, seconds), seconds)
        for what in ("read_all", "native"):
            a, b = (args.records / best[(m, what)] for m in roots)
            print(f"{what}: per-batch + compaction {a:,.0f}/s, rolled {b:,.0f}/s, "
                  f"rolled / per-batch {b / a:.2f}x")  # fmt: skip
    finally:
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
