"""The batch processing core of a stream worker, independent of the consumer loop (DESIGN §4 to §6).

Per batch of source records:

1. decode and validate the batch natively (``SourceCodec.decode_batch``: columns; refused
   records become dead letters with a reason);
2. run the user code of views with a transform or filter (``processing.group_columns``:
   batch transforms once per batch, row transforms per row); the native ``OnlineCore``
   extracts every view's entity and inputs from the columns (``prepare``);
3. load the touched entities' state from the online store (one round trip) unless cached;
4. in the core (``apply``): skip what the store already holds (offset fences), fold the
   rest into tiles admitting by the record's ``processed_at``, evict, encode (codec v2);
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

import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from engine.envelope import Envelope
from engine.errors import ConfigError, OnlineStateLost, OnlineWriteConflict, OwnerFenced
from engine.online import EntityWrites, core_spec, marks_key, stats_write
from engine.plan import Plan, ViewPlan
from engine.ports import DeadLetter, DeadLetterSink, EventLogSink, OnlineStateStore, Watermark
from engine.processing import group_columns, user_code_input
from engine.serde import DecodeLimits, SourceCodec
from engine.stream.ownership import Ownership
from engine.stream.recovery import LostState, StateRecovery, Watermarks
from engine.watermarks import watermark_key

if TYPE_CHECKING:  # rocksdict is imported by the workers that keep local state only
    from engine.stream.local_state import LocalState

REBUILD_ROUNDS = 3  # rebuilds of one batch's lost state before the batch fails
# retries of a batch whose merge-on-write entities other workers kept writing meanwhile
MERGE_ROUNDS = 100
# "0": a worker owning every source partition still reloads its merge-on-write entries
# each batch (the rule for several workers); on by default (docs/decisions.md)
KEEP_MERGED_ENV = "SKEWLESS_WORKER_KEEP_MERGED"
_MERGED = -1  # the partition the native core lists a merge-on-write entry under
_NO_EVENT = -(1 << 63)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SourceRecord(NamedTuple):
    """A record as the consumer delivered it (a named tuple: the consumer builds one per
    message, and a tuple is the cheapest immutable record Python builds)."""

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
    # records of partitions this worker does not own (any more): neither applied nor committed
    dropped: int = 0
    fenced_partitions: tuple[int, ...] = ()  # found taken by a later owner during this batch


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
        ownership: Ownership | None = None,
        local: LocalState | None = None,
        keep_merged: bool | None = None,
    ) -> None:
        self.plan = plan
        self.source = plan.sources[source]
        self.views: list[ViewPlan] = [v for v in plan.views.values() if v.source == source]
        self._spec = core_spec(self.views)
        self._core = self._spec.new_core(cache_entities)
        self.codec = SourceCodec(self.source, limits)
        self.online = online
        self.log = log
        self.dead = dead
        self.clock = clock
        self.cache_entities = cache_entities
        self._user_code = threading.Lock()  # transforms run on one thread at a time
        # without a recovery, no watermarks are written or checked
        self.recovery = recovery
        self._marks = Watermarks(self.views) if recovery is not None else None
        self._lost: dict[int, list[LostState]] = {}  # partition → lost, awaiting a rebuild
        # owner epochs (engine/stream/ownership.py); None: no fencing (tests, offline tools)
        self.ownership = ownership
        # the local tier behind the cache (engine/stream/local_state.py): evicted entries
        # are spilled there after each batch, and looked up there before Redis
        self.local = local
        self.local_counts: Counter[str] = Counter()  # hits, stale, spilled, loaded (Redis)
        if local is not None:
            self._core.set_spill(True)
        # key prefixes of the merge-on-write views (ViewPlan.merged; docs/decisions.md)
        self._merged = tuple(
            prefix
            for v in self.views
            if v.merged
            for prefix in (f"sk:{v.fingerprint}:", f"sk:fm:{v.fingerprint}:")
        )
        # a sole owner (its assignment covers every partition of the source) keeps merged
        # entries cached across batches; None: from KEEP_MERGED_ENV (on unless "0")
        if keep_merged is None:
            keep_merged = os.environ.get(KEEP_MERGED_ENV, "1") != "0"
        self._keep_merged = keep_merged and bool(self._merged)
        self._assigned: set[int] = set()  # the partitions the runtime assigned (assign)
        self.source_partitions: int | None = None  # the source topic's, when known
        merged = sorted(v.name for v in self.views if v.merged)
        if recovery is not None and merged and not hasattr(online, "load_watermarked"):
            # without the watermark read after the merged hashes a batch could fold into
            # merge-on-write state Redis lost before it was read (docs/reliability.md)
            raise ConfigError(
                f"source {source!r}: view(s) {', '.join(merged)} use the merge-on-write "
                f"layout, which needs an online store with load_watermarked; "
                f"{type(online).__name__} has none (set online.merge_rekeyed_views: false, "
                "or use the Redis stores)"
            )

    def _is_merged_key(self, key: str) -> bool:
        return key.startswith(self._merged)

    # -- merge-on-write entries of a sole owner ------------------------------------------

    def set_source_partitions(self, count: int | None) -> None:
        """The source topic has ``count`` partitions (None: unknown). A worker whose
        assignment covers all of them keeps its merge-on-write entries cached across
        batches; each write stays a strict compare-and-set on the version cached, so a
        count that is wrong (a topic that grew) costs a refused write and a reload, never
        a wrong fold (docs/decisions.md, merge-on-write)."""
        self.source_partitions = count
        self._sole_owner_changed()

    @property
    def keeps_merged(self) -> bool:
        """Merge-on-write entries stay cached across batches now (a sole owner)."""
        return bool(self._core.keeps_merged)

    def _sole_owner_changed(self) -> None:
        count = self.source_partitions
        sole = (
            self._keep_merged
            and count is not None
            and count > 0
            and self._assigned.issuperset(range(count))
        )
        if sole != self._core.keeps_merged:
            self._core.set_keep_merged(sole)  # off: drops every merged entry at once

    def _forget_merged(self) -> None:
        """Drop every cached merge-on-write entry (the next batch reloads what it touches)."""
        if self._merged:
            self._core.forget_partitions([_MERGED])

    # -- cache -----------------------------------------------------------------------------

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop cached state of partitions this worker no longer owns (after a revoke).

        With a local tier the whole cache is spilled to it first, so a worker that gets the
        partitions back — or restarts, which revokes everything — starts warm; what another
        owner wrote meanwhile is refused on load (the marks differ), never served."""
        gone = set(partitions)
        if gone and self._merged:
            # no longer every partition's writer (or fenced out of one): merged entries are
            # dropped at once and reloaded each batch again
            self._assigned -= gone
            self._forget_merged()
            self._sole_owner_changed()
        if self.local is not None and gone:
            keys, values = self._core.spill(True)
            if keys:
                self.local.put(keys, values)
                self.local_counts["spilled"] += len(keys)
        self._core.forget_partitions(sorted(gone))
        if self._marks is not None:
            self._marks.forget(gone)
        for p in gone:  # its next owner checks (and rebuilds) for itself
            self._lost.pop(p, None)
        if self.ownership is not None:
            self.ownership.forget(gone)

    def assign(self, partitions: Iterable[int], generation: int) -> None:
        """The runtime assigned ``partitions`` in consumer-group ``generation``: the next batch
        takes an owner epoch for each (no-op without ``ownership``)."""
        partitions = list(partitions)
        if self.ownership is not None:
            self.ownership.assign(partitions, generation)
        if self._merged:
            self._assigned.update(partitions)
            if self.source_partitions is not None and partitions:
                # a partition past the count: the topic grew since it was read
                self.source_partitions = max(self.source_partitions, max(partitions) + 1)
            self._sole_owner_changed()

    def forget_all(self) -> None:
        self._assigned.clear()
        self._sole_owner_changed()
        self._core.forget_all()
        if self._marks is not None:
            self._marks.forget_all()
        self._lost.clear()
        if self.ownership is not None:
            self.ownership.forget_all()

    def close(self) -> None:
        """Spill every cached entry to the local tier and close it (a restarted worker
        starts warm from it); a no-op without one. Call it between batches only."""
        if self.local is None:
            return
        keys, values = self._core.spill(True)
        self.local.put(keys, values)
        self.local_counts["spilled"] += len(keys)
        self.local.close()
        self.local = None
        self._core.set_spill(False)

    @property
    def cached_entities(self) -> int:
        """(view, entity, partition) states held in the native cache."""
        return int(self._core.cached)

    # -- the batch -------------------------------------------------------------------------

    def process(
        self, records: Sequence[SourceRecord], *, decoded: BatchInput | None = None
    ) -> BatchOutcome:
        """Process one batch; raises (leaving no trace in the cache) if a write fails.

        State found lost is rebuilt from the log and the batch retried, up to
        ``REBUILD_ROUNDS`` times; a rebuild that fails raises, and the next call resumes it.

        ``decoded``: ``decode(records)`` done beforehand (the kafka runtime's pipeline decodes
        a batch while the one before is written); used by the first attempt when it is of
        these very records (a later round, or records cut by ownership, decode again).
        """
        # the cyclic collector is paused for the batch: it allocates many small acyclic
        # objects, and each collection would walk every live object of the process
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._process_rounds(records, decoded)
        finally:
            if enabled:
                gc.enable()

    def decode(self, records: Sequence[SourceRecord], *, transforms: bool = True) -> BatchInput:
        """Step 1 and 2's user code of a batch: decode and validate it, and run the batch
        and row transforms (their columns for ``prepare``). Reads and changes no entity
        state, so it may run while another batch of this processor is in flight (the
        kafka runtime's pipeline); ``processed_at`` of the batch is the clock now. A
        transform that raises is left to ``process`` (it raises there, and the batch is
        retried as ever). User code never runs on two threads at once. ``transforms=False``:
        leave them to ``process`` (``fed`` None)."""
        batch_p = self.clock()
        letters: list[DeadLetter] = []
        refused: Counter[str] = Counter()
        _, parts, offs, keys, values = zip(*records, strict=True) if records else ((),) * 5
        partitions = np.array(parts, dtype=np.int64)
        offsets = np.array(offs, dtype=np.int64)
        commits = {  # per partition: the next offset to read
            int(p): int(offsets[partitions == p].max()) + 1 for p in np.unique(partitions)
        }
        decoded = self.codec.decode_batch(list(keys), list(values), now_ms=batch_p)
        for i, exc in decoded.refused:
            rec = records[i]
            refused[exc.code] += 1
            letters.append(
                DeadLetter(topic=rec.topic, partition=rec.partition, offset=rec.offset,
                           key=rec.key, value=rec.value, code=exc.code, reason=str(exc))
            )  # fmt: skip
        src = self.source
        kept = _Kept.of(partitions, offsets, keys, decoded.kept, decoded.columns,
                        src.timestamp_field, src.timestamp_divisor)  # fmt: skip
        out = BatchInput(records=records, batch_p=batch_p, letters=letters, refused=refused,
                         commits=commits, kept=kept)  # fmt: skip
        if transforms:
            try:
                out.fed = self._fed(kept)
            except Exception:  # raised again by process(), which fails the batch
                out.fed = None
        return out

    def _process_rounds(
        self, records: Sequence[SourceRecord], decoded: BatchInput | None = None
    ) -> BatchOutcome:
        rebuilt = 0
        rounds = 0
        contended = 0
        received = len(records)
        fenced: list[int] = []
        while True:
            if self.ownership is not None:
                records, taken = self._owned(records)
                fenced += taken
                if not records:
                    return self._nothing(received, fenced)
            pre = decoded if decoded is not None and decoded.records is records else None
            decoded = None  # a later round decodes again (its own processed_at), as ever
            try:
                if self._lost:  # a zombie's rebuild is fenced too (OwnerFenced below)
                    rebuilt += self._rebuild_lost()
                outcome = self._process(records, pre)
            except _StateLost as exc:
                for item in exc.lost:
                    self._lost.setdefault(item.partition, []).append(item)
                rounds += 1
                if rounds > REBUILD_ROUNDS:
                    break
                continue
            except OnlineWriteConflict as exc:
                # a merge-on-write entity another partition's worker wrote since this batch
                # loaded it: what landed is fenced now; reload and fold the rest again
                if not self._merged or not all(self._is_merged_key(k) for k in exc.keys):
                    raise
                contended += 1
                if contended > MERGE_ROUNDS:
                    raise
                continue
            except OwnerFenced as exc:
                if self.ownership is None:
                    raise
                gone = self.ownership.fenced_out(exc.keys)
                if not gone:
                    raise
                self.forget_partitions(gone)
                fenced += gone
                continue  # the same batch without the partitions a later owner holds
            dropped = received - len(records)
            if rebuilt or dropped or fenced:
                outcome = replace(
                    outcome, rebuilt=rebuilt, dropped=dropped, fenced_partitions=tuple(fenced)
                )
            return outcome
        lost = "; ".join(i.reason for items in self._lost.values() for i in items)
        raise OnlineStateLost(
            f"source {self.source.name!r}: online state was lost again right after each of "
            f"{REBUILD_ROUNDS} rebuilds from the event log ({lost}); is something emptying "
            "Redis (FLUSHALL, eviction: set maxmemory-policy noeviction) or another worker "
            "writing these partitions? The batch stays uncommitted and is retried"
        )

    def _owned(self, records: Sequence[SourceRecord]) -> tuple[Sequence[SourceRecord], list[int]]:
        """The records of partitions this worker owns, after taking the epochs it lacks; and
        the partitions whose take was refused (a later owner holds them)."""
        own = self.ownership
        assert own is not None
        parts = {rec.partition for rec in records}
        refused = own.take(parts)
        if refused:
            self.forget_partitions(refused)
        if all(own.owns(p) for p in parts):
            return records, refused
        return [rec for rec in records if own.owns(rec.partition)], refused

    def _nothing(self, received: int, fenced: list[int]) -> BatchOutcome:
        return BatchOutcome(
            commits={}, processed_at_ms=self.clock(), records=0, refused=Counter(), applied=0,
            late=0, fenced=0, entities_written=0, dropped=received,
            fenced_partitions=tuple(fenced),
        )  # fmt: skip

    def _rebuild_lost(self) -> int:
        """Rebuild every partition found lost; returns the (view, partition) states rebuilt."""
        assert self.recovery is not None and self._marks is not None
        count = 0
        for p in sorted(self._lost):
            lost = self._lost[p]
            names = {item.view for item in lost}
            slots = [v for v, view in enumerate(self.views) if view.name in names]
            fence = self.ownership.fence([p]) if self.ownership is not None else []
            result = self.recovery.rebuild([self.views[v] for v in slots], p, lost, fence=fence)
            self._core.forget_views(slots, p)
            for v in slots:
                self._marks.rebuilt((v, p), result.last_offset)
            del self._lost[p]
            count += len(slots)
        if count:  # a rebuild wrote merged hashes too: reload them, don't bet on the CAS
            self._forget_merged()
        return count

    def _process(
        self, records: Sequence[SourceRecord], pre: BatchInput | None = None
    ) -> BatchOutcome:
        if pre is None:  # the transforms run below, as part of the batch's attempt
            pre = self.decode(records, transforms=False)
        kept = pre.kept
        core = self._core
        try:
            missing = core.prepare(
                kept.partitions.tobytes(),
                kept.offsets.tobytes(),
                kept.event_time.tobytes(),
                kept.columns,
                pre.fed if pre.fed is not None else self._fed(kept),
            )
            if missing:
                self._load(missing, kept)
            return self._apply(pre.batch_p, kept, pre.letters, pre.refused, pre.commits,
                               len(records))  # fmt: skip
        except BaseException:
            core.discard_prepared()  # half-applied effects: reload from the store next time
            raise

    def _load(self, missing: list[tuple[str, int, int, str]], kept: _Kept) -> None:
        """Cache the ``(redis key, view, partition, entity)`` entries ``prepare`` listed:
        from the local tier where it holds them and Redis's marks say they are current,
        from Redis otherwise (one round trip; a second for local entries found stale).
        A merge-on-write entry (partition ``_MERGED``) is never spilled: its hash and its
        marks hash are read from Redis in the same round trip, followed by the watermarks
        of the merged views (``_check_merged``)."""
        core = self._core
        merged = [m for m in missing if m[2] == _MERGED]
        if merged:
            missing = [m for m in missing if m[2] != _MERGED]
        extra = list(dict.fromkeys(k for m in merged for k in (m[0], marks_key(m[0]))))
        slots = self._merged_slots(kept) if merged else []
        if self.local is None:
            keys = list(dict.fromkeys(m[0] for m in missing))
            got, wms = self._load_watermarked(keys + extra, slots)
            self._check_merged(slots, wms)
            self._load_hashes(missing, got[: len(keys)])
            self._load_merged(merged, got[len(keys) :], extra)
            return
        values = self.local.get([b"%d:%s" % (p, key.encode()) for key, _, p, _ in missing])
        held = [i for i, value in enumerate(values) if value is not None]
        cold = [m for m, value in zip(missing, values, strict=True) if value is None]
        keys = list(dict.fromkeys(m[0] for m in cold))
        hashes, marks = self._load_and_marks(
            keys + extra, [(missing[i][0], missing[i][2]) for i in held]
        )
        if slots:  # read after the merged hashes, as above (one more round trip)
            self._check_merged(slots, self._load_watermarked([], slots)[1])
        self._load_hashes(cold, hashes[: len(keys)])
        self._load_merged(merged, hashes[len(keys) :], extra)
        refused = core.load_spilled([
            (missing[i][1], missing[i][2], missing[i][3], values[i], fence, journal)
            for i, (fence, journal) in zip(held, marks, strict=True)
        ])  # fmt: skip
        counts = self.local_counts
        counts["hits"] += len(held) - len(refused)
        counts["stale"] += len(refused)
        counts["loaded"] += len(cold) + len(refused)
        if refused:  # changed in Redis since it was spilled: Redis's state is the one used
            stale = [missing[held[r]] for r in refused]
            self._load_hashes(stale, self.online.load(list(dict.fromkeys(m[0] for m in stale))))

    def _merged_slots(self, kept: _Kept) -> list[tuple[tuple[int, int], str]]:
        """((view slot, partition), watermark key) of each merged view and batch partition;
        none without a recovery (no watermarks)."""
        if self._marks is None:
            return []
        parts = np.unique(kept.partitions).tolist()
        return [((v, p), watermark_key(view, p))
                for v, view in enumerate(self.views) if view.merged for p in parts]  # fmt: skip

    def _load_watermarked(
        self, keys: list[str], slots: list[tuple[tuple[int, int], str]]
    ) -> tuple[list[dict[bytes, bytes]], list[bytes | None] | None]:
        """``keys``' hashes, then the watermarks of ``slots`` read after them (None: the
        store cannot, so no check)."""
        read = getattr(self.online, "load_watermarked", None) if slots else None
        if read is None:
            return self.online.load(keys) if keys else [], None
        got: tuple[list[dict[bytes, bytes]], list[bytes | None]]
        got = read(keys, [key for _, key in slots])
        return got

    def _check_merged(
        self, slots: list[tuple[tuple[int, int], str]], held: list[bytes | None] | None
    ) -> None:
        """Refuse to fold a batch into merge-on-write state Redis lost before it was read.

        A merged write is a compare-and-set on the hash's version, so it lands only on the
        state it was folded from; but that state may already have lost writes of this
        worker's partitions (a flush, a failover), and folding the batch on top would move
        their fences past records the hash then lacks — the in-place rebuild could not add
        them back. The watermarks, read after the hashes, tell: one not as this worker left
        it (``Watermarks.check_held``) raises ``_StateLost`` before anything is written, so
        the partition is rebuilt from the log and the batch retried."""
        if held is None or self._marks is None:
            return
        lost = self._marks.check_held([slot for slot, _ in slots], held, self.log)
        if lost:
            raise _StateLost(lost)

    def _load_merged(
        self,
        merged: list[tuple[str, int, int, str]],
        hashes: list[dict[bytes, bytes]],
        keys: list[str],
    ) -> None:
        """Cache merge-on-write entries from their hashes and marks hashes (``keys``)."""
        if not merged:
            return
        by_key = dict(zip(keys, hashes, strict=True))
        self._core.load_merged([(v, entity, by_key[key], by_key[marks_key(key)])
                                for key, v, _, entity in merged])  # fmt: skip

    def _load_and_marks(
        self, keys: list[str], marked: list[tuple[str, int]]
    ) -> tuple[list[dict[bytes, bytes]], list[tuple[bytes | None, bytes | None]]]:
        """``keys``' hashes and each ``(key, partition)``'s ``f:<p>``/``j:<p>`` (Redis: one
        round trip, ``load_and_marks``; other stores: read from their whole hashes)."""
        both = getattr(self.online, "load_and_marks", None)
        if both is not None:
            got: tuple[list[dict[bytes, bytes]], list[tuple[bytes | None, bytes | None]]]
            got = both(keys, marked)
            return got
        hashes = self.online.load([*keys, *(key for key, _ in marked)])
        marks = [
            (h.get(b"f:%d" % p), h.get(b"j:%d" % p))
            for h, (_, p) in zip(hashes[len(keys) :], marked, strict=True)
        ]
        return hashes[: len(keys)], marks

    def _load_hashes(
        self, entries: list[tuple[str, int, int, str]], hashes: list[dict[bytes, bytes]]
    ) -> None:
        """Cache ``entries`` from their keys' hashes (``hashes``: one per distinct key, in
        the order of first appearance)."""
        if not entries:
            return
        by_key = dict(zip(dict.fromkeys(m[0] for m in entries), hashes, strict=True))
        self._core.load([(v, p, entity, by_key[key]) for key, v, p, entity in entries])

    def _spill(self) -> None:
        """After a durable batch: the entries over the cache's capacity go to the local tier."""
        assert self.local is not None
        keys, values = self._core.spill()
        if keys:
            self.local.put(keys, values)
            self.local_counts["spilled"] += len(keys)

    def _fed(self, kept: _Kept) -> dict[int, tuple[list[Any], list[list[Any]]]]:
        """Key and input columns of the row groups with user code (transforms, filters)."""
        spec = self._spec
        fed = [g for g, group in enumerate(spec.groups) if not group.native]
        if not fed:
            return {}
        # batch transforms read the decoded columns (one DataFrame per batch, built column
        # by column); row transforms and filters need a dict per row
        with self._user_code:  # decode() of the next batch may run on another thread
            payloads, frame = user_code_input([spec.groups[g] for g in fed], kept.columns)
            return {
                g: group_columns(spec.groups[g], spec.group_inputs[g], payloads, frame) for g in fed
            }

    def _apply(
        self,
        batch_p: int,
        kept: _Kept,
        letters: list[DeadLetter],
        refused: Counter[str],
        commits: dict[int, int],
        count: int,
    ) -> BatchOutcome:
        raw, applied, late, fenced, newest, recovered = self._core.apply(batch_p)
        entities_written = len(raw)
        by_view: dict[int, dict[int, int]] = {}
        for (v, partition), event_ms in newest.items():
            by_view.setdefault(v, {})[partition] = event_ms
        writes = EntityWrites(
            raw, [stats_write(self.views[v], marks, batch_p) for v, marks in by_view.items()]
        )
        if self._marks is not None and len(kept):
            highest = {
                int(p): int(kept.offsets[kept.partitions == p].max())
                for p in np.unique(kept.partitions)
            }
            pending = self._marks.prepare(highest, self.log)
            try:
                old = self._write(writes, [mark for _, mark, _ in pending], kept)
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
            self._write(writes, [], kept)
        if len(kept):
            if self.ownership is not None:
                self.ownership.mark(kept.partitions, kept.offsets)
            processed_at = np.full(len(kept), batch_p, dtype=np.int64)
            for row, first in recovered.items():  # an earlier attempt's processed_at
                processed_at[row] = first
            self._append(kept, processed_at)
        if letters:
            self.dead.send(letters)
        if self.local is not None:
            self._spill()
        return BatchOutcome(
            commits=commits, processed_at_ms=batch_p, records=count, refused=refused,
            applied=applied, late=late, fenced=fenced, entities_written=entities_written,
            newest_event_ms=_newest_per_partition(newest),
        )  # fmt: skip

    def _write(
        self, writes: EntityWrites, marks: list[Watermark], kept: _Kept
    ) -> list[bytes | None]:
        """The batch's online write, fenced by the owner epochs of its partitions."""
        if self.ownership is None:
            return self.online.write(writes, marks) if marks else self.online.write(writes)
        fence = self.ownership.fence(np.unique(kept.partitions).tolist())
        return self.online.write(writes, marks, fence=fence)  # type: ignore[call-arg]  # RedisOnlineStore

    def _append(self, kept: _Kept, processed_at: npt.NDArray[np.int64]) -> None:
        """Log the batch's valid records: natively from the decoded columns when the log
        can (``EventLogWriter.append_batch_columns``), as envelopes otherwise."""
        columnar = getattr(self.log, "append_batch_columns", None)
        if columnar is not None:
            columnar(kept.partitions, kept.offsets, kept.keys, kept.event_time, processed_at,
                     kept.columns)  # fmt: skip
            return
        self.log.append(
            [
                Envelope(
                    partition=int(p),
                    offset=int(o),
                    key=k,
                    event_time_ms=int(t),
                    processed_at_ms=int(pt),
                    payload=payload,
                )
                for p, o, k, t, pt, payload in zip(
                    kept.partitions,
                    kept.offsets,
                    kept.keys,
                    kept.event_time,
                    processed_at,
                    kept.payloads(),
                    strict=True,
                )
            ]
        )


