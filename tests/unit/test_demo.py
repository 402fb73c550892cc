"""The demo's pure parts: generated data, the live line, the report (Markdown and PNGs)."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from engine.demo import (
    EXAMPLE_DEFINITIONS,
    DemoOptions,
    _one_key_per_partition,
    _same,
    _watched_customer,
    _with_db,
)
from engine.demo_data import START_MS, fraud_labels, payments, probe_payment
from engine.demo_monitor import GroupProgress, ProbeResult, ProgressLine, Sample, percentile
from engine.demo_report import DemoResult, WatchPoint, render_markdown, write_report
from engine.errors import InputDataError
from engine.frames import to_epoch_ms
from engine.keys import encode_key, partition_for
from engine.push import encode_rows
from engine.store import FeatureStore
from engine.verify_report import Mismatch, VerifyReport

# -- generated data ------------------------------------------------------------------------


def test_payments_are_deterministic_and_in_the_requested_span() -> None:
    a = payments(2_000, customers=50, merchants=10, days=1, seed=3, start_ms=START_MS)
    b = payments(2_000, customers=50, merchants=10, days=1, seed=3, start_ms=START_MS)
    pd.testing.assert_frame_equal(a, b)
    assert a["ts"].between(START_MS, START_MS + 86_400_000 - 1).all()
    assert a["processed_at"].is_monotonic_increasing
    assert (a["processed_at"] >= a["ts"]).all()
    assert a["customer_id"].nunique() <= 50
    assert a["amount"].isna().any()  # the generator keeps some null amounts
    other = payments(2_000, customers=50, merchants=10, days=1, seed=4, start_ms=START_MS)
    assert not other["ts"].equals(a["ts"])


def test_generated_payments_pass_the_workers_own_validation() -> None:
    source = FeatureStore.from_repo(EXAMPLE_DEFINITIONS, environ={}).plan.sources["transactions"]
    rows = payments(300, customers=20, merchants=5, days=1, seed=1).drop(columns="processed_at")
    now = int(rows["ts"].max()) + 1
    assert len(encode_rows(source, rows, now_ms=now)) == 300
    assert len(encode_rows(source, [probe_payment("p1", now)], now_ms=now)) == 1


def test_fraud_labels_follow_the_rule_and_point_at_real_payments() -> None:
    events = payments(20_000, customers=200, merchants=20, days=1, seed=5)
    labels = fraud_labels(events, 5_000, seed=6)
    assert len(labels) == 5_000
    assert labels["transaction_id"].is_unique
    joined = labels.merge(events, on="transaction_id", suffixes=("", "_event"))
    assert (joined["customer_id"] == joined["customer_id_event"]).all()
    stamps = to_epoch_ms(joined["event_timestamp"], "event_timestamp")
    assert (stamps == joined["ts"].to_numpy()).all()  # each label at its own payment's time
    rule = (~joined["card_present"]) & (joined["amount"].fillna(0) > 120)
    rule &= joined["currency"] != "USD"
    assert joined.loc[rule, "is_fraud"].mean() > 0.4  # 60 % expected
    assert joined.loc[~rule, "is_fraud"].mean() < 0.03  # 1 % expected


# -- helpers -------------------------------------------------------------------------------


def test_options_are_checked() -> None:
    with pytest.raises(InputDataError, match="--rate"):
        DemoOptions(rate=0).check()
    with pytest.raises(InputDataError, match="--redis-db"):
        DemoOptions(redis_db=16).check()
    DemoOptions().check()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/3"),
        ("redis://127.0.0.1:6380", "redis://127.0.0.1:6380/3"),
        ("rediss://cache:6379/12", "rediss://cache:6379/3"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=3"),
    ],
)
def test_with_db(url: str, expected: str) -> None:
    assert _with_db(url, 3) == expected


def test_one_key_per_partition_covers_every_partition() -> None:
    keys = _one_key_per_partition("ready-x-", 6)
    assert sorted(partition_for(encode_key([k]), 6) for k in keys) == list(range(6))


def test_watched_customer_has_about_one_payment_per_second() -> None:
    live = pd.DataFrame({"customer_id": ["a"] * 50 + ["b"] * 21 + ["c"] * 3})
    assert _watched_customer(live, 20.0) == "b"


def test_same_is_bit_for_bit() -> None:
    assert _same(0.1 + 0.2, 0.1 + 0.2)
    assert not _same(0.1 + 0.2, 0.3)
    assert _same(None, math.nan)
    assert _same(3, 3)
    assert not _same(3, 4)


# -- live line -----------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert math.isnan(percentile([], 0.5))


def test_progress_line_refreshes_on_a_terminal_and_prints_lines_elsewhere() -> None:
    tty = io.StringIO()
    line = ProgressLine(tty, tty=True)
    line.update("a long first text")
    line.update("short")
    line.done("end")
    assert tty.getvalue() == "\ra long first text\rshort            \rend  \n"
    pipe = io.StringIO()
    line = ProgressLine(pipe, tty=False, every_s=3600)
    line.update("first")
    line.update("dropped: within the interval")
    line.done("end")
    assert pipe.getvalue() == "first\nend\n"


class _Offsets:
    def __init__(self, marks: dict[tuple[str, int], tuple[int, int]], done: dict) -> None:
        self.marks, self.done = marks, done

    def watermarks(self, topics):  # type: ignore[no-untyped-def]
        return {tp: m for tp, m in self.marks.items() if tp[0] in set(topics)}

    def committed(self, group, partitions):  # type: ignore[no-untyped-def]
        return {tp: self.done.get(tp) for tp in partitions}


def test_group_progress_counts_from_each_partitions_start() -> None:
    offsets = _Offsets({("t", 0): (10, 110), ("t", 1): (0, 50)}, {("t", 0): 60})
    assert GroupProgress(offsets, "g", "t").read() == (150, 50)  # p1: nothing committed


# -- report --------------------------------------------------------------------------------


def _result(tmp_path: Path, *, differs: bool = False) -> DemoResult:
    t0 = 1_800_000_000_000
    samples = [
        Sample(t_ms=t0 + 500 * i, phase="history" if i < 6 else "live", sent=min(6, i) * 1000
               + max(0, i - 6) * 500, applied=min(6, i) * 900, lag=i * 10)
        for i in range(12)
    ]  # fmt: skip
    probes = [ProbeResult(customer_id=f"p{i}", sent_ms=t0, latency_ms=20 + i) for i in range(30)]
    probes.append(ProbeResult(customer_id="lost", sent_ms=t0, latency_ms=None))
    points = [
        WatchPoint(t_ms=t0 + 3_000 + 250 * i, online=float(i // 3), backfill=float(i // 3),
                   status="equal")
        for i in range(12)
    ]  # fmt: skip
    points[4] = WatchPoint(t_ms=points[4].t_ms, online=0.0, backfill=1.0, status="in flight")
    if differs:
        points[7] = WatchPoint(t_ms=points[7].t_ms, online=9.0, backfill=2.0, status="differs")
    verify = VerifyReport(
        at_ms=t0 + 9_000, views=("customer_spend",), entities_checked=10, values_checked=90,
        mismatches=(), skipped=0, sample=10, seed=7,
    )  # fmt: skip
    head = pd.DataFrame(
        {"customer_id": ["c1", "c2"], "event_timestamp": pd.to_datetime([t0, t0], unit="ms"),
         "is_fraud": [False, True], "amount_sum_30d": [1.5, math.nan]}
    )  # fmt: skip
    return DemoResult(
        run_id="r1", started_at="2027-01-15T08:00:00+00:00", cores=2, workers=2,
        topic="demo.transactions.r1", redis="127.0.0.1:6379/3", history_events=6_000,
        live_events=3_000, rate=1_000, steps=[("apply", 0.5), ("stream", 9.0)],
        samples=samples, history_start_ms=t0, live_start_ms=t0 + 3_000,
        live_end_ms=t0 + 6_000, history_catchup_s=2.5, probes=probes,
        log_freshness_ms=[5, 9, 40, 41, 90], watch_entity="c00042",
        watch={"customer_spend:amount_count_7d": points}, training_rows=2_000,
        training_columns=14, training_features=10, fraud_rate=0.031, training_head=head,
        verify=verify, paths={"training set": tmp_path / "training_set.parquet"},
    )  # fmt: skip


def test_report_markdown_states_the_measured_numbers(tmp_path: Path) -> None:
    text = render_markdown(_result(tmp_path))
    assert "**verify rate: 100%** of 90 feature values" in text
    assert "**training set: 2,000 rows x 14 columns** (10 features" in text
    assert "6,000 payments produced, applied and committed by 2 workers in 2.5 s" in text
    assert "**2,400 events/s** end to end" in text
    assert "p50 34 ms" in text  # probes 20..49 ms: nearest-rank median
    assert "1 probes not visible within the timeout" in text
    assert "**11 of 12 reads equal the replay bit for bit**; 1 raced a batch in flight" in text
    assert "\n### skewless verify report" in text  # the embedded report nests one level down
    assert "| c2 | 2027-01-15 08:00:00.000 | True |  |" in text  # NaN shows as an empty cell
    assert "differ" not in text.split("## Verify")[0].split("## Online vs backfill")[1]
    assert "**1 differ**" in render_markdown(_result(tmp_path, differs=True))


def test_a_verify_rate_below_one_never_reads_as_100(tmp_path: Path) -> None:
    result = _result(tmp_path)
    miss = Mismatch(view="customer_spend", feature="amount_sum_30d", entity={"customer_id": "c1"},
                    online=1.0, expected=2.0, reason="test", kind="value_differs", at_ms=1)  # fmt: skip
    verify = dataclasses.replace(result.verify, values_checked=100_000, mismatches=(miss,))
    text = render_markdown(dataclasses.replace(result, verify=verify))
    assert "**verify rate: 99.99%** of 100,000 feature values" in text


def test_report_files_are_valid_pngs_linked_from_the_markdown(tmp_path: Path) -> None:
    files = write_report(_result(tmp_path), tmp_path / "report")
    text = files.markdown.read_text(encoding="utf-8")
    assert len(files.plots) == 3
    for plot in files.plots:
        assert f"]({plot.name})" in text
        with Image.open(plot) as image:
            image.verify()
            assert image.format == "PNG"
        with Image.open(plot) as image:
            assert image.size[0] >= 600 and image.size[1] >= 300
