"""Type stub of ``engine._native``, the PyO3 face of the native kernel (``native/``).

Each section lists one area's calls; every bulk call takes a batch and releases the GIL.
"""

from typing import Any, Literal

__version__: str

# --- allocator (native/python/src/alloc.rs) ------------------------------------------------

def allocator_purge_delay(ms: int | None = None) -> int:
    """mimalloc's purge delay in ms (freed pages go back to the OS that long after they were
    freed; -1: never); ``ms`` sets it. Returns the value before the call."""

def huge_pages_disabled(disabled: bool | None = None) -> bool:
    """Whether transparent huge pages are disabled for this process (Linux
    ``prctl(PR_SET_THP_DISABLE)``; later page faults take 4-KiB pages); ``disabled`` sets
    it. Returns the value before the call (False, nothing set, elsewhere than Linux)."""

# --- aggregation kernel (native/python/src/kernel.rs) -------------------------------------
# Bridge and parity calls: values are converted once per call (None, bool, int within
# 64 bits, float, str, bytes). Bad function or kind names raise engine.errors.DefinitionError
# (a ValueError). Results are int (any size), float, str, bytes, bool, list or None.

def fold_finalize(
    function: str,
    kind: str,
    n: int | None,
    values: list[Any],
    orders: list[tuple[int, int, int]],
    parts: list[int],
) -> Any:
    """Fold ``values[i]`` at ``orders[i]`` into partial state ``parts[i]``, merge the partial
    states in ascending part order into an empty state, and finalize."""

def fold_merge_finalize(
    function: str,
    kind: str,
    n: int | None,
    values: list[Any],
    orders: list[tuple[int, int, int]],
    parts: list[int],
    merge_order: list[int],
) -> Any:
    """As ``fold_finalize``, merging the partial states in ``merge_order`` (distinct part ids
    covering every id in ``parts``)."""

# --- Avro decoding into columns (native/python/src/avro.rs) -------------------------------
# Columns: pyarrow arrays (int64, float64, bool, large_string, large_binary) for typed
# columns, lists of plain objects (dict for maps/records, list for arrays) for nested or
# mixed ones; a record field is flattened into "<field>.<sub>" columns. Errors raise
# engine.errors.DecodeError (a ValueError) naming the block, field path and byte offset.

