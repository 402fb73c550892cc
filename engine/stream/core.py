"""The batch processing core of a stream worker, independent of the consumer loop (DESIGN §4 to §6).

Per batch of source records:

1. decode and validate each record (refused ones become dead letters with a reason);
2. run every view's transform/key extraction (``processing.extract``) on each record;
3. load the touched entities' state from the online store (one round trip) unless cached;
4. skip what the store already holds (offset fences) and fold the rest into tiles with
   ``processing.apply_extracted``, admitting by the record's ``processed_at``;
5. write every touched entity in one pipeline (tiles, fence, write time, journal), with
   each view's write stats (``online.stats_write``: newest event time, write time);
6. append the valid records to the event log; send the dead letters;
7. hand back the offsets to commit — only after 5 and 6 are durable.

With a ``StateRecovery`` (the workers' wiring), step 5 also swaps each (view, partition)
watermark and checks what Redis handed back; state Redis lost is rebuilt in place from the
log before the batch is retried (``engine.stream.recovery``, docs/reliability.md).

``processed_at`` of a batch is the worker clock when it starts; a record that the online
store already holds from an earlier, unlogged attempt keeps the ``processed_at`` of that
attempt (from the entity's journal), so the log always says what the online store did.
Any failure leaves the cache without the batch's effects, so retrying the same records is
safe: fences make the store idempotent and the log drops offsets it already holds.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import msgpack

from engine.envelope import Envelope
from engine.errors import OnlineStateLost, OnlineWriteConflict
from engine.online import PartitionState, entity_write, parse_state, state_key, stats_write
from engine.plan import Plan, ViewPlan
from engine.ports import DeadLetter, DeadLetterSink, EventLogSink, OnlineStateStore, StateWrite
from engine.processing import (
    EntityKey,
    Extracted,
    apply_extracted,
    extract_all,
    is_admitted,
    row_groups,
)
from engine.serde import DecodeLimits, RecordRefused, SourceCodec
from engine.stream.recovery import LostState, StateRecovery, Watermarks

JOURNAL_ENTRIES = 8
REBUILD_ROUNDS = 3  # rebuilds of one batch's lost state before the batch fails
_NO_EVENT = -(1 << 63)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRecord:
    """A record as the consumer delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchOutcome:
    """What a batch did, and the offsets that may now be committed (next offset to read)."""

    commits: dict[int, int]
    processed_at_ms: int
    records: int
    refused: Counter[str]
    applied: int
    late: int
    fenced: int
    entities_written: int
    # per source partition: event time of the newest event applied (for freshness metrics)
    newest_event_ms: dict[int, int] = field(default_factory=dict)
    rebuilt: int = 0  # (view, partition) states rebuilt from the log before this batch landed


CacheKey = tuple[int, EntityKey, int]  # (view slot, entity, source partition)


