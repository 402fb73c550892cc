"""Records per CPU-second reading a deflate event-log file: native decoder vs fastavro.

Writes one Avro container of ``--records`` envelopes (DESIGN §4 layout: envelope schema of
``connectors.eventlog``, payload ``definitions/schemas/transaction.avsc``, deflate level 1,
~64 KiB blocks) in memory, then reads it back with ``engine._native.read_container`` (all
columns, as pyarrow arrays) and with ``fastavro.reader`` (every record materialised), and
prints records per CPU-second (``time.process_time``) of each and their ratio.

    .venv/bin/python benchmarks/avro_read.py [--records 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import random
import time

import fastavro

from connectors.eventlog import envelope_schema
from engine import _native

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_file(records: int) -> bytes:
    payload = json.loads((ROOT / "definitions/schemas/transaction.avsc").read_text())
    schema = fastavro.parse_schema(envelope_schema("transactions", payload))
    rng = random.Random(7)
    countries = ["DE", "FR", "US", "GB", "NL"]

    def rows():
        for i in range(records):
            yield {
                "partition": i % 4,
                "offset": i,
                "key": f"c{rng.randrange(100_000)}".encode(),
                "event_time": 1_700_000_000_000 + i * 10,
                "processed_at": 1_700_000_000_050 + i * 10,
                "payload": {
                    "transaction_id": f"tx-{i:012d}",
                    "customer_id": f"c{rng.randrange(100_000)}",
                    "merchant_id": f"m{rng.randrange(5_000)}",
                    "amount": None if i % 50 == 0 else round(rng.uniform(1, 500), 2),
                    "currency": "EUR",
                    "country": rng.choice(countries),
                    "card_present": rng.random() < 0.5,
                    "ts": 1_700_000_000_000 + i * 10,
                },
            }

    buf = io.BytesIO()
    fastavro.writer(
        buf, schema, rows(), codec="deflate", codec_compression_level=1, sync_interval=64 * 1024
    )
    return buf.getvalue()


def cpu_rate(fn, records: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return records / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = make_file(args.records)

    def native() -> None:
        cols, _ = _native.read_container(data, None)
        assert len(cols["offset"]) == args.records

    def python() -> None:
        n = sum(1 for _ in fastavro.reader(io.BytesIO(data)))
        assert n == args.records

    nat = cpu_rate(native, args.records, args.repeat)
    fa = cpu_rate(python, args.records, max(1, args.repeat - 2))
    print(f"file: {args.records:,} envelope records, {len(data) / 2**20:.1f} MiB deflate")
    print(f"native read_container: {nat / 1e6:.2f}M records/CPU-s")
    print(f"fastavro reader:       {fa / 1e6:.3f}M records/CPU-s")
    print(f"ratio native/fastavro: {nat / fa:.1f}x")


if __name__ == "__main__":
    main()
