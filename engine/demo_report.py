"""The demo's report: a Markdown page and three PNG plots (throughput, freshness, online vs backfill).

Plots are drawn with matplotlib's Agg backend (no display needed); the Markdown links them
by relative path, so the report folder can be moved or committed as it is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from engine.demo_monitor import ProbeResult, Sample, percentile
from engine.verify_report import VerifyReport

__all__ = ["DemoResult", "ReportFiles", "WatchPoint", "write_report"]

REPORT_NAME = "demo-report.md"
THROUGHPUT_PNG = "throughput.png"
FRESHNESS_PNG = "freshness.png"
ONLINE_VS_BACKFILL_PNG = "online-vs-backfill.png"


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchPoint:
    """One online read of the watched entity next to the backfill's replay as of that read.

    ``status``: ``equal``; ``in flight`` — a batch that started before the read was written
    after it, so the read equals the replay as of the entity's write time instead; ``differs``.
    """

    t_ms: int
    online: Any
    backfill: Any
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoResult:
    """Everything a demo run measured, for the report and the final summary."""

    run_id: str
    started_at: str  # ISO 8601, UTC
    cores: int
    workers: int
    topic: str
    redis: str  # host:port/db, no credentials
    history_events: int
    live_events: int
    rate: int
    steps: Sequence[tuple[str, float]]  # (step, seconds)
    samples: Sequence[Sample]
    history_start_ms: int
    live_start_ms: int
    live_end_ms: int
    history_catchup_s: float
    probes: Sequence[ProbeResult]
    log_freshness_ms: Sequence[int]  # live payments: processed_at - event time (event log)
    watch_entity: str
    watch: Mapping[str, Sequence[WatchPoint]]  # ref -> points
    training_rows: int
    training_columns: int
    training_features: int
    fraud_rate: float
    training_head: pd.DataFrame
    verify: VerifyReport
    paths: Mapping[str, Path] = field(default_factory=dict)  # what → where, for "Files"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportFiles:
    markdown: Path
    plots: tuple[Path, ...]


def write_report(result: DemoResult, folder: Path) -> ReportFiles:
    """Write ``demo-report.md`` and its PNG plots into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = (
        _plot_throughput(result, folder / THROUGHPUT_PNG),
        _plot_freshness(result, folder / FRESHNESS_PNG),
        _plot_watch(result, folder / ONLINE_VS_BACKFILL_PNG),
    )
    markdown = folder / REPORT_NAME
    markdown.write_text(render_markdown(result), encoding="utf-8")
    return ReportFiles(markdown=markdown, plots=plots)


# -- numbers --------------------------------------------------------------------------------


def _latencies(result: DemoResult) -> list[int]:
    return [p.latency_ms for p in result.probes if p.latency_ms is not None]


def _quantiles(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {percentile(values, 0.5):,.0f} ms · p90 {percentile(values, 0.9):,.0f} ms · "
        f"p99 {percentile(values, 0.99):,.0f} ms · max {max(values):,.0f} ms "
        f"({len(values):,} samples)"
    )


def _rates(samples: Sequence[Sample]) -> list[tuple[float, float, float, int]]:
    """(t_ms, sent/s, applied/s, lag) between consecutive samples."""
    out: list[tuple[float, float, float, int]] = []
    for a, b in itertools.pairwise(samples):
        span = (b.t_ms - a.t_ms) / 1000
        if span <= 0:
            continue
        out.append((b.t_ms, (b.sent - a.sent) / span, (b.applied - a.applied) / span, b.lag))
    return out


def _watch_counts(result: DemoResult) -> tuple[int, int, int]:
    points = [p for series in result.watch.values() for p in series]
    equal = sum(p.status == "equal" for p in points)
    flight = sum(p.status == "in flight" for p in points)
    return equal, flight, len(points) - equal - flight


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index dropped)."""
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = [
        "| " + " | ".join(_cell(v) for v in row) + " |"
        for row in frame.itertuples(index=False, name=None)
    ]
    return "\n".join([head, rule, *rows])


def _percent(rate: float) -> str:
    """``100%`` only when exact; otherwise rounded down, so one miss never reads as 100."""
    if rate == 1.0:
        return "100%"
    return f"{math.floor(rate * 10_000) / 100:.2f}%"


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it (a report kept in a
    repository then names no machine's absolute paths)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _demote(markdown: str) -> str:
    """Headings two levels down, so an embedded report nests under this one's sections."""
    return "\n".join(
        "##" + line if line.startswith("#") else line for line in markdown.splitlines()
    )


