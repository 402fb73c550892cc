"""A stream worker's memory over millions of distinct entities: all in memory vs a bounded
cache with the local state tier (``--local-state``, engine/stream/local_state.py).

One ``BatchProcessor`` — the code a worker runs per batch — over a stream that first touches
``--entities`` distinct customers once each (in a scrambled order), then revisits
``--revisits`` random ones (long evicted from a bounded cache). Real Redis (the state, the
loads and the marks), no Kafka and a log that drops what it is given (the log's cost is the
same in every mode). Each mode runs in its own process, all in one run of
this script, side by side (the same machine load for each; database N, N-1, … of the Redis
URL), on a flushed database: its peak RSS (``ru_maxrss``), its RSS after every
batch, and events/s of ``process`` alone (generating and encoding the records is not timed);
raw results in ``benchmarks/out/worker_memory.json``.

Modes: ``memory`` (cache bound above the entity count: everything stays in memory, the
worker's behaviour before the local tier when the bound was raised), ``local`` (a bounded
cache of ``--cache`` states, evicted ones spilled to RocksDB and loaded back after Redis's
marks check), ``drop`` (the same bound without the local tier: evicted states are reloaded
from Redis).

    .venv/bin/python benchmarks/worker_memory.py                        # 5M entities + 1M revisits
    .venv/bin/python benchmarks/worker_memory.py --entities 200000 --revisits 50000 --modes memory,local
    SKEWLESS_BENCH_REDIS_URL=redis://127.0.0.1:16414/13 .venv/bin/python benchmarks/worker_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

REDIS_URL = os.environ.get("SKEWLESS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
PARTITIONS = 4
PAGE = os.sysconf("SC_PAGE_SIZE")
DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"])
transactions = KafkaSource("transactions", topic="transactions",
                           schema="schemas/transaction.avsc", timestamp_field="ts",
                           format="avro", key_fields=["customer_id"])
customer_spend = FeatureView("customer_spend", entity=customer, source=transactions,
                             aggregations=[Aggregation("amount", "count", window="1d", hop="1h"),
                                           Aggregation("amount", "sum", window="lifetime")])
"""


def make_repo(root: Path, redis_url: str) -> Path:
    repo = root / "repo"
    (repo / "schemas").mkdir(parents=True)
    schema = REPO / "definitions" / "schemas" / "transaction.avsc"
    (repo / "schemas" / "transaction.avsc").write_text(schema.read_text())
    (repo / "defs.py").write_text(DEFS)
    (repo / "skewless.yaml").write_text(
        f"project:\n  name: rk_worker_memory\nkafka:\n  partitions: {PARTITIONS}\n"
        f"redis:\n  url: {redis_url}\nevent_log:\n  root: {root / 'log'}\n"
    )
    return repo


def customers(entities: int, revisits: int, seed: int) -> Iterator[int]:
    """Each of ``entities`` customers once, in a scrambled order, then ``revisits`` random ones."""
    step = 2_654_435_761 % entities or 1  # coprime with most counts; checked below
    while _gcd(step, entities) != 1:
        step += 1
    for i in range(entities):
        yield i * step % entities
    rng = random.Random(seed)
    for _ in range(revisits):
        yield rng.randrange(entities)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


class _NullLog:
    """The event log's interface, keeping nothing (the same cost in every mode)."""

    def append_batch_columns(self, *args: Any) -> None:
        return None

    def append(self, records: Sequence[Any]) -> None:
        return None


class _NoLetters:
    def send(self, letters: Sequence[Any]) -> None:
        raise AssertionError(f"benchmark events were refused: {letters[:1]}")


