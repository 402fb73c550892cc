"""The stream worker's batch core in one process: CPU per event, and Redis's share of it.

Feeds a backlog of payments events (the generator of ``benchmarks/stream.py``) through
``BatchProcessor`` — the code a worker runs per batch — with a real local Redis (db 13), a
real event log (a temp folder) and owner epochs, but no Kafka, so the figures isolate the
worker's own cost from the consumer's. Reports events per worker CPU-second, the Redis
server's CPU per event (``INFO cpu`` before and after), and the share of each stage from
``cProfile`` when ``--profile`` is given.

    .venv/bin/python benchmarks/worker_core.py                 # example definitions, 100k events
    .venv/bin/python benchmarks/worker_core.py --defs count    # the 1-minute count job
    .venv/bin/python benchmarks/worker_core.py --profile       # + where the time goes
    .venv/bin/python benchmarks/worker_core.py --native old.so # another build of the core
    .venv/bin/python benchmarks/worker_core.py --merged 3      # per-partition vs merge-on-write
                                                               # layout, 3 alternating rounds
    .venv/bin/python benchmarks/worker_core.py --merged 3 --recovery  # with lost-state
        # detection wired as the runtimes wire it (watermarks swapped and checked); adds a
        # merge-on-write run without its pre-write watermark read (the check's own cost)
    .venv/bin/python benchmarks/worker_core.py --steps --batch 100 --recovery
        # wall and CPU ms per batch of each step of BatchProcessor.process (live-sized
        # batches: compare with --batch 5000 for the per-record cost of each step)
    .venv/bin/python benchmarks/worker_core.py --keep-merged 3 --recovery --batch 150
        # a sole owner keeping its merge-on-write entries cached across batches vs
        # reloading them every batch (SKEWLESS_WORKER_KEEP_MERGED), alternating, 3 rounds

Redis: SKEWLESS_BENCH_REDIS_URL (default redis://127.0.0.1:6379/13).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def _preload_native(argv: list[str]) -> None:
    """``--native PATH``: run on another build of ``engine._native`` (to compare two builds
    of the native core on the same events), loaded before anything imports the engine."""
    if "--native" not in argv[:-1]:
        return
    import importlib.machinery
    import importlib.util

    path = argv[argv.index("--native") + 1]
    loader = importlib.machinery.ExtensionFileLoader("engine._native", path)
    spec = importlib.util.spec_from_file_location("engine._native", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["engine._native"] = module
    loader.exec_module(module)


_preload_native(sys.argv)

from engine.keys import encode_key, partition_for  # noqa: E402
from engine.serde import SourceCodec  # noqa: E402
from engine.store import FeatureStore  # noqa: E402
from engine.stream.core import BatchProcessor, SourceRecord  # noqa: E402

REDIS_URL = os.environ.get("SKEWLESS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
PARTITIONS = 4
COUNT_DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"])
transactions = KafkaSource("transactions", topic="transactions",
                           schema="schemas/transaction.avsc", timestamp_field="ts",
                           format="avro", key_fields=["customer_id"])
customer_count = FeatureView("customer_count", entity=customer, source=transactions,
                             aggregations=[Aggregation("amount", "count", window="1m", hop="1m")])
"""


def make_repo(kind: str, root: Path) -> Path:
    repo = root / "repo"
    (repo / "schemas").mkdir(parents=True)
    schema = REPO / "definitions" / "schemas" / "transaction.avsc"
    (repo / "schemas" / "transaction.avsc").write_text(schema.read_text())
    defs = (REPO / "definitions" / "payments.py").read_text() if kind == "example" else COUNT_DEFS
    (repo / "defs.py").write_text(defs)
    (repo / "skewless.yaml").write_text(
        f"project:\n  name: bench_core\nkafka:\n  partitions: {PARTITIONS}\n"
        f"redis:\n  url: {REDIS_URL}\nevent_log:\n  root: {root / 'log'}\n"
    )
    return repo


