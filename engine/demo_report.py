"""The demo's report: a Markdown page and three PNG plots (throughput, freshness, online vs backfill).

Each plot is a matplotlib ``Figure`` built without pyplot (no display, no global state),
then saved as PNG; the Markdown links them by relative path, so the report folder can be
moved or committed as it is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from engine.demo_monitor import ProbeResult, Sample, percentile
from engine.verify_report import VerifyReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DemoResult",
    "ReportFiles",
    "WatchPoint",
    "cell_text",
    "freshness_figure",
    "throughput_figure",
    "watch_figure",
    "watch_summary",
    "write_report",
]

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
    # the workers' late counter at the end: (event, view) pairs not admitted (None: unknown)
    late: int | None = None
    # ref -> a re-read of the watched entity once the workers were idle (when a read was
    # not equal), next to the replay as of that re-read
    watch_recheck: Mapping[str, WatchPoint] = field(default_factory=dict)
    paths: Mapping[str, Path] = field(default_factory=dict)  # what → where, for "Files"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportFiles:
    markdown: Path
    plots: tuple[Path, ...]


def write_report(result: DemoResult, folder: Path) -> ReportFiles:
    """Write ``demo-report.md`` and its PNG plots into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = (
        _save(throughput_figure(result), folder / THROUGHPUT_PNG),
        _save(freshness_figure(result), folder / FRESHNESS_PNG),
        _save(watch_figure(result), folder / ONLINE_VS_BACKFILL_PNG),
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


@dataclass(frozen=True, slots=True)
class _Rate:
    t_ms: int
    phase: str  # of the later sample
    sent: float  # per second
    applied: float  # per second
    lag: int


def _rates(samples: Sequence[Sample]) -> list[_Rate]:
    """Rates between consecutive samples, each in the phase of the later one."""
    out: list[_Rate] = []
    for a, b in itertools.pairwise(samples):
        span = (b.t_ms - a.t_ms) / 1000
        if span <= 0:
            continue
        sent, applied = (b.sent - a.sent) / span, (b.applied - a.applied) / span
        out.append(_Rate(t_ms=b.t_ms, phase=b.phase, sent=sent, applied=applied, lag=b.lag))
    return out


def _watch_counts(watch: Mapping[str, Sequence[WatchPoint]]) -> tuple[int, int, int]:
    points = [p for series in watch.values() for p in series]
    equal = sum(p.status == "equal" for p in points)
    flight = sum(p.status == "in flight" for p in points)
    return equal, flight, len(points) - equal - flight


def watch_summary(
    entity: str,
    watch: Mapping[str, Sequence[WatchPoint]],
    recheck: Mapping[str, WatchPoint],
) -> list[str]:
    """The terminal's lines on the watched entity: how many live online reads equal the
    replay at the same instant, what the others are, and the re-read once the workers
    were idle (when there is one).

    Example:
        >>> watch_summary("c1", {"v:f": points}, {})  # doctest: +SKIP
        ["customer c1: 40 of 40 live online reads equal the backfill's processing-time replay at the same instant"]
    """
    equal, flight, differs = _watch_counts(watch)
    lines = [
        f"customer {entity}: {equal} of {equal + flight + differs} live online reads equal the "
        "backfill's processing-time replay at the same instant"
    ]
    if flight:
        lines.append(
            f"{'the other ' if not differs else ''}{flight} raced a batch in flight (stamped "
            "processed_at before the read, written to Redis after it): each equals the replay "
            "as of the write it saw"
        )
    if differs:
        lines.append(
            f"{differs} differ from the replay, both at the read and as of the write it saw"
        )
    if recheck:
        ok = sum(p.status == "equal" for p in recheck.values())
        lines.append(
            f"re-read once the workers were idle: {ok} of {len(recheck)} values equal the "
            "replay at that instant"
        )
    return lines


def cell_text(value: Any) -> str:
    """A value as the report shows it: floats to 10 significant digits, NaN and None
    empty, timestamps to the millisecond, ``|`` escaped."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, list):
        return "[" + ", ".join(cell_text(v) for v in value) + "]"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index dropped)."""
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = [
        "| " + " | ".join(cell_text(v) for v in row) + " |"
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
    equal, flight, differs = _watch_counts(result.watch)
    rechecked = sum(p.status == "equal" for p in result.watch_recheck.values())
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
        "- the plot draws each phase on its own scale (the history's rate is many times the "
        "live one), and the lag of the whole run below.",
        "",
        "## Freshness",
        "",
        f"![freshness]({FRESHNESS_PNG})",
        "",
        f"- **produce → visible online** (probe payments of fresh customers, sent every "
        f"~0.25 s during the live phase; an online read polled every 5 ms until it returned "
        f"the payment): {_quantiles(probes)}"
        + (f"; {lost} probes not visible within the timeout" if lost else "")
        + ". The plot shows each probe over the live phase (left) and the distribution of "
        "both measures (right), with the p99 of each drawn as a dashed line labelled with its "
        "value.",
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
            f"; {flight} raced a batch in flight (its `processed_at` stamp before the read, its "
            "Redis write after it) and equal the replay as of the write they saw instead"
            if flight
            else ""
        )
        + (f"; **{differs} differ**" if differs else "")
        + "."
        + (
            f" Re-read once the workers were idle, {rechecked} of {len(result.watch_recheck)} "
            "values of the customer equal the replay at that instant."
            if result.watch_recheck
            else ""
        ),
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
        "else 1 %). Each feature column is named `<view>__<feature>` "
        "(`full_feature_names=True`). Features of view `customer_online` (allowed lateness "
        "2 h) only count the last 2 hours of the history: the day was sent all at once, so "
        "older payments arrived too late for that view — online and in the backfill alike, "
        "since both apply the admission rule to the logged `processed_at`."
        + (
            ""
            if result.late is None
            else f" The workers' `late` counter ended at {result.late:,}: events older than a "
            "view's allowed lateness when they arrived, counted per view; they stay in the "
            "event log (see `docs/concepts/lateness.md`)."
        ),
        "",
        markdown_table(result.training_head),
        "",
    ]
    if files:
        lines += ["## Files", "", "| what | where |", "| --- | --- |", files, ""]
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------

