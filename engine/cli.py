"""The `skewless` command line (click): the one place that prints and turns errors into exit codes.

Exit codes (docs/cli.md): 0 success; 1 the command ran and failed (definitions, input data,
a service that does not answer, a verify mismatch, an unhealthy status); 2 the command line
itself is wrong (unknown command or option, a missing or ill-typed argument); 3 verify found
no mismatch but values stayed in flight; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine.demo import EXAMPLE_DEFINITIONS, DemoOptions
from engine.durations import format_duration
from engine.errors import InputDataError, SkewlessError
from engine.plan import describe_window
from engine.secrets import redact_url
from engine.store import FeatureStore

if TYPE_CHECKING:
    import pandas as pd

    from engine.metrics import MetricsServer
    from engine.online_read import OnlineResponse
    from engine.stream.kafka_runtime import WorkerOptions

EXIT_OK = 0
EXIT_ERROR = 1  # the command ran and failed
EXIT_USAGE = 2  # the command line is wrong (click's UsageError)
EXIT_UNVERIFIABLE = 3  # verify: no mismatch, but some values were still in flight
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

DEFAULT_REPO = "definitions"
REPO_ENV = "SKEWLESS_REPO"
_REPO_KEY = "skewless.repo"

DESCRIPTION = """Compute streaming features once; serve them fresh and train on the same values.

You declare windowed aggregation features (sums, counts, means over 1h, 7d, 30d...) in a
definitions folder. `skewless worker` keeps them fresh in Redis as events arrive on Kafka;
`skewless get` and `skewless serve` read them; `skewless backfill` builds point-in-time
training sets from the event log with the same code, so training and serving never disagree.

New here? Run `skewless demo` (starts local Kafka and Redis), then `skewless plan` in your
own definitions folder. Docs: docs/README.md.
"""

EPILOG = """\b
Examples:
  skewless demo                       the whole engine on local services, with a report
  skewless plan --repo my_features    check a definitions folder
  skewless get customer_spend:amount_sum_30d customer_id=c1

Exit codes: 0 ok, 1 failed, 2 bad command line, 3 verify in flight, 130 interrupted.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skewless")
    except PackageNotFoundError:  # a checkout on sys.path without an install
        return "unknown (not installed)"


