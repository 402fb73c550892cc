"""Redis's key invalidations for one online ``ReadCache``: server-assisted client-side caching.

One dedicated connection switches to RESP3 (``HELLO 3``) and asks Redis to track the entity
state keys in broadcasting mode (``CLIENT TRACKING on BCAST PREFIX sk:``): from then on Redis
pushes to it the name of every key under the prefix that any client changes (a write, a
delete, an expiry, an eviction) and a null list when a database is flushed. The reader
drains those messages without blocking before it serves a held value
(``engine.online_read.InvalidationFeed``), so a hit needs no round trip. Broadcasting
rather than per-key tracking because then no reading connection has to be set up or
watched: the pooled connections stay as they are (RESP as configured, read raw by the
native index), and only this one connection's life matters. Its loss (closed, reset,
silent past the heartbeat) is reported as a flush. RESP3 pushes rather than RESP2's
``REDIRECT`` + ``SUBSCRIBE __redis__:invalidate`` because they need no pub/sub permission
(an ACL user with ``+@connection`` may track). See docs/online.md#readcache-and-invalidation.
"""

from __future__ import annotations

import os
import select
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import hiredis
import redis

__all__ = ["RedisInvalidations"]

_RECV = 1 << 16
_CHANNEL = b"__redis__:invalidate"
_PENDING_MAX = 1 << 20  # names held between two polls; beyond, drop everything held instead
_FEEDS: weakref.WeakSet[RedisInvalidations] = weakref.WeakSet()  # for the fork hook


