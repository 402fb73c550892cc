"""Backfill benchmark: skewless point-in-time replay vs the same features in DuckDB SQL.

Generates ``--events`` events over ``--entities`` customers spread over ``--days`` days and
``--labels`` labels (customer, time) in random order, imports the events into the skewless
event log with ``FeatureStore.import_events`` (timed separately, cached), then in the same
run:

1. replays the log with ``FeatureStore.get_historical_features`` for the 12 features of
   ``benchmarks/defs_backfill`` (3 views) and reports events/s (log records replayed per
   second of wall time), labels/s and peak memory of the process tree;
2. computes the same 12 features with DuckDB SQL from a Parquet copy of the same events,
   exactly as DESIGN §3 defines them (window ``[ceil(t/H)*H - W, t)``), two ways:
   a range join + ``GROUP BY`` and ``RANGE`` window frames with per-row offsets;
3. checks that DuckDB and skewless agree (counts, min, max, count_distinct exactly; sums
   and means within a relative 1e-9: DuckDB adds doubles in floating point, skewless sums
   exactly and rounds once) and prints the time ratio skewless / fastest DuckDB query.

Each phase runs in its own process so its peak memory is its own (the import of 10M rows
must not count against the backfill). Results go to ``benchmarks/out/backfill.json`` and
``docs/img/backfill.png``; generated data is cached under ``benchmarks/out/backfill/``,
keyed by the parameters, so reruns skip generation and import.

Usage (from the repo root)::

    .venv/bin/python benchmarks/backfill.py --quick
    .venv/bin/python benchmarks/backfill.py --events 1000000 --entities 10000 --labels 100000
    .venv/bin/python benchmarks/backfill.py                 # 10M events, 100k entities, 1M labels
    .venv/bin/python benchmarks/backfill.py --events 1000000 --entities 10000 \\
        --labels 100000 --profile                           # cProfile of the replay, workers=1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFS = HERE / "defs_backfill"
OUT = HERE / "out"
CACHE = OUT / "backfill"
RESULTS_JSON = OUT / "backfill.json"
CHART = REPO / "docs" / "img" / "backfill.png"
SOURCE = "events"
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAY_MS = 86_400_000
MERCHANTS = 5_000
IMPORT_CHUNK = 1_000_000
GIB = 1 << 30
DATA_VERSION = 2  # bump when the generator changes: it keys the cache

# The 12 features, in output order: every aggregation of the three views.
FEATURES = [
    "customer_spend:amount_sum_1h",
    "customer_spend:amount_sum_1d",
    "customer_spend:amount_sum_7d",
    "customer_spend:amount_sum_30d",
    "customer_activity:amount_count_1h",
    "customer_activity:amount_count_1d",
    "customer_activity:amount_count_7d",
    "customer_activity:amount_mean_30d",
    "customer_extremes:amount_max_1d",
    "customer_extremes:amount_min_7d",
    "customer_extremes:merchant_id_count_distinct_7d",
    "customer_extremes:amount_count_lifetime",
]
# issue 10's targets
TARGET_EVENTS_PER_S = 2_000_000
TARGET_RSS_BYTES = 1 * GIB
TARGET_RATIO = 0.5


# ------------------------------------------------------------------------------------------
# parameters and the cache


@dataclass(frozen=True)
class Params:
    events: int
    entities: int
    labels: int
    days: int
    seed: int
    partitions: int

    @property
    def key(self) -> str:
        return (f"e{self.events}-n{self.entities}-l{self.labels}-d{self.days}"
                f"-s{self.seed}-p{self.partitions}-v{DATA_VERSION}")  # fmt: skip

    @property
    def folder(self) -> Path:
        return CACHE / self.key


def _use_log(folder: Path) -> None:
    """Point skewless at this folder's event log and state (env overrides, DESIGN §5)."""
    os.environ["SKEWLESS_EVENT_LOG"] = str(folder / "log")
    os.environ["SKEWLESS_STATE_DIR"] = str(folder / "state")


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _say(phase: str, text: str) -> None:
    print(f"[{_now()} {phase}] {text}", flush=True)


# ------------------------------------------------------------------------------------------
# memory: sampled sum over the process tree + getrusage peaks


