"""A live batch's event-log append: the one native call against the per-partition path.

Appends batches of ``--records`` over ``--partitions`` partitions to open rolling files,
the two paths alternating batch by batch in one process (same disk, same moment): ``one
call`` (``_native.append_files``: every partition's write and fsync with the GIL released
throughout) and ``per partition`` (the previous path: a pool thread per partition that
re-takes the GIL after each ``os.write``/``os.fsync``). With ``--busy`` a second thread
runs pandas work the whole time, as a worker decoding the next batch would, so a thread
that needs the GIL back waits for it. Reports wall ms per append (p50, p90).

    .venv/bin/python benchmarks/log_append.py --batches 200 --busy [--switch-ms 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.eventlog import EventLogWriter

SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": "long"},
    ],
}


def busy(stop: threading.Event) -> None:
    """Small pandas operations back to back (mostly holding the GIL), like a batch's
    transforms."""
    frame = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100) % 7})
    while not stop.is_set():
        frame.assign(c=frame["a"] * 2).groupby("b")["c"].sum()


def append(writer: EventLogWriter, parts: int, first: int, n: int) -> float:
    offs = np.arange(first, first + n, dtype=np.int64)
    where = offs % parts
    t0 = time.perf_counter()
    writer.append_batch_columns(
        where, offs, [b"k"] * n, offs, offs,
        {"customer_id": ["c"] * n, "amount": (offs * 0.5).tolist(), "ts": offs.tolist()},
    )  # fmt: skip
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--switch-ms", type=float, help="sys.setswitchinterval, in ms")
    args = parser.parse_args()
    if args.switch_ms:
        sys.setswitchinterval(args.switch_ms / 1000)
    stop = threading.Event()
    if args.busy:
        threading.Thread(target=busy, args=(stop,), daemon=True).start()
    with tempfile.TemporaryDirectory(dir=str(Path.home())) as root:
        one = EventLogWriter(f"{root}/one", "tx", SCHEMA, roll_bytes=1 << 30)
        per = EventLogWriter(f"{root}/per", "tx", SCHEMA, roll_bytes=1 << 30)
        per._appendable = lambda partition: False  # type: ignore[method-assign]
        times: dict[str, list[float]] = {"one call": [], "per partition": []}
        for i in range(args.batches + 1):
            first = i * args.records
            order = [("one call", one), ("per partition", per)]
            for name, writer in order if i % 2 else order[::-1]:
                ms = append(writer, args.partitions, first, args.records)
                if i:  # the first append of each file commits it whole: not timed
                    times[name].append(ms)
        stop.set()
    for name, got in times.items():
        q = statistics.quantiles(got, n=10)
        print(f"{name:>14}: p50 {statistics.median(got):6.2f} ms  p90 {q[-1]:6.2f} ms")


if __name__ == "__main__":
    main()