def events(
    n: int,
    seed: int,
    now_ms: int,
    *,
    customers: int = 10_000,
    merchants: int = 1_000,
    span_ms: int = 2 * 3_600_000,
) -> list[dict[str, Any]]:
    """``n`` payments events over ``customers``/``merchants`` (uniform), event times spread
    over the ``span_ms`` before ``now_ms``."""
    rng = random.Random(seed)
    return [
        {
            "transaction_id": f"t{i}",
            "customer_id": f"c{rng.randrange(customers):05d}",
            "merchant_id": f"m{rng.randrange(merchants):04d}",
            "amount": round(rng.uniform(0.5, 900.0), 2),
            "currency": rng.choice(("USD", "EUR", "GBP", "JPY")),
            "country": rng.choice(("DE", "FR", "US", "GB")),
            "card_present": rng.random() < 0.4,
            "ts": now_ms - rng.randrange(span_ms),
        }
        for i in range(n)
    ]


def records(store: FeatureStore, rows: Sequence[dict[str, Any]]) -> list[SourceRecord]:
    codec = SourceCodec(store.plan.sources["transactions"])
    offsets = [0] * PARTITIONS
    out = []
    for row in rows:
        key = encode_key([row["customer_id"]])
        p = partition_for(key, PARTITIONS)
        out.append(SourceRecord(topic="transactions", partition=p, offset=offsets[p], key=key,
                                value=codec.encode(row)))  # fmt: skip
        offsets[p] += 1
    return out


class _Steps:
    """``--steps``: wall time and the calling thread's CPU time of each step of
    ``BatchProcessor.process``, summed over the timed batches (wrapping the processor's
    methods and its native core's calls). Wall minus CPU is waiting: on Redis (load, write)
    or on the event log's writer threads and their fsyncs (append)."""

    NAMES = (
        ("decode", "decode and validate (native) + batch bookkeeping"),
        ("transforms", "batch transforms: the engine's part (the frame, copies, columns out)"),
        ("user", "batch transforms: the user's functions (pandas)"),
        ("prepare", "native prepare (entities, inputs)"),
        ("load", "state load from Redis (+ watermark read)"),
        ("apply", "native apply (fold, evict, encode)"),
        ("write", "Redis write (script chunks, fences, watermarks)"),
        ("append", "event-log append (write + fsync)"),
    )

    def __init__(self, core: Any) -> None:
        self.spent: dict[str, float] = dict.fromkeys((n for n, _ in self.NAMES), 0.0)
        self.cpu: dict[str, float] = dict.fromkeys(self.spent, 0.0)  # this thread's CPU
        for name, attr in (("transforms", "_fed"), ("load", "_load"), ("write", "_write"),
                           ("append", "_append")):  # fmt: skip
            setattr(core, attr, self._timed(name, getattr(core, attr)))
        for view in core.views:  # the user's functions, timed apart from the engine's part
            if view.batch_transform is not None:
                object.__setattr__(
                    view, "batch_transform", self._timed("user", view.batch_transform)
                )
        decode = core.decode

        def untimed_transforms(records: Any, *, transforms: bool = True) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            out = decode(records, transforms=False)
            self.spent["decode"] += time.perf_counter() - t0
            self.cpu["decode"] += time.thread_time() - c0
            if transforms:
                out.fed = core._fed(out.kept)
            return out

        core.decode = untimed_transforms
        native = core._core
        steps = self

        class Native:
            def __getattr__(self, name: str) -> Any:
                got = getattr(native, name)
                return steps._timed(name, got) if name in ("prepare", "apply") else got

        core._core = Native()

    def _timed(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] += time.perf_counter() - t0
                self.cpu[name] += time.thread_time() - c0

        return timed

    def report(self, batches: int, total_s: float, cpu_s: float) -> dict[str, tuple[float, float]]:
        """Per step: (wall ms, this thread's CPU ms) per batch."""
        ms = {name: (self.spent[name] / batches * 1e3, self.cpu[name] / batches * 1e3)
              for name, _ in self.NAMES}  # fmt: skip
        ms["transforms"] = tuple(t - u for t, u in zip(ms["transforms"], ms["user"], strict=True))  # type: ignore[assignment]
        ms["rest"] = (total_s / batches * 1e3 - sum(w for w, _ in ms.values()),
                      cpu_s / batches * 1e3 - sum(c for _, c in ms.values()))  # fmt: skip
        ms["total"] = (total_s / batches * 1e3, cpu_s / batches * 1e3)
        return ms


