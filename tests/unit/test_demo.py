"""The demo's pure parts: generated data, the live line, the report (Markdown and PNGs)."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest

from engine import metrics
from engine.demo import (
    EXAMPLE_DEFINITIONS,
    TRAINING_FEATURES,
    Demo,
    DemoOptions,
    _head,
    _history_line,
    _live_line,
    _one_key_per_partition,
    _preview,
    _same,
    _training_frame,
    _watched_customer,
    _with_db,
)
from engine.demo_data import START_MS, fraud_labels, payments, probe_payment
from engine.demo_monitor import (
    LATE_NOTE,
    GroupProgress,
    LiveProbes,
    Monitor,
    ProbeResult,
    ProgressLine,
    Sample,
    WorkerCounters,
    counter_total,
    percentile,
)
from engine.demo_report import (
    DemoResult,
    WatchPoint,
    freshness_figure,
    render_markdown,
    throughput_figure,
    watch_summary,
    write_report,
)
from engine.errors import InputDataError
from engine.frames import to_epoch_ms
from engine.keys import encode_key, partition_for
from engine.push import encode_rows
from engine.store import FeatureStore
from engine.stream.core import BatchOutcome
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


# -- issue 12: what the terminal and the report say ------------------------------------------


def test_training_set_columns_name_their_view(tmp_path: Path) -> None:
    repo = tmp_path / "definitions"
    shutil.copytree(EXAMPLE_DEFINITIONS, repo, ignore=shutil.ignore_patterns(".skewless", "__pycache__"))  # fmt: skip
    store = FeatureStore.from_repo(repo, environ={})
    events = payments(600, customers=20, merchants=5, days=1, seed=2)
    store.import_events("transactions", events)
    labels = fraud_labels(events, 40, seed=3)
    frame = _training_frame(store, labels)
    features = [ref.replace(":", "__") for ref in TRAINING_FEATURES]
    assert list(frame.columns) == [*labels.columns, *features]
    assert frame["customer_spend__amount_count_7d"].max() > 0
    # the terminal: one line per column, led by its name
    head = _head(frame, 7)
    lines = _preview(head).splitlines()
    assert [line.split()[0] for line in lines] == list(head.columns)
    assert lines[4].startswith("customer_spend__amount_sum_30d  ")
    assert len(lines[0].split()) == 1 + len(head)  # the name, then one value per row
    # the report's table
    text = render_markdown(dataclasses.replace(_result(tmp_path), training_head=head))
    assert "| customer_id | merchant_id | event_timestamp | is_fraud | customer_spend__amount_sum_30d |" in text  # fmt: skip
    assert "Each feature column is named `<view>__<feature>`" in text


def _points(statuses: str) -> list[WatchPoint]:
    """A point per letter: e(qual), f (in flight), d(iffers)."""
    names = {"e": "equal", "f": "in flight", "d": "differs"}
    return [WatchPoint(t_ms=i, online=1.0, backfill=1.0, status=names[c])
            for i, c in enumerate(statuses)]  # fmt: skip


def test_watch_summary_says_what_the_unequal_reads_are() -> None:
    equal = WatchPoint(t_ms=9, online=2.0, backfill=2.0, status="equal")
    assert watch_summary("c1", {"a": _points("eee"), "b": _points("ee")}, {}) == [
        "customer c1: 5 of 5 live online reads equal the backfill's processing-time replay at "
        "the same instant"
    ]
    lines = watch_summary("c1", {"a": _points("eefe"), "b": _points("feee")},
                          {"a": equal, "b": equal})  # fmt: skip
    assert lines == [
        "customer c1: 6 of 8 live online reads equal the backfill's processing-time replay at "
        "the same instant",
        "the other 2 raced a batch in flight (stamped processed_at before the read, written to "
        "Redis after it): each equals the replay as of the write it saw",
        "re-read once the workers were idle: 2 of 2 values equal the replay at that instant",
    ]
    odd = dataclasses.replace(equal, online=3.0, status="differs")
    lines = watch_summary("c1", {"a": _points("efd")}, {"a": odd})
    assert lines[1].startswith("1 raced a batch in flight")  # not "the other": one differs
    assert lines[2] == "1 differ from the replay, both at the read and as of the write it saw"
    assert lines[3] == "re-read once the workers were idle: 0 of 1 values equal the replay at that instant"  # fmt: skip


def test_report_states_the_recheck_and_the_late_counter(tmp_path: Path) -> None:
    recheck = {"customer_spend:amount_count_7d": WatchPoint(t_ms=1, online=4.0, backfill=4.0,
                                                            status="equal")}  # fmt: skip
    text = render_markdown(
        dataclasses.replace(_result(tmp_path), watch_recheck=recheck, late=36_512)
    )
    assert (
        "Re-read once the workers were idle, 1 of 1 values of the customer equal the replay" in text
    )
    assert "The workers' `late` counter ended at 36,512: events older than a view's allowed lateness" in text  # fmt: skip
    assert "docs/concepts/lateness.md" in text
    assert "`late` counter" not in render_markdown(_result(tmp_path))  # unknown: not claimed
    assert "Re-read" not in render_markdown(_result(tmp_path))  # no re-read: all reads equal


class _FakeStore:
    """``push`` and ``get_online_features`` as the probes use them; every probe is visible."""

    def __init__(self) -> None:
        self.rows = 0

    def push(self, source_name: str, rows: Any) -> int:
        self.rows += len(rows)
        return len(rows)

    def get_online_features(self, features: Sequence[str], entity_rows: Any, *,
                            now_ms: int | None = None) -> Any:  # fmt: skip
        return pd.DataFrame({f.partition(":")[2]: [1] for f in features})


def test_pushed_rows_are_counted_from_what_push_returned(tmp_path: Path) -> None:
    store = _FakeStore()
    probes = LiveProbes(store, source="transactions", count_ref="v:amount_count_7d",
                        watch_entity={"customer_id": "w"}, watch_refs=["v:x"], prefix="p-")  # fmt: skip
    probes.probe()
    probes.probe("p-7")
    assert probes.pushed == 2 == store.rows
    demo = Demo(DemoOptions(out_dir=tmp_path), io.StringIO())
    assert demo._push(store, pd.DataFrame({"a": [1, 2, 3]})) == 3  # type: ignore[arg-type]
    assert _history_line(40_000, 2.5, 36_667) == (
        "  history  pushed 40,000 rows; all applied in 2.5s (16,000 events/s end to end); "
        "late 36,667"
    )
    assert _history_line(10, 1.0, None).endswith("(10 events/s end to end)")  # late unknown
    results = [ProbeResult(customer_id="p", sent_ms=0, latency_ms=v) for v in (10, 30, 20)]
    assert _live_line(20_000, 20.04, 81, results) == (
        "  live     pushed 20,000 rows in 20.0s (+81 probe rows); freshness (produce → visible "
        "online) p50 20 ms, p99 30 ms over 3 probes"
    )


def _outcome(late: int) -> BatchOutcome:
    return BatchOutcome(commits={}, processed_at_ms=1, records=late, refused=Counter(), applied=0,
                        late=late, fenced=0, entities_written=0)  # fmt: skip


def test_late_counter_is_read_from_the_workers_metrics_endpoints() -> None:
    worker = metrics.WorkerMetrics(CollectorRegistry())
    worker.observe_batch("demo.t", _outcome(5), 0.01)
    worker.observe_batch("other", _outcome(7), 0.01)
    text = generate_latest(worker.registry).decode()
    assert counter_total(text, "skewless_late", {"topic": "demo.t"}) == 5
    assert counter_total(text, "skewless_late", {}) == 12
    assert counter_total(text, "skewless_applied", {"topic": "demo.t"}) == 0
    server = metrics.serve(0, host="127.0.0.1", metrics=worker)
    counters = WorkerCounters([server.url], "demo.t")
    try:
        assert counters.late() == 5
        worker.observe_batch("demo.t", _outcome(3), 0.01)
        assert counters.late() == 8
    finally:
        server.close()
    assert counters.late() == 8  # a worker gone keeps its last answer


class _Progress:
    def read(self) -> tuple[int, int]:
        return 100, 90


def _monitor(out: io.StringIO, late: Callable[[], int], **kwargs: Any) -> Monitor:
    line = ProgressLine(out, tty=False, every_s=0)
    return Monitor(_Progress(), line, late=late, clock=lambda: 1_000, **kwargs)  # type: ignore[arg-type]


def test_late_is_on_the_live_line_and_explained_once() -> None:
    out = io.StringIO()
    values = iter([0, 120, 130])
    monitor = _monitor(out, lambda: next(values))
    assert "lag     10  late 0" in monitor.render(monitor.sample())
    monitor.finish("phase one")
    assert LATE_NOTE not in out.getvalue()  # nothing late yet: nothing to explain
    assert "late 120" in monitor.render(monitor.sample())
    monitor.finish("phase two")
    monitor.sample()
    monitor.finish("phase three")
    assert out.getvalue() == f"phase one\nphase two\n{LATE_NOTE}\nphase three\n"
    assert LATE_NOTE.strip().startswith("late = events older than a view's allowed lateness")
    assert LATE_NOTE.endswith("see docs/concepts/lateness.md")
    assert (Path(__file__).parents[2] / "docs/concepts/lateness.md").exists()


def test_the_monitor_thread_explains_late_before_the_first_line_that_shows_it() -> None:
    out = io.StringIO()
    calls = iter(range(1_000))
    monitor = _monitor(out, lambda: 0 if next(calls) < 2 else 4, tick_s=0.005)
    monitor.start()
    try:
        for _ in range(400):
            if sum(s.late > 0 for s in monitor.samples) >= 2:
                break
            monitor._stop.wait(0.01)
    finally:
        monitor.stop()
    lines = out.getvalue().splitlines()
    assert lines.count(LATE_NOTE) == 1
    first = next(i for i, line in enumerate(lines) if "late 4" in line)
    assert lines[first - 1] == LATE_NOTE
    assert all("late 0" in line for line in lines[: first - 1])


def test_a_note_on_a_terminal_takes_the_refreshing_line_and_the_next_update_redraws() -> None:
    tty = io.StringIO()
    line = ProgressLine(tty, tty=True)
    line.update("a long first text")
    line.note("n")
    line.update("x")
    assert tty.getvalue() == "\ra long first text\rn" + " " * 16 + "\n\rx"


def _phases(tmp_path: Path) -> DemoResult:
    """A run whose history goes ~16x faster than its live phase (1,000/s)."""
    result = _result(tmp_path)
    t0 = result.history_start_ms
    samples = [Sample(t_ms=t0 + 500 * i, phase="history", sent=8_000 * i, applied=8_000 * i - 50,
                      lag=50) for i in range(1, 7)]  # fmt: skip
    for i in range(1, 21):
        sent = 48_000 + 500 * i
        samples.append(Sample(t_ms=t0 + 3_000 + 500 * i, phase="live", sent=sent,
                              applied=sent - 5 * (i % 3), lag=5 * (i % 3)))  # fmt: skip
    return dataclasses.replace(result, samples=samples)


def _horizontal(ax: Any, y: float) -> bool:
    return any(list(line.get_ydata()) == [y, y] for line in ax.get_lines())


def test_throughput_plot_gives_the_live_phase_its_own_scale(tmp_path: Path) -> None:
    result = _phases(tmp_path)
    history, live, lag = throughput_figure(result).axes
    assert history.get_title().startswith("history") and live.get_title().startswith("live")
    assert history.get_ylim()[1] > 10_000  # the history's ~16,000/s ...
    assert 1_000 < live.get_ylim()[1] < 2_000  # ... does not flatten the live 1,000/s
    live_x = (result.live_start_ms - result.history_start_ms) / 1000
    assert all(min(line.get_xdata()) > live_x for line in live.get_lines()[:2])
    assert _horizontal(live, result.rate)  # the target rate
    assert lag.get_yscale() == "symlog" and lag.get_ylabel() == "lag (records)"


def test_freshness_plot_marks_each_p99_with_its_value(tmp_path: Path) -> None:
    result = _result(tmp_path)  # probes 20..49 ms: p99 49; event log 5..90 ms: p99 90
    over_time, spread = freshness_figure(result).axes
    assert over_time.get_yscale() == spread.get_yscale() == "log"
    assert over_time.get_ylabel() == "milliseconds (log scale)"
    assert _horizontal(over_time, 49) and _horizontal(spread, 49)
    assert _horizontal(spread, 90)
    assert [t.get_text() for t in over_time.texts] == ["p99 49 ms"]
    assert [t.get_text() for t in spread.texts] == ["p99 90 ms"]
    text = render_markdown(result)
    assert "the p99 of each drawn as a dashed line" in text.split("## Freshness")[1]
    assert "its own scale" in text.split("## Throughput")[1].split("## Freshness")[0]


def _bootstrap_sandbox(tmp_path: Path, pip_exit: int) -> subprocess.CompletedProcess[str]:
    """scripts/bootstrap.sh in a copy of the layout it needs, with a stand-in for the venv's
    python that prints what pip would and exits with ``pip_exit``."""
    root = Path(__file__).parents[2]
    (tmp_path / "scripts").mkdir()
    shutil.copy(root / "scripts" / "bootstrap.sh", tmp_path / "scripts" / "bootstrap.sh")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "native").mkdir()
    (tmp_path / "engine").mkdir()  # no engine/_native.abi3.so: an install is due
    stubs = {tmp_path / ".venv" / "bin" / "python": f"echo 'WARNING: noise from pip' \"$@\"\nexit {pip_exit}",
             tmp_path / "bin" / "cargo": "exit 0"}  # fmt: skip
    for path, body in stubs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(tmp_path / "scripts" / "bootstrap.sh")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_bootstrap_keeps_pips_output_in_a_log(tmp_path: Path) -> None:
    proc = _bootstrap_sandbox(tmp_path, pip_exit=0)
    log = tmp_path / ".venv" / "skewless-install.log"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"bootstrap: installed skewless (log: {log})"
    assert "noise" not in proc.stdout + proc.stderr
    assert "WARNING: noise from pip -m pip install -e .[dev,bench,dask]" in log.read_text()
    assert (tmp_path / ".venv" / ".skewless-installed").exists()


def test_bootstrap_shows_the_end_of_the_log_when_the_install_fails(tmp_path: Path) -> None:
    proc = _bootstrap_sandbox(tmp_path, pip_exit=3)
    assert proc.returncode == 1
    assert "bootstrap: installing skewless failed; the end of its log" in proc.stderr
    assert "WARNING: noise from pip -m pip install --upgrade pip" in proc.stderr
    assert "installed skewless" not in proc.stdout
    assert not (tmp_path / ".venv" / ".skewless-installed").exists()


def test_preview_puts_rows_on_their_side() -> None:
    rows = pd.DataFrame({"customer_id": ["c1", "c2"], "v__f": [1.5, math.nan]})
    assert _preview(rows) == "customer_id   c1   c2\nv__f         1.5  NaN"
