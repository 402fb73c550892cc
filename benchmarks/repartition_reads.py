"""Uncached online reads of a re-keyed view at 4, 16 and 64 source partitions (issue 13).

A view keyed by another entity than its topic — ``merchant_risk``'s shape: the source is
keyed by customer, the view by merchant — gathers each merchant's events from every source
partition. With the per-partition layout (``online.merge_rekeyed_views: false``) a
merchant's hash holds one tile set per source partition and a read merges them all; with the
merge-on-write layout (the default, ``engine.plan.with_merged_tiles``, docs/decisions.md)
the workers fold their batches into one tile set per merchant and a read merges one.

For each partition count the same events (``--events`` over the last 30 days, ``--entities``
merchants, customers spread over the partitions by the Kafka key hash) go through the stream
worker's ``BatchProcessor`` into a real Redis twice, once per layout (two keyspaces). Then
uncached reads (``read_online``: every hash fetched and evaluated, no ``ReadCache``) of
100 merchants x the view's 5 features and of 1 x 5 are timed: all six keyspaces stay in
Redis and every call reads each of them, in a rotating order, so every (partitions, layout)
figure sees the same machine noise. Values of both layouts are checked equal.
Prints p50/p99 per (partitions, layout, case), the ratio to the 4-partition figure of the
same layout and case (issue 13's target: the merged layout within 1.2x at 64), and the mean
number of hash fields a read transfers; writes ``benchmarks/out/repartition_reads.json``.

Needs Redis on 127.0.0.1:6379, or the port of ``--redis-port`` /
``SKEWLESS_BENCH_REDIS_PORT`` (database 9 is flushed of the benchmark's keyspaces). Usage::

    .venv/bin/python benchmarks/repartition_reads.py            # full run
    .venv/bin/python benchmarks/repartition_reads.py --quick    # fewer events and calls
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.keys import encode_key, partition_for  # noqa: E402
from engine.online import state_key  # noqa: E402
from engine.online_read import OnlineResponse, read_online  # noqa: E402
from engine.plan import with_merged_tiles  # noqa: E402
from engine.serde import SourceCodec  # noqa: E402
from engine.store import FeatureStore  # noqa: E402
from engine.stream.core import BatchProcessor, SourceRecord  # noqa: E402

sys.path.insert(0, str(HERE))
from online import _Discard  # noqa: E402  (benchmarks/online.py: sinks that keep nothing)

OUT = HERE / "out" / "repartition_reads.json"
DB = 9
DAY_MS = 86_400_000
PARTITIONS = (4, 16, 64)
TARGET = 1.2  # issue 13: the 64-partition read within 1.2x of the 4-partition one
VIEW = "merchant_risk"

DEFINITIONS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

merchant = Entity("merchant", join_keys=["merchant_id"])
transactions = KafkaSource(
    "transactions",
    topic="rp_transactions_@PARTITIONS@",  # a keyspace per partition count
    schema={
        "type": "record",
        "name": "RepartitionBenchTx",
        "fields": [
            {"name": "customer_id", "type": "string"},
            {"name": "merchant_id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "country", "type": "string"},
            {"name": "ts", "type": "long"},
        ],
    },
    timestamp_field="ts",
    key_fields=["customer_id"],
)

# the example definitions' merchant_risk: keyed by merchant, the topic by customer
merchant_risk = FeatureView(
    "merchant_risk",
    entity=merchant,
    source=transactions,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "count", window="1d"),
        Aggregation("customer_id", "approx_count_distinct", window="7d"),
        Aggregation("amount", "mean", window="7d"),
        Aggregation("country", "count_distinct", window="30d"),
    ],
)
"""
REFS = [
    f"{VIEW}:amount_sum_1h",
    f"{VIEW}:amount_count_1d",
    f"{VIEW}:customer_id_approx_count_distinct_7d",
    f"{VIEW}:amount_mean_7d",
    f"{VIEW}:country_count_distinct_30d",
]


def events(n: int, merchants: int, now_ms: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = now_ms - 30 * DAY_MS
    times = sorted(rng.randrange(start, now_ms - 60_000) for _ in range(n))
    return [
        {
            "customer_id": f"c{rng.randrange(20_000):06d}",
            "merchant_id": f"m{rng.randrange(merchants):04d}",
            "amount": round(rng.lognormvariate(3, 1), 2),
            "country": rng.choice(("DE", "FR", "US", "GB", "NL", "ES", "IT", "PL")),
            "ts": ts,
        }
        for ts in times
    ]


def populate(store: FeatureStore, payloads: list[dict[str, Any]], partitions: int) -> float:
    """Stream ``payloads`` through one worker core owning every partition; seconds."""
    from connectors.redis_store import RedisOnlineStore

    online = store.online_store
    assert isinstance(online, RedisOnlineStore)
    online.delete_keyspace(store.plan.views[VIEW].fingerprint)
    codec = SourceCodec(store.plan.sources["transactions"])
    offsets = [0] * partitions
    records: list[SourceRecord] = []
    for payload in payloads:
        key = encode_key([payload["customer_id"]])
        p = partition_for(key, partitions)
        records.append(SourceRecord(topic="transactions", partition=p, offset=offsets[p],
                                    key=key, value=codec.encode(payload)))  # fmt: skip
        offsets[p] += 1
    clock = [payloads[0]["ts"]]
    sink = _Discard()
    core = BatchProcessor(store.plan, "transactions", online=online, log=sink, dead=sink,
                          clock=lambda: clock[0])  # fmt: skip
    started = time.perf_counter()
    for i in range(0, len(records), 2000):
        batch = records[i : i + 2000]
        clock[0] = payloads[min(i + len(batch), len(payloads)) - 1]["ts"] + 1_000
        core.process(batch)
    return time.perf_counter() - started


def percentiles(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] / 1e6

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "n": len(s)}


