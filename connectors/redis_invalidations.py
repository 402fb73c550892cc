"""Redis's key invalidations for one online ``ReadCache``: server-assisted client-side caching.

One dedicated connection asks Redis to track the entity state keys in broadcasting mode
(``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX sk:``, then ``SUBSCRIBE
__redis__:invalidate`` for a RESP2 connection; a RESP3 one gets push messages): from then on
Redis sends the name of every key under the prefix that any client changes (a write, a
delete, an expiry, an eviction) and a null list when a database is flushed. The reader
drains those messages without blocking before it serves a held value
(``engine.online_read.InvalidationFeed``), so a hit needs no round trip. Broadcasting
rather than per-key tracking because then no reading connection has to be set up or
watched: the pooled connections stay as they are, and only this one connection's life
matters. Its loss (closed, reset, silent past the heartbeat) is reported as a flush.
See docs/online.md#readcache-and-invalidation.
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
_FEEDS: weakref.WeakSet[RedisInvalidations] = weakref.WeakSet()  # for the fork hook


class RedisInvalidations:
    """The invalidation messages of one tracking connection (``InvalidationFeed``).

    ``connect`` makes a new, unconnected redis-py ``Connection`` to the store's server (its
    credentials, TLS and database). ``poll()`` reads what arrived, without blocking, and says
    ``(flushed, keys, trusted)`` — ``flushed`` when everything held must go (a flush, the
    connection lost or made anew), ``keys`` the names changed since the last poll, and
    ``trusted`` whether the connection is live: it has been heard from within two
    heartbeats (a ``PING`` is sent after one quiet heartbeat; after two, the poll waits for
    its answer, at most a heartbeat, and a silent connection is lost). A lost connection is
    made again at most once per heartbeat; until then ``trusted`` is False.

    Raises ``redis.exceptions.ResponseError`` from the constructor when Redis refuses
    tracking (before 6.0, or an ACL without ``CLIENT``/``SUBSCRIBE``).
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
        self._open()
        _FEEDS.add(self)

    def _forked(self) -> None:
        """In a forked child: the socket is the parent's; leave it to the parent (no
        shutdown) and make the child's own at its next poll, dropping what was held."""
        self._lock = threading.Lock()
        self._conn = self._sock = self._reader = None
        self._heard_ns = self._ping_ns = self._tried_ns = 0
        self._flush = True

    def _open(self) -> None:
        """Connect, turn tracking on, subscribe; the first poll after reports a flush."""
        self._tried_ns = time.monotonic_ns()
        conn = self._connect()
        try:
            conn.connect()
            conn.send_command("CLIENT", "ID")
            client_id = int(conn.read_response())
            conn.send_command("CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST",
                              "PREFIX", self._prefix)  # fmt: skip
            conn.read_response()
            sock = conn._sock  # read around redis-py's parser from here on
            sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(_CHANNEL), _CHANNEL))
            reader = hiredis.Reader()
            while True:  # the subscription's confirmation (RESP2 reply or RESP3 push)
                reader.feed(sock.recv(_RECV))
                reply = reader.gets()
                if reply is not False:
                    break
            if isinstance(reply, redis.exceptions.ResponseError | hiredis.ReplyError):
                raise redis.exceptions.ResponseError(str(reply))
            sock.setblocking(False)
        except BaseException:
            conn.disconnect()
            raise
        self._conn, self._sock, self._reader = conn, sock, reader
        self._heard_ns = time.monotonic_ns()
        self._ping_ns = 0
        self._flush = True
        self._drain_buffered([])

    def _lose(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = self._sock = self._reader = None
        self._heard_ns = self._ping_ns = 0
        self._flush = True

    def poll(self) -> tuple[bool, list[bytes], bool]:
        """``(flushed, changed keys, trusted)`` since the last poll. Does not block, but on a
        connection quiet for two heartbeats (an idle reader), where it waits for a ``PING``'s
        answer: one round trip, at most a heartbeat."""
        if not self._lock.acquire(blocking=False):  # another thread is draining now
            return False, [], self._live(time.monotonic_ns())
        try:
            keys: list[bytes] = []
            now = time.monotonic_ns()
            if self._sock is None:
                if now - self._tried_ns >= self._heartbeat_ns:
                    try:
                        self._open()
                    except (redis.exceptions.RedisError, OSError):
                        self._lose()
                        self._tried_ns = now
            else:
                self._receive(keys, now)
                if self._sock is not None and not self._live(now):
                    now = self._confirm(keys)  # quiet for two heartbeats: ask, one round trip
            flushed, self._flush = self._flush, False
            if flushed:
                keys.clear()
            return flushed, keys, self._live(now)
        finally:
            self._lock.release()

    def _confirm(self, keys: list[bytes]) -> int:
        """Wait (at most a heartbeat) for the answer to a ``PING`` on a connection nothing
        has come from for two heartbeats: heard from, it is live again; silent, it is lost.
        Returns the time after."""
        sock = self._sock
        if not self._ping_ns:
            try:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            except OSError:
                self._lose()
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
        if not self._drain_buffered(keys):
            return
        if self._ping_ns:
            if now - self._ping_ns > self._heartbeat_ns:  # no answer: the path is dead
                self._lose()
        elif now - self._heard_ns > self._heartbeat_ns:
            try:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                self._ping_ns = now
            except OSError:
                self._lose()

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
            if not isinstance(message, list) or not message:
                continue  # +PONG (RESP3)
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
        with self._lock:
            self._lose()


def _after_fork_in_child() -> None:
    for feed in list(_FEEDS):
        feed._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
