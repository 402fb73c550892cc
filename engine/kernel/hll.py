"""HyperLogLog sketch (precision 14) with a sparse form for small sets; mergeable and order-independent."""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

P = 14
M = 1 << P
_SPARSE_LIMIT = 2048  # above this many touched registers the dense form is smaller
_RANK_BITS = 64 - P
_ALPHA = 0.7213 / (1 + 1.079 / M)


def value_bytes(value: Any) -> bytes:
    """Canonical bytes of a column value; equal values of one column kind give equal bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, float):
        return struct.pack(">d", value + 0.0)  # folds -0.0 into 0.0
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"approx_count_distinct cannot hash a {type(value).__name__}")


def register_of(value: Any) -> tuple[int, int]:
    """(register index, rank) of a value under a 64-bit BLAKE2b hash."""
    h = int.from_bytes(hashlib.blake2b(value_bytes(value), digest_size=8).digest(), "big")
    index = h >> _RANK_BITS
    rest = h & ((1 << _RANK_BITS) - 1)
    rank = _RANK_BITS - rest.bit_length() + 1
    return index, rank


class Sketch:
    """Registers of one HLL; ``sparse`` maps index → rank until it outgrows ``_SPARSE_LIMIT``."""

    __slots__ = ("dense", "sparse")

    def __init__(self) -> None:
        self.sparse: dict[int, int] | None = {}
        self.dense: bytearray | None = None

    def add(self, value: Any) -> None:
        index, rank = register_of(value)
        self.set(index, rank)

    def set(self, index: int, rank: int) -> None:
        sparse = self.sparse
        if sparse is not None:
            if sparse.get(index, 0) < rank:
                sparse[index] = rank
                if len(sparse) > _SPARSE_LIMIT:
                    self._densify()
        else:
            dense = self.dense
            assert dense is not None
            if dense[index] < rank:
                dense[index] = rank

    def _densify(self) -> None:
        dense = bytearray(M)
        assert self.sparse is not None
        for index, rank in self.sparse.items():
            dense[index] = rank
        self.dense = dense
        self.sparse = None

    def merge(self, other: Sketch) -> None:
        if other.sparse is not None:
            for index, rank in other.sparse.items():
                self.set(index, rank)
            return
        assert other.dense is not None
        if self.dense is None:
            self._densify()
        assert self.dense is not None
        self.dense = bytearray(map(max, self.dense, other.dense))

    def registers(self) -> list[tuple[int, int]]:
        """Non-zero registers as sorted (index, rank) pairs: the canonical content."""
        if self.sparse is not None:
            return sorted(self.sparse.items())
        assert self.dense is not None
        return [(i, r) for i, r in enumerate(self.dense) if r]

    def estimate(self) -> int:
        """Cardinality estimate: HLL harmonic mean with linear counting for small sets."""
        if self.sparse is not None:
            ranks = list(self.sparse.values())
            zeros = M - len(ranks)
            inverse_sum = float(zeros) + math.fsum(2.0**-r for r in ranks)
        else:
            assert self.dense is not None
            zeros = self.dense.count(0)
            inverse_sum = math.fsum(2.0**-r for r in self.dense)
        if zeros == M:
            return 0
        raw = _ALPHA * M * M / inverse_sum
        if raw <= 2.5 * M and zeros:
            return round(M * math.log(M / zeros))
        return round(raw)
