"""The worked example of the README / docs/semantics.md, checked against the engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from engine import FeatureStore

VIEW = """
v = FeatureView("v", entity=customer, source=tx,
                aggregations=[Aggregation("amount", "sum", window="1h", hop="5m")])
"""


def at(hhmm: str) -> int:
    return int(pd.Timestamp(f"2026-03-01 {hhmm}", tz="UTC").value // 1_000_000)


def test_readme_worked_example(make_repo: Callable[..., Path]) -> None:
    store = FeatureStore.from_repo(make_repo(VIEW))
    store.import_events(
        "tx",
        pd.DataFrame(
            {
                "customer_id": ["c"] * 3,
                "merchant_id": ["m"] * 3,
                "amount": [10.0, 20.0, 40.0],
                "qty": [1, 1, 1],
                "ts": [at("09:58"), at("10:02"), at("10:07")],
            }
        ),
    )
    times = [at("10:07"), at("10:07") + 1, at("11:00"), at("11:01")]
    labels = pd.DataFrame({"customer_id": ["c"] * 4, "event_timestamp": times})
    for mode in ("event_time", "processing_time"):
        out = store.get_historical_features(labels, ["v:amount_sum_1h"], mode=mode, workers=1)
        assert out["amount_sum_1h"].tolist() == [30.0, 70.0, 60.0, 40.0]
