"""Generated data of the demo: card payments for the example definitions, and fraud labels on them.

Everything is a pure function of its arguments and a seed (numpy's PCG64), so two runs with the
same settings generate the same payments, in the same order, with the same labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# Fraud rule of the generated labels: card not present, a foreign currency and a large amount.
FRAUD_AMOUNT = 120.0
FRAUD_RATE_IF_RULE = 0.6
FRAUD_NOISE = 0.01


def payments(
    n: int,
    *,
    customers: int,
    merchants: int,
    days: float,
    seed: int,
    start_ms: int = START_MS,
) -> pd.DataFrame:
    """``n`` card transactions over ``days`` from ``start_ms``, in arrival order.

    The schema is the example source's (``definitions/schemas/transaction.avsc``) plus a
    ``processed_at`` column: arrival times with realistic disorder (a jittered tail, 2 % of
    events hours late), some timestamps on exact minute boundaries, ties, 1 % null amounts
    and Zipf-distributed customers (a few very active, most quiet).

    Example:
        >>> frame = payments(1_000, customers=50, merchants=10, days=1, seed=1)
        >>> len(frame), frame["processed_at"].is_monotonic_increasing
        (1000, True)
    """
    rng = np.random.default_rng(seed)
    span = max(1, int(days * DAY_MS))
    ts = start_ms + rng.integers(0, span, n)
    on_minute = rng.random(n) < 0.05
    ts[on_minute] -= ts[on_minute] % 60_000  # some on exact minute boundaries
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


def fraud_labels(events: pd.DataFrame, n: int, *, seed: int) -> pd.DataFrame:
    """Labels for ``n`` transactions drawn from ``events``: one row per labelled payment.

    ``is_fraud`` follows a rule plus noise: a card-not-present payment above
    ``FRAUD_AMOUNT`` in a currency other than USD is fraud with probability
    ``FRAUD_RATE_IF_RULE``; any other payment with probability ``FRAUD_NOISE``. The label's
    ``event_timestamp`` is the payment's own time, so its features must not include it.

    Example:
        >>> labels = fraud_labels(payments(500, customers=20, merchants=5, days=1, seed=2),
        ...                       100, seed=3)
        >>> list(labels.columns)
        ['transaction_id', 'customer_id', 'merchant_id', 'event_timestamp', 'is_fraud']
    """
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(events), size=min(n, len(events)), replace=False))
    rows = events.iloc[pick]
    amount = rows["amount"].fillna(0.0).to_numpy()
    rule = (~rows["card_present"].to_numpy()) & (amount > FRAUD_AMOUNT)
    rule &= rows["currency"].to_numpy() != "USD"
    chance = np.where(rule, FRAUD_RATE_IF_RULE, FRAUD_NOISE)
    return pd.DataFrame(
        {
            "transaction_id": rows["transaction_id"].to_numpy(),
            "customer_id": rows["customer_id"].to_numpy(),
            "merchant_id": rows["merchant_id"].to_numpy(),
            "event_timestamp": pd.to_datetime(rows["ts"].to_numpy(), unit="ms", utc=True),
            "is_fraud": rng.random(len(rows)) < chance,
        }
    )


def probe_payment(customer_id: str, ts_ms: int) -> dict[str, object]:
    """A payment of a probe customer that exists only to time produce → visible online."""
    return {
        "transaction_id": f"probe-{customer_id}",
        "customer_id": customer_id,
        "merchant_id": "m-probe",
        "amount": 1.0,
        "currency": "USD",
        "country": "US",
        "card_present": True,
        "ts": ts_ms,
    }
