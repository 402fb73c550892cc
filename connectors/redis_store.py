"""The Redis online store: ``engine.ports.OnlineStateStore`` over redis-py, one round trip per call.

Every call is one round trip: ``load`` pipelines one ``HGETALL`` per key (``load_and_probe``
adds one ``EXISTS`` per probed key: the online reader's view markers), ``write`` applies
(in Lua chunks, or a pipeline where scripts are not allowed) per entity one ``HSET`` (tiles,
fence, write time and journal together, so a reader or a replaying worker never sees tiles
without their fence), an ``HDEL`` of evicted tiles and the
expiry. Expiry only ever moves later: ``PEXPIREAT … NX`` sets it on a key without one, then
``PEXPIREAT … GT`` extends it (Redis ≥ 7.0), so a worker that owns only some of an entity's
partitions never shortens what another partition still needs; ``PERSIST`` keeps lifetime state.

redis-py exceptions are translated here, once, into ``OnlineStoreUnavailable`` (refused
credentials: ``OnlineStoreAuthError``); messages name the address (``host:port/db``) and the
user, never the password. Credentials and TLS come from ``Config`` (docs/security.md).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from connectors.redis_invalidations import RedisInvalidations
from engine import _native
from engine.errors import (
    ConfigError,
    OnlineStoreAuthError,
    OnlineStoreUnavailable,
    OnlineWriteConflict,
    OwnerFenced,
)
from engine.online import PREFIX, keyspace_pattern, marks_pattern
from engine.online_read import Held
from engine.ports import PackedWrites, StateWrite, Watermark
from engine.secrets import Secret, split_url_credentials
from engine.watermarks import watermark_pattern

if TYPE_CHECKING:
    from engine.config import Config

__all__ = ["RedisOnlineStore", "RedisTls"]

_T = TypeVar("_T")

# Unchanged (1) when the field count and every mark field equal what the caller holds
# (values framed as "<length>:<bytes>", "-" for a missing field), else the whole hash.
_REVALIDATE_LUA = """
local n = redis.call('HLEN', KEYS[1])
if n > 0 and n == tonumber(ARGV[1]) then
  local current = redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
  local parts = {}
  for i, v in ipairs(current) do
    if v then parts[i] = #v .. ':' .. v else parts[i] = '-' end
  end
  if table.concat(parts) == ARGV[2] then return 1 end
end
return redis.call('HGETALL', KEYS[1])
"""

# Owner epochs (docs/reliability.md#owner-epochs): one hash per (consumer group, topic,
# partition), {gen: the consumer-group generation of the last take, epoch: the epoch it got}.
# A take under generation ARGV[2i-1] succeeds unless a later generation took the partition
# (then it returns minus that generation); the epoch is one above both the stored one and the
# log's highest (ARGV[2i]), so epochs only grow even after Redis lost the register.
_TAKE_LUA = """
local out = {}
for i = 1, #KEYS do
  local gen = tonumber(ARGV[2 * i - 1])
  local floor = tonumber(ARGV[2 * i])
  local cur = redis.call('HMGET', KEYS[i], 'gen', 'epoch')
  local cgen = tonumber(cur[1])
  if cgen and cgen > gen then
    out[i] = -cgen
  else
    local e = math.max(tonumber(cur[2]) or 0, floor) + 1
    redis.call('HSET', KEYS[i], 'gen', gen, 'epoch', e)
    out[i] = e
  end
