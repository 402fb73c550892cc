"""Online-store writes and reads: one Redis vs a Redis Cluster, interleaved in one run.

The same batch of entity writes (tiles, fence, write time, expiry — the shape a worker
writes, as ``StateWrite``s) goes to ``RedisOnlineStore`` on one Redis and to
``RedisClusterOnlineStore`` on a cluster, alternately, for several rounds; then the same
for a multi-entity read (``load``) and an owner-epoch take. Prints entity writes per second
(wall) of each and their ratio per round.

    bash scripts/services.sh up redis-cluster        # 127.0.0.1:7001-7006
    .venv/bin/python benchmarks/cluster_writes.py \\
        --redis-url redis://127.0.0.1:6379/14 --cluster-nodes 127.0.0.1:7001

Both Redis URLs can come from the environment too: ``SKEWLESS_BENCH_REDIS_URL``,
``SKEWLESS_BENCH_CLUSTER_NODES``. The single Redis' database is flushed; so is the cluster.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from typing import Any

from connectors.redis_cluster_store import RedisClusterOnlineStore
from connectors.redis_store import RedisOnlineStore
from engine.ports import StateWrite, Watermark


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
    args = ap.parse_args()

    single = RedisOnlineStore(args.redis_url)
    cluster = RedisClusterOnlineStore(args.cluster_nodes.split(","))
    single._client.flushdb()
    cluster._client.flushall(target_nodes="primaries")
    stores = {"one Redis": single, "cluster": cluster}
    keys = [w.key for w in batch(args.entities, 0)]
    marks = [Watermark(key=f"sk:wm:bench0123456789:{p}", value=b"1") for p in range(4)]
    fence: dict[str, list[tuple[str, int]]] = {}
    for name, store in stores.items():  # warm up: scripts loaded, epochs taken
        store.write(batch(10, 99))
        regs = [f"sk:own:bench:t:{p}" for p in range(4)]
        epochs = store.take_epochs(regs, 1, [0] * 4)
        fence[name] = list(zip(regs, epochs, strict=True))
    got: dict[str, dict[str, list[float]]] = {n: {"write": [], "load": [], "take": []}
                                              for n in stores}  # fmt: skip
    print(f"{args.entities} entity writes (8 fields each, expiry, 4 watermarks, fenced) per batch")
    for r in range(args.rounds):
        writes = batch(args.entities, r + 1)
        order = list(stores.items()) if r % 2 == 0 else list(reversed(stores.items()))
        line = []
        for name, store in order:
            w = timed(lambda s=store, n=name, b=writes: s.write(b, marks, fence=fence[n]))
            ld = timed(lambda s=store: s.load(keys[:1000]))
            regs = [f"sk:own:bench:t:{p}" for p in range(4)]
            tk = timed(lambda s=store, g=r + 2, k=regs: s.take_epochs(k, g, [0] * 4))
            got[name]["write"].append(w)
            got[name]["load"].append(ld)
            got[name]["take"].append(tk)
            line.append(
                f"{name}: {args.entities / w:,.0f} writes/s, 1000-key load {ld * 1000:.0f} ms"
            )
        for name in stores:  # the fences moved with the takes
            regs = [f"sk:own:bench:t:{p}" for p in range(4)]
            fence[name] = [(k, e) for k, e in zip(regs, _epochs(stores[name], regs), strict=True)]
        ratio = got["one Redis"]["write"][-1] / got["cluster"]["write"][-1]
        print(f"round {r + 1}: " + "; ".join(line) + f"; cluster/one write speed {ratio:.2f}")
    for name in stores:
        w = statistics.median(got[name]["write"])
        print(f"{name:9}: median {args.entities / w:,.0f} entity writes/s, "
              f"1000-key load {statistics.median(got[name]['load']) * 1000:.0f} ms, "
              f"take of 4 registers {statistics.median(got[name]['take']) * 1000:.0f} ms")  # fmt: skip
    ratios = [
        a / b for a, b in zip(got["one Redis"]["write"], got["cluster"]["write"], strict=True)
    ]
    print(f"cluster write speed / one Redis, median of rounds: {statistics.median(ratios):.2f}")
    single._client.flushdb()
    cluster._client.flushall(target_nodes="primaries")


def _epochs(store: Any, regs: list[str]) -> list[int]:
    client = store._client
    return [int(client.hget(k, "epoch")) for k in regs]


if __name__ == "__main__":
    main()
