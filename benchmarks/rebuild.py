"""Rebuild-online benchmark: refill the example definitions' online state from a 1M-event log.

``skewless rebuild-online`` replays the event log through the native core (``Replay``,
``native/core/src/replay.rs``) and writes every entity's tiles to Redis. This script
imports ``--events`` generated payments (the example source's schema, ``engine.demo_data``)
into a fresh log, then rebuilds each of the four example views into Redis database
``--db`` and reports entities written per second and log records replayed per second,
beside Feast's ``materialize`` figure the issue quotes for this machine (15.6k entities/s;
Feast is not run here).

``--compare`` is the A/B run: per view and round, the rebuild as it was before the native
``Replay`` (``OnlineCore.replay`` fed a file at a time from Python, writes built as Python
objects, partitions one after the other: ``_legacy_rebuild_view`` below) and the current
one, interleaved, at the same ``now``; it checks that both leave Redis byte-identical
(every key, field, value and expiry time) and reports both speeds and the Redis server's
CPU seconds.

``--one-pass`` is the A/B of the whole rebuild in one process: per round, every view rebuilt
alone as before ``rebuild_views`` (a view with user code one partition at a time, the
allocator's default purge delay), every view alone with today's ``rebuild_view``, and all
views in one pass (``rebuild_views``) with the allocator's default purge delay and with the
rebuild's; all must leave Redis byte-identical.

``--against DIR`` is the A/B against an older checkout (``git archive <commit> | tar -x -C
DIR`` and its ``engine/_native`` built there): per round, DIR's code rebuilds every view one
by one (``--before one-pass``: in one pass too) and this checkout rebuilds all of them in one
pass, each in a child process, taking turns going first, at the same ``now``; both must
leave Redis byte-identical. ``--views a,b`` rebuilds only those views. Entities per second
are this checkout's count of entities written for both sides (before the one-pass merged
views, a merged view counted one write per entity and log file).

Usage (from the repo root; Redis on 127.0.0.1:6379 unless ``--redis-url`` or
``SKEWLESS_BENCH_REDIS_URL`` says otherwise)::

    .venv/bin/python benchmarks/rebuild.py                 # 1M events, 100k customers
    .venv/bin/python benchmarks/rebuild.py --events 200000 # quicker
    .venv/bin/python benchmarks/rebuild.py --compare --rounds 2
    .venv/bin/python benchmarks/rebuild.py --one-pass --rounds 3
    .venv/bin/python benchmarks/rebuild.py --against /tmp/base --rounds 4
    .venv/bin/python benchmarks/rebuild.py --against /tmp/base --before one-pass \
        --views merchant_risk --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from engine import FeatureStore  # noqa: E402
from engine.demo_data import payments  # noqa: E402

FEAST_MATERIALIZE_ENTITIES_PER_S = 15_600  # issue 10: measured on this machine kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--merchants", type=int, default=5_000)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--db", type=int, default=8, help="Redis database to fill (flushed)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--redis-url", default=os.environ.get("SKEWLESS_BENCH_REDIS_URL",
                    "redis://127.0.0.1:6379"), help="Redis server (no database part; "
                    "env SKEWLESS_BENCH_REDIS_URL)")  # fmt: skip
    ap.add_argument("--compare", action="store_true",
                    help="A/B: the pre-Replay rebuild vs the current one, checked identical")  # fmt: skip
    ap.add_argument("--one-pass", action="store_true",
                    help="A/B: each view rebuilt alone vs all views in one pass "
                         "(rebuild_views), checked identical")  # fmt: skip
    ap.add_argument("--against", metavar="DIR",
                    help="A/B: the rebuild of every view, one by one, by the checkout in DIR "
                         "(an older commit, its engine/_native built) vs all views in one pass "
                         "by this one; each in a child process, checked identical")  # fmt: skip
    ap.add_argument("--before", choices=("alone", "one-pass"), default="alone",
                    help="--against: DIR rebuilds the views one by one (default) or in one "
                         "pass, as this checkout does")  # fmt: skip
    ap.add_argument("--views", help="--against: the views to rebuild, comma-separated "
                    "(default: every view)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of --compare / --one-pass / --against")  # fmt: skip
    args = ap.parse_args()
    base = args.redis_url.rstrip("/")
    work = Path(tempfile.mkdtemp(prefix="skewless-rebuild-"))
    try:
        repo = work / "repo"
        shutil.copytree(REPO / "definitions", repo)
        (repo / "skewless.yaml").write_text(
            f"project:\n  name: rebuild_bench\nkafka:\n  partitions: 4\n"
            f"redis:\n  url: {base}/{args.db}\n"
            f"event_log:\n  root: {work / 'log'}\n"
        )
        now = time.time_ns() // 1_000_000
        start = now - int(args.days * 86_400_000)
        frame = payments(args.events, customers=args.customers, merchants=args.merchants,
                         days=args.days, seed=args.seed, start_ms=start)  # fmt: skip
        store = FeatureStore.from_repo(repo)
        t0 = time.perf_counter()
        store.import_events("transactions", frame)
        imported = time.perf_counter() - t0
        print(f"[rebuild] imported {len(frame):,} events in {imported:.1f} s", flush=True)
        import redis

        client = redis.Redis.from_url(f"{base}/{args.db}")
        client.flushdb()
        if args.compare:
            return _compare(store, client, args)
        if args.one_pass:
            return _one_pass(store, client, args)
        if args.against:
            return _against(store, repo, client, args)
        rows = []
        total_entities = 0
        total_seconds = 0.0
        total_cpu = 0.0
        for name in sorted(store.plan.views):
            c0, w0 = time.process_time(), time.perf_counter()
            outcome = store.rebuild_online(name)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            written = outcome.result.entities_written
            total_entities += written
            total_seconds += wall
            total_cpu += cpu
            rows.append((name, outcome.result.records, written, wall, cpu))
            print(f"[rebuild] {name}: {written:,} entities from {outcome.result.records:,} "
                  f"records in {wall:.2f} s ({written / wall:,.0f} entities/s, "
                  f"{outcome.result.records / wall:,.0f} records/s)", flush=True)  # fmt: skip
        client.flushdb()  # `skewless rebuild-online --all`: every view in one pass
        c0, w0 = time.process_time(), time.perf_counter()
        outcomes = store.rebuild_online_views(sorted(store.plan.views))
        one_wall, one_cpu = time.perf_counter() - w0, time.process_time() - c0
        one_entities = sum(o.result.entities_written for o in outcomes)
        rate = one_entities / one_wall
        print()
        print(f"Rebuild-online — {args.events:,} events, {len(store.plan.views)} views "
              f"(the example definitions)")  # fmt: skip
        print(f"  {'view':<20} {'records':>10} {'entities':>10} {'wall s':>8} {'entities/s':>12}")
        for name, records, written, wall, _ in rows:
            print(
                f"  {name:<20} {records:>10,} {written:>10,} {wall:>8.2f} {written / wall:>12,.0f}"
            )
        print(
            f"  all views, one by one: {total_entities:,} entities in {total_seconds:.2f} s "
            f"wall ({total_cpu:.2f} CPU-s): {total_entities / total_seconds:,.0f} entities/s"
        )
        print(f"  all views in one pass (rebuild-online --all): {one_entities:,} entities in "
              f"{one_wall:.2f} s wall ({one_cpu:.2f} CPU-s): {rate:,.0f} entities/s")  # fmt: skip
        ratio = rate / FEAST_MATERIALIZE_ENTITIES_PER_S
        print(f"  vs Feast materialize (15.6k entities/s, quoted): {ratio:.1f}x   "
              f"target >= 5x: {'PASS' if ratio >= 5 else 'FAIL'}")  # fmt: skip
        out = REPO / "benchmarks" / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / "rebuild.json").write_text(json.dumps({
            "events": args.events, "views": [
                {"view": n, "records": r, "entities": w, "wall_s": s, "cpu_s": c}
                for n, r, w, s, c in rows],
            "one_pass": {"entities": one_entities, "wall_s": one_wall, "cpu_s": one_cpu},
            "entities_per_s": rate, "feast_ratio": ratio}, indent=2))  # fmt: skip
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.environ.pop("SKEWLESS_EVENT_LOG", None)


# -- the A/B run -------------------------------------------------------------------------------


def _compare(store: Any, client: Any, args: argparse.Namespace) -> int:
    """Per round and view: the legacy rebuild, then the current one, each into the flushed
    database at the same ``now``; both must leave it byte-identical."""
    from connectors.eventlog import EventLogReader
    from engine.rebuild import rebuild_view

    online = store.online_store
    log = EventLogReader(store.config.event_log_root)
    ways = {"before": _legacy_rebuild_view, "after": rebuild_view}
    # (view, way) → [(records, entities, wall s, CPU s, Redis CPU s)] over the rounds
    runs: dict[tuple[str, str], list[tuple[int, int, float, float, float]]] = {}
    identical = True
    for r in range(args.rounds):
        for name in sorted(store.plan.views):
            now_ms = time.time_ns() // 1_000_000
            digests = {}
            for way, rebuild in ways.items():
                client.flushdb()
                r0 = _redis_cpu(client)
                c0, w0 = time.process_time(), time.perf_counter()
                result = rebuild(store.plan, name, log, online, now_ms=now_ms)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                runs.setdefault((name, way), []).append(
                    (result.records, result.entities_written, wall, cpu, _redis_cpu(client) - r0)
                )
                digests[way] = _digest(client)
                print(f"[rebuild] round {r + 1} {name} {way}: {result.entities_written:,} "
                      f"entities in {wall:.2f} s wall, {cpu:.2f} CPU-s", flush=True)  # fmt: skip
            same = digests["before"] == digests["after"]
            identical &= same
            print(f"[rebuild] round {r + 1} {name}: {digests['after'][0]:,} keys, "
                  f"{'identical' if same else 'DIFFERENT'}", flush=True)  # fmt: skip
    client.flushdb()
    print()
    print(f"Rebuild-online A/B — {args.events:,} events, {len(store.plan.views)} views, "
          f"{args.rounds} round(s), best wall time of each")  # fmt: skip
    print(f"  {'view':<18} {'records':>9} {'entities':>9} {'before s':>9} {'after s':>8} "
          f"{'before CPU-s':>12} {'after CPU-s':>11} {'before ent/s':>12} {'after ent/s':>11} "
          f"{'after rec/s':>11} {'x':>5}")  # fmt: skip
    totals = {"before": [0, 0.0, 0.0, 0.0], "after": [0, 0.0, 0.0, 0.0]}
    views = []
    for name in sorted(store.plan.views):
        best = {way: min(runs[(name, way)], key=lambda run: run[2]) for way in ways}
        records, entities = best["after"][0], best["after"][1]
        for way in ways:
            _, written, wall, cpu, rcpu = best[way]
            totals[way][0] += written
            totals[way][1] += wall
            totals[way][2] += cpu
            totals[way][3] += rcpu
        b, a = best["before"][2], best["after"][2]
        print(f"  {name:<18} {records:>9,} {entities:>9,} {b:>9.2f} {a:>8.2f} "
              f"{best['before'][3]:>12.2f} {best['after'][3]:>11.2f} {entities / b:>12,.0f} "
              f"{entities / a:>11,.0f} {records / a:>11,.0f} {b / a:>5.1f}")  # fmt: skip
        views.append({"view": name, "records": records, "entities": entities,
                      "before": dict(zip(("wall_s", "cpu_s", "redis_cpu_s"), best["before"][2:],
                                         strict=True)),
                      "after": dict(zip(("wall_s", "cpu_s", "redis_cpu_s"), best["after"][2:],
                                        strict=True))})  # fmt: skip
    for way in ways:
        entities, wall, cpu, rcpu = totals[way]
        print(f"  all views {way:<6}: {entities:,} entities in {wall:.2f} s wall "
              f"({cpu:.2f} CPU-s here, {rcpu:.2f} CPU-s in Redis): "
              f"{entities / wall:,.0f} entities/s = {entities / wall / FEAST_MATERIALIZE_ENTITIES_PER_S:.1f}x "
              f"Feast materialize (15.6k/s, quoted)")  # fmt: skip
    print(f"  speed-up: {totals['before'][1] / totals['after'][1]:.2f}x wall, "
          f"{totals['before'][2] / totals['after'][2]:.2f}x CPU; Redis state "
          f"{'byte-identical' if identical else 'DIFFERENT'} in every round")  # fmt: skip
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rebuild_compare.json").write_text(json.dumps(
        {"events": args.events, "rounds": args.rounds, "views": views,
         "identical": identical}, indent=2))  # fmt: skip
    return 0 if identical else 1


def _one_pass(store: Any, client: Any, args: argparse.Namespace) -> int:
    """Per round: every view rebuilt alone, one after the other (``rebuild_view``), and all
    views in one pass over the log (``rebuild_views``), each into the flushed database at
    the same ``now`` (the two ways take turns going first); both must leave it
    byte-identical."""
    from connectors.eventlog import EventLogReader
    from engine import rebuild as rebuild_module
    from engine.rebuild import rebuild_view, rebuild_views

    online = store.online_store
    log = EventLogReader(store.config.event_log_root)
    names = sorted(store.plan.views)

    def alone(now_ms: int) -> tuple[int, dict[str, tuple[float, float]]]:
        entities, per_view = 0, {}
        for name in names:
            c0, w0 = time.process_time(), time.perf_counter()
            entities += rebuild_view(store.plan, name, log, online, now_ms=now_ms).entities_written
            per_view[name] = (time.perf_counter() - w0, time.process_time() - c0)
        return entities, per_view

    def one_pass(now_ms: int) -> tuple[int, dict[str, tuple[float, float]]]:
        results = rebuild_views(store.plan, names, log, online, now_ms=now_ms)
        return sum(r.entities_written for r in results), {}

    def as_before(now_ms: int) -> tuple[int, dict[str, tuple[float, float]]]:
        """Each view alone as the rebuild was before ``rebuild_views``: a view with user
        code one partition at a time, the allocator's default purge delay."""
        workers, delay = rebuild_module._workers, rebuild_module._PURGE_DELAY_MS
        rebuild_module._PURGE_DELAY_MS = None
        entities, per_view = 0, {}
        try:
            for name in names:
                view = store.plan.views[name]
                user = view.transform or view.filter or view.batch_transform
                rebuild_module._workers = (lambda partitions: 1) if user else workers
                c0, w0 = time.process_time(), time.perf_counter()
                result = rebuild_view(store.plan, name, log, online, now_ms=now_ms)
                entities += result.entities_written
                per_view[name] = (time.perf_counter() - w0, time.process_time() - c0)
        finally:
            rebuild_module._workers, rebuild_module._PURGE_DELAY_MS = workers, delay
        return entities, per_view

    def one_pass_default_purge(now_ms: int) -> tuple[int, dict[str, tuple[float, float]]]:
        delay = rebuild_module._PURGE_DELAY_MS
        rebuild_module._PURGE_DELAY_MS = None
        try:
            return one_pass(now_ms)
        finally:
            rebuild_module._PURGE_DELAY_MS = delay

    ways = {"before": as_before, "alone": alone, "one pass, purge 1 s": one_pass_default_purge,
            "one pass": one_pass}  # fmt: skip
    runs: dict[str, list[tuple[int, float, float, float, dict[str, tuple[float, float]]]]] = {}
    identical = True
    for r in range(args.rounds):
        now_ms = time.time_ns() // 1_000_000
        digests = {}
        order = list(ways) if r % 2 == 0 else list(reversed(ways))  # each way first in turn
        for way in order:
            client.flushdb()
            r0 = _redis_cpu(client)
            c0, w0 = time.process_time(), time.perf_counter()
            entities, per_view = ways[way](now_ms)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            rcpu = _redis_cpu(client) - r0
            runs.setdefault(way, []).append((entities, wall, cpu, rcpu, per_view))
            digests[way] = _digest(client)
            print(f"[rebuild] round {r + 1} {way}: {entities:,} entities in {wall:.2f} s wall, "
                  f"{cpu:.2f} CPU-s, Redis {rcpu:.2f} CPU-s: {entities / wall:,.0f} entities/s",
                  flush=True)  # fmt: skip
        same = len(set(digests.values())) == 1
        identical &= same
        print(f"[rebuild] round {r + 1}: {digests['one pass'][0]:,} keys, "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)  # fmt: skip
    client.flushdb()
    print()
    print(f"Rebuild-online, all {len(names)} views — {args.events:,} events, {args.rounds} "
          f"round(s), best wall time of each way")  # fmt: skip
    best = {way: min(runs[way], key=lambda run: run[1]) for way in ways}
    for way in ("before", "alone"):
        for name, (wall, cpu) in best[way][4].items():
            print(f"  {way} {name:<18}: {wall:.2f} s wall, {cpu:.2f} CPU-s")
    for way in ways:
        entities, wall, cpu, rcpu, _ = best[way]
        print(f"  {way:<19}: {entities:,} entities in {wall:.2f} s wall ({cpu:.2f} CPU-s here, "
              f"{rcpu:.2f} CPU-s in Redis): {entities / wall:,.0f} entities/s = "
              f"{entities / wall / FEAST_MATERIALIZE_ENTITIES_PER_S:.1f}x Feast materialize")  # fmt: skip
    a, b = best["before"], best["one pass"]
    print(f"  speed-up before -> one pass: {a[1] / b[1]:.2f}x wall, {a[2] / b[2]:.2f}x CPU; "
          f"Redis state "
          f"{'byte-identical' if identical else 'DIFFERENT'} in every round")  # fmt: skip
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rebuild_one_pass.json").write_text(json.dumps(
        {"events": args.events, "rounds": args.rounds, "identical": identical,
         "runs": {way: [{"entities": e, "wall_s": w, "cpu_s": c, "redis_cpu_s": rc,
                         "per_view": pv} for e, w, c, rc, pv in runs[way]] for way in ways}},
        indent=2))  # fmt: skip
    return 0 if identical else 1


