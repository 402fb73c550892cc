"""The online store on a Redis Cluster: ``RedisOnlineStore``'s contract over redis-py's cluster client.

redis-py's ``RedisCluster`` keeps the slot map, follows ``MOVED``/``ASK`` and re-reads the
topology after a failover; this module only makes every call cluster-safe (docs/online.md#redis-cluster,
docs/decisions.md):

- **One slot per script call.** A script may touch only keys of one slot, all named in KEYS.
  Entity keys ``sk:<fp>:{<entity>}`` are hash-tagged on the entity, so a batch's writes are
  grouped by slot — one script call per slot (or per ``_WRITE_CHUNK_ARGS`` of it); the
  worker's writes are grouped and packed natively (``Writes.slot_chunks``).
- **Sent directly, redirected by redis-py.** Each call goes to its slot's master in
  redis-py's slot map, packed here, every master's calls in one write on its own pooled
  connection, all masters before any reply is read (one round trip per master, in
  parallel; ``_run_direct``). Only the calls answered ``MOVED``/``ASK``/``TRYAGAIN``/
  ``CLUSTERDOWN``/``NOSCRIPT``, or whose connection failed, go again through redis-py's
  cluster pipeline, which follows redirections and re-reads the topology (every call is
  idempotent). Reads and the take's fence copies likewise. ``direct=False`` sends
  everything through the pipeline (the path before; the benchmark compares the two).
- **Fences per slot.** The owner registers ``sk:own:<group>:<topic>:<p>`` live in one slot
  each, so a write script cannot read them. ``take_epochs`` takes the epoch on the register
  exactly as on one node, then copies it into a *fence hash* in every slot
  (``sk:fence:slot:{<tag>}``, 16,384 small hashes, field = register key, value = epoch; a copy
  only ever grows). Every write script names its slot's fence hash in KEYS and refuses the
  whole call when the copy holds a later epoch than the writer's. ``take_epochs`` returns
  only once every copy is written, so — as on one node — no write of a zombie lands after
  the new owner's take returned.
- **Watermarks on every node.** A single watermark key lives on one node, and a failover
  of another node would lose entity writes without touching it. So each watermark
  ``sk:wm:<fp>:<p>`` also has a copy ``sk:wm:<fp>:<p>:{<tag>}`` in one slot of every other
  master (its lowest slot). The marks are swapped after the batch's entity writes were
  acknowledged; a node's replication stream is ordered, so a replica promoted without some of
  a batch's entity writes also lacks that node's watermark copy. The previous value handed
  back is the worst of the copies (missing beats everything, then the lowest offset), and
  ``engine.stream.recovery`` judges it exactly as on one node. A resharding moves which slot
  is a node's lowest: the new copy is missing, which reads as lost state and triggers a
  (needless but safe) rebuild of the partition.

Scripting is required (a cluster has no ``MULTI`` across slots): a user whose ACL forbids
scripts gets ``OnlineStoreUnavailable`` naming the missing permission.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from connectors.redis_store import (
    _MARK_LUA,
    _REVALIDATE_LUA,
    _TAKE_LUA,
    _WRITE_BODY_LUA,
    _WRITE_CHUNK_ARGS,
    RedisOnlineStore,
    RedisTls,
    _hash,
    _pack,
    _Prepacked,
    _raise_fenced,
    _recv,
    _write_chunks,
)
from engine import _native
from engine.errors import ConfigError, OnlineStoreUnavailable, OnlineWriteConflict
from engine.online import PREFIX, EntityWrites
from engine.online_read import Held
from engine.ports import StateWrite, Watermark
from engine.secrets import Secret, split_url_credentials
from engine.watermarks import decode_watermark

if TYPE_CHECKING:
    from engine.config import Config

__all__ = ["RedisClusterOnlineStore", "fence_key", "slot_tag"]

# One command of the direct path: (its slot, the command packed in RESP)
_Call = tuple[int, bytes]
# A command in redis-py's form for its cluster pipeline: (Lua source or None, arguments)
_Command = tuple[str | None, Sequence[bytes] | _Prepacked]

# The fence of a cluster script: KEYS ends with the slot's fence hash, ARGV with n (register
# key, epoch) pairs and n. A copy holding a later epoch refuses the whole call and names the
# register; a missing or earlier copy passes (a take still copying, or Redis lost the copy:
# the watermarks catch lost state).
_CLUSTER_FENCE_LUA = """
local nfence = tonumber(ARGV[#ARGV])
local stale = {}
for j = #ARGV - 2 * nfence, #ARGV - 1, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[#KEYS], ARGV[j]))
  if cur and cur > tonumber(ARGV[j + 1]) then stale[#stale + 1] = ARGV[j] end
end
if #stale > 0 then
  table.insert(stale, 1, 'fenced')
  return stale
end
"""
_LOOP = "for i = 1, #KEYS do"
assert _WRITE_BODY_LUA.count(_LOOP) == 1
# The entity writes of one slot: ``_WRITE_LUA``'s body over every key but the fence hash.
_CLUSTER_WRITE_LUA = _CLUSTER_FENCE_LUA + _WRITE_BODY_LUA.replace(_LOOP, "for i = 1, #KEYS - 1 do")
# One watermark swap: KEYS = (watermark, fence hash), ARGV = (value, fence...).
_CLUSTER_MARK_LUA = _CLUSTER_FENCE_LUA + "\nreturn redis.call('SET', KEYS[1], ARGV[1], 'GET')\n"
# A take's epochs copied into one slot's fence hash; a copy only ever grows.
_COPY_LUA = """
for j = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[j]))
  if not cur or cur < tonumber(ARGV[j + 1]) then redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1]) end
