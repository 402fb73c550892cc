"""Cluster writes while a slot moves between masters (docs/online.md#redis-cluster).

The cluster store sends each master its calls directly, from redis-py's slot map, and hands
only the calls that come back redirected (``MOVED``, ``ASK``, ``TRYAGAIN``) to redis-py's
cluster pipeline. Here a slot is resharded by hand (``CLUSTER SETSLOT … MIGRATING`` /
``IMPORTING``, ``MIGRATE``, ``SETSLOT … NODE``) between batches of a store whose slot map
is stale: every write lands once, on the slot's new master (none left behind on the old
one), only the moved slot's calls take redis-py's path, and the moved fence hash still
refuses a zombie. The cluster pass only (``SKEWLESS_REDIS_CLUSTER_NODES``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from connectors.redis_cluster_store import RedisClusterOnlineStore, fence_key, slot_tag
from engine import _native
from engine.errors import OwnerFenced
from engine.online import EntityWrites
from engine.ports import StateWrite, Watermark
from tests.stream_harness import cluster_nodes, flush_redis, raw_redis

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

REGISTER = "sk:own:reshard:t:0"


def _client(address: str) -> redis.Redis:
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port), socket_timeout=5)


def _cmd(node: redis.Redis, *args: Any) -> Any:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py


def _masters(cluster: Any) -> list[tuple[str, str, list[int]]]:
    """(address, node id, its slots' first bounds) of every master serving slots."""
    out = []
    for addr, info in cluster.cluster_nodes().items():
        if "master" in info["flags"] and info["slots"] and "fail" not in info["flags"]:
            out.append((addr.split("@")[0], info["node_id"], [int(r[0]) for r in info["slots"]]))
    return sorted(out, key=lambda m: min(m[2]))


def _move(slot: int, src: tuple[str, str], dst: tuple[str, str], *, finish: bool,
          every: Sequence[str]) -> None:  # fmt: skip
    """Move ``slot``'s keys from master ``src`` to ``dst`` ((address, node id) each); with
    ``finish`` the slot is then assigned to ``dst`` on every master, else it stays
    migrating (the old master answers ``ASK`` for the keys it no longer has)."""
    source, target = _client(src[0]), _client(dst[0])
    try:
        _cmd(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", src[1])
        _cmd(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst[1])
        keys = _cmd(source, "CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys:
            host, _, port = dst[0].rpartition(":")
            _cmd(source, "MIGRATE", host, int(port), "", 0, 5000, "KEYS", *keys)
        if finish:
            for address in every:
                node = _client(address)
                try:
                    _cmd(node, "CLUSTER", "SETSLOT", slot, "NODE", dst[1])
                finally:
                    node.close()
    finally:
        source.close()
        target.close()


@pytest.fixture
def cluster() -> Iterator[Any]:
    if not cluster_nodes():
        pytest.skip("the Redis Cluster pass only (SKEWLESS_REDIS_CLUSTER_NODES)")
    client = raw_redis("")
    flush_redis(client)
    masters = _masters(client)
    assert len(masters) >= 2
    # a slot of the first master that is not its lowest (that one holds the watermark copy)
    slot = min(masters[0][2]) + 100
    home = (masters[0][0], masters[0][1])
    yield client, slot, home, (masters[1][0], masters[1][1]), [m[0] for m in masters]
    # the slot back home, whatever state the test left it in
    for address in [m[0] for m in masters]:
        node = _client(address)
        try:
            _cmd(node, "CLUSTER", "SETSLOT", slot, "STABLE")
        finally:
            node.close()
    client.nodes_manager.initialize()
    owner = client.nodes_manager.get_node_from_slot(slot)
    if owner.name != home[0]:
        ids = {m[0]: m[1] for m in masters}
        _move(slot, (owner.name, ids[owner.name]), home, finish=True, every=[m[0] for m in masters])
    flush_redis(client)
    client.close()


def _writes(slot: int, round_: int, native: bool) -> Sequence[StateWrite]:
    """Three views' writes of one entity in ``slot`` and 40 entities elsewhere."""
    tag = slot_tag(slot)
    fields = {"f:0": b"%d" % round_, "t:0:1000:1": b"v%d" % round_}
    out = [StateWrite(key=f"sk:reshard{v}:{{{tag}}}", fields=fields) for v in range(3)]
    out += [
        StateWrite(key=f"sk:reshard0:{{e{i}}}", fields={"f:0": b"%d" % round_}) for i in range(40)
    ]
    assert all(_native.key_slot(w.key.encode()) == slot for w in out[:3])
    if not native:
        return out
    raw = [(w.key, dict(w.fields), list(w.delete), w.expire_at_ms, w.expect) for w in out]
    return EntityWrites(_native.Writes.from_list(raw))


class _Counting(RedisClusterOnlineStore):
    """Records the calls handed to redis-py's cluster pipeline."""

    redone: list[Any]

    def _run_pipelined(self, commands: Any) -> list[Any]:
        self.redone.extend(commands)
        return super()._run_pipelined(commands)


def _store() -> _Counting:
    store = _Counting(cluster_nodes())
    store.redone = []
    return store


def _slots_redone(store: _Counting) -> list[int]:
    return [_native.key_slot(args[1]) for _, args in store.redone]


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_writes_follow_a_moved_slot_exactly_once(cluster: Any, native: bool) -> None:
    client, slot, home, away, every = cluster
    store = _store()
    fence = [(REGISTER, store.take_epochs([REGISTER], 1, [0])[0] or 0)]
    marks = [Watermark(key="sk:wm:reshard0:0", value=b"1")]
    store.write(_writes(slot, 1, native), marks, fence=fence)
    store.redone.clear()
    assert client.hget(f"sk:reshard0:{{{slot_tag(slot)}}}", "f:0") == b"1"

    # half way: the slot's keys (the fence hash among them) moved, the slot still migrating
    _move(slot, home, away, finish=False, every=every)
    previous = store.write(_writes(slot, 2, native), marks, fence=fence)
    assert previous == [b"1"]
    assert store.redone and set(_slots_redone(store)) == {slot}  # ASK: only the moved slot

    # done: the slot belongs to the other master, the store's map still says otherwise
    _move(slot, home, away, finish=True, every=every)
    store.redone.clear()
    store.write(_writes(slot, 3, native), marks, fence=fence)
    assert store.redone and set(_slots_redone(store)) == {slot}  # MOVED: only that slot
    store.redone.clear()
    store.write(_writes(slot, 4, native), marks, fence=fence)
    assert store.redone == []  # redis-py's slot map was refreshed: all direct again

    for key in [*(f"sk:reshard{v}:{{{slot_tag(slot)}}}" for v in range(3)),
                *(f"sk:reshard0:{{e{i}}}" for i in range(40))]:  # fmt: skip
        assert client.hget(key, "f:0") == b"4", key
    old = _client(home[0])
    try:  # nothing written behind the migration on the old master
        assert _cmd(old, "CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        old.close()
    assert client.hget(fence_key(slot), REGISTER) == b"%d" % fence[0][1]
    store.close()


def test_a_moved_fence_hash_still_refuses_a_zombie(cluster: Any) -> None:
    client, slot, home, away, every = cluster
    zombie = _store()
    fence = [(REGISTER, zombie.take_epochs([REGISTER], 1, [0])[0] or 0)]
    zombie.write(_writes(slot, 1, True), fence=fence)

    _move(slot, home, away, finish=True, every=every)
    owner = RedisClusterOnlineStore(cluster_nodes())  # a new owner takes the partition
    assert owner.take_epochs([REGISTER], 2, [0]) == [fence[0][1] + 1]
    assert client.hget(fence_key(slot), REGISTER) == b"%d" % (fence[0][1] + 1)

    zombie.redone.clear()
    only_moved = list(_writes(slot, 2, False)[:3])  # the moved slot's writes only
    with pytest.raises(OwnerFenced):
        zombie.write(only_moved, fence=fence)
    assert zombie.redone  # the zombie's stale map sent it to the old master first
    with pytest.raises(OwnerFenced):
        zombie.write(_writes(slot, 2, True), fence=fence)
    for v in range(3):
        assert client.hget(f"sk:reshard{v}:{{{slot_tag(slot)}}}", "f:0") == b"1"
    owner.close()
    zombie.close()
