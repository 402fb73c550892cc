"""FeatureStore: the thin facade users hold; it wires plan, config and connectors to the roles."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from connectors.eventlog import EventLogReader, EventLogWriter
from connectors.eventlog_compaction import Compaction, EventLogCompactor
from connectors.kafka import (
    KafkaOffsets,
    KafkaPublisher,
    KafkaSettings,
    dead_letter_topic,
    ensure_topics,
)
from engine import backfill
from engine.config import Config, load_config
from engine.errors import InputDataError, KafkaUnavailable
from engine.frames import label_keys, read_table, to_epoch_ms
from engine.importer import ImportResult, import_frame
from engine.loader import load_definitions
from engine.online_read import EntityRows, OnlineResponse, ReadCache, read_online
from engine.plan import Plan, compile_plan, with_merged_tiles
from engine.ports import OnlineStateStore
from engine.push import encode_rows
from engine.rebuild import RebuildResult, rebuild_views
from engine.registry import (
    PlanDiff,
    diff,
    forget_retired,
    read_applied,
    read_retired,
    write_applied,
)
from engine.schema import int_range
from engine.serde import DecodeLimits
from engine.stream.core import wall_clock_ms

if TYPE_CHECKING:
    from engine.status import StatusReport
    from engine.verify import VerifyReport


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    """What ``apply`` did: the plan diff and the topics it created (name → partitions)."""

    diff: PlanDiff
    topics_created: dict[str, int]
    topics: dict[str, int]  # every topic the plan needs → partitions wanted


class FeatureStore:
    """One definitions repo: its validated plan, its config, and the three user jobs.

    Example:
        >>> store = FeatureStore.from_repo("definitions")
        >>> sorted(store.plan.views)[:1]
        ['customer_activity']
    """

    def __init__(self, plan: Plan, config: Config) -> None:
        self.plan = plan
        self.config = config
        self._publisher: KafkaPublisher | None = None
        self._offsets: KafkaOffsets | None = None
        self._online: OnlineStateStore | None = None
        self._read_cache = ReadCache(tracking=config.online_read_cache_tracking)

    @classmethod
    def from_repo(
        cls, path: str | Path = "definitions", *, environ: Mapping[str, str] | None = None
    ) -> FeatureStore:
        """Load and validate the definitions in ``path`` and its ``skewless.yaml``.

        ``environ`` replaces ``os.environ`` as the source of ``SKEWLESS_*`` overrides.
        Raises DefinitionError listing every problem, ConfigError for bad settings.
        """
        repo = Path(path)
        config = load_config(repo, environ)
        loaded = load_definitions(repo)
        plan = compile_plan(
            loaded.entities,
            loaded.sources,
            loaded.views,
            base_dir=repo.resolve(),
            problems=loaded.problems,
        )
        if config.online_merge_rekeyed_views:
            plan = with_merged_tiles(plan)
        return cls(plan, config)

    def close(self) -> None:
        """Release what the store opened: the read cache's invalidation connection (and its
        thread), queued Kafka sends (delivered first, bounded by the Kafka timeout) and the
        Redis connections. Idempotent; a later call opens what it needs again. ``with
        FeatureStore.from_repo(...) as store:`` closes on leaving the block."""
        self._read_cache.close()
        publisher, self._publisher = self._publisher, None
        online, self._online = self._online, None
        self._offsets = None  # an admin client: nothing to flush, released with it
        try:
            if publisher is not None:
                publisher.close()
        finally:
            if online is not None:
                close = getattr(online, "close", None)
                if close is not None:
                    close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore(repo={str(self.config.repo_path)!r}, views={sorted(self.plan.views)})"

    # -- plan and apply ------------------------------------------------------------------

    def diff(self) -> PlanDiff:
        """What changed since the last ``apply``."""
        return diff(self.plan, read_applied(self.config.registry_path))

    def topics(self) -> dict[str, int]:
        """Every topic the plan needs → partitions: each source topic and its dead-letter topic."""
        count = self.config.kafka_partitions
        out: dict[str, int] = {}
        for name, source in sorted(self.plan.sources.items()):
            out[source.topic] = count
            out[dead_letter_topic(name)] = count
        return out

    def apply(self) -> ApplyResult:
        """Create missing topics (sources, dead letters), then record this plan as applied.

        Needs Kafka: raises KafkaUnavailable (and records nothing) when it cannot be reached.

        Example:
            >>> result = store.apply()  # doctest: +SKIP
            >>> result.topics_created, result.diff.changed  # doctest: +SKIP
            ({'transactions': 4, 'skewless.transactions.dlq': 4}, ())
        """
        wanted = self.topics()
        created = ensure_topics(KafkaSettings.from_config(self.config), wanted)
        change = self.diff()
        write_applied(self.config.registry_path, self.plan)
        return ApplyResult(
            diff=change, topics_created={t: wanted[t] for t in created}, topics=wanted
        )

    # -- rebuild-online --------------------------------------------------------------------

    def rebuild_online(
        self, view_name: str, *, progress: Callable[[int], None] | None = None
    ) -> RebuildOutcome:
        """Refill a view's online keyspace from the event log, then drop its retired ones.

        Use after a definition change (``plan`` says CHANGED) or when Redis lost its data.
        Stop the view's workers first; restarted, their offset fences skip what the rebuild
        holds. Reads of the view see partial state while it runs.

        Example:
            >>> store.rebuild_online("customer_spend")  # doctest: +SKIP
        """
        (outcome,) = self.rebuild_online_views([view_name], progress=progress)
        return outcome

    def rebuild_online_views(
        self, view_names: Sequence[str], *, progress: Callable[[int], None] | None = None
    ) -> list[RebuildOutcome]:
        """``rebuild_online`` of several views (one outcome each, in the order given), the
        views of one source in one pass over its log: each log file is read and decoded
        once for all of them. ``progress`` counts the log records replayed.

        Example:
            >>> store.rebuild_online_views(sorted(store.plan.views))  # doctest: +SKIP
        """
        from connectors.redis_store import RedisOnlineStore

        names = list(dict.fromkeys(view_names))
        unknown = [name for name in names if name not in self.plan.views]
        if unknown or not names:
            what = f"unknown view {unknown[0]!r}" if unknown else "no view to rebuild"
            raise InputDataError(f"{what}; views: {', '.join(sorted(self.plan.views))}")
        online = self.online_store
        if not isinstance(online, RedisOnlineStore):
            raise InputDataError("rebuild_online needs the Redis online store")
        for name in names:
            online.delete_keyspace(self.plan.views[name].fingerprint)
        results = rebuild_views(
            self.plan, names, EventLogReader(self.config.event_log_root), online,
            now_ms=time.time_ns() // 1_000_000, progress=progress,
        )  # fmt: skip
        # a keyspace is named by its definition's fingerprint, not by the view's name: two
        # views defined alike share one, so a fingerprint that a view of the plan still uses
        # is live, even when another view retired it (docs/decisions.md)
        live = {view.fingerprint for view in self.plan.views.values()}
        outcomes = []
        for name, result in zip(names, results, strict=True):
            dropped: dict[str, int] = {}
            for fingerprint in read_retired(self.config.registry_path).get(name, []):
                if fingerprint not in live:
                    dropped[fingerprint] = online.delete_keyspace(fingerprint)
            forget_retired(self.config.registry_path, name)
            outcomes.append(RebuildOutcome(result=result, dropped_keys=dropped))
        self.catch_up_reads()  # this store's reads see what the rebuild wrote
        return outcomes

    def catch_up_reads(self) -> None:
        """Read your writes across clients: the next ``get_online_features`` of this store
        reflects every change Redis acknowledged before this call, whoever made it (a worker,
        another process, ``redis-cli``). Without it, a cached read may miss a change whose
        invalidation is still in flight for a moment (docs/online.md). Costs the next read
        one round trip on the cache's invalidation connection; a no-op when reads are not
        cached by tracking. ``rebuild_online`` calls it before it returns.

        Example:
            >>> store.catch_up_reads()  # doctest: +SKIP
        """
        self._read_cache.catch_up()

    # -- push ----------------------------------------------------------------------------

    def push(self, source_name: str, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Validate rows against the source schema and produce them to its topic; return the count.

        Each row is encoded and decoded back with the worker's own checks and keyed by the
        source's key fields; a bad row sends nothing (InputDataError naming the row). The
        timestamp field takes int ms (µs for ``timestamp-micros``) or datetimes (naive = UTC).
        Delivery is flushed before returning; KafkaUnavailable if a record did not land.

        Example:
            >>> store.push("transactions", [{"transaction_id": "t1", "customer_id": "c1",
            ...     "merchant_id": "m1", "amount": 9.5, "currency": "EUR", "country": "DE",
            ...     "card_present": False, "ts": 1_767_225_600_000}])  # doctest: +SKIP
            1
        """
        source = self.plan.sources.get(source_name)
        if source is None:
            raise InputDataError(
                f"unknown source {source_name!r}; sources: {', '.join(sorted(self.plan.sources))}"
            )
        limits = DecodeLimits.from_config(self.config)  # what the worker will accept
        records = encode_rows(source, rows, now_ms=wall_clock_ms(), limits=limits)
        if self._publisher is None:
            self._publisher = KafkaPublisher(KafkaSettings.from_config(self.config))
        self._publisher.partitions(source.topic)  # a missing topic: say "run skewless apply"
        return self._publisher.send(source.topic, ((k, v, None) for k, v in records))

    # -- event log -----------------------------------------------------------------------

    def compact_log(
        self,
        source_name: str | None = None,
        *,
        small_records: int = 10_000,
        target_records: int = 100_000,
    ) -> list[Compaction]:
        """Merge each event-log partition's runs of small files (docs/event-log.md).

        Safe beside running workers and readers: records keep their order and offsets, and
        nothing is ever missing or counted twice. One compaction per partition at a time.

        Example:
            >>> [c.files_after for c in store.compact_log("transactions")]  # doctest: +SKIP
            [3, 2, 4, 3]
        """
        names = [source_name] if source_name is not None else sorted(self.plan.sources)
        for name in names:
            if name not in self.plan.sources:
                raise InputDataError(
                    f"unknown source {name!r}; sources: {', '.join(sorted(self.plan.sources))}"
                )
        log = EventLogReader(self.config.event_log_root)
        compactor = EventLogCompactor(self.config.event_log_root)
        held = set(log.sources())
        asked: list[dict[tuple[str, int], int | None]] = []

        def committed(name: str, partition: int) -> int | None:
            if not asked:  # only a partition with owner epochs needs Kafka's offsets
                asked.append(self._committed_offsets([n for n in names if n in held]))
            return asked[0].get((self.plan.sources[name].topic, partition))

        return [
            compactor.compact(
                name,
                partition,
                small_records=small_records,
                target_records=target_records,
                committed=lambda n=name, p=partition: committed(n, p),  # type: ignore[misc]
            )
            for name in names
            if name in held
            for partition in log.partitions(name)
        ]

    def _committed_offsets(self, sources: Sequence[str]) -> dict[tuple[str, int], int | None]:
        """The workers' committed offsets of ``sources``' topics, for compaction to know what
        no later owner epoch can fence; empty (with a warning) when Kafka does not answer:
        then only files below each partition's newest epoch start are merged."""
        if not sources:
            return {}
        from connectors.kafka import KafkaOffsets, KafkaSettings, group_id

        topics = [self.plan.sources[name].topic for name in sources]
        try:
            offsets = KafkaOffsets(KafkaSettings.from_config(self.config))
            marks = offsets.watermarks(topics)
            return offsets.committed(group_id(self.config.project), marks)
        except KafkaUnavailable as exc:
            logging.getLogger("skewless.compaction").warning(
                "%s; compacting only what no owner epoch can fence any more", exc
            )
            return {}

    def import_events(
        self,
        source_name: str,
        data: pd.DataFrame | str | Path,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> ImportResult:
        """Write historical events (DataFrame, Parquet or CSV) into the event log.

        Example:
            >>> store.import_events("transactions", "history.parquet")  # doctest: +SKIP
        """
        source = self.plan.sources.get(source_name)
        if source is None:
            raise InputDataError(
                f"unknown source {source_name!r}; sources: {', '.join(sorted(self.plan.sources))}"
            )
        strings = tuple(n for n, f in source.fields.items() if f.kind == "str")
        df = read_table(data, string_columns=strings)
        writer = EventLogWriter(self.config.event_log_root, source.name, dict(source.schema))
        return import_frame(source, df, writer, self.config.kafka_partitions, progress)

    # -- backfill ------------------------------------------------------------------------

    def _key_range(self, views: Iterable[str], key: str) -> tuple[int, int]:
        """An integer join key's values that can name an entity in any of ``views``: the
        widest range of the source fields behind it."""
        return int_range(
            fields[key]
            for fields in (self.plan.sources[self.plan.views[v].source].fields for v in views)
            if key in fields and fields[key].kind == "int"
        )

    def get_historical_features(
        self,
        entity_df: pd.DataFrame,
        features: Sequence[str],
        *,
        mode: backfill.Mode = "event_time",
        timestamp_column: str = "event_timestamp",
        include_late: bool = False,
        full_feature_names: bool = False,
        workers: int | None = None,
        progress: backfill.Progress | None = None,
        cluster: Any = None,
    ) -> pd.DataFrame:
        """Point-in-time features: each input row gets each feature as of its timestamp.

        ``cluster``: a Dask scheduler address (``tcp://HOST:8786``) or a connected
        ``distributed.Client`` runs the reading and the sweep on that cluster (the log's URL
        and this repo's path must be reachable from every worker; docs/backfill.md); the
        values are the same as the local run's.

        The window of a row at ``t`` never includes ``t`` itself nor anything after it
        (DESIGN §3). Output: the input rows in input order plus one column per feature.

        Example:
            >>> labels = pd.DataFrame({"customer_id": ["c1"],
            ...     "event_timestamp": pd.to_datetime(["2026-01-02"], utc=True)})
            >>> store.get_historical_features(labels, ["customer_spend:amount_sum_1d"])  # doctest: +SKIP
        """
        if mode not in backfill.MODES:
            raise InputDataError(f"mode must be one of {backfill.MODES}, got {mode!r}")
        if not isinstance(entity_df, pd.DataFrame):
            raise InputDataError(
                f"entity_df must be a pandas DataFrame, got {type(entity_df).__name__}"
            )
        refs = self.plan.resolve(features)
        if timestamp_column not in entity_df.columns:
            raise InputDataError(
                f"entity_df has no timestamp column {timestamp_column!r} "
                f"(columns: {', '.join(map(str, entity_df.columns))}); pass timestamp_column=..."
            )
        times = to_epoch_ms(entity_df[timestamp_column], timestamp_column)
        grouped = backfill.requests_by_view(refs)
        requests: list[backfill.ViewRequest] = []
        # views with the same join keys share one entity table (no tuple per row)
        entities_by_keys: dict[tuple[str, ...], backfill.EntityColumns] = {}
        for view_name, indices in grouped.items():
            view = self.plan.views[view_name]
            missing = [k for k in view.join_keys if k not in entity_df.columns]
            if missing:
                raise InputDataError(
                    f"entity_df lacks join key column(s) {missing} of entity {view.entity!r} "
                    f"needed by view {view_name!r}"
                )
            entities = entities_by_keys.get(view.join_keys)
            if entities is None:
                fields = self.plan.sources[view.source].fields
                kinds = [fields[k].kind if k in fields else None for k in view.join_keys]
                key_columns = [
                    label_keys(
                        entity_df[k],
                        k,
                        kind if kind in ("str", "int") else None,
                        self._key_range(grouped, k) if kind == "int" else None,
                    )
                    for k, kind in zip(view.join_keys, kinds, strict=True)
                ]
                entities = entities_by_keys[view.join_keys] = backfill.EntityColumns(key_columns)
            requests.append(
                backfill.ViewRequest(
                    view=view_name,
                    entities=entities,
                    times_ms=times,
                    indices=indices,
                )
            )
        log = EventLogReader(self.config.event_log_root)
        for source in sorted({self.plan.views[r.view].source for r in requests}):
            log.partitions(source)  # raises EventLogMissing saying how to create the log
        if cluster is not None:
            from engine import backfill_dask

            values = backfill_dask.run_columns(
                self.plan,
                self.config.event_log_root,
                self.config.repo_path,
                requests,
                mode=mode,
                include_late=include_late,
                cluster=cluster,
                progress=progress,
            )
        else:
            values = backfill.run_columns(
                self.plan,
                log,
                requests,
                mode=mode,
                include_late=include_late,
                workers=self.config.effective_backfill_workers() if workers is None else workers,
                progress=progress,
            )
        columns: dict[str, pd.Series] = {}
        for request, arrays in zip(requests, values, strict=True):
            view = self.plan.views[request.view]
            for j, index in enumerate(request.indices):
                feature = view.aggregations[index].feature
                column = f"{view.name}__{feature}" if full_feature_names else feature
                if column in entity_df.columns or column in columns:
                    raise InputDataError(
                        f"output column {column!r} already exists in entity_df or is requested "
                        "twice; use full_feature_names=True"
                    )
                columns[column] = pd.Series(arrays[j], index=entity_df.index)
        return pd.concat([entity_df, pd.DataFrame(columns, index=entity_df.index)], axis=1)

    # -- online reads --------------------------------------------------------------------

    @property
    def online_store(self) -> OnlineStateStore:
        """The online store at ``config.redis_url``, connected on first use."""
        if self._online is None:
            from connectors.redis_store import RedisOnlineStore

            self._online = RedisOnlineStore.from_config(self.config)
        return self._online

    def get_online_features(
        self,
        features: Sequence[str],
        entity_rows: EntityRows,
        *,
        full_feature_names: bool = False,
        with_freshness: bool = False,
        now_ms: int | None = None,
    ) -> OnlineResponse:
        """Fresh feature values from the online store, for many entities and views at once.

        Each value is the processing-time value as of ``now_ms`` (default: the wall clock):
        windows are merged at read time, so a value ages even when no event arrives. An
        entity the store does not hold reads as an empty window (counts and sums 0, else
        None). Every value has a status (``resp.statuses``, ``resp.to_dict(include_status=
        True)``): ``PRESENT``/``NULL_VALUE`` when events in its window produced it,
        ``OUTSIDE_WINDOW``/``NOT_FOUND``/``NO_STATE`` when it is that default and why. One
        Redis round trip for all rows and views. See docs/online.md.

        Example:
            >>> resp = store.get_online_features(
            ...     ["customer_spend:amount_sum_30d", "customer_spend:amount_count_7d"],
            ...     [{"customer_id": "c00001"}, {"customer_id": "c99999"}])  # doctest: +SKIP
            >>> resp.to_dict()  # doctest: +SKIP
            {'customer_id': ['c00001', 'c99999'], 'amount_sum_30d': [812.5, 0.0], ...}
            >>> resp.statuses["amount_sum_30d"]  # doctest: +SKIP
            [<FeatureStatus.PRESENT: 'PRESENT'>, <FeatureStatus.NOT_FOUND: 'NOT_FOUND'>]
        """
        t_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        result = read_online(
            self.plan,
            self.online_store,
            features,
            entity_rows,
            now_ms=t_ms,
            cache=self._read_cache,
        )
        return OnlineResponse(
            result, full_feature_names=full_feature_names, with_freshness=with_freshness
        )

    # -- operations ----------------------------------------------------------------------

    def verify(
        self,
        *,
        sample: int = 200,
        views: Sequence[str] | None = None,
        seed: int | None = None,
        at_ms: int | None = None,
        retries: int = 3,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Sampled entities read online at T vs the processing-time replay of the log at T.

        Every disagreement is explained; in-flight entities are re-checked. See
        ``engine.verify.verify`` and docs/verify.md.

        Example:
            >>> report = store.verify(sample=100, seed=7)  # doctest: +SKIP
            >>> report.rate, report.ok  # doctest: +SKIP
            (1.0, True)
        """
        from engine import verify

        registry = self.config.registry_path
        return verify.run(
            self.plan, self.online_store, EventLogReader(self.config.event_log_root),
            sample=sample, views=views, seed=seed, at_ms=at_ms, retries=retries,
            applied=read_applied(registry), retired=read_retired(registry), progress=progress,
        )  # fmt: skip

    def status(
        self, *, key_scan_limit: int | None = None, now_ms: int | None = None
    ) -> StatusReport:
        """Consumer lag, view freshness, dead letters, event-log size and online key counts.

        Never raises for an unreachable service: the report marks it unavailable
        (``report.ok`` is False) and holds everything else. See docs/status.md.

        Example:
            >>> report = store.status()  # doctest: +SKIP
            >>> report.ok, report.lag[0].lag  # doctest: +SKIP
            (True, 0)
        """
        import dataclasses

        from connectors.kafka import group_id
        from connectors.redis_store import RedisOnlineStore
        from engine.secrets import redact_url
        from engine.status import DEFAULT_KEY_SCAN_LIMIT, Connect, collect_status

        cfg = self.config
        settings = dataclasses.replace(KafkaSettings.from_config(cfg), timeout_s=5.0)
        return collect_status(
            self.plan,
            group=group_id(cfg.project),
            dead_letter_topic=dead_letter_topic,
            kafka=Connect(address=settings.bootstrap_servers, open=lambda: KafkaOffsets(settings)),
            online=Connect(address=redact_url(cfg.redis_url),
                           open=lambda: RedisOnlineStore.from_config(cfg)),
            log=Connect(address=redact_url(cfg.event_log_root),
                        open=lambda: EventLogReader(cfg.event_log_root)),
            now_ms=wall_clock_ms() if now_ms is None else now_ms,
            key_scan_limit=DEFAULT_KEY_SCAN_LIMIT if key_scan_limit is None else key_scan_limit,
        )  # fmt: skip

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Records the workers' consumer group has not committed yet, per (topic, partition)
        of every source topic. Raises KafkaUnavailable when Kafka cannot be reached."""
        from connectors.kafka import group_id
        from engine.status import consumer_lag

        topics = sorted({self.plan.sources[v.source].topic for v in self.plan.views.values()})
        if self._offsets is None:
            self._offsets = KafkaOffsets(KafkaSettings.from_config(self.config))
        lags = consumer_lag(self._offsets, group_id(self.config.project), topics)
        return {tp: p.lag for tp, p in lags.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildOutcome:
    """What ``rebuild_online`` wrote and which retired keyspaces it dropped (fingerprint → keys)."""

    result: RebuildResult
    dropped_keys: dict[str, int]