end
return 1
"""
_SCRIPTS = (_CLUSTER_WRITE_LUA, _CLUSTER_MARK_LUA, _COPY_LUA, _TAKE_LUA, _REVALIDATE_LUA)
assert _MARK_LUA  # the one-node mark script; the cluster swaps one key per call instead

_TAGS: list[bytes] = []
_TAGS_LOCK = threading.Lock()


def slot_tag(slot: int) -> str:
    """A short hash tag whose CRC16 lands in ``slot`` (the first such hex number)."""
    if not _TAGS:
        with _TAGS_LOCK:
            if not _TAGS:
                tags: list[bytes | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
                left, i = REDIS_CLUSTER_HASH_SLOTS, 0
                while left:
                    text = b"%x" % i
                    s = _native.key_slot(text)
                    if tags[s] is None:
                        tags[s] = text
                        left -= 1
                    i += 1
                _TAGS.extend(t for t in tags if t is not None)
    return _TAGS[slot].decode()


def fence_key(slot: int) -> str:
    """The fence hash of one slot: a copy of every owner register's epoch."""
    return f"{PREFIX}:fence:slot:{{{slot_tag(slot)}}}"  # not sk:<fp>:{…}: no entity key


_FENCES: list[tuple[bytes, bytes]] = []  # per slot: (fence hash name, as a RESP bulk string)
_FENCES_LOCK = threading.Lock()


def _fences() -> list[tuple[bytes, bytes]]:
    if not _FENCES:
        with _FENCES_LOCK:
            if not _FENCES:
                names = [fence_key(slot).encode() for slot in range(REDIS_CLUSTER_HASH_SLOTS)]
                _FENCES.extend((n, b"$%d\r\n%s\r\n" % (len(n), n)) for n in names)
    return _FENCES


def _sha(lua: str) -> bytes:
    return hashlib.sha1(lua.encode()).hexdigest().encode()


def _worst(values: Sequence[bytes | None]) -> bytes | None:
    """The previous watermark of one mark from its copies: a missing copy, else one that is
    not an offset, else the lowest offset (all equal when Redis lost nothing)."""
    if any(v is None for v in values):
        return None
    present = [v for v in values if v is not None]
    offsets = [(decode_watermark(v), v) for v in present]
    for offset, v in offsets:
        if offset is None:
            return v
    return min(offsets, key=lambda pair: pair[0] or 0)[1]