def _pss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class TreeMemory:
    """Samples RSS (every ``interval`` s) and PSS (every 4th sample) of this process + children.

    RSS summed over forked workers counts copy-on-write pages shared with the parent once
    per process, so it over-states; PSS splits shared pages between the processes sharing
    them, so its sum is the tree's real footprint.
    """

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(pss=True)

    def sample(self, pss: bool) -> None:
        procs = [self._me]
        with contextlib.suppress(self._psutil.Error):
            procs += self._me.children(recursive=True)
        rss = pss_total = 0
        alive = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                alive += 1
            except self._psutil.Error:
                continue
            if pss:
                pss_total += _pss_bytes(p.pid) or 0
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, alive)
        if pss:
            self.peak_pss = max(self.peak_pss, pss_total)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            self.sample(pss=n % 4 == 0)
            n += 1


def _rusage_peaks() -> dict[str, int]:
    """ru_maxrss (bytes) of this process and of its largest waited-for child."""
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


# ------------------------------------------------------------------------------------------
# phase 1: generate events and labels, import the events into the log


def phase_generate(p: Params) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from connectors.eventlog import EventLogReader
    from engine import FeatureStore

    folder = p.folder
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _use_log(staging)
    store = FeatureStore.from_repo(DEFS)
    assert store.config.kafka_partitions == p.partitions, store.config.kafka_partitions

    t0 = time.perf_counter()
    rng = np.random.default_rng(p.seed)
    span = p.days * DAY_MS
    customers = np.array([f"c{i:07d}" for i in range(p.entities)], dtype=object)
    merchants = np.array([f"m{i:05d}" for i in range(MERCHANTS)], dtype=object)
    ts = np.sort(START_MS + rng.integers(0, span, p.events, dtype=np.int64))
    events = pd.DataFrame({
        "customer_id": customers[rng.integers(0, p.entities, p.events)],
        "amount": np.round(rng.lognormal(3.0, 1.0, p.events), 2),
        "merchant_id": merchants[rng.integers(0, MERCHANTS, p.events)],
        "ts": ts,
    })  # fmt: skip
    labels = pd.DataFrame({
        "label_id": np.arange(p.labels, dtype=np.int64),
        "customer_id": customers[rng.integers(0, p.entities, p.labels)],
        "event_timestamp": START_MS + rng.integers(0, span, p.labels, dtype=np.int64),
    })  # fmt: skip
    # Edge cases the agreement check must see: 2% of labels sit exactly on an event of
    # their customer (the event must not see itself), 2% on an hour and 1% on a day
    # boundary (tile edges of every hop in the definitions).
    n_tie, n_hour, n_day = p.labels // 50, p.labels // 50, p.labels // 100
    picked = rng.permutation(p.labels)[: n_tie + n_hour + n_day]
    tie, hour, day = np.split(picked, [n_tie, n_tie + n_hour])
    src = rng.integers(0, p.events, n_tie)
    labels.loc[tie, "customer_id"] = events["customer_id"].to_numpy()[src]
    labels.loc[tie, "event_timestamp"] = ts[src]
    stamps = labels["event_timestamp"].to_numpy()
    labels.loc[hour, "event_timestamp"] = stamps[hour] // 3_600_000 * 3_600_000
    labels.loc[day, "event_timestamp"] = stamps[day] // DAY_MS * DAY_MS
    events.to_parquet(staging / "events.parquet", index=False)
    labels.to_parquet(staging / "labels.parquet", index=False)
    generate_s = time.perf_counter() - t0
    _say("generate", f"{p.events:,} events, {p.labels:,} labels generated in {generate_s:.1f} s")

    t0 = time.perf_counter()
    done = 0
    for lo in range(0, p.events, IMPORT_CHUNK):
        chunk = events.iloc[lo : lo + IMPORT_CHUNK]
        store.import_events(SOURCE, chunk)
        done += len(chunk)
        el = time.perf_counter() - t0
        _say("import", f"{done:,}/{p.events:,} rows in the log, {el:.0f} s, "
                       f"{done / el:,.0f} rows/s")  # fmt: skip
    import_s = time.perf_counter() - t0
    reader = EventLogReader(os.environ["SKEWLESS_EVENT_LOG"])
    meta = {
        "generate_s": generate_s,
        "import_s": import_s,
        "import_rows_per_s": p.events / import_s,
        "log_records": reader.count(SOURCE),
        "log_bytes": reader.size_bytes(SOURCE),
        "log_partitions": len(reader.partitions(SOURCE)),
        "events_parquet_bytes": (staging / "events.parquet").stat().st_size,
    }
    assert meta["log_records"] == p.events, meta
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # the cache entry appears whole or not at all
    return meta


