"""The merge-on-write layout of a re-keyed view (``engine.plan.with_merged_tiles``,
docs/decisions.md): online reads equal the processing-time backfill bit for bit (real
Redis), with one worker per pair of source partitions writing the same entity hashes,
forced write races, a redelivered batch and a worker killed between its Redis write and
its log append; and a read finds one tile set per entity, whatever the partition count.
"""

from __future__ import annotations

import os
import random
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from connectors.eventlog import EventLogReader, EventLogWriter
from engine.errors import OnlineWriteConflict
from engine.keys import encode_key, partition_for
from engine.online import field_name, marks_key, state_key
from engine.plan import with_merged_tiles
from engine.ports import OnlineStateStore, StateWrite, Watermark
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from engine.stream.recovery import StateRecovery
from tests.integration.test_online_read import (
    DAY,
    DEFINITIONS,
    HOUR,
    MINUTE,
    REFS,
    ROWS,
    STORES,
    Clock,
    ListDeadLetters,
    ListLog,
    Scenario,
    _assert_same,
    _backfill,
    _events,
    _write_log,
)

pytestmark = pytest.mark.redis

PARTITIONS = 4
_OPTION = "SKEWLESS_ONLINE_MERGE_REKEYED_VIEWS"


class ConflictCountingStore:
    """The real store, counting the writes it refuses (``OnlineWriteConflict``)."""

    def __init__(self, inner: OnlineStateStore) -> None:
        self.inner = inner
        self.conflicts = 0

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        try:
            return self.inner.write(writes, marks)
        except OnlineWriteConflict:
            self.conflicts += 1
            raise


class RacingStore(ConflictCountingStore):
    """The real store; ``race`` runs once right after the next ``load`` (another worker's
    batch landing between this worker's load and its write). Counts refused writes."""

    def __init__(self, inner: OnlineStateStore) -> None:
        super().__init__(inner)
        self.race: Any = None

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        got = self.inner.load(keys)
        race, self.race = self.race, None
        if race is not None:
            race()
        return got


class CrashingLog(ListLog):
    """A log whose next append fails once ``crash`` is set: a worker killed after its
    Redis write, before its log append."""

    def __init__(self) -> None:
        super().__init__()
        self.crash = False

    def append(self, records: Sequence[Any]) -> list[str]:
        if self.crash:
            self.crash = False
            raise RuntimeError("killed before the log append")
        return super().append(records)


def _records(store: FeatureStore, base_ms: int) -> list[SourceRecord]:
    rng = random.Random(20261207)
    codec = SourceCodec(store.plan.sources["tx"])
    offsets = [0] * PARTITIONS
    out = []
    for payload in _events(base_ms, rng):
        key = encode_key([payload["customer_id"]])
        p = partition_for(key, PARTITIONS)
        out.append(SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key,
                                value=codec.encode(payload)))  # fmt: skip
        offsets[p] += 1
    return out