class BatchProcessor:
    """Turns batches of one source's records into online writes, log appends and dead letters.

    Example:
        >>> core = BatchProcessor(plan, "transactions", online=store, log=writer,
        ...                       dead=dlq)  # doctest: +SKIP
        >>> outcome = core.process(records)  # doctest: +SKIP
        >>> consumer.commit(outcome.commits)  # doctest: +SKIP
    """

    def __init__(
        self,
        plan: Plan,
        source: str,
        *,
        online: OnlineStateStore,
        log: EventLogSink,
        dead: DeadLetterSink,
        clock: Callable[[], int] = wall_clock_ms,
        limits: DecodeLimits | None = None,
        cache_entities: int = 200_000,
        recovery: StateRecovery | None = None,
    ) -> None:
        self.plan = plan
        self.source = plan.sources[source]
        self.views: list[ViewPlan] = [v for v in plan.views.values() if v.source == source]
        self._groups = row_groups(self.views)
        self.codec = SourceCodec(self.source, limits)
        self.online = online
        self.log = log
        self.dead = dead
        self.clock = clock
        self.cache_entities = cache_entities
        self._cache: OrderedDict[CacheKey, tuple[PartitionState, list[list[int]]]] = OrderedDict()
        # without a recovery, no watermarks are written or checked
        self.recovery = recovery
        self._marks = Watermarks(self.views) if recovery is not None else None
        self._lost: dict[int, list[LostState]] = {}  # partition → lost, awaiting a rebuild

    # -- cache -----------------------------------------------------------------------------

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop cached state of partitions this worker no longer owns (after a revoke)."""
        gone = set(partitions)
        for key in [k for k in self._cache if k[2] in gone]:
            del self._cache[key]
        if self._marks is not None:
            self._marks.forget(gone)
        for p in gone:  # its next owner checks (and rebuilds) for itself
            self._lost.pop(p, None)

    def forget_all(self) -> None:
        self._cache.clear()
        if self._marks is not None:
            self._marks.forget_all()
        self._lost.clear()

    def _load(self, wanted: set[CacheKey]) -> None:
        missing = [k for k in wanted if k not in self._cache]
        if not missing:
            for k in wanted:
                self._cache.move_to_end(k)
            return
        by_key: dict[str, list[CacheKey]] = {}
        for ck in missing:
            by_key.setdefault(state_key(self.views[ck[0]], ck[1]), []).append(ck)
        names = list(by_key)
        hashes = self.online.load(names)
        for name, fields in zip(names, hashes, strict=True):
            for ck in by_key[name]:
                view = self.views[ck[0]]
                state = parse_state(view, fields, ck[2]).get(ck[2], PartitionState())
                raw = fields.get(f"j:{ck[2]}".encode())
                journal = [list(e) for e in msgpack.unpackb(raw)] if raw else []
                self._cache[ck] = (state, journal)
        for k in wanted:
            self._cache.move_to_end(k)

    def _trim_cache(self) -> None:
        while len(self._cache) > self.cache_entities:
            self._cache.popitem(last=False)

    # -- the batch -------------------------------------------------------------------------

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Process one batch; raises (leaving no trace in the cache) if a write fails.

        State found lost is rebuilt from the log and the batch retried, up to
        ``REBUILD_ROUNDS`` times; a rebuild that fails raises, and the next call resumes it.
        """
        rebuilt = 0
        for _ in range(REBUILD_ROUNDS + 1):
            if self._lost:
                rebuilt += self._rebuild_lost()
            try:
                outcome = self._process(records)
            except _StateLost as exc:
                for item in exc.lost:
                    self._lost.setdefault(item.partition, []).append(item)
                continue
            return replace(outcome, rebuilt=rebuilt) if rebuilt else outcome
        lost = "; ".join(i.reason for items in self._lost.values() for i in items)
        raise OnlineStateLost(
            f"source {self.source.name!r}: online state was lost again right after each of "
            f"{REBUILD_ROUNDS} rebuilds from the event log ({lost}); is something emptying "
            "Redis (FLUSHALL, eviction: set maxmemory-policy noeviction) or another worker "
            "writing these partitions? The batch stays uncommitted and is retried"
        )

    def _rebuild_lost(self) -> int:
        """Rebuild every partition found lost; returns the (view, partition) states rebuilt."""
        assert self.recovery is not None and self._marks is not None
        count = 0
        for p in sorted(self._lost):
            lost = self._lost[p]
            names = {item.view for item in lost}
            slots = [v for v, view in enumerate(self.views) if view.name in names]
            result = self.recovery.rebuild([self.views[v] for v in slots], p, lost)
            for key in [k for k in self._cache if k[2] == p and k[0] in slots]:
                del self._cache[key]
            for v in slots:
                self._marks.rebuilt((v, p), result.last_offset)
            del self._lost[p]
            count += len(slots)
        return count

    def _process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        batch_p = self.clock()
        src = self.source
        envelopes: list[Envelope] = []
        letters: list[DeadLetter] = []
        refused: Counter[str] = Counter()
        commits: dict[int, int] = {}
        for rec in records:
            commits[rec.partition] = max(commits.get(rec.partition, 0), rec.offset + 1)
            try:
                payload = self.codec.decode(rec.key, rec.value, now_ms=batch_p)
            except RecordRefused as exc:
                refused[exc.code] += 1
                letters.append(
                    DeadLetter(topic=rec.topic, partition=rec.partition, offset=rec.offset,
                               key=rec.key, value=rec.value, code=exc.code, reason=str(exc))
                )  # fmt: skip
                continue
            envelopes.append(
                Envelope(partition=rec.partition, offset=rec.offset, key=rec.key,
                         event_time_ms=payload[src.timestamp_field] // src.timestamp_divisor,
                         processed_at_ms=batch_p, payload=payload)
            )  # fmt: skip
        pairs: list[tuple[int, int, Extracted]] = []
        wanted: set[CacheKey] = set()
        for e, env in enumerate(envelopes):
            for v, item in extract_all(self._groups, src, env, include_late=True):
                pairs.append((e, v, item))
                wanted.add((v, item.entity, item.partition))
        try:
            self._load(wanted)
            return self._apply(batch_p, envelopes, pairs, letters, refused, commits, len(records))
        except BaseException:
            for ck in wanted:  # the cache may hold half-applied effects: reload next time
                self._cache.pop(ck, None)
            raise

    def _apply(
        self,
        batch_p: int,
        envelopes: list[Envelope],
        pairs: list[tuple[int, int, Extracted]],
        letters: list[DeadLetter],
        refused: Counter[str],
        commits: dict[int, int],
        count: int,
    ) -> BatchOutcome:
        # processed_at per record: an earlier attempt's, if the store already applied it
        cache = self._cache
        keys = [(v, item.entity, item.partition) for _, v, item in pairs]
        held = [cache[ck] for ck in keys]
        recovered: dict[int, int] = {}
        fenced = 0
        for (e, _, item), (state, journal) in zip(pairs, held, strict=True):
            if item.offset <= state.fence:
                fenced += 1
                first = _journal_lookup(journal, item.offset)
                if first is not None:
                    recovered[e] = min(recovered.get(e, first), first)
        touched: dict[CacheKey, set[int]] = {}  # event times applied per cache entry
        prior: dict[CacheKey, int] = {}  # each touched entry's fence before this batch
        newest: dict[tuple[int, int], int] = {}  # (view slot, partition) → newest event time
        applied = late = 0
        views = self.views
        for (e, v, item), ck, (state, _) in zip(pairs, keys, held, strict=True):
            if item.offset <= state.fence:
                continue
            p_e = recovered.get(e, batch_p) if recovered else batch_p
            view = views[v]
            et = item.event_time_ms
            if not is_admitted(view, et, p_e):
                late += 1
                continue
            times = touched.get(ck)
            if times is None:
                times = touched[ck] = set()
                prior[ck] = state.fence  # what the write checks is still in Redis
            apply_extracted(view, state.tiles, item)
            state.fence = item.offset
            if p_e > state.updated_ms:
                state.updated_ms = p_e
            times.add(et)
            applied += 1
            if et > newest.get((v, item.partition), _NO_EVENT):
                newest[(v, item.partition)] = et
        writes: list[StateWrite] = []
        for ck, times in touched.items():
            v, entity, partition = ck
            state, journal = cache[ck]
            journal.append([state.fence, batch_p])
            del journal[:-JOURNAL_ENTRIES]
            layout = views[v].layout
            hops = [group.hop_ms for group in layout.groups]
            tiles = {(hop, t // hop) for t in times for hop in hops}
            writes.append(
                entity_write(views[v], entity, partition, state, tiles,
                             bool(layout.lifetime), journal, batch_p, prior[ck])
            )  # fmt: skip
        entities_written = len(writes)
        by_view: dict[int, dict[int, int]] = {}
        for (v, partition), event_ms in newest.items():
            by_view.setdefault(v, {})[partition] = event_ms
        writes.extend(stats_write(self.views[v], marks, batch_p) for v, marks in by_view.items())
        if self._marks is not None and envelopes:
            highest: dict[int, int] = {}
            for env in envelopes:
                highest[env.partition] = max(highest.get(env.partition, -1), env.offset)
            pending = self._marks.prepare(highest, self.log)
            try:
                old = self.online.write(writes, [mark for _, mark, _ in pending])
            except OnlineWriteConflict as conflict:
                # the marks were swapped: lost state explains refused fences first
                lost = self._marks.confirm(pending, conflict.previous)
                if lost:
                    raise _StateLost(lost) from conflict
                raise
            except BaseException:
                self._marks.failed(pending)
                raise
            lost = self._marks.confirm(pending, old)
            if lost:
                raise _StateLost(lost)
        elif writes:
            self.online.write(writes)
        if envelopes:
            if recovered:
                envelopes = [
                    env if e not in recovered else _with_processed_at(env, recovered[e])
                    for e, env in enumerate(envelopes)
                ]
            self.log.append(envelopes)
        if letters:
            self.dead.send(letters)
        self._trim_cache()
        return BatchOutcome(
            commits=commits, processed_at_ms=batch_p, records=count, refused=refused,
            applied=applied, late=late, fenced=fenced, entities_written=entities_written,
            newest_event_ms=_newest_per_partition(newest),
        )  # fmt: skip


def _newest_per_partition(newest: dict[tuple[int, int], int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for (_, partition), event_ms in newest.items():
        out[partition] = max(out.get(partition, event_ms), event_ms)
    return out


class _StateLost(Exception):
    """The batch's write found state lost (raised before its log append)."""

    def __init__(self, lost: list[LostState]) -> None:
        super().__init__(f"{len(lost)} lost states")
        self.lost = lost


def _journal_lookup(journal: list[list[int]], offset: int) -> int | None:
    """processed_at of the write that first applied ``offset`` (None if older than the journal)."""
    for fence, processed_at in journal:
        if offset <= fence:
            return processed_at
    return None


def _with_processed_at(env: Envelope, processed_at_ms: int) -> Envelope:
    return Envelope(partition=env.partition, offset=env.offset, key=env.key,
                    event_time_ms=env.event_time_ms, processed_at_ms=processed_at_ms,
                    payload=env.payload)  # fmt: skip