# ------------------------------------------------------------------------------------------
# phase 2: the skewless backfill


def _revision() -> dict[str, Any]:
    """The engine code this process runs: git HEAD plus a digest of uncommitted changes."""
    import hashlib

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return ""

    paths = ["engine", "connectors"]
    diff = git("diff", "HEAD", "--", *paths)
    return {
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "dirty_files": git("diff", "HEAD", "--name-only", "--", *paths).split(),
        "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
    }


def _load_labels(p: Params) -> Any:
    import pandas as pd

    return pd.read_parquet(p.folder / "labels.parquet")


def phase_skewless(p: Params, workers: int, profile: bool) -> dict[str, Any]:
    import gc

    from connectors.eventlog import EventLogReader
    from engine import FeatureStore

    revision = _revision()  # the engine modules were imported just above
    _use_log(p.folder)
    store = FeatureStore.from_repo(DEFS)
    labels = _load_labels(p)
    entity_df = labels[["customer_id", "event_timestamp"]]
    records = EventLogReader(store.config.event_log_root).count(SOURCE)
    partitions = len(EventLogReader(store.config.event_log_root).partitions(SOURCE))
    state = {"records": 0, "parts": 0}
    t0 = 0.0

    def progress(read: int, parts: int) -> None:
        state["records"] += read
        state["parts"] += parts
        el = time.perf_counter() - t0
        _say("skewless", f"partition {state['parts']}/{partitions} done, "
                         f"{state['records']:,}/{records:,} records, {el:.1f} s, "
                         f"{state['records'] / el:,.0f} records/s")  # fmt: skip

    _say(
        "skewless",
        f"engine at {revision['head']}"
        + (f" + uncommitted {revision['dirty_files']}" if revision["dirty_files"] else ""),
    )
    _say("skewless", f"backfill: {records:,} log records, {len(entity_df):,} labels, "
                     f"{len(FEATURES)} features, workers={workers}"
                     + (" (cProfile)" if profile else ""))  # fmt: skip
    gc.collect()
    load_before = os.getloadavg()[0]
    profiler = None
    if profile:
        import cProfile

        # the default (wall) timer: a CPU-time timer is a syscall here and triples the overhead
        profiler = cProfile.Profile()
    cpu0 = os.times()
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        out = store.get_historical_features(
            entity_df, FEATURES, mode="event_time", timestamp_column="event_timestamp",
            workers=workers, progress=progress,
        )  # fmt: skip
        if profiler is not None:
            profiler.disable()
        elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = sum(cpu1[:4]) - sum(cpu0[:4])  # user + system, this process and reaped workers
    peaks = _rusage_peaks()
    assert state["records"] == records, (state, records)
    result = {
        "engine_revision": revision,
        "workers": workers,
        "profiled": profile,
        "seconds": elapsed,
        "records": records,
        "labels": len(entity_df),
        "events_per_s": records / elapsed,
        "labels_per_s": len(entity_df) / elapsed,
        "cpu_seconds": cpu,
        "events_per_cpu_s": records / cpu,
        "peak_tree_rss_bytes": mem.peak_rss,
        "peak_tree_pss_bytes": mem.peak_pss,
        "peak_processes": mem.peak_processes,
        "ru_maxrss_self_bytes": peaks["self"],
        "ru_maxrss_children_bytes": peaks["children"],
        "ru_maxrss_max_bytes": max(peaks.values()),
        "loadavg_1m_before_after": [load_before, os.getloadavg()[0]],
    }
    _say("skewless", f"done in {elapsed:.1f} s: {result['events_per_s']:,.0f} events/s, "
                     f"{result['labels_per_s']:,.0f} labels/s, peak tree RSS "
                     f"{mem.peak_rss / GIB:.2f} GiB (PSS {mem.peak_pss / GIB:.2f} GiB)")  # fmt: skip
    if profiler is not None:
        import io
        import pstats

        stats_path = OUT / f"backfill-profile-{p.key}.prof"
        profiler.dump_stats(stats_path)
        text = io.StringIO()
        st = pstats.Stats(profiler, stream=text).strip_dirs()
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(25)
        report = OUT / f"backfill-profile-{p.key}.txt"
        report.write_text(text.getvalue())
        print(text.getvalue())
        result["profile_stats"] = str(stats_path)
        result["profile_report"] = str(report)
    else:
        frame = out[[f.split(":", 1)[1] for f in FEATURES]].copy()
        frame.insert(0, "label_id", labels["label_id"].to_numpy())
        frame.to_parquet(p.folder / "skewless_out.parquet", index=False)
    return result