class _NoLetters:
    def send(self, letters: Sequence[Any]) -> None:
        raise AssertionError(f"benchmark events were refused: {letters[:1]}")


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def commandstats(client: Any) -> dict[str, tuple[int, int]]:
    """``INFO commandstats``: (calls, µs) per command (scripts' inner calls included)."""
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in client.info("commandstats").items()}  # fmt: skip


def run(
    kind: str,
    n: int,
    batch: int,
    profile: bool,
    merged: bool = True,
    recovery: bool = False,
    precheck: bool = True,
    keep_merged: bool | None = None,
    steps: bool = False,
    profile_sort: str = "tottime",
) -> dict[str, Any]:
    """``merged``: the re-keyed views on the merge-on-write layout (the default), else per
    partition; ``recovery``: a ``StateRecovery`` wired in (watermarks swapped and checked);
    ``precheck`` False: without the merged batches' watermark read before the write;
    ``keep_merged``: the sole owner keeps merged entries across batches (None: the default,
    ``SKEWLESS_WORKER_KEEP_MERGED``)."""
    from connectors.eventlog import EventLogReader, EventLogWriter
    from connectors.redis_store import RedisOnlineStore
    from engine.stream.ownership import Ownership
    from engine.stream.recovery import StateRecovery

    with tempfile.TemporaryDirectory(prefix="sk-core-") as tmp:
        environ = {"SKEWLESS_ONLINE_MERGE_REKEYED_VIEWS": "true" if merged else "false"}
        store = FeatureStore.from_repo(make_repo(kind, Path(tmp)), environ=environ)
        online = RedisOnlineStore.from_config(store.config)
        client = online._client  # the benchmark reads the server's INFO
        client.flushdb()
        source = store.plan.sources["transactions"]
        log = EventLogWriter(store.config.event_log_root, "transactions", dict(source.schema))
        own = Ownership(online, group="bench_core", topic="transactions", log=log)
        root = store.config.event_log_root
        heal = (StateRecovery(store.plan, EventLogReader(root), online, log_root=root,
                              clock=lambda: time.time_ns() // 1_000_000)
                if recovery else None)  # fmt: skip
        core = BatchProcessor(store.plan, "transactions", online=online, log=log,
                              dead=_NoLetters(), ownership=own, recovery=heal,
                              keep_merged=keep_merged)  # fmt: skip
        core.set_source_partitions(PARTITIONS)  # as the Kafka runtime does: a sole owner
        if not precheck:  # the A/B switch: no watermark read with the merged hashes
            core._merged_slots = lambda kept: []  # type: ignore[method-assign]
        core.assign(range(PARTITIONS), 1)
        now_ms = time.time_ns() // 1_000_000
        recs = records(store, events(n, 7, now_ms))
        batches = [recs[i : i + batch] for i in range(0, len(recs), batch)]
        core.process(batches[0])  # warm-up: scripts loaded, epochs taken
        timer = _Steps(core) if steps else None
        rest = batches[1:]
        events_timed = sum(len(b) for b in rest)
        r0 = redis_cpu(client)
        s0 = commandstats(client)
        written = 0
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.perf_counter()
        t0 = time.thread_time()
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)  # CPU time: the machine is shared
            profiler.enable()
        for b in rest:
            written += core.process(b).entities_written
        if timer is not None:
            result_steps = timer.report(len(rest), time.perf_counter() - w0,
                                        time.thread_time() - t0)  # fmt: skip
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - w0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        r1 = redis_cpu(client)
        s1 = commandstats(client)
        calls = {name: (c - s0.get(name, (0, 0))[0], u - s0.get(name, (0, 0))[1])
                 for name, (c, u) in s1.items() if c > s0.get(name, (0, 0))[0]}  # fmt: skip
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        redis_s = r1 - r0
        result = {
            "defs": kind,
            "events": events_timed,
            "batch": batch,
            "wall_s": wall,
            "worker_cpu_s": cpu,
            "redis_cpu_s": redis_s,
            "events_per_worker_cpu_s": events_timed / cpu,
            "events_per_s_wall": events_timed / wall,
            "worker_us_per_event": cpu / events_timed * 1e6,
            "redis_us_per_event": redis_s / events_timed * 1e6,
            "redis_share": redis_s / (redis_s + cpu),
            "entities_written": written,
            "commandstats": calls,
        }
        if timer is not None:
            result["steps"] = result_steps
        if profiler is not None:
            import io
            import pstats

            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats(profile_sort).print_stats(25)
            result["profile"] = out.getvalue()
            # the native calls' own time (no Python below them), per event
            result["native_us_per_event"] = {
                name.removeprefix("<method ").removesuffix(" objects>"): row[2] / events_timed * 1e6
                for (_, _, name), row in stats.stats.items()  # type: ignore[attr-defined]
                if "engine._native" in name and row[2] > 0
            }
        client.flushdb()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--defs", choices=("example", "count"), default="example")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-sort", default="tottime",
                        help="the profile's order (pstats: tottime, cumulative, ...)")  # fmt: skip
    parser.add_argument("--steps", action="store_true",
                        help="wall and CPU ms per batch of each step of BatchProcessor.process")  # fmt: skip
    parser.add_argument("--native", metavar="PATH",
                        help="an engine/_native*.so build to run instead of the installed one")  # fmt: skip
    parser.add_argument("--merged", type=int, metavar="ROUNDS", default=0,
                        help="compare the per-partition and the merge-on-write layout of the "
                        "re-keyed views (online.merge_rekeyed_views), alternating, ROUNDS each")  # fmt: skip
    parser.add_argument("--keep-merged", type=int, metavar="ROUNDS", default=0,
                        help="compare a sole owner keeping its merge-on-write entries across "
                        "batches with reloading them every batch, alternating, ROUNDS each")  # fmt: skip
    parser.add_argument("--recovery", action="store_true",
                        help="wire lost-state detection in, as the runtimes do")  # fmt: skip
    parser.add_argument("--lua-body", metavar="PATH", type=Path,
                        help="a variant of the write script's body (redis_store._WRITE_BODY_LUA) "
                        "to run instead of the shipped one")  # fmt: skip
    args = parser.parse_args()
    if args.lua_body:
        from connectors import redis_store

        redis_store._WRITE_LUA = "\n" + redis_store._FENCE_LUA + args.lua_body.read_text()
    if args.keep_merged:
        compare_keep_merged(args.defs, args.events, args.batch, args.keep_merged, args.recovery)
        return
    if args.merged:
        compare_layouts(args.defs, args.events, args.batch, args.merged, args.recovery)
        return
    got = run(args.defs, args.events, args.batch, args.profile, recovery=args.recovery,
              steps=args.steps, profile_sort=args.profile_sort)  # fmt: skip
    print(f"{got['defs']} definitions, {got['events']:,} events in batches of {got['batch']:,}:")
    print(f"  worker: {got['worker_us_per_event']:.1f} µs CPU/event = "
          f"{got['events_per_worker_cpu_s']:,.0f} events per worker CPU-second")  # fmt: skip
    print(f"  redis:  {got['redis_us_per_event']:.1f} µs CPU/event "
          f"({got['redis_share']:.0%} of worker + redis CPU)")  # fmt: skip
    print(f"  wall:   {got['events_per_s_wall']:,.0f} events/s (worker and redis share 2 cores)")
    written = got["entities_written"]
    print(f"  entity writes: {written:,} ({written / got['events']:.2f} per event); "
          "Redis µs per entity write by command (calls per entity write):")  # fmt: skip
    for name, (calls, usec) in sorted(got["commandstats"].items(), key=lambda x: -x[1][1]):
        print(
            f"  {name:>12} {usec / max(written, 1):6.2f} µs ({calls / max(written, 1):.2f} calls)"
        )
    if args.native:
        print(f"  native: {sys.modules['engine._native'].__file__}")
    if "steps" in got:
        batches = got["events"] / got["batch"]
        print(f"  per batch of {got['batch']:,} records ({batches:,.0f} batches), "
              "wall ms / the loop thread's CPU ms:")  # fmt: skip
        labels = dict(_Steps.NAMES, rest="the rest (Python glue, stats, bookkeeping)",
                      total="total")  # fmt: skip
        for name, (ms, cpu) in got["steps"].items():
            print(f"  {ms:8.3f} / {cpu:6.3f} ms  {labels[name]}")
    for name, us in sorted(got.get("native_us_per_event", {}).items(), key=lambda x: -x[1]):
        print(f"  {us:7.2f} µs/event in {name}")
    if "profile" in got:
        print(got["profile"])