end
return out
"""
# The fence every fenced script starts with: ARGV ends with n (register key, epoch) pairs and
# n; a register holding another epoch refuses the whole call (nothing applied) and names
# itself. A missing register (Redis lost it) passes: the watermarks catch lost state.
_FENCE_LUA = """
local nfence = tonumber(ARGV[#ARGV])
local stale = {}
for j = #ARGV - 2 * nfence, #ARGV - 1, 2 do
  local cur = redis.call('HGET', ARGV[j], 'epoch')
  if cur and cur ~= ARGV[j + 1] then stale[#stale + 1] = ARGV[j] end
end
if #stale > 0 then
  table.insert(stale, 1, 'fenced')
  return stale
end
"""
# Watermarks swapped (SET … GET) under the fence, after the entity writes of the batch.
_MARK_LUA = (
    _FENCE_LUA
    + """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('SET', KEYS[i], ARGV[i], 'GET') end
return out
"""
)
_FENCED = b"fenced"

# Entity writes of one batch chunk (see RedisOnlineStore.write), one per key in KEYS; ARGV
# holds per key: field count, delete count, expiry (ms; empty = no expiry), the check (''
# none, '0' the field must be absent, '1' it must hold the value), the checked field and
# value, then the field/value pairs and the fields to delete. A write whose checked field
# holds something else — neither the expected value nor what this write sets (a retried
# write) — is skipped and its index returned; an absent field passes (the key expired, or
# Redis lost it: the watermarks tell those apart). Otherwise the same commands as the
# pipeline fallback. The check '&' (a merged view's marks hash, ``engine/online.py``) lands
# the write iff the write before it in the call landed; the write a '&' follows (a merged
# entity hash) is a strict compare-and-set: read at a version, it is also skipped when the
# version is absent now (the hash expired or was lost since it and its marks hash were
# read, maybe one of the two only). ARGV ends with the fence (``_FENCE_LUA``).
_WRITE_BODY_LUA = """
local function each(cmd, key, first, last)
  -- unpack() is bounded by Lua's stack: send long argument lists in slices (even sizes)
  for s = first, last, 1000 do
    redis.call(cmd, key, unpack(ARGV, s, math.min(s + 999, last)))
  end
end
local refused = {}
local a = 1
local linked = true
for i = 1, #KEYS do
  local key = KEYS[i]
  local nf = tonumber(ARGV[a])
  local nd = tonumber(ARGV[a + 1])
  local at = ARGV[a + 2]
  local check = ARGV[a + 3]
  local first = a + 6
  local ok = true
  if check == '&' then
    ok = linked
  elseif check ~= '' then
    local current = redis.call('HGET', key, ARGV[a + 4])
    if current and (check == '0' or current ~= ARGV[a + 5]) then
      ok = false
      for f = first, first + 2 * nf - 2, 2 do
        if ARGV[f] == ARGV[a + 4] and ARGV[f + 1] == current then ok = true end
      end
    elseif not current and check == '1' and ARGV[first + 2 * nf + nd + 3] == '&' then
      ok = false  -- a merged hash read at a version, gone since (expired, lost): reload
    end
  end
  if ok then
    if nf > 0 then each('HSET', key, first, first + 2 * nf - 1) end
    if nd > 0 then each('HDEL', key, first + 2 * nf, first + 2 * nf + nd - 1) end
    if at == '' then
      redis.call('PERSIST', key)
    else
      redis.call('PEXPIREAT', key, at, 'NX')
      redis.call('PEXPIREAT', key, at, 'GT')
    end
  else
    refused[#refused + 1] = i
  end
  linked = ok
  a = first + 2 * nf + nd
end
return refused
"""
_WRITE_LUA = "\n" + _FENCE_LUA + _WRITE_BODY_LUA
_WRITE_CHUNK_ARGS = 4000  # arguments per script call: each call blocks Redis ~1 ms at most

START_HINT = (
    "start a local Redis with `skewless services up` (or `bash scripts/services.sh up redis`)"
)
AUTH_HINT = (
    "check redis.password (SKEWLESS_REDIS_PASSWORD or SKEWLESS_REDIS_PASSWORD_FILE) and "
    "redis.username (SKEWLESS_REDIS_USERNAME), or the user:password@ part of redis.url "
    "(SKEWLESS_REDIS_URL)"
)
_SCAN_COUNT = 1000
_UNLINK_BATCH = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisTls:
    """TLS settings of a ``rediss://`` connection (PEM files; empty = the system default)."""

    ca_file: str = ""
    cert_file: str = ""  # client certificate, for Redis with tls-auth-clients yes
    key_file: str = ""
    verify: bool = True  # False: accept any certificate (self-signed dev setups only)

    @classmethod
    def from_config(cls, config: Config) -> RedisTls | None:
        """The config's TLS settings; None when ``redis.tls`` is off."""
        if not config.redis_tls:
            return None
        return cls(
            ca_file=config.redis_tls_ca_file,
            cert_file=config.redis_tls_cert_file,
            key_file=config.redis_tls_key_file,
            verify=config.redis_tls_verify,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py's ``ssl_*`` arguments."""
        kwargs: dict[str, Any] = {
            "ssl_cert_reqs": "required" if self.verify else "none",
            "ssl_check_hostname": self.verify,
        }
        for name, value in (
            ("ssl_ca_certs", self.ca_file),
            ("ssl_certfile", self.cert_file),
            ("ssl_keyfile", self.key_file),
        ):
            if value:
                kwargs[name] = value
        return kwargs


class RedisOnlineStore:
    """Entity state hashes in one Redis database (DESIGN §4), for workers and online reads.

    ``url`` is a redis-py URL (``redis://[[user]:password@]host:port/db``, ``rediss://`` for
    TLS, ``unix:///path?db=N``); ``username`` and ``password`` beat the URL's, ``tls`` turns
    ``redis://`` into ``rediss://``. One client with a connection pool is shared by all calls;
    the instance is thread-safe as redis-py's pool is. A dropped connection (Redis
    restarted) is retried once at once; anything else raises ``OnlineStoreUnavailable``.

    Example:
        >>> store = RedisOnlineStore("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> store.write([StateWrite(key="sk:ab:{c1}", fields={"f:0": b"7"})])  # doctest: +SKIP
        >>> store.load(["sk:ab:{c1}", "sk:ab:{c2}"])  # doctest: +SKIP
        [{b'f:0': b'7'}, {}]
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: Secret | str | None = None,
        tls: RedisTls | None = None,
        socket_timeout_ms: int = 5_000,
        connect_timeout_ms: int = 2_000,
        max_connections: int = 64,
        client_name: str | None = "skewless",
    ) -> None:
        url, url_user, url_password = split_url_credentials(url)  # explicit beats the URL's
        user = username or url_user
        secret = Secret(password) if isinstance(password, str) else password
        secret = secret or url_password
        if tls is not None and url.startswith("redis://"):
            url = "rediss://" + url.removeprefix("redis://")
        if url.startswith("rediss://"):
            tls = tls or RedisTls()
        if tls is not None and url.startswith("unix://"):
            raise ConfigError("redis.tls is on but redis.url is a unix socket (unix://…)")
        credentials: dict[str, Any] = {}
        if user:
            credentials["username"] = user
        if secret:
            credentials["password"] = secret.reveal()
        if tls is not None:
            credentials.update(tls.client_kwargs())
        try:
            client = redis.Redis.from_url(
                url,
                **credentials,
                decode_responses=False,
                socket_timeout=socket_timeout_ms / 1000,
                socket_connect_timeout=connect_timeout_ms / 1000,
                socket_keepalive=True,
                max_connections=max_connections,
                client_name=client_name,
                # one quick retry heals a pooled connection that Redis closed (a restart);
                # timeouts are not retried, so a hung Redis costs one timeout, not two
                retry=Retry(
                    ExponentialBackoff(cap=0.05, base=0.005),
                    retries=1,
                    supported_errors=(redis.exceptions.ConnectionError,),
                ),
            )
        except ValueError as exc:  # a malformed URL; its text may echo the password
            detail = "" if _password_in(url, str(exc)) else f": {exc}"
            raise ConfigError(
                "redis.url is not a valid Redis URL (expected redis://[user:password@]host:port/db, "
                f"rediss://… or unix:///path?db=N){detail}"
            ) from None
        self._client = client
        kwargs = client.connection_pool.connection_kwargs
        self._secrets = tuple(s for s in (kwargs.get("password"),) if isinstance(s, str) and s)
        self.user = user or "default"
        self.address = _address(kwargs) + (" (TLS)" if tls is not None else "")
        self._scripts_allowed = True  # False once Redis refused this user a script (ACL)
        self._shas: dict[str, bytes] = {}  # Lua source -> SHA1 in Redis' script cache
        # (key, held) -> its packed revalidation (load_and_probe_resp)
        self._revalidations: dict[tuple[str, Held], bytes] = {}
        self._tracking_allowed = True  # False once Redis refused CLIENT TRACKING

    @classmethod
    def from_config(cls, config: Config) -> RedisOnlineStore:
        """The store at ``config.redis_url`` with the config's credentials and TLS settings;
        with ``redis.cluster`` on, a ``RedisClusterOnlineStore`` seeded by ``redis.nodes``."""
        if config.redis_cluster:
            from connectors.redis_cluster_store import RedisClusterOnlineStore

            return RedisClusterOnlineStore.from_config(config)
        tls = RedisTls.from_config(config)
        return cls(
            config.redis_url,
            username=config.redis_username or None,
            password=config.redis_password,
            tls=tls,
        )

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.address!r})"

    # -- OnlineStateStore ---------------------------------------------------------------------

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """Every field of each key (``{}`` for a missing key), in one round trip."""
        return self._load_then(keys, [])[0]

    def write(
        self,
        writes: Sequence[StateWrite],
        marks: Sequence[Watermark] = (),
        *,
        fence: Sequence[tuple[str, int]] = (),
    ) -> list[bytes | None]:
        """Apply every write in one round trip; each entity's fields are set by one ``HSET``.

        Then each mark is swapped with ``SET key value GET`` (Redis >= 6.2) in the same
        round trip; returns the marks' previous values (None where a key was missing).

        The writes travel as a few ``EVALSHA`` calls of a script that applies up to
        ``_WRITE_CHUNK_ARGS`` arguments' worth of entity writes each (so Redis is never
        blocked long) — one reply per chunk instead of three or four per entity. A user
        whose ACL forbids scripts gets the same commands as a plain pipeline.

        ``fence``: (owner-register key, epoch) pairs (``take_epochs``). Every script call
        first checks that each register still holds its epoch; a call that finds a later
        one applies nothing, and ``OwnerFenced`` is raised after the round trip. Without
        scripting the whole call runs as one ``MULTI`` under ``WATCH`` of the registers.
        """
        if not writes and not marks:
            return []
        done = self._scripted(lambda: self._write_scripted(writes, marks, fence), "write (EVALSHA)")
        if done is not None:
            return done
        if any(w.expect is not None and w.expect[0] == "&" for w in writes):
            raise OnlineStoreUnavailable(
                "a merge-on-write view (online.merge_rekeyed_views) needs Redis scripting for "
                "its compare-and-set writes, and this Redis user may not run scripts; allow "
                "EVALSHA (+@scripting) or turn the option off"
            )
        if fence:
            return self._write_watched(writes, marks, fence)
        pipe = self._client.pipeline(transaction=False)
        self._queue(pipe, writes, marks)
        try:
            replies = pipe.execute()
        except redis.exceptions.RedisError as exc:
            self._unavailable("write pipeline", exc)
        return cast(list[bytes | None], replies[len(replies) - len(marks) :])

    @staticmethod
    def _queue(pipe: Any, writes: Sequence[StateWrite], marks: Sequence[Watermark]) -> None:
        for w in writes:
            if w.fields:
                pipe.hset(w.key, mapping=cast(Mapping[Any, Any], w.fields))
            if w.delete:
                pipe.hdel(w.key, *w.delete)
            if w.expire_at_ms is None:
                pipe.persist(w.key)
            else:
                pipe.pexpireat(w.key, w.expire_at_ms, nx=True)
                pipe.pexpireat(w.key, w.expire_at_ms, gt=True)
        for mark in marks:
            pipe.set(mark.key, mark.value, get=True)

    def _write_watched(
        self,
        writes: Sequence[StateWrite],
        marks: Sequence[Watermark],
        fence: Sequence[tuple[str, int]],
    ) -> list[bytes | None]:
        """The fenced write without scripting: ``WATCH`` the registers, check, ``MULTI``."""
        keys = [key for key, _ in fence]
        for _ in range(3):  # a take between WATCH and EXEC aborts the transaction: check again
            try:
                with self._client.pipeline(transaction=True) as pipe:
                    pipe.watch(*keys)  # type: ignore[no-untyped-call]  # untyped in redis-py
                    held = [pipe.hget(key, "epoch") for key in keys]
                    stale = [
                        key
                        for (key, epoch), cur in zip(fence, held, strict=True)
                        if cur is not None and int(cur) != epoch
                    ]
                    if stale:
                        raise OwnerFenced(stale)
                    pipe.multi()
                    self._queue(pipe, writes, marks)
                    replies = pipe.execute()
                return cast(list[bytes | None], replies[len(replies) - len(marks) :])
            except redis.exceptions.WatchError:
                continue
            except redis.exceptions.RedisError as exc:
                self._unavailable("write transaction", exc)
        raise OwnerFenced(keys)  # the registers kept moving: another owner is taking them

    def take_epochs(
        self, keys: Sequence[str], generation: int, floors: Sequence[int]
    ) -> list[int | None]:
        """Take a new owner epoch for each register key under consumer-group ``generation``;
        None where a later generation took it (this worker is a zombie). ``floors[i]``: the
        highest epoch the event log already knows for that partition. One round trip."""
        if not keys:
            return []
        args = [b"%d" % v for pair in zip([generation] * len(keys), floors, strict=True)
                for v in pair]  # fmt: skip
        encoded = [k.encode() for k in keys]
        try:
            got = self._scripted(
                lambda: self._run_packed([(_TAKE_LUA, (b"%d" % len(keys), *encoded, *args))])[0],
                "EVALSHA",
            )
        except redis.exceptions.RedisError as exc:
            self._unavailable("owner epoch take", exc)
        if got is None:  # no scripting: the same under WATCH/MULTI, key by key
            got = [self._take_watched(key, generation, floor) for key, floor in
                   zip(keys, floors, strict=True)]  # fmt: skip
        return [int(e) if int(e) > 0 else None for e in got]

    def _take_watched(self, key: str, generation: int, floor: int) -> int:
        try:
            with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key)  # type: ignore[no-untyped-call]  # untyped in redis-py
                        cur_gen, cur_epoch = pipe.hmget(key, ["gen", "epoch"])
                        if cur_gen is not None and int(cur_gen) > generation:
                            return -int(cur_gen)
                        epoch = max(int(cur_epoch or 0), floor) + 1
                        pipe.multi()
                        pipe.hset(key, mapping={"gen": generation, "epoch": epoch})
                        pipe.execute()
                        return epoch
                    except redis.exceptions.WatchError:
                        continue
        except redis.exceptions.RedisError as exc:
            self._unavailable("owner epoch take", exc)

    def _write_scripted(
        self,
        writes: Sequence[StateWrite],
        marks: Sequence[Watermark],
        fence: Sequence[tuple[str, int]] = (),
    ) -> list[bytes | None]:
        original = writes if isinstance(writes, PackedWrites) else None
        packed: list[tuple[int, int, int, bytes]] = []
        if isinstance(writes, PackedWrites):  # entity writes the native core packed already
            packed = writes.script_chunks(_WRITE_CHUNK_ARGS)
            writes = writes.extra
        chunks = _write_chunks(writes, _WRITE_CHUNK_ARGS)  # (keys, argv) per script call
        suffix = [b for key, epoch in fence for b in (key.encode(), b"%d" % epoch)]
        suffix.append(b"%d" % len(fence))
        tail = b"".join(b"$%d\r\n%s\r\n" % (len(b), b) for b in suffix)
        commands: list[tuple[str | None, Sequence[bytes] | _Prepacked]] = [
            (_WRITE_LUA, _Prepacked(elements + len(suffix), body, tail))
            for elements, _, _, body in packed
        ]
        commands.extend((_WRITE_LUA, (b"%d" % len(k), *k, *a, *suffix)) for k, a in chunks)
        if fence and marks:  # the marks move only while this worker is still the owner
            mark_keys = [mark.key.encode() for mark in marks]
            commands.append(
                (_MARK_LUA, (b"%d" % len(marks), *mark_keys, *(m.value for m in marks), *suffix))
            )
        else:
            commands.extend(
                (None, (b"SET", mark.key.encode(), mark.value, b"GET")) for mark in marks
            )
        replies = self._run_packed(commands)
        scripts = len(packed) + len(chunks)
        _raise_fenced(replies)
        marks_replies = replies[scripts] if fence and marks else replies[scripts:]
        previous = [r if isinstance(r, bytes) else None for r in marks_replies]
        refused = (
            [
                original.key(first + int(i) - 1)
                for (_, first, _, _), reply in zip(packed, replies, strict=False)
                for i in reply
            ]
            if original is not None
            else []
        )
        refused += [
            keys_[int(i) - 1].decode()
            for (keys_, _), reply in zip(chunks, replies[len(packed) :], strict=False)
            for i in reply
        ]
        if refused:
            raise OnlineWriteConflict(refused, previous)
        return previous

    def _run_packed(
        self, commands: Sequence[tuple[str | None, Sequence[bytes] | _Prepacked]]
    ) -> list[Any]:
        """Send ``commands`` at once on one pooled connection, packed by hiredis, and read
        one reply each. A command with a script (``(lua, args)``) runs as ``EVALSHA sha
        *args``; scripts missing from Redis' cache (restart, failover) are loaded and the
        whole batch sent again — every caller's commands are idempotent. A connection Redis
        closed is retried once. Raises the first error reply (redis-py's exception)."""
        pool = self._client.connection_pool
        for attempt in (0, 1):
            packed: list[bytes] = []  # sent in order; the natively packed bodies as they are
            small: list[bytes] = []  # the rest, joined between bodies (one write, not many)
            for lua, args in commands:
                if isinstance(args, _Prepacked):  # numkeys, keys and argv packed natively
                    assert lua is not None
                    sha = self._sha(lua)
                    small.append(
                        b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n"
                        % (args.elements + 2, len(sha), sha)
                    )
                    packed += (b"".join(small), args.body)
                    small = [args.tail]  # sent with what follows: the body is not copied
                elif lua is None:
                    small.append(_pack(args))
                else:
                    small.append(_pack((b"EVALSHA", self._sha(lua), *args)))
            if small:
                packed.append(b"".join(small))
            conn = pool.get_connection()
            replies: list[Any] = []
            try:
                conn.send_packed_command(packed)  # type: ignore[no-untyped-call]  # untyped in redis-py
                for (
                    _
                ) in commands:  # one reply per command, errors included: the stream stays in sync
                    try:
                        replies.append(conn.read_response())
                    except redis.exceptions.ResponseError as exc:
                        replies.append(exc)
            except redis.exceptions.ConnectionError:
                conn.disconnect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                if attempt == 0:  # a pooled connection Redis closed (restart): once more
                    continue
                raise
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                raise
            finally:
                pool.release(conn)
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self._shas.clear()  # script cache flushed (restart, failover): load again
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    def load_watermarked(
        self, keys: Sequence[str], marks: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes]], list[bytes | None]]:
        """``load(keys)``, then the value of each watermark key of ``marks`` (None where
        missing), in one round trip: Redis runs the reads in order, so a watermark still as
        its writer left it says Redis lost none of that writer's state before the hashes were
        read (a merge-on-write batch checks it before it writes, ``engine.stream.core``)."""
        hashes, rest = self._load_then(keys, [(b"GET", key.encode()) for key in marks])
        return hashes, [r if isinstance(r, bytes) else None for r in rest]

    def load_and_marks(
        self, keys: Sequence[str], marked: Sequence[tuple[str, int]]
    ) -> tuple[list[dict[bytes, bytes]], list[tuple[bytes | None, bytes | None]]]:
        """``load(keys)`` and, per ``(key, partition)`` of ``marked``, the ``f:<p>`` and
        ``j:<p>`` fields it holds (None where absent; one ``HMGET`` each), in one round trip:
        the marks a worker's local state is checked against (engine/stream/local_state.py)."""
        hashes, rest = self._load_then(
            keys, [(b"HMGET", key.encode(), b"f:%d" % p, b"j:%d" % p) for key, p in marked]
        )
        return hashes, [(r[0], r[1]) for r in rest]

    def _load_then(
        self, keys: Sequence[str], after: Sequence[Sequence[bytes]]
    ) -> tuple[list[dict[bytes, bytes]], list[Any]]:
        """``keys``' hashes, then the raw replies of the ``after`` commands, run in that order
        in one round trip."""
        commands: list[tuple[str | None, Sequence[bytes]]] = [
            (None, (b"HGETALL", key.encode())) for key in keys
        ]
        commands.extend((None, command) for command in after)
        if not commands:
            return [], []
        n = len(keys)
        try:
            # the hashes indexed natively (dicts built in the core, not per reply by
            # redis-py), the few other replies parsed by hiredis from their bytes
            got = self._run_resp(lambda: _hgetalls(keys) + [_pack(args) for args in after],
                                 others_from=n)  # fmt: skip
            if got is None:  # not a hiredis connection: redis-py's replies
                replies = self._run_packed(commands)
                return [_hash(r) for r in replies[:n]], list(replies[n:])
        except redis.exceptions.RedisError as exc:
            self._unavailable("HGETALL", exc)
        hashes = [got.hash(i) or {} for i in range(n)]
        rest: list[Any] = []
        if after:
            reader = hiredis.Reader()
            reader.feed(got.tail(n))
            rest = [reader.gets() for _ in after]
        return hashes, rest

    def _sha(self, lua: str) -> bytes:
        sha = self._shas.get(lua)
        if sha is None:
            sha = self._shas[lua] = str(self._client.script_load(lua)).encode()
        return sha

    def load_changed(
        self, keys: Sequence[str], held: Sequence[Held | None]
    ) -> list[dict[bytes, bytes] | None]:
        """Like ``load``, but ``None`` for a key whose held marks are still current.

        ``held[i]`` is ``(field count, ((mark field, value), ...))`` from an earlier read of
        ``keys[i]``, or None to fetch it whole. One round trip; a Lua script compares
        ``HLEN`` and the mark fields atomically and sends the hash only when they differ.
        Without scripting (ACL, managed Redis) this falls back to ``load``.
        """
        if not keys:
            return []
        if any(h is not None for h in held):
            got = self._scripted(lambda: self._load_changed(keys, held)[0], "EVALSHA")
            if got is not None:
                return got
        return list(self.load(keys))

    def _scripted(self, call: Callable[[], _T], what: str) -> _T | None:
        """``call()``, which runs Lua scripts; None when this user may not run scripts (an
        ACL without ``@scripting``: learned once, then the caller's plain commands)."""
        if not self._scripts_allowed:
            return None
        try:
            return call()
        except redis.exceptions.NoPermissionError:
            self._scripts_allowed = False
            return None
        except redis.exceptions.RedisError as exc:
            self._unavailable(what, exc)

    def load_and_probe(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes] | None], list[bool]]:
        """``load_changed(keys, held)`` and whether each key of ``probes`` exists (one
        ``EXISTS`` each), in the same round trip (``engine.online_read.ProbingStore``)."""
        if any(h is not None for h in held):
            got = self._scripted(lambda: self._load_changed(keys, held, probes), "EVALSHA")
            if got is not None:
                return got
        try:  # no script among the commands: nothing to fall back from
            return self._load_changed(keys, [None] * len(keys), probes)
        except redis.exceptions.RedisError as exc:
            self._unavailable("HGETALL", exc)

    def _load_changed(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str] = ()
    ) -> tuple[list[dict[bytes, bytes] | None], list[bool]]:
        # Packed by hand and sent on one pooled connection: redis-py's pure-Python packer
        # costs more than the whole round trip for 100 scripts of ~8 arguments each.
        commands: list[tuple[str | None, Sequence[bytes]]] = []
        for key, mark in zip(keys, held, strict=True):
            name = key.encode()
            if mark is None:
                commands.append((None, (b"HGETALL", name)))
            else:
                count, pairs = mark
                blob = b"".join(b"%d:%s" % (len(v), v) for _, v in pairs)
                commands.append(
                    (_REVALIDATE_LUA, (b"1", name, b"%d" % count, blob, *(n for n, _ in pairs)))
                )
        commands.extend((None, (b"EXISTS", key.encode())) for key in probes)
        replies = self._run_packed(commands)
        # an integer reply (1): unchanged since the caller's read
        hashes = [None if isinstance(r, int) else _hash(r) for r in replies[: len(keys)]]
        return hashes, [bool(r) for r in replies[len(keys) :]]

    def load_and_probe_resp(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> _native.RespReplies | None:
        """``load_and_probe``, its replies left as RESP in the one buffer the socket filled
        (``engine._native.RespReplies``): ``len(keys)`` replies, each an ``HGETALL`` hash or
        the integer 1 (``held[i]`` is current), then one ``EXISTS`` integer per probe. The
        reader evaluates the hashes from that buffer, so no field becomes a Python object.
        None when the connection cannot be read raw (a parser other than hiredis) or a reply
        is of a kind the index does not know; the caller then uses ``load_and_probe``."""
        if any(h is not None for h in held):
            got = self._scripted(
                lambda: self._run_resp(lambda: self._load_packed(keys, held, probes)), "EVALSHA"
            )
            if got is not None or self._scripts_allowed:  # (None from _run_resp itself)
                return got
        try:  # no script among the commands: nothing to fall back from
            plain = [None] * len(keys)
            return self._run_resp(lambda: self._load_packed(keys, plain, probes))
        except redis.exceptions.RedisError as exc:
            self._unavailable("HGETALL", exc)

    def invalidations(self) -> RedisInvalidations | None:
        """A new feed of Redis's invalidations of every entity state key (one connection,
        ``CLIENT TRACKING … BCAST PREFIX sk:``; ``engine.online_read.TrackingStore``), or None
        when Redis refuses tracking (before 6.0, an ACL without ``CLIENT``/``SUBSCRIBE``:
        learned once) or cannot be reached now (the read's own load then says so)."""
        if not self._tracking_allowed:
            return None
        pool = self._client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        try:  # not from the pool: the feed owns its connection for its whole life
            return RedisInvalidations(
                lambda: pool.connection_class(**kwargs), PREFIX.encode() + b":"
            )
        except redis.exceptions.ResponseError:  # NOPERM, unknown command
            self._tracking_allowed = False
            return None
        except (redis.exceptions.RedisError, OSError):
            return None

    def _load_packed(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> list[bytes]:
        """``HGETALL`` per key (a revalidating script where ``held``), ``EXISTS`` per probe,
        packed. A revalidation's packed command is kept per (key, held): a reader asking
        the same entities again sends the bytes it sent before."""
        sha = self._sha(_REVALIDATE_LUA) if any(h is not None for h in held) else b""
        memo = self._revalidations
        packed: list[bytes] = []
        for key, mark in zip(keys, held, strict=True):
            if mark is None:
                name = key.encode()
                packed.append(b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n" % (len(name), name))
                continue
            command = memo.get((key, mark))
            if command is None:
                count, pairs = mark
                blob = b"".join(b"%d:%s" % (len(v), v) for _, v in pairs)
                command = _pack((b"EVALSHA", sha, b"1", key.encode(), b"%d" % count, blob,
                                 *(n for n, _ in pairs)))  # fmt: skip
                if len(memo) >= _REVALIDATIONS_MAX:
                    memo.clear()
                memo[(key, mark)] = command
            packed.append(command)
        for key in probes:
            name = key.encode()
            packed.append(b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(name), name))
        return packed

    def _run_resp(
        self, pack: Callable[[], list[bytes]], others_from: int | None = None
    ) -> _native.RespReplies | None:
        """``_run_packed`` of the commands ``pack()`` gives (called again after a missing
        script was loaded), whose replies stay one RESP buffer, indexed natively
        (``engine._native.RespReplies``); None when the pooled connection's parser is not
        hiredis (its socket cannot be read around it) or a reply's kind is unknown.
        Error replies raise redis-py's exception, a missing script is loaded and the batch
        sent again, a connection Redis closed is retried once. Replies from ``others_from``
        on may be of any kind (the caller parses them from ``tail``)."""
        pool = getattr(self._client, "connection_pool", None)
        if pool is None:  # a cluster client: its own routing (_run_packed)
            return None
        for attempt in (0, 1):
            packed = pack()
            conn = pool.get_connection()
            try:
                parser = getattr(conn, "_parser", None)  # redis-py's hiredis parser: its
                has_data = getattr(getattr(parser, "_reader", None), "has_data", None)  # reader
                sock = getattr(parser, "_sock", None)  # and socket, read around it
                if has_data is None or sock is None or has_data():
                    return None
                conn.send_packed_command([b"".join(packed)])
                replies = _read_resp(sock, len(packed))
            except redis.exceptions.ConnectionError:
                conn.disconnect()
                if attempt == 0:  # a pooled connection Redis closed (restart): once more
                    continue
                raise
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
            shape = replies.shape()
            errors = [
                parser.parse_error(replies.error_at(i))  # type: ignore[union-attr]
                for i, kind in enumerate(shape)
                if kind == -2
            ]
            if attempt == 0 and any(isinstance(e, redis.exceptions.NoScriptError) for e in errors):
                self._shas.clear()  # script cache flushed (restart, failover): load again
                continue
            if errors:
                raise errors[0]
            if -3 in (shape if others_from is None else shape[:others_from]):
                return None
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    # -- operations ---------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when Redis answers; raises OnlineStoreUnavailable otherwise."""
        try:
            return bool(self._client.ping())
        except redis.exceptions.RedisError as exc:
            self._unavailable("PING", exc)

    def server_usage(self) -> tuple[int, int]:
        """(bytes of memory the server uses, keys in this database): ``INFO memory``, ``DBSIZE``."""
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.info("memory")
            pipe.dbsize()
            info, size = pipe.execute()
        except redis.exceptions.RedisError as exc:
            self._unavailable("INFO", exc)
        return int(info["used_memory"]), int(size)

    def scan_keys(self, pattern: str) -> Iterator[str]:
        """Keys matching a glob ``pattern``, by SCAN (never KEYS); a key may repeat once."""
        try:
            for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT):
                yield key.decode("utf-8") if isinstance(key, bytes) else str(key)
        except redis.exceptions.RedisError as exc:
            self._unavailable("SCAN", exc)

    def count_keys(self, fingerprint: str) -> int:
        """How many entity hashes a view fingerprint has."""
        return len(set(self.scan_keys(keyspace_pattern(fingerprint))))

    def delete_keyspace(self, fingerprint: str) -> int:
        """UNLINK every key of a view fingerprint (entity hashes, the marks hashes of a
        merge-on-write view, watermarks) in batches; returns how many were removed."""
        removed = 0
        batch: list[str] = []
        patterns = (keyspace_pattern(fingerprint), marks_pattern(fingerprint),
                    watermark_pattern(fingerprint))  # fmt: skip
        try:
            for pattern in patterns:
                for key in self.scan_keys(pattern):
                    batch.append(key)
                    if len(batch) >= _UNLINK_BATCH:
                        removed += int(self._client.unlink(*batch))
                        batch.clear()
            if batch:
                removed += int(self._client.unlink(*batch))
        except redis.exceptions.RedisError as exc:
            self._unavailable("UNLINK", exc)
        return removed

    def close(self) -> None:
        """Close the pooled connections (the store reconnects on next use)."""
        self._client.close()

    # -- errors -------------------------------------------------------------------------------

    def _unavailable(self, what: str, exc: redis.exceptions.RedisError) -> NoReturn:
        detail = self._redact(str(exc) or type(exc).__name__)
        if isinstance(
            exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError
        ):
            given = "a password was given" if self._secrets else "no password was given"
            raise OnlineStoreAuthError(
                f"Redis at {self.address} refused the credentials of user {self.user!r} "
                f"({given}; {what}): {detail}; {AUTH_HINT}"
            ) from exc
        if isinstance(exc, redis.exceptions.NoPermissionError):
            hint = (
                f"the Redis user {self.user!r} lacks a permission skewless needs (HGETALL, HSET, "
                "HDEL, PEXPIREAT, PERSIST, SET, EXISTS, SCAN, UNLINK)"
            )
        elif isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            hint = f"is it running? {START_HINT}, or set redis.url / SKEWLESS_REDIS_URL"
        else:
            hint = "skewless needs Redis >= 7.0"
        raise OnlineStoreUnavailable(
            f"Redis at {self.address} failed ({what}): {detail}; {hint}"
        ) from exc

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _write_args(w: StateWrite) -> list[bytes]:
    """One write's ARGV in the write script's layout (``_WRITE_BODY_LUA``)."""
    argv = [b"%d" % len(w.fields), b"%d" % len(w.delete),
            b"" if w.expire_at_ms is None else b"%d" % w.expire_at_ms]  # fmt: skip
    if w.expect is None:
        argv += (b"", b"", b"")
    elif w.expect[0] == "&":  # lands iff the write before it in the call did
        argv += (b"&", b"", b"")
    else:
        field, value = w.expect
        argv += (b"0", field.encode(), b"") if value is None else (b"1", field.encode(), value)
    for name, value in w.fields.items():
        argv.append(name.encode())
        argv.append(value)
    argv.extend(name.encode() for name in w.delete)
    return argv


def _write_chunks(
    writes: Iterable[StateWrite], max_args: int
) -> list[tuple[list[bytes], list[bytes]]]:
    """``(keys, argv)`` per write-script call, each about ``max_args`` arguments; a linked
    write (check ``&``) never starts a call: it stays with the write it depends on."""
    chunks: list[tuple[list[bytes], list[bytes]]] = []
    keys: list[bytes] = []
    argv: list[bytes] = []
    size = 0
    for w in writes:
        linked = w.expect is not None and w.expect[0] == "&"
        if size >= max_args and not linked:
            chunks.append((keys, argv))
            keys, argv, size = [], [], 0
        keys.append(w.key.encode())
        argv += _write_args(w)
        size += 7 + 2 * len(w.fields) + len(w.delete)
    if keys:
        chunks.append((keys, argv))
    return chunks


def _raise_fenced(replies: Sequence[Any]) -> None:
    """Raise ``OwnerFenced`` naming the registers of every script reply that was fenced."""
    fenced = sorted(
        {
            key.decode()
            for reply in replies
            if isinstance(reply, list) and reply and reply[0] == _FENCED
            for key in reply[1:]
        }
    )
    if fenced:
        raise OwnerFenced(fenced)


def _hash(reply: Any) -> dict[bytes, bytes]:
    """An ``HGETALL`` reply as a dict (RESP2 sends a flat list of fields and values)."""
    if isinstance(reply, dict):
        return reply
    it = iter(reply)
    return dict(zip(it, it, strict=True))


_RECV = 1 << 16  # bytes per receive (_recv)
_REVALIDATIONS_MAX = 1 << 15  # packed revalidations kept (RedisOnlineStore._load_packed)


def _recv(sock: socket.socket) -> bytes:
    """The next bytes ``sock`` received (at most ``_RECV``); socket errors and a closed
    connection as redis-py's."""
    try:
        chunk = sock.recv(_RECV)
    except TimeoutError as exc:
        raise redis.exceptions.TimeoutError("Timeout reading from socket") from exc
    except OSError as exc:
        raise redis.exceptions.ConnectionError(
            f"Error while reading from socket: {exc.args}"
        ) from exc
    if not chunk:
        raise redis.exceptions.ConnectionError("Connection closed by server.")
    return chunk


def _read_resp(sock: socket.socket, count: int) -> _native.RespReplies:
    """Receive ``count`` whole RESP replies from ``sock``, fed to a native index as they
    arrive (``engine._native.RespReplies``); socket errors as redis-py's."""
    replies = _native.RespReplies(count)
    left = count
    while left:
        chunk = _recv(sock)
        try:
            left = replies.feed(chunk)
        except ValueError as exc:
            raise redis.exceptions.InvalidResponse(f"Redis replies: {exc}") from exc
    return replies


@dataclass(frozen=True, slots=True)
class _Prepacked:
    """A script call's arguments already in RESP (``elements`` bulk strings in ``body``,
    then ``tail``)."""

    elements: int
    body: bytes
    tail: bytes = b""


def _hgetalls(keys: Sequence[str]) -> list[bytes]:
    """``HGETALL key`` per key in RESP: the bytes ``_pack`` gives, formatted directly."""
    out = []
    for key in keys:
        name = key.encode()
        out.append(b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n" % (len(name), name))
    return out


def _pack(args: Sequence[bytes]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings (hiredis' packer)."""
    return cast(bytes, hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]  # any arity


def _address(kwargs: dict[str, Any]) -> str:
    """``host:port/db`` (or ``unix:/path/db``) — never credentials."""
    db = kwargs.get("db", 0)
    path = kwargs.get("path")
    if path:
        return f"unix:{path}/{db}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def _password_in(url: str, text: str) -> bool:
    """Whether an error text about ``url`` might echo its userinfo part."""
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    return bool(userinfo) and any(part and part in text for part in userinfo.split(":"))