_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from connectors.eventlog import EventLogReader
from engine import FeatureStore
from engine import rebuild
store = FeatureStore.from_repo(sys.argv[2])
now_ms = int(sys.argv[3])
names = sys.argv[5].split(",") if sys.argv[5] else sorted(store.plan.views)
log, online = EventLogReader(store.config.event_log_root), store.online_store
per_view = {}
c0, w0 = time.process_time(), time.perf_counter()
if sys.argv[4] == "one pass":
    entities = sum(r.entities_written
                   for r in rebuild.rebuild_views(store.plan, names, log, online, now_ms=now_ms))
else:
    entities = 0
    for name in names:
        c1, w1 = time.process_time(), time.perf_counter()
        entities += rebuild.rebuild_view(store.plan, name, log, online,
                                         now_ms=now_ms).entities_written
        per_view[name] = (time.perf_counter() - w1, time.process_time() - c1)
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
print(json.dumps({"entities": entities, "wall_s": wall, "cpu_s": cpu, "per_view": per_view,
                  "native": rebuild._native.__file__}))
"""


def _against(store: Any, repo: Path, client: Any, args: argparse.Namespace) -> int:
    """Per round: every view rebuilt one by one by the checkout in ``--against`` and all
    views in one pass by this checkout, each in a child process (its own build of
    ``engine._native``) into the flushed database at the same ``now``, taking turns going
    first; both must leave it byte-identical."""
    import subprocess

    before = "one pass" if args.before == "one-pass" else "alone"
    ways = {"before": (str(Path(args.against).resolve()), before),
            "after": (str(REPO), "one pass")}  # fmt: skip
    names = args.views.split(",") if args.views else sorted(store.plan.views)
    runs: dict[str, list[dict[str, Any]]] = {}
    identical = True
    for r in range(args.rounds):
        now_ms = time.time_ns() // 1_000_000
        digests = {}
        for way in list(ways) if r % 2 == 0 else list(reversed(ways)):
            root, mode = ways[way]
            client.flushdb()
            r0 = _redis_cpu(client)
            got = subprocess.run([sys.executable, "-c", _CHILD, root, str(repo), str(now_ms), mode,
                                  ",".join(names)],
                                 check=True, capture_output=True, text=True, cwd=root)  # fmt: skip
            run = json.loads(got.stdout.strip().splitlines()[-1])
            run["redis_cpu_s"] = _redis_cpu(client) - r0
            runs.setdefault(way, []).append(run)
            digests[way] = _digest(client)
            print(f"[rebuild] round {r + 1} {way} ({mode}, {run['native']}): "
                  f"{run['entities']:,} entities in {run['wall_s']:.2f} s wall, "
                  f"{run['cpu_s']:.2f} CPU-s, Redis {run['redis_cpu_s']:.2f} CPU-s", flush=True)  # fmt: skip
        same = digests["before"] == digests["after"]
        identical &= same
        print(f"[rebuild] round {r + 1}: {digests['after'][0]:,} keys, "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)  # fmt: skip
    client.flushdb()
    print()
    print(f"Rebuild-online of {', '.join(names)} — {args.events:,} events, "
          f"{args.rounds} round(s): before = {args.against} {before}, after = this "
          f"checkout in one pass; median of the rounds")  # fmt: skip

    def median(way: str, key: str) -> float:
        values = sorted(run[key] for run in runs[way])
        return values[len(values) // 2]

    for name in names if before == "alone" else []:
        walls = sorted(run["per_view"][name][0] for run in runs["before"])
        cpus = sorted(run["per_view"][name][1] for run in runs["before"])
        print(f"  before {name:<18}: {walls[len(walls) // 2]:.2f} s wall, "
              f"{cpus[len(cpus) // 2]:.2f} CPU-s")  # fmt: skip
    entities = runs["after"][0]["entities"]  # entity hashes (a merged view: not its marks)
    for way in ways:
        wall, cpu, rcpu = (median(way, k) for k in ("wall_s", "cpu_s", "redis_cpu_s"))
        print(f"  {way:<6}: {entities:,} entities (it counted {runs[way][0]['entities']:,}) in "
              f"{wall:.2f} s wall ({cpu:.2f} CPU-s here, "
              f"{rcpu:.2f} CPU-s in Redis): {entities / wall:,.0f} entities/s, "
              f"{entities / cpu:,.0f} per CPU-second = "
              f"{entities / wall / FEAST_MATERIALIZE_ENTITIES_PER_S:.1f}x Feast materialize")  # fmt: skip
    print(f"  speed-up: {median('before', 'wall_s') / median('after', 'wall_s'):.2f}x wall, "
          f"{median('before', 'cpu_s') / median('after', 'cpu_s'):.2f}x CPU; Redis state "
          f"{'byte-identical' if identical else 'DIFFERENT'} in every round")  # fmt: skip
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rebuild_against.json").write_text(json.dumps(
        {"events": args.events, "rounds": args.rounds, "against": args.against,
         "identical": identical, "runs": runs}, indent=2))  # fmt: skip
    return 0 if identical else 1


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _digest(client: Any) -> tuple[int, str]:
    """(keys, a hash of every key, field, value and absolute expiry) of the database."""
    h = hashlib.sha256()
    keys = sorted(client.scan_iter(count=1000))
    for at in range(0, len(keys), 1000):  # pipelined: one round trip per 1,000 keys
        chunk = keys[at : at + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.type(key)
        kinds = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for key, kind in zip(chunk, kinds, strict=True):
            if kind == b"hash":
                pipe.hgetall(key)
            else:
                pipe.get(key)
            pipe.pexpiretime(key)
        got = pipe.execute()
        for i, (key, kind) in enumerate(zip(chunk, kinds, strict=True)):
            value, expiry = got[2 * i], got[2 * i + 1]
            h.update(b"%d:%s" % (len(key), key))
            if kind == b"hash":
                for field, v in sorted(value.items()):
                    h.update(b"%d:%s%d:%s" % (len(field), field, len(v), v))
            else:
                h.update(b"%d:%s" % (len(value), value))
            h.update(b"@%d" % expiry)
    return len(keys), h.hexdigest()


# -- the rebuild before the native Replay (the A side of --compare) ----------------------------


def _legacy_rebuild_view(plan: Any, view_name: str, log: Any, store: Any, *, now_ms: int) -> Any:
    """``engine.rebuild.rebuild_view`` as it was before ``Replay``: per partition in turn,
    each log file decoded into pyarrow, filtered and handed to ``OnlineCore.replay`` from
    Python, the writes built as ``StateWrite`` objects and packed in Python."""
    import numpy as np
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs

    from engine import _native
    from engine.log_files import read_partition
    from engine.online import core_spec, write_of
    from engine.ports import Watermark
    from engine.processing import group_columns
    from engine.rebuild import RebuildResult
    from engine.watermarks import encode_watermark, watermark_key

    view = plan.views[view_name]
    source = plan.sources[view.source]

    def fold_file(core: Any, spec: Any, partition: int, data: bytes, high: int) -> Any:
        arrays, _ = _native.read_container(data, ["offset", "processed_at", "payload"])
        offsets = np.asarray(arrays["offset"], dtype=np.int64)
        if not len(offsets):
            return 0, None
        before = np.maximum.accumulate(np.concatenate([[high], offsets[:-1]]))
        keep = offsets > before
        if not keep.any():
            return 0, None
        mask = pa.array(keep)
        payload = {
            name.removeprefix("payload."): array.filter(mask) if isinstance(array, pa.Array)
            else [v for v, k in zip(array, keep, strict=True) if k]
            for name, array in arrays.items() if name.startswith("payload.")
        }  # fmt: skip
        columns = _native.columns_from_arrays(payload)
        kept_offsets = offsets[keep]
        raw_ts = np.asarray(payload[source.timestamp_field], dtype=np.int64)
        fed = {}
        if any(not group.native for group in spec.groups):
            payloads = columns.to_pylist()
            fed = {g: group_columns(group, spec.group_inputs[g], payloads)
                   for g, group in enumerate(spec.groups) if not group.native}  # fmt: skip
        core.prepare(
            np.full(len(kept_offsets), partition, dtype=np.int64).tobytes(),
            kept_offsets.tobytes(),
            (raw_ts // source.timestamp_divisor).tobytes(),
            columns,
            fed,
        )
        processed = np.asarray(arrays["processed_at"], dtype=np.int64)[keep]
        core.replay(processed.tobytes(), now_ms)
        return len(kept_offsets), int(kept_offsets.max())

    records = written = 0
    for partition in log.partitions(source.name):
        spec = core_spec([view])
        core = spec.new_core(1 << 62)
        last_offset = None

        def take(data: bytes, high: int) -> int:
            nonlocal records, last_offset
            taken, last = fold_file(core, spec, partition, data, high)  # noqa: B023
            records += taken
            if last is not None:
                last_offset = last
            return high if last is None else last

        read_partition(log, source.name, partition, take)
        writes = [write_of(raw) for _, raw in core.replay_writes(now_ms)]
        for start in range(0, len(writes), 2_000):
            batch = [w for w in writes[start : start + 2_000]
                     if w.expire_at_ms is None or w.expire_at_ms > now_ms]  # fmt: skip
            if batch:
                store.write(batch)
                written += len(batch)
        if last_offset is not None:
            store.write([], [Watermark(key=watermark_key(view, partition),
                                       value=encode_watermark(last_offset))])  # fmt: skip
    return RebuildResult(view=view_name, fingerprint=view.fingerprint, records=records,
                         entities_written=written)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