# ------------------------------------------------------------------------------------------
# phase 3: the DuckDB twin


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    function: str
    column: str
    window_ms: int | None
    hop_ms: int | None


def feature_specs() -> list[FeatureSpec]:
    """The features' functions, windows and hops, read from the compiled plan."""
    from engine import FeatureStore

    plan = FeatureStore.from_repo(DEFS).plan
    specs = []
    for view, index in plan.resolve(FEATURES):
        a = view.aggregations[index]
        specs.append(FeatureSpec(a.feature, a.function, a.column, a.window_ms, a.hop_ms))
    return specs


def _sql_aggregate(f: FeatureSpec, condition: str | None, frame: str | None) -> str:
    """One feature as a SQL aggregate: FILTER-ed (join query) or over a frame (window query)."""
    col = f.column
    body = {
        "sum": f"SUM({col})",
        "count": f"COUNT({col})",
        "mean": f"AVG({col})",
        "min": f"MIN({col})",
        "max": f"MAX({col})",
        "count_distinct": f"COUNT(DISTINCT {col})",
    }[f.function]
    if frame is not None:
        expr = f"{body} OVER (PARTITION BY customer_id ORDER BY ts {frame})"
    elif condition is not None:
        expr = f"{body} FILTER (WHERE {condition})"
    else:
        expr = body
    if f.function == "sum":  # skewless: an empty window sums to 0
        expr = f"COALESCE({expr}, 0.0)"
    return f"{expr} AS {f.name}"


def _window_start(t: str, f: FeatureSpec) -> str:
    """start(t) = ceil(t/H)*H - W  (DESIGN §3), for t >= 0 in integer ms."""
    h, w = f.hop_ms, f.window_ms
    return f"(({t} + {h - 1}) // {h}) * {h} - {w}"


def sql_join(specs: list[FeatureSpec], events: str, labels: str) -> str:
    """Labels joined to every earlier event of their customer; one FILTER per window."""
    aggs = []
    for f in specs:
        cond = None if f.window_ms is None else f"e.ts >= {_window_start('l.t', f)}"
        aggs.append(_sql_aggregate(FeatureSpec(f.name, f.function, f"e.{f.column}",
                                               f.window_ms, f.hop_ms), cond, None))  # fmt: skip
    return f"""
SELECT l.label_id,
       {", ".join(aggs)}
FROM (SELECT label_id, customer_id, event_timestamp AS t FROM read_parquet('{labels}')) AS l
LEFT JOIN (SELECT customer_id, ts, amount, merchant_id FROM read_parquet('{events}')) AS e
       ON e.customer_id = l.customer_id AND e.ts < l.t
GROUP BY l.label_id
ORDER BY l.label_id
"""


def sql_window(specs: list[FeatureSpec], events: str, labels: str) -> str:
    """Labels unioned into the event stream; RANGE frames [start(t), t - 1] per label row.

    Label rows carry NULL amount/merchant_id, so the aggregates skip them; ``1 PRECEDING``
    on integer ms is ``event_time < t``; the frame start is ``t - (t - start(t))``.
    """
    aggs = []
    for f in specs:
        if f.window_ms is None:
            frame = "RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING"
        else:
            frame = f"RANGE BETWEEN (ts - ({_window_start('ts', f)})) PRECEDING AND 1 PRECEDING"
        aggs.append(_sql_aggregate(f, None, frame))
    return f"""
WITH u AS (
    SELECT customer_id, ts, amount, merchant_id, NULL::BIGINT AS label_id
    FROM read_parquet('{events}')
    UNION ALL
    SELECT customer_id, event_timestamp AS ts, NULL::DOUBLE, NULL::VARCHAR, label_id
    FROM read_parquet('{labels}')
), w AS (
    SELECT label_id,
           {", ".join(aggs)}
    FROM u
)
SELECT * FROM w WHERE label_id IS NOT NULL ORDER BY label_id
"""