def read(store: FeatureStore, rows: list[dict[str, str]], now_ms: int) -> dict[str, list[Any]]:
    result = read_online(store.plan, store.online_store, REFS, rows, now_ms=now_ms)
    return OnlineResponse(result).to_dict()


def fields_per_read(store: FeatureStore, merchants: list[str]) -> float:
    """Mean hash fields a read of one merchant transfers (``HLEN`` of its state hash)."""
    import redis

    view = store.plan.views[VIEW]
    client = redis.Redis.from_url(store.config.redis_url)
    try:
        return sum(int(client.hlen(state_key(view, (m,)))) for m in merchants) / len(merchants)
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--entities", type=int, default=200, help="merchants")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per case/layout")
    parser.add_argument("--redis-port", type=int,
                        default=int(os.environ.get("SKEWLESS_BENCH_REDIS_PORT", "6379")))  # fmt: skip
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.calls = 15_000, 60
    url = f"redis://127.0.0.1:{args.redis_port}/{DB}"
    now_ms = time.time_ns() // 1_000_000
    payloads = events(args.events, args.entities, now_ms, args.seed)
    merchants = sorted({p["merchant_id"] for p in payloads})
    rng = random.Random(args.seed)
    results: dict[str, Any] = {
        "events": args.events, "merchants": len(merchants), "calls": args.calls,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "cases": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[tuple[int, str], FeatureStore] = {}
        for partitions in PARTITIONS:
            repo = Path(tmp) / f"p{partitions}"
            repo.mkdir()
            (repo / "defs.py").write_text(
                textwrap.dedent(DEFINITIONS).replace("@PARTITIONS@", str(partitions))
            )
            (repo / "skewless.yaml").write_text(
                f"redis:\n  url: {url}\nkafka:\n  partitions: {partitions}\n"
                "online:\n  merge_rekeyed_views: false\n"  # the merged layout is the default
            )
            old = FeatureStore.from_repo(repo)
            new = FeatureStore(with_merged_tiles(old.plan), old.config)
            assert new.plan.views[VIEW].merged and not old.plan.views[VIEW].merged
            for name, store in (("per_partition", old), ("merged", new)):
                took = populate(store, payloads, partitions)
                stores[(partitions, name)] = store
                print(f"{partitions:>2} partitions, {name:<13}: {len(payloads):,} events "
                      f"written in {took:.1f} s")  # fmt: skip
        t = now_ms
        every = [{"merchant_id": m} for m in merchants]
        reference = read(stores[(PARTITIONS[0], "per_partition")], every, t)
        for (partitions, name), store in stores.items():
            assert read(store, every, t) == reference, f"{partitions} {name}: other values"
        calls = {
            "100x5": [rng.sample(merchants, 100) for _ in range(args.calls)],
            "1x5": [[rng.choice(merchants)] for _ in range(args.calls * 3)],
        }
        order = list(stores)
        for case, ids in calls.items():
            timings: dict[tuple[int, str], list[int]] = {at: [] for at in stores}
            for i, call in enumerate(ids):  # every store per call, in a rotating order
                rows = [{"merchant_id": m} for m in call]
                turn = order[i % len(order) :] + order[: i % len(order)]
                for at in turn:
                    t0 = time.perf_counter_ns()
                    read(stores[at], rows, t)
                    timings[at].append(time.perf_counter_ns() - t0)
            for (partitions, name), store in stores.items():
                got = percentiles(timings[(partitions, name)])
                got["fields_per_entity"] = fields_per_read(store, merchants)
                results["cases"].setdefault(case, {}).setdefault(name, {})[str(partitions)] = got
        from connectors.redis_store import RedisOnlineStore

        for store in stores.values():
            online = store.online_store
            assert isinstance(online, RedisOnlineStore)
            view = store.plan.views[VIEW]
            online.delete_keyspace(view.fingerprint)
    print()
    print(f"uncached reads of {VIEW} (5 features), {results['events']:,} events over 30 days, "
          f"{results['merchants']} merchants, {args.calls} calls (1x5: {3 * args.calls})")  # fmt: skip
    print(f"{'case':<6} {'layout':<14} {'partitions':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'p50/4p':>7} {'p99/4p':>7} {'fields':>7}")  # fmt: skip
    for case, by_layout in results["cases"].items():
        for name, by_p in by_layout.items():
            base = by_p[str(PARTITIONS[0])]
            for p, got in by_p.items():
                got["p50_ratio_to_4"] = got["p50_ms"] / base["p50_ms"]
                got["p99_ratio_to_4"] = got["p99_ms"] / base["p99_ms"]
                print(f"{case:<6} {name:<14} {p:>10} {got['p50_ms']:>8.3f} {got['p99_ms']:>8.3f} "
                      f"{got['p50_ratio_to_4']:>6.2f}x {got['p99_ratio_to_4']:>6.2f}x "
                      f"{got['fields_per_entity']:>7.1f}")  # fmt: skip
    last = str(PARTITIONS[-1])
    ok = all(by_layout["merged"][last]["p50_ratio_to_4"] <= TARGET
             for by_layout in results["cases"].values())  # fmt: skip
    print(f"merged layout, p50 at {last} partitions within {TARGET}x of 4: "
          f"{'yes' if ok else 'NO'}")  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