@pytest.fixture
def merged(tmp_path: Path, redis_url: str) -> tuple[Scenario, RacingStore]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(textwrap.dedent(DEFINITIONS))
    (repo / "skewless.yaml").write_text(
        f"redis:\n  url: {redis_url}\nkafka:\n  partitions: {PARTITIONS}\n"
    )
    loaded = FeatureStore.from_repo(repo, environ={**os.environ, _OPTION: "false"})
    store = FeatureStore.from_repo(repo)  # the default layout
    assert store.plan == with_merged_tiles(loaded.plan)
    assert store.plan.views["store_sales"].merged  # keyed by store, the topic by customer
    assert not store.plan.views["customer_spend"].merged
    assert (
        store.plan.views["store_sales"].fingerprint != loaded.plan.views["store_sales"].fingerprint
    )
    base_ms = (time.time_ns() // 1_000_000 // HOUR - 3) * HOUR
    records = _records(store, base_ms)
    rng = random.Random(7)
    clock = Clock(base_ms)
    log, dead = CrashingLog(), ListDeadLetters()
    racing = RacingStore(store.online_store)
    owners = [(0, 1), (2, 3)]  # two workers, two partitions each

    def worker() -> BatchProcessor:
        return BatchProcessor(store.plan, "tx", online=racing, log=log, dead=dead, clock=clock)

    workers = [worker(), worker()]
    streams = [[r for r in records if r.partition in own] for own in owners]
    cursors = [0, 0]
    snapshots: list[tuple[int, dict[str, list[Any]]]] = []
    codec = SourceCodec(store.plan.sources["tx"])

    def next_batch(w: int) -> list[SourceRecord]:
        batch = streams[w][cursors[w] : cursors[w] + rng.randrange(5, 30)]
        cursors[w] += len(batch)
        if batch:
            newest = max(codec.decode(r.key, r.value, now_ms=base_ms + DAY)["ts"] for r in batch)
            clock.now_ms = max(clock.now_ms + 1, newest + rng.randrange(0, 60_000))
        return batch

    batch_no = 0
    while cursors[0] < len(streams[0]) or cursors[1] < len(streams[1]):
        w = rng.randrange(2)
        batch = next_batch(w)
        if not batch:
            continue
        batch_no += 1
        if batch_no % 5 == 0:  # the other worker's batch lands between this load and write
            other = 1 - w

            def race(other: int = other) -> None:
                got = next_batch(other)
                if got:
                    workers[other].process(got)

            racing.race = race
        if batch_no == 7:  # killed after the Redis write; a new worker replays the batch
            log.crash = True
            with pytest.raises(RuntimeError, match="killed"):
                workers[w].process(batch)
            clock.now_ms += 5_000
            workers[w] = worker()
        if batch_no == 11:  # a redelivery: fences keep it from counting twice
            workers[w].process(batch)
            workers[w].forget_all()
        workers[w].process(batch)
        if batch_no % 6 == 0:
            t = clock.now_ms + 1
            snapshots.append((t, store.get_online_features(REFS, ROWS, now_ms=t).to_dict()))
    scenario = Scenario(repo=repo, store=store, base_ms=base_ms, snapshots=snapshots,
                        last_processed_ms=clock.now_ms, log=log, dead=dead)  # fmt: skip
    return scenario, racing


def test_merged_view_equals_processing_time_backfill(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis
) -> None:
    scenario, racing = merged
    assert racing.conflicts > 0  # the races really made writes conflict
    _write_log(scenario)
    end = scenario.last_processed_ms + 1
    for t in (end, end + 7 * MINUTE, end + 61 * MINUTE, scenario.base_ms + DAY + 2 * HOUR + 1):
        online = scenario.store.get_online_features(REFS, ROWS, now_ms=t).to_dict()
        _assert_same(online, _backfill(scenario, t), t)
    for t, online in scenario.snapshots:
        _assert_same(online, _backfill(scenario, t), t)
    assert len(scenario.snapshots) >= 3
    # every store gathered events of several partitions, yet holds one tile set
    view = scenario.store.plan.views["store_sales"]
    spanning = 0
    for store_id in STORES:
        key = state_key(view, (store_id,))
        fields = redis_client.hgetall(key)
        slots = {field_name(n)[1] for n in fields if field_name(n) is not None}
        assert slots == {0}, key
        fences = {field_name(n)[1] for n in redis_client.hgetall(marks_key(key))
                  if field_name(n) is not None and field_name(n)[0] == "f"}  # fmt: skip
        spanning += len(fences) > 1
        assert redis_client.pttl(marks_key(key)) == redis_client.pttl(key)  # -1: lifetime
    assert spanning >= 3


def test_rebuild_online_of_a_merged_view(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis
) -> None:
    scenario, _ = merged
    _write_log(scenario)
    store = scenario.store
    view = store.plan.views["store_sales"]
    now = time.time_ns() // 1_000_000
    times = [now + MINUTE, scenario.base_ms + DAY + 2 * HOUR + 1]
    before = {t: store.get_online_features(REFS, ROWS, now_ms=t).to_dict() for t in times}
    redis_client.flushdb()  # everything lost: the log is all there is
    outcome = store.rebuild_online("store_sales")
    assert outcome.result.entities_written > 0
    assert outcome.result.records == len(scenario.log.records)
    for t in times:
        after = store.get_online_features(SALES_REFS, ROWS, now_ms=t).to_dict()
        assert after == {k: v for k, v in before[t].items() if k in after}, t
        _assert_same(after, _backfill_of(scenario, SALES_REFS, t), t)
    for store_id in STORES:  # one tile set, the fences of every partition in the marks
        key = state_key(view, (store_id,))
        slots = {field_name(n)[1] for n in redis_client.hgetall(key) if field_name(n)}
        assert slots == {0}
        assert redis_client.exists(marks_key(key))
    # the watermarks say the log's last offsets: a restarted worker finds nothing lost
    for p in {e.partition for e in scenario.log.records}:
        last = max(e.offset for e in scenario.log.records if e.partition == p)
        assert int(redis_client.get(f"sk:wm:{view.fingerprint}:{p}")) == last


def _redis_state(client: redis.Redis) -> dict[bytes, Any]:
    """Every key: its type, content and absolute expiry (ms; -1: none)."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter("*"):
        kind = client.type(key)
        value = client.hgetall(key) if kind == b"hash" else client.get(key)
        out[key] = (kind, value, client.execute_command("PEXPIRETIME", key))
    return out


@pytest.mark.parametrize("log_kind", ["files", "list"])
def test_rebuild_of_a_merged_view_in_the_one_pass_equals_the_merged_fold(
    log_kind: str,
    merged: tuple[Scenario, RacingStore],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``rebuild_views`` of a merged view (its native replay: every partition in turn folded
    into one tile set per entity) beside a per-partition view leaves Redis byte-identical —
    every key, field, value and absolute expiry, the marks hashes' fences and journals, the
    write versions — to the workers' merged path replaying the log a chunk at a time,
    partition after partition (``_fold_merged``, what ``rebuild-online`` ran before), with
    entities spanning several partitions and many chunks per entity and partition (journals
    cut at 8 entries)."""
    from engine import rebuild
    from tests.integration.test_online_read import LogSource

    scenario, _ = merged
    store = scenario.store
    plan = store.plan
    online = store.online_store
    if log_kind == "files":  # one file per partition per append: many chunks each
        writer = EventLogWriter(store.config.event_log_root, "tx", dict(plan.sources["tx"].schema))
        for at in range(0, len(scenario.log.records), 40):
            writer.append(scenario.log.records[at : at + 40])
        log: Any = EventLogReader(store.config.event_log_root)
    else:
        monkeypatch.setattr(rebuild, "_REPLAY_BATCH", 13)  # chunks of 13 records
        log = LogSource(scenario.log)
    partitions = list(log.partitions("tx"))
    assert len(partitions) > 1
    sales, spend = plan.views["store_sales"], plan.views["customer_spend"]
    assert sales.merged and not spend.merged
    now = time.time_ns() // 1_000_000

    redis_client.flushdb()
    chunks = 0
    for p in partitions:  # the merged path, as rebuild-online ran it before
        done = rebuild._fold_merged(plan, sales, p, log, online, now_ms=now)
        rebuild._finish_merged(sales, p, done, online, now)
        chunks += done.written
    rebuild.rebuild_views(plan, ["customer_spend"], log, online, now_ms=now)
    before = _redis_state(redis_client)
    assert chunks > 3 * len(STORES)  # several writes (chunks) per entity

    redis_client.flushdb()
    (got_sales, got_spend) = rebuild.rebuild_views(
        plan, ["store_sales", "customer_spend"], log, online, now_ms=now
    )
    after = _redis_state(redis_client)
    assert got_sales.entities_written == len(STORES)
    assert got_sales.records == got_spend.records == len(scenario.log.records)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    spanning = 0
    longest = 0
    for store_id in STORES:  # the entities span partitions, with cut journals
        marks = redis_client.hgetall(marks_key(state_key(sales, (store_id,))))
        fences = [n for n in marks if n.startswith(b"f:")]
        spanning += len(fences) > 1
        journals = [msgpack.unpackb(v) for n, v in marks.items() if n.startswith(b"j:")]
        longest = max(longest, *map(len, journals))
    assert spanning >= 3
    assert longest == 8  # JOURNAL_ENTRIES: longer journals were cut


def test_lost_state_of_a_merged_view_heals_in_place(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Lost state of a merged view is rebuilt in place by the worker that finds it: its
    partition's log folded again into the one tile set, the fences skipping what Redis
    kept (here nothing: the batch's own write is refused before it lands)."""
    scenario, _ = merged
    _write_log(scenario)
    store = scenario.store
    clock = Clock(scenario.last_processed_ms + 1_000)
    worker = _worker(store, clock)
    codec = SourceCodec(store.plan.sources["tx"])
    payload = {"customer_id": "c1", "merchant_id": "m1", "store_id": 2, "amount": 5.5,
               "qty": 3, "ts": clock.now_ms - 1_000}  # fmt: skip
    p = partition_for(encode_key(["c1"]), PARTITIONS)
    top = {p: max(e.offset for e in scenario.log.records if e.partition == p)}
    batch = [SourceRecord(topic="tx", partition=p, offset=top[p] + 1, key=encode_key(["c1"]),
                          value=codec.encode(payload))]  # fmt: skip
    redis_client.flushdb()
    outcome = worker.process(batch)
    # both views of partition p rebuilt: store_sales found lost before the batch's write,
    # customer_spend by it (its rebuild replaced what had landed: applied again), and
    # store_sales' write, which had landed, fenced on the retry
    assert (outcome.applied, outcome.fenced, outcome.rebuilt) == (1, 1, 2)
    t = clock.now_ms + 1
    refs = ["store_sales:amount_count_lifetime", "customer_spend:amount_last_lifetime"]
    rows = [{"store_id": 2, "customer_id": "c1"}]
    got = store.get_online_features(refs, rows, now_ms=t).to_dict()
    assert got["amount_last_lifetime"] == [5.5]
    # the other partitions' shares are back once their owners write (or rebuild-online)
    for q in range(PARTITIONS):
        if q != p:
            assert (
                redis_client.get(f"sk:wm:{store.plan.views['store_sales'].fingerprint}:{q}") is None
            )
    want = _backfill_of(scenario, refs[:1], t, rows=rows)
    assert want["amount_count_lifetime"][0] > 1  # the log's events and the new one
    fences = redis_client.hgetall(marks_key(state_key(store.plan.views["store_sales"], (2,))))
    assert set(fences) <= {b"f:%d" % p, b"j:%d" % p}


def _worker(
    store: FeatureStore,
    clock: Clock,
    *,
    online: OnlineStateStore | None = None,
    keep_merged: bool | None = None,
) -> BatchProcessor:
    """A worker as the runtimes wire it: the event log on disk, lost state rebuilt in place.
    ``online``: what it writes through (default the store's own online store, which the
    rebuild uses in any case); ``keep_merged``: ``BatchProcessor``'s switch."""
    root = store.config.event_log_root
    recovery = StateRecovery(store.plan, EventLogReader(root), store.online_store,
                             log_root=root, clock=clock)  # fmt: skip
    log = EventLogWriter(root, "tx", dict(store.plan.sources["tx"].schema))
    return BatchProcessor(store.plan, "tx", online=store.online_store if online is None else online,
                          log=log, dead=ListDeadLetters(), clock=clock, recovery=recovery,
                          keep_merged=keep_merged)  # fmt: skip


class RedisSnapshot:
    """Every key of a Redis database as ``take`` found it (value and expiry); ``revert``
    empties the database and restores them: a failover to a replica that lacks the rounds
    of writes since (an older, consistent state)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.saved: list[tuple[Any, int, Any]] = []

    def take(self) -> None:
        for key in self.client.scan_iter(count=1000):
            self.saved.append((key, self.client.pexpiretime(key), self.client.dump(key)))

    def revert(self) -> None:
        self.client.flushdb()
        for key, at, value in self.saved:
            self.client.restore(key, max(at, 0), value, absttl=at > 0)


class HealingRun:
    """Two workers with recovery (partitions 1-2 and 0, 3) writing the same merged hashes,
    batch by batch, the log on disk; ``disasters`` run before the batch of that number."""

    def __init__(self, repo: Path, *, merged: bool = True) -> None:
        self.repo = repo
        self.store = FeatureStore.from_repo(
            repo, environ={**os.environ, _OPTION: str(merged).lower()}
        )
        assert self.store.plan.views["store_sales"].merged == merged
        self.base_ms = (time.time_ns() // 1_000_000 // HOUR - 3) * HOUR
        self.clock = Clock(self.base_ms)
        self.rng = random.Random(11)
        records = _records(self.store, self.base_ms)
        # four customers each (none hashes to partition 0): both have records to the end
        owners = ((1, 2), (0, 3))
        self.streams = [[r for r in records if r.partition in own] for own in owners]
        self.cursors = [0, 0]
        self.codec = SourceCodec(self.store.plan.sources["tx"])
        self.workers = [_worker(self.store, self.clock), _worker(self.store, self.clock)]

    def batch(self, w: int) -> list[SourceRecord]:
        batch = self.streams[w][self.cursors[w] : self.cursors[w] + self.rng.randrange(5, 30)]
        self.cursors[w] += len(batch)
        if batch:
            newest = max(self.codec.decode(r.key, r.value, now_ms=self.base_ms + DAY)["ts"]
                         for r in batch)  # fmt: skip
            self.clock.now_ms = max(self.clock.now_ms + 1, newest + self.rng.randrange(0, 60_000))
        return batch

    def run(self, disasters: dict[int, Any], *, together: Sequence[int] = ()) -> int:
        """Process every record; after ``disasters[n]`` the ``n``-th round (or each round in
        ``together``) gives both workers a batch at once, in two threads. Returns the
        (view, partition) states rebuilt."""
        rebuilt = 0
        n = 0
        while self.cursors[0] < len(self.streams[0]) or self.cursors[1] < len(self.streams[1]):
            n += 1
            if n in disasters:
                disasters[n]()
            if n in together:
                rebuilt += self._together()
                continue
            w = n % 2  # alternating: both workers write after every disaster
            batch = self.batch(w)
            if batch:
                rebuilt += self.workers[w].process(batch).rebuilt
        return rebuilt

    def _together(self) -> int:
        """Both workers' next batches at once, in two threads; the states they rebuilt."""
        batches = [self.batch(0), self.batch(1)]
        rebuilt = [0, 0]
        errors: list[BaseException] = []

        def go(w: int) -> None:
            try:
                if batches[w]:
                    rebuilt[w] = self.workers[w].process(batches[w]).rebuilt
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(w,)) for w in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        return sum(rebuilt)

    def assert_equals_reference(self, redis_client: redis.Redis) -> None:
        """Every entity's online read equals the processing-time replay of the log on disk."""
        scenario = Scenario(repo=self.repo, store=self.store, base_ms=self.base_ms,
                            snapshots=[], last_processed_ms=self.clock.now_ms, log=ListLog(),
                            dead=ListDeadLetters())  # fmt: skip
        end = self.clock.now_ms + 1
        for t in (end, end + 7 * MINUTE, end + 61 * MINUTE, self.base_ms + DAY + 2 * HOUR + 1):
            online = self.store.get_online_features(REFS, ROWS, now_ms=t).to_dict()
            _assert_same(online, _backfill(scenario, t), t)
        view = self.store.plan.views["store_sales"]
        for store_id in STORES if view.merged else ():  # one tile set, expiring with its marks
            key = state_key(view, (store_id,))
            slots = {field_name(n)[1] for n in redis_client.hgetall(key) if field_name(n)}
            assert slots == {0}, key
            assert redis_client.pexpiretime(marks_key(key)) == redis_client.pexpiretime(key)


@pytest.fixture
def repo(tmp_path: Path, redis_url: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(textwrap.dedent(DEFINITIONS))
    (repo / "skewless.yaml").write_text(
        f"redis:\n  url: {redis_url}\nkafka:\n  partitions: {PARTITIONS}\n"
    )
    return repo


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "per_partition"])
def test_flushed_redis_heals_in_place_two_workers_at_once(
    merged: bool, repo: Path, redis_client: redis.Redis
) -> None:
    """Redis emptied mid-stream: each worker finds its partitions' state lost on its next
    batch — both at the same time, in two threads — and folds its own partitions' logs back
    into the shared tile sets; the per-partition fences make the two rebuilds and the other
    worker's batches compose, exactly once. The same on the per-partition layout
    (``online.merge_rekeyed_views: false``), whose rebuild replaces the partition's fields."""
    run = HealingRun(repo, merged=merged)
    rebuilt = run.run({9: redis_client.flushdb}, together=(9, 10))
    assert rebuilt == 6  # 2 views x partitions 1-3 (no customer of the 8 hashes to 0)
    run.assert_equals_reference(redis_client)


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "per_partition"])
def test_lost_rounds_heal_in_place(merged: bool, repo: Path, redis_client: redis.Redis) -> None:
    """A failover to a replica that lacks the last rounds of writes: Redis reverts to an
    older, consistent state (every entity hash with its marks hash), the log holds more."""
    run = HealingRun(repo, merged=merged)
    redis_at = RedisSnapshot(redis_client)
    rebuilt = run.run({8: redis_at.take, 15: redis_at.revert}, together=(15, 16))
    assert rebuilt >= 2
    run.assert_equals_reference(redis_client)


