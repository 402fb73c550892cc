"""Offline demo: generate payments history, import it, and build a point-in-time training set.

Run through scripts/demo.sh. The streaming half (Kafka, workers, Redis online reads)
joins this demo with the streaming path.
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

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def payments(n: int, customers: int, merchants: int, days: int, seed: int) -> pd.DataFrame:
    """Card transactions with realistic disorder: out-of-order arrival, ties, null amounts."""
    rng = np.random.default_rng(seed)
    ts = START_MS + rng.integers(0, days * DAY_MS, n)
    ts[rng.random(n) < 0.05] //= 60_000  # some on exact minute boundaries ...
    ts[ts < START_MS] *= 60_000  # ... restored to the right epoch
    amount = np.round(rng.lognormal(3.5, 1.0, n), 2)
    frame = pd.DataFrame(
        {
            "transaction_id": [f"tx{i:08d}" for i in range(n)],
            "customer_id": [f"c{i:05d}" for i in rng.zipf(1.3, n) % customers],
            "merchant_id": [f"m{i:04d}" for i in rng.integers(0, merchants, n)],
            "amount": amount,
            "currency": rng.choice(["USD", "EUR", "GBP", "JPY"], n, p=[0.6, 0.25, 0.1, 0.05]),
            "country": rng.choice(["US", "FR", "DE", "GB", "JP", "BR"], n),
            "card_present": rng.random(n) < 0.55,
            "ts": ts,
        }
    )
    frame.loc[rng.random(n) < 0.01, "amount"] = None
    # arrival order: mostly by time, with a jittered tail of late arrivals
    arrival = ts + rng.exponential(2_000, n).astype("int64")
    late = rng.random(n) < 0.02
    arrival[late] += rng.integers(60_000, 6 * 3_600_000, late.sum())
    frame["processed_at"] = arrival
    return frame.iloc[np.argsort(arrival, kind="stable")].reset_index(drop=True)


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
