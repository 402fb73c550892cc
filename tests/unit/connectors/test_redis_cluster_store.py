"""The Redis Cluster store's pure parts: slot tags, fence keys, the worst watermark copy."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from connectors import redis_cluster_store as rc
from connectors.redis_store import _WRITE_LUA


@pytest.mark.parametrize("slot", [0, 1, 5460, 5461, 10922, 10923, 16383])
def test_a_slot_tag_and_its_fence_key_land_in_the_slot(slot: int) -> None:
    assert key_slot(rc.slot_tag(slot).encode()) == slot
    assert key_slot(rc.fence_key(slot).encode()) == slot
    assert rc.fence_key(slot).startswith("sk:fence:slot:{")


def test_every_slot_has_a_distinct_tag() -> None:
    tags = [rc.slot_tag(s) for s in range(16384)]
    assert len(set(tags)) == 16384
    assert all(key_slot(t.encode()) == s for s, t in enumerate(tags))


@pytest.mark.parametrize(
    ("copies", "worst"),
    [
        ([b"7", b"7", b"7"], b"7"),  # nothing lost
        ([b"7", None, b"7"], None),  # a copy missing: as if the watermark were
        ([b"7", b"5", b"9"], b"5"),  # a node rolled back: its older offset
        ([b"7", b"junk", b"3"], b"junk"),  # not an offset: reported as it is
        ([b"-4", b"2"], b"-4"),  # imported history has negative offsets
    ],
)
def test_the_worst_watermark_copy_is_handed_back(
    copies: list[bytes | None], worst: bytes | None
) -> None:
    assert rc._worst(copies) == worst


def test_the_cluster_write_script_is_the_one_node_body_over_keys_but_the_fence_hash() -> None:
    body = rc._CLUSTER_WRITE_LUA.removeprefix(rc._CLUSTER_FENCE_LUA)
    assert body.replace("for i = 1, #KEYS - 1 do", "for i = 1, #KEYS do") in _WRITE_LUA
    assert "ARGV[j], 'epoch'" not in rc._CLUSTER_WRITE_LUA  # no key read from ARGV
