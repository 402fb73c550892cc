"""Definitions of the backfill benchmark (benchmarks/backfill.py): 3 views, 12 features.

Every function here has an exact SQL twin, so the benchmark can check its DuckDB query
against the engine value for value: sum/count/mean/min/max/count_distinct over windows and
a lifetime count. Windows use the default hops (DESIGN §3): 1h → 5m, 1d → 1h, 7d → 1h,
30d → 1d.
"""

from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"], description="a card holder")

events = KafkaSource(
    "events",
    schema={
        "type": "record",
        "name": "BenchEvent",
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

customer_spend = FeatureView(
    "customer_spend",
    entity=customer,
    source=events,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "sum", window="1d"),
        Aggregation("amount", "sum", window="7d"),
        Aggregation("amount", "sum", window="30d"),
    ],
)

customer_activity = FeatureView(
    "customer_activity",
    entity=customer,
    source=events,
    aggregations=[
        Aggregation("amount", "count", window="1h"),
        Aggregation("amount", "count", window="1d"),
        Aggregation("amount", "count", window="7d"),
        Aggregation("amount", "mean", window="30d"),
    ],
)

customer_extremes = FeatureView(
    "customer_extremes",
    entity=customer,
    source=events,
    aggregations=[
        Aggregation("amount", "max", window="1d"),
        Aggregation("amount", "min", window="7d"),
        Aggregation("merchant_id", "count_distinct", window="7d"),
        Aggregation("amount", "count", window="lifetime"),
    ],
)
