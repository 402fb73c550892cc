"""The ReadCache with Redis's key tracking (server-assisted client-side caching) on a real
Redis: a held entity is served with no round trip; a write by another client, a FLUSHDB, the
invalidation connection killed, each drop what they touch before a read serves it; eviction
by ``max_entries`` still works. Waits are bounded loops on the invalidation's arrival, never
sleeps that assume a speed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from connectors.redis_invalidations import RedisInvalidations
from connectors.redis_store import RedisOnlineStore
from engine.keys import encode_key, partition_for
from engine.online_read import Held, InvalidationFeed, ReadCache, read_online
from engine.serde import SourceCodec
from engine.store import FeatureStore
from engine.stream.core import BatchProcessor, SourceRecord
from tests.integration.test_online_status import (
    MINUTE,
    NF,
    NS,
    OW,
    PARTITIONS,
    PR,
    _Discard,
    build_scenario,
    wait_until,
)
from tests.stream_harness import flushed_redis_db, raw_redis

pytestmark = pytest.mark.redis

REFS = ["customer_spend:amount_sum_1h", "customer_spend:amount_last_lifetime"]
ROWS = [{"customer_id": "c1"}, {"customer_id": "c2"}]
WAIT_S = 10.0  # the bound of every wait for a message Redis sends
TRACKING_DB = 10  # this file's Redis database, flushed per test


@pytest.fixture
def status_url(redis_service: str) -> Iterator[str]:
    with flushed_redis_db(redis_service, TRACKING_DB) as url:
        yield url


@pytest.fixture
def scenario(tmp_path: Path, status_url: str) -> tuple[FeatureStore, int]:
    """test_online_status's: c1 10.0 and 20.0 ten minutes before t, c2 7.5 two hours before."""
    return build_scenario(tmp_path, status_url)


class Counting:
    """The real store, counting the loads the reader makes (tracking passed through)."""

    def __init__(self, inner: RedisOnlineStore) -> None:
        self.inner = inner
        self.loads = 0

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        self.loads += 1
        return self.inner.load(keys)

    def load_and_probe(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes] | None], list[bool]]:
        self.loads += 1
        return self.inner.load_and_probe(keys, held, probes)

    def invalidations(self) -> InvalidationFeed | None:
        return self.inner.invalidations()


def _tracking_ids(client: Any) -> set[str]:
    """The ids of the tracking connections on this file's database. Other tests' stores in
    this process may keep theirs open (a FeatureStore not closed), so a test looks for the
    ones that appear or go, never a total."""
    return {c["id"] for c in client.client_list()
            if "t" in c.get("flags", "") and c.get("db") == str(TRACKING_DB)}  # fmt: skip


def _wait(what: Any, why: str) -> None:
    wait_until(what, why, WAIT_S)


def _read(store: FeatureStore, online: Any, cache: ReadCache | None, t: int) -> dict[str, Any]:
    result = read_online(store.plan, online, REFS, ROWS, now_ms=t, cache=cache)
    return {
        "values": result.values,
        "statuses": result.statuses,
        "freshness": dict(result.freshness_ms),
    }


def _write_c1(store: FeatureStore, amount: float, t: int) -> None:
    """One more event for c1, applied by a worker core with its own Redis client."""
    other = RedisOnlineStore(store.config.redis_url)
    try:
        codec = SourceCodec(store.plan.sources["tx"])
        key = encode_key(["c1"])
        p = partition_for(key, PARTITIONS)
        sink = _Discard()
        core = BatchProcessor(store.plan, "tx", online=other, log=sink, dead=sink,
                              clock=lambda: t - MINUTE)  # fmt: skip
        payload = {"customer_id": "c1", "amount": amount, "ts": t - 2 * MINUTE}
        outcome = core.process([SourceRecord(topic="tx", partition=p, offset=1_000, key=key,
                                             value=codec.encode(payload))])  # fmt: skip
        assert outcome.applied == 1
    finally:
        other.close()


