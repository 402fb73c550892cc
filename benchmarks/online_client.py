"""Client side of an uncached online read of 100 entities x 10 features, in one process.

1. Streams the events of ``benchmarks/online.py`` (same seed, same view) into a local Redis
   (db 9) through the worker core, unless ``--no-populate`` (the hashes are already there).
2. **When the replies arrive**: for ``--calls`` loads of 100 random customers' hashes as the
   read path loads them (``load_and_probe_resp``: one pipelined write, the replies indexed
   natively as they are received), the time from the write to the first received byte and
   to the last, and how many ``recv`` calls brought them. Redis answers a pipeline only
   once it has run every command it read at once, so the first byte comes late and the
   rest right after it: what a client could overlap with its own work is the span between.
3. **Client CPU per read** (``time.process_time``), the network left out: the replies of
   20 loads are captured once and replayed (a store whose ``load_and_probe_resp`` feeds
   the captured bytes to a fresh ``RespReplies``), then ``read_online(..., cache=None)`` +
   ``to_dict()`` is timed with the statuses from the native status keys (now) and derived
   per row in Python (before), alternating, ``--rounds`` rounds; every value, status and
   freshness checked equal between the two first. Also the parts: the native index
   (``RespReplies.feed``) and the native evaluation (``evaluate_replies``) alone.

Usage::

    .venv/bin/python benchmarks/online_client.py --redis-port 16443
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--calls", type=int, default=300, help="timed loads (step 2)")
    parser.add_argument("--rounds", type=int, default=6, help="alternations (step 3)")
    parser.add_argument("--no-populate", action="store_true")
    args = parser.parse_args(argv)
    os.environ["SKEWLESS_REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/9"

    import online as bench  # benchmarks/online.py: the same data and view

    from connectors import redis_store
    from engine import _native
    from engine.online import state_key
    from engine.online_read import OnlineResponse, _RespHashes, prepare_read, read_online
    from engine.store import FeatureStore

    store = FeatureStore.from_repo(bench.DEFS)
    if not args.no_populate:
        bench.populate(store, 1000, 100_000, 42)
    view = store.plan.views[bench.VIEW]
    refs = [f"{bench.VIEW}:{f}" for f in view.features]
    ids = [f"c{i:06d}" for i in range(1000)]
    online: Any = store.online_store  # a RedisOnlineStore
    rng = random.Random(7)

    # 2. when the replies arrive
    received: list[tuple[int, int]] = []
    plain_recv = redis_store._recv

    def recv(sock: Any) -> bytes:
        chunk = plain_recv(sock)
        received.append((time.perf_counter_ns(), len(chunk)))
        return chunk

    redis_store._recv = recv
    first: list[float] = []
    last: list[float] = []
    chunks: list[float] = []
    try:
        for _ in range(args.calls):
            keys = [state_key(view, (c,)) for c in rng.sample(ids, 100)]
            received.clear()
            start = time.perf_counter_ns()
            online.load_and_probe_resp(keys, [None] * len(keys), ())
            first.append((received[0][0] - start) / 1e6)
            last.append((received[-1][0] - start) / 1e6)
            chunks.append(len(received))
    finally:
        redis_store._recv = plain_recv

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    print(f"loads of 100 hashes ({args.calls}): first byte p50 {q(first, 0.5):.3f} ms, "
          f"last byte p50 {q(last, 0.5):.3f} ms (p90 {q(first, 0.9):.3f} / "
          f"{q(last, 0.9):.3f} ms), recv calls p50 {q(chunks, 0.5):.0f}")  # fmt: skip

    # 3. client CPU, replayed replies
    class Replay:
        def __init__(self, raw: bytes, n: int) -> None:
            self.raw, self.n = raw, n

        def __getattr__(self, name: str) -> Any:
            return getattr(online, name)

        def load_and_probe_resp(self, *_: Any) -> Any:
            replies = _native.RespReplies(self.n)
            replies.feed(self.raw)
            return replies

    calls: list[tuple[list[dict[str, str]], Replay]] = []
    (read,) = prepare_read(store.plan, refs).views
    for _ in range(20):
        rows = [{"customer_id": c} for c in rng.sample(ids, 100)]
        keys = [state_key(view, (r["customer_id"],)) for r in rows]
        wanted = [read.marker]
        replies = online.load_and_probe_resp(keys, [None] * len(keys), wanted)
        calls.append((rows, Replay(replies.raw(), len(keys) + len(wanted))))
    now_ms = time.time_ns() // 1_000_000
    keyed = _RespHashes.evaluate_states

    def per_row(self: Any, at: Any, slots: Sequence[int]) -> Any:
        got = at.evaluate_replies(self.replies, slots)
        return got, at.windows_seen(got)

    paths = {"now (status keys)": keyed, "before (statuses per row)": per_row}

    def read_all(t_ms: int) -> list[str]:
        out = []
        for rows, replay in calls:
            r = read_online(store.plan, replay, refs, rows, now_ms=t_ms, cache=None)
            out.append(repr((r.values, r.row_statuses, r.freshness_ms)))
        return out

    try:
        for dt in (0, 3_600_000, 3 * bench.DAY_MS, 20 * bench.DAY_MS, 40 * bench.DAY_MS):
            seen = []
            for path in paths.values():
                _RespHashes.evaluate_states = path  # type: ignore[method-assign]
                seen.append(read_all(now_ms + dt))
            assert seen[0] == seen[1], f"the two paths differ at now + {dt} ms"
        print("values, statuses and freshness equal on both paths (20 reads x 5 read times)")
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        reps = 10
        for r in range(args.rounds):
            order = list(paths.items()) if r % 2 == 0 else list(paths.items())[::-1]
            for name, path in order:
                _RespHashes.evaluate_states = path  # type: ignore[method-assign]
                c0 = time.process_time()
                for _ in range(reps):
                    for rows, replay in calls:
                        result = read_online(store.plan, replay, refs, rows, now_ms=now_ms,
                                             cache=None)  # fmt: skip
                        OnlineResponse(result).to_dict()
                cpu[name].append((time.process_time() - c0) / (reps * len(calls)) * 1e3)
    finally:
        _RespHashes.evaluate_states = keyed  # type: ignore[method-assign]
    for name, xs in cpu.items():
        print(f"client CPU per read_online + to_dict, {name}: "
              f"{' '.join(f'{x:.3f}' for x in xs)} ms (median {q(xs, 0.5):.3f})")  # fmt: skip
    at = read.reader.at(now_ms)
    fed = [replay.load_and_probe_resp() for _, replay in calls]
    c0 = time.process_time()
    for _ in range(reps):
        for _, replay in calls:
            replay.load_and_probe_resp()
    index = (time.process_time() - c0) / (reps * len(calls)) * 1e3
    c0 = time.process_time()
    for _ in range(reps):
        for replies in fed:
            at.evaluate_replies(replies, range(100), keyed=True)
    evaluate = (time.process_time() - c0) / (reps * len(calls)) * 1e3
    print(f"of which: native index (feed) {index:.3f} ms, native evaluation with its Python "
          f"objects {evaluate:.3f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