def phase_duckdb(p: Params, threads: int, variants: list[str]) -> dict[str, Any]:
    import duckdb

    specs = feature_specs()
    events = str(p.folder / "events.parquet")
    labels = str(p.folder / "labels.parquet")
    tmp = p.folder / "duckdb_tmp"
    tmp.mkdir(exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET temp_directory = '{tmp}'")
    con.execute("SET enable_progress_bar = false")
    # warm the page cache of the Parquet files (the log was read by the skewless phase)
    con.execute(f"SELECT count(*), sum(ts) FROM read_parquet('{events}')").fetchall()
    con.execute(f"SELECT count(*) FROM read_parquet('{labels}')").fetchall()
    result: dict[str, Any] = {"threads": threads, "duckdb_version": duckdb.__version__,
                              "variants": {}}  # fmt: skip
    builders = {"join": sql_join, "window": sql_window}
    for name in variants:
        sql = builders[name](specs, events, labels)
        _say("duckdb", f"{name} query, threads={threads} ...")
        cpu0 = os.times()
        with TreeMemory() as mem:
            t0 = time.perf_counter()
            df = con.execute(sql).df()
            elapsed = time.perf_counter() - t0
        cpu = sum(os.times()[:2]) - sum(cpu0[:2])
        assert len(df) == p.labels, (name, len(df))
        df.to_parquet(p.folder / f"duckdb_{name}_out.parquet", index=False)
        result["variants"][name] = {"seconds": elapsed, "cpu_seconds": cpu,
                                    "peak_rss_bytes": mem.peak_rss,
                                    "loadavg_1m_after": os.getloadavg()[0],
                                    "sql": sql.strip()}  # fmt: skip
        _say(
            "duckdb",
            f"{name}: {elapsed:.2f} s ({cpu:.1f} CPU-s), peak RSS {mem.peak_rss / GIB:.2f} GiB",
        )
    result["ru_maxrss_self_bytes"] = _rusage_peaks()["self"]
    return result


# ------------------------------------------------------------------------------------------
# agreement


def compare(p: Params, variant: str) -> dict[str, Any]:
    """Per feature: rows that differ (exact for counts/min/max/distinct, 1e-9 relative else)."""
    import numpy as np
    import pandas as pd

    ours = pd.read_parquet(p.folder / "skewless_out.parquet")
    theirs = pd.read_parquet(p.folder / f"duckdb_{variant}_out.parquet")
    assert (ours["label_id"].to_numpy() == theirs["label_id"].to_numpy()).all()
    report: dict[str, Any] = {}
    for f in feature_specs():
        a = ours[f.name].to_numpy(dtype="float64", na_value=np.nan)
        b = theirs[f.name].to_numpy(dtype="float64", na_value=np.nan)
        both_null = np.isnan(a) & np.isnan(b)
        if f.function in ("sum", "mean"):
            scale = np.maximum(np.abs(a), np.abs(b))
            with np.errstate(invalid="ignore"):
                ok = both_null | (np.abs(a - b) <= 1e-9 * scale)
                rel = np.where(scale > 0, np.abs(a - b) / np.where(scale > 0, scale, 1), 0.0)
            bit_equal = both_null | (a == b)
            report[f.name] = {
                "rule": "rel 1e-9",
                "mismatches": int((~ok).sum()),
                "max_rel_err": float(np.nanmax(rel)) if len(rel) else 0.0,
                "bit_identical_share": float(bit_equal.mean()),
            }
        else:
            ok = both_null | (a == b)
            report[f.name] = {"rule": "exact", "mismatches": int((~ok).sum())}
        report[f.name]["non_null"] = int((~np.isnan(a)).sum())
        report[f.name]["non_zero"] = int(((~np.isnan(a)) & (a != 0)).sum())
    return report


# ------------------------------------------------------------------------------------------
# the driver


def _run_phase(args: argparse.Namespace, phase: str, extra: list[str]) -> dict[str, Any]:
    out = OUT / f"backfill-phase-{phase}-{os.getpid()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--phase-out", str(out),
           "--events", str(args.events), "--entities", str(args.entities),
           "--labels", str(args.labels), "--days", str(args.days), "--seed", str(args.seed),
           *extra]  # fmt: skip
    subprocess.run(cmd, check=True)
    data: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return data


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(w)}  {v}" for k, v in rows)


def _record(key: str, entry: dict[str, Any]) -> None:
    data: dict[str, Any] = {"runs": {}}
    if RESULTS_JSON.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(RESULTS_JSON.read_text())
    data.setdefault("runs", {})[key] = entry
    RESULTS_JSON.write_text(json.dumps(data, indent=2))
    plot(data)


