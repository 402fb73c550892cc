"""A stream worker's local state tier: the entities its cache evicts, kept in RocksDB.

The native ``OnlineCore`` holds at most ``cache_entities`` (view, entity, partition)
entries in memory. With a ``LocalState`` behind it (``skewless worker --local-state``), the
entries it evicts are not dropped but written here (one ``WriteBatch`` per batch), and a
batch's entities missing from memory are looked up here (one multi-get) before Redis. So
the worker's memory is bounded by the cache, not by the entities it owns, and a restarted
worker starts warm from the entries it spilled (``spill_all`` when it stops).

Local state is a cache of Redis, never an authority: an entry is used only when the
``f:<p>`` (fence) and ``j:<p>`` (journal: the offsets and processed_at of the partition's
last writes) it was spilled with are the ones Redis holds now, read in the batch's one load
round trip (``RedisOnlineStore.load_and_marks``). Another worker's later writes (after a
revoke and re-assign), a rebuild, an expiry or a lost Redis all change them, so such an
entry is refused and the entity loaded from Redis (docs/streaming.md#local-state).

Layout (docs/layouts.md#local-state): one RocksDB per worker and source under
``<state dir>/worker/<consumer group>/<source>/<slot>``; key ``<partition>:<redis key>``;
value the entity's hash fields of that partition (codec tile bytes, ``l``, ``f``, ``u``,
``j``), packed by the native core (``skewless_core::online::encode_entry``). Raw bytes
(rocksdict ``raw_mode``): nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch, WriteOptions

from engine.errors import ConfigError

SLOTS = 64  # workers of one group and source sharing a state dir (one RocksDB lock each)


class LocalState:
    """A RocksDB of spilled entries (bytes to bytes).

    Example:
        >>> local = LocalState.open(tmp / "worker" / "g" / "tx")  # doctest: +SKIP
        >>> local.put([b"0:sk:fp:{c1}"], [b"\\x01"])  # doctest: +SKIP
        >>> local.get([b"0:sk:fp:{c1}", b"0:sk:fp:{c2}"])  # doctest: +SKIP
        [b'\\x01', None]
    """

    def __init__(self, db: Rdict, path: Path) -> None:
        self._db = db
        self.path = path
        # no write-ahead log: a crash loses the writes since the last flush, and those
        # entities are loaded from Redis again; ``close`` flushes
        unlogged = WriteOptions()
        unlogged.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stub says method
        db.set_write_options(unlogged)

    @classmethod
    def open(cls, root: Path) -> LocalState:
        """The store at the first free slot ``root/<n>`` (a RocksDB is locked by the process
        that opened it: several workers on one host each take their own; a restarted worker
        takes the lowest free one, most often its own — any slot is safe, as every entry is
        checked against Redis before use)."""
        root.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None
        for slot in range(SLOTS):
            path = root / str(slot)
            try:
                return cls(Rdict(str(path), _options()), path)
            except Exception as exc:  # rocksdict raises plain Exception on a held lock
                if "lock" not in str(exc).lower():
                    raise
                last = exc
        raise ConfigError(f"{root}: all {SLOTS} local state slots are in use ({last})")

    def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The value of each key (None where absent), in one multi-get."""
        if not keys:
            return []
        return cast("list[bytes | None]", self._db.get(list(keys)))  # a list for a list

    def put(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Write every pair in one batch (not synced: the store is a cache of Redis)."""
        if not keys:
            return
        batch = WriteBatch(raw_mode=True)
        put = batch.put
        for key, value in zip(keys, values, strict=True):
            put(key, value)
        self._db.write(batch)

    def close(self) -> None:
        self._db.flush()
        self._db.close()


def _options() -> Options:
    options = Options(raw_mode=True)  # bytes in, bytes out: nothing pickled
    options.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # most lookups of a growing worker are misses
    options.set_block_based_table_factory(table)
    return options
