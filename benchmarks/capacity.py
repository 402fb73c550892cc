"""The capacity model's measured inputs, and a sizing built by scaling them (docs/scaling.md).

Feeds payments events through the worker's batch core (``BatchProcessor``, as
``benchmarks/worker_core.py`` does: a real Redis, a real event log, owner epochs, no Kafka)
in three traffic shapes, and measures per event and per entity what a deployment pays:

- ``hot``: 10k customers, 1k merchants, event times over 2 h — many events per entity and
  batch (one Redis write serves many events);
- ``wide``: one customer per event and 100k merchants — every event writes its own
  customer hashes (the shape of 100M entities at 1M events/s);
- ``saturated``: 100 customers and 10 merchants with 2,000 events each over 30 days — nearly
  every tile of every window is live: the largest hash an entity has in the example
  definitions (an entity of 100M at 1M events/s sees ~860 events a day).

Per shape: worker CPU and Redis CPU per event, Redis script calls (round trips) and
commands per event, network bytes per event both ways, entity keys and Redis memory per
entity for each view (``MEMORY USAGE`` over a sample), event-log bytes per event, Kafka
record bytes per event. ``--entities-scan`` repeats the wide shape at several sizes to show
that memory per entity does not depend on the entity count (the linear scaling the sizing
assumes). Then the sizing: workers, partitions, Redis shards and memory, log storage for
``--target-events-per-s`` and ``--target-entities``, printed and written as JSON.

    .venv/bin/python benchmarks/capacity.py                        # 200k events per shape
    .venv/bin/python benchmarks/capacity.py --events 500000 --json benchmarks/out/capacity.json

Redis: ``SKEWLESS_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/13``), flushed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import worker_core as wc  # noqa: E402

from engine.store import FeatureStore  # noqa: E402
from engine.stream.core import BatchProcessor  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    "hot": {"customers": 10_000, "merchants": 1_000, "span_ms": 2 * 3_600_000},
    "wide": {"customers": 0, "merchants": 100_000, "span_ms": 2 * 3_600_000},  # 0: one per event
    "saturated": {"customers": 100, "merchants": 10, "span_ms": 30 * 86_400_000},
}
MEMORY_SAMPLE = 400  # keys per view sampled with MEMORY USAGE


def _command_calls(client: Any) -> dict[str, int]:
    return {k: int(v["calls"]) for k, v in client.info("commandstats").items()}


def _net(client: Any) -> tuple[int, int]:
    info = client.info("stats")
    return int(info["total_net_input_bytes"]), int(info["total_net_output_bytes"])


def _view_memory(client: Any, fingerprint: str) -> tuple[int, float, float]:
    """Keys of one view, the mean ``MEMORY USAGE`` of a sample of them, and mean fields."""
    keys: list[bytes] = []
    count = 0
    for key in client.scan_iter(match=f"sk:{fingerprint}:{{*", count=10_000):
        count += 1
        if len(keys) < MEMORY_SAMPLE:
            keys.append(key)
    if not keys:
        return 0, 0.0, 0.0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.hlen(key)
    got = pipe.execute()
    sizes, fields = got[0::2], got[1::2]
    return count, sum(sizes) / len(sizes), sum(fields) / len(fields)


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.avro") if p.is_file())


def measure(shape: str, n: int, batch: int, customers: int | None = None) -> dict[str, Any]:
    from connectors.eventlog import EventLogWriter
    from connectors.redis_store import RedisOnlineStore
    from engine.stream.ownership import Ownership

    params = dict(SHAPES[shape])
    if customers is not None:
        params["customers"] = customers
    if params["customers"] == 0:
        params["customers"] = n
    with tempfile.TemporaryDirectory(prefix="sk-capacity-") as tmp:
        store = FeatureStore.from_repo(wc.make_repo("example", Path(tmp)), environ={})
        online = RedisOnlineStore.from_config(store.config)
        client = online._client  # the benchmark reads the server's INFO
        client.flushdb()
        source = store.plan.sources["transactions"]
        log = EventLogWriter(store.config.event_log_root, "transactions", dict(source.schema))
        own = Ownership(online, group="bench_capacity", topic="transactions", log=log)
        core = BatchProcessor(store.plan, "transactions", online=online, log=log,
                              dead=wc._NoLetters(), ownership=own)  # fmt: skip
        core.assign(range(wc.PARTITIONS), 1)
        now_ms = time.time_ns() // 1_000_000
        rows = wc.events(n, 7, now_ms, **params)
        recs = wc.records(store, rows)
        kafka_bytes = sum(len(r.value or b"") + len(r.key or b"") for r in recs) / len(recs)
        calls0, net0 = _command_calls(client), _net(client)
        r0 = wc.redis_cpu(client)
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        writes = 0
        for i in range(0, len(recs), batch):
            writes += core.process(recs[i : i + batch]).entities_written
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        r1 = wc.redis_cpu(client)
        calls1, net1 = _command_calls(client), _net(client)
        delta = {k: calls1.get(k, 0) - calls0.get(k, 0) for k in calls1}
        delta = {k: v for k, v in delta.items() if v > 0 and k != "cmdstat_info"}
        scripts = sum(v for k, v in delta.items() if k in ("cmdstat_evalsha", "cmdstat_eval",
                                                           "cmdstat_fcall"))  # fmt: skip
        commands = sum(delta.values()) - scripts  # commands inside scripts count on their own
        views: dict[str, Any] = {}
        total_keys = 0
        for name, view in sorted(store.plan.views.items()):
            keys, mem, fields = _view_memory(client, view.fingerprint)
            total_keys += keys
            views[name] = {"entities": keys, "bytes_per_entity": mem, "fields_per_entity": fields}
        used = int(client.info("memory")["used_memory"])
        log_bytes = _dir_bytes(Path(store.config.event_log_root))
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        client.flushdb()
        return {
            "shape": shape,
            **params,
            "events": n,
            "batch": batch,
            "worker_us_per_event": cpu / n * 1e6,
            "redis_us_per_event": (r1 - r0) / n * 1e6,
            "script_calls_per_event": scripts / n,
            "entity_writes_per_event": writes / n,
            "net_in_bytes_per_entity_write": (net1[0] - net0[0]) / max(writes, 1),
            "redis_commands_per_event": commands / n,
            "commands": dict(sorted(delta.items(), key=lambda kv: -kv[1])),
            "net_in_bytes_per_event": (net1[0] - net0[0]) / n,
            "net_out_bytes_per_event": (net1[1] - net0[1]) / n,
            "views": views,
            "entity_keys": total_keys,
            "used_memory_per_key": used / max(total_keys, 1),
            "log_bytes_per_event": log_bytes / n,
            "kafka_record_bytes": kafka_bytes,
        }


def sizing(measured: dict[str, dict[str, Any]], events_per_s: float, entities: float,
           stream_events_per_s: float, headroom: float, retention_days: float) -> dict[str, Any]:  # fmt: skip
    """Scale the measured per-event and per-entity figures to a target.

    - Worker: the batch core's CPU per event of the ``wide`` shape (each event a new entity,
      as at 100M entities) plus the consumer's share, which is what one worker process
      end to end (``stream_events_per_s``, the ``hot`` example backlog of
      ``benchmarks/stream.py``) spends beyond the ``hot`` shape's batch core.
    - Redis CPU and traffic per event: the ``wide`` shape. One Redis shard is one core (the
      server runs commands on one thread).
    - Redis memory per entity: the ``saturated`` shape (every window's tiles live: 1M
      events/s over 100M entities is ~860 events per entity a day, so with uniform traffic
      every entity is saturated) as the upper bound, the ``wide`` shape (an entity seen a
      few times) as the lower one; real traffic is skewed and lies between.
    Every resource is planned at ``headroom`` of its capacity.
    """
    hot, wide, sat = measured["hot"], measured["wide"], measured["saturated"]
    consumer_us = max(1e6 / stream_events_per_s - hot["worker_us_per_event"], 0.0)
    worker_us = wide["worker_us_per_event"] + consumer_us
    worker_rate = 1e6 / worker_us
    workers = math.ceil(events_per_s / (worker_rate * headroom))
    partitions = 2 ** math.ceil(math.log2(max(workers * 2, 1)))
    shard_memory_gib = 25.0  # a comfortable shard: room to fork for replication/AOF rewrite

    def memory(shape: dict[str, Any]) -> float:
        # the example definitions: customers carry three views, merchants one (1 per 100)
        per_view = {v: d["bytes_per_entity"] for v, d in shape["views"].items()}
        customer = sum(b for v, b in per_view.items() if v != "merchant_risk")
        return entities * customer + entities / 100 * per_view.get("merchant_risk", 0.0)

    upper, lower = memory(sat), memory(wide)
    redis_core_s = events_per_s * wide["redis_us_per_event"] / 1e6
    shards_cpu = math.ceil(redis_core_s / headroom)
    shards_mem = math.ceil(upper / (shard_memory_gib * 2**30) / headroom)
    shards_mem_lower = math.ceil(lower / (shard_memory_gib * 2**30) / headroom)
    log_per_day = events_per_s * 86_400 * wide["log_bytes_per_event"]
    return {
        "target_events_per_s": events_per_s,
        "target_entities": entities,
        "headroom": headroom,
        "consumer_us_per_event": consumer_us,
        "worker_us_per_event": worker_us,
        "worker_events_per_s": worker_rate,
        "workers": workers,
        "partitions": partitions,
        "redis_core_seconds_per_s": redis_core_s,
        "redis_shards_for_cpu": shards_cpu,
        "redis_memory_gib": upper / 2**30,
        "redis_shards_for_memory": shards_mem,
        "redis_memory_gib_sparse": lower / 2**30,
        "redis_shards_for_memory_sparse": shards_mem_lower,
        "redis_masters": max(shards_cpu, shards_mem),
        "redis_masters_sparse": max(shards_cpu, shards_mem_lower),
        "redis_script_calls_per_s": events_per_s * wide["script_calls_per_event"],
        "redis_entity_writes_per_s": events_per_s * wide["entity_writes_per_event"],
        "redis_net_in_mb_s": events_per_s * wide["net_in_bytes_per_event"] / 1e6,
        "kafka_in_mb_s": events_per_s * wide["kafka_record_bytes"] / 1e6,
        "log_gib_per_day": log_per_day / 2**30,
        "log_tib_retained": log_per_day * retention_days / 2**40,
    }


def _print_shape(m: dict[str, Any]) -> None:
    print(f"\n[{m['shape']}] {m['events']:,} events, {m['customers']:,} customers, "
          f"{m['merchants']:,} merchants, event times over {m['span_ms'] / 3.6e6:,.0f} h, "
          f"batches of {m['batch']:,}")  # fmt: skip
    print(f"  worker CPU      {m['worker_us_per_event']:8.1f} µs/event")
    print(f"  redis CPU       {m['redis_us_per_event']:8.1f} µs/event")
    print(f"  script calls    {m['script_calls_per_event']:8.4f} /event "
          f"(commands inside them {m['redis_commands_per_event']:.2f} /event)")  # fmt: skip
    print(
        f"  entity writes   {m['entity_writes_per_event']:8.3f} /event "
        f"({m['net_in_bytes_per_entity_write']:.0f} B sent per entity write)"
    )
    print(f"  network         {m['net_in_bytes_per_event']:8.0f} B/event to redis, "
          f"{m['net_out_bytes_per_event']:.0f} B/event back")  # fmt: skip
    print(f"  event log       {m['log_bytes_per_event']:8.1f} B/event on disk")
    print(f"  kafka record    {m['kafka_record_bytes']:8.1f} B/event (key + value)")
    for name, v in m["views"].items():
        print(f"  {name:18s} {v['entities']:9,} entities  {v['bytes_per_entity']:7.0f} B/entity "
              f"({v['fields_per_entity']:.1f} fields)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50_000,
                        help="records per batch (the worker's --batch-max default)")  # fmt: skip
    parser.add_argument("--entities-scan", type=int, nargs="*", default=[20_000, 80_000],
                        help="wide shape again at these event (= customer) counts")  # fmt: skip
    parser.add_argument("--target-events-per-s", type=float, default=1_000_000)
    parser.add_argument("--target-entities", type=float, default=100_000_000)
    parser.add_argument("--stream-events-per-s", type=float, default=34_151,
                        help="one worker process end to end, Kafka included "
                        "(benchmarks/stream.py backlog, docs/benchmarks.md)")  # fmt: skip
    parser.add_argument("--headroom", type=float, default=0.6,
                        help="the share of a core or worker a sizing plans to use")  # fmt: skip
    parser.add_argument("--retention-days", type=float, default=90)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if not os.environ.get("SKEWLESS_BENCH_REDIS_URL"):
        print(f"redis: {wc.REDIS_URL} (set SKEWLESS_BENCH_REDIS_URL to use another)")

    measured = {}
    for i, shape in enumerate(SHAPES, 1):
        print(f"measuring shape {i}/{len(SHAPES)}: {shape} ...", flush=True)
        measured[shape] = measure(shape, args.events, args.batch)
        _print_shape(measured[shape])
    scan: dict[int, dict[str, float]] = defaultdict(dict)
    for n in args.entities_scan:
        print(f"\nwide shape at {n:,} events ...", flush=True)
        m = measure("wide", n, args.batch)
        scan[n] = {v: d["bytes_per_entity"] for v, d in m["views"].items()}
    scan[args.events] = {v: d["bytes_per_entity"] for v, d in measured["wide"]["views"].items()}
    print("\nmemory per entity (B) against the entity count, wide shape:")
    names = sorted(next(iter(scan.values())))
    print("  events=customers " + " ".join(f"{n:>18s}" for n in names))
    for n in sorted(scan):
        print(f"  {n:16,} " + " ".join(f"{scan[n][v]:18.0f}" for v in names))

    plan = sizing(measured, args.target_events_per_s, args.target_entities,
                  args.stream_events_per_s, args.headroom, args.retention_days)  # fmt: skip
    print(f"\nsizing for {plan['target_events_per_s']:,.0f} events/s and "
          f"{plan['target_entities']:,.0f} customers (+1 merchant per 100), "
          f"planning {plan['headroom']:.0%} use:")  # fmt: skip
    print(f"  workers         {plan['workers']:,} processes at {plan['worker_events_per_s']:,.0f} "
          f"events/s each ({plan['worker_us_per_event']:.1f} µs/event: batch core + "
          f"{plan['consumer_us_per_event']:.1f} µs consumer)")  # fmt: skip
    print(f"  partitions      {plan['partitions']:,} per source topic (≥ 2 per worker)")
    print(f"  redis CPU       {plan['redis_core_seconds_per_s']:,.1f} core-s/s -> "
          f"{plan['redis_shards_for_cpu']:,} masters")  # fmt: skip
    print(f"  redis memory    {plan['redis_memory_gib']:,.0f} GiB with every entity saturated -> "
          f"{plan['redis_shards_for_memory']:,} masters; {plan['redis_memory_gib_sparse']:,.0f} "
          f"GiB if each is seen a few times -> {plan['redis_shards_for_memory_sparse']:,}")  # fmt: skip
    print(f"  redis masters   {plan['redis_masters']:,} (saturated) / "
          f"{plan['redis_masters_sparse']:,} (sparse), each with a replica")  # fmt: skip
    print(f"  redis traffic   {plan['redis_script_calls_per_s']:,.0f} script calls/s carrying "
          f"{plan['redis_entity_writes_per_s']:,.0f} entity writes/s, "
          f"{plan['redis_net_in_mb_s']:,.0f} MB/s in")  # fmt: skip
    print(f"  kafka           {plan['kafka_in_mb_s']:,.0f} MB/s of source records")
    print(f"  event log       {plan['log_gib_per_day']:,.0f} GiB/day, "
          f"{plan['log_tib_retained']:,.1f} TiB for {args.retention_days:g} days")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"measured": measured, "scan": scan, "sizing": plan},
                                        indent=2))  # fmt: skip
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