def test_a_held_entity_is_served_without_a_round_trip(scenario: tuple[FeatureStore, int]) -> None:
    store, t = scenario
    online = store.online_store
    assert isinstance(online, RedisOnlineStore)
    counting = Counting(online)
    cache = ReadCache()
    try:
        first = _read(store, counting, cache, t)
        assert counting.loads == 1
        assert first["values"][0] == [30.0, 0.0]
        for _ in range(3):
            assert _read(store, counting, cache, t) == first
        assert counting.loads == 1  # hits: no load at all
        assert _read(store, online, None, t) == first  # what an uncached read says
        # the revalidating mode asks Redis every time, and answers the same
        revalidating = ReadCache(tracking=False)
        for _ in range(2):
            assert _read(store, counting, revalidating, t) == first
        assert counting.loads == 3
    finally:
        cache.close()


def test_a_write_by_another_client_invalidates_before_the_next_read(
    scenario: tuple[FeatureStore, int],
) -> None:
    store, t = scenario
    online = store.online_store
    counting = Counting(online)  # type: ignore[arg-type]
    cache = ReadCache()
    try:
        before = _read(store, counting, cache, t)
        assert _read(store, counting, cache, t) == before and counting.loads == 1
        seq = cache.seq
        _write_c1(store, 5.0, t)
        _wait(lambda: cache.sync(online) and cache.seq > seq, "the invalidation of c1")
        after = _read(store, counting, cache, t)
        assert counting.loads == 2  # c1 fetched again (c2 still held)
        assert after["values"][0] == [35.0, 0.0]  # the new event is in c1's 1h sum
        assert after == _read(store, online, None, t)
        assert after["freshness"]["customer_spend"][0] == t - MINUTE
        assert _read(store, counting, cache, t) == after and counting.loads == 2  # held again
    finally:
        cache.close()


def test_flushdb_flushes_the_cache(scenario: tuple[FeatureStore, int], status_url: str) -> None:
    store, t = scenario
    online = store.online_store
    cache = ReadCache()
    try:
        before = _read(store, online, cache, t)
        assert before["statuses"][0] == [PR, OW] and len(cache) == 2
        client = raw_redis(status_url)
        try:
            client.flushdb()
        finally:
            client.close()
        _wait(lambda: cache.sync(online) and len(cache) == 0, "the flush message")
        after = _read(store, online, cache, t)
        assert after["values"][0] == [0.0, 0.0] and after["statuses"][0] == [NS, NS]
    finally:
        cache.close()


def test_a_killed_invalidation_connection_flushes_and_reads_stay_right(
    scenario: tuple[FeatureStore, int], status_url: str
) -> None:
    store, t = scenario
    online = store.online_store
    counting = Counting(online)  # type: ignore[arg-type]
    cache = ReadCache()
    client = raw_redis(status_url)
    try:
        others = _tracking_ids(client)
        _read(store, counting, cache, t)
        mine = _tracking_ids(client) - others
        assert len(mine) == 1  # the cache's one invalidation connection
        assert client.client_kill_filter(_id=next(iter(mine))) == 1
        # the loss is seen as the connection's end arrives (at once here); the same or a
        # later poll connects again; both drop everything held
        _wait(lambda: cache.sync(online) is not None and len(cache) == 0, "the loss")
        # a write while the invalidation connection may be down: the read must see it
        client.delete(f"sk:{store.plan.views['customer_spend'].fingerprint}:{{c1}}")
        after = _read(store, counting, cache, t)
        assert after["statuses"][0] == [NF, OW] and after["values"][0] == [0.0, 0.0]
        assert after == _read(store, online, None, t)
        # the connection is made again (after a heartbeat); held values are served again
        _wait(lambda: cache.sync(online), "a new invalidation connection")
        assert len(_tracking_ids(client) - others - mine) == 1
        loads = counting.loads
        again = _read(store, counting, cache, t)
        assert again == after
        assert _read(store, counting, cache, t) == after
        assert counting.loads == loads + 2  # c1 is missing (never held); c2 held from 'again'
    finally:
        client.close()
        cache.close()


def test_eviction_by_max_entries_with_tracking(scenario: tuple[FeatureStore, int]) -> None:
    store, t = scenario
    online = store.online_store
    cache = ReadCache(max_entries=1)
    try:
        c1 = read_online(store.plan, online, REFS, ROWS[:1], now_ms=t, cache=cache)
        assert len(cache) == 1
        c2 = read_online(store.plan, online, REFS, ROWS[1:], now_ms=t, cache=cache)
        assert len(cache) == 1  # c1 evicted
        seq = cache.seq
        _write_c1(store, 5.0, t)  # invalidates c1, which the cache no longer holds
        _wait(lambda: cache.sync(online) and cache.seq > seq, "the invalidation of c1")
        assert len(cache) == 1  # c2 still held
        again = read_online(store.plan, online, REFS, ROWS, now_ms=t, cache=cache)
        assert again.values[0] == [c1.values[0][0] + 5.0, c2.values[0][0]]
        assert len(cache) == 1
    finally:
        cache.close()