def read_container(
    data: bytes, projection: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Decode an Avro object container file (codec null or deflate) whose schema is a record:
    ``(columns, header metadata)``; ``projection`` names the columns to build."""

def decode_datums(
    schema_json: str, datums: list[bytes], projection: list[str] | None = None
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """Decode schemaless datums of record schema ``schema_json``: ``(columns, errors)``; a
    datum that fails adds no row and is listed in ``errors`` as ``(index, reason)``."""

# --- backfill sweep (native/python/src/sweep.rs) ---------------------------------------------
# Driven by engine/backfill.py; see native/core/src/sweep.rs for the semantics.

class Sweep:
    """The backfill's point-in-time sweep over replayed records and labels."""

    def __init__(
        self,
        mode: str,
        include_late: bool,
        tables: list[list[tuple[Any, ...]]],
        groups: list[tuple[str, int, list[str], list[str], bool]],
        views: list[
            tuple[
                int,
                list[tuple[str, str, int | None, int | None, int | None]],
                list[int],
                int | None,
            ]
        ],
        requests: list[tuple[int, bytes, bytes, list[int]]],
    ) -> None:
        """``tables``: per table, its distinct entity keys (tuples of str/int) in code order;
        ``groups``: (source, table, key fields, input fields, native); ``views``: (group,
        [(function, kind, n, window_ms, hop_ms)], input index per aggregation, allowed
        lateness ms); ``requests``: (view, int64 entity codes, int64 times, indices)."""

    def projection(self, source: str, ts_field: str) -> list[str]:
        """Container columns the native groups of ``source`` read."""

    def add_log_file(
        self,
        source: str,
        partition: int,
        data: bytes,
        after_offset: int,
        ts_field: str,
        divisor: int,
        upto: int = ...,
    ) -> tuple[int, int]:
        """Decode one event-log file (GIL released) and keep what the native groups need
        (records above ``after_offset`` and at most ``upto``, default: no upper limit);
        returns (highest offset seen, records taken). Raises ValueError on a bad file."""

    def add_rows(
        self,
        group: int,
        partition: int,
        offsets: bytes,
        event_time: bytes,
        processed_at: bytes,
        keys: list[tuple[str, list[Any]]],
        inputs: list[tuple[str, list[Any]]],
    ) -> None:
        """Rows a caller extracted (after a transform): int64 buffers and (kind, values)
        columns, kind one of int/float/str/bool/bytes/any."""

    def note_read(self, records: int) -> None:
        """Count records read by the caller."""

    @property
    def records_read(self) -> int:
        """Records read so far."""

    def take_shards(self, shards: int) -> list[bytes]:
        """Hand over every kept record as ``shards`` blobs, blob ``s`` holding the records
        of the entities whose code is ``s`` modulo ``shards`` (GIL released); the sweep
        keeps none afterwards. The distributed backfill's exchange (engine.backfill_dask)."""

    def add_shard(self, blob: bytes) -> int:
        """Add one ``take_shards`` blob of a sweep over the same tables and views; returns
        the records added. ValueError on a blob that does not fit."""

    def finish(self) -> list[list[tuple[bytes, bytes, list[tuple[int, Any]]]]]:
        """Sweep (GIL released); per request and wanted aggregation: (uint8 kinds, int64
        bits, [(label, object)]) with kinds 0 None, 1 int64, 2 float64, 3 object."""

# --- source records decoded in batches (native/python/src/source.rs) ---------------------
# Driven by engine.serde.SourceCodec.decode_batch, which builds the reason texts.

class Columns:
    """A decoded batch held natively (immutable), passed to other native calls as is."""

    @property
    def rows(self) -> int:
        """Number of rows."""

    @property
    def names(self) -> list[str]:
        """Column names, in order."""

    def __len__(self) -> int: ...
    def column(self, name: str) -> list[Any]:
        """One column's cells as Python objects (None for nulls); KeyError if absent."""

    def to_pylist(self) -> list[dict[str, Any]]:
        """Every row as a dict ``{name: value}`` (the slow path)."""

    @staticmethod
    def from_rows(names: list[str], kinds: list[str | None], rows: list[dict[str, Any]]) -> Columns:
        """Columns ``names`` of kinds int/float/str/bool/bytes (None: any scalar) from row
        dicts: the bridge for records decoded in Python."""

class SourceDecoder:
    """Decodes batches of one Avro source's Kafka records into ``Columns``."""

    def __init__(
        self,
        schema_json: str,
        format: str,
        wire: str,
        schema_id: int | None,
        key_fields: list[str],
        timestamp_field: str,
        timestamp_divisor: int,
        float_fields: list[str],
        max_record_bytes: int,
        max_future_ms: int,
    ) -> None:
        """``schema_json``: the plain schema (``engine.schema.plain_schema``); ``format``
        must be ``avro``; ``wire`` ``schemaless`` or ``confluent``. Raises ValueError when
        the source cannot be decoded natively."""

    def decode_batch(
        self, keys: list[bytes | None], values: list[bytes | None], now_ms: int
    ) -> tuple[Columns, list[int], list[tuple[int, str]]]:
        """Decode ``(keys[i], values[i])`` with the GIL released: ``(columns, kept,
        refused)``, the input index of each kept row and ``(index, reason code)`` for every
        other record, both ascending. Raises ValueError when the lengths differ."""

# --- online state (native/python/src/online.rs) ---------------------------------------------

_AggSpec = tuple[str, str, int | None, int | None, int | None]

class OnlineCore:
    """The stream worker's online state for one source: cached entity tiles, batch folds
    and the Redis hash writes they produce (native/core/src/online.rs)."""

    def __init__(
        self,
        views: list[tuple[str, list[_AggSpec], int, list[int], int | None]],
        groups: list[tuple[list[str], list[str]]],
        capacity: int,
    ) -> None: ...
    @property
    def cached(self) -> int: ...
    def prepare(
        self,
        partitions: bytes,
        offsets: bytes,
        event_time: bytes,
        payload: Columns | None,
        fed: dict[int, tuple[list[list[Any]], list[list[Any]]]],
    ) -> list[tuple[str, int, int, str]]:
        """Extract the batch's entities; ``(redis key, view, partition, entity)`` to load."""

    def set_merged(self, views: list[int]) -> None:
        """Merge these views' tiles across source partitions on write (by slot)."""

    def load_merged(
        self, entries: list[tuple[int, str, dict[bytes, bytes], dict[bytes, bytes]]]
    ) -> None:
        """Cache merged entries: (view, entity, entity hash, marks hash)."""

    def load(self, entries: list[tuple[int, int, str, dict[bytes, bytes]]]) -> None:
        """Cache loaded hashes (raises engine.errors.CodecError on foreign tile bytes)."""

    def set_keep_merged(self, on: bool) -> None:
        """Keep merged entries cached across batches (the worker owns every source
        partition; each write is still a compare-and-set on the version cached), or drop
        them after each batch and now (the default)."""

    @property
    def keeps_merged(self) -> bool: ...
    def set_spill(self, on: bool) -> None:
        """Spill mode: ``apply`` no longer evicts; ``spill`` does, once the batch is durable."""

    def spill(self, all: bool = False) -> tuple[list[bytes], list[bytes]]:
        """Evict the least recently used entries over the capacity (every entry when
        ``all``): their local-store keys (``<partition>:<redis key>``) and packed fields."""

    def load_spilled(
        self, entries: list[tuple[int, int, str, bytes, bytes | None, bytes | None]]
    ) -> list[int]:
        """Cache ``(view, partition, entity, value, fence, journal)`` entries from the local
        store whose marks equal the store's ``f:<p>``/``j:<p>``; the indices of the others."""

    def apply(
        self, batch_p: int
    ) -> tuple[
        list[tuple[str, dict[str, bytes], list[str], int | None, tuple[str, bytes | None] | None]],
        int,
        int,
        int,
        dict[tuple[int, int], int],
        dict[int, int],
    ]:
        """Fold the prepared batch: (writes, applied, late, fenced, newest, recovered)."""

    def apply_logged(
        self, processed_at: bytes, now_ms: int
    ) -> tuple[
        list[tuple[str, dict[str, bytes], list[str], int | None, tuple[str, bytes | None] | None]],
        int,
        int,
        int,
        dict[tuple[int, int], int],
        dict[int, int],
    ]:
        """``apply`` admitting each event by its logged processed_at (int64 buffer)."""

    def replay(self, processed_at: bytes) -> None:
        """Rebuild mode: fold the prepared batch admitting by the logged processed_at."""

    def replay_writes(
        self, now_ms: int
    ) -> list[
        tuple[
            int,
            tuple[str, dict[str, bytes], list[str], int | None, tuple[str, bytes | None] | None],
        ]
    ]:
        """Rebuild mode: one write per cached entry; empties the cache."""

    def discard_prepared(self) -> None: ...
    def forget_partitions(self, partitions: list[int]) -> None: ...
    def forget_views(self, views: list[int], partition: int) -> None: ...
    def forget_all(self) -> None: ...

def online_values(
    functions: list[_AggSpec], hashes: list[dict[Any, bytes]], t_ms: int, indices: list[int]
) -> list[list[Any]]:
    """Values as of ``t_ms`` of many entities from their hashes (engine.errors.CodecError
    on a corrupt tile a requested window uses)."""

def key_slot(key: bytes) -> int:
    """The Redis Cluster slot of ``key`` (CRC16 of its hash tag, as Redis computes it)."""

# (write order, [(slot, elements, first, count, keys RESP, arguments RESP)]): the writes
# ``order[first:first + count]`` of one slot per call of the cluster write script
_SlotChunks = tuple[list[int], list[tuple[int, int, int, int, bytes, bytes]]]

class Writes:
    """Entity writes held natively (``PackedWrites``): a batch's from ``OnlineCore.apply``, or
    one view's run from a ``Replay``."""

    @staticmethod
    def from_list(
        items: list[
            tuple[str, dict[str, bytes], list[str], int | None, tuple[str, bytes | None] | None]
        ],
    ) -> Writes:
        """Writes from ``to_list``'s tuples (benchmarks, tests)."""

    def __len__(self) -> int: ...
    def to_list(
        self,
    ) -> list[tuple[str, dict[str, bytes], list[str], int | None, tuple[str, bytes | None] | None]]:
        """``(key, {field: bytes}, [deleted fields], expire_at_ms | None, expect | None)`` each."""

    def key(self, i: int) -> str: ...
    def script_chunks(self, max_args: int) -> list[tuple[int, int, int, bytes]]:
        """``(elements, first write, writes, RESP body)`` per call of the write script."""

    def slot_chunks(self, max_args: int) -> _SlotChunks:
        """The writes grouped by Redis Cluster slot, one slot per call of the write script."""

# --- rebuild-online's replay (native/python/src/replay.rs) ----------------------------------

class Replay:
    """Rebuild-online's replay of one source partition for the views of one source
    (native/core/src/replay.rs); views and groups as ``OnlineCore`` takes them."""

    def __init__(
        self,
        views: list[tuple[str, list[_AggSpec], int, list[int], int | None]],
        groups: list[tuple[list[str], list[str]]],
        partition: int,
        timestamp_field: str,
        divisor: int,
    ) -> None: ...
    def newest_event_ms(self) -> list[int | None]:
        """Per view: the newest event time folded so far (None: no record admitted)."""

    def fold_file(
        self, data: bytes, high: int, now_ms: int, upto: int
    ) -> tuple[int, int | None] | None:
        """Decode and fold one event-log file's records above ``high`` and at most ``upto``
        (the listing's limit of the file; no user code in any group; GIL released):
        (records, highest offset | None); None: use ``fold``."""

    def fold(
        self,
        offsets: bytes,
        event_time: bytes,
        processed_at: bytes,
        payload: Columns | None,
        fed: dict[int, tuple[list[list[Any]], list[list[Any]]]],
        now_ms: int,
    ) -> None:
        """Fold a batch of records admitting each by its logged processed_at."""

    def set_merged(self, views: list[int]) -> None:
        """Mark the views of these slots merge-on-write: every partition folded (see
        ``set_partition``) into one tile set per entity, as the workers' merged path leaves
        it; ``writes`` gives each entity's entity write then its marks write."""

    def set_partition(self, partition: int) -> None:
        """Fold source partition ``partition`` next (the states carry on; the newest event
        times start again)."""

    def writes(self, now_ms: int, drop_expired: bool, chunk: int) -> list[tuple[int, Writes]]:
        """(view, writes) chunks: one write per entity (a merged view's: the entity write,
        then its marks write); empties the replay."""

# -- online reads (native/python/src/read.rs) -------------------------------------------------

_Evaluated = tuple[list[Any], int | None, bytes]

class ReadKernel:
    """Aggregations ``indices`` of a view's layout, read from raw hashes."""

    def __init__(self, functions: list[_AggSpec], indices: list[int]) -> None: ...
    def evaluate(self, hashes: list[dict[Any, bytes]], t_ms: int) -> list[_Evaluated]:
        """Per hash ``(values, newest write time or None, seen)``; ``seen[i]`` is 1 when a
        tile of requested aggregation i's window (a lifetime accumulator) exists.
        engine.errors.CodecError on a corrupt tile a requested window uses."""
    def evaluate_replies(
        self, replies: RespReplies, slots: list[int], t_ms: int, keyed: bool = False
    ) -> list[_Evaluated]:
        """``evaluate`` of the hash replies ``slots`` of ``replies``; ``keyed``: each row's
        third element is its status key instead of ``seen`` (per requested position
        ``2 * code + seen``, the value's code 0 for None, 1 for one equal to 0, 2 other)."""

class RespReplies:
    """``count`` RESP replies, fed as the socket receives them and indexed in place."""

    def __init__(self, count: int) -> None: ...
    def feed(self, chunk: bytes) -> int:
        """Append received bytes; how many replies are still missing (ValueError: not RESP,
        or bytes past the last reply)."""
    def __len__(self) -> int: ...
    def shape(self) -> list[int]:
        """Per reply: a hash's field count (0: empty or nil), -1 integer, -2 error, -3 other."""
    def int_at(self, i: int) -> int | None: ...
    def error_at(self, i: int) -> str | None: ...
    def marks(self, i: int, kinds: bytes) -> frozenset[tuple[bytes, bytes]]:
        """The fields of hash reply ``i`` whose names start with a byte of ``kinds``."""
    def hash(self, i: int) -> dict[bytes, bytes] | None: ...
    def tail(self, i: int) -> bytes:
        """The bytes of the complete replies from reply ``i`` on (empty past the last)."""
    def raw(self) -> bytes: ...

# -- event-log writing (native/python/src/logwrite.rs) ---------------------------------------

def write_log_file(
    schema_json: str,
    metadata: dict[str, Any],
    codec: str,
    level: int,
    partition: int,
    offsets: Any,
    keys: Any,
    event_time: Any,
    processed_at: Any,
    payload: Columns | dict[str, Any],
    *,
    rows: Any = None,
    sync: bytes | None = None,
    block_bytes: int = 65536,
) -> bytes:
    """One event-log Avro container file of envelopes, encoded from columns (GIL released).

    ``offsets``/``event_time``/``processed_at``/``rows``: int64 bytes or numpy arrays;
    ``keys``: list of bytes/None, a pyarrow binary/string array, or None (all null);
    ``payload``: a Columns or {field: pyarrow/numpy array, or list of Python objects}.
    Header: ``metadata``, then avro.codec, then avro.schema (fastavro's order). Raises
    engine.errors.EventLogError naming the field and row that cannot be written."""

def columns_from_arrays(arrays: dict[str, Any]) -> Columns:
    """{name: pyarrow/numpy array or list} held natively (one copy of the buffers)."""

def append_log_blocks(
    schema_json: str,
    metadata: dict[str, Any],
    codec: str,
    level: int,
    payload: Columns | dict[str, Any],
    jobs: list[tuple[str, int, bytes, Any, Any, Any, Any, Any]],
    *,
    block_bytes: int = 65536,
) -> list[tuple[int, tuple[Literal["encode", "open", "write", "fsync"], int, str] | None]]:
    """Per job ``(path, partition, sync, offsets, keys, event_time, processed_at, rows)``:
    its records encoded as ``write_log_file(..., sync=sync)`` blocks (no header), appended
    to the open file ``path`` (``O_APPEND``) and fsynced; the jobs on their own threads, the
    GIL released once for the whole call. One ``(bytes appended, None)`` or
    ``(0, (stage, errno, message))`` per job, in order."""

def kafka_partitions(keys: Any, partitions: int) -> Any:
    """numpy int64 partition of each key as engine.keys.partition_for picks it (-1: null)."""
