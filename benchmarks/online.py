"""Online-read benchmark: skewless ``get_online_features`` vs Feast's, same Redis, same values, same run.

1. Streams ``--events`` events for ``--entities`` customers, spread over the last 30 days,
   through the stream worker's ``BatchProcessor`` into a real local Redis (db 9), so each
   customer's hash holds realistic live tiles (10 features of ``benchmarks/defs_online``,
   three hop groups).
2. Reads every customer's 10 values with skewless and writes exactly those values into a
   Feast 0.67 Redis online store (db 14) with ``write_to_online_store``; Feast runs in its own
   virtualenv (``benchmarks/.venv-feast``, created on first use, or the one ``SKEWLESS_FEAST_VENV`` names) behind
   ``benchmarks/feast_online_peer.py``, a stdin/stdout JSON peer. Values are checked equal.
3. Times ``get_online_features(...).to_dict()`` for 1 entity x 10 features and
   100 entities x 10 features — with the default ``ReadCache`` (Redis's invalidations
   tracked: a held entity costs no round trip), with a ``ReadCache(tracking=False)`` (every
   held entity revalidated in Redis, one round trip) — both after every customer was read
   once, so they time hits (but where a 5-minute hop boundary passes: values age at read
   time) — and without any cache (every
   hash fetched and evaluated, as for a user reading many distinct entities) — alternating
   skewless and Feast rounds so both see the same machine noise. Also times the store's
   load of the same hashes alone, as the read path loads them (the Redis floor of an
   uncached read). Prints p50/p99 and the ratios against issue 10's targets (p99 without a
   cache <= 1.0x Feast for 1x10, <= 0.5x Feast for 100x10; with the ReadCache <= 0.3x),
   writes ``benchmarks/out/online.json`` and ``docs/img/online.png``.

Needs Redis on 127.0.0.1:6379 (``bash scripts/services.sh up redis``), or on the port of
``--redis-port`` / ``SKEWLESS_BENCH_REDIS_PORT`` (both readers use that server). Usage::

    .venv/bin/python benchmarks/online.py             # full run
    .venv/bin/python benchmarks/online.py --quick     # fewer calls
    .venv/bin/python benchmarks/online.py --profile   # cProfile of skewless 1x10 and 100x10,
                                                      # cached and uncached
    .venv/bin/python benchmarks/online.py --ab-statuses   # also the uncached reader with the
                                                          # statuses derived per row (before)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.envelope import Envelope  # noqa: E402
from engine.keys import encode_key, partition_for  # noqa: E402
from engine.online_read import OnlineResponse, ReadCache, _RespHashes, read_online  # noqa: E402
from engine.ports import DeadLetter  # noqa: E402
from engine.serde import SourceCodec  # noqa: E402
from engine.store import FeatureStore  # noqa: E402
from engine.stream.core import BatchProcessor, SourceRecord  # noqa: E402

DEFS = HERE / "defs_online"
OUT = HERE / "out"
RESULTS_JSON = OUT / "online.json"
CHART = REPO / "docs" / "img" / "online.png"
FEAST_VENV = Path(os.environ.get("SKEWLESS_FEAST_VENV") or HERE / ".venv-feast")
FEAST_VERSION = "0.67.0"
SKEWLESS_DB, FEAST_DB = 9, 14  # Redis databases of the two readers
VIEW = "customer_features"
DAY_MS = 86_400_000
# issue 10: skewless p99 / Feast p99 must be at most this — without a cache, per case; with
# the ReadCache (every read after the first a hit here: tracked, or revalidated), in both cases
TARGETS = {"1x10": 1.0, "100x10": 0.5}
CACHED_TARGET = 0.3


class _Discard:
    """EventLogSink and DeadLetterSink that keep nothing (the benchmark needs Redis only)."""

    def __init__(self) -> None:
        self.high: dict[int, int] = {}

    def append(self, records: Sequence[Envelope]) -> list[str]:
        for env in records:
            self.high[env.partition] = max(self.high.get(env.partition, -1), env.offset)
        return []

    def last_offset(self, partition: int) -> int | None:
        return self.high.get(partition)

    def send(self, letters: Sequence[DeadLetter]) -> None:
        raise AssertionError(f"benchmark events were refused: {letters[:1]}")


def populate(store: FeatureStore, entities: int, events: int, seed: int) -> tuple[int, float]:
    """Stream events of the last 30 days through the worker core into Redis; (events, seconds)."""
    from connectors.redis_store import RedisOnlineStore

    online = store.online_store
    assert isinstance(online, RedisOnlineStore)
    fingerprint = store.plan.views[VIEW].fingerprint
    online.delete_keyspace(fingerprint)
    rng = random.Random(seed)
    now_ms = time.time_ns() // 1_000_000
    start_ms = now_ms - 30 * DAY_MS
    times = sorted(rng.randrange(start_ms, now_ms - 60_000) for _ in range(events))
    source = store.plan.sources["events"]
    codec = SourceCodec(source)
    partitions = store.config.kafka_partitions
    offsets = [0] * partitions
    records: list[SourceRecord] = []
    for ts in times:
        customer = f"c{rng.randrange(entities):06d}"
        key = encode_key([customer])
        p = partition_for(key, partitions)
        payload = {
            "customer_id": customer,
            "amount": round(rng.lognormvariate(3, 1), 2),
            "merchant_id": f"m{rng.randrange(500)}",
            "ts": ts,
        }
        records.append(SourceRecord(topic="events", partition=p, offset=offsets[p], key=key,
                                    value=codec.encode(payload)))  # fmt: skip
        offsets[p] += 1
    clock = [start_ms]
    sink = _Discard()
    core = BatchProcessor(store.plan, "events", online=online, log=sink, dead=sink,
                          clock=lambda: clock[0])  # fmt: skip
    started = time.perf_counter()
    for i in range(0, len(records), 2000):
        batch = records[i : i + 2000]
        clock[0] = times[min(i + len(batch), len(times)) - 1] + 1_000
        core.process(batch)
    return len(records), time.perf_counter() - started


class FeastPeer:
    """Feast in its own virtualenv, driven through benchmarks/feast_online_peer.py."""

    def __init__(self) -> None:
        python = FEAST_VENV / "bin" / "python"
        if not python.exists():
            print(f"creating {FEAST_VENV} with feast[redis]=={FEAST_VERSION} (one time)")
            subprocess.run(["python3", "-m", "venv", str(FEAST_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q",
                            f"feast[redis]=={FEAST_VERSION}"], check=True)  # fmt: skip
            (FEAST_VENV / ".gitignore").write_text("*\n")
        self.proc = subprocess.Popen(
            [str(python), str(HERE / "feast_online_peer.py")],
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        hello = self._answer()
        self.version = str(hello["feast"])

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Feast peer exited; see its stderr above")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"Feast peer: {answer['error']}")
        return answer

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask_quit()
            self.proc.wait(timeout=30)

    def ask_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.flush()


def percentiles(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] / 1e6

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "mean_ms": sum(s) / len(s) / 1e6, "n": len(s)}  # fmt: skip


_REVALIDATING: dict[int, ReadCache] = {}  # per FeatureStore: a ReadCache(tracking=False)


def time_skewless(
    store: FeatureStore,
    refs: list[str],
    calls: list[list[str]],
    *,
    cached: bool = True,
    revalidate: bool = False,
    before: bool = False,
) -> list[int]:
    """Latency of each call; ``cached=False`` reads without the ReadCache (every hash decoded),
    ``revalidate=True`` with a ReadCache that revalidates every held entity in Redis (one
    round trip) instead of following Redis's invalidations."""
    rows = [[{"customer_id": c} for c in ids] for ids in calls]
    clock = time.perf_counter_ns
    out: list[int] = []
    if cached and not revalidate:
        for entity_rows in rows:
            t0 = clock()
            store.get_online_features(refs, entity_rows).to_dict()
            out.append(clock() - t0)
        return out
    plan, online = store.plan, store.online_store
    cache = None
    if revalidate:
        cache = _REVALIDATING.setdefault(id(store), ReadCache(tracking=False))
    now_path = _RespHashes.evaluate_states
    if before:  # the statuses as before (per row in Python), to A/B them in one run
        _RespHashes.evaluate_states = _statuses_per_row  # type: ignore[method-assign]
    try:
        for entity_rows in rows:
            t0 = clock()
            now_ms = time.time_ns() // 1_000_000
            result = read_online(plan, online, refs, entity_rows, now_ms=now_ms, cache=cache)
            OnlineResponse(result).to_dict()
            out.append(clock() - t0)
    finally:
        _RespHashes.evaluate_states = now_path  # type: ignore[method-assign]
    return out