class _Feed:
    """An InvalidationFeed that says what the test tells it to."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    def poll(self) -> tuple[bool, list[bytes], bool]:
        keys, self.keys = self.keys, []
        return False, keys, True

    def close(self) -> None:
        pass


class _Tracking:
    def __init__(self, feed: _Feed) -> None:
        self.feed = feed

    def invalidations(self) -> _Feed:
        return self.feed


def test_a_value_invalidated_while_its_read_was_in_flight_is_not_held() -> None:
    feed = _Feed()
    store = _Tracking(feed)
    cache = ReadCache()
    got: Any = ([1.0], 7, ())
    assert cache.sync(store)
    since = cache.seq  # a read starts (its load is sent) ...
    feed.keys = [b"sk:v:{a}"]
    assert cache.sync(store)  # ... another thread drains an invalidation of its key ...
    cache.put("sk:v:{a}", (0,), 3, frozenset(), (1,), got, since=since)  # ... then it puts
    cache.put("sk:v:{b}", (0,), 3, frozenset(), (1,), got, since=since)
    assert cache.held("sk:v:{a}", (0,), (1,)) is None
    assert cache.held("sk:v:{b}", (0,), (1,)) is not None
    feed.keys = [b"sk:v:{b}", b"sk:v:{zzz}"]
    cache.sync(store)
    assert len(cache) == 0


@contextmanager
def _tracking(status_url: str, heartbeat_ms: int) -> Iterator[tuple[RedisInvalidations, Any]]:
    """A feed on the store's server with this heartbeat, and a plain client to write with."""
    online = RedisOnlineStore(status_url)
    pool = online._client.connection_pool
    feed = RedisInvalidations(lambda: pool.connection_class(**pool.connection_kwargs), b"sk:",
                              heartbeat_ms=heartbeat_ms)  # fmt: skip
    client = raw_redis(status_url)
    try:
        yield feed, client
    finally:
        client.close()
        feed.close()
        online.close()


def test_a_quiet_connection_is_confirmed_and_a_silent_one_lost(status_url: str) -> None:
    with _tracking(status_url, heartbeat_ms=100) as (feed, client):
        assert feed.poll() == (True, [], True)
        time.sleep(0.3)  # an idle reader: three heartbeats without a read
        assert feed.poll() == (False, [], True)  # kept live by the feed's thread's PINGs
        client.hset("sk:idle:{a}", "f", 1)  # with no read to drain it, the thread does
        _wait(lambda: feed._pending == [b"sk:idle:{a}"], "the feed's thread to drain it")
        assert feed.poll() == (False, [b"sk:idle:{a}"], True)
        client.execute_command("CLIENT", "PAUSE", "1000", "ALL")  # Redis answers nobody
        time.sleep(0.3)
        # the PING gets no answer within a heartbeat: lost, reported as a flush (by this
        # poll, or once the feed's thread has connected again); never trusted before it
        polls: list[tuple[bool, list[bytes], bool]] = []
        _wait(lambda: polls.append(feed.poll()) or polls[-1][0], "the loss, as a flush")
        assert not any(trusted for _, _, trusted in polls[:-1])
        _wait(lambda: feed.poll()[2], "a new connection once Redis answers again")


def test_a_poll_meeting_the_feeds_thread_mid_drain_waits_for_it(status_url: str) -> None:
    # CI once saw a poll answer "not sure" because the feed's thread was draining at that
    # instant: a cached read would have gone to Redis for nothing. A poll waits for a drain
    # (non-blocking work) and is trusted; here the thread's drain is slowed to be met.
    with _tracking(status_url, heartbeat_ms=2000) as (feed, client):
        assert feed.poll() == (True, [], True)
        client.hset("sk:mid:{a}", "f", 1)
        draining, receive = threading.Event(), feed._receive

        def slow_receive(keys: list[bytes], now: int) -> None:
            draining.set()
            time.sleep(0.05)
            receive(keys, now)

        feed._receive = slow_receive  # type: ignore[method-assign]
        thread = threading.Thread(target=feed._tend)  # what the feed's thread runs
        thread.start()
        assert draining.wait(5)
        feed._receive = receive  # type: ignore[method-assign]
        flushed, keys, trusted = feed.poll()
        thread.join()
        assert (flushed, trusted) == (False, True)
        _wait(lambda: b"sk:mid:{a}" in keys + feed.poll()[1], "the invalidation")