def _remember_repo(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().meta[_REPO_KEY] = value


def repo_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--repo``, accepted before the command (``skewless --repo R plan``) or after it."""
    return click.option(
        "--repo",
        metavar="PATH",
        default=None,
        expose_value=False,
        callback=_remember_repo,
        show_default=f"${REPO_ENV} or ./{DEFAULT_REPO}",
        help="Definitions folder (with its skewless.yaml).",
    )(f)


def repo_path() -> str:
    """The ``--repo`` given (after the command wins), else $SKEWLESS_REPO, else ./definitions."""
    ctx = click.get_current_context()
    given = ctx.find_root().meta.get(_REPO_KEY)
    return str(given or os.environ.get(REPO_ENV) or DEFAULT_REPO)


def _store() -> FeatureStore:
    return FeatureStore.from_repo(repo_path())


class _Group(click.Group):
    """Commands listed in the order a user meets them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


CONTEXT = {"help_option_names": ["--help", "-h"], "show_default": True, "max_content_width": 100}


@click.group(
    cls=_Group,
    invoke_without_command=True,
    context_settings=CONTEXT,
    help=DESCRIPTION,
    epilog=EPILOG,
)
@click.version_option(
    _version(), "--version", "-V", prog_name="skewless", message="%(prog)s %(version)s"
)
@repo_option
@click.pass_context
def cli(ctx: click.Context) -> None:
    if ctx.invoked_subcommand is None:  # bare `skewless`: help, exit 0 (as kubectl does)
        click.echo(ctx.get_help())
        return
    _quiet_client_logs(ctx.invoked_subcommand)


def _example(*lines: str) -> str:
    """A command's help ends with its example (click keeps ``\\b`` paragraphs as written)."""
    body = "\n".join(f"  {line}" for line in lines)
    examples = sum(not line.startswith(" ") for line in lines)
    return f"\b\nExample{'s' if examples > 1 else ''}:\n{body}"


@cli.command(
    short_help="Check the definitions; show views, features, changes.",
    epilog=_example("skewless plan --repo definitions"),
)
@repo_option
def plan() -> int:
    """Validate the definitions; show each view, its features and what changed since apply."""
    store = _store()
    change = store.diff()
    status = {name: "new" for name in change.added}
    status.update({name: "CHANGED (rebuild online)" for name in change.changed})
    status.update({name: "unchanged" for name in change.unchanged})
    click.echo(
        f"repo {store.config.repo_path}  event log {redact_url(store.config.event_log_root)}"
    )
    for name, view in sorted(store.plan.views.items()):
        lateness = (
            "unbounded"
            if view.allowed_lateness_ms is None
            else format_duration(view.allowed_lateness_ms)
        )
        click.echo(
            f"\nview {name}  entity {view.entity} {list(view.join_keys)}  source {view.source}  "
            f"fingerprint {view.fingerprint}  [{status.get(name, '?')}]"
        )
        click.echo(f"  allowed lateness {lateness}; defined at {view.location}")
        for agg in view.aggregations:
            click.echo(f"  {agg.feature:<40} {agg.function:<22} {describe_window(agg)}")
    for name in change.removed:
        click.echo(f"\nview {name}  [REMOVED since last apply]")
    if not change.applied_before:
        click.echo("\nnothing applied yet: run `skewless apply`")
    elif change.is_empty:
        click.echo("\nno changes since the last apply")
    return EXIT_OK


@cli.command(
    short_help="Record the plan as applied; create the topics.", epilog=_example("skewless apply")
)
@repo_option
def apply() -> int:
    """Record the plan as applied (the registry) and create the source topics."""
    store = _store()
    result = store.apply()
    change = result.diff
    for topic, partitions in sorted(result.topics.items()):
        if topic in result.topics_created:
            click.echo(f"created  topic {topic} ({partitions} partitions)")
        else:
            click.echo(f"exists   topic {topic}")
    for label, names in (
        ("added", change.added),
        ("changed", change.changed),
        ("removed", change.removed),
    ):
        for name in names:
            note = " — run `skewless rebuild-online " + name + "`" if label == "changed" else ""
            click.echo(f"{label:<8} view {name}{note}")
    if change.is_empty:
        click.echo("no changes")
    click.echo(f"applied {len(store.plan.views)} views; registry {store.config.registry_path}")
    return EXIT_OK


@cli.command(
    "import",
    short_help="Import historical events (Parquet/CSV) into the log.",
    epilog=_example("skewless import transactions history.parquet"),
)
@click.argument("source")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@repo_option
def import_(source: str, file: Path) -> int:
    """Import historical events of SOURCE from FILE (Parquet or CSV) into the event log.

    Every cell is checked against the source schema first; a file with bad cells imports
    nothing and the first bad cells are named.
    """
    from tqdm import tqdm

    store = _store()
    started = time.perf_counter()
    with tqdm(desc=f"import {source}", unit=" rows", disable=None) as bar:
        result = store.import_events(source, file, progress=bar.update)  # type: ignore[arg-type]  # tqdm.update returns bool | None
    elapsed = time.perf_counter() - started
    parts = ", ".join(f"p{p}={n}" for p, n in sorted(result.per_partition.items()))
    click.echo(
        f"imported {result.rows} rows into {source} ({parts}) in {elapsed:.1f}s; "
        f"log {redact_url(store.config.event_log_root)}"
    )
    return EXIT_OK


@cli.command(
    short_help="Send rows to a source topic, checked like a worker.",
    epilog=_example(
        "skewless push transactions new_payments.csv",
        'echo \'{"transaction_id": "t1", ...}\' | skewless push transactions -',
    ),
)
@click.argument("source")
@click.argument("file", metavar="FILE|-")
@repo_option
def push(source: str, file: str) -> int:
    """Produce rows to SOURCE's Kafka topic, checked as a worker will decode them.

    FILE is Parquet, CSV, or JSON lines (.jsonl; `-` reads JSON lines from stdin). A bad row
    sends nothing. Prints how many rows were produced.
    """
    store = _store()
    rows = _push_rows(file)
    produced = store.push(source, rows)
    topic = store.plan.sources[source].topic
    click.echo(f"pushed {produced} rows to topic {topic} (source {source})")
    return EXIT_OK


def _push_rows(file: str) -> list[dict[str, Any]] | pd.DataFrame:
    import json

    from engine.frames import read_table

    if file != "-" and not file.lower().endswith((".jsonl", ".ndjson")):
        return read_table(file)
    name = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputDataError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputDataError(f"{name} line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise InputDataError(
                f"{name} line {number}: expected a JSON object per line, got {type(row).__name__}"
            )
        rows.append(row)
    if not rows:
        raise InputDataError(f"{name}: no rows (expected one JSON object per line)")
    return rows


@cli.command(
    short_help="Build a point-in-time training set from the log.",
    epilog=_example(
        "skewless backfill --entities labels.parquet --out training.parquet \\",
        "    --features customer_spend:amount_sum_30d,customer_spend:amount_count_7d",
    ),
)
@click.option(
    "--entities",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Parquet or CSV file: the join keys and a timestamp per row (e.g. your labels).",
)
@click.option(
    "--features",
    metavar="REFS",
    required=True,
    multiple=True,
    help="view:feature refs, comma-separated or repeated.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file: .parquet, or .csv by its suffix.",
)
@click.option(
    "--mode",
    type=click.Choice(["event_time", "processing_time"]),
    default="event_time",
    help="event_time: as of the event clock; processing_time: what the online store served.",
)
@click.option(
    "--timestamp-column",
    metavar="COLUMN",
    default="event_timestamp",
    help="Column of --entities holding each row's time (datetimes, or epoch ms).",
)
@click.option(
    "--include-late", is_flag=True, help="Count events that arrived after their lateness."
)
@click.option("--full-feature-names", is_flag=True, help="Name output columns view__feature.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    show_default="one per core",
    help="Threads reading log partitions in parallel (local run).",
)
@click.option(
    "--cluster",
    metavar="ADDRESS",
    default=None,
    show_default="local: this machine's cores",
    help="Run on the dask.distributed cluster whose scheduler is at ADDRESS "
    "(tcp://HOST:8786); the event log's URL and the repo's path must be reachable "
    "from every worker.",
)
@repo_option
def backfill(
    entities: Path,
    features: tuple[str, ...],
    out: Path,
    mode: str,
    timestamp_column: str,
    include_late: bool,
    full_feature_names: bool,
    workers: int | None,
    cluster: str | None,
) -> int:
    """Build a point-in-time training set: each row gets each feature as of its timestamp."""
    from tqdm import tqdm

    from connectors.eventlog import EventLogReader

    store = _store()
    refs = [r.strip() for chunk in features for r in chunk.split(",") if r.strip()]
    entity_df = _entity_table(store, entities, refs, timestamp_column)
    views = {ref.partition(":")[0] for ref in refs}
    sources = {store.plan.views[v].source for v in views if v in store.plan.views}
    log = EventLogReader(store.config.event_log_root)
    total = 0
    for source in sources:
        with contextlib.suppress(SkewlessError):  # the store raises the helpful error below
            total += len(log.partitions(source))
    started = time.perf_counter()
    with tqdm(total=total or None, desc="backfill", unit=" partitions", disable=None) as bar:
        records = 0

        def progress(read: int, done: int) -> None:
            nonlocal records
            records += read
            bar.set_postfix(records=records, refresh=False)
            bar.update(done)

        result = store.get_historical_features(
            entity_df,
            refs,
            mode=mode,  # type: ignore[arg-type]  # click.Choice checked it
            timestamp_column=timestamp_column,
            include_late=include_late,
            full_feature_names=full_feature_names,
            workers=workers,
            progress=progress,
            cluster=cluster,
        )
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        result.to_csv(out, index=False)
    else:
        result.to_parquet(out, index=False)
    click.echo(
        f"{len(result)} rows x {len(refs)} features -> {out} ({records} log records replayed "
        f"in {elapsed:.1f}s, mode {mode}"
        + (f", on the Dask cluster at {cluster})" if cluster else ")")
    )
    return EXIT_OK


def _entity_table(
    store: FeatureStore, path: Path, refs: Sequence[str], timestamp_column: str
) -> pd.DataFrame:
    """The --entities file, checked in the CLI's words: the file, its columns, the flag to use.

    Join keys of string kind are read as text from CSV, so ids like ``007`` keep their form.
    """
    from engine.frames import read_table

    needed: dict[str, list[str]] = {}  # join key -> views that need it
    text_keys: list[str] = []
    for view, _ in store.plan.resolve(refs):
        fields = store.plan.sources[view.source].fields
        for key in view.join_keys:
            views = needed.setdefault(key, [])
            if view.name not in views:
                views.append(view.name)
            field = fields.get(key)
            if field is not None and field.kind == "str" and key not in text_keys:
                text_keys.append(key)
    df = read_table(path, string_columns=tuple(text_keys))
    columns = [str(c) for c in df.columns]
    listing = ", ".join(columns) if columns else "(none)"
    if timestamp_column not in df.columns:
        hint = _timestamp_guess(df, set(needed))
        suggestion = (
            f"Name it with --timestamp-column {hint}"
            if hint
            else "Name the column that holds each row's time with --timestamp-column COLUMN"
        )
        raise InputDataError(
            f"{path}: no timestamp column {timestamp_column!r}; its columns: {listing}. "
            f"{suggestion}"
        )
    for key, views in needed.items():
        if key not in df.columns:
            raise InputDataError(
                f"{path}: no column {key!r}, the join key that view"
                f"{'s' if len(views) > 1 else ''} {', '.join(repr(v) for v in views)} "
                f"need{'' if len(views) > 1 else 's'}; its columns: {listing}. Add or rename the "
                "column in the file (join keys are matched by name)"
            )
    return df


def _timestamp_guess(df: pd.DataFrame, join_keys: set[str]) -> str | None:
    """The column most likely meant as the timestamp: a datetime column, else a time-ish name."""
    import pandas as pd

    candidates = [str(c) for c in df.columns if str(c) not in join_keys]
    for name in candidates:
        if pd.api.types.is_datetime64_any_dtype(df[name].dtype):
            return name
    for name in candidates:
        lowered = name.lower()
        if lowered in ("ts", "time", "timestamp") or lowered.endswith(("_ts", "_time", "_at")):
            return name
    return None


@cli.command(
    short_help="Read fresh feature values from Redis.",
    epilog=_example(
        "skewless get customer_spend:amount_sum_30d customer_id=c1 customer_id=c2",
        "skewless get customer_spend:amount_sum_30d customer_id=c1 --json",
    ),
)
@click.argument("items", nargs=-1, required=True, metavar="REF... KEY=VALUE...")
@click.option("--json", "as_json", is_flag=True, help="Print the HTTP API's JSON document.")
@click.option("--freshness", is_flag=True, help="Add <feature>__freshness_ms rows.")
@click.option("--full-feature-names", is_flag=True, help="Name features view__feature.")
@click.option(
    "--now-ms",
    type=int,
    default=None,
    show_default="now",
    help="Evaluate the windows as of this epoch-ms time.",
)
@click.option(
    "--status", "with_status", is_flag=True, help="Add a <feature>__status row per feature."
)
@repo_option
def get(
    items: tuple[str, ...],
    as_json: bool,
    freshness: bool,
    full_feature_names: bool,
    now_ms: int | None,
    with_status: bool,
) -> int:
    """Read fresh feature values from the online store (Redis).

    ITEMS are view:feature refs and join keys as KEY=VALUE, in any order; repeat KEY=VALUE
    for more entities. A value the store holds nothing for is the empty-window default (0
    for counts and sums): it is marked (not found, no state) and a line under the table
    says so. --status shows every value's status (docs/online.md#statuses).
    """
    import json

    store = _store()
    refs, entities = _get_request(store, items)
    response = store.get_online_features(
        refs,
        entities,
        full_feature_names=full_feature_names,
        with_freshness=freshness,
        now_ms=now_ms,
    )
    if as_json:
        click.echo(json.dumps(response.to_json(), indent=2))
        return EXIT_OK
    _print_table(response, with_status)
    for line in _missing_lines(response, entities):
        click.echo(line, err=True)
    return EXIT_OK


# statuses whose value is a default standing for "nothing there": marked in the table
_ABSENT = {"NOT_FOUND": "not found", "NO_STATE": "no state"}


def _print_table(response: OnlineResponse, with_status: bool) -> None:
    statuses = response.statuses
    table: dict[str, list[str]] = {}
    for name, values in response.to_dict(include_status=with_status).items():
        marks = statuses.get(name)
        table[name] = [
            ("-" if v is None else str(v))
            + (f" ({_ABSENT[marks[i]]})" if marks is not None and marks[i] in _ABSENT else "")
            for i, v in enumerate(values)
        ]
    width = max(len(name) for name in table)
    rows = len(next(iter(table.values())))
    widths = [max(len(cells[i]) for cells in table.values()) for i in range(rows)]
    for name, cells in table.items():
        click.echo(
            f"{name:<{width}}  "
            + "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()
        )


def _missing_lines(response: OnlineResponse, entities: dict[str, list[Any]]) -> list[str]:
    """One line per kind of absence: which entities or views hold nothing, and what it means."""
    statuses = response.statuses
    rows = len(next(iter(entities.values()))) if entities else 0
    views = response.result.plan.feature_views
    not_found: dict[int, set[str]] = {}
    no_state: set[str] = set()
    for c, name in enumerate(response.columns):
        for r, status in enumerate(statuses[name]):
            if status == "NOT_FOUND":
                not_found.setdefault(r, set()).add(views[c])
            elif status == "NO_STATE":
                no_state.add(views[c])
    lines = []
    if not_found:
        who = "; ".join(
            " ".join(f"{k}={entities[k][r]}" for k in entities) + f" in {', '.join(sorted(v))}"
            for r, v in sorted(not_found.items())
        )
        lines.append(
            f"note: {len(not_found)} of {rows} entities not found (NOT_FOUND): {who} — the "
            "store holds no state for them; their values are the empty-window defaults"
        )
    if no_state:
        lines.append(
            f"note: view(s) {', '.join(sorted(no_state))} hold no state yet (NO_STATE): start a "
            "worker (`skewless worker`) or run `skewless rebuild-online VIEW`; values are defaults"
        )
    return lines


def _get_request(
    store: FeatureStore, items: Sequence[str]
) -> tuple[list[str], dict[str, list[Any]]]:
    """Split ``get``'s words into refs and entity columns; values typed by the join key's kind."""
    from engine.online_read import prepare_read

    refs = [item for item in items if "=" not in item]
    pairs = [item.partition("=") for item in items if "=" in item]
    if not refs:
        raise InputDataError("name at least one feature, e.g. customer_spend:amount_sum_30d")
    kinds = prepare_read(store.plan, refs).key_kinds
    columns: dict[str, list[Any]] = {key: [] for key in kinds}
    for key, _, text in pairs:
        if key not in kinds:
            raise InputDataError(
                f"{key!r} is not a join key of the requested views; they need: {', '.join(kinds)}"
            )
        if kinds[key] == "int":
            try:
                columns[key].append(int(text))
            except ValueError:
                raise InputDataError(f"join key {key!r} is an integer; got {text!r}") from None
        else:
            columns[key].append(text)
    counts = {key: len(values) for key, values in columns.items()}
    if len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise InputDataError(
            "give every join key once per entity (KEY=VALUE, repeat for more entities); "
            f"got {', '.join(f'{k} x{n}' for k, n in counts.items())}"
        )
    return refs, columns


@cli.command(
    short_help="Serve online reads over HTTP.", epilog=_example("skewless serve --port 6566")
)
@click.option("--host", metavar="HOST", default="127.0.0.1", help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=6566, help="Port to listen on.")
@repo_option
def serve(host: str, port: int) -> int:
    """Serve online reads over HTTP: POST /get-online-features, GET /health."""
    from engine.serve import run

    store = _store()
    click.echo(
        f"serving online features of {store.config.repo_path} on http://{host}:{port} "
        "(POST /get-online-features, GET /health); Ctrl-C stops"
    )
    run(store, host=host, port=port)
    return EXIT_OK


def _kafka_worker(store: FeatureStore, options: WorkerOptions) -> int:
    from engine.stream.kafka_runtime import run

    run(store.plan, store.config, options)
    return EXIT_OK


def _faust_worker(store: FeatureStore, options: WorkerOptions) -> int:
    from engine.stream.faust_runtime import run_faust_worker

    return run_faust_worker(store.plan, store.config, options)


# runtime name -> entry point; every runtime passes the same test suite (DESIGN §4)
WORKER_RUNTIMES: dict[str, Callable[[FeatureStore, WorkerOptions], int]] = {
    "kafka": _kafka_worker,
    "faust": _faust_worker,
}


@cli.command(
    short_help="Run a stream worker: Kafka in, Redis and log out.",
    epilog=_example("skewless worker --runtime kafka --metrics-port 9108"),
)
@click.option(
    "--runtime",
    type=click.Choice(sorted(WORKER_RUNTIMES)),
    default="kafka",
    help="kafka: the lean confluent-kafka loop; faust: faust-streaming agents.",
)
@click.option(
    "--batch-max",
    type=click.IntRange(min=1),
    default=200_000,
    help="Most records per batch (a batch is what arrived; only a backlog fills one).",
)
@click.option(
    "--batch-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=0.05,
    help="Seconds an idle worker waits for a batch to fill.",
)
@click.option(
    "--compact-interval",
    type=click.FloatRange(min=0),
    default=60.0,
    help="Seconds between merges of the worker's small log files (0: never).",
)
@click.option(
    "--log-roll-mb",
    type=click.FloatRange(min=0),
    default=64.0,
    show_default=True,
    help="Size in MiB at which the open event-log file of a partition is closed and a new "
    "one started (each batch is a synced block of it); 0: one file per batch.",
)
@click.option(
    "--log-roll-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Age in seconds at which the open event-log file of a partition is closed "
    "(at its next batch).",
)
@click.option(
    "--cache-entities",
    type=click.IntRange(min=1),
    default=None,
    show_default="worker.cache_entities, 200000",
    help="(view, entity, partition) states held in memory per source; the least recently "
    "used are evicted (kafka runtime).",
)
@click.option(
    "--local-state/--no-local-state",
    default=None,
    show_default="worker.local_state, off",
    help="Keep evicted states in a local RocksDB under <state dir>/worker/ (checked against "
    "Redis before use; a restarted worker starts warm) instead of reloading them from Redis "
    "(kafka runtime).",
)
@click.option(
    "--pipeline/--no-pipeline",
    default=None,
    show_default="on; $SKEWLESS_WORKER_PIPELINE=0/1",
    help="Process each batch on a helper thread while the next one is fetched and decoded, "
    "so Redis runs a batch's write beside the worker's decoding (kafka runtime; "
    "docs/streaming.md#the-pipeline).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    help="Log level of the worker's log on stderr.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    show_default="no metrics",
    help="Serve Prometheus metrics on this port (docs/metrics.md).",
)
@click.option(
    "--metrics-host", metavar="HOST", default="0.0.0.0", help="Address of the metrics endpoint."
)
@click.option(
    "--metrics-lag-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=15.0,
    help="Seconds between consumer-lag refreshes of the metrics.",
)
@repo_option
def worker(
    runtime: str,
    batch_max: int,
    batch_timeout: float,
    compact_interval: float,
    log_roll_mb: float,
    log_roll_seconds: float,
    cache_entities: int | None,
    local_state: bool | None,
    pipeline: bool | None,
    log_level: str,
    metrics_port: int | None,
    metrics_host: str,
    metrics_lag_interval: float,
) -> int:
    """Consume the source topics: keep Redis fresh, append the event log, dead-letter bad records.

    Runs until SIGTERM or Ctrl-C, which drain the batch in hand. Start one per core or
    machine; the consumer group shares the partitions among them.
    """
    import logging

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    store = _store()
    _check_online_credentials(store)
    server = _serve_metrics(store, runtime, metrics_port, metrics_host, metrics_lag_interval)
    try:
        from engine.stream.kafka_runtime import WorkerOptions

        options = WorkerOptions(
            batch_max=batch_max,
            batch_timeout_s=batch_timeout,
            compact_interval_s=compact_interval,
            log_roll_bytes=int(log_roll_mb * 1024 * 1024),
            log_roll_s=log_roll_seconds,
            cache_entities=store.config.worker_cache_entities
            if cache_entities is None
            else cache_entities,
            local_state=store.config.worker_local_state if local_state is None else local_state,
            **({} if pipeline is None else {"pipeline": pipeline}),
        )
        return WORKER_RUNTIMES[runtime](store, options)
    finally:
        if server is not None:
            server.close()


def _serve_metrics(
    store: FeatureStore, runtime: str, port: int | None, host: str, lag_interval_s: float
) -> MetricsServer | None:
    """Start the Prometheus endpoint of ``--metrics-port`` (None without it); docs/metrics.md."""
    if port is None:
        return None
    import logging

    from connectors.kafka import group_id
    from engine import metrics

    server = metrics.serve(
        port, host=host, lag=store.consumer_lag, lag_interval_s=lag_interval_s,
        info={"runtime": runtime, "group": group_id(store.config.project)},
    )  # fmt: skip
    logging.getLogger("skewless.worker").info("metrics on %s", server.url)
    return server


def _check_online_credentials(store: FeatureStore) -> None:
    """Stop at start-up, not in the batch retry loop, when Redis refuses the credentials.

    Raises OnlineStoreAuthError (retrying cannot fix a wrong password). An unreachable Redis
    is only a warning: the worker backs off until Redis answers (DESIGN §6).
    """
    import logging

    from connectors.redis_store import RedisOnlineStore
    from engine.errors import OnlineStoreAuthError, OnlineStoreUnavailable

    online = RedisOnlineStore.from_config(store.config)
    try:
        online.ping()
    except OnlineStoreAuthError:
        raise
    except OnlineStoreUnavailable as exc:
        logging.getLogger("skewless.worker").warning("%s; starting anyway, batches retry", exc)
    finally:
        online.close()


@cli.command(
    short_help="Lag, freshness, dead letters, log and key counts.",
    epilog=_example("skewless status", "skewless status --json | jq .lag"),
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
@click.option(
    "--key-scan-limit",
    type=click.IntRange(min=0),
    default=1_000_000,
    help="Keys to SCAN before estimating the key counts (0: scan all).",
)
@repo_option
def status(as_json: bool, key_scan_limit: int) -> int:
    """Consumer lag, freshness, dead letters, log size and online keys; exit 1 if unhealthy."""
    import json

    from engine.status import render_text

    report = _store().status(key_scan_limit=key_scan_limit)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else render_text(report))
    return EXIT_OK if report.ok else EXIT_ERROR


@cli.command(
    "rebuild-online",
    short_help="Refill views' online state from the event log.",
    epilog=_example("skewless rebuild-online customer_spend", "skewless rebuild-online --all"),
)
@click.argument("views", metavar="[VIEW]...", nargs=-1)
@click.option("--all", "all_views", is_flag=True, help="Rebuild every view of the definitions.")
@repo_option
def rebuild_online(views: tuple[str, ...], all_views: bool) -> int:
    """Refill each VIEW's online keyspace from the event log (stop the views' workers first).

    The views of one source are rebuilt in one pass over its log."""
    from tqdm import tqdm

    if bool(views) == all_views:
        raise click.UsageError("name one or more views, or pass --all (not both)")
    store = _store()
    names = sorted(store.plan.views) if all_views else list(views)
    started = time.perf_counter()
    desc = f"rebuild {names[0]}" if len(names) == 1 else f"rebuild {len(names)} views"
    with tqdm(desc=desc, unit=" records", disable=None) as bar:
        outcomes = store.rebuild_online_views(names, progress=lambda n: (bar.update(n), None)[1])
    elapsed = time.perf_counter() - started
    for outcome in outcomes:
        result = outcome.result
        click.echo(
            f"rebuilt view {result.view} (fingerprint {result.fingerprint}): {result.records} "
            f"log records replayed, {result.entities_written} entity hashes written"
            + (f" in {elapsed:.1f}s" if len(outcomes) == 1 else "")
        )
        for fingerprint, keys in outcome.dropped_keys.items():
            click.echo(f"dropped retired keyspace {fingerprint} ({keys} keys)")
    if len(outcomes) > 1:
        click.echo(f"{len(outcomes)} views rebuilt in {elapsed:.1f}s")
    return EXIT_OK


@cli.command(
    "compact-log",
    short_help="Merge the event log's small files.",
    epilog=_example("skewless compact-log transactions"),
)
@click.argument("source", required=False)
@click.option(
    "--small-records", type=click.IntRange(min=1), default=10_000, help="Files below this merge."
)
@click.option(
    "--target-records",
    type=click.IntRange(min=1),
    default=100_000,
    help="Records per merged file.",
)
@repo_option
def compact_log(source: str | None, small_records: int, target_records: int) -> int:
    """Merge the event log's small files (of SOURCE, default every source); safe beside workers."""
    store = _store()
    done = store.compact_log(source, small_records=small_records, target_records=target_records)
    if not done:
        click.echo("the event log holds no partition to compact yet")
    for c in done:
        extra = f", {c.leftovers_removed} leftover files removed" if c.leftovers_removed else ""
        click.echo(
            f"{c.source} partition {c.partition}: {c.files_before} → {c.files_after} files "
            f"({c.records_merged} records merged{extra})"
        )
    return EXIT_OK


@cli.command(
    short_help="Check online values against a replay of the log.",
    epilog=_example("skewless verify --sample 500 --report verify.md"),
)
@click.option("--sample", type=click.IntRange(min=1), default=200, help="Entities per view.")
@click.option(
    "--view",
    "views",
    multiple=True,
    metavar="NAME",
    show_default="every view",
    help="A view to check (repeat for more).",
)
@click.option("--seed", type=int, default=None, show_default="random, printed", help="Sample seed.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE.md",
    show_default="none",
    help="Also write the report as Markdown.",
)
@click.option(
    "--at-ms", type=int, default=None, show_default="now", help="Verify as of this epoch-ms time."
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=3, help="Re-checks of in-flight entities."
)
@repo_option
def verify(
    sample: int,
    views: tuple[str, ...],
    seed: int | None,
    report: Path | None,
    at_ms: int | None,
    retries: int,
) -> int:
    """Check sampled online values against the event log's processing-time replay.

    Reads sampled entities online at T and replays the log for them in processing-time mode
    at T; prints the consistency rate with every mismatch explained. Exit 0 when every
    sampled value matched, 1 on a mismatch (or an error), 3 when values were still in flight
    after every re-check.
    """
    from tqdm import tqdm

    store = _store()
    with tqdm(desc="verify: reading the log", unit=" records", disable=None) as bar:
        outcome = store.verify(
            sample=sample,
            views=list(views) or None,
            seed=seed,
            at_ms=at_ms,
            retries=retries,
            progress=lambda n: (bar.update(n), None)[1],
        )
    click.echo(outcome.to_text())
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(outcome.to_markdown(), encoding="utf-8")
        click.echo(f"report written to {report}")
    if outcome.mismatches:
        return EXIT_ERROR
    return EXIT_OK if outcome.ok else EXIT_UNVERIFIABLE


_DEMO = DemoOptions()


@cli.command(
    short_help="The whole engine on local services, with a report.",
    epilog=_example("skewless demo", "skewless demo --events 200000 --rate 5000 --workers 2"),
)
@click.option(
    "--events", type=int, default=_DEMO.events, help="Payments in all; the last third streams live."
)
@click.option("--rate", type=int, default=_DEMO.rate, help="Live payments per second.")
@click.option("--workers", type=int, default=_DEMO.workers, help="Stream worker processes.")
@click.option(
    "--labels", type=int, default=_DEMO.labels, help="Labelled payments in the training set."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_default=".skewless/demo/<run>",
    help="Output folder.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_default="<out>/report",
    help="Where the report goes.",
)
@click.option(
    "--definitions",
    type=click.Path(file_okay=False, path_type=Path),
    default=EXAMPLE_DEFINITIONS,
    show_default="the checkout's definitions/",
    help="The payments example to copy.",
)
@click.option(
    "--redis-db", type=int, default=_DEMO.redis_db, help="Redis database of the demo's keys."
)
@click.option(
    "--no-services", is_flag=True, help="Do not start Kafka and Redis: fail if they do not answer."
)
@click.option(
    "--verify-sample",
    type=int,
    default=_DEMO.verify_sample,
    help="Entities per view that verify checks.",
)
@click.option("--seed", type=int, default=_DEMO.seed, help="Seed of the generated data.")
def demo(
    events: int,
    rate: int,
    workers: int,
    labels: int,
    out: Path | None,
    report_dir: Path | None,
    definitions: Path,
    redis_db: int,
    no_services: bool,
    verify_sample: int,
    seed: int,
) -> int:
    """The whole engine on local Kafka and Redis in a few minutes, with a report.

    Starts (or finds) the local services, applies a copy of the example definitions with a
    topic of its own, starts stream workers, streams generated payments with a live display,
    reads fresh features, builds a point-in-time training set for generated fraud labels,
    runs verify, and writes a Markdown report with PNG plots. See docs/demo.md.
    """
    from engine.demo import Demo

    options = DemoOptions(
        events=events,
        rate=rate,
        workers=workers,
        labels=labels,
        out_dir=out,
        report_dir=report_dir,
        definitions=definitions,
        redis_db=redis_db,
        start_services=not no_services,
        verify_sample=verify_sample,
        seed=seed,
    )
    result, _ = Demo(options, sys.stdout).run()
    if result.verify.mismatches:
        click.echo(
            f"error: verify found {len(result.verify.mismatches)} mismatches; see the report",
            err=True,
        )
        return EXIT_ERROR
    return EXIT_OK


@cli.command(
    short_help="Start, stop or check the local Kafka and Redis.",
    epilog=_example(
        "skewless services up", "skewless services status redis", "skewless services down --purge"
    ),
)
@click.argument("action", type=click.Choice(["up", "down", "status"]))
@click.argument("target", type=click.Choice(["kafka", "redis", "redis-cluster"]), required=False)
@click.option("--purge", is_flag=True, help="With down: delete the services' data.")
@repo_option
def services(action: str, target: str | None, purge: bool) -> int:
    """Start, stop or check the local Kafka and Redis (scripts/services.sh).

    Uses the Kafka and Redis ports that --repo's config names (127.0.0.1 only). `up`
    installs what is missing, starts both and waits until they answer; `down` stops them
    (--purge: and deletes their data); `status` exits 0 only when they run. TARGET limits it
    to one service; `redis-cluster` (never part of the default) is the local 3-master Redis
    Cluster on the ports from redis.nodes. See docs/services.md.
    """
    from engine.config import load_config
    from engine.services import run_services

    config = load_config(Path(repo_path()))  # the ports only: a broken definitions folder is fine
    return run_services(
        action,  # type: ignore[arg-type]  # click.Choice checked it
        config,
        target=target,  # type: ignore[arg-type]
        purge=purge,
    )


def _quiet_client_logs(command: str) -> None:
    """Keep librdkafka's connection logs off a one-shot command's terminal.

    While a broker is down librdkafka logs every failed connection attempt (hundreds in the
    10 s before a request times out); the command then reports the one translated error,
    naming the address and how to start Kafka. Workers keep those logs (``worker``).
    """
    import logging

    if command != "worker":  # the worker configures logging itself
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    client = logging.getLogger("skewless.kafka.librdkafka")
    if command == "worker":
        client.addFilter(_RepeatFilter(window_s=60.0))
    else:
        client.addHandler(logging.NullHandler())
        client.propagate = False


_ELAPSED = re.compile(r"\(after \d+ms in state ")


class _RepeatFilter:
    """Passes a log message once per ``window_s``: a broker that is down makes librdkafka log
    the same connection failure many times a second.

    Messages that differ only in librdkafka's elapsed time ("(after 3ms in state CONNECT)")
    count as the same message: one refused connection retried five times is one line.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}

    def filter(self, record: Any) -> bool:
        text = _ELAPSED.sub("(after ...ms in state ", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(text, -self.window_s) < self.window_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[text] = now
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (docs/cli.md) instead of exiting, for tests and embedding."""
    try:
        code = cli.main(
            args=list(argv) if argv is not None else sys.argv[1:],
            prog_name="skewless",
            standalone_mode=False,
        )
    except click.UsageError as exc:  # the command line itself: usage line + hint, exit 2
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:  # e.g. a FILE argument click could not open
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C while click prompts or runs a command
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except SkewlessError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
