"""The online store on a Redis Cluster: ``RedisOnlineStore``'s contract over redis-py's cluster client.

redis-py's ``RedisCluster`` keeps the slot map, follows ``MOVED``/``ASK`` and re-reads the
topology after a failover; this module only makes every call cluster-safe (docs/online.md#redis-cluster,
docs/decisions.md):

- **One slot per script call.** A script may touch only keys of one slot, all named in KEYS.
  Entity keys ``sk:<fp>:{<entity>}`` are hash-tagged on the entity, so a batch's writes are
  grouped by slot — one script call per slot (or per ``_WRITE_CHUNK_ARGS`` of it) — and the
  calls go out through the cluster pipeline: every node gets its calls in one write, all
  nodes before any reply is read (one round trip per node, in parallel). Reads likewise.
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
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

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
    _Prepacked,
    _raise_fenced,
    _write_chunks,
)
from engine import _native
from engine.errors import ConfigError, OnlineStoreUnavailable, OnlineWriteConflict
from engine.online import PREFIX
from engine.online_read import Held
from engine.ports import StateWrite, Watermark
from engine.secrets import Secret, split_url_credentials
from engine.watermarks import decode_watermark

if TYPE_CHECKING:
    from engine.config import Config

__all__ = ["RedisClusterOnlineStore", "fence_key", "slot_tag"]

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
                    s = key_slot(text)
                    if tags[s] is None:
                        tags[s] = text
                        left -= 1
                    i += 1
                _TAGS.extend(t for t in tags if t is not None)
    return _TAGS[slot].decode()


def fence_key(slot: int) -> str:
    """The fence hash of one slot: a copy of every owner register's epoch."""
    return f"{PREFIX}:fence:slot:{{{slot_tag(slot)}}}"  # not sk:<fp>:{…}: no entity key


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
        """Each command routed by its keys (scripts by KEYS: one slot each), every node's
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
        try:
            replies = self._run_packed([(None, (b"HGETALL", key.encode())) for key in keys])
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
        by_slot: dict[int, list[StateWrite]] = {}
        for w in writes:  # native writes become StateWrites here: grouped by slot in Python
            by_slot.setdefault(key_slot(w.key.encode()), []).append(w)
        chunks: list[tuple[list[bytes], list[bytes]]] = []
        for slot, group in by_slot.items():  # a linked write shares its lead's hash tag
            fence_name = fence_key(slot).encode()
            chunks += (([*k, fence_name], a) for k, a in _write_chunks(group, _WRITE_CHUNK_ARGS))
        refused: list[str] = []
        if chunks:
            replies = self._scripted(
                lambda: self._run_packed(
                    [(_CLUSTER_WRITE_LUA, (b"%d" % len(k), *k, *a, *suffix)) for k, a in chunks]
                ),
                "write (EVALSHA)",
            )
            _raise_fenced(replies)
            refused = [
                keys_[int(i) - 1].decode()
                for (keys_, _), reply in zip(chunks, replies, strict=True)
                for i in reply
            ]
        previous = self._swap_marks(marks, suffix) if marks else []
        if refused:
            raise OnlineWriteConflict(refused, previous)
        return previous

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
        cache = self._client.nodes_manager.slots_cache
        for slot in sorted(cache):
            nodes = cache[slot]
            if nodes:
                lowest.setdefault(nodes[0].name, slot)
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
        if pairs:
            copies: list[tuple[str | None, Sequence[bytes]]] = [
                (_COPY_LUA, (b"1", fence_key(slot).encode(), *pairs))
                for slot in range(REDIS_CLUSTER_HASH_SLOTS)
            ]
            self._scripted(lambda: self._run_packed(copies), "owner epoch fence copies")
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


# Replies of a cluster in the middle of a failover or a resharding that redis-py gave up on
_FAILING_OVER = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterError,
)


def _as_redis_error(exc: Exception) -> redis.exceptions.RedisError:
    if isinstance(exc, redis.exceptions.RedisError):
        return exc
    return redis.exceptions.ConnectionError(str(exc))