def test_a_forked_child_makes_its_own_connection(status_url: str) -> None:
    online = RedisOnlineStore(status_url)
    feed = online.invalidations()
    assert feed is not None
    client = raw_redis(status_url)
    try:
        assert feed.poll()[0] is True
        pid = os.fork()
        if pid == 0:  # the child: its first poll drops all and connects anew
            ok = False
            try:
                flushed, _, trusted = feed.poll()
                ok = flushed and trusted
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's connection is untouched: it still hears of changes
        client.hset("sk:fork:{a}", "f", 1)
        seen: list[bytes] = []
        _wait(lambda: seen.extend(feed.poll()[1]) or seen, "the parent's invalidation")
        assert seen == [b"sk:fork:{a}"]
    finally:
        client.close()
        feed.close()
        online.close()


def test_the_cluster_store_keeps_revalidation() -> None:
    from connectors.redis_cluster_store import RedisClusterOnlineStore

    # no cluster needed: the method answers without touching one
    assert RedisClusterOnlineStore.invalidations(object.__new__(RedisClusterOnlineStore)) is None
    assert ReadCache().sync(object.__new__(RedisClusterOnlineStore)) is False


def test_the_feed_owns_one_connection_and_reports_its_loss(status_url: str) -> None:
    online = RedisOnlineStore(status_url)
    feed = online.invalidations()
    assert isinstance(feed, RedisInvalidations)
    try:
        assert feed.poll() == (True, [], True)  # a new connection: drop whatever was held
        client = raw_redis(status_url)
        try:
            client.hset("sk:x:{a}", "f", 1)
            client.hset("not-a-state-key", "f", 1)  # outside the prefix: not reported
            seen: list[bytes] = []
            _wait(lambda: seen.extend(feed.poll()[1]) or seen, "the invalidation")
            assert seen == [b"sk:x:{a}"]
        finally:
            client.close()
        feed.close()
        assert feed.poll()[0] is True
    finally:
        feed.close()
        online.close()


def test_closing_the_store_closes_its_connections_and_a_later_read_reopens(
    scenario: tuple[FeatureStore, int], status_url: str
) -> None:
    """``FeatureStore.close()`` (and ``with``) ends the read cache's invalidation connection,
    which would otherwise live (with its thread) until the store is garbage-collected; the
    store stays usable: the next read connects again and answers the same."""
    store, t = scenario
    client = raw_redis(status_url)
    others = _tracking_ids(client)

    def mine() -> set[str]:
        return _tracking_ids(client) - others

    try:
        before = store.get_online_features(REFS, ROWS, now_ms=t).to_dict()
        _wait(lambda: len(mine()) == 1, "the read cache's tracking connection")
        first = mine()
        with store as same:
            assert same is store
        _wait(lambda: not mine(), "the tracking connection closed by close()")
        assert store.get_online_features(REFS, ROWS, now_ms=t).to_dict() == before
        _wait(lambda: len(mine()) == 1 and mine() != first, "a new tracking connection")
    finally:
        store.close()
        client.close()


_BURST_LUA = """
for i = 1, tonumber(ARGV[1]) do
    redis.call('HSET', 'sk:burst:{' .. i .. '}:a-name-as-long-as-a-state-key', 'f:0', i)
end
redis.call('HSET', ARGV[2], 'f:0', ARGV[1])
"""


