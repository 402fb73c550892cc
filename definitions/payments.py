"""Payments example: customer and merchant features over a stream of card transactions."""

import pandas as pd

from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"], description="a card holder")
merchant = Entity("merchant", join_keys=["merchant_id"], description="an acquiring merchant")

transactions = KafkaSource(
    "transactions",
    topic="transactions",
    schema="schemas/transaction.avsc",
    timestamp_field="ts",
    format="avro",
    key_fields=["customer_id"],
)

# Static FX rates: the transform reads them, so their values are part of the view fingerprint.
USD_PER_UNIT = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "JPY": 0.0067}


def to_usd(batch: pd.DataFrame) -> pd.DataFrame:
    """Price every transaction in USD; rows in unknown currencies are dropped.

    A batch transform (the fast path): a DataFrame of a batch of payloads in, the kept rows
    out, each computed from its own row only.
    """
    rate = batch["currency"].map(USD_PER_UNIT)
    known = batch[rate.notna()].copy()
    known["amount_usd"] = known["amount"] * rate[rate.notna()]
    return known


def card_not_present(batch: pd.DataFrame) -> pd.DataFrame:
    """Online (card-not-present) payments only."""
    return batch[~batch["card_present"].astype(bool)]


customer_spend = FeatureView(
    "customer_spend",
    entity=customer,
    source=transactions,
    aggregations=[
        Aggregation("amount", "sum", window="30d"),
        Aggregation("amount", "count", window="7d"),
        Aggregation("amount", "mean", window="1h", hop="5m"),
        Aggregation("merchant_id", "count_distinct", window="1d"),
        Aggregation("amount", "last", window="lifetime"),
        Aggregation("amount", "max", window="1d"),
        Aggregation("amount", "min", window="7d"),
        Aggregation("amount", "stddev", window="30d"),
        Aggregation("amount", "variance", window="7d"),
    ],
)

customer_activity = FeatureView(
    "customer_activity",
    entity=customer,
    source=transactions,
    batch_transform=to_usd,
    columns={"amount_usd": "double"},
    aggregations=[
        Aggregation("amount_usd", "sum", window="1d"),
        Aggregation("amount_usd", "first", window="lifetime"),
        Aggregation("amount_usd", "last_n", window="1d", n=5),
        Aggregation("merchant_id", "first_n", window="7d", n=3),
        Aggregation("merchant_id", "approx_count_distinct", window="30d"),
        Aggregation("country", "count_distinct", window="7d"),
        Aggregation("transaction_id", "count", window="10m"),
    ],
)

customer_online = FeatureView(
    "customer_online",
    entity=customer,
    source=transactions,
    batch_transform=card_not_present,
    allowed_lateness="2h",
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "count", window="lifetime", name="cnp_count_lifetime"),
    ],
)

merchant_risk = FeatureView(
    "merchant_risk",
    entity=merchant,
    source=transactions,
    aggregations=[
        Aggregation("amount", "sum", window="1h"),
        Aggregation("amount", "count", window="1d"),
        Aggregation("customer_id", "approx_count_distinct", window="7d"),
        Aggregation("amount", "mean", window="7d"),
        Aggregation("country", "count_distinct", window="30d"),
    ],
)