def render_markdown(result: DemoResult) -> str:
    """The report's Markdown text."""
    history_rate = result.history_events / result.history_catchup_s
    live_s = (result.live_end_ms - result.live_start_ms) / 1000
    probes = _latencies(result)
    lost = sum(p.latency_ms is None for p in result.probes)
    equal, flight, differs = _watch_counts(result)
    total_s = sum(seconds for _, seconds in result.steps)
    steps = "\n".join(f"| {name} | {seconds:,.1f} |" for name, seconds in result.steps)
    refs = ", ".join(f"`{r}`" for r in result.watch)
    files = "\n".join(f"| {what} | `{_shown(path)}` |" for what, path in result.paths.items())
    lines = [
        "# skewless demo report",
        "",
        f"Run `{result.run_id}` started {result.started_at} on {result.cores} cores: "
        f"{result.workers} stream workers (kafka runtime) on topic `{result.topic}`, "
        f"Redis `{result.redis}`. {result.history_events + result.live_events:,} generated "
        f"card payments: {result.history_events:,} from the last day sent as fast as the "
        f"producer goes, then {result.live_events:,} live at {result.rate:,}/s.",
        "",
        "| step | seconds |",
        "| --- | ---: |",
        steps,
        f"| **total** | **{total_s:,.1f}** |",
        "",
        "## Throughput",
        "",
        f"![throughput]({THROUGHPUT_PNG})",
        "",
        f"- history: {result.history_events:,} payments produced, applied and committed by "
        f"{result.workers} workers in {result.history_catchup_s:.1f} s — "
        f"**{history_rate:,.0f} events/s** end to end (produce → Redis write → event log → "
        "commit), on the same cores as Kafka, Redis and the producer.",
        f"- live: {result.live_events:,} payments at {result.rate:,}/s for {live_s:.1f} s; "
        f"the highest lag sampled in the live phase was "
        f"{max((s.lag for s in result.samples if s.phase == 'live'), default=0):,} records.",
        "",
        "## Freshness",
        "",
        f"![freshness]({FRESHNESS_PNG})",
        "",
        f"- **produce → visible online** (probe payments of fresh customers, sent every "
        f"~0.25 s during the live phase; an online read polled every 5 ms until it returned "
        f"the payment): {_quantiles(probes)}"
        + (f"; {lost} probes not visible within the timeout" if lost else "")
        + ".",
        "- produce → the worker's batch start (every live payment, from the event log: "
        "`processed_at` - event time, where the event time is the send time): "
        f"{_quantiles(result.log_freshness_ms)}. The write to Redis follows the batch start "
        "by the batch's processing time.",
        "",
        "## Online vs backfill, one customer over time",
        "",
        f"![online vs backfill]({ONLINE_VS_BACKFILL_PNG})",
        "",
        f"Customer `{result.watch_entity}`, features {refs}: every ~0.25 s of the live phase "
        "an online read (dots), and afterwards the backfill's processing-time replay of the "
        "event log as of each read's time (line). "
        f"**{equal} of {equal + flight + differs} reads equal the replay bit for bit**"
        + (
            f"; {flight} raced a batch in flight (started before the read, written after it) "
            "and equal the replay as of the entity's write time instead"
            if flight
            else ""
        )
        + (f"; **{differs} differ**" if differs else "")
        + ".",
        "",
        "## Verify",
        "",
        f"**verify rate: {_percent(result.verify.rate)}** of {result.verify.values_checked:,} "
        "feature values (online store vs the backfill's replay of the event log).",
        "",
        _demote(result.verify.to_markdown().strip()),
        "",
        "## Training set",
        "",
        f"**training set: {result.training_rows:,} rows x {result.training_columns} columns** "
        f"({result.training_features} features, point in time: each label's features as of its "
        f"payment's time, never including it); fraud rate {result.fraud_rate:.1%} "
        "(generated: card not present, non-USD, amount above 120, with 60 % probability; "
        "else 1 %). Features of view `customer_online` (allowed lateness 2 h) only count the "
        "last 2 hours of the history: the day was sent all at once, so older payments arrived "
        "too late for that view — online and in the backfill alike, since both apply the "
        "admission rule to the logged `processed_at`.",
        "",
        markdown_table(result.training_head),
        "",
    ]
    if files:
        lines += ["## Files", "", "| what | where |", "| --- | --- |", files, ""]
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------


