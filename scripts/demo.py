"""The demo: real Kafka and Redis, two stream workers, fresh online reads, a point-in-time backfill.

Run through scripts/demo.sh (which installs everything and starts the local services).
Each run uses its own topic, consumer group and Redis database 3, so runs never mix.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_offline import payments

from connectors.eventlog import EventLogReader
from engine import FeatureStore

REDIS_URL = os.environ.get("SKEWLESS_DEMO_REDIS_URL", "redis://127.0.0.1:6379/3")


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    run = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"skewless-demo-{run}-"))
    repo = work / "definitions"
    shutil.copytree(root / "definitions", repo, ignore=shutil.ignore_patterns(".skewless"))
    defs = repo / "payments.py"
    defs.write_text(
        re.sub(r'topic="transactions"', f'topic="demo.transactions.{run}"', defs.read_text())
    )
    env = dict(os.environ, SKEWLESS_PROJECT=f"demo-{run}", SKEWLESS_REDIS_URL=REDIS_URL)
    os.environ.update(env)
    redis.Redis.from_url(REDIS_URL).flushdb()
    store = FeatureStore.from_repo(repo)
    result = store.apply()
    say(f"[1/6] applied {len(store.plan.views)} views; topics {sorted(result.topics)}")

    logs = [open(work / f"worker-{i}.log", "w") for i in range(args.workers)]  # noqa: SIM115
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "--repo", str(repo), "worker", "--runtime", "kafka"],
            env=env, stdout=logs[i], stderr=subprocess.STDOUT,
        )
        for i in range(args.workers)
    ]  # fmt: skip
    say(f"[2/6] started {args.workers} kafka-runtime workers (logs in {work})")
    try:
        events = payments(args.events, customers=500, merchants=60, days=1, seed=3)
        now = time.time_ns() // 1_000_000
        events["ts"] = events["ts"] - events["ts"].max() + now - 1_000  # the last day, up to now
        events = events.drop(columns=["processed_at"])
        started = time.perf_counter()
        chunk = max(1, args.events // 10)
        for start in range(0, len(events), chunk):
            store.push("transactions", events.iloc[start : start + chunk])
            done = min(start + chunk, len(events))
            rate = done / (time.perf_counter() - started)
            say(f"[3/6] pushed {done:,}/{len(events):,} events ({rate:,.0f} events/s)")
        log = EventLogReader(store.config.event_log_root)
        deadline = time.monotonic() + 600
        while True:
            try:
                logged = log.count("transactions")
            except Exception:  # the log appears with the first batch
                logged = 0
            say(f"      workers: {logged:,}/{len(events):,} events processed and logged")
            if logged >= len(events) or time.monotonic() > deadline:
                break
            time.sleep(2)
        elapsed = time.perf_counter() - started
        say(f"      end to end {len(events) / elapsed:,.0f} events/s")

        customers = events["customer_id"].value_counts().index[:3].tolist()
        refs = ["customer_spend:amount_sum_30d", "customer_spend:amount_count_7d",
                "customer_activity:amount_usd_last_5_1d", "customer_online:amount_sum_1h"]  # fmt: skip
        read_at = time.time_ns() // 1_000_000
        fresh = store.get_online_features(
            refs, [{"customer_id": c} for c in customers], with_freshness=True, now_ms=read_at
        ).to_df()
        say("[4/6] fresh features from Redis:")
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            say(fresh.to_string(max_colwidth=36))

        labels = pd.DataFrame({"customer_id": customers, "event_timestamp": [read_at] * 3})
        replay = store.get_historical_features(labels, refs, mode="processing_time")
        same = all(
            repr(a) == repr(b) or (a != a and b != b)
            for f in [r.split(":")[1] for r in refs]
            for a, b in zip(fresh[f].tolist(), replay[f].tolist(), strict=True)
        )
        say(f"[5/6] the backfill's processing-time replay at the read time agrees: {same}")

        rng = np.random.default_rng(5)
        pick = rng.integers(0, len(events), 2_000)
        training_labels = pd.DataFrame({
            "customer_id": events["customer_id"].to_numpy()[pick],
            "event_timestamp": events["ts"].to_numpy()[pick],
            "is_fraud": rng.random(len(pick)) < 0.03,
        })  # fmt: skip
        training = store.get_historical_features(training_labels, refs)
        out = work / "training_set.parquet"
        training.to_parquet(out)
        say(f"[6/6] point-in-time training set: {len(training):,} labels x {len(refs)} features "
            f"-> {out}")  # fmt: skip
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for fh in logs:
            fh.close()
    say(f"\neverything is under {work}; the services keep running — stop them with "
        "`bash scripts/services.sh down`")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