def _long(x: int) -> bytes:
    """An Avro long: zigzag, then base-128 varint."""
    z = (x << 1) ^ (x >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _long(len(raw)) + raw


def avro_row(cid: str, amount: float, ts: int) -> bytes:
    """The source's Avro record (schemaless) of one payment, built by hand: fastavro's
    writer costs more per event than the worker does."""
    return (_string("t") + _string(cid) + b"\x04m1\x02" + struct.pack("<d", amount)
            + b"\x06EUR\x04DE\x00" + _long(ts))  # fmt: skip


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def child(mode: str, entities: int, revisits: int, batch: int, cache: int, redis_url: str) -> None:
    """Run one mode; print one JSON line: samples, peak RSS, timings."""
    import gc

    from connectors.redis_store import RedisOnlineStore
    from engine.keys import encode_key
    from engine.serde import SourceCodec
    from engine.store import FeatureStore
    from engine.stream.core import BatchProcessor, SourceRecord
    from engine.stream.local_state import LocalState

    with tempfile.TemporaryDirectory(prefix="rk-wm-") as tmp:
        store = FeatureStore.from_repo(make_repo(Path(tmp), redis_url), environ={})
        online = RedisOnlineStore.from_config(store.config)
        online._client.flushdb(asynchronous=True)  # FLUSHDB ASYNC: no stall
        local = LocalState.open(Path(tmp) / "local") if mode == "local" else None
        bound = entities + revisits + 1 if mode == "memory" else cache
        core = BatchProcessor(store.plan, "transactions", online=online, log=_NullLog(),  # type: ignore[arg-type]
                              dead=_NoLetters(), cache_entities=bound, local=local)  # fmt: skip
        codec = SourceCodec(store.plan.sources["transactions"])
        now_ms = time.time_ns() // 1_000_000
        rng = random.Random(5)
        offsets = [0] * PARTITIONS
        gc.freeze()  # as the kafka runtime does between batches (WorkerOptions.gc_freeze)
        start_rss = rss_mb()
        samples: list[tuple[int, float]] = [(0, start_rss)]
        timed = 0.0
        done = 0
        pending: list[SourceRecord] = []

        def run(records: list[SourceRecord]) -> None:
            nonlocal timed, done
            t0 = time.perf_counter()
            core.process(records)
            timed += time.perf_counter() - t0
            done += len(records)
            gc.freeze()
            samples.append((done, rss_mb()))

        row = {"transaction_id": "t", "customer_id": "c1", "merchant_id": "m1", "amount": 2.5,
               "currency": "EUR", "country": "DE", "card_present": False, "ts": now_ms}  # fmt: skip
        assert avro_row("c1", 2.5, now_ms) == codec.encode(row)
        for c in customers(entities, revisits, 9):
            cid = f"c{c:08d}"
            p = c % PARTITIONS  # the worker does not check Kafka's partitioner
            value = avro_row(
                cid, round(rng.uniform(0.5, 900.0), 2), now_ms - rng.randrange(3_600_000)
            )
            pending.append(SourceRecord("transactions", p, offsets[p], encode_key([cid]), value))
            offsets[p] += 1
            if len(pending) == batch:
                run(pending)
                pending = []
        if pending:
            run(pending)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        counts = dict(core.local_counts)
        cached = core.cached_entities
        core.close()
        online._client.flushdb(asynchronous=True)  # FLUSHDB ASYNC: no stall
        print(json.dumps({
            "mode": mode, "events": done, "seconds": timed, "events_per_s": done / timed,
            "peak_rss_mb": peak, "start_rss_mb": start_rss, "cached": cached,
            "local": counts, "samples": samples[:: max(1, len(samples) // 400)] + samples[-1:],
        }))  # fmt: skip


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        xs = [s[0] / 1e6 for s in r["samples"]]
        ys = [s[1] / 1024 for s in r["samples"]]
        ax.plot(xs, ys, label=f"{r['mode']}: peak {r['peak_rss_mb'] / 1024:.2f} GiB, "
                f"{r['events_per_s']:,.0f} events/s")  # fmt: skip
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("events processed (millions)")
    ax.set_ylabel("worker RSS (GiB)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=5_000_000)
    parser.add_argument("--revisits", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--cache", type=int, default=200_000,
                        help="the bounded modes' cache_entities")  # fmt: skip
    parser.add_argument("--modes", default="local,memory")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--png", type=Path, default=None, help="plot RSS over events here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.entities, args.revisits, args.batch, args.cache, args.redis_url)
        return
    modes = args.modes.split(",")
    base, _, db = args.redis_url.rpartition("/")
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--entities",
                str(args.entities),
                "--revisits",
                str(args.revisits),
                "--batch",
                str(args.batch),
                "--cache",
                str(args.cache),
                "--redis-url",
                f"{base}/{int(db) - i}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, mode in enumerate(modes)
    ]  # side by side: the same machine load for every mode; one Redis database each
    results = []
    for mode, proc in zip(modes, children, strict=True):
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{mode}: exit code {proc.returncode}")
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        extra = ""
        if r["local"]:
            lc = r["local"]
            extra = (f", local tier: {lc.get('spilled', 0):,} spilled, {lc.get('hits', 0):,} "
                     f"hits, {lc.get('stale', 0):,} stale, {lc.get('loaded', 0):,} from Redis")  # fmt: skip
        print(f"{mode:>6}: {r['events']:,} events ({args.entities:,} distinct entities), "
              f"{r['events_per_s']:,.0f} events/s, peak RSS {r['peak_rss_mb']:,.0f} MiB "
              f"(start {r['start_rss_mb']:,.0f} MiB), {r['cached']:,} states cached at the end"
              f"{extra}", flush=True)  # fmt: skip
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "worker_memory.json").write_text(json.dumps({"args": vars(args) | {"png": str(args.png)},
                                                        "results": results}, indent=1))  # fmt: skip
    if args.png:
        plot(results, args.png, f"one worker, {args.entities / 1e6:g}M distinct entities + "
             f"{args.revisits / 1e6:g}M revisits, cache {args.cache:,}")  # fmt: skip
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
