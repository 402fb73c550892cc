"""Online-store writes and reads: one Redis vs a Redis Cluster, interleaved in one run.

The same batch of entity writes (tiles, fence, write time, expiry — the shape a worker
writes) goes to ``RedisOnlineStore`` on one Redis and to ``RedisClusterOnlineStore`` on a
cluster, alternately, for several rounds; then the same for a multi-entity read (``load``)
and an owner-epoch take. The cluster store runs both its paths in the same run: ``direct``
(each master's calls packed by the store and sent on the master's own connection, only
redirected calls through redis-py) and ``pipeline`` (every call through redis-py's cluster
pipeline: the path before; ``RedisClusterOnlineStore(direct=False)``). Prints entity
writes per second (wall) of each and their ratio to one Redis per round.

``--writes native`` (the default) hands the stores the writes as a worker does: held by the
native core (``engine.online.EntityWrites`` over ``engine._native.Writes``), which the
one-node store sends as natively packed script calls and the cluster store groups by slot
natively; ``--writes python`` hands them over as ``StateWrite`` objects (packed in Python).

    bash scripts/services.sh up redis-cluster        # 127.0.0.1:7001-7006
    .venv/bin/python benchmarks/cluster_writes.py \\
        --redis-url redis://127.0.0.1:6379/14 --cluster-nodes 127.0.0.1:7001

Both Redis addresses can come from the environment too: ``SKEWLESS_BENCH_REDIS_URL``,
``SKEWLESS_BENCH_CLUSTER_NODES``. The single Redis' database is flushed; so is the cluster.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from connectors.redis_cluster_store import RedisClusterOnlineStore
from connectors.redis_store import RedisOnlineStore
from engine import _native
from engine.online import EntityWrites
from engine.ports import StateWrite, Watermark

ONE = "one Redis"
PATHS = ("cluster direct", "cluster pipeline")


def batch(entities: int, seed: int) -> list[StateWrite]:
    rng = random.Random(seed)
    expire = int(time.time() * 1000) + 3_600_000
    out = []
    for i in range(entities):
        fields = {f"t:0:300000:{k}": rng.randbytes(12) for k in range(6)}
        fields["f:0"] = b"%d" % (seed * 100_000 + i)
        fields["u:0"] = b"%d" % expire
        out.append(StateWrite(key=f"sk:bench0123456789:{{c{i:07d}}}", fields=fields,
                              expire_at_ms=expire))  # fmt: skip
    return out


def as_native(writes: list[StateWrite]) -> EntityWrites:
    """The writes as the worker's core hands them to a store."""
    raw = [(w.key, dict(w.fields), list(w.delete), w.expire_at_ms, w.expect) for w in writes]
    return EntityWrites(_native.Writes.from_list(raw))


def timed(call: Any) -> float:
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default=os.environ.get("SKEWLESS_BENCH_REDIS_URL",
                                                          "redis://127.0.0.1:6379/14"))  # fmt: skip
    ap.add_argument("--cluster-nodes", default=os.environ.get("SKEWLESS_BENCH_CLUSTER_NODES",
                                                              "127.0.0.1:7001"))  # fmt: skip
    ap.add_argument("--entities", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--writes", choices=("native", "python"), default="native",
                    help="how the writes reach the stores (see the module docstring)")  # fmt: skip
    args = ap.parse_args()

    single = RedisOnlineStore(args.redis_url)
    nodes = args.cluster_nodes.split(",")
    direct = RedisClusterOnlineStore(nodes)
    pipelined = RedisClusterOnlineStore(nodes, direct=False)
    single._client.flushdb()
    direct._client.flushall(target_nodes="primaries")
    stores: dict[str, Any] = {ONE: single, PATHS[0]: direct, PATHS[1]: pipelined}
    keys = [w.key for w in batch(args.entities, 0)]
    marks = {n: [Watermark(key=f"sk:wm:bench0123456789:{n[-1]}{p}", value=b"1") for p in range(4)]
             for n in stores}  # fmt: skip
    regs = {n: [f"sk:own:bench:{n[-1]}:{p}" for p in range(4)] for n in stores}
    fence: dict[str, list[tuple[str, int]]] = {}
    for name, store in stores.items():  # warm up: scripts loaded, epochs taken
        store.write(batch(10, 99))
        epochs = store.take_epochs(regs[name], 1, [0] * 4)
        fence[name] = list(zip(regs[name], epochs, strict=True))
    got: dict[str, dict[str, list[float]]] = {n: {"write": [], "load": [], "take": []}
                                              for n in stores}  # fmt: skip
    print(f"{args.entities} entity writes (8 fields each, expiry, 4 watermarks, fenced) per "
          f"batch, handed over as {args.writes} writes")  # fmt: skip
    for r in range(args.rounds):
        plain = batch(args.entities, r + 1)
        order = list(stores.items())
        order = order[r % 3 :] + order[: r % 3]  # each store first in turn
        line = []
        for name, store in order:
            writes: Sequence[StateWrite] = as_native(plain) if args.writes == "native" else plain
            w = timed(lambda s=store, n=name, b=writes: s.write(b, marks[n], fence=fence[n]))
            ld = timed(lambda s=store: s.load(keys[:1000]))
            tk = timed(lambda s=store, g=r + 2, k=regs[name]: s.take_epochs(k, g, [0] * 4))
            got[name]["write"].append(w)
            got[name]["load"].append(ld)
            got[name]["take"].append(tk)
        for name in stores:  # the fences moved with the takes
            fence[name] = list(zip(regs[name], _epochs(stores[name], regs[name]), strict=True))
            w = got[name]["write"][-1]
            line.append(f"{name} {args.entities / w:,.0f}/s")
        now = ", ".join(f"{p} {got[ONE]['write'][-1] / got[p]['write'][-1]:.2f}" for p in PATHS)
        print(f"round {r + 1}: writes " + "; ".join(line) + f" (/ one Redis: {now})")
    for name in stores:
        w = statistics.median(got[name]["write"])
        print(f"{name:16}: median {args.entities / w:,.0f} entity writes/s, "
              f"1000-key load {statistics.median(got[name]['load']) * 1000:.0f} ms, "
              f"take of 4 registers {statistics.median(got[name]['take']) * 1000:.0f} ms")  # fmt: skip
    for p in PATHS:
        ratios = [a / b for a, b in zip(got[ONE]["write"], got[p]["write"], strict=True)]
        print(f"{p} write speed / one Redis, median of rounds: {statistics.median(ratios):.2f} "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    speedup = [a / b for a, b in zip(got[PATHS[1]]["write"], got[PATHS[0]]["write"], strict=True)]
    print(f"direct / pipeline write speed, median of rounds: {statistics.median(speedup):.2f}")
    single._client.flushdb()
    direct._client.flushall(target_nodes="primaries")


def _epochs(store: Any, regs: list[str]) -> list[int]:
    client = store._client
    return [int(client.hget(k, "epoch")) for k in regs]


if __name__ == "__main__":
    main()