def _figure(width: float = 9.0, height: float = 4.2) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt.figure(figsize=(width, height), dpi=110)


def _save(fig: Any, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_throughput(result: DemoResult, path: Path) -> Path:
    fig = _figure(height=5.6)
    rates = _rates(result.samples)
    t0 = result.history_start_ms
    xs = [(t - t0) / 1000 for t, _, _, _ in rates]
    live_x = (result.live_start_ms - t0) / 1000
    top = fig.add_subplot(2, 1, 1)
    top.plot(xs, [r[1] for r in rates], label="produced", color="tab:blue", alpha=0.6)
    top.plot(xs, [r[2] for r in rates], label="applied + committed", color="tab:green")
    top.set_ylabel("events per second")
    top.legend(loc="upper right")
    top.set_title(
        f"Throughput: {result.workers} workers, {result.cores} cores "
        f"(history until {live_x:.1f} s, then live at {result.rate:,}/s)"
    )
    bottom = fig.add_subplot(2, 1, 2, sharex=top)
    bottom.plot(xs, [r[3] for r in rates], color="tab:red")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_ylabel("lag (records)")
    bottom.set_xlabel("seconds since the first payment was sent")
    for ax in (top, bottom):
        ax.axvline(live_x, color="grey", linestyle="--", linewidth=1)
    return _save(fig, path)


def _plot_freshness(result: DemoResult, path: Path) -> Path:
    import numpy as np

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    probes = _latencies(result)
    series = [
        (probes, "produce → visible online (probes)", "tab:green"),
        (list(result.log_freshness_ms), "produce → batch start (event log)", "tab:blue"),
    ]
    present = [max(1, v) for values, _, _ in series for v in values]
    if present:
        low, high = math.log10(min(present) / 1.5), math.log10(max(present) * 1.5)
        bins = np.logspace(low, high, 40)
        for values, label, color in series:
            if values:
                weights = np.full(len(values), 100.0 / len(values))
                ax.hist(
                    [max(1, v) for v in values],
                    bins=bins,
                    weights=weights,
                    alpha=0.55,
                    label=f"{label}, p50 {percentile(values, 0.5):,.0f} ms",
                    color=color,
                )
        ax.set_xscale("log")
        ax.legend()
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_ylabel("% of samples")
    ax.set_title("Freshness during the live phase")
    return _save(fig, path)


def _plot_watch(result: DemoResult, path: Path) -> Path:
    refs = list(result.watch)
    fig = _figure(height=2.6 * max(1, len(refs)) + 0.6)
    t0 = result.live_start_ms
    for i, ref in enumerate(refs, start=1):
        ax = fig.add_subplot(len(refs), 1, i)
        points = result.watch[ref]
        xs = [(p.t_ms - t0) / 1000 for p in points]
        ax.step(
            xs,
            [_number(p.backfill) for p in points],
            where="post",
            color="tab:blue",
            label="backfill (processing-time replay of the log)",
        )
        ax.plot(
            xs,
            [_number(p.online) for p in points],
            "o",
            markersize=3.5,
            color="tab:orange",
            label="online read (Redis)",
        )
        for status, color, label in (
            ("in flight", "tab:grey", "a batch was in flight at the read"),
            ("differs", "tab:red", "differs from the replay"),
        ):
            odd = [p for p in points if p.status == status]
            if odd:
                ax.plot(
                    [(p.t_ms - t0) / 1000 for p in odd],
                    [_number(p.online) for p in odd],
                    "x",
                    color=color,
                    markersize=8,
                    label=label,
                )
        ax.set_ylabel(ref.partition(":")[2])
        ax.legend(loc="best", fontsize="small")
        if i == len(refs):
            ax.set_xlabel("seconds since the live phase started")
    fig.suptitle(f"Customer {result.watch_entity}: online value vs backfill, same times")
    return _save(fig, path)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
