"""The Redis store's hand-formatted commands: the same bytes as hiredis' packer."""

from __future__ import annotations

from connectors.redis_store import _hgetalls, _pack


def test_hgetalls_are_the_bytes_the_packer_gives() -> None:
    keys = ["sk:v:abc:{c00042}", "", "é" * 40 + "{ü}", "x" * 1000, "a\r\nb"]
    assert _hgetalls(keys) == [_pack((b"HGETALL", key.encode())) for key in keys]
    assert _hgetalls([]) == []