def _alternating(
    variants: dict[str, Callable[[], dict[str, Any]]], rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """Each variant's figures, ``rounds`` runs each, one of every variant a round, the order
    rotating round by round (the machine is shared: no variant always runs first)."""
    names = list(variants)
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            got[name].append(variants[name]())
    return got


def _heading(kind: str, n: int, batch: int, rounds: int, recovery: bool) -> None:
    print(f"{kind} definitions, {n:,} events in batches of {batch:,}, best of {rounds} rounds"
          f"{', lost-state detection on' if recovery else ''}:")  # fmt: skip


def _best(runs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The run of least worker CPU per event, and the least Redis CPU per event of any run."""
    return (
        min(runs, key=lambda g: g["worker_us_per_event"]),
        min(g["redis_us_per_event"] for g in runs),
    )


def compare_layouts(kind: str, n: int, batch: int, rounds: int, recovery: bool = False) -> None:
    """Worker and Redis CPU per event with the re-keyed views per partition and merged (and,
    with ``recovery``, merged without the pre-write watermark read), the variants rotating
    in one process; the best round of each."""
    variants = [("per partition", False, True), ("merge-on-write", True, True)]
    if recovery:
        variants.append(("merged, no check", True, False))
    got = _alternating(
        {
            name: functools.partial(
                run, kind, n, batch, False, merged=merged, recovery=recovery, precheck=precheck
            )
            for name, merged, precheck in variants
        },
        rounds,
    )
    _heading(kind, n, batch, rounds, recovery)
    best = {}
    for name, runs in got.items():
        b, redis = _best(runs)
        best[name] = (b["worker_us_per_event"], redis)
        each = ", ".join(f"{g['worker_us_per_event']:.1f}" for g in runs)
        print(f"  {name:<16} worker {b['worker_us_per_event']:6.1f} µs CPU/event "
              f"({b['events_per_worker_cpu_s']:,.0f}/CPU-s), redis {redis:5.1f} µs CPU/event; "
              f"rounds: {each}")  # fmt: skip
    base = best["per partition"]
    for name, (worker, redis) in best.items():
        if name != "per partition":
            print(f"  {name} / per partition: worker {worker / base[0]:.2f}x, "
                  f"redis {redis / base[1]:.2f}x")  # fmt: skip


def compare_keep_merged(kind: str, n: int, batch: int, rounds: int, recovery: bool) -> None:
    """Worker and Redis CPU per event of a sole owner that reloads its merge-on-write
    entries every batch (the rule for several workers) and one that keeps them cached across
    batches, alternating in one process; the best round of each."""
    variants = [("reload each batch", False), ("keep across batches", True)]
    got = _alternating(
        {
            name: functools.partial(run, kind, n, batch, False, recovery=recovery, keep_merged=keep)
            for name, keep in variants
        },
        rounds,
    )
    _heading(kind, n, batch, rounds, recovery)
    best = {}
    for name, runs in got.items():
        b, redis = _best(runs)
        hgetall = min(g["commandstats"].get("hgetall", (0, 0))[0] for g in runs)
        best[name] = (b["worker_us_per_event"], redis)
        each = ", ".join(f"{g['worker_us_per_event']:.1f}/{g['redis_us_per_event']:.1f}"
                         for g in runs)  # fmt: skip
        print(f"  {name:<20} worker {b['worker_us_per_event']:6.1f} µs CPU/event, redis "
              f"{redis:5.1f} µs CPU/event, {hgetall:,} HGETALLs; rounds (worker/redis): {each}")  # fmt: skip
    (w0, r0), (w1, r1) = best["reload each batch"], best["keep across batches"]
    print(f"  keep / reload, best rounds: worker {w1 / w0:.2f}x, redis {r1 / r0:.2f}x, "
          f"worker + redis {(w1 + r1) / (w0 + r0):.2f}x")  # fmt: skip
    # each round's keep run against the reload run next to it (the machine is shared)
    pairs = sorted(
        (k["worker_us_per_event"] + k["redis_us_per_event"])
        / (o["worker_us_per_event"] + o["redis_us_per_event"])
        for k, o in zip(got["keep across batches"], got["reload each batch"], strict=True)
    )
    print(f"  keep / reload, worker + redis, per round: "
          f"{', '.join(f'{x:.2f}x' for x in pairs)} (median {pairs[len(pairs) // 2]:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
