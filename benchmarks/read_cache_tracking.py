"""What the tracking ReadCache costs and how wide its in-flight window is, on a real Redis.

1. **In flight**: ``--writes`` writes by another client (a plain ``HSET``, then an ``HSET``
   inside a Lua script as the worker writes), each followed at once by one non-blocking poll
   of a ReadCache's invalidation feed: how often the invalidation had not arrived yet.
2. **Bursts**: ``--bursts`` times, one Lua script writes ``--burst-names`` state keys (a
   worker's large batch: Redis sends their names as one message, more than the socket
   buffers hold) and then one more key, which another client reads at once; then one poll.
   Alternating, the feed as shipped and with its catch-up switched off (the previous
   behaviour): how often the poll said ``trusted`` without that key's name (a held value
   of it would have been served stale), and how long the poll took.
   Then ``--ingest-s`` seconds of steady ingestion (a script of 2,000 names every 100 ms)
   while two feeds, catch-up on and off, are polled alternately every 20 ms: what the
   catch-up costs a poll when bursts keep coming.
3. **Cost**: ``--keys`` ``HSET``s of state keys in pipelines of 5,000, alternately without
   and with one tracking reader connected (``--rounds`` rounds): Redis's CPU per ``HSET``
   (``INFO cpu``), and the reader's CPU to drain the key names it is sent.

Flushes database ``--db`` before and after. Usage::

    .venv/bin/python benchmarks/read_cache_tracking.py --redis-port 16433
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
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


_BURST_LUA = """
for i = 1, tonumber(ARGV[1]) do
    redis.call('HSET', 'sk:burst:{' .. i .. '}:a-name-as-long-as-a-state-key', 'f:0', i)
end
redis.call('HSET', ARGV[2], 'f:0', ARGV[1])
"""


def bursts(client: redis.Redis, store: RedisOnlineStore, count: int, names: int) -> None:
    stale = {"catch-up on": 0, "catch-up off": 0}
    took: dict[str, list[float]] = {name: [] for name in stale}
    for i in range(count):
        for variant in list(stale)[i % 2 :] + list(stale)[: i % 2]:
            feed = store.invalidations()
            assert feed is not None, "this Redis refuses CLIENT TRACKING"
            try:
                if variant == "catch-up off":
                    feed._catch_up = lambda keys: (True, time.monotonic_ns())  # type: ignore[method-assign]
                feed.poll()
                target = f"sk:target:{{{i}}}".encode()
                client.eval(_BURST_LUA, 0, names, target)
                assert client.hget(target, "f:0") is not None  # another client sees it
                t0 = time.perf_counter()
                _, keys, trusted = feed.poll()
                took[variant].append(time.perf_counter() - t0)
                if trusted and target not in keys:
                    stale[variant] += 1
            finally:
                feed.close()
    for variant, n in stale.items():
        ms = sorted(took[variant])
        print(f"burst of {names:,} names + 1 write another client read, then one poll, "
              f"{variant}: trusted without the write's name {n}/{count}; poll "
              f"p50 {ms[len(ms) // 2] * 1e3:.2f} ms, max {ms[-1] * 1e3:.2f} ms")  # fmt: skip


def ingesting(client: redis.Redis, store: RedisOnlineStore, seconds: float) -> None:
    lua = ("for i = 1, tonumber(ARGV[1]) do redis.call('HSET', 'sk:ing:{' .. ARGV[2] .. ':' "
           ".. i .. '}:a-name-as-long-as-a-state-key', 'f:0', i) end")  # fmt: skip
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            client.eval(lua, 0, 2000, n)
            n += 1
            time.sleep(0.1)

    feeds = {"catch-up on": store.invalidations(), "catch-up off": store.invalidations()}
    took: dict[str, list[float]] = {name: [] for name in feeds}
    for name, feed in feeds.items():
        assert feed is not None, "this Redis refuses CLIENT TRACKING"
        if name == "catch-up off":
            feed._catch_up = lambda keys: (True, time.monotonic_ns())  # type: ignore[method-assign]
        feed.poll()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            for name in list(feeds)[i % 2 :] + list(feeds)[: i % 2]:
                t0 = time.perf_counter()
                feeds[name].poll()  # type: ignore[union-attr]
                took[name].append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join()
        for feed in feeds.values():
            feed.close()  # type: ignore[union-attr]
    for name, ms in took.items():
        ms.sort()
        print(f"steady ingestion, a poll every 20 ms, {name}: {len(ms)} polls, p50 "
              f"{ms[len(ms) // 2] * 1e3:.3f} ms, p90 {ms[int(len(ms) * 0.9)] * 1e3:.3f} ms, "
              f"p99 {ms[int(len(ms) * 0.99)] * 1e3:.3f} ms")  # fmt: skip


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
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--burst-names", type=int, default=20_000)
    parser.add_argument("--ingest-s", type=float, default=8.0)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    url = f"redis://127.0.0.1:{args.redis_port}/{args.db}"
    client = redis.Redis.from_url(url)
    store = RedisOnlineStore(url)
    client.flushdb()
    try:
        in_flight(client, store, args.writes)
        bursts(client, store, args.bursts, args.burst_names)
        ingesting(client, store, args.ingest_s)
        cost(client, store, args.keys, args.rounds)
    finally:
        client.flushdb()
        client.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