@pytest.mark.single_redis
def test_a_feed_behind_a_burst_catches_up_before_it_is_trusted(status_url: str) -> None:
    """A burst of names larger than the socket buffers (a worker's large batch: Redis sends
    one turn's names as one message) is still partly in Redis's output buffer when another
    client already reads the burst's writes. A poll then must not say ``trusted`` without
    the burst's names: it catches up first (a ``PING``, answered after everything queued
    before it), or says not trusted. Before, it drained what had reached the socket and
    trusted that: the e2e parity test saw a held value that a write 0.2 s earlier had
    changed (`customer_online:cnp_count_lifetime`, online 1, backfill 2)."""
    online = RedisOnlineStore(status_url)
    feed = online.invalidations()
    assert feed is not None
    client = raw_redis(status_url)
    try:
        assert feed.poll()[0]  # the first poll reports a flush
        for n in (20_000, 50_000, 100_000):
            target = f"sk:target:{{{n}}}".encode()
            client.eval(_BURST_LUA, 0, n, target)
            assert client.hget(target, "f:0") == str(n).encode()  # another client sees it
            flushed, keys, trusted = feed.poll()
            assert not flushed
            assert target in keys or not trusted, (n, len(keys), trusted)
            if target not in keys:  # not trusted: the names still arrive, later
                _wait(lambda t=target: t in feed.poll()[1], "the burst's names")
    finally:
        client.close()
        feed.close()
        online.close()


@pytest.mark.single_redis
def test_a_feed_that_cannot_catch_up_within_a_heartbeat_is_not_trusted(status_url: str) -> None:
    """Behind after a burst, and Redis answering nobody (``CLIENT PAUSE``): the catch-up's
    ``PING`` gets no answer within the heartbeat, so the poll says not trusted (the read
    revalidates) rather than wait longer; once Redis answers, a poll catches up with every
    name of the burst (or, had the silence lasted past the liveness check, reports the
    connection lost: a flush, which drops everything held)."""
    target = b"sk:target:{paused}"
    with _tracking(status_url, heartbeat_ms=300) as (feed, client):
        assert feed.poll()[0]
        client.eval(_BURST_LUA, 0, 50_000, target)
        client.execute_command("CLIENT", "PAUSE", "2500", "ALL")  # outlasts the poll's waits
        flushed, keys, trusted = feed.poll()
        assert not trusted
        seen = set(keys)
        flushes = [flushed]

        def caught_up() -> bool:
            flushed, more, trusted = feed.poll()
            flushes.append(flushed)
            seen.update(more)
            return trusted

        _wait(caught_up, "a poll that catches up once Redis answers again")
        assert any(flushes) or (target in seen and len(seen) == 50_001)


def test_expect_changes_makes_the_next_poll_see_a_flush_acknowledged_before_it(
    status_url: str,
) -> None:
    """Redis sends a ``FLUSHDB``'s invalidation (a null) during the command, and may write
    the flushing client's reply to its socket first (pending writes go out newest first), so
    a poll right after the flush can drain before the null arrives — a read that learns of
    the flush from its writer could be served what was flushed. ``expect_changes`` makes the
    next poll read up to a ``PING``'s answer first: every time, the flush is seen."""
    online = RedisOnlineStore(status_url)
    feed = online.invalidations()
    assert feed is not None
    client = raw_redis(status_url)
    pings = feed._pings
    try:
        assert feed.poll()[0]  # the first poll reports a flush
        for i in range(300):
            client.set(f"sk:x:{i}", b"1")
            client.flushdb()
            feed.expect_changes()
            flushed, _keys, trusted = feed.poll()
            assert flushed and trusted, i
        assert feed._pings - pings >= 300  # one PING round trip per catch-up
    finally:
        client.close()
        feed.close()
        online.close()


def test_catch_up_reads_after_another_clients_flush(
    scenario: tuple[FeatureStore, int], status_url: str
) -> None:
    """``FeatureStore.catch_up_reads``: a flush by another client acknowledged before the call
    is reflected by the store's next read, though the store's cache held the entity."""
    store, t = scenario
    rows = ROWS[:1]
    client = raw_redis(status_url)
    try:
        for i in range(20):
            assert store.get_online_features(REFS, rows, now_ms=t).statuses["amount_sum_1h"] == [PR]
            held = store.get_online_features(REFS, rows, now_ms=t)  # served from the cache
            assert held.statuses["amount_sum_1h"] == [PR]
            client.flushdb()
            store.catch_up_reads()
            after = store.get_online_features(REFS, rows, now_ms=t)
            assert after.statuses["amount_sum_1h"] == [NS], i
            _write_c1(store, 1.0, t)
    finally:
        client.close()