def test_upgrade_fills_the_merged_layout_from_the_log(
    repo: Path, redis_client: redis.Redis
) -> None:
    """A deployment upgrading from the per-partition layout (``online.merge_rekeyed_views:
    false``): the merged layout is another keyspace (another fingerprint), so the new
    workers find the view new to a non-empty log and fill it from the log themselves —
    the old keyspace is never read as the new one."""
    run = HealingRun(repo)
    old = FeatureStore.from_repo(repo, environ={**os.environ, _OPTION: "false"})
    assert not old.plan.views["store_sales"].merged
    old_fp = old.plan.views["store_sales"].fingerprint
    assert old_fp != run.store.plan.views["store_sales"].fingerprint
    assert old.plan.views["customer_spend"] == run.store.plan.views["customer_spend"]
    run.workers = [_worker(old, run.clock), _worker(old, run.clock)]

    def upgrade() -> None:
        assert list(redis_client.scan_iter(f"sk:{old_fp}:*"))
        run.workers = [_worker(run.store, run.clock), _worker(run.store, run.clock)]

    rebuilt = run.run({12: upgrade})
    assert rebuilt == 3  # store_sales of partitions 1-3, by their owners; customer_spend not
    run.assert_equals_reference(redis_client)


def test_a_merged_write_is_refused_once_its_hash_is_gone(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The compare-and-set of a merged entity hash (the write a linked marks write follows)
    is strict: read at a version, an absent version refuses it — the hash and its marks hash
    expired or were lost since they were read, maybe one of the two only. A per-partition
    write still passes on an absent fence (the watermarks tell lost from new)."""
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "defs.py").write_text(textwrap.dedent(DEFINITIONS))
    (repo / "skewless.yaml").write_text(f"redis:\n  url: {redis_url}\n")
    store = FeatureStore.from_repo(repo).online_store
    key, marks = "sk:mgtest:{e}", "sk:fm:mgtest:{e}"
    lead = StateWrite(key=key, fields={"f:0": b"2", "t:0:1:1": b"x"}, expect=("f:0", b"1"))
    linked = StateWrite(key=marks, fields={"f:3": b"9"}, expect=("&", None))
    with pytest.raises(OnlineWriteConflict) as caught:
        store.write([lead, linked])
    assert set(caught.value.keys) == {key, marks}
    assert not redis_client.exists(key) and not redis_client.exists(marks)
    store.write([replace(lead, expect=("f:0", None)), linked])  # read as absent: lands
    assert redis_client.hget(marks, "f:3") == b"9"
    redis_client.delete(key, marks)
    store.write([lead])  # not linked: the per-partition rule
    assert redis_client.hget(key, "f:0") == b"2"
    redis_client.delete(key)


SALES_REFS = [r for r in REFS if r.startswith("store_sales:")]


def _backfill_of(
    scenario: Scenario, refs: list[str], t_ms: int, rows: list[dict[str, Any]] | None = None
) -> dict[str, list[Any]]:
    import pandas as pd

    rows = rows or [{"store_id": r["store_id"]} for r in ROWS]
    frame = pd.DataFrame({"store_id": [r["store_id"] for r in rows],
                          "event_timestamp": [t_ms] * len(rows)})  # fmt: skip
    out = scenario.store.get_historical_features(frame, refs, mode="processing_time", workers=1)
    return {c: out[c].tolist() for c in out.columns if c != "event_timestamp"}


def test_verify_reads_the_fences_of_a_merged_view(
    merged: tuple[Scenario, RacingStore], redis_client: redis.Redis
) -> None:
    scenario, _ = merged
    _write_log(scenario)
    store = scenario.store
    at = scenario.last_processed_ms + 1
    report = store.verify(views=["store_sales"], seed=1, at_ms=at)
    assert report.ok and not report.mismatches, report.mismatches
    # an entity lost (its hash and its marks hash gone): explained, per source partition
    view = store.plan.views["store_sales"]
    key = state_key(view, (STORES[0],))
    redis_client.delete(key, marks_key(key))
    report = store.verify(views=["store_sales"], seed=1, at_ms=at, retries=0)
    kinds = {m.kind for m in report.mismatches}
    assert kinds == {"missing_online"}, report.mismatches
