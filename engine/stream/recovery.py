"""Lost online state: detect it at no extra round trip, rebuild it in place from the event log.

Detection (``Watermarks``). Each batch's online write pipeline also swaps, per view and source
partition with valid records in the batch, the watermark ``sk:wm:<fingerprint>:<p>``
(``engine.watermarks``) with ``SET … GET``: the new value is the highest offset the batch
holds for ``p`` or the log already holds, whichever is higher. The old value Redis hands
back says whether Redis still holds what this worker wrote:

- the worker wrote the watermark before (it has owned ``p`` since): the old value must be
  the one it wrote last (or one it tried to write in an attempt whose reply was lost);
- first write since ``p`` was assigned: the old value must be an offset at or above the
  highest offset the event log holds for ``p`` (Redis is written before the log is), or
  missing while the log holds nothing for ``p``.

Anything else means Redis lost writes of ``p`` — emptied (``FLUSHALL``), restarted without its
last writes, failed over to a lagging replica, keys evicted — or that a view is new to a
log that already holds records (its keyspace was never filled).

Merge-on-write views are also checked *before* a batch writes: their watermarks are read
right after their hashes (``BatchProcessor._check_merged``, ``Watermarks.check_held``), so
no batch folds into merged state Redis lost before it was read.

Recovery (``StateRecovery``), by the worker that owns the partition, before it writes more:
say so at ERROR, rebuild the partition's fields of the lost views from the log
(``engine.rebuild.rebuild_partition``; a merged view's partition log folded in again), set
the watermarks, drop the cached state, and retry
the batch in hand — fences and the journal make that idempotent, the log drops offsets it
already holds. While it runs the batch is not committed, so consumption of the worker's
partitions is paused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from engine.plan import Plan, ViewPlan
from engine.ports import EventLogSink, EventLogSource, OnlineStateStore, StateWrite, Watermark
from engine.rebuild import PartitionRebuild, rebuild_partition
from engine.watermarks import decode_watermark, encode_watermark, watermark_key

log = logging.getLogger("skewless.worker")

Slot = tuple[int, int]  # (view slot in the processor, source partition)


@dataclass(frozen=True, slots=True, kw_only=True)
class LostState:
    """One view's state of one source partition that Redis no longer holds, and why we know."""

    view: str
    partition: int
    reason: str


@dataclass(slots=True)
class _Expect:
    confirmed: bytes  # what this worker last wrote and saw acknowledged
    attempted: set[bytes] = field(default_factory=set)  # written since, reply lost


