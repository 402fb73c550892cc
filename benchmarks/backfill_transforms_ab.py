"""Backfill of the example definitions' two batch-transform views, A/B between code trees.

The views with a batch transform (``customer_activity``: ``to_usd``; ``customer_online``:
``card_not_present``) leave the native sweep's file path: their user code runs in Python.
This script times ``get_historical_features`` of their 9 features for 20,000 labels over a
500,000-event log, in each code tree given, alternating, and checks that every tree returns
the same frame (a hash of all cells).

    git worktree add /tmp/sk-base <commit>      # the tree to compare with (needs its .so:
    cp engine/_native.abi3.so /tmp/sk-base/engine/   # same native code, or build it there)
    .venv/bin/python benchmarks/backfill_transforms_ab.py /tmp/sk-base .   # --rounds 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVENTS, CUSTOMERS, LABELS = 500_000, 20_000, 20_000


def child(root: Path, work: Path, setup: bool) -> None:
    sys.path.insert(0, str(root))
    import shutil

    import numpy as np
    import pandas as pd

    from engine.demo_data import payments
    from engine.store import FeatureStore

    repo = work / "repo"
    if setup:
        shutil.copytree(root / "definitions", repo)
        (repo / "skewless.yaml").write_text(
            "project:\n  name: bf_ab\nkafka:\n  partitions: 4\n"
            f"redis:\n  url: redis://127.0.0.1:6379/7\nevent_log:\n  root: {work / 'log'}\n"
        )
        now = time.time_ns() // 1_000_000
        frame = payments(EVENTS, customers=CUSTOMERS, merchants=2_000, days=10, seed=3,
                         start_ms=now - 10 * 86_400_000)  # fmt: skip
        FeatureStore.from_repo(repo).import_events("transactions", frame)
        (work / "now").write_text(str(now))
        return
    store = FeatureStore.from_repo(repo)
    rng = np.random.default_rng(5)
    now = int((work / "now").read_text())
    labels = pd.DataFrame({
        "customer_id": [f"c{i:06d}" for i in rng.integers(0, CUSTOMERS, LABELS)],
        "event_timestamp": pd.to_datetime(rng.integers(now - 5 * 86_400_000, now, LABELS),
                                          unit="ms", utc=True),
    })  # fmt: skip
    refs = [f"{v}:{f}" for v in ("customer_activity", "customer_online")
            for f in store.plan.views[v].features]  # fmt: skip
    w0, c0 = time.perf_counter(), time.process_time()
    got = store.get_historical_features(labels, refs, workers=2)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    digest = int(pd.util.hash_pandas_object(got.astype(str), index=False).sum())
    print(f"{wall:.3f} {cpu:.3f} {digest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trees", nargs="*", type=Path, help="code trees (repo roots) to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root, work, mode = args.child
        child(Path(root), Path(work), mode == "setup")
        return
    if not args.trees:
        ap.error("name at least one code tree")
    with tempfile.TemporaryDirectory(prefix="sk-bf-ab-") as tmp:
        first = args.trees[-1].resolve()
        run = [sys.executable, __file__, "--child"]
        subprocess.run([*run, str(first), tmp, "setup"], check=True)
        print(f"{EVENTS:,} events imported; {LABELS:,} labels, 9 batch-transform features")
        results: dict[Path, list[tuple[float, float, int]]] = {t: [] for t in args.trees}
        for r in range(args.rounds):
            for tree in args.trees:
                out = subprocess.run([*run, str(tree.resolve()), tmp, "time"], check=True,
                                     capture_output=True, text=True).stdout.split()  # fmt: skip
                wall, cpu, digest = float(out[0]), float(out[1]), int(out[2])
                results[tree].append((wall, cpu, digest))
                print(f"  round {r + 1} {tree}: {wall:.2f} s wall, {cpu:.2f} CPU-s "
                      f"({EVENTS / wall:,.0f} events/s)", flush=True)  # fmt: skip
        digests = {d for runs in results.values() for _, _, d in runs}
        print("same result in every tree and round" if len(digests) == 1
              else f"RESULTS DIFFER: {len(digests)} distinct frames")  # fmt: skip
        best = {t: min(w for w, _, _ in runs) for t, runs in results.items()}
        base = best[args.trees[0]]
        for tree, wall in best.items():
            print(f"  best {tree}: {wall:.2f} s ({base / wall:.2f}x the first tree)")


if __name__ == "__main__":
    main()