def _statuses_per_row(self: _RespHashes, at: Any, slots: Sequence[int]) -> Any:
    """``_RespHashes.evaluate_states`` before the status keys: ``seen`` per row, the window
    states derived from values and ``seen`` row by row (``WindowAt.windows_seen``)."""
    got = at.evaluate_replies(self.replies, slots)
    return got, at.windows_seen(got)


def time_load(store: FeatureStore, calls: list[list[str]]) -> list[int]:
    """Latency of the store's load of each call's hashes alone, as the read path loads them
    (``load_and_probe_resp``: replies indexed, not parsed; ``load`` where the store has no
    such method): no decoding, no values."""
    from engine.online import state_key

    view = store.plan.views[VIEW]
    keys = [[state_key(view, (c,)) for c in ids] for ids in calls]
    clock = time.perf_counter_ns
    online = store.online_store
    resp = getattr(online, "load_and_probe_resp", None)  # the read path's own load
    out: list[int] = []
    for call in keys:
        t0 = clock()
        if resp is not None:
            resp(call, [None] * len(call), ())
        else:
            online.load(call)
        out.append(clock() - t0)
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results["cases"])
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.6))
    for ax, case in zip(axes, cases, strict=True):
        data = results["cases"][case]
        labels = ["p50", "p99"]
        xs = range(len(labels))
        series = [
            ("skewless", "skewless (ReadCache, tracking)", "#2a7ab0"),
            ("skewless_revalidating", "ReadCache revalidating", "#5b9bc6"),
            ("skewless_uncached", "skewless, no cache", "#8fbcd9"),
            ("redis_load", "no cache: its Redis load alone", "#c9c9c9"),
            ("feast", f"Feast {results['feast_version']}", "#c77c2e"),
        ]
        series = [s for s in series if s[0] in data]
        width = 0.8 / len(series)
        for j, (name, label, color) in enumerate(series):
            ys = [data[name]["p50_ms"], data[name]["p99_ms"]]
            pos = [x + (j - (len(series) - 1) / 2) * width for x in xs]
            ax.bar(pos, ys, width=width, label=label, color=color)
            for x, v in zip(pos, ys, strict=True):
                ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("ms per get_online_features")
        n = int(case.split("x")[0])
        ax.set_title(f"{n} {'entity' if n == 1 else 'entities'} x 10 features", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Online reads from local Redis (lower is better)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--calls-1", type=int, default=4000, help="timed calls, 1 entity")
    parser.add_argument("--calls-100", type=int, default=600, help="timed calls, 100 entities")
    parser.add_argument("--rounds", type=int, default=10, help="alternations skewless/Feast")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--profile", action="store_true", help="cProfile skewless, no Feast")
    parser.add_argument(
        "--ab-statuses",
        action="store_true",
        help="also time the uncached reader with the statuses derived per row in Python "
        "(before the native status keys), in the same rotation",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=int(os.environ.get("SKEWLESS_BENCH_REDIS_PORT", "0")) or None,
        help="port of the local Redis both readers use (env SKEWLESS_BENCH_REDIS_PORT; "
        "default 6379, skewless' database from the repo's config or SKEWLESS_REDIS_URL)",
    )
    args = parser.parse_args(argv)
    if args.redis_port:
        os.environ["SKEWLESS_REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/{SKEWLESS_DB}"
    if args.quick:
        args.calls_1, args.calls_100, args.rounds = 400, 60, 4

    store = FeatureStore.from_repo(DEFS)
    view = store.plan.views[VIEW]
    features = list(view.features)
    refs = [f"{VIEW}:{f}" for f in features]
    print(f"Redis {store.config.redis_url}; {args.events} events for {args.entities} customers")
    n_events, seconds = populate(store, args.entities, args.events, args.seed)
    print(f"streamed {n_events} events through BatchProcessor in {seconds:.1f}s "
          f"({n_events / seconds:,.0f} events/s)")  # fmt: skip
    ids = [f"c{i:06d}" for i in range(args.entities)]
    values = store.get_online_features(refs, [{"customer_id": c} for c in ids]).to_dict()
    tiles = _tile_stats(store, ids, refs)
    print(f"tiles per customer hash: mean {tiles[0]:.1f}, max {tiles[1]}; "
          f"in a requested window: mean {tiles[2]:.1f}")  # fmt: skip

    rng = random.Random(args.seed + 1)
    plan = {
        "1x10": [[rng.choice(ids)] for _ in range(args.calls_1)],
        "100x10": [rng.sample(ids, 100) for _ in range(args.calls_100)],
    }
    if args.profile:
        return _profile(store, refs, plan)

    peer = FeastPeer()
    try:
        kinds = {f: ("int" if a.function == "count" else "float")
                 for f, a in zip(features, view.aggregations, strict=True)}  # fmt: skip
        setup = peer.ask(cmd="setup", dir=str(OUT / "feast_repo"), redis=f"127.0.0.1:{args.redis_port or 6379},db={FEAST_DB}",
                         features=kinds, rows=values)  # fmt: skip
        print(f"Feast {peer.version}: wrote {setup['rows']} rows in {setup['write_s']:.1f}s")
        sample = rng.sample(ids, 50)
        theirs = peer.ask(cmd="read", features=features, entities=sample)
        ours = store.get_online_features(refs, [{"customer_id": c} for c in sample]).to_dict()
        for f in features:
            if [_num(v) for v in theirs[f]] != [_num(v) for v in ours[f]]:
                raise SystemExit(
                    f"Feast and skewless disagree on {f}: {theirs[f][:3]} vs {ours[f][:3]}"
                )
        print("values checked equal on 50 customers x 10 features")

        results: dict[str, Any] = {
            "feast_version": peer.version,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "entities": args.entities,
            "events": n_events,
            "tiles_per_hash_mean": tiles[0],
            "tiles_in_windows_mean": tiles[2],
            "cases": {},
        }
        for case, calls in plan.items():
            warm = calls[: max(20, len(calls) // 10)]
            every = [[c] for c in ids]  # the cached rows time hits: every customer held first
            time_skewless(store, refs, warm + every)
            time_skewless(store, refs, warm, cached=False)
            time_skewless(store, refs, warm + every, revalidate=True)
            peer.ask(cmd="time", features=features, calls=warm)
            timings: dict[str, list[int]] = {
                "skewless": [],
                "skewless_revalidating": [],
                "skewless_uncached": [],
                **({"skewless_uncached_before": []} if args.ab_statuses else {}),
                "redis_load": [],
                "feast": [],
            }
            step = -(-len(calls) // args.rounds)
            for r, i in enumerate(range(0, len(calls), step)):
                chunk = calls[i : i + step]
                runs = [
                    ("skewless", lambda c=chunk: time_skewless(store, refs, c)),
                    (
                        "skewless_revalidating",
                        lambda c=chunk: time_skewless(store, refs, c, revalidate=True),
                    ),
                    (
                        "skewless_uncached",
                        lambda c=chunk: time_skewless(store, refs, c, cached=False),
                    ),
                    *(
                        [
                            (
                                "skewless_uncached_before",
                                lambda c=chunk: time_skewless(
                                    store, refs, c, cached=False, before=True
                                ),
                            )
                        ]
                        if args.ab_statuses
                        else []
                    ),
                    ("redis_load", lambda c=chunk: time_load(store, c)),
                    (
                        "feast",
                        lambda c=chunk: peer.ask(cmd="time", features=features, calls=c)["ns"],
                    ),
                ]
                turn = r % len(runs)
                for name, run in runs[turn:] + runs[:turn]:  # rotate who goes first
                    timings[name] += run()
            stats = {name: percentiles(ns) for name, ns in timings.items()}
            fe = stats["feast"]
            results["cases"][case] = {
                **stats,
                "ratio_p50": stats["skewless"]["p50_ms"] / fe["p50_ms"],
                "ratio_p99": stats["skewless"]["p99_ms"] / fe["p99_ms"],
                "revalidating_ratio_p50": stats["skewless_revalidating"]["p50_ms"] / fe["p50_ms"],
                "revalidating_ratio_p99": stats["skewless_revalidating"]["p99_ms"] / fe["p99_ms"],
                "uncached_ratio_p50": stats["skewless_uncached"]["p50_ms"] / fe["p50_ms"],
                "uncached_ratio_p99": stats["skewless_uncached"]["p99_ms"] / fe["p99_ms"],
                **(
                    {
                        "uncached_before_ratio_p50": stats["skewless_uncached_before"]["p50_ms"]
                        / fe["p50_ms"],
                        "uncached_before_ratio_p99": stats["skewless_uncached_before"]["p99_ms"]
                        / fe["p99_ms"],
                    }
                    if args.ab_statuses
                    else {}
                ),
                "load_ratio_p99": stats["redis_load"]["p99_ms"] / fe["p99_ms"],
                "target_ratio_p99": TARGETS[case],
                "cached_target_ratio_p99": CACHED_TARGET,
            }
    finally:
        peer.close()

    print()
    print(markdown_table(results))
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, CHART)
    print(f"\nwrote {RESULTS_JSON.relative_to(REPO)} and {CHART.relative_to(REPO)}")
    return 0


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        "| case | reader | p50 | p90 | p99 | p50 / Feast | p99 / Feast | target |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for case, d in results["cases"].items():
        fe = d["feast"]
        for name, label in (("skewless", "skewless (default, ReadCache, tracking)"),
                            ("skewless_revalidating", "skewless, ReadCache revalidating"),
                            ("skewless_uncached", "skewless, no cache"),
                            ("skewless_uncached_before",
                             "skewless, no cache, statuses per row (before)"),
                            ("redis_load", "(its Redis load alone)"),
                            ("feast", f"Feast {results['feast_version']}")):  # fmt: skip
            if name not in d:
                continue
            st = d[name]
            ratio = " | "
            if name != "feast":
                ratio = f"{st['p50_ms'] / fe['p50_ms']:.2f} | {st['p99_ms'] / fe['p99_ms']:.2f}"
            target = ""
            if name in ("skewless", "skewless_revalidating", "skewless_uncached"):
                goal = d["target_ratio_p99"]
                if name != "skewless_uncached":
                    goal = d.get("cached_target_ratio_p99", goal)
                met = "met" if st["p99_ms"] / fe["p99_ms"] <= goal else "MISSED"
                target = f"p99 <= {goal} x Feast: {met}"
            lines.append(
                f"| {case} | {label} | {st['p50_ms']:.3f} ms | {st['p90_ms']:.3f} ms | "
                f"{st['p99_ms']:.3f} ms | {ratio} | {target} |"
            )
    return "\n".join(lines)


def _num(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _tile_stats(store: FeatureStore, ids: list[str], refs: list[str]) -> tuple[float, int, float]:
    """Tile fields per hash (mean, max) and, mean, those a read of ``refs`` now decodes."""
    from engine.online import state_key
    from engine.online_read import prepare_read

    view = store.plan.views[VIEW]
    hashes = store.online_store.load([state_key(view, (c,)) for c in ids])
    counts = [sum(1 for f in h if f.startswith(b"t:")) for h in hashes]
    (read,) = prepare_read(store.plan, refs).views
    at = read.reader.at(time.time_ns() // 1_000_000)
    used = [sum(1 for f in h if at.uses(f) and f.startswith(b"t:")) for h in hashes]
    return sum(counts) / len(counts), max(counts), sum(used) / len(used)


def _profile(store: FeatureStore, refs: list[str], plan: dict[str, list[list[str]]]) -> int:
    import cProfile
    import pstats

    for case, calls in plan.items():
        for cached, revalidate in ((True, False), (True, True), (False, False)):
            label = f"{case}, " + ("no cache" if not cached else
                                   "ReadCache revalidating" if revalidate else "ReadCache")  # fmt: skip
            how = {"cached": cached, "revalidate": revalidate}
            time_skewless(store, refs, calls[:50], **how)
            profiler = cProfile.Profile()
            profiler.enable()
            time_skewless(store, refs, calls, **how)
            profiler.disable()
            print(f"\n== {label}: {len(calls)} calls")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
            print(label, percentiles(time_skewless(store, refs, calls, **how)))
        print(f"{case}, Redis load alone", percentiles(time_load(store, calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