class Watermarks:
    """What one source's processor expects each (view, partition) watermark to hold.

    Example:
        >>> marks = Watermarks(views)  # doctest: +SKIP
        >>> pending = marks.prepare({0: 41, 2: 17}, log)  # doctest: +SKIP
        >>> old = store.write(entity_writes, [m for _, m, _ in pending])  # doctest: +SKIP
        >>> lost = marks.confirm(pending, old)  # doctest: +SKIP
    """

    def __init__(self, views: Sequence[ViewPlan]) -> None:
        self._views = list(views)
        self._expect: dict[Slot, _Expect] = {}

    def prepare(
        self, highest: Mapping[int, int], log: EventLogSink
    ) -> list[tuple[Slot, Watermark, int | None]]:
        """The marks of a batch whose valid records reach ``highest[p]`` in partition ``p``,
        each with its slot and the log's highest offset of ``p`` before the batch."""
        out: list[tuple[Slot, Watermark, int | None]] = []
        for p, top in sorted(highest.items()):
            logged = log.last_offset(p)
            value = encode_watermark(top if logged is None else max(top, logged))
            for v, view in enumerate(self._views):
                out.append(((v, p), Watermark(key=watermark_key(view, p), value=value), logged))
        return out

    def failed(self, pending: Iterable[tuple[Slot, Watermark, int | None]]) -> None:
        """The write carrying ``pending`` failed: Redis may or may not have applied it."""
        for slot, mark, _ in pending:
            expect = self._expect.get(slot)
            if expect is not None:
                expect.attempted.add(mark.value)

    def confirm(
        self, pending: Sequence[tuple[Slot, Watermark, int | None]], old: Sequence[bytes | None]
    ) -> list[LostState]:
        """Check the previous values Redis handed back; remember the new ones as written."""
        lost: list[LostState] = []
        for (slot, mark, logged), previous in zip(pending, old, strict=True):
            reason = self._check(slot, mark.value, logged, previous)
            self._expect[slot] = _Expect(confirmed=mark.value)
            if reason is not None:
                v, p = slot
                lost.append(LostState(view=self._views[v].name, partition=p, reason=reason))
        return lost

    def check_held(
        self, slots: Sequence[Slot], held: Sequence[bytes | None], log: EventLogSink
    ) -> list[LostState]:
        """Judge watermarks read before a write (merge-on-write batches) as ``confirm`` judges
        the ones a write swaps, without remembering anything."""
        lost: list[LostState] = []
        for slot, previous in zip(slots, held, strict=True):
            reason = self._check(slot, None, log.last_offset(slot[1]), previous)
            if reason is not None:
                lost.append(LostState(view=self._views[slot[0]].name, partition=slot[1],
                                      reason=f"before the batch's write: {reason}"))  # fmt: skip
        return lost

    def _check(
        self, slot: Slot, value: bytes | None, logged: int | None, previous: bytes | None
    ) -> str | None:
        key = watermark_key(self._views[slot[0]], slot[1])
        expect = self._expect.get(slot)
        if expect is not None:
            if (
                previous == expect.confirmed
                or (value is not None and previous == value)
                or previous in expect.attempted
            ):
                return None
            was = "missing" if previous is None else repr(previous.decode(errors="replace"))
            return (
                f"watermark {key} is {was}, but this worker set it to "
                f"{expect.confirmed.decode()} in its last write"
            )
        if previous is None:
            if logged is None:
                return None  # nothing was ever logged for this partition: nothing to lose
            return (
                f"watermark {key} is missing, but the event log holds partition {slot[1]} up "
                f"to offset {logged}"
            )
        offset = decode_watermark(previous)
        if offset is None:
            return f"watermark {key} holds {previous!r}, not an offset"
        if logged is not None and offset < logged:
            return (
                f"watermark {key} says offsets up to {offset}, but the event log holds "
                f"partition {slot[1]} up to offset {logged}"
            )
        return None

    def rebuilt(self, slot: Slot, last_offset: int | None) -> None:
        """A rebuild set the watermark to the log's last offset (None: left it unset)."""
        if last_offset is None:
            self._expect.pop(slot, None)
        else:
            self._expect[slot] = _Expect(confirmed=encode_watermark(last_offset))

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker may not own any more: their next write starts afresh."""
        gone = set(partitions)
        for slot in [s for s in self._expect if s[1] in gone]:
            del self._expect[slot]

    def forget_all(self) -> None:
        self._expect.clear()


class StateRecovery:
    """Rebuilds lost partitions of one source's views from the event log, in place.

    Example:
        >>> recovery = StateRecovery(plan, EventLogReader(root), store, log_root=root)  # doctest: +SKIP
        >>> BatchProcessor(plan, "transactions", ..., recovery=recovery)  # doctest: +SKIP
    """

    def __init__(
        self,
        plan: Plan,
        log: EventLogSource,
        store: OnlineStateStore,
        *,
        log_root: str,
        clock: Callable[[], int],
    ) -> None:
        self.plan = plan
        self.log = log
        self.store = store
        self.log_root = log_root
        self.clock = clock
        self.rebuilds = 0  # (view, partition) states rebuilt since the worker started

    def rebuild(
        self,
        views: Sequence[ViewPlan],
        partition: int,
        lost: Sequence[LostState],
        *,
        fence: Sequence[tuple[str, int]] = (),
    ) -> PartitionRebuild:
        """Replace partition ``partition``'s fields of ``views`` with the log's; log loudly.

        ``fence``: the owner epochs every write of the rebuild must hold (a zombie's rebuild
        is refused like its batches: ``OwnerFenced``)."""
        names = ", ".join(repr(v.name) for v in views)
        source = views[0].source
        for item in lost:
            log.error(
                "ONLINE STATE LOST: view %r, source %r partition %d: %s. Redis was emptied "
                "(FLUSHALL), restarted without its last writes, failed over, evicted keys, or "
                "the view is new to a non-empty log.", item.view, source, partition, item.reason,
            )  # fmt: skip
        log.error(
            "rebuilding partition %d of view(s) %s from the event log at %s; consumption is "
            "paused and nothing is committed until it is done", partition, names, self.log_root,
        )  # fmt: skip
        started = time.monotonic()
        store = _Fenced(self.store, fence) if fence else self.store
        result = rebuild_partition(
            self.plan, views, partition, self.log, store, now_ms=self.clock()
        )
        self.rebuilds += len(views)
        log.warning(
            "rebuilt partition %d of view(s) %s from the event log: %d records up to offset %s, "
            "%s entity hashes written in %.1fs (%d rebuilds since start); resuming",
            partition, names, result.records, result.last_offset,
            sum(result.entities_written.values()), time.monotonic() - started, self.rebuilds,
        )  # fmt: skip
        return result


class _Fenced:
    """An ``OnlineStateStore`` whose every write carries ``fence`` (``RedisOnlineStore``)."""

    def __init__(self, store: OnlineStateStore, fence: Sequence[tuple[str, int]]) -> None:
        self._store = store
        self._fence = fence

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        return self._store.load(keys)

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        return self._store.write(writes, marks, fence=self._fence)  # type: ignore[call-arg]  # RedisOnlineStore