_P99_LABEL = "p99 {:,.0f} ms"


def _figure(width: float = 9.0, height: float = 4.2) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    return path


def throughput_figure(result: DemoResult) -> Figure:
    """Produced and applied events per second, the history and the live phase each on its
    own scale (the history's rate flattens the live one on a shared axis), and the lag of
    the whole run below.

    Axes, in order: history rates, live rates (with the target rate), lag.
    """
    fig = _figure(height=6.0)
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 2))
    rates = _rates(result.samples)
    t0 = result.history_start_ms
    live_x = (result.live_start_ms - t0) / 1000
    history = fig.add_subplot(grid[0, 0])
    live = fig.add_subplot(grid[0, 1])
    lag = fig.add_subplot(grid[1, :])
    phases = (
        (history, [r for r in rates if r.phase != "live"],
         f"history: {result.history_events:,} payments, as fast as possible"),
        (live, [r for r in rates if r.phase == "live"],
         f"live: {result.live_events:,} payments at {result.rate:,}/s"),
    )  # fmt: skip
    for ax, phase, title in phases:
        xs = [(r.t_ms - t0) / 1000 for r in phase]
        ax.plot(xs, [r.sent for r in phase], label="produced", color="tab:blue", alpha=0.6)
        ax.plot(xs, [r.applied for r in phase], label="applied + committed", color="tab:green")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("seconds since the first payment")
        ax.set_ylim(bottom=0)
    live.axhline(result.rate, color="grey", linestyle=":", linewidth=1,
                 label=f"target {result.rate:,}/s")  # fmt: skip
    history.set_ylabel("events per second")
    history.legend(loc="upper right", fontsize="small")
    live.legend(loc="lower right", fontsize="small")
    lag.plot([(r.t_ms - t0) / 1000 for r in rates], [r.lag for r in rates], color="tab:red")
    lag.set_yscale("symlog", linthresh=10)
    lag.set_ylabel("lag (records)")
    lag.set_xlabel("seconds since the first payment was sent")
    lag.axvline(live_x, color="grey", linestyle="--", linewidth=1)
    lag.annotate(
        "live phase", (live_x, 1), xycoords=("data", "axes fraction"), xytext=(4, -12),
        textcoords="offset points", fontsize="small", color="grey",
    )  # fmt: skip
    fig.suptitle(f"Throughput: {result.workers} workers, {result.cores} cores")
    fig.tight_layout()
    return fig