class RedisClusterOnlineStore(RedisOnlineStore):
    """Entity state hashes in a Redis Cluster (database 0), for workers and online reads.

    ``nodes`` are ``host:port`` startup nodes (any few masters or replicas; redis-py reads
    the rest of the topology from them). Credentials and TLS as ``RedisOnlineStore``. The
    client connects on first use; a node that stops answering is retried with backoff while
    redis-py re-reads the slot map (a failover), then ``OnlineStoreUnavailable`` is raised
    and the worker backs off as for a single Redis.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        username: str | None = None,
        password: Secret | str | None = None,
        tls: RedisTls | None = None,
        socket_timeout_ms: int = 5_000,
        connect_timeout_ms: int = 2_000,
        max_connections: int = 64,
        client_name: str | None = "skewless",
        direct: bool = True,
    ) -> None:
        if not nodes:
            raise ConfigError("redis.cluster is on but no startup node is given (redis.nodes)")
        startup: list[ClusterNode] = []
        for node in nodes:
            host, sep, port = node.rpartition(":")
            if not sep or not port.isdigit():
                raise ConfigError(f"redis.nodes: expected host:port, got {node!r}")
            startup.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]  # untyped in redis-py
        secret = Secret(password) if isinstance(password, str) else password
        self._kwargs: dict[str, Any] = {
            "startup_nodes": startup,
            "decode_responses": False,
            "socket_timeout": socket_timeout_ms / 1000,
            "socket_connect_timeout": connect_timeout_ms / 1000,
            "socket_keepalive": True,
            "max_connections": max_connections,
            "client_name": client_name,
            # a failover takes about cluster-node-timeout plus an election: ride it out
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=6),
        }
        if username:
            self._kwargs["username"] = username
        if secret:
            self._kwargs["password"] = secret.reveal()
        if tls is not None:
            self._kwargs["ssl"] = True
            self._kwargs.update(tls.client_kwargs())
        self._lock = threading.Lock()
        self._cluster: RedisCluster | None = None
        self._secrets = tuple(s for s in (secret.reveal() if secret else None,) if s)
        self.user = username or "default"
        self.address = "cluster " + ",".join(nodes) + (" (TLS)" if tls is not None else "")
        self._scripts_allowed = True
        self._shas: dict[str, bytes] = {}
        self._revalidations: dict[tuple[str, Held], bytes] = {}
        # True: commands packed here and sent on each master's own connection, only the
        # redirected ones through redis-py's cluster pipeline; False: every command through
        # the pipeline (the path before; benchmarks/cluster_writes.py compares the two)
        self.direct = direct

    @classmethod
    def from_config(cls, config: Config) -> RedisClusterOnlineStore:
        """The cluster of ``config.redis_nodes`` (or ``redis_url``'s host:port)."""
        nodes = list(config.redis_nodes)
        if not nodes:
            url = split_url_credentials(config.redis_url)[0]
            hostport = url.partition("://")[2].partition("/")[0]
            nodes = [hostport if ":" in hostport else f"{hostport or '127.0.0.1'}:6379"]
        return cls(
            nodes,
            username=config.redis_username or None,
            password=config.redis_password,
            tls=RedisTls.from_config(config),
        )

    def __repr__(self) -> str:
        return f"RedisClusterOnlineStore({self.address!r})"

    @property
    def _client(self) -> RedisCluster:  # type: ignore[override]  # a cluster, not one Redis
        cluster = self._cluster
        if cluster is None:
            with self._lock:
                if self._cluster is None:
                    try:
                        self._cluster = RedisCluster(**self._kwargs)
                    except redis.exceptions.RedisError as exc:
                        self._unavailable("CLUSTER SLOTS", exc)
                    except redis.exceptions.RedisClusterException as exc:
                        self._unavailable("CLUSTER SLOTS", redis.exceptions.ConnectionError(exc))
                cluster = self._cluster
        assert cluster is not None
        return cluster

    # -- commands through the cluster pipeline ------------------------------------------------

    def _run_packed(
        self, commands: Sequence[tuple[str | None, Sequence[bytes] | _Prepacked]]
    ) -> list[Any]:
        """Each command routed by its first key (a script's: its first KEYS, all in one
        slot), every master's share sent at once on its own connection (``_run_direct``).
        Raises the first error reply."""
        if not self.direct:
            return self._run_pipelined(commands)
        calls: list[_Call] = []
        for lua, args in commands:
            assert not isinstance(args, _Prepacked)  # only the one-node write packs natively
            if lua is None:
                calls.append((_native.key_slot(args[1]), _pack(args)))
            else:
                calls.append(
                    (_native.key_slot(args[1]), _pack((b"EVALSHA", self._sha(lua), *args)))
                )
        return self._run_direct(calls, lambda i: commands[i])

    def _run_direct(self, calls: Sequence[_Call], command: Callable[[int], _Command]) -> list[Any]:
        """Send each call to the master of its slot in redis-py's slot map: every master's
        calls joined into one write on one of its pooled connections, all masters before
        any reply is read (one round trip per master, in parallel). The calls that come
        back redirected or refused by a cluster in flux (``MOVED``, ``ASK``, ``TRYAGAIN``,
        ``CLUSTERDOWN``), missing their script, or whose connection failed, go again as
        ``command(i)`` through redis-py's cluster pipeline (``_run_pipelined``), which
        follows the redirection and re-reads the slot map — every caller's calls are
        idempotent. Raises the first error reply."""
        cluster = self._client
        slots = cluster.nodes_manager.slots_cache
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        again: list[int] = []
        for i, (slot, _) in enumerate(calls):
            nodes = slots.get(slot)
            if not nodes:
                again.append(i)
                continue
            entry = by_node.get(nodes[0].name)
            if entry is None:
                entry = by_node[nodes[0].name] = (nodes[0], [])
            entry[1].append(i)
        replies: list[Any] = [None] * len(calls)
        sent: list[tuple[Any, Any, list[int]]] = []
        try:
            for node, indices in by_node.values():
                pool = cluster.get_redis_connection(node).connection_pool
                try:
                    conn = pool.get_connection()
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    again += indices  # the node is down: redis-py's retries and slot map
                    continue
                try:
                    conn.send_packed_command([b"".join([calls[i][1] for i in indices])])  # type: ignore[no-untyped-call]  # untyped in redis-py
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    conn.disconnect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                    pool.release(conn)
                    again += indices
                    continue
                except BaseException:
                    conn.disconnect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                    pool.release(conn)
                    raise
                sent.append((pool, conn, indices))
            while sent:
                pool, conn, indices = sent[0]
                got: list[Any] = []  # one reply per call, errors included
                try:
                    _read_replies(conn, len(indices), got)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    conn.disconnect()
                    again += indices[len(got) :]  # applied or not: sent again, idempotent
                for i, reply in zip(indices, got, strict=False):
                    replies[i] = reply
                sent.pop(0)
                pool.release(conn)
        finally:
            for pool, conn, _ in sent:  # interrupted: their replies are not read
                conn.disconnect()
                pool.release(conn)
        again += [i for i, reply in enumerate(replies) if isinstance(reply, _SEND_AGAIN)]
        if any(isinstance(replies[i], redis.exceptions.NoScriptError) for i in again):
            self._load_scripts()  # a promoted replica or a restarted master: no scripts
        if again:
            again.sort()
            redone = self._run_pipelined([command(i) for i in again])
            for i, reply in zip(again, redone, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _run_pipelined(
        self, commands: Sequence[tuple[str | None, Sequence[bytes] | _Prepacked]]
    ) -> list[Any]:
        """Through redis-py's cluster pipeline: each command routed by its keys (scripts by KEYS: one slot each), every node's
        share sent at once; a script missing on a node (a promoted replica) is loaded on
        every master and the batch sent again. Raises the first error reply."""
        for attempt in (0, 1):
            pipe = self._client.pipeline()  # type: ignore[no-untyped-call]  # untyped in redis-py
            for lua, args in commands:
                assert not isinstance(args, _Prepacked)  # only the one-node write packs natively
                if lua is None:  # redis-py routes by the command's name: a str
                    pipe.execute_command(args[0].decode(), *args[1:])
                else:
                    pipe.execute_command("EVALSHA", self._sha(lua), *args)
            try:
                replies = pipe.execute(raise_on_error=False)
            except redis.exceptions.RedisClusterException as exc:
                raise redis.exceptions.ConnectionError(str(exc)) from exc
            finally:
                pipe.reset()
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self._load_scripts()
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return list(replies)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sha(self, lua: str) -> bytes:
        sha = self._shas.get(lua)
        if sha is None:
            sha = self._shas[lua] = _sha(lua)
        return sha

    def _load_scripts(self) -> None:
        for lua in _SCRIPTS:
            self._client.script_load(lua)  # every master (redis-py's routing of SCRIPT LOAD)

    def _scripted(self, call: Any, what: str) -> Any:
        try:
            return call()
        except redis.exceptions.RedisError as exc:
            self._unavailable(what, exc)

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        if not keys:
            return []
        names = [key.encode() for key in keys]
        try:
            if self.direct:
                calls = [
                    (_native.key_slot(n), b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n" % (len(n), n))
                    for n in names
                ]
                replies = self._run_direct(calls, lambda i: (None, (b"HGETALL", names[i])))
            else:
                replies = self._run_pipelined([(None, (b"HGETALL", n)) for n in names])
        except redis.exceptions.RedisError as exc:
            self._unavailable("HGETALL", exc)
        return [_hash(reply) for reply in replies]

    def load_watermarked(
        self, keys: Sequence[str], marks: Sequence[str]
    ) -> tuple[list[dict[bytes, bytes]], list[bytes | None]]:
        """``RedisOnlineStore.load_watermarked`` on a cluster: each watermark read from every
        copy (one per master, each read after that node's hashes: the pipeline keeps a node's
        commands in order), the worst copy returned, as ``write`` judges its swaps."""
        commands: list[tuple[str | None, Sequence[bytes]]] = [
            (None, (b"HGETALL", key.encode())) for key in keys
        ]
        spans: list[int] = []
        copies = self._mark_copies() if marks else []
        for mark in marks:
            names = self._copy_names(mark, copies)
            spans.append(len(names))
            commands.extend((None, (b"GET", name.encode())) for name in names)
        if not commands:
            return [], []
        try:
            replies = self._run_packed(commands)
        except redis.exceptions.RedisError as exc:
            self._unavailable("HGETALL", exc)
        hashes = [_hash(reply) for reply in replies[: len(keys)]]
        out: list[bytes | None] = []
        at = len(keys)
        for span in spans:
            out.append(
                _worst([r if isinstance(r, bytes) else None for r in replies[at : at + span]])
            )
            at += span
        return hashes, out

    def invalidations(self) -> None:
        """None: a ReadCache over the cluster revalidates held entities in the read's round
        trip (tracking would need a connection per master, made again as slots move;
        docs/online.md#readcache-and-invalidation)."""
        return None

    def load_and_probe_resp(
        self, keys: Sequence[str], held: Sequence[Held | None], probes: Sequence[str]
    ) -> _native.RespReplies | None:
        """None: a cluster's replies come from several sockets, so the reader takes
        ``load_and_probe`` (the same replies as Python objects)."""
        return None

    # -- writes -------------------------------------------------------------------------------

    def write(
        self,
        writes: Sequence[StateWrite],
        marks: Sequence[Watermark] = (),
        *,
        fence: Sequence[tuple[str, int]] = (),
    ) -> list[bytes | None]:
        """``RedisOnlineStore.write`` on a cluster: the entity writes grouped by slot (one
        script call per slot and chunk, fenced by the slot's fence hash), all nodes at
        once; then, once they are acknowledged, the watermarks and their copies on every
        master. Returns each mark's previous value (the worst of its copies)."""
        if not writes and not marks:
            return []
        suffix = [b for key, epoch in fence for b in (key.encode(), b"%d" % epoch)]
        suffix.append(b"%d" % len(fence))
        refused: list[str] = []
        if writes:
            write = self._write_direct if self.direct else self._write_pipelined
            refused = self._scripted(lambda: write(writes, suffix), "write (EVALSHA)")
        previous = self._swap_marks(marks, suffix) if marks else []
        if refused:
            raise OnlineWriteConflict(refused, previous)
        return previous

    def _write_direct(self, writes: Sequence[StateWrite], suffix: list[bytes]) -> list[str]:
        """The entity writes, one script call per slot and chunk (``_run_direct``): the
        native core's writes grouped and packed natively (``EntityWrites.slot_chunks``),
        the rest grouped here; raises ``OwnerFenced``, returns the refused keys."""
        sha = self._sha(_CLUSTER_WRITE_LUA)
        tail = b"".join([b"$%d\r\n%s\r\n" % (len(b), b) for b in suffix])
        fences = _fences()
        order: list[int] = []
        native: list[tuple[int, int, int, int, bytes, bytes]] = []
        rest: Sequence[StateWrite] = writes
        if isinstance(writes, EntityWrites):
            order, native = writes.slot_chunks(_WRITE_CHUNK_ARGS)
            rest = writes.extra
        calls: list[_Call] = []
        for slot, elements, _, count, keys, args in native:
            numkeys = b"%d" % (count + 1)
            calls.append((slot, b"".join((
                b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (elements + 4 + len(suffix), len(sha), sha, len(numkeys), numkeys),
                keys, fences[slot][1], args, tail))))  # fmt: skip
        by_slot: dict[int, list[StateWrite]] = {}
        for w in rest:  # a linked write shares its lead's hash tag: its slot
            by_slot.setdefault(_native.key_slot(w.key.encode()), []).append(w)
        chunks = [(slot, k, a) for slot, group in by_slot.items()
                  for k, a in _write_chunks(group, _WRITE_CHUNK_ARGS)]  # fmt: skip
        calls += ((slot, _pack((b"EVALSHA", sha, b"%d" % (len(k) + 1), *k, fences[slot][0], *a,
                                *suffix))) for slot, k, a in chunks)  # fmt: skip

        def command(i: int) -> _Command:  # call i as redis-py's cluster pipeline takes it
            if i < len(native):
                slot, _, first, count, _, _ = native[i]
                group = [writes[j] for j in order[first : first + count]]
                k, a = _write_chunks(group, 1 << 62)[0]  # the same writes: one call
            else:
                slot, k, a = chunks[i - len(native)]
            return (_CLUSTER_WRITE_LUA, (b"%d" % (len(k) + 1), *k, fences[slot][0], *a, *suffix))

        replies = self._run_direct(calls, command)
        _raise_fenced(replies)
        refused = [
            writes.key(order[first + int(i) - 1])  # type: ignore[attr-defined]  # EntityWrites
            for (_, _, first, _, _, _), reply in zip(native, replies, strict=False)
            for i in reply
        ]
        refused += [
            k[int(i) - 1].decode()
            for (_, k, _), reply in zip(chunks, replies[len(native) :], strict=True)
            for i in reply
        ]
        return refused

    def _write_pipelined(self, writes: Sequence[StateWrite], suffix: list[bytes]) -> list[str]:
        """``_write_direct`` through redis-py's cluster pipeline, the writes grouped in
        Python (the path before; ``direct=False``)."""
        by_slot: dict[int, list[StateWrite]] = {}
        for w in writes:  # native writes become StateWrites here: grouped by slot in Python
            by_slot.setdefault(key_slot(w.key.encode()), []).append(w)
        chunks: list[tuple[list[bytes], list[bytes]]] = []
        for slot, group in by_slot.items():  # a linked write shares its lead's hash tag
            fence_name = fence_key(slot).encode()
            chunks += (([*k, fence_name], a) for k, a in _write_chunks(group, _WRITE_CHUNK_ARGS))
        replies = self._run_pipelined(
            [(_CLUSTER_WRITE_LUA, (b"%d" % len(k), *k, *a, *suffix)) for k, a in chunks]
        )
        _raise_fenced(replies)
        return [
            keys_[int(i) - 1].decode()
            for (keys_, _), reply in zip(chunks, replies, strict=True)
            for i in reply
        ]

    def _swap_marks(self, marks: Sequence[Watermark], suffix: list[bytes]) -> list[bytes | None]:
        copies = self._mark_copies()
        commands: list[tuple[str | None, Sequence[bytes]]] = []
        spans: list[int] = []
        for mark in marks:
            names = self._copy_names(mark.key, copies)
            spans.append(len(names))
            for name in names:
                key = name.encode()
                fence_name = fence_key(key_slot(key)).encode()
                commands.append((_CLUSTER_MARK_LUA, (b"2", key, fence_name, mark.value, *suffix)))
        replies = self._scripted(lambda: self._run_packed(commands), "watermarks (EVALSHA)")
        _raise_fenced(replies)
        out: list[bytes | None] = []
        at = 0
        for span in spans:
            got = replies[at : at + span]
            at += span
            out.append(_worst([r if isinstance(r, bytes) else None for r in got]))
        return out

    def _copy_names(self, key: str, copies: list[tuple[str, int]]) -> list[str]:
        """A watermark's key and the keys of its copies on every other master."""
        own = self._node_of(key_slot(key.encode()))
        return [key, *(f"{key}:{{{slot_tag(s)}}}" for node, s in copies if node != own)]

    def _mark_copies(self) -> list[tuple[str, int]]:
        """(master name, its lowest slot) per master of the current slot map."""
        lowest: dict[str, int] = {}
        get = self._client.nodes_manager.slots_cache.get
        for slot in range(REDIS_CLUSTER_HASH_SLOTS):  # in order: the first seen is the lowest
            nodes = get(slot)
            if nodes and nodes[0].name not in lowest:
                lowest[nodes[0].name] = slot
        return sorted(lowest.items(), key=lambda pair: pair[1])

    def _node_of(self, slot: int) -> str:
        nodes = self._client.nodes_manager.slots_cache.get(slot) or []
        return nodes[0].name if nodes else ""

    def take_epochs(
        self, keys: Sequence[str], generation: int, floors: Sequence[int]
    ) -> list[int | None]:
        """``RedisOnlineStore.take_epochs`` register by register (each its own slot), then the
        epochs taken copied into every slot's fence hash before this returns."""
        if not keys:
            return []
        takes: list[tuple[str | None, Sequence[bytes]]] = [
            (_TAKE_LUA, (b"1", key.encode(), b"%d" % generation, b"%d" % floor))
            for key, floor in zip(keys, floors, strict=True)
        ]
        got = self._scripted(lambda: self._run_packed(takes), "owner epoch take")
        epochs = [int(reply[0]) for reply in got]
        pairs = [b for key, e in zip(keys, epochs, strict=True) if e > 0
                 for b in (key.encode(), b"%d" % e)]  # fmt: skip
        if pairs and self.direct:  # one packed command per slot, all sent as in write
            fences = _fences()
            sha = self._sha(_COPY_LUA)
            head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$1\r\n1\r\n" % (
                4 + len(pairs), len(sha), sha)  # fmt: skip
            tail = b"".join([b"$%d\r\n%s\r\n" % (len(b), b) for b in pairs])
            calls = [(slot, head + fences[slot][1] + tail) for slot in range(len(fences))]
            self._scripted(
                lambda: self._run_direct(
                    calls, lambda i: (_COPY_LUA, (b"1", fences[i][0], *pairs))
                ),
                "owner epoch fence copies",
            )
        elif pairs:
            copies: list[tuple[str | None, Sequence[bytes]]] = [
                (_COPY_LUA, (b"1", fence_key(slot).encode(), *pairs))
                for slot in range(REDIS_CLUSTER_HASH_SLOTS)
            ]
            self._scripted(lambda: self._run_pipelined(copies), "owner epoch fence copies")
        return [e if e > 0 else None for e in epochs]

    # -- operations ---------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            return bool(self._client.ping(target_nodes=RedisCluster.PRIMARIES))
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            self._unavailable("PING", _as_redis_error(exc))

    def server_usage(self) -> tuple[int, int]:
        """(bytes of memory the masters use, keys in the cluster)."""
        try:
            primaries = RedisCluster.PRIMARIES
            info = self._client.info("memory", target_nodes=primaries)
            size = self._client.dbsize(target_nodes=primaries)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            self._unavailable("INFO", _as_redis_error(exc))
        if isinstance(info, dict) and "used_memory" not in info:
            used = sum(int(part["used_memory"]) for part in info.values())
        else:
            used = int(info["used_memory"])
        return used, int(size)

    def scan_keys(self, pattern: str) -> Iterator[str]:
        """Keys matching a glob ``pattern`` on every master, by SCAN."""
        try:
            for key in self._client.scan_iter(match=pattern, count=1000):
                yield key.decode("utf-8") if isinstance(key, bytes) else str(key)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            self._unavailable("SCAN", _as_redis_error(exc))

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None

    def _unavailable(self, what: str, exc: redis.exceptions.RedisError) -> NoReturn:
        if isinstance(exc, redis.exceptions.NoPermissionError):
            raise OnlineStoreUnavailable(
                f"Redis at {self.address} failed ({what}): {self._redact(str(exc))}; on a "
                f"Redis Cluster the user {self.user!r} must be allowed scripts (EVALSHA, "
                "SCRIPT LOAD) besides HGETALL, SET, EXISTS, SCAN, UNLINK"
            ) from exc
        if isinstance(exc, _FAILING_OVER):
            raise OnlineStoreUnavailable(
                f"Redis at {self.address} failed ({what}): {self._redact(str(exc))}; the "
                "cluster is failing over or some slots have no master (CLUSTER INFO, "
                "CLUSTER NODES); the worker retries with backoff"
            ) from exc
        super()._unavailable(what, exc)


# Replies of the direct path that redis-py's cluster pipeline gets to handle: redirections,
# a cluster in flux, a script missing on a node
_SEND_AGAIN = (
    redis.exceptions.AskError,  # MovedError is an AskError
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.NoScriptError,
)

# Replies of a cluster in the middle of a failover or a resharding that redis-py gave up on
_FAILING_OVER = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterError,
)


def _read_replies(conn: Any, count: int, out: list[Any]) -> None:
    """Append ``count`` replies read from redis-py connection ``conn`` to ``out``, error
    replies as redis-py's exceptions (``MovedError``, ``NoScriptError``…), not raised. With
    hiredis' parser and nothing buffered in it, the socket is read into one hiredis reader
    (not ``read_response`` per reply: its Python layers cost more than the reply); socket
    errors raise as redis-py's (the caller drops the connection), ``out`` holding the
    replies read before."""
    parser = getattr(conn, "_parser", None)
    has_data = getattr(getattr(parser, "_reader", None), "has_data", None)
    sock = getattr(parser, "_sock", None)
    if has_data is None or sock is None or has_data():
        for _ in range(count):
            try:
                out.append(conn.read_response())
            except redis.exceptions.ResponseError as exc:
                out.append(exc)
        return
    reader = hiredis.Reader(
        protocolError=redis.exceptions.InvalidResponse,
        replyError=parser.parse_error,  # type: ignore[union-attr]
    )
    while len(out) < count:
        reader.feed(_recv(sock))
        while len(out) < count:
            reply = reader.gets()
            if reply is False:
                break
            out.append(reply)


def _as_redis_error(exc: Exception) -> redis.exceptions.RedisError:
    if isinstance(exc, redis.exceptions.RedisError):
        return exc
    return redis.exceptions.ConnectionError(str(exc))
