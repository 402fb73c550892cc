"""Import: validation before any write, partitioning by key, offsets in input order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from connectors.eventlog import EventLogReader, EventLogWriter
from engine import FeatureStore, InputDataError
from engine.envelope import HISTORY_BASE, Envelope
from engine.keys import encode_key, partition_for

VIEW = """
v = FeatureView("v", entity=customer, source=tx,
                aggregations=[Aggregation("amount", "sum", window="1d")])
"""


def frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "customer_id": [f"c{i % 7}" for i in range(n)],
            "merchant_id": ["m1"] * n,
            "amount": rng.random(n) * 100,
            "qty": np.arange(n, dtype="int64"),
            "ts": 1_700_000_000_000 + rng.integers(0, 10**7, n),
        }
    )


def test_rows_land_where_a_keyed_producer_puts_them(make_repo: Callable[..., Path]) -> None:
    store = FeatureStore.from_repo(make_repo(VIEW, yaml="kafka:\n  partitions: 3\n"))
    df = frame()
    result = store.import_events("tx", df)
    assert result.rows == len(df)
    log = list(EventLogReader(store.config.event_log_root).read_all("tx"))
    assert len(log) == len(df)
    by_qty = {e.payload["qty"]: e for e in log}
    for row in df.itertuples():
        env = by_qty[row.qty]
        assert env.partition == partition_for(encode_key([row.customer_id]), 3)
        assert env.key == row.customer_id.encode()
        assert env.event_time_ms == row.ts == env.processed_at_ms
    for p in {e.partition for e in log}:
        in_p = [e for e in log if e.partition == p]
        # history offsets: consecutive from HISTORY_BASE, below any Kafka offset
        assert [e.offset for e in in_p] == [HISTORY_BASE + i for i in range(len(in_p))]
        # offsets follow input row order within the partition
        assert [e.payload["qty"] for e in in_p] == sorted(e.payload["qty"] for e in in_p)


def test_second_import_continues_offsets(make_repo: Callable[..., Path]) -> None:
    store = FeatureStore.from_repo(make_repo(VIEW, yaml="kafka:\n  partitions: 1\n"))
    store.import_events("tx", frame(10))
    store.import_events("tx", frame(5).assign(processed_at=lambda d: d["ts"] + 5))
    log = list(EventLogReader(store.config.event_log_root).read("tx", 0))
    assert [e.offset for e in log] == [HISTORY_BASE + i for i in range(15)]
    assert all(e.processed_at_ms == e.event_time_ms + 5 for e in log[10:])


def test_history_and_live_offsets_never_collide(make_repo: Callable[..., Path]) -> None:
    """Imported history stays below the stream's offsets, before or after the stream logs."""
    store = FeatureStore.from_repo(make_repo(VIEW, yaml="kafka:\n  partitions: 1\n"))
    store.import_events("tx", frame(4))
    spec = dict(store.plan.sources["tx"].schema)
    live = EventLogWriter(store.config.event_log_root, "tx", spec)
    rows = frame(3).to_dict("records")
    envelopes = [
        Envelope(partition=0, offset=i, key=b"c", event_time_ms=int(r["ts"]),
                 processed_at_ms=int(r["ts"]), payload={**r, "qty": int(r["qty"])})
        for i, r in enumerate(rows)
    ]  # fmt: skip
    written = live.append(envelopes)
    assert len(written) == 1  # nothing of the live batch was taken for already held
    store.import_events("tx", frame(2))  # more history after the stream started
    log = list(EventLogReader(store.config.event_log_root).read("tx", 0))
    assert [e.offset for e in log] == [*(HISTORY_BASE + i for i in range(6)), 0, 1, 2]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d.assign(customer_id=[None, *list(d.customer_id[1:])]),
            "row 0 column 'customer_id': null, but the field is not nullable",
        ),
        (lambda d: d.drop(columns=["ts"]), "column 'ts' is missing"),
        (
            lambda d: d.assign(ts=[None] * 3 + list(d.ts[3:])),
            "row 0 column 'ts': timestamp is missing",
        ),
        (
            lambda d: d.assign(qty=["x", *list(d.qty[1:])]),
            "row 0 column 'qty': expected an integer (long), got 'x'",
        ),
        (
            lambda d: d.assign(amount=["1.5", *list(d.amount[1:])]),
            "row 0 column 'amount': expected a finite number",
        ),
        (
            lambda d: d.assign(amount=[float("inf"), *list(d.amount[1:])]),
            "row 0 column 'amount': expected a finite number",
        ),
        (
            lambda d: d.assign(ts=[-5, *list(d.ts[1:])]),
            "row 0 column 'ts': timestamp -5 is before 1970",
        ),
        (
            lambda d: d.assign(qty=[1.5, *list(d.qty[1:])]),
            "row 0 column 'qty': expected an integer",
        ),
    ],
    ids=[
        "null-key",
        "no-ts",
        "null-ts",
        "str-for-long",
        "str-for-double",
        "inf",
        "negative-ts",
        "fraction",
    ],
)
def test_bad_rows_write_nothing_and_name_row_and_problem(
    make_repo: Callable[..., Path], mutate: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    store = FeatureStore.from_repo(make_repo(VIEW))
    with pytest.raises(InputDataError) as info:
        store.import_events("tx", mutate(frame(10)))
    assert message in str(info.value)
    assert "(nothing imported" in str(info.value)
    assert not Path(store.config.event_log_root).exists()


def test_null_amount_allowed_and_csv_and_parquet(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    store = FeatureStore.from_repo(make_repo(VIEW))
    df = frame(6)
    df.loc[2, "amount"] = None
    df["customer_id"] = ["007", "7", "007", "x", "y", "z"]
    df.to_csv(tmp_path / "in.csv", index=False)
    df.to_parquet(tmp_path / "in.parquet")
    store.import_events("tx", tmp_path / "in.csv")
    store.import_events("tx", str(tmp_path / "in.parquet"))
    log = list(EventLogReader(store.config.event_log_root).read_all("tx"))
    assert sorted(e.payload["customer_id"] for e in log).count("007") == 4  # CSV kept the zeros
    assert sum(e.payload["amount"] is None for e in log) == 2
    (tmp_path / "in.txt").write_text("x")
    with pytest.raises(InputDataError, match=r"expected a \.parquet or \.csv file"):
        store.import_events("tx", tmp_path / "in.txt")
    with pytest.raises(InputDataError, match="does not exist"):
        store.import_events("tx", tmp_path / "missing.csv")
    with pytest.raises(InputDataError, match="unknown source 'nope'"):
        store.import_events("nope", df)


def test_compact_log_merges_each_import_file_and_the_cli_says_so(
    make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    repo = make_repo(VIEW, yaml="kafka:\n  partitions: 2\n")
    store = FeatureStore.from_repo(repo)
    for i in range(4):
        store.import_events("tx", frame(20).assign(qty=lambda d, i=i: d["qty"] + 100 * i))
    log = EventLogReader(store.config.event_log_root)
    before = [(e.partition, e.offset, e.payload) for e in log.read_all("tx")]
    assert [n for n, _ in log.usage("tx").values()] == [4, 4]

    assert main(["--repo", str(repo), "compact-log"]) == 0

    out = capsys.readouterr().out
    assert "tx partition 0: 4 → 1 files" in out and "tx partition 1: 4 → 1 files" in out
    assert [n for n, _ in log.usage("tx").values()] == [1, 1]
    assert [(e.partition, e.offset, e.payload) for e in log.read_all("tx")] == before
    with pytest.raises(InputDataError, match="unknown source 'nope'; sources: tx"):
        store.compact_log("nope")