def freshness_figure(result: DemoResult) -> Figure:
    """Freshness in milliseconds (log scale): each probe over the live phase (left) and the
    distribution of both measures (right, sharing the axis), with each p99 drawn as a
    dashed horizontal line labelled with its value.

    Axes, in order: probes over time, distributions.
    """
    import numpy as np

    fig = _figure(height=4.6)
    grid = fig.add_gridspec(1, 2, width_ratios=(3, 2))
    over_time = fig.add_subplot(grid[0, 0])
    spread = fig.add_subplot(grid[0, 1], sharey=over_time)
    seen = [p for p in result.probes if p.latency_ms is not None]
    probes = [p.latency_ms for p in seen if p.latency_ms is not None]
    log = list(result.log_freshness_ms)
    series = [
        (probes, "produce → visible online (probes)", "tab:green"),
        (log, "produce → batch start (event log)", "tab:blue"),
    ]
    over_time.plot(
        [(p.sent_ms - result.live_start_ms) / 1000 for p in seen],
        [max(1, v) for v in probes],
        "o",
        markersize=3,
        color="tab:green",
        label=series[0][1],
    )
    over_time.set_yscale("log")
    over_time.set_xlabel("seconds since the live phase started (probe sent)")
    over_time.set_ylabel("milliseconds (log scale)")
    over_time.set_title("produce → visible online, per probe", fontsize="medium")
    present = [max(1, v) for values, _, _ in series for v in values]
    if present:
        low, high = math.log10(min(present) / 1.5), math.log10(max(present) * 1.5)
        bins = np.logspace(low, high, 40).tolist()
        for values, label, color in series:
            if values:
                spread.hist(
                    [max(1, v) for v in values],
                    bins=bins,
                    weights=np.full(len(values), 100.0 / len(values)),
                    orientation="horizontal",
                    alpha=0.55,
                    label=f"{label}, p50 {percentile(values, 0.5):,.0f} ms",
                    color=color,
                )
        spread.legend(loc="lower right", fontsize="small")
    spread.set_xlabel("% of samples")
    spread.set_title("distribution", fontsize="medium")
    spread.tick_params(labelleft=False)
    if probes:
        p99 = max(1.0, percentile(probes, 0.99))
        for ax in (over_time, spread):
            ax.axhline(p99, color="tab:green", linestyle="--", linewidth=1)
        _label_line(over_time, p99, _P99_LABEL.format(p99), "tab:green")
    if log:
        p99 = max(1.0, percentile(log, 0.99))
        spread.axhline(p99, color="tab:blue", linestyle="--", linewidth=1)
        _label_line(spread, p99, _P99_LABEL.format(p99), "tab:blue")
    fig.suptitle("Freshness during the live phase")
    fig.tight_layout()
    return fig


def _label_line(ax: Axes, y: float, text: str, color: str) -> None:
    """``text`` just above the right end of the horizontal line at ``y``."""
    ax.text(0.99, y, text, transform=ax.get_yaxis_transform(), ha="right", va="bottom",
            color=color, fontsize="small",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})  # fmt: skip


def watch_figure(result: DemoResult) -> Figure:
    """One panel per watched feature: the online reads (dots) and the replay at the same
    times (line); reads that raced a batch or differ are marked."""
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
    fig.tight_layout()
    return fig


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
