"""Source decoding throughput: ``SourceCodec.decode`` per record vs ``decode_batch`` (native).

``--records`` valid Avro records of the example ``transactions`` source (definitions/) are
decoded per record (fastavro, the worker's path before batch decoding) and in batches of
``--batch`` records; records/s is the best of ``--repeat`` runs of each, and the ratio is
reported. ``decode_batch`` includes building the native ``Columns``; reading them back into
Python objects is not timed (the columns go to other native calls as they are).

Usage (from the repo root)::

    .venv/bin/python benchmarks/source_decode.py                      # 100k records
    .venv/bin/python benchmarks/source_decode.py --batch 500 --repeat 5
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.serde import SourceCodec  # noqa: E402 - after the sys.path line above
from engine.store import FeatureStore  # noqa: E402 - after the sys.path line above

NOW = 1_800_000_000_000


def records(codec: SourceCodec, n: int) -> tuple[list[bytes | None], list[bytes | None]]:
    rng = random.Random(7)
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    for i in range(n):
        customer = f"c{rng.randrange(10_000):05d}"
        row = {
            "transaction_id": f"t{i:08d}",
            "customer_id": customer,
            "merchant_id": f"m{rng.randrange(500):04d}",
            "amount": None if rng.random() < 0.05 else round(rng.uniform(1, 500), 2),
            "currency": rng.choice(["EUR", "USD", "GBP"]),
            "country": rng.choice(["FR", "DE", "US", "GB"]),
            "card_present": rng.random() < 0.5,
            "ts": NOW - rng.randrange(7_200_000),
        }
        keys.append(customer.encode())
        values.append(codec.encode(row))
    return keys, values


def best(repeat: int, run: object) -> float:
    assert callable(run)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    codec = SourceCodec(FeatureStore.from_repo(REPO / "definitions").plan.sources["transactions"])
    keys, values = records(codec, args.records)
    n, size = args.records, args.batch

    def per_record() -> None:
        for key, value in zip(keys, values, strict=True):
            codec.decode(key, value, now_ms=NOW)

    def batched() -> None:
        kept = 0
        for start in range(0, n, size):
            batch = codec.decode_batch(
                keys[start : start + size], values[start : start + size], now_ms=NOW
            )
            kept += len(batch.kept)
        assert kept == n, kept

    slow = n / best(args.repeat, per_record)
    fast = n / best(args.repeat, batched)
    print(f"{n} transaction records, batches of {size}, best of {args.repeat}")
    print(f"decode (per record): {slow:12,.0f} records/s")
    print(f"decode_batch:        {fast:12,.0f} records/s")
    print(f"ratio:               {fast / slow:12.1f}x")


if __name__ == "__main__":
    main()
