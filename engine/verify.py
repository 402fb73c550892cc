"""Online/offline consistency check: sampled entities read online at ``T`` against the
processing-time replay of the event log at ``T``, every disagreement explained.

One check (``run``) goes:

1. **Sample** up to ``sample`` entities per view from the event log: a seeded bottom-k
   sample over the distinct entities the log applies to the view (the ``k`` smallest keyed
   hashes), so a seed reproduces the sample and views of one entity pick the same entities.
2. **Read online** at ``T``: every sampled hash in ONE ``OnlineStateStore.load`` (each hash
   is read atomically), then the values through the online read path itself
   (``online_read.read_online``) over that snapshot. The fences (``f:<p>``) and write times
   (``u:<p>``) come from the same snapshot as the values.
3. **Replay**: list the log just after the read, keep the records of the sampled entities,
   and run ``backfill.run(..., mode="processing_time")`` over exactly those records at ``T``
   — the kernel and admission rule of ``get_historical_features``, but over one pinned view
   of the log (the same records the fence analysis saw) and with raw Python values (no
   pandas NaN for None).
4. **Compare** bit for bit (``same_value``). An entity whose values differ is explained from
   its fences: per source partition, the online fence against the newest logged offset
   applied before ``T``. A batch in flight (online ahead of the log, a write landing during
   the read) is *re-checked* in a later round; a disagreement that no timing explains (lost
   or corrupt state, a stale keyspace, tiles that differ although the online state holds
   exactly the logged records) is a mismatch at once. What is still in flight after the
   last round is reported as *unverifiable*, never as a match.

No Redis, no files and no pandas here: the online store and the log come in through
``engine.ports`` Protocols (``FeatureStore.verify`` wires the real ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from engine import backfill
from engine.envelope import Envelope
from engine.errors import (
    CodecError,
    EventLogMissing,
    InputDataError,
    NothingToVerify,
    SkewlessError,
)
from engine.keys import encode_key
from engine.online import NO_FENCE, PartitionState, marks_key, parse_state, state_key
from engine.online_read import read_online
from engine.plan import Plan, ViewPlan
from engine.ports import EventLogSource, OnlineStateStore, StateWrite, Watermark
from engine.processing import EntityKey, extract_many, is_admitted, row_groups
from engine.verify_report import (
    Mismatch,
    MismatchKind,
    Unverifiable,
    UnverifiableKind,
    VerifyReport,
    ViewSummary,
    short_repr,
)

if TYPE_CHECKING:
    from engine.store import FeatureStore

__all__ = [
    "Mismatch",
    "MismatchKind",
    "Unverifiable",
    "UnverifiableKind",
    "VerifyReport",
    "ViewSummary",
    "run",
    "same_value",
    "verify",
]

DEFAULT_RETRIES = 3
_BACKOFF_S = (0.2, 0.5, 1.0)  # waits before re-check rounds; the last one repeats


def verify(
    store: FeatureStore,
    *,
    sample: int = 200,
    views: Sequence[str] | None = None,
    seed: int | None = None,
    at_ms: int | None = None,
    retries: int = DEFAULT_RETRIES,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check that sampled entities read online equal the processing-time replay of the log.

    ``sample`` entities per view (all views by default), chosen by ``seed`` (random when
    None; the report holds the seed used). ``at_ms`` fixes ``T`` (default: the wall clock
    of each round). In-flight entities are re-checked up to ``retries`` times. Raises
    EventLogMissing when there is no log yet, NothingToVerify when the log applies nothing
    to the views, InputDataError for an unknown view or a sample below 1,
    OnlineStoreUnavailable when Redis cannot be reached.

    Example:
        >>> report = verify(store, sample=100, seed=7)  # doctest: +SKIP
        >>> report.rate, report.ok  # doctest: +SKIP
        (1.0, True)
        >>> print(report.to_text())  # doctest: +SKIP
    """
    return store.verify(
        sample=sample, views=views, seed=seed, at_ms=at_ms, retries=retries, progress=progress
    )


