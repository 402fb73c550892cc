"""The `skewless` command line: the one place that prints, and turns errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.durations import format_duration
from engine.errors import InputDataError, SkewlessError
from engine.plan import describe_window
from engine.secrets import redact_url
from engine.store import FeatureStore

if TYPE_CHECKING:
    from engine.metrics import MetricsServer

EXIT_ERROR = 1


def _store(args: argparse.Namespace) -> FeatureStore:
    return FeatureStore.from_repo(args.repo)


def cmd_plan(args: argparse.Namespace) -> int:
    store = _store(args)
    change = store.diff()
    status = {name: "new" for name in change.added}
    status.update({name: "CHANGED (rebuild online)" for name in change.changed})
    status.update({name: "unchanged" for name in change.unchanged})
    print(f"repo {store.config.repo_path}  event log {redact_url(store.config.event_log_root)}")
    for name, view in sorted(store.plan.views.items()):
        lateness = (
            "unbounded"
            if view.allowed_lateness_ms is None
            else format_duration(view.allowed_lateness_ms)
        )
        print(
            f"\nview {name}  entity {view.entity} {list(view.join_keys)}  source {view.source}  "
            f"fingerprint {view.fingerprint}  [{status.get(name, '?')}]"
        )
        print(f"  allowed lateness {lateness}; defined at {view.location}")
        for agg in view.aggregations:
            print(f"  {agg.feature:<40} {agg.function:<22} {describe_window(agg)}")
    for name in change.removed:
        print(f"\nview {name}  [REMOVED since last apply]")
    if not change.applied_before:
        print("\nnothing applied yet: run `skewless apply`")
    elif change.is_empty:
        print("\nno changes since the last apply")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    store = _store(args)
    result = store.apply()
    change = result.diff
    for topic, partitions in sorted(result.topics.items()):
        if topic in result.topics_created:
            print(f"created  topic {topic} ({partitions} partitions)")
        else:
            print(f"exists   topic {topic}")
    for label, names in (
        ("added", change.added),
        ("changed", change.changed),
        ("removed", change.removed),
    ):
        for name in names:
            note = " — run `skewless rebuild-online " + name + "`" if label == "changed" else ""
            print(f"{label:<8} view {name}{note}")
    if change.is_empty:
        print("no changes")
    print(f"applied {len(store.plan.views)} views; registry {store.config.registry_path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    store = _store(args)
    started = time.perf_counter()
    with tqdm(desc=f"import {args.source}", unit=" rows", disable=None) as bar:
        result = store.import_events(args.source, args.file, progress=bar.update)  # type: ignore[arg-type]  # tqdm.update returns bool | None
    elapsed = time.perf_counter() - started
    parts = ", ".join(f"p{p}={n}" for p, n in sorted(result.per_partition.items()))
    print(
        f"imported {result.rows} rows into {args.source} ({parts}) in {elapsed:.1f}s; "
        f"log {redact_url(store.config.event_log_root)}"
    )
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.frames import read_table

    store = _store(args)
    refs = [r.strip() for chunk in args.features for r in chunk.split(",") if r.strip()]
    entity_df = read_table(args.entities)
    views = {ref.partition(":")[0] for ref in refs}
    sources = {store.plan.views[v].source for v in views if v in store.plan.views}
    from connectors.eventlog import EventLogReader

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

        out = store.get_historical_features(
            entity_df,
            refs,
            mode=args.mode,
            timestamp_column=args.timestamp_column,
            include_late=args.include_late,
            full_feature_names=args.full_feature_names,
            workers=args.workers,
            progress=progress,
        )
    elapsed = time.perf_counter() - started
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        out.to_csv(path, index=False)
    else:
        out.to_parquet(path, index=False)
    print(
        f"{len(out)} rows x {len(refs)} features -> {path} ({records} log records replayed "
        f"in {elapsed:.1f}s, mode {args.mode})"
    )
    return 0


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


def cmd_get(args: argparse.Namespace) -> int:
    import json

    store = _store(args)
    refs, entities = _get_request(store, args.items)
    response = store.get_online_features(
        refs,
        entities,
        full_feature_names=args.full_feature_names,
        with_freshness=args.freshness,
        now_ms=args.now_ms,
    )
    if args.json:
        print(json.dumps(response.to_json(), indent=2))
        return 0
    table = {
        name: ["-" if v is None else str(v) for v in values]
        for name, values in response.to_dict().items()
    }
    width = max(len(name) for name in table)
    rows = len(next(iter(table.values())))
    widths = [max(len(cells[i]) for cells in table.values()) for i in range(rows)]
    for name, cells in table.items():
        print(
            f"{name:<{width}}  "
            + "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()
        )
    return 0


def cmd_rebuild_online(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    store = _store(args)
    started = time.perf_counter()
    with tqdm(desc=f"rebuild {args.view}", unit=" records", disable=None) as bar:
        outcome = store.rebuild_online(args.view, progress=lambda n: (bar.update(n), None)[1])
    result = outcome.result
    print(
        f"rebuilt view {result.view} (fingerprint {result.fingerprint}): {result.records} log "
        f"records replayed, {result.entities_written} entity hashes written in "
        f"{time.perf_counter() - started:.1f}s"
    )
    for fingerprint, keys in outcome.dropped_keys.items():
        print(f"dropped retired keyspace {fingerprint} ({keys} keys)")
    return 0


def cmd_compact_log(args: argparse.Namespace) -> int:
    store = _store(args)
    done = store.compact_log(
        args.source, small_records=args.small_records, target_records=args.target_records
    )
    if not done:
        print("the event log holds no partition to compact yet")
    for c in done:
        extra = f", {c.leftovers_removed} leftover files removed" if c.leftovers_removed else ""
        print(
            f"{c.source} partition {c.partition}: {c.files_before} → {c.files_after} files "
            f"({c.records_merged} records merged{extra})"
        )
    return 0


EXIT_UNVERIFIABLE = 3  # verify: no mismatch, but some values were still in flight


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    store = _store(args)
    with tqdm(desc="verify: reading the log", unit=" records", disable=None) as bar:
        report = store.verify(
            sample=args.sample,
            views=args.view,
            seed=args.seed,
            at_ms=args.at_ms,
            retries=args.retries,
            progress=lambda n: (bar.update(n), None)[1],
        )
    print(report.to_text())
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report.to_markdown(), encoding="utf-8")
        print(f"report written to {path}")
    if report.mismatches:
        return EXIT_ERROR
    return 0 if report.ok else EXIT_UNVERIFIABLE


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.serve import run

    store = _store(args)
    print(
        f"serving online features of {store.config.repo_path} on http://{args.host}:{args.port} "
        "(POST /get-online-features, GET /health); Ctrl-C stops"
    )
    run(store, host=args.host, port=args.port)
    return 0


def _kafka_worker(store: FeatureStore, args: argparse.Namespace) -> int:
    from engine.stream.kafka_runtime import WorkerOptions, run

    run(store.plan, store.config, WorkerOptions(batch_max=args.batch_max,
                                                batch_timeout_s=args.batch_timeout))  # fmt: skip
    return 0


def _faust_worker(store: FeatureStore, args: argparse.Namespace) -> int:
    from engine.stream.faust_runtime import run_faust_worker
    from engine.stream.kafka_runtime import WorkerOptions

    options = WorkerOptions(batch_max=args.batch_max, batch_timeout_s=args.batch_timeout)
    return run_faust_worker(store.plan, store.config, options)


# runtime name -> entry point; every runtime passes the same test suite (DESIGN §4)
WORKER_RUNTIMES: dict[str, Callable[[FeatureStore, argparse.Namespace], int]] = {
    "kafka": _kafka_worker,
    "faust": _faust_worker,
}


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    if args.batch_max < 1 or args.batch_timeout <= 0:
        raise InputDataError("--batch-max must be at least 1 and --batch-timeout above 0")
    store = _store(args)
    _check_online_credentials(store)
    server = _serve_metrics(store, args)
    try:
        return WORKER_RUNTIMES[args.runtime](store, args)
    finally:
        if server is not None:
            server.close()


def _serve_metrics(store: FeatureStore, args: argparse.Namespace) -> MetricsServer | None:
    """Start the Prometheus endpoint of ``--metrics-port`` (None without it); docs/metrics.md."""
    if args.metrics_port is None:
        return None
    import logging

    from connectors.kafka import group_id
    from engine import metrics

    server = metrics.serve(
        args.metrics_port, host=args.metrics_host, lag=store.consumer_lag,
        lag_interval_s=args.metrics_lag_interval,
        info={"runtime": args.runtime, "group": group_id(store.config.project)},
    )  # fmt: skip
    logging.getLogger("skewless.worker").info("metrics on %s", server.url)
    return server


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from engine.status import render_text

    if args.key_scan_limit < 0:
        raise InputDataError("--key-scan-limit must be 0 (no limit) or more")
    report = _store(args).status(key_scan_limit=args.key_scan_limit)
    print(json.dumps(report.to_json(), indent=2) if args.json else render_text(report))
    return 0 if report.ok else EXIT_ERROR


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


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import Demo, DemoOptions

    options = DemoOptions(
        events=args.events,
        rate=args.rate,
        workers=args.workers,
        labels=args.labels,
        out_dir=args.out,
        report_dir=args.report_dir,
        definitions=args.definitions,
        redis_db=args.redis_db,
        start_services=not args.no_services,
        verify_sample=args.verify_sample,
        seed=args.seed,
    )
    result, _ = Demo(options, sys.stdout).run()
    if result.verify.mismatches:
        print(
            f"error: verify found {len(result.verify.mismatches)} mismatches; see the report",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.services import run_services

    config = load_config(Path(args.repo))  # the ports only: a broken definitions folder is fine
    return run_services(args.action, config, target=args.target, purge=args.purge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skewless", description=__doc__)
    parser.add_argument(
        "--repo",
        default=os.environ.get("SKEWLESS_REPO", "definitions"),
        help="definitions folder (default: $SKEWLESS_REPO or ./definitions)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="validate definitions; show views, features and changes")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("apply", help="record the plan as applied (registry)")
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("import", help="import historical events (Parquet/CSV) into the event log")
    p.add_argument("source")
    p.add_argument("file")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("backfill", help="point-in-time training set from the event log")
    p.add_argument("--entities", required=True, help="Parquet/CSV with join keys and timestamps")
    p.add_argument(
        "--features",
        required=True,
        action="append",
        help="view:feature refs, comma-separated or repeated",
    )
    p.add_argument("--out", required=True, help="output .parquet or .csv")
    p.add_argument("--mode", choices=["event_time", "processing_time"], default="event_time")
    p.add_argument("--timestamp-column", default="event_timestamp")
    p.add_argument("--include-late", action="store_true")
    p.add_argument("--full-feature-names", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("worker", help="consume the source topics; keep Redis fresh; append the log")
    p.add_argument("--runtime", choices=sorted(WORKER_RUNTIMES), default="kafka")
    p.add_argument("--batch-max", type=int, default=5000, help="records per batch (default 5000)")
    p.add_argument(
        "--batch-timeout",
        type=float,
        default=0.05,
        help="seconds an idle worker waits for a batch to fill (0.05)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    p.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics endpoint")
    p.add_argument(
        "--metrics-lag-interval", type=float, default=15.0, help="seconds between lag refreshes"
    )
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser(
        "status", help="consumer lag, freshness, dead letters, log size, online keys"
    )
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.add_argument(
        "--key-scan-limit", type=int, default=1_000_000,
        help="keys to SCAN before estimating the key counts (0: scan all)",
    )  # fmt: skip
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("get", help="read fresh feature values from the online store (Redis)")
    p.add_argument(
        "items",
        nargs="+",
        metavar="REF|KEY=VALUE",
        help="view:feature refs and join keys, e.g. customer_spend:amount_sum_30d customer_id=c1 "
        "(repeat KEY=VALUE for more entities)",
    )
    p.add_argument("--json", action="store_true", help="print the HTTP API's JSON document")
    p.add_argument("--freshness", action="store_true", help="add <feature>__freshness_ms rows")
    p.add_argument("--full-feature-names", action="store_true")
    p.add_argument(
        "--now-ms", type=int, default=None, help="evaluate windows as of this epoch-ms time"
    )
    p.set_defaults(func=cmd_get)
    p = sub.add_parser("serve", help="HTTP endpoint for online reads (POST /get-online-features)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6566)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "compact-log", help="merge the event log's small files (safe beside workers)"
    )
    p.add_argument("source", nargs="?", help="one source (default: every source)")
    p.add_argument("--small-records", type=int, default=10_000, help="files below this merge")
    p.add_argument("--target-records", type=int, default=100_000, help="records per merged file")
    p.set_defaults(func=cmd_compact_log)
    p = sub.add_parser("rebuild-online", help="refill a view's online keyspace from the event log")
    p.add_argument("view")
    p.set_defaults(func=cmd_rebuild_online)
    p = sub.add_parser(
        "verify",
        help="check sampled online values against the event log's processing-time replay",
        description="Read sampled entities online at T and replay the event log for them in "
        "processing-time mode at T; print the consistency rate with every mismatch explained. "
        "Exit 0 when every sampled value matched, 1 on a mismatch (or an error), 3 when values "
        "were still in flight after every re-check.",
    )
    p.add_argument("--sample", type=int, default=200, help="entities per view (default 200)")
    p.add_argument(
        "--view", action="append", default=None, metavar="NAME", help="a view (repeat; default all)"
    )
    p.add_argument("--seed", type=int, default=None, help="sample seed (default: random, printed)")
    p.add_argument("--report", metavar="FILE.md", help="also write the report as Markdown")
    p.add_argument(
        "--at-ms", type=int, default=None, help="verify as of this epoch-ms time (default: now)"
    )
    p.add_argument(
        "--retries", type=int, default=3, help="re-checks of in-flight entities (default 3)"
    )
    p.set_defaults(func=cmd_verify)
    _demo_parser(sub)
    p = sub.add_parser(
        "services",
        help="start, stop or check the local Kafka and Redis (scripts/services.sh)",
        description="Run scripts/services.sh for the Kafka and Redis ports that --repo's "
        "config names (127.0.0.1 only). `up` installs what is missing, starts both and waits "
        "until they answer; `down` stops them (--purge: and deletes their data); `status` "
        "exits 0 only when they run. See docs/services.md.",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("target", nargs="?", choices=["kafka", "redis"], help="one service only")
    p.add_argument("--purge", action="store_true", help="with down: delete the services' data")
    p.set_defaults(func=cmd_services)
    return parser


def _demo_parser(sub: Any) -> None:
    from engine.demo import EXAMPLE_DEFINITIONS, DemoOptions

    d = DemoOptions()
    p = sub.add_parser(
        "demo",
        help="the whole engine on local Kafka and Redis in a few minutes, with a report",
        description="Start (or find) the local services, apply a copy of the example "
        "definitions with a topic of its own, start stream workers, stream generated payments "
        "with a live display, read fresh features, build a point-in-time training set for "
        "generated fraud labels, run verify, and write a Markdown report with PNG plots. "
        "See docs/demo.md.",
    )
    p.add_argument(
        "--events",
        type=int,
        default=d.events,
        help=f"payments in all; the last third streams live (default {d.events:,})",
    )
    p.add_argument(
        "--rate", type=int, default=d.rate, help=f"live payments per second (default {d.rate:,})"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help=f"stream worker processes (default {d.workers})",
    )
    p.add_argument(
        "--labels",
        type=int,
        default=d.labels,
        help=f"labelled payments in the training set (default {d.labels:,})",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default .skewless/demo/<run>)"
    )
    p.add_argument(
        "--report-dir", type=Path, default=None, help="where the report goes (default <out>/report)"
    )
    p.add_argument(
        "--definitions",
        type=Path,
        default=EXAMPLE_DEFINITIONS,
        help="the payments example to copy (default: the checkout's definitions/)",
    )
    p.add_argument(
        "--redis-db",
        type=int,
        default=d.redis_db,
        help=f"Redis database of the demo's keys (default {d.redis_db})",
    )
    p.add_argument(
        "--no-services",
        action="store_true",
        help="do not start Kafka and Redis: fail if they do not answer",
    )
    p.add_argument(
        "--verify-sample",
        type=int,
        default=d.verify_sample,
        help=f"entities per view that verify checks (default {d.verify_sample})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the generated data")
    p.set_defaults(func=cmd_demo)


def _quiet_client_logs(command: str) -> None:
    """Keep librdkafka's connection logs off a one-shot command's terminal.

    While a broker is down librdkafka logs every failed connection attempt (hundreds in the
    10 s before a request times out); the command then reports the one translated error,
    naming the address and how to start Kafka. Workers keep those logs (cmd_worker).
    """
    import logging

    if command != "worker":  # the worker configures logging itself (cmd_worker)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    client = logging.getLogger("skewless.kafka.librdkafka")
    if command == "worker":
        client.addFilter(_RepeatFilter(window_s=60.0))
    else:
        client.addHandler(logging.NullHandler())
        client.propagate = False


class _RepeatFilter:
    """Passes a log message once per ``window_s``: a broker that is down makes librdkafka log
    the same connection failure many times a second."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}

    def filter(self, record: Any) -> bool:
        text = record.getMessage()
        now = time.monotonic()
        if now - self._last.get(text, -self.window_s) < self.window_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[text] = now
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_client_logs(args.command)
    try:
        return int(args.func(args))
    except SkewlessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