@dataclass(slots=True)
class BatchInput:
    """A decoded batch (``BatchProcessor.decode``), ready for ``process(records, decoded=…)``."""

    records: Sequence[SourceRecord]
    batch_p: int  # the batch's processed_at: the worker clock when it was decoded
    letters: list[DeadLetter]
    refused: Counter[str]
    commits: dict[int, int]  # per partition: the next offset to read
    kept: _Kept
    fed: dict[int, tuple[list[Any], list[list[Any]]]] | None = None  # None: not computed


@dataclass(slots=True)
class _Kept:
    """A batch's valid records, as columns: record ``i`` is payload row ``i``."""

    partitions: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    keys: list[bytes | None]
    event_time: npt.NDArray[np.int64]
    columns: Any  # engine._native.Columns
    _payloads: list[dict[str, Any]] | None = None

    @classmethod
    def of(
        cls,
        partitions: npt.NDArray[np.int64],
        offsets: npt.NDArray[np.int64],
        keys: Sequence[bytes | None],
        kept: Sequence[int],
        columns: Any,
        ts_field: str,
        divisor: int,
    ) -> _Kept:
        raw_ts = np.asarray(columns.column(ts_field) if kept else [], dtype=np.int64)
        at = np.asarray(kept, dtype=np.int64)
        if len(at) == len(partitions) and (at == np.arange(len(at))).all():  # all, in order
            return cls(partitions=partitions, offsets=offsets, keys=list(keys),
                       event_time=raw_ts // divisor, columns=columns)  # fmt: skip
        return cls(
            partitions=partitions[at],
            offsets=offsets[at],
            keys=[keys[i] for i in kept],
            event_time=raw_ts // divisor,
            columns=columns,
        )

    def __len__(self) -> int:
        return len(self.keys)

    def payloads(self) -> list[dict[str, Any]]:
        """The records as dicts (the slow path: user code, logs without columns)."""
        if self._payloads is None:
            self._payloads = self.columns.to_pylist()
        return self._payloads


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