class RedisInvalidations:
    """The invalidation messages of one tracking connection (``InvalidationFeed``).

    ``connect`` makes a new, unconnected redis-py ``Connection`` to the store's server (its
    credentials, TLS and database). ``poll()`` reads what arrived, without blocking, and says
    ``(flushed, keys, trusted)`` — ``flushed`` when everything held must go (a flush, the
    connection lost or made anew), ``keys`` the names changed since the last poll, and
    ``trusted`` whether the connection is live: it has been heard from within two
    heartbeats (a ``PING`` is sent after one quiet heartbeat; after two, the poll waits for
    its answer, at most a heartbeat, and a silent connection is lost) and not behind: a
    drain that filled a whole receive buffer means Redis may still hold names of writes
    other clients already read, so the next poll reads up to a ``PING``'s answer first
    (at most a heartbeat; not trusted until it has). A lost connection is
    made again at most once per heartbeat; until then ``trusted`` is False. A daemon thread
    does the same every heartbeat between reads (drain, ping, reconnect), so an idle reader
    stays live and Redis never buffers much for it.

    Raises ``redis.exceptions.ResponseError`` from the constructor when Redis refuses
    tracking (before 6.0, or an ACL without ``HELLO``/``CLIENT``).
    """

    def __init__(
        self, connect: Callable[[], Any], prefix: bytes, *, heartbeat_ms: int = 500
    ) -> None:
        self._connect = connect
        self._prefix = prefix
        self._heartbeat_ns = heartbeat_ms * 1_000_000
        self._lock = threading.Lock()
        self._conn: Any = None
        self._sock: Any = None
        self._reader: Any = None
        self._heard_ns = 0  # monotonic time anything last arrived (0: never / lost)
        self._ping_ns = 0  # when the outstanding PING was sent (0: none)
        self._tried_ns = 0  # when a connection was last attempted
        self._flush = False  # a flush to report at the next poll
        self._pending: list[bytes] = []  # names the tending thread drained, for the next poll
        # a drain took a whole buffer's worth: Redis may hold more in its output buffer (a
        # burst larger than the socket buffers), so the next poll catches up first
        self._behind = False
        self._tending = False  # the thread is draining (non-blocking): a poll waits for it
        self._pings = 0  # PINGs sent on this connection
        self._pongs = 0  # their answers received (in order: after all sent before them)
        self._open()
        _FEEDS.add(self)
        self._stop = self._tend_in_background()

    def _tend_in_background(self) -> threading.Event:
        """A daemon thread that tends the connection every heartbeat — drains it (so Redis
        never holds much for an idle reader), pings a quiet one, reconnects a lost one —
        until ``close()`` or the feed is garbage."""
        stop = threading.Event()
        thread = threading.Thread(target=_tend, args=(weakref.ref(self), stop,
                                  self._heartbeat_ns / 1e9), name="skewless-invalidations",
                                  daemon=True)  # fmt: skip
        thread.start()
        return stop

    def _tend(self) -> None:
        self._tending = True  # from before the lock to after it: a poll waits for a drain
        if not self._lock.acquire(blocking=False):  # a read is polling: it does the work
            self._tending = False
            return
        try:
            now = time.monotonic_ns()
            if self._sock is not None:
                self._receive(self._pending, now)  # never blocks
                if len(self._pending) > _PENDING_MAX:  # nobody reads: drop all instead
                    self._pending.clear()
                    self._flush = True
            elif now - self._tried_ns >= self._heartbeat_ns:
                self._tending = False  # a connect may block: polls meanwhile are not sure
                self._reopen(now)
        finally:
            self._lock.release()
            self._tending = False

    def _reopen(self, now: int) -> None:
        try:
            self._open()
        except (redis.exceptions.RedisError, OSError):
            self._lose()
            self._tried_ns = now

    def _forked(self) -> None:
        """In a forked child: the socket is the parent's; leave it to the parent (no
        shutdown) and make the child's own at its next poll, dropping what was held."""
        self._lock = threading.Lock()
        self._tending = False
        self._conn = self._sock = self._reader = None
        self._heard_ns = self._ping_ns = self._tried_ns = 0
        self._flush = True
        self._pending = []
        self._stop = self._tend_in_background()  # threads do not survive a fork

    def _open(self) -> None:
        """Connect, switch to RESP3, turn tracking on; the first poll after reports a flush."""
        self._tried_ns = time.monotonic_ns()
        conn = self._connect()
        try:
            conn.connect()  # credentials, TLS, database: as the store's connections
            sock = conn._sock  # read around redis-py's parser from here on
            sock.sendall(_command(b"HELLO", b"3")  # RESP3: pushes, no SUBSCRIBE needed
                         + _command(b"CLIENT", b"TRACKING", b"on", b"BCAST", b"PREFIX",
                                    self._prefix))  # fmt: skip
            reader = hiredis.Reader()
            replies: list[object] = []
            while len(replies) < 2:
                chunk = sock.recv(_RECV)
                if not chunk:
                    raise redis.exceptions.ConnectionError("Connection closed by server.")
                reader.feed(chunk)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
            for reply in replies:
                if isinstance(reply, redis.exceptions.ResponseError | hiredis.ReplyError):
                    raise redis.exceptions.ResponseError(str(reply))
            sock.setblocking(False)
        except BaseException:
            conn.disconnect()
            raise
        self._conn, self._sock, self._reader = conn, sock, reader
        self._heard_ns = time.monotonic_ns()
        self._ping_ns = 0
        self._behind = False
        self._pings = self._pongs = 0
        self._flush = True
        self._drain_buffered([])

    def expect_changes(self) -> None:
        """Writes were acknowledged before this call (by any client): the next poll reads up
        to a ``PING``'s answer first, which Redis queues after their invalidations, so a read
        after it never serves what they changed (one round trip; ``FeatureStore.catch_up_reads``)."""
        self._behind = True

    def _lose(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = self._sock = self._reader = None
        self._heard_ns = self._ping_ns = 0
        self._flush = True

    def poll(self) -> tuple[bool, list[bytes], bool]:
        """``(flushed, changed keys, trusted)`` since the last poll. Does not block, but on a
        connection quiet for two heartbeats (an idle reader) or behind (after a burst),
        where it waits for a ``PING``'s answer: one round trip, at most a heartbeat. When the
        feed's thread is draining (a non-blocking read of the socket) it waits for it rather
        than answer "not sure": a hit must not turn into a round trip because the two met."""
        if not self._lock.acquire(blocking=False) and not (
            (self._tending and self._lock.acquire(timeout=self._heartbeat_ns / 1e9))
            or self._lock.acquire(blocking=False)  # the thread let go in between
        ):  # another read is confirming, or the feed's thread is connecting: not sure
            return False, [], False
        try:
            keys, self._pending = self._pending, []
            now = time.monotonic_ns()
            if self._sock is None:
                if now - self._tried_ns >= self._heartbeat_ns:
                    self._reopen(now)
            else:
                self._receive(keys, now)
                if self._sock is not None and not self._live(now):
                    now = self._confirm(keys)  # quiet for two heartbeats: ask, one round trip
            caught_up = True
            if self._sock is not None and self._behind:
                caught_up, now = self._catch_up(keys)  # a burst: one round trip
            flushed, self._flush = self._flush, False
            if flushed:
                keys.clear()
            return flushed, keys, caught_up and self._live(now)
        finally:
            self._lock.release()

    def _confirm(self, keys: list[bytes]) -> int:
        """Wait (at most a heartbeat) for the answer to a ``PING`` on a connection nothing
        has come from for two heartbeats: heard from, it is live again; silent, it is lost.
        Returns the time after."""
        sock = self._sock
        if not self._ping_ns:
            if not self._send_ping():
                return time.monotonic_ns()
            self._ping_ns = time.monotonic_ns()
        left = self._ping_ns + self._heartbeat_ns - time.monotonic_ns()
        if left > 0 and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            select.select([sock], [], [], left / 1e9)
        now = time.monotonic_ns()
        self._receive(keys, now)
        if self._sock is not None and not self._live(now):
            self._lose()  # no answer within a heartbeat
        return now

    def _catch_up(self, keys: list[bytes]) -> tuple[bool, int]:
        """The feed fell behind (a drain filled a whole receive buffer: Redis may still hold
        names of writes other clients already see): send a ``PING`` and read until its
        answer, which Redis queues after every name queued before it. Waits at most a
        heartbeat; True when caught up (or the connection was lost: reported as a flush),
        and the time after."""
        sock = self._sock
        self._behind = False  # set again if what follows the PING is a burst too
        if not self._send_ping():
            return True, time.monotonic_ns()
        wanted = self._pings
        deadline = time.monotonic_ns() + self._heartbeat_ns
        now = time.monotonic_ns()
        while self._sock is not None and self._pongs < wanted:
            left = deadline - now
            if left <= 0:
                self._behind = True  # not caught up: not trusted, asked again next poll
                return False, now
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                select.select([sock], [], [], left / 1e9)
            now = time.monotonic_ns()
            self._receive(keys, now)
        return True, now

    def _live(self, now: int) -> bool:
        return self._sock is not None and now - self._heard_ns <= 2 * self._heartbeat_ns

    def _receive(self, keys: list[bytes], now: int) -> None:
        sock = self._sock
        while True:
            try:
                chunk = sock.recv(_RECV)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except OSError:
                self._lose()
                return
            if not chunk:  # closed by the server (CLIENT KILL, restart, timeout)
                self._lose()
                return
            self._reader.feed(chunk)
            self._heard_ns, self._ping_ns = now, 0
            if len(chunk) < _RECV:
                break
            self._behind = True  # a whole buffer: Redis may hold more than reached the socket
        if not self._drain_buffered(keys):
            return
        if self._ping_ns:
            if now - self._ping_ns > self._heartbeat_ns:  # no answer: the path is dead
                self._lose()
        elif now - self._heard_ns > self._heartbeat_ns and self._send_ping():
            self._ping_ns = now

    def _send_ping(self) -> bool:
        """Send a ``PING`` (counted: its answer is the ``_pongs``-th); False if the
        connection broke (it is lost)."""
        try:
            self._sock.sendall(_command(b"PING"))
        except OSError:
            self._lose()
            return False
        self._pings += 1
        return True

    def _drain_buffered(self, keys: list[bytes]) -> bool:
        """Parse what the reader holds into ``keys`` (or a flush); False if the stream broke."""
        reader = self._reader
        while True:
            try:
                message = reader.gets()
            except hiredis.ProtocolError:
                self._lose()
                return False
            if message is False:
                return True
            if message == b"PONG":
                self._pongs += 1
                continue
            if not isinstance(message, list) or not message:
                continue
            kind = message[0]
            if kind == b"invalidate" and len(message) == 2:  # RESP3 push
                changed = message[1]
            elif kind == b"message" and len(message) == 3 and message[1] == _CHANNEL:
                changed = message[2]
            else:
                continue  # subscribe confirmations, pong
            if changed is None:  # FLUSHDB / FLUSHALL (of any database)
                self._flush = True
            else:
                keys.extend(changed)

    def close(self) -> None:
        """Close the tracking connection (Redis stops tracking for it)."""
        self._stop.set()
        with self._lock:
            self._lose()


def _tend(ref: weakref.ref[RedisInvalidations], stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        feed = ref()
        if feed is None:
            return
        feed._tend()
        del feed


def _command(*args: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _after_fork_in_child() -> None:
    for feed in list(_FEEDS):
        feed._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
