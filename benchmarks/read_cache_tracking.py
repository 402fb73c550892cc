"""What the tracking ReadCache costs and how wide its in-flight window is, on a real Redis.

1. **In flight**: ``--writes`` writes by another client (a plain ``HSET``, then an ``HSET``
   inside a Lua script as the worker writes), each followed at once by one non-blocking poll
   of a ReadCache's invalidation feed: how often the invalidation had not arrived yet.
2. **Cost**: ``--keys`` ``HSET``s of state keys in pipelines of 5,000, alternately without
   and with one tracking reader connected (``--rounds`` rounds): Redis's CPU per ``HSET``
   (``INFO cpu``), and the reader's CPU to drain the key names it is sent.

Flushes database ``--db`` before and after. Usage::

    .venv/bin/python benchmarks/read_cache_tracking.py --redis-port 16433
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.redis_store import RedisOnlineStore
from engine.online_read import ReadCache


def in_flight(client: redis.Redis, store: RedisOnlineStore, writes: int) -> None:
    feed = store.invalidations()
    assert feed is not None, "this Redis refuses CLIENT TRACKING"
    feed.poll()
    try:
        for how in ("HSET", "HSET in a Lua script"):
            late = 0
            for i in range(writes):
                key = f"sk:race:{{{i}}}"
                if how == "HSET":
                    client.hset(key, "f", i)
                else:
                    client.eval("redis.call('HSET', KEYS[1], 'f', ARGV[1])", 1, key, i)
                if key.encode() not in feed.poll()[1]:
                    late += 1
                    deadline = time.monotonic() + 5
                    while not feed.poll()[1] and time.monotonic() < deadline:
                        pass
            print(f"{how} by another client, then one poll: not arrived yet {late}/{writes}")
    finally:
        feed.close()


def cost(client: redis.Redis, store: RedisOnlineStore, keys: int, rounds: int) -> None:
    def redis_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def write() -> float:
        before = redis_cpu()
        for start in range(0, keys, 5000):
            pipe = client.pipeline(transaction=False)
            for k in range(start, min(keys, start + 5000)):
                pipe.hset(f"sk:abcdef0123456789:{{c{k:07d}}}", "t:0:3600000:1", b"x" * 40)
            pipe.execute()
        return (redis_cpu() - before) / keys * 1e6

    for r in range(rounds):
        alone = write()
        cache = ReadCache()
        assert cache.sync(store), "this Redis refuses CLIENT TRACKING"
        tracked = write()
        t0 = time.process_time()
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.2:  # drain until nothing came for 200 ms
            seq = cache.seq
            cache.sync(store)
            if cache.seq != seq:
                quiet_since = time.monotonic()
            else:
                time.sleep(0.01)
        drain = (time.process_time() - t0) / keys * 1e6
        cache.close()
        print(f"round {r + 1}: Redis CPU per HSET {alone:.2f} us alone, {tracked:.2f} us with "
              f"one tracking reader; the reader's CPU per key name drained {drain:.2f} us")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-port", type=int,
                        default=int(os.environ.get("SKEWLESS_BENCH_REDIS_PORT", "6379")))  # fmt: skip
    parser.add_argument("--db", type=int, default=6)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    url = f"redis://127.0.0.1:{args.redis_port}/{args.db}"
    client = redis.Redis.from_url(url)
    store = RedisOnlineStore(url)
    client.flushdb()
    try:
        in_flight(client, store, args.writes)
        cost(client, store, args.keys, args.rounds)
    finally:
        client.flushdb()
        client.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
