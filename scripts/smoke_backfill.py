"""Wheel smoke test: import events into a fresh log and run a backfill, from an installed wheel.

Run by scripts/wheel_smoke.sh from a venv that has only the release wheel (no cargo, no
source tree on sys.path). Exits non-zero, with the reason, if anything differs from what a
brute-force sum over the same events says.
"""

from __future__ import annotations

import math
import sys
import tempfile
import textwrap
from pathlib import Path

import pandas as pd

import engine
from engine import FeatureStore, _native

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z

DEFINITIONS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("tx", schema={
    "type": "record", "name": "Tx",
    "fields": [{"name": "customer_id", "type": "string"},
               {"name": "amount", "type": "double"},
               {"name": "ts", "type": "long"}]},
    timestamp_field="ts")
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="1d"),
    Aggregation("amount", "count", window="lifetime"),
])
"""


def main() -> int:
    where = Path(engine.__file__).resolve()
    if "site-packages" not in where.parts:
        print(f"smoke: engine imported from {where}, not from the installed wheel", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "defs.py").write_text(textwrap.dedent(DEFINITIONS))
        (repo / "skewless.yaml").write_text(
            f"kafka:\n  partitions: 2\nevent_log:\n  root: {Path(tmp) / 'log'}\n"
        )
        store = FeatureStore.from_repo(repo)
        events = pd.DataFrame(
            {
                "customer_id": [f"c{i % 7}" for i in range(500)],
                "amount": [0.1 * (i % 13) for i in range(500)],
                "ts": [T0 + i * 10 * 60_000 for i in range(500)],
            }
        )
        store.import_events("tx", events)
        t = T0 + 40 * HOUR
        labels = pd.DataFrame(
            {
                "customer_id": ["c3", "c5"],
                "event_timestamp": pd.to_datetime([t, t], unit="ms", utc=True),
            }
        )
        out = store.get_historical_features(
            labels, ["spend:amount_sum_1d", "spend:amount_count_lifetime"]
        )
        for row in out.itertuples():
            mine = events[(events.customer_id == row.customer_id) & (events.ts < t)]
            # 1d windows have 1h tiles (DESIGN §3): the window is [ceil(t/1h)*1h - 1d, t)
            start = -(-t // HOUR) * HOUR - 24 * HOUR
            day = mine[mine.ts >= start]
            want_sum = math.fsum(day.amount)
            if row.amount_sum_1d != want_sum or row.amount_count_lifetime != len(mine):
                print(
                    f"smoke: {row.customer_id}: got {row.amount_sum_1d!r}/{row.amount_count_lifetime}, "
                    f"want {want_sum!r}/{len(mine)}",
                    file=sys.stderr,
                )
                return 1
    print(f"smoke: engine._native {_native.__version__} from the wheel: import + backfill OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
