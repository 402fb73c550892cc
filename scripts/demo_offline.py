"""Offline demo, no services needed: import generated payments history into the event log and
build a point-in-time training set from it.

    .venv/bin/python scripts/demo_offline.py [--events N] [--labels N]

The full demo with Kafka, stream workers and Redis is `skewless demo` (scripts/demo.sh).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from engine import FeatureStore
from engine.demo_data import payments


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--labels", type=int, default=20_000)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="skewless-demo-"))
    repo = work / "definitions"
    shutil.copytree(root / "definitions", repo, ignore=shutil.ignore_patterns(".skewless"))
    store = FeatureStore.from_repo(repo)
    print(f"definitions: {', '.join(sorted(store.plan.views))} (copied to {repo})")

    events = payments(args.events, customers=5_000, merchants=400, days=45, seed=7)
    started = time.perf_counter()
    result = store.import_events("transactions", events)
    print(
        f"imported {result.rows:,} events into {store.config.event_log_root} "
        f"in {time.perf_counter() - started:.1f}s"
    )

    rng = np.random.default_rng(11)
    pick = rng.integers(0, len(events), args.labels)
    labels = pd.DataFrame(
        {
            "customer_id": events["customer_id"].to_numpy()[pick],
            "merchant_id": events["merchant_id"].to_numpy()[pick],
            # the label is the transaction itself: its own event must never leak in
            "event_timestamp": pd.to_datetime(events["ts"].to_numpy()[pick], unit="ms", utc=True),
            "is_fraud": rng.random(args.labels) < 0.03,
        }
    )
    features = [
        "customer_spend:amount_sum_30d",
        "customer_spend:amount_count_7d",
        "customer_spend:amount_stddev_30d",
        "customer_activity:amount_usd_last_5_1d",
        "customer_activity:merchant_id_approx_count_distinct_30d",
        "customer_online:amount_sum_1h",
        "merchant_risk:amount_count_1d",
    ]
    read = 0

    def progress(records: int, partitions: int) -> None:
        nonlocal read
        read += records
        print(f"  backfill: {read:,} log records replayed", file=sys.stderr)

    started = time.perf_counter()
    training = store.get_historical_features(labels, features, progress=progress)
    elapsed = time.perf_counter() - started
    out = work / "training_set.parquet"
    training.to_parquet(out)
    print(
        f"training set: {len(training):,} labels x {len(features)} features in {elapsed:.1f}s "
        f"-> {out}"
    )
    with pd.option_context("display.width", 160, "display.max_columns", 12):
        print(training.head(5).to_string(max_colwidth=28))
    print(f"\neverything is under {work}; remove it with: rm -rf {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