# -- the check ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pair:
    view: str
    entity: EntityKey


@dataclass(slots=True)
class _Logged:
    """Admitted records of one (view, entity) in one partition, from the pinned log view."""

    before: int = NO_FENCE  # newest offset with processed_at < T
    offsets: dict[int, int] = dataclasses.field(default_factory=dict)  # offset → processed_at


@dataclass(slots=True)
class _Scan:
    kept: dict[tuple[str, int], list[Envelope]]  # the sampled entities' records
    ends: dict[tuple[str, int], int]  # (source, partition) → newest offset listed
    logged: dict[tuple[_Pair, int], _Logged]
    partitions: dict[_Pair, set[int]]  # where the log applied records to each pair
    records: int = 0


@dataclass(frozen=True, slots=True)
class _Finding:
    final: bool  # a disagreement no timing explains (else: re-check)
    kind: str
    text: str


def run(
    plan: Plan,
    online: OnlineStateStore,
    log: EventLogSource,
    *,
    sample: int = 200,
    views: Sequence[str] | None = None,
    seed: int | None = None,
    at_ms: int | None = None,
    retries: int = DEFAULT_RETRIES,
    applied: Mapping[str, str] | None = None,
    retired: Mapping[str, Sequence[str]] | None = None,
    clock: Callable[[], int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """The check behind ``verify``, over Protocols (see the module docstring).

    ``applied`` (view → fingerprint of the last apply) and ``retired`` (view → fingerprints
    replaced since) come from the registry; they name older keyspaces to look for when an
    entity is missing online. ``clock`` (epoch ms) and ``sleep`` are injectable for tests.
    """
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise InputDataError(f"sample must be an integer of at least 1, got {sample!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputDataError(f"retries must be an integer of at least 0, got {retries!r}")
    now = clock or _wall_clock_ms
    chosen, notes = _choose_views(plan, log, views)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    sampled, scanned = _sample(plan, log, chosen, sample, seed, progress)
    if not any(sampled.values()):
        names = ", ".join(v.name for v in chosen)
        sources = ", ".join(sorted({v.source for v in chosen}))
        raise NothingToVerify(
            f"nothing to verify: the event log of source(s) {sources} holds no record that "
            f"view(s) {names} apply ({scanned} records read); push events and run "
            "`skewless worker` first"
        )
    notes += _registry_notes(chosen, applied, retired)
    old_fps = {v.name: _old_fingerprints(v, applied or {}, retired or {}) for v in chosen}

    pending = [_Pair(v.name, e) for v in chosen for e in sampled[v.name]]
    verdicts: dict[_Pair, tuple[list[Mismatch], int]] = {}  # pair → (mismatches, values)
    unsure: dict[_Pair, tuple[Unverifiable, bool]] = {}  # pair → (finding, worth a re-check)
    first_t: int | None = None
    rounds = 0
    waited = 0.0
    while pending:
        if rounds:
            pause = _BACKOFF_S[min(rounds, len(_BACKOFF_S)) - 1]
            sleep(pause)
            waited += pause
        rounds += 1
        t_ms = now() if at_ms is None else at_ms
        first_t = t_ms if first_t is None else first_t
        settled, transient, records = _round(
            plan, online, log, pending, t_ms, old_fps, at_ms is not None, progress
        )
        scanned += records
        verdicts.update(settled)
        for pair in settled:
            unsure.pop(pair, None)
        unsure.update(transient)
        if rounds > retries:
            break
        pending = [pair for pair, (_, again) in transient.items() if again]
    assert first_t is not None  # the sample is not empty, so one round ran
    stuck = [
        dataclasses.replace(
            u, reason=f"{u.reason} (still so after {rounds} round(s) over {waited:.1f}s) — re-run"
        )
        if again
        else u
        for u, again in unsure.values()
    ]
    return _report(chosen, sampled, verdicts, stuck, first_t, sample, seed, rounds, scanned,
                   notes)  # fmt: skip


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _choose_views(
    plan: Plan, log: EventLogSource, names: Sequence[str] | None
) -> tuple[list[ViewPlan], list[str]]:
    """The views to check; without explicit names, views whose source has no log are noted."""
    notes: list[str] = []
    if names is None or isinstance(names, str):
        wanted = sorted(plan.views) if names is None else [names]
        explicit = names is not None
    else:
        wanted = list(dict.fromkeys(names))
        explicit = True
    unknown = [n for n in wanted if n not in plan.views]
    if unknown:
        raise InputDataError(
            f"unknown view(s) {', '.join(map(repr, unknown))}; views: {', '.join(sorted(plan.views))}"
        )
    if not wanted:
        raise InputDataError("no views to verify: name at least one view (or none for all)")
    chosen: list[ViewPlan] = []
    missing: dict[str, SkewlessError] = {}
    for name in wanted:
        view = plan.views[name]
        if view.source not in missing:
            try:
                has_log = bool(log.partitions(view.source))
            except EventLogMissing as exc:  # re-raised below when the view was asked for
                missing[view.source] = exc
                has_log = False
            if not has_log and view.source not in missing:
                missing[view.source] = NothingToVerify(
                    f"the event log of source {view.source!r} holds no partition yet"
                )
        if view.source in missing:
            if explicit:
                raise missing[view.source]
            notes.append(f"view {name} skipped: its source {view.source!r} has no event log yet")
            continue
        chosen.append(view)
    if not chosen:
        raise next(iter(missing.values()))
    return chosen, notes


class _BottomK:
    """The ``k`` distinct entities with the smallest keyed hash seen so far (a uniform,
    seeded sample of distinct entities in one pass and O(k) memory: once an entity is out,
    the threshold only falls, so it never comes back)."""

    __slots__ = ("heap", "k", "key", "members")

    def __init__(self, k: int, key: bytes) -> None:
        self.k = k
        self.key = key
        self.heap: list[tuple[int, bytes, EntityKey]] = []  # (-hash, key bytes, entity)
        self.members: set[bytes] = set()

    def offer(self, entity: EntityKey) -> None:
        raw = encode_key(entity)
        if raw in self.members:
            return
        h = int.from_bytes(hashlib.blake2b(raw, digest_size=8, key=self.key).digest(), "big")
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, (-h, raw, entity))
            self.members.add(raw)
        elif h < -self.heap[0][0]:
            _, out, _ = heapq.heapreplace(self.heap, (-h, raw, entity))
            self.members.discard(out)
            self.members.add(raw)

    def entities(self) -> list[EntityKey]:
        return [e for _, _, e in sorted(self.heap, key=lambda x: (-x[0], x[1]))]


def _seed_key(seed: int) -> bytes:
    return hashlib.blake2b(str(seed).encode("ascii"), digest_size=32).digest()


def _sample(
    plan: Plan,
    log: EventLogSource,
    views: list[ViewPlan],
    k: int,
    seed: int,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, list[EntityKey]], int]:
    """Per view, up to ``k`` entities the log applies records to; and the records read."""
    key = _seed_key(seed)
    samplers = {v.name: _BottomK(k, key) for v in views}
    records = 0
    for source, members in _by_source(views).items():
        src = plan.sources[source]
        groups = row_groups(members)
        for partition in log.partitions(source):
            for chunk in _chunks(log.read(source, partition)):
                for extracted in extract_many(groups, src, chunk):
                    records += 1
                    for slot, item in extracted:
                        samplers[members[slot].name].offer(item.entity)
                    if progress and records % 10_000 == 0:
                        progress(10_000)
    if progress:
        progress(records % 10_000)
    return {name: s.entities() for name, s in samplers.items()}, records


def _chunks(envelopes: Iterable[Envelope], size: int = 5_000) -> Iterator[list[Envelope]]:
    """Envelopes in lists of ``size``: batch transforms run once per list, not per record."""
    chunk: list[Envelope] = []
    for envelope in envelopes:
        chunk.append(envelope)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _by_source(views: Sequence[ViewPlan]) -> dict[str, list[ViewPlan]]:
    out: dict[str, list[ViewPlan]] = {}
    for view in views:
        out.setdefault(view.source, []).append(view)
    return out


class _Snapshot:
    """The hashes of one read, served to ``read_online`` as its store (read-only)."""

    def __init__(self, hashes: Mapping[str, dict[bytes, bytes]]) -> None:
        self._hashes = hashes

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        return [self._hashes.get(k, {}) for k in keys]

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        raise TypeError("a verify snapshot is read-only")


class _Kept:
    """The pinned records of the sampled entities, as an ``EventLogSource`` for the backfill."""

    def __init__(self, kept: Mapping[tuple[str, int], list[Envelope]]) -> None:
        self._kept = kept

    def partitions(self, source: str) -> list[int]:
        return sorted(p for s, p in self._kept if s == source)

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        return iter(self._kept.get((source, partition), ()))


def _round(
    plan: Plan,
    online: OnlineStateStore,
    log: EventLogSource,
    pairs: list[_Pair],
    t_ms: int,
    old_fps: Mapping[str, list[str]],
    fixed_t: bool,
    progress: Callable[[int], None] | None,
) -> tuple[dict[_Pair, tuple[list[Mismatch], int]], dict[_Pair, tuple[Unverifiable, bool]], int]:
    """One read, replay and comparison of ``pairs`` at ``t_ms``."""
    keys = [state_key(plan.views[p.view], p.entity) for p in pairs]
    # a merge-on-write view's fences are in the entity's marks hash: read in the same trip
    marked = [marks_key(k) for k, p in zip(keys, pairs, strict=True) if plan.views[p.view].merged]
    hashes = dict(zip(keys + marked, online.load(keys + marked), strict=True))  # the read
    scan = _scan(plan, log, pairs, t_ms, progress)  # the log, listed right after the read
    got = _online_values(plan, pairs, hashes, t_ms)
    want = _replay(plan, pairs, scan, t_ms)
    differing = [
        (i, pair)
        for i, pair in enumerate(pairs)
        if isinstance(got[i], CodecError) or not _all_same(got[i], want[i])
    ]
    # the post-read: fences after every listed record is known to be in Redis, and older
    # keyspaces of the entity (a definition changed without a rebuild)
    later_keys: list[str] = []
    for i, pair in differing:
        later_keys.append(keys[i])
        view = plan.views[pair.view]
        if view.merged:
            later_keys.append(marks_key(keys[i]))
        later_keys += [_key_under(view, fp, pair.entity) for fp in old_fps.get(pair.view, [])]
    later = dict(zip(later_keys, online.load(later_keys), strict=True)) if later_keys else {}

    settled: dict[_Pair, tuple[list[Mismatch], int]] = {}
    transient: dict[_Pair, tuple[Unverifiable, bool]] = {}
    differ_at = dict(differing)
    for i, pair in enumerate(pairs):
        view = plan.views[pair.view]
        n = len(view.aggregations)
        if i not in differ_at:
            settled[pair] = ([], n)
            continue
        entity = dict(zip(view.join_keys, pair.entity, strict=True))
        online_row = got[i]
        if isinstance(online_row, CodecError):
            reason = (
                f"online hash {keys[i]} cannot be decoded ({online_row}); "
                f"run `skewless rebuild-online {view.name}`"
            )
            settled[pair] = (
                [
                    Mismatch(view=view.name, feature=agg.feature, entity=entity, online=None,
                             expected=want[i][j], reason=reason, kind="corrupt_state",
                             at_ms=t_ms)
                    for j, agg in enumerate(view.aggregations)
                ],
                n,
            )  # fmt: skip
            continue
        stale = [
            fp for fp in old_fps.get(pair.view, []) if later.get(_key_under(view, fp, pair.entity))
        ]
        now, after = hashes[keys[i]], later.get(keys[i], {})
        if view.merged:  # the per-partition marks of the one tile set
            now = _merged_marks(now, hashes.get(marks_key(keys[i]), {}))
            after = _merged_marks(after, later.get(marks_key(keys[i]), {}))
        findings = _explain(view, pair, t_ms, now, after, scan, stale)
        final = [f for f in findings if f.final]
        transient_findings = [f for f in findings if not f.final]
        if final or not transient_findings:
            if final:
                kind = _first_kind(final)
                text = "; ".join(dict.fromkeys(f.text for f in final))
            else:
                kind = "value_differs"
                text = _complete_text(view, pair, scan)
            mismatches = []
            for j, agg in enumerate(view.aggregations):
                a, b = online_row[j], want[i][j]
                if same_value(a, b):
                    continue
                reason = (
                    f"value differs: online {short_repr(a)} vs log {short_repr(b)} ({text})"
                    if kind == "value_differs"
                    else text
                )
                mismatches.append(
                    Mismatch(view=view.name, feature=agg.feature, entity=entity, online=a,
                             expected=b, reason=reason, kind=cast(MismatchKind, kind), at_ms=t_ms)
                )  # fmt: skip
            settled[pair] = (mismatches, n)
            continue
        kinds = [f.kind for f in transient_findings]
        text = "; ".join(dict.fromkeys(f.text for f in transient_findings))
        hopeless = fixed_t and "written_after_t" in kinds  # a fixed T stays before that write
        if hopeless:
            text += (
                "; the online store holds only the present, so a T before the entity's newest "
                "write cannot be verified: verify without --at-ms or at a later time"
            )
        item = Unverifiable(view=view.name, entity=entity, features=n, reason=text,
                            kind=cast(UnverifiableKind, kinds[0]), at_ms=t_ms)  # fmt: skip
        transient[pair] = (item, not hopeless)
    return settled, transient, scan.records


def _scan(
    plan: Plan,
    log: EventLogSource,
    pairs: list[_Pair],
    t_ms: int,
    progress: Callable[[int], None] | None,
) -> _Scan:
    """One pass over the log: the sampled entities' records; per (pair, partition) the
    admitted offsets and the newest one before ``t_ms``; per partition the newest offset."""
    wanted: dict[str, set[EntityKey]] = {}
    for pair in pairs:
        wanted.setdefault(pair.view, set()).add(pair.entity)
    views = [plan.views[name] for name in wanted]
    scan = _Scan(kept={}, ends={}, logged={}, partitions={})
    for source, members in _by_source(views).items():
        src = plan.sources[source]
        groups = row_groups(members)
        entities = [wanted[v.name] for v in members]
        # list every partition first, so the pinned view of the log is taken right after the read
        listed = [(p, log.read(source, p)) for p in log.partitions(source)]
        for partition, envelopes in listed:
            kept: list[Envelope] = []
            end = NO_FENCE
            for envelope, extracted in (
                pair
                for chunk in _chunks(envelopes)
                for pair in zip(
                    chunk, extract_many(groups, src, chunk, include_late=True), strict=True
                )
            ):
                scan.records += 1
                end = max(end, envelope.offset)
                keep = False
                for slot, item in extracted:
                    if item.entity not in entities[slot]:
                        continue
                    keep = True
                    view = members[slot]
                    if not is_admitted(view, item.event_time_ms, item.processed_at_ms):
                        continue
                    pair = _Pair(view.name, item.entity)
                    found = scan.logged.get((pair, partition))
                    if found is None:
                        found = scan.logged[(pair, partition)] = _Logged()
                        scan.partitions.setdefault(pair, set()).add(partition)
                    found.offsets[envelope.offset] = envelope.processed_at_ms
                    if envelope.processed_at_ms < t_ms:
                        found.before = max(found.before, envelope.offset)
                if keep:
                    kept.append(envelope)
                if progress and scan.records % 10_000 == 0:
                    progress(10_000)
            scan.ends[(source, partition)] = end
            if kept:
                scan.kept[(source, partition)] = kept
    if progress:
        progress(scan.records % 10_000)
    return scan


def _online_values(
    plan: Plan,
    pairs: list[_Pair],
    hashes: Mapping[str, dict[bytes, bytes]],
    t_ms: int,
) -> list[list[Any] | CodecError]:
    """Each pair's values as the online read path computes them from the snapshot."""
    snapshot = _Snapshot(hashes)
    out: list[list[Any] | CodecError] = [[] for _ in pairs]
    by_view: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_view.setdefault(pair.view, []).append(i)
    for name, rows in by_view.items():
        keys = plan.views[name].join_keys
        refs = [f"{name}:{f}" for f in plan.views[name].features]
        entities = [dict(zip(keys, pairs[i].entity, strict=True)) for i in rows]
        try:
            result = read_online(plan, snapshot, refs, entities, now_ms=t_ms)
            for r, i in enumerate(rows):
                out[i] = [column[r] for column in result.values]
        except CodecError:  # isolate the undecodable hashes
            for r, i in enumerate(rows):
                try:
                    one = read_online(plan, snapshot, refs, entities[r : r + 1], now_ms=t_ms)
                    out[i] = [column[0] for column in one.values]
                except CodecError as exc:
                    out[i] = exc
    return out


def _replay(plan: Plan, pairs: list[_Pair], scan: _Scan, t_ms: int) -> list[list[Any]]:
    """Each pair's processing-time values at ``t_ms`` from the pinned records (backfill kernel)."""
    by_view: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_view.setdefault(pair.view, []).append(i)
    requests = [
        backfill.ViewRequest(
            view=name,
            entities=[pairs[i].entity for i in rows],
            times_ms=[t_ms] * len(rows),
            indices=tuple(range(len(plan.views[name].aggregations))),
        )
        for name, rows in by_view.items()
    ]
    values = backfill.run(plan, _Kept(scan.kept), requests, mode="processing_time", workers=1)
    out: list[list[Any]] = [[] for _ in pairs]
    for rows, got in zip(by_view.values(), values, strict=True):
        for i, row in zip(rows, got, strict=True):
            out[i] = list(row)
    return out


def _explain(
    view: ViewPlan,
    pair: _Pair,
    t_ms: int,
    fields: Mapping[bytes, bytes],
    later: Mapping[bytes, bytes],
    scan: _Scan,
    stale: list[str],
) -> list[_Finding]:
    """Why an entity's values differ, per source partition (empty: the state is complete).

    With ``f`` the online fence, ``u`` the online write time and ``B`` the newest offset the
    pinned log applied to the entity before ``T``: ``u >= T`` is a write during the read;
    an ``f`` the log does not apply to the entity is online ahead of the log when the log
    has not reached ``f`` yet, else unlogged state; ``f < B`` is in flight when the fence
    read *after* the log listing (``later``) reached ``B`` — every listed record was in
    Redis by then — else lost state; ``f > B`` (a record the log says was processed at or
    after ``T``, while ``u < T``) disagrees on ``processed_at``.
    """
    states = _states(view, fields)
    after = _states(view, later)
    partitions = sorted(set(states) | scan.partitions.get(pair, set()))
    findings: list[_Finding] = []
    missing = not fields
    for p in partitions:
        state = states.get(p)
        fence = NO_FENCE if state is None else state.fence
        written = 0 if state is None else state.updated_ms
        logged = scan.logged.get((pair, p)) or _Logged()
        end = scan.ends.get((view.source, p), NO_FENCE)
        if state is not None and written >= t_ms:
            findings.append(_Finding(False, "written_after_t",
                f"online holds a write processed at {written} >= T={t_ms} on partition {p} "
                "(a batch written after T was chosen)"))  # fmt: skip
        elif fence != NO_FENCE and fence not in logged.offsets:
            if fence > end:
                findings.append(_Finding(False, "ahead_of_log",
                    f"online is ahead of the log (batch in flight: online fence offset {fence} "
                    f"> newest logged offset {_offset(end)} for partition {p})"))  # fmt: skip
            else:
                findings.append(_Finding(True, "online_has_unlogged",
                    f"online holds offset {fence} of partition {p}, which the log (read up to "
                    f"offset {end}) does not apply to this entity: Redis and the log disagree "
                    "(another deployment writing this Redis database, or state restored from "
                    f"elsewhere?); run `skewless rebuild-online {view.name}`"))  # fmt: skip
        elif fence < logged.before:
            later_state = after.get(p)
            later_fence = NO_FENCE if later_state is None else later_state.fence
            if later_fence >= logged.before:
                findings.append(_Finding(False, "write_in_flight",
                    f"a batch processed before T wrote this entity only after the read "
                    f"(online fence offset {_offset(fence)} < newest logged offset "
                    f"{logged.before} before T for partition {p}; Redis has it now)"))  # fmt: skip
            elif stale:
                findings.append(_Finding(True, "stale_fingerprint",
                    f"view fingerprint changed: online keyspace from an older definition (the "
                    f"entity is held under fingerprint {', '.join(stale)}, not the current "
                    f"{view.fingerprint}); run `skewless apply`, restart the workers, then "
                    f"`skewless rebuild-online {view.name}`"))  # fmt: skip
            elif missing:
                findings.append(_Finding(True, "missing_online",
                    f"entity missing online: no hash {state_key(view, pair.entity)} although "
                    f"the log applied offsets up to {logged.before} of partition {p} before T "
                    f"(Redis emptied or the key deleted? run `skewless rebuild-online "
                    f"{view.name}`)"))  # fmt: skip
            else:
                findings.append(_Finding(True, "online_lacks_records",
                    f"online lacks logged records: online fence offset {_offset(fence)} < "
                    f"offset {logged.before} of partition {p}, logged (hence written) before the "
                    f"read; a write was lost or rolled back — run `skewless rebuild-online "
                    f"{view.name}`"))  # fmt: skip
        elif fence > logged.before:
            findings.append(_Finding(True, "processed_at_differs",
                f"online applied offset {fence} of partition {p} in a write before T, but the "
                f"log says it was processed at {logged.offsets[fence]} >= T={t_ms}"))  # fmt: skip
    return findings


def _merged_marks(
    fields: Mapping[bytes, bytes], marks: Mapping[bytes, bytes]
) -> dict[bytes, bytes]:
    """A merge-on-write entity as the per-partition analysis sees it: each partition's fence
    from the marks hash, and as its write time the entity's newest (``u:0``; a merged hash
    keeps no per-partition write time, so ``written_after_t`` may name any of them)."""
    if not fields and not marks:
        return {}
    newest = fields.get(b"u:0", b"0")
    out: dict[bytes, bytes] = {}
    for name, value in marks.items():
        if name.startswith(b"f:"):
            out[name] = value
            out[b"u:" + name[2:]] = newest
    return out


def _states(view: ViewPlan, fields: Mapping[bytes, bytes]) -> dict[int, PartitionState]:
    if not fields:
        return {}
    try:
        return parse_state(view, fields)
    except CodecError:  # tiles of the post-read changed into garbage: fences still count
        marks = {k: v for k, v in fields.items() if k[:2] in (b"f:", b"u:")}
        return parse_state(view, marks)


_KIND_ORDER = (
    "stale_fingerprint",
    "missing_online",
    "online_lacks_records",
    "online_has_unlogged",
    "processed_at_differs",
)


def _first_kind(findings: list[_Finding]) -> str:
    kinds = {f.kind for f in findings}
    return next(k for k in _KIND_ORDER if k in kinds)


def _complete_text(view: ViewPlan, pair: _Pair, scan: _Scan) -> str:
    parts = sorted(scan.partitions.get(pair, ()))
    where = ", ".join(map(str, parts)) or "none"
    return (
        f"the online state holds exactly the records logged before T (fences match on "
        f"partition(s) {where}), so a stored tile was lost or corrupted, or the two paths "
        f"disagree; run `skewless rebuild-online {view.name}`, and report a skew bug if it "
        "persists"
    )


def _key_under(view: ViewPlan, fingerprint: str, entity: EntityKey) -> str:
    return state_key(dataclasses.replace(view, fingerprint=fingerprint), entity)


def _old_fingerprints(
    view: ViewPlan, applied: Mapping[str, str], retired: Mapping[str, Sequence[str]]
) -> list[str]:
    found = [*retired.get(view.name, ()), applied.get(view.name, "")]
    return [fp for fp in dict.fromkeys(found) if fp and fp != view.fingerprint]


def _registry_notes(
    views: list[ViewPlan],
    applied: Mapping[str, str] | None,
    retired: Mapping[str, Sequence[str]] | None,
) -> list[str]:
    notes = []
    for view in views:
        old = (applied or {}).get(view.name)
        if old is not None and old != view.fingerprint:
            notes.append(
                f"view {view.name}: the definitions changed since the last apply (fingerprint "
                f"{view.fingerprint}, applied {old}); workers started before the change write "
                f"keyspace {old}: run `skewless apply` and `skewless rebuild-online {view.name}`"
            )
        gone = [fp for fp in (retired or {}).get(view.name, ()) if fp != view.fingerprint]
        if gone:
            notes.append(
                f"view {view.name}: retired keyspace(s) {', '.join(gone)} still exist — "
                f"`skewless rebuild-online {view.name}` has not run since the change"
            )
    return notes


def _report(
    views: list[ViewPlan],
    sampled: Mapping[str, list[EntityKey]],
    verdicts: Mapping[_Pair, tuple[list[Mismatch], int]],
    unsure: list[Unverifiable],
    at_ms: int,
    sample: int,
    seed: int,
    rounds: int,
    records: int,
    notes: list[str],
) -> VerifyReport:
    mismatches: list[Mismatch] = []
    summaries: list[ViewSummary] = []
    entities: set[tuple[str, EntityKey]] = set()
    for view in views:
        checked = bad = 0
        for entity in sampled[view.name]:
            verdict = verdicts.get(_Pair(view.name, entity))
            if verdict is None:
                continue
            found, n = verdict
            checked += n
            bad += len(found)
            mismatches.extend(found)
            entities.add((view.entity, entity))
        skipped = sum(u.features for u in unsure if u.view == view.name)
        summaries.append(ViewSummary(view=view.name, entities=len(sampled[view.name]),
                                     values_checked=checked, mismatched=bad, skipped=skipped))  # fmt: skip
    return VerifyReport(
        at_ms=at_ms,
        views=tuple(v.name for v in views),
        entities_checked=len(entities),
        values_checked=sum(s.values_checked for s in summaries),
        mismatches=tuple(mismatches),
        skipped=sum(s.skipped for s in summaries),
        unverifiable=tuple(unsure),
        per_view=tuple(summaries),
        sample=sample,
        seed=seed,
        rounds=rounds,
        records_scanned=records,
        notes=tuple(notes),
    )


# -- values ------------------------------------------------------------------------------------


def same_value(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two feature values.

    Floats are equal when their bits are (so ``-0.0 != 0.0`` and ``nan == nan``); None
    equals only None; lists and tuples compare element by element; an int never equals a
    float. Everything else compares with ``==`` and the same type.

    Example:
        >>> same_value(0.1 + 0.2, 0.3), same_value(float("nan"), float("nan")), same_value(1, 1.0)
        (False, True, False)
    """
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return _bits(a) == _bits(b)
    return bool(a == b)


def _bits(x: float) -> str:
    return "nan" if math.isnan(x) else x.hex()


def _all_same(a: list[Any] | CodecError, b: list[Any]) -> bool:
    if isinstance(a, CodecError):
        return False
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))


def _offset(offset: int) -> str:
    return "none" if offset == NO_FENCE else str(offset)