def plot(data: dict[str, Any]) -> None:
    """Bar chart of the recorded runs: wall time (log scale) and replayed events/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((r for r in data["runs"].values() if "skewless" in r),
                  key=lambda r: r["params"]["events"])  # fmt: skip
    if not runs:
        return

    def count(n: int) -> str:
        return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"

    labels = [f"{count(r['params']['events'])} events\n{count(r['params']['labels'])} labels\n"
              f"engine {r['skewless'].get('engine_revision', {}).get('head', '?')}"
              for r in runs]  # fmt: skip
    series = [("skewless backfill", [r["skewless"]["seconds"] for r in runs], "#d95f02")]
    for name, color in (("join", "#1b9e77"), ("window", "#7570b3")):
        series.append((f"DuckDB {name} (threads={runs[0]['duckdb']['threads']})",
                       [r["duckdb"]["variants"].get(name, {}).get("seconds", math.nan)
                        for r in runs], color))  # fmt: skip
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(series)
    for s, (name, values, color) in enumerate(series):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(runs))]
        bars = ax1.bar(xs, values, width, label=name, color=color)
        ax1.bar_label(bars, fmt="%.1f s", fontsize=7, padding=1)
    ax1.set_yscale("log")
    ax1.set_xticks(range(len(runs)), labels)
    ax1.set_ylabel("wall time (s, log scale)")
    ax1.set_title("Backfill of 12 features (3 views), 2 cores")
    ax1.legend(fontsize=8)
    rates = [r["skewless"]["events_per_s"] for r in runs]
    per_cpu = [r["skewless"].get("events_per_cpu_s", math.nan) for r in runs]
    for s, (name, values, color) in enumerate(
        (("per wall-clock second", rates, "#d95f02"), ("per CPU-second", per_cpu, "#fdb863"))
    ):
        bars = ax2.bar(
            [i + (s - 0.5) * 0.38 for i in range(len(runs))], values, 0.38, label=name, color=color
        )
        ax2.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax2.axhline(
        TARGET_EVENTS_PER_S,
        color="k",
        ls="--",
        lw=1,
        label=f"target {TARGET_EVENTS_PER_S // 1_000_000}M events/s",
    )
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(runs)), labels)
    ax2.set_ylabel("log records replayed / s (log scale)")
    ax2.set_title("skewless replay throughput")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    CHART.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(CHART, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=90, help="time span of events and labels")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="backfill worker processes (default: CPU count)")  # fmt: skip
    ap.add_argument("--duckdb-threads", type=int, default=2)
    ap.add_argument("--duckdb-variants", default="join,window",
                    help="comma list of DuckDB queries to run: join, window")  # fmt: skip
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100k events, 1k entities, 10k labels")  # fmt: skip
    ap.add_argument("--profile", action="store_true",
                    help="only profile the skewless replay with cProfile (workers=1)")  # fmt: skip
    ap.add_argument("--phase", choices=["generate", "skewless", "duckdb"], help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.entities, args.labels = 100_000, 1_000, 10_000

    from engine import FeatureStore

    OUT.mkdir(parents=True, exist_ok=True)
    partitions = FeatureStore.from_repo(DEFS).config.kafka_partitions
    p = Params(args.events, args.entities, args.labels, args.days, args.seed, partitions)

    if args.phase:  # inside a phase subprocess
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "generate": lambda: phase_generate(p),
            "skewless": lambda: phase_skewless(p, args.workers, args.profile),
            "duckdb": lambda: phase_duckdb(p, args.duckdb_threads,
                                           [v for v in args.duckdb_variants.split(",") if v]),
        }  # fmt: skip
        Path(args.phase_out).write_text(json.dumps(runners[args.phase]()))
        return 0

    command = "python benchmarks/backfill.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    _say("bench", f"{p.events:,} events, {p.entities:,} entities, {p.labels:,} labels over "
                  f"{p.days} days, {p.partitions} log partitions; cache {p.folder}")  # fmt: skip
    meta_path = p.folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        _say("bench", f"cached log: generated in {meta['generate_s']:.1f} s, imported in "
                      f"{meta['import_s']:.1f} s ({meta['import_rows_per_s']:,.0f} rows/s)")  # fmt: skip
    else:
        meta = _run_phase(args, "generate", [])

    if args.profile:
        res = _run_phase(args, "skewless", ["--workers", "1", "--profile"])
        _say("bench", f"profile written to {res['profile_report']}")
        return 0

    sk = _run_phase(args, "skewless", ["--workers", str(args.workers)])
    db = _run_phase(args, "duckdb", ["--duckdb-threads", str(args.duckdb_threads),
                                     "--duckdb-variants", args.duckdb_variants])  # fmt: skip
    agreement = {name: compare(p, name) for name in db["variants"]}
    best_name, best = min(db["variants"].items(), key=lambda kv: kv[1]["seconds"])
    ratio = sk["seconds"] / best["seconds"]

    print()
    print(f"Backfill benchmark — {p.events:,} events / {p.entities:,} entities / "
          f"{p.labels:,} labels, {len(FEATURES)} features in 3 views")  # fmt: skip
    rows = [
        ("event log import (not timed below)",
         f"{meta['import_s']:.1f} s, {meta['import_rows_per_s']:,.0f} rows/s, "
         f"{meta['log_bytes'] / 2**20:.0f} MiB in {meta['log_partitions']} partitions"),
        ("skewless backfill wall time",
         f"{sk['seconds']:.2f} s (workers={sk['workers']}; {sk['cpu_seconds']:.1f} CPU-s, "
         f"{sk['events_per_cpu_s']:,.0f} events per CPU-s)"),
        ("  events/s (log records replayed)",
         f"{sk['events_per_s']:,.0f}   target >= {TARGET_EVENTS_PER_S:,}: "
         f"{'PASS' if sk['events_per_s'] >= TARGET_EVENTS_PER_S else 'FAIL'}"),
        ("  labels/s", f"{sk['labels_per_s']:,.0f}"),
        ("  peak RSS, process tree (sum)",
         f"{_gib(sk['peak_tree_rss_bytes'])}   target <= {_gib(TARGET_RSS_BYTES)}: "
         f"{'PASS' if sk['peak_tree_rss_bytes'] <= TARGET_RSS_BYTES else 'FAIL'}"),
        ("  peak PSS, process tree (sum)", _gib(sk["peak_tree_pss_bytes"])),
        ("  ru_maxrss self / largest child",
         f"{_gib(sk['ru_maxrss_self_bytes'])} / {_gib(sk['ru_maxrss_children_bytes'])}"),
    ]  # fmt: skip
    for name, v in db["variants"].items():
        rows.append((f"DuckDB {name} query (threads={db['threads']})",
                     f"{v['seconds']:.2f} s ({v['cpu_seconds']:.1f} CPU-s), "
                     f"peak RSS {_gib(v['peak_rss_bytes'])}"))  # fmt: skip
    cpu_ratio = sk["cpu_seconds"] / max(best["cpu_seconds"], 1e-9)
    rows.append(
        (
            f"ratio skewless / DuckDB {best_name}",
            f"{ratio:.2f}x wall   target <= {TARGET_RATIO:g}x: "
            f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'}   ({cpu_ratio:.1f}x CPU time)",
        )
    )
    rows.append(("machine load (1-min avg) before/after",
                 f"{sk['loadavg_1m_before_after'][0]:.1f} / {sk['loadavg_1m_before_after'][1]:.1f}"
                 f" on {os.cpu_count()} CPUs"))  # fmt: skip
    for name, rep in agreement.items():
        bad = {k: v["mismatches"] for k, v in rep.items() if v["mismatches"]}
        worst = max((v.get("max_rel_err", 0.0) for v in rep.values()), default=0.0)
        bits = min((v["bit_identical_share"] for v in rep.values() if "bit_identical_share" in v),
                   default=1.0)  # fmt: skip
        rows.append((f"agreement with DuckDB {name}",
                     (f"all {p.labels:,} labels x {len(rep)} features agree" if not bad
                      else f"MISMATCH {bad}")
                     + f" (max rel err of sums/means {worst:.1e}; "
                       f"bit-identical >= {bits:.1%})"))  # fmt: skip
    print(_table(rows))
    print()
    _record(p.key, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "params": p.__dict__,
        "import": meta,
        "skewless": sk,
        "duckdb": {k: v for k, v in db.items()},
        "ratio_vs_fastest_duckdb": ratio,
        "cpu_ratio_vs_fastest_duckdb": cpu_ratio,
        "fastest_duckdb": best_name,
        "agreement": agreement,
    })  # fmt: skip
    _say("bench", f"results in {RESULTS_JSON}, chart in {CHART}")
    ok = all(v["mismatches"] == 0 for rep in agreement.values() for v in rep.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
