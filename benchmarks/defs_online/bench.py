"""Definitions of the online-read benchmark (benchmarks/online.py): one view, 10 features.

Windows use the default hops (DESIGN §3): 1h → 5m, 1d → 1h, 7d → 1h, 30d → 1d, so a read
merges tiles of three hop groups — the realistic shape, not one precomputed value.
"""

from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"], description="a card holder")

events = KafkaSource(
    "events",
    schema={
        "type": "record",
        "name": "OnlineBenchEvent",
        "fields": [
            {"name": "customer_id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "merchant_id", "type": "string"},
            {"name": "ts", "type": "long"},
        ],
    },
    timestamp_field="ts",
    key_fields=["customer_id"],
)

customer_features = FeatureView(
    "customer_features",
    entity=customer,
    source=events,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "sum", window="1d"),
        Aggregation("amount", "sum", window="7d"),
        Aggregation("amount", "sum", window="30d"),
        Aggregation("amount", "count", window="1h"),
        Aggregation("amount", "count", window="1d"),
        Aggregation("amount", "count", window="7d"),
        Aggregation("amount", "mean", window="30d"),
        Aggregation("amount", "max", window="1d"),
        Aggregation("amount", "min", window="7d"),
    ],
)
