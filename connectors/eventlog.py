"""The event log: Avro container files of envelopes, one folder per source partition (DESIGN §4).

Layout under ``root`` (a local path or any fsspec URL)::

    <root>/<source>/partition=<p>/<first_offset>-<last_offset>[.e<epoch>].avro
    <root>/<source>/partition=<p>/<first_offset>-open[.e<epoch>].avro   (rolling, open)

With ``roll_bytes`` (stream workers, local disk) each append is a batch of fsynced Avro
blocks appended to one open file per partition, renamed ``<first>-<last>`` when it rolls
(size, age, new owner epoch, ``close``); readers read whole blocks only and no record above
the listing's per-file limit (``Listing``; docs/event-log.md#rolling-files).

Offsets are zero-padded to 20 digits. Imported history (``EventLogWriter.append_history``)
takes offsets from ``HISTORY_BASE`` (-10**18) upwards, written with a leading ``-``: it
sorts before everything a Kafka partition (offsets >= 0) can ever deliver and never
collides with it, and successive imports keep their order. Readers sort files numerically.
A file is written
under a temporary name (``.tmp-<uuid>.avro``) in the same folder, flushed (and fsynced on a
local disk), then renamed, so a reader never sees a partial file. Per partition, the writer
drops every offset at or below the highest one the log already holds, so replaying a batch
after a crash neither loses nor duplicates a record.

Records arrive as ``Envelope`` objects (``append``, ``append_history``, written with fastavro)
or as columns (``append_columns``, ``append_history_columns``: ``engine.log_columns.
EnvelopeColumns``, encoded natively by ``engine._native.write_log_file`` without a Python
object per record); both give the same files — same names, header metadata, blocks of
``_SYNC_INTERVAL`` bytes and records.

Payloads are stored against the source's Avro schema with every ``logicalType`` annotation
removed: values keep their underlying Avro type (a ``timestamp-millis`` field is written and
read back as an ``int`` of milliseconds, never a ``datetime``), in line with the engine's
int-milliseconds rule.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal, TypeVar, cast

import fastavro
import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from engine import _native
from engine.envelope import HISTORY_BASE, Envelope
from engine.errors import EventLogError, EventLogMissing, SkewlessError
from engine.log_columns import EnvelopeColumns
from engine.log_files import blocks_with_sync, scan_blocks, scan_file, whole_blocks
from engine.schema import plain_schema

__all__ = [
    "ENVELOPE_VERSION",
    "Codec",
    "EventLogReader",
    "EventLogWriter",
    "envelope_schema",
]

_Job = TypeVar("_Job")
_Outcome = tuple[str, EventLogError | None]  # a partition's written path, or its failure

Codec = Literal["null", "deflate"]
"""Avro block codecs that need no extra package."""

ENVELOPE_VERSION = "1"
"""Version of the envelope layout, kept in each file's header as ``skewless.envelope_version``."""

_META_VERSION = "skewless.envelope_version"
_META_SOURCE = "skewless.source"
_META_RECORDS = "skewless.records"
_OFFSET_DIGITS = 20
_MAX_OFFSET = 10**_OFFSET_DIGITS - 1
_TMP_PREFIX = ".tmp-"
# <first>-<last>.avro (no owner epoch: imports, workers before owner epochs) or
# <first>-<last>.e<epoch>.avro (written by the owner of the partition's epoch <epoch>), and
# <first>-open[.e<epoch>].avro: a rolling file its writer still appends synced blocks to
_FILE_RE = re.compile(r"^(-?\d{20})-(-?\d{20}|open)(?:\.e(\d+))?\.avro$")
_OPEN = "open"
DEFAULT_ROLL_BYTES = 64 * 1024 * 1024
"""A stream worker's rolling log file is closed at this size (``--log-roll-mb``)..."""
DEFAULT_ROLL_SECONDS = 300.0
"""... or this long after its first block (``--log-roll-seconds``), at its next append."""
# an owner epoch's start marker: the epoch's owner logs from offset <start> on (empty file)
_MARKER_PREFIX = "_epoch-"
_MARKER_RE = re.compile(r"^_epoch-(\d+)-from-(-?\d+)$")
_BEFORE_ALL = -(10**_OFFSET_DIGITS)  # below every offset a file name can hold
_RELISTS = 20  # listings of one partition read before files vanishing under it is an error

_PARTITION_RE = re.compile(r"^partition=(\d+)$")
_PARTITION_PREFIX = "partition="
# Blocks of ~64 KiB: fewer per-block calls on read than fastavro's 16 kB default,
# still small enough to stream.
_SYNC_INTERVAL = 64 * 1024
_DEFLATE_LEVEL = 1  # measured: ~8% slower writes than "null" for a 3.6x smaller log
_SKEWLESS_ERRORS = (SkewlessError,)
_FASTAVRO_KEYS = ("__fastavro_parsed", "__named_schemas")

# The read loop fills Envelope's slots directly: half the cost of its frozen __init__
# (0.3 vs 0.7 us a record). Valid only while these are exactly Envelope's fields and it
# has no __post_init__; checked here so a new Envelope field fails loudly at import
# (a new field also needs a place in the log's schema).
_ENVELOPE_FIELDS = ("partition", "offset", "key", "event_time_ms", "processed_at_ms", "payload")
if tuple(f.name for f in dataclasses.fields(Envelope)) != _ENVELOPE_FIELDS or hasattr(
    Envelope, "__post_init__"
):
    raise TypeError(
        f"connectors.eventlog builds Envelope with fields {_ENVELOPE_FIELDS} and no "
        f"__post_init__; engine/envelope.py changed — update the log schema and reader"
    )
_new_object = object.__new__
_set_partition, _set_offset, _set_key, _set_event_time, _set_processed_at, _set_payload = (
    Envelope.__dict__[name].__set__ for name in _ENVELOPE_FIELDS
)


def envelope_schema(source_name: str, payload_schema: dict[str, Any]) -> dict[str, Any]:
    """The Avro record schema of ``source_name``'s log files, embedding its payload schema.

    ``payload_schema`` is the source's Avro record schema, raw or parsed by fastavro. The
    embedded copy drops fastavro's bookkeeping keys and every ``logicalType`` annotation, so
    payload values round-trip as their plain Avro types (timestamps as int milliseconds).
    The envelope is named ``skewless.envelope.<source>`` (made a valid Avro name), with
    ``_envelope`` appended while that would clash with a name inside the payload schema.

    Example:
        >>> schema = envelope_schema("card-tx", {"type": "record", "name": "Tx",
        ...     "fields": [{"name": "ts", "type": {"type": "long",
        ...                                        "logicalType": "timestamp-millis"}}]})
        >>> schema["namespace"], schema["name"]
        ('skewless.envelope', 'card_tx')
        >>> [f["name"] for f in schema["fields"]]  # doctest: +NORMALIZE_WHITESPACE
        ['partition', 'offset', 'key', 'event_time', 'processed_at', 'payload']
        >>> schema["fields"][-1]["type"]["fields"][0]["type"]
        {'type': 'long'}
    """
    if not isinstance(payload_schema, dict) or payload_schema.get("type") != "record":
        raise EventLogError(
            f"event log for source {source_name!r}: payload schema must be an Avro record "
            f"schema (a dict with type 'record'), got {_describe(payload_schema)}"
        )
    payload = plain_schema(payload_schema)
    taken = {name.rsplit(".", 1)[-1] for name in _named_types(payload)}
    name = _avro_name(source_name)
    while name in taken:
        name += "_envelope"
    return {
        "type": "record",
        "name": name,
        "namespace": "skewless.envelope",
        "doc": f"One logged record of source {source_name!r} (skewless event log, DESIGN §4).",
        "fields": [
            {"name": "partition", "type": "int", "doc": "Kafka partition of the record."},
            {"name": "offset", "type": "long", "doc": "Kafka offset within the partition."},
            {
                "name": "key",
                "type": ["null", "bytes"],
                "default": None,
                "doc": "Kafka record key bytes; null for unkeyed records.",
            },
            {
                "name": "event_time",
                "type": "long",
                "doc": "Event time, int milliseconds since the Unix epoch (UTC).",
            },
            {
                "name": "processed_at",
                "type": "long",
                "doc": "When the engine logged the record, int milliseconds since the epoch (UTC).",
            },
            {"name": "payload", "type": payload, "doc": "The record as decoded from the source."},
        ],
    }


class EventLogWriter:
    """Appends envelopes of one source to the event log, one file per partition per call —
    or, with ``roll_bytes`` (stream workers, local disk), as fsynced blocks of one open file
    per partition, rolled at ``roll_bytes`` or ``roll_seconds`` (docs/event-log.md).

    A partition's high-water mark (its highest logged offset) is learned from its file
    names on first use, then cached, so the writer assumes it is the only one writing
    that partition (a Kafka partition has one owner). Leftover ``.tmp-*`` files of a crashed
    writer are removed at that first use. ``append`` is atomic per partition, not across
    partitions: if one partition fails, the others are kept and a retry skips them.

    Example:
        >>> schema = {"type": "record", "name": "Order",
        ...           "fields": [{"name": "amount", "type": "double"}]}
        >>> writer = EventLogWriter("memory://doc-writer", "orders", schema)
        >>> rec = Envelope(partition=0, offset=5, key=b"c1", event_time_ms=1_000,
        ...                processed_at_ms=1_010, payload={"amount": 9.5})
        >>> writer.append([rec])
        ['memory://doc-writer/orders/partition=0/00000000000000000005-00000000000000000005.avro']
        >>> writer.append([rec]), writer.last_offset(0)
        ([], 5)
    """

    def __init__(
        self,
        root: str,
        source_name: str,
        payload_schema: dict[str, Any],
        *,
        codec: Codec = "deflate",
        roll_bytes: int | None = None,
        roll_seconds: float = DEFAULT_ROLL_SECONDS,
    ) -> None:
        _check_source_name(source_name)
        if (roll_bytes is not None and roll_bytes < 0) or roll_seconds <= 0:
            raise EventLogError(
                f"event log for source {source_name!r}: roll_bytes must be >= 0 (0 or None: "
                f"one file per append) and roll_seconds > 0, got {roll_bytes} and {roll_seconds}"
            )
        if codec not in ("null", "deflate"):
            raise EventLogError(
                f"event log for source {source_name!r}: codec must be 'null' or 'deflate', "
                f"got {codec!r}"
            )
        self._root = root.rstrip("/")
        self._fs, root_path = _filesystem(root)
        self._root_path = root_path.rstrip("/")
        self._local = isinstance(self._fs, LocalFileSystem)
        self._source = source_name
        self._dir = f"{self._root_path}/{source_name}"
        self._codec: Codec = codec
        schema = envelope_schema(source_name, payload_schema)
        try:
            self._schema = cast(dict[str, Any], fastavro.parse_schema(schema))
        except Exception as exc:
            raise EventLogError(
                f"event log for source {source_name!r}: payload schema is not valid Avro: {exc}"
            ) from exc
        # The header's avro.schema exactly as fastavro.writer spells it (native files too).
        self._schema_json = json.dumps(
            {k: v for k, v in self._schema.items() if k not in _FASTAVRO_KEYS}
        )
        self._high: dict[int, int | None] = {}
        self._history_high: dict[int, int | None] = {}
        self._epoch: dict[int, int] = {}  # owner epoch per partition (begin_epoch); 0: none
        # Rolling (local disk only): each append is a synced block of an open file per
        # partition, rolled at roll_bytes or roll_seconds (docs/event-log.md#rolling-files).
        self._roll_bytes = roll_bytes if roll_bytes and self._local else 0
        self._roll_seconds = roll_seconds
        self._open: dict[int, _OpenFile] = {}

    @property
    def source(self) -> str:
        """The source whose records this writer logs."""
        return self._source

    def last_offset(self, partition: int) -> int | None:
        """Highest offset the log holds for ``partition``, or ``None`` when it holds none."""
        if partition not in self._high:
            self._history_high[partition], self._high[partition] = self._scan_partition(partition)
        return self._high[partition]

    def last_history_offset(self, partition: int) -> int | None:
        """Highest imported-history offset (< 0) held for ``partition``, or ``None``."""
        if partition not in self._history_high:
            self._history_high[partition], self._high[partition] = self._scan_partition(
                partition, adopt=False
            )
        return self._history_high[partition]

    def append_history(self, records: Sequence[Envelope]) -> list[str]:
        """Durably write imported history; return the paths written.

        Per partition the offsets must be distinct, in ``[HISTORY_BASE, 0)`` and above
        :meth:`last_history_offset` (the importer allocates them so), otherwise
        ``EventLogError`` and nothing of that partition is written. Kafka offsets are never
        negative, so history and a live stream of the same source never share an offset.
        """
        by_partition: dict[int, list[Envelope]] = {}
        for rec in records:
            by_partition.setdefault(rec.partition, []).append(rec)
        batches = []
        for partition in sorted(by_partition):
            recs = sorted(by_partition[partition], key=_offset_of)
            self._check_partition(partition)
            held = self.last_history_offset(partition)
            floor = HISTORY_BASE - 1 if held is None else held
            offsets = [r.offset for r in recs]
            if len(set(offsets)) != len(offsets) or offsets[0] <= floor or offsets[-1] >= 0:
                raise EventLogError(
                    f"event log for source {self._source!r} partition {partition}: history "
                    f"offsets must be distinct, above {floor} and below 0, got "
                    f"{offsets[0]}..{offsets[-1]}"
                )
            batches.append((partition, recs))
        written: list[str] = []
        for partition, recs in batches:
            try:
                written.append(self._write(partition, recs))
            except EventLogError:
                self._history_high.pop(partition, None)
                self._high.pop(partition, None)
                raise
            self._history_high[partition] = recs[-1].offset
            high = self._high.get(partition)
            self._high[partition] = recs[-1].offset if high is None else max(high, recs[-1].offset)
        return written

    def append_history_columns(self, batches: Sequence[EnvelopeColumns]) -> list[str]:
        """Durably write imported history given as columns, one file per batch; return the
        paths written, by partition then batch order.

        The columnar twin of :meth:`append_history` (same offsets, file names, temp-name /
        fsync / rename and high-water-mark rules; the file is encoded natively, without a
        Python object per record). Per batch the offsets must be strictly ascending; per
        partition they must be above :meth:`last_history_offset` (and above the batch before
        it in the same call) and below 0, otherwise ``EventLogError`` and nothing is written.
        Partitions are written concurrently on a local disk; a failed partition keeps no new
        file from its failing batch and its marks are re-learned from storage.
        """
        by_partition: dict[int, list[EnvelopeColumns]] = {}
        for batch in batches:
            if len(batch):
                by_partition.setdefault(batch.partition, []).append(batch)
        for partition in sorted(by_partition):
            self._check_partition(partition)
            held = self.last_history_offset(partition)
            floor = HISTORY_BASE - 1 if held is None else held
            for batch in by_partition[partition]:
                offsets = _int64s(batch.offsets)
                if (
                    offsets[0] <= floor
                    or offsets[-1] >= 0
                    or (len(offsets) > 1 and not bool(np.all(offsets[1:] > offsets[:-1])))
                ):
                    raise EventLogError(
                        f"event log for source {self._source!r} partition {partition}: "
                        f"history offsets must be ascending, distinct, above {floor} and "
                        f"below 0, got {offsets[0]}..{offsets[-1]}"
                    )
                floor = int(offsets[-1])
        groups = [(p, by_partition[p]) for p in sorted(by_partition)]
        if self._local and len(groups) > 1:
            outcomes = list(_writer_pool().map(self._write_history_group, groups))
        else:
            outcomes = [self._write_history_group(group) for group in groups]
        written: list[str] = []
        failure: EventLogError | None = None
        for (partition, _), (paths, last, error) in zip(groups, outcomes, strict=True):
            written.extend(paths)
            if error is None and last is not None:
                self._history_high[partition] = last
                high = self._high.get(partition)
                self._high[partition] = last if high is None else max(high, last)
            else:
                self._history_high.pop(partition, None)
                self._high.pop(partition, None)
                failure = failure or error
        if failure is not None:
            raise failure
        return written

    def _write_history_group(
        self, group: tuple[int, list[EnvelopeColumns]]
    ) -> tuple[list[str], int | None, EventLogError | None]:
        """One partition's batches in order: paths written, last offset, the failure."""
        partition, batches = group
        paths: list[str] = []
        last: int | None = None
        for batch in batches:
            try:
                paths.append(self._write_columns(partition, batch, batch.rows))
            except EventLogError as exc:
                return paths, last, exc
            last = int(batch.offsets[-1])
        return paths, last, None

    def append_columns(
        self,
        partition: int,
        offsets: np.ndarray,
        keys: Any,
        event_time_ms: np.ndarray,
        processed_at_ms: np.ndarray,
        payload: Any,
    ) -> list[str]:
        """Durably write one partition's records given as columns; return the path written
        (an empty list when nothing was new).

        The columnar twin of :meth:`append` for the stream worker: record ``i`` is offset
        ``offsets[i]``, key ``keys[i]`` (a list of ``bytes | None``, a pyarrow binary array,
        or ``None`` for no keys), times ``event_time_ms[i]`` / ``processed_at_ms[i]`` and
        payload row ``i`` of ``payload`` (an ``engine._native.Columns`` or a dict of arrays).
        Same dedup rule: records are sorted by offset, and offsets at or below
        :meth:`last_offset`, and repeats within the call, are dropped (the payload rows are
        selected natively, not copied). On failure raises ``EventLogError``; the partition
        keeps no new file and its high-water mark does not move.
        """
        offs = _int64s(offsets)
        return self.append_batch_columns(
            np.full(len(offs), partition, dtype=np.int64), offs,
            keys if keys is None or isinstance(keys, list) else keys.to_pylist(),
            event_time_ms, processed_at_ms, payload,
        )  # fmt: skip

    def append_batch_columns(
        self,
        partitions: np.ndarray,
        offsets: np.ndarray,
        keys: list[bytes | None] | None,
        event_time_ms: np.ndarray,
        processed_at_ms: np.ndarray,
        payload: Any,
    ) -> list[str]:
        """The columnar twin of :meth:`append` for a worker's batch spanning partitions:
        record ``i`` is in ``partitions[i]`` and is payload row ``i``. Per partition, the
        same dedup rule as ``append_columns``; on a local disk the partitions' files are
        written concurrently (their fsyncs overlap). On failure raises ``EventLogError``
        naming a file that failed; failed partitions keep no new file and their high-water
        marks do not move (the others' files stand), so retrying the batch is safe."""
        parts = _int64s(partitions)
        offs = _int64s(offsets)
        times = _int64s(event_time_ms)
        processed = _int64s(processed_at_ms)
        jobs: list[tuple[int, tuple[EnvelopeColumns, np.ndarray]]] = []
        for partition in sorted(set(parts.tolist())):
            self._check_partition(partition)
            idx = np.flatnonzero(parts == partition)
            mine = offs[idx]
            lowest, highest = int(mine.min()), int(mine.max())
            if lowest < 0 or highest > _MAX_OFFSET:
                bad = lowest if lowest < 0 else highest
                raise EventLogError(
                    f"event log for source {self._source!r} partition {partition}: offset "
                    f"must be in [0, {_MAX_OFFSET}], got {bad}"
                )
            high = self.last_offset(partition)
            floor = -1 if high is None else max(high, -1)
            order = np.argsort(mine, kind="stable")
            ranked = mine[order]
            keep = ranked > floor
            keep[1:] &= ranked[1:] != ranked[:-1]
            rows = idx[order[keep]]
            if not len(rows):
                continue
            batch = EnvelopeColumns(
                partition=partition,
                offsets=offs[rows],
                keys=None if keys is None else [keys[i] for i in rows.tolist()],
                event_time_ms=times[rows],
                processed_at_ms=processed[rows],
                payload=payload,
            )
            jobs.append((partition, (batch, rows)))
        return self._write_partitions(
            jobs,
            lambda partition, job: self._write_columns(partition, *job, roll=True),
            lambda job: int(job[0].offsets[-1]),
            self._append_open_files,
        )

    def append(self, records: Sequence[Envelope]) -> list[str]:
        """Durably write ``records``, one new file per partition; return the paths written.

        Records may span partitions and arrive in any order. Per partition they are sorted
        by offset; offsets at or below :meth:`last_offset`, and repeats within the call, are
        dropped. Returns an empty list when nothing was new. On a local filesystem the
        partitions' files are written concurrently (their fsyncs overlap). On failure raises
        ``EventLogError`` naming a file that failed; each failed partition keeps no new file
        and its high-water mark does not move (the others' files stand), so retrying the
        same batch is safe.
        """
        by_partition: dict[int, list[Envelope]] = {}
        for rec in records:
            by_partition.setdefault(rec.partition, []).append(rec)
        # Validate and dedup every partition before writing any of them.
        batches = [(p, self._fresh(p, by_partition[p])) for p in sorted(by_partition)]
        batches = [(p, fresh) for p, fresh in batches if fresh]
        return self._write_partitions(
            batches, partial(self._write, roll=True), lambda fresh: fresh[-1].offset
        )

    def _write_partitions(
        self,
        jobs: Sequence[tuple[int, _Job]],
        write: Callable[[int, _Job], str],
        last_of: Callable[[_Job], int],
        append_open: Callable[[list[tuple[int, _Job]]], list[_Outcome]] | None = None,
    ) -> list[str]:
        """Write one file per ``(partition, job)``; return the paths written.

        On a local filesystem the partitions' files are written at once: their fsyncs then
        share the filesystem's journal commits instead of waiting for one each, in turn. A
        written partition's high-water mark moves to ``last_of(job)``; a failed one keeps no
        new file, and its cached marks are forgotten (the rename may have landed before the
        failure, e.g. a failed folder fsync) so the next call re-learns them from storage.
        The first failure is raised after every partition was tried.

        With ``append_open``, the jobs of partitions whose open rolling file takes this
        append as it is (no roll due) go to it in one call, beside the others' ``write``.
        """

        def attempt(item: tuple[int, _Job]) -> _Outcome:
            try:
                return write(*item), None
            except EventLogError as exc:
                return "", exc

        appendable = [
            append_open is not None and self._appendable(partition) for partition, _ in jobs
        ]
        ready = [item for item, ok in zip(jobs, appendable, strict=True) if ok]
        rest = [item for item, ok in zip(jobs, appendable, strict=True) if not ok]
        beside = self._local and (len(rest) > 1 or (bool(rest) and bool(ready)))
        pending = [_writer_pool().submit(attempt, item) for item in rest] if beside else []
        appended = iter(append_open(ready) if append_open is not None and ready else [])
        others = iter(
            [future.result() for future in pending] if beside else [attempt(i) for i in rest]
        )
        outcomes = [next(appended) if ok else next(others) for ok in appendable]
        written: list[str] = []
        failure: EventLogError | None = None
        for (partition, job), (path, error) in zip(jobs, outcomes, strict=True):
            if error is None:
                written.append(path)
                self._high[partition] = last_of(job)
            else:
                self._high.pop(partition, None)
                self._history_high.pop(partition, None)
                failure = failure or error
        if failure is not None:
            raise failure
        return written

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < 2**31:
            raise EventLogError(
                f"event log for source {self._source!r}: partition must be an int in "
                f"[0, 2**31), got {partition!r}"
            )

    def _fresh(self, partition: int, recs: list[Envelope]) -> list[Envelope]:
        """Records of one partition above its high-water mark, ascending, each offset once."""
        self._check_partition(partition)
        recs.sort(key=_offset_of)
        lowest, highest = recs[0].offset, recs[-1].offset
        if lowest < 0 or highest > _MAX_OFFSET:
            bad = lowest if lowest < 0 else highest
            raise EventLogError(
                f"event log for source {self._source!r} partition {partition}: offset must "
                f"be in [0, {_MAX_OFFSET}], got {bad}"
            )
        high = self.last_offset(partition)
        floor = -1 if high is None else max(high, -1)  # history below 0 never blocks a live offset
        fresh: list[Envelope] = []
        for rec in recs:
            if rec.offset > floor:
                fresh.append(rec)
                floor = rec.offset
        return fresh

    def _partition_dir(self, partition: int) -> str:
        return f"{self._dir}/{_PARTITION_PREFIX}{partition}"

    def _scan_partition(self, partition: int, adopt: bool = True) -> tuple[int | None, int | None]:
        """Learn a partition's highest history offset (< 0) and highest offset from its live
        file names (files of fenced owner epochs do not count: ``read_listing``).

        Temp files are left alone: one may be another writer's in-flight file (a zombie's,
        whose file the epoch rule will ignore); compaction removes old ones."""
        listing = self._listing(partition)
        history: int | None = None
        high: int | None = None
        own = self._open.get(partition)
        for first, upto, path in listing.live:
            last: int | None = upto
            if own is not None and path == own.path:
                last = own.last
            elif is_open(path):
                last = self._adopt(partition, first, upto, path, adopt and bool(self._roll_bytes))
            if last is None:
                continue
            if high is None or last > high:
                high = last
            if last < 0 and (history is None or last > history):
                history = last
        return history, high

    def _adopt(self, partition: int, first: int, upto: int, path: str, roll: bool) -> int | None:
        """The last offset (at most ``upto``) of another writer's open rolling file, None
        when it holds none. With ``roll`` (a rolling writer about to append), if no later
        epoch bounds the file and its epoch is not above this writer's, its writer is gone
        (a crash, or a restart without owner epochs): it is rolled here, renamed to its
        final name, whose last offset caps what readers take (a torn tail stays behind it,
        unread); an empty one is removed. Imports (history) never roll it."""
        try:
            with self._fs.open(path, "rb") as raw:
                data = bytes(raw.read())
            last = _last_offset(data, upto)
            epoch = epoch_of(_basename(path)) or 0
            if roll and upto >= _MAX_OFFSET and epoch <= self._epoch.get(partition, 0):
                folder = self._partition_dir(partition)
                if last is None:
                    os.remove(path)
                else:
                    os.replace(path, f"{folder}/{file_name(first, last, epoch)}")
                _fsync_dir(folder)
        except FileNotFoundError:
            return None  # rolled or compacted meanwhile: the next listing has it
        except Exception as exc:
            raise EventLogError(
                f"cannot read event-log file {self._url(path)}: {type(exc).__name__}: {exc}"
            ) from exc
        return last

    def max_epoch(self, partition: int) -> int:
        """The highest owner epoch a marker or file of ``partition`` carries (0: none)."""
        return self._listing(partition).max_epoch

    def _listing(self, partition: int) -> Listing:
        """The partition folder read with the owner-epoch rule (``read_listing``)."""
        folder = self._partition_dir(partition)
        try:
            return read_listing(folder, _list_names(self._fs, folder))
        except Exception as exc:
            raise EventLogError(
                f"cannot list event-log folder {self._url(folder)}: {exc}; check that log_root "
                f"is reachable and readable"
            ) from exc

    def begin_epoch(self, partition: int, epoch: int, start: int) -> None:
        """Start owner ``epoch`` of ``partition``: from now on this writer's files carry it,
        and a durable marker says that this epoch logs from offset ``start`` on, so readers
        ignore what an earlier (fenced) owner wrote at or past ``start``
        (docs/reliability.md#owner-epochs). The partition's high-water mark is re-learned."""
        self._check_partition(partition)
        if epoch < 1:
            raise EventLogError(f"owner epoch must be at least 1, got {epoch}")
        if partition in self._open:  # an earlier epoch's rolling file: the new one starts anew
            self._seal(partition)
        folder = self._partition_dir(partition)
        final = f"{folder}/{marker_name(epoch, start)}"
        self._commit(partition, final, lambda out: None)
        self._epoch[partition] = epoch
        self._high.pop(partition, None)
        self._history_high.pop(partition, None)

    def _write(self, partition: int, recs: list[Envelope], roll: bool = False) -> str:
        """Write one partition's file under a temp name, make it durable, then rename it
        (with ``roll`` and rolling on: append it as synced blocks to the open file)."""
        folder = self._partition_dir(partition)
        name = file_name(recs[0].offset, recs[-1].offset, self._epoch.get(partition, 0))
        final = f"{folder}/{name}"
        tmp = f"{folder}/{_TMP_PREFIX}{uuid.uuid4().hex}.avro"
        rows = _rows(recs)
        metadata = {
            _META_VERSION: ENVELOPE_VERSION,
            _META_SOURCE: self._source,
            _META_RECORDS: str(len(recs)),
        }
        try:
            if roll and self._roll_bytes:
                del metadata[_META_RECORDS]  # an open file's count is not known up front
                buffer = io.BytesIO()
                fastavro.writer(
                    buffer,
                    self._schema,
                    rows,
                    codec=self._codec,
                    codec_compression_level=_level(self._codec),
                    sync_interval=_SYNC_INTERVAL,
                    metadata=metadata,
                )
            elif self._local:
                _write_local(folder, tmp, final, self._schema, rows, self._codec, metadata)
            else:
                self._fs.makedirs(folder, exist_ok=True)
                with self._fs.open(tmp, "wb") as out:
                    fastavro.writer(
                        out,
                        self._schema,
                        rows,
                        codec=self._codec,
                        codec_compression_level=_level(self._codec),
                        sync_interval=_SYNC_INTERVAL,
                        metadata=metadata,
                    )
                self._fs.mv(tmp, final)
        except Exception as exc:
            _remove_quietly(self._fs, tmp)
            if isinstance(exc, OSError):
                raise EventLogError(
                    f"cannot write event-log file {self._url(final)}: {exc}; nothing was "
                    f"committed for partition {partition} — check free space and write "
                    f"permission on log_root, then retry"
                ) from exc
            raise EventLogError(
                f"cannot write event-log file {self._url(final)}: a record of offsets "
                f"{recs[0].offset}..{recs[-1].offset} does not match the envelope schema of "
                f"source {self._source!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if roll and self._roll_bytes:
            return self._append_rolled(
                partition, buffer.getvalue(), recs[0].offset, recs[-1].offset
            )
        return self._url(final)

    def _appendable(self, partition: int) -> bool:
        """Whether the partition's next rolled append goes to its open file as it is (no
        roll due first: ``_append_rolled`` would append to it without sealing it)."""
        if not self._roll_bytes:
            return False
        cur = self._open.get(partition)
        return cur is not None and not self._roll_due(partition, cur)

    def _roll_due(self, partition: int, cur: _OpenFile) -> bool:
        """Whether the open file must be rolled before the next append: broken, of an
        older epoch, or open for ``roll_seconds``."""
        return (
            cur.broken
            or cur.epoch != self._epoch.get(partition, 0)
            or time.monotonic() - cur.opened >= self._roll_seconds
        )

    def _append_open_files(
        self, jobs: list[tuple[int, tuple[EnvelopeColumns, np.ndarray]]]
    ) -> list[_Outcome]:
        """``_write_columns(..., roll=True)`` of partitions whose open file takes the
        append (``_appendable``), in one native call with the GIL released throughout
        (``_native.append_log_blocks``): each partition's records encoded as blocks ending
        with its file's sync marker, appended (``O_APPEND``) and fsynced, the partitions on
        their own threads; a failure is handled as ``_append_rolled`` does (the file cut
        back, else rolled)."""
        if not jobs:
            return []
        payload = jobs[0][1][0].payload
        if any(batch.payload is not payload for _, (batch, _) in jobs):
            raise ValueError("one native append takes the partitions of one payload")
        opened = [self._open[partition] for partition, _ in jobs]
        metadata = {_META_VERSION: ENVELOPE_VERSION, _META_SOURCE: self._source}
        results = _append_blocks(
            self._schema_json, metadata, self._codec, _DEFLATE_LEVEL, payload,
            [(cur.path, partition, cur.sync, _int64s(batch.offsets), batch.keys,
              _int64s(batch.event_time_ms), _int64s(batch.processed_at_ms), _int64s(rows))
             for cur, (partition, (batch, rows)) in zip(opened, jobs, strict=True)],
            block_bytes=_SYNC_INTERVAL,
        )  # fmt: skip
        outcomes: list[_Outcome] = []
        for cur, (partition, (batch, _)), (size, failed) in zip(opened, jobs, results, strict=True):
            if failed is not None:
                outcomes.append(("", self._failed_append(partition, batch, cur, *failed)))
                continue
            cur.size += size
            cur.last = int(batch.offsets[-1])
            outcomes.append((self._rolled_if_full(partition, cur), None))
        return outcomes

    def _failed_append(
        self,
        partition: int,
        batch: EnvelopeColumns,
        cur: _OpenFile,
        stage: str,
        errno: int,
        message: str,
    ) -> EventLogError:
        """The error of a native append to ``cur`` that failed at ``stage``; as
        ``_append_rolled``: a file gone is forgotten, a failed write or fsync is undone."""
        if stage == "encode":  # nothing was written
            first, last = int(batch.offsets[0]), int(batch.offsets[-1])
            final = f"{self._partition_dir(partition)}/{file_name(first, last, cur.epoch)}"
            return EventLogError(
                f"cannot write event-log file {self._url(final)}: a record of offsets "
                f"{first}..{last} does not match the envelope schema of source "
                f"{self._source!r}: EventLogError: {message}"
            )
        exc = (
            OSError(errno, os.strerror(errno), *([cur.path] if stage == "open" else []))
            if errno
            else OSError(message)
        )
        if stage == "open":
            if isinstance(exc, FileNotFoundError):  # gone (the log root wiped?): start anew
                del self._open[partition]
        else:
            try:
                fd = os.open(cur.path, os.O_WRONLY)
            except OSError:
                cur.broken = True  # cannot cut it back: roll it
                with contextlib.suppress(EventLogError):
                    self._seal(partition)
            else:
                try:
                    self._undo_append(partition, cur, fd)
                finally:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        error = self._append_error(partition, cur, exc)
        error.__cause__ = exc
        return error

    def _append_error(self, partition: int, cur: _OpenFile, exc: OSError) -> EventLogError:
        """The error of an append to the open file ``cur`` that the OS refused."""
        return EventLogError(
            f"cannot append to event-log file {self._url(cur.path)}: {exc}; nothing "
            f"was committed for partition {partition} — check free space and write "
            f"permission on log_root, then retry"
        )

    def _write_columns(
        self,
        partition: int,
        batch: EnvelopeColumns,
        rows: np.ndarray | None,
        roll: bool = False,
    ) -> str:
        """Encode one partition's columns natively, then commit the file as ``_write`` does
        (with ``roll`` and rolling on: append it as synced blocks to the open file)."""
        offsets = _int64s(batch.offsets)
        first, last = int(offsets[0]), int(offsets[-1])
        folder = self._partition_dir(partition)
        final = f"{folder}/{file_name(first, last, self._epoch.get(partition, 0))}"
        metadata = {
            _META_VERSION: ENVELOPE_VERSION,
            _META_SOURCE: self._source,
            _META_RECORDS: str(len(offsets)),
        }
        roll = roll and bool(self._roll_bytes)
        if roll:
            del metadata[_META_RECORDS]  # an open file's count is not known up front
        try:
            data = _native.write_log_file(
                self._schema_json,
                metadata,
                self._codec,
                _DEFLATE_LEVEL,
                partition,
                offsets,
                batch.keys,
                _int64s(batch.event_time_ms),
                _int64s(batch.processed_at_ms),
                batch.payload,
                rows=None if rows is None else _int64s(rows),
                block_bytes=_SYNC_INTERVAL,
            )
        except Exception as exc:
            raise EventLogError(
                f"cannot write event-log file {self._url(final)}: a record of offsets "
                f"{first}..{last} does not match the envelope schema of source "
                f"{self._source!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if roll:
            return self._append_rolled(partition, data, first, last)
        self._commit(partition, final, lambda out: out.write(data))
        return self._url(final)

    def _append_rolled(self, partition: int, data: bytes, first: int, last: int) -> str:
        """Append the encoded container file ``data`` (records ``first..last``) to the
        partition's open rolling file as synced blocks; return the file's path.

        The first append of a file writes it whole (header and blocks) under a temp name,
        fsyncs and renames it to ``<first>-open[.e<epoch>].avro``; later ones append its
        blocks re-ended with that file's sync marker (``O_APPEND``) and fsync before
        returning. The file is opened for each append and closed after it, so no descriptor
        is held between batches (a remount, a disk swap). A failed append truncates the file
        back to its last whole block (or, failing that, rolls it under its final name, which
        caps what readers take from it). The file is rolled (renamed
        ``<first>-<last>[.e<epoch>].avro``) once it reaches ``roll_bytes``, before an append
        that comes ``roll_seconds`` after it was opened, and on a new epoch."""
        epoch = self._epoch.get(partition, 0)
        cur = self._open.get(partition)
        if cur is not None and self._roll_due(partition, cur):
            self._seal(partition)
            cur = None
        if cur is None:
            path = f"{self._partition_dir(partition)}/{open_file_name(first, epoch)}"
            sync = scan_blocks(data).sync
            self._commit(partition, path, lambda out: out.write(data))
            cur = _OpenFile(path, first, last, epoch, len(data), time.monotonic(), sync)
            self._open[partition] = cur
        else:
            chunk = blocks_with_sync(data, cur.sync)
            try:
                fd = os.open(cur.path, os.O_WRONLY | os.O_APPEND)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):  # gone (the log root wiped?): start anew
                    del self._open[partition]
                raise self._append_error(partition, cur, exc) from exc
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                self._undo_append(partition, cur, fd)
                raise self._append_error(partition, cur, exc) from exc
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
            cur.size += len(chunk)
            cur.last = last
        return self._rolled_if_full(partition, cur)

    def _rolled_if_full(self, partition: int, cur: _OpenFile) -> str:
        """The URL of the open file after an append, rolled first once it reached
        ``roll_bytes`` (a failed roll is retried at the next append: the data is durable)."""
        path = cur.path
        if cur.size >= self._roll_bytes:
            with contextlib.suppress(EventLogError):  # durable already; rolled next time
                path = self._seal(partition)
        return self._url(path)

    def _undo_append(self, partition: int, cur: _OpenFile, fd: int) -> None:
        """After a failed append: cut the open file back to its last whole block; if even
        that fails, roll it under its final name (readers take nothing past ``cur.last``),
        or at least never append to it again."""
        try:
            os.ftruncate(fd, cur.size)
            os.fsync(fd)
            return
        except OSError:
            pass
        cur.broken = True
        with contextlib.suppress(EventLogError):
            self._seal(partition)

    def _seal(self, partition: int) -> str:
        """Roll the partition's open file: rename it ``<first>-<last>[.e<epoch>].avro``."""
        cur = self._open[partition]
        folder = self._partition_dir(partition)
        final = f"{folder}/{file_name(cur.first, cur.last, cur.epoch)}"
        try:
            if os.path.exists(cur.path):  # else renamed already (a failed folder fsync)
                os.replace(cur.path, final)
            _fsync_dir(folder)
        except FileNotFoundError:
            pass  # the folder is gone (the log root wiped): nothing left to roll
        except OSError as exc:
            raise EventLogError(
                f"cannot roll event-log file {self._url(cur.path)} to {self._url(final)}: "
                f"{exc}; it is rolled at the partition's next append"
            ) from exc
        del self._open[partition]
        return final

    def close(self) -> None:
        """Roll every open file (rename it to its final name); later appends open new ones.
        Raises the first ``EventLogError`` after trying every partition."""
        failure: EventLogError | None = None
        for partition in sorted(self._open):
            try:
                self._seal(partition)
            except EventLogError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _commit(self, partition: int, final: str, fill: Callable[[Any], object]) -> None:
        """Write a file through ``fill`` under a temp name, make it durable, rename it."""
        folder = self._partition_dir(partition)
        tmp = f"{folder}/{_TMP_PREFIX}{uuid.uuid4().hex}.avro"
        try:
            if self._local:
                _durable_local(folder, tmp, final, fill)
            else:
                self._fs.makedirs(folder, exist_ok=True)
                with self._fs.open(tmp, "wb") as out:
                    fill(out)
                self._fs.mv(tmp, final)
        except Exception as exc:
            _remove_quietly(self._fs, tmp)
            raise EventLogError(
                f"cannot write event-log file {self._url(final)}: {exc}; nothing was "
                f"committed for partition {partition} — check free space and write "
                f"permission on log_root, then retry"
            ) from exc

    def _url(self, fs_path: str) -> str:
        """``fs_path`` spelled from the ``root`` the writer was given."""
        return self._root + fs_path[len(self._root_path) :]


class EventLogReader:
    """Streams envelopes back from the event log, file by file, in offset order.

    Each file is read with the schema in its own header, so files written before a
    payload schema change come back with the fields they were written with.

    Example:
        >>> schema = {"type": "record", "name": "Order",
        ...           "fields": [{"name": "amount", "type": "double"}]}
        >>> writer = EventLogWriter("memory://doc-reader", "orders", schema)
        >>> paths = writer.append([Envelope(partition=p, offset=o, key=None, event_time_ms=o,
        ...                                 processed_at_ms=o, payload={"amount": 1.0})
        ...                        for p, o in [(1, 4), (0, 9), (0, 3)]])
        >>> reader = EventLogReader("memory://doc-reader")
        >>> reader.sources(), reader.partitions("orders"), reader.count("orders")
        (['orders'], [0, 1], 3)
        >>> [(e.partition, e.offset) for e in reader.read_all("orders")]
        [(0, 3), (0, 9), (1, 4)]
    """

    def __init__(self, root: str) -> None:
        self._root = root.rstrip("/")
        self._fs, root_path = _filesystem(root)
        self._root_path = root_path.rstrip("/")

    def sources(self) -> list[str]:
        """Names of the sources the log holds, sorted; empty when the log does not exist."""
        entries = self._entries(self._root_path)
        if entries is None:
            return []
        return sorted(n for n, kind, _ in entries if kind == "directory" and n[:1] != ".")

    def partitions(self, source: str) -> list[int]:
        """Partitions of ``source`` that have a folder in the log, ascending."""
        entries = self._source_entries(source)
        found = []
        for name, kind, _ in entries:
            match = _PARTITION_RE.match(name)
            if match and kind == "directory":
                found.append(int(match.group(1)))
        return sorted(found)

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        """Envelopes of one partition in ascending offset order, each offset at most once.

        The partition's files are listed when this is called; records are then decoded
        lazily, one file open at a time. A partition without a folder yields nothing.
        """
        self._source_entries(source)
        return self._iter_partition(source, partition, self._files(source, partition))

    def read_all(self, source: str) -> Iterator[Envelope]:
        """Envelopes of every partition of ``source``, partition by partition."""
        parts = self.partitions(source)
        return self._iter_partitions(source, parts)

    def files(self, source: str, partition: int) -> list[tuple[int, int, str]]:
        """Live files of a partition as ``(first offset, last offset, path)``, by offset,
        without files whose range lies inside another's; empty without a folder. ``last``
        is the highest offset to take from the file (``Listing``): records above it are
        not part of the log."""
        self._source_entries(source)
        return self._files(source, partition)

    def read_file(self, path: str) -> bytes:
        """The bytes of a file ``files`` listed (the native core decodes them).

        Raises FileNotFoundError when a compaction removed it since the listing (list
        again), EventLogError when it cannot be read.
        """
        try:
            with self._fs.open(path, "rb") as raw:
                return bytes(raw.read())
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise EventLogError(
                f"cannot read event-log file {self._url(path)}: {type(exc).__name__}: {exc}"
            ) from exc

    def count(self, source: str) -> int:
        """Number of records of ``source``, from file headers (no record is decoded)."""
        total = 0
        for partition in self.partitions(source):
            for _, last, path in self._files(source, partition):
                total += self._count_file(path, last)
        return total

    def size_bytes(self, source: str) -> int:
        """Total size in bytes of ``source``'s log files (temp files excluded)."""
        total = 0
        for partition in self.partitions(source):
            entries = self._entries(self._partition_dir(source, partition)) or []
            total += sum(size for name, _, size in entries if _FILE_RE.match(name))
        return total

    def usage(self, source: str) -> dict[int, tuple[int, int]]:
        """Partition → (files, bytes) of ``source``'s log files (temp files excluded)."""
        out: dict[int, tuple[int, int]] = {}
        for partition in self.partitions(source):
            entries = self._entries(self._partition_dir(source, partition)) or []
            sizes = [size for name, _, size in entries if _FILE_RE.match(name)]
            out[partition] = (len(sizes), sum(sizes))
        return out

    def _iter_partitions(self, source: str, parts: list[int]) -> Iterator[Envelope]:
        for partition in parts:
            yield from self._iter_partition(source, partition, self._files(source, partition))

    def _iter_partition(
        self, source: str, partition: int, files: list[tuple[int, int, str]]
    ) -> Iterator[Envelope]:
        """The records of ``files`` in offset order; when a file was compacted away after
        the listing (``EventLogCompactor``), the partition is listed again and reading goes
        on after the last offset handed out."""
        last = _BEFORE_ALL
        for _ in range(_RELISTS):
            reading = _Reading(last)
            try:
                yield from self._iter_files(files, reading)
                return
            except FileNotFoundError:
                last = reading.last
                files = self._files(source, partition)
        raise EventLogError(
            f"event log for source {source!r} partition {partition}: files kept vanishing "
            f"while being read ({_RELISTS} listings); is something deleting them?"
        )

    def _iter_files(
        self, files: list[tuple[int, int, str]], reading: _Reading
    ) -> Iterator[Envelope]:
        last = reading.last
        for _, file_last, path in files:
            if file_last <= last:
                continue  # wholly covered by files already read
            try:
                raw_file = self._open_file(path)
            except FileNotFoundError:
                raise  # compacted away since the listing: the caller lists again
            except Exception as exc:
                raise EventLogError(
                    f"cannot read event-log file {self._url(path)}: {type(exc).__name__}: {exc}"
                ) from exc
            try:
                with raw_file as raw:
                    avro = fastavro.reader(raw)
                    _check_header(avro.metadata, self._url(path))
                    # Hot loop: one dict lookup per field, one Envelope per record.
                    for rec in cast(Iterator[dict[str, Any]], avro):
                        offset = rec["offset"]
                        if offset <= last:
                            continue  # overlapping files (not written by a sane writer)
                        if offset > file_last:
                            break  # past the listing's limit: a fenced owner's late append
                        last = reading.last = offset
                        env = _new_object(Envelope)
                        _set_partition(env, rec["partition"])
                        _set_offset(env, offset)
                        _set_key(env, rec["key"])
                        _set_event_time(env, rec["event_time"])
                        _set_processed_at(env, rec["processed_at"])
                        _set_payload(env, rec["payload"])
                        yield env
                        if offset == file_last:
                            break  # nothing after it counts (a torn tail may follow)
            except _SKEWLESS_ERRORS:
                raise
            except Exception as exc:
                raise EventLogError(
                    f"cannot read event-log file {self._url(path)}: {type(exc).__name__}: {exc}"
                ) from exc

    def _open_file(self, path: str) -> Any:
        """A binary file object of ``path``; an open rolling file is read up to its last
        whole block (a block its writer is appending right now is not there yet)."""
        if not is_open(path):
            return self._fs.open(path, "rb")
        with self._fs.open(path, "rb") as raw:
            return io.BytesIO(whole_blocks(bytes(raw.read())))

    def _count_file(self, path: str, upto: int) -> int:
        """Records of a file at or below ``upto`` (its listing's limit)."""
        try:
            named = _FILE_RE.match(_basename(path))
            limited = named is None or named.group(2) == _OPEN or int(named.group(2)) > upto
            with self._fs.open(path, "rb") as raw:
                avro = fastavro.reader(raw)
                _check_header(avro.metadata, self._url(path))
                stored = avro.metadata.get(_META_RECORDS)
                if stored is not None and not limited:
                    return int(stored)
                raw.seek(0)
                return count_upto(raw, upto)
        except _SKEWLESS_ERRORS:
            raise
        except Exception as exc:
            raise EventLogError(
                f"cannot read event-log file {self._url(path)}: {type(exc).__name__}: {exc}"
            ) from exc

    def _source_dir(self, source: str) -> str:
        _check_source_name(source)
        return f"{self._root_path}/{source}"

    def _partition_dir(self, source: str, partition: int) -> str:
        return f"{self._source_dir(source)}/{_PARTITION_PREFIX}{partition}"

    def _source_entries(self, source: str) -> list[tuple[str, str, int]]:
        folder = self._source_dir(source)
        entries = self._entries(folder)
        if entries is None:
            raise EventLogMissing(
                f"no event log for source {source!r}: looked in {self._url(folder)}; the log "
                f"is written by `skewless import` or by the stream workers — run one of them "
                f"first, or check that log_root points at the right place"
            )
        return entries

    def _files(self, source: str, partition: int) -> list[tuple[int, int, str]]:
        """Live files of a partition as (first, last, fs path), sorted by offsets: files of
        fenced owner epochs are left out (``read_listing``)."""
        folder = self._partition_dir(source, partition)
        names = [name for name, _, _ in self._entries(folder) or []]
        return read_listing(folder, names).live

    def _entries(self, folder: str) -> list[tuple[str, str, int]] | None:
        """(name, type, size) of a folder's children, or ``None`` if the folder is missing."""
        try:
            self._fs.invalidate_cache(folder)
            if not self._fs.isdir(folder):
                return None
            listing = self._fs.ls(folder, detail=True)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise EventLogError(
                f"cannot list event-log folder {self._url(folder)}: {exc}; check that log_root "
                f"is reachable and readable"
            ) from exc
        return [
            (_basename(e["name"]), str(e.get("type", "")), int(e.get("size") or 0)) for e in listing
        ]

    def _url(self, fs_path: str) -> str:
        return self._root + fs_path[len(self._root_path) :]


def _filesystem(root: str) -> tuple[Any, str]:
    """The fsspec filesystem and the in-filesystem path of ``root``."""
    try:
        fs, path = fsspec.core.url_to_fs(root)
    except Exception as exc:
        raise EventLogError(
            f"event log root {root!r} cannot be opened: {type(exc).__name__}: {exc}; "
            f"use a local path or an fsspec URL whose filesystem package is installed"
        ) from exc
    return fs, str(path)


@dataclasses.dataclass(slots=True)
class _OpenFile:
    """A writer's open rolling file of one partition."""

    path: str  # fs path, <first>-open[.e<epoch>].avro
    first: int
    last: int  # last offset appended and synced
    epoch: int
    size: int  # bytes of the header and the whole blocks appended so far
    opened: float  # time.monotonic() of the first append
    sync: bytes  # the header's sync marker, ending every block
    broken: bool = False  # a failed append could not be cut back: roll before the next


class _Reading:
    """The last offset a partition read handed out (kept across re-listings)."""

    __slots__ = ("last",)

    def __init__(self, last: int) -> None:
        self.last = last


def epoch_of(name: str) -> int | None:
    """The owner epoch of a log file name (0 for a file without one), None if not a log file."""
    match = _FILE_RE.match(name)
    if match is None:
        return None
    return int(match.group(3) or 0)


def file_name(first: int, last: int, epoch: int = 0) -> str:
    """The name of a log file of offsets ``first..last`` written under owner ``epoch``."""
    tail = f".e{epoch}" if epoch else ""
    return f"{_offset_name(first)}-{_offset_name(last)}{tail}.avro"


def open_file_name(first: int, epoch: int = 0) -> str:
    """The name of a rolling file from offset ``first`` on that its writer still appends to."""
    tail = f".e{epoch}" if epoch else ""
    return f"{_offset_name(first)}-{_OPEN}{tail}.avro"


def is_open(path: str) -> bool:
    """Whether ``path`` names a rolling file still open for appends (``open_file_name``)."""
    match = _FILE_RE.match(_basename(path))
    return match is not None and match.group(2) == _OPEN


def marker_name(epoch: int, start: int) -> str:
    """The name of the marker saying that owner ``epoch`` logs from offset ``start`` on."""
    return f"{_MARKER_PREFIX}{epoch}-from-{start}"


@dataclasses.dataclass(frozen=True, slots=True)
class Listing:
    """A partition folder read with the owner-epoch rule (docs/reliability.md#owner-epochs).

    Each epoch's marker names the offset its owner logs from; a file of epoch ``e`` whose
    first offset is at or past the start of any later epoch was written by an owner that
    had been fenced (a zombie, or a worker killed before its commit): readers ignore it.
    A live file's ``last`` is the highest offset readers take from it: the one its name
    states, lowered to just below the start of the first later epoch (a fenced owner may
    have kept appending to its rolling file past the handover); an open rolling file that
    no later epoch bounds has ``last`` = the highest possible offset. Readers skip every
    record above ``last``.
    """

    live: list[tuple[int, int, str]]  # (first, last, path), read in this order
    fenced: list[str]  # paths readers ignore; compaction deletes them
    sealed_below: int | None  # the latest epoch's start: no later marker can fence below it
    max_epoch: int  # highest epoch of a marker or file (0: none)


def read_listing(folder: str, names: Iterable[str]) -> Listing:
    """Split a partition folder's ``names`` into live and fenced files (see ``Listing``)."""
    files: list[tuple[int, int | None, int, str]] = []
    starts: dict[int, int] = {}
    for name in names:
        match = _FILE_RE.match(name)
        if match:
            epoch = int(match.group(3) or 0)
            last = None if match.group(2) == _OPEN else int(match.group(2))
            files.append((int(match.group(1)), last, epoch, f"{folder}/{name}"))
            continue
        marker = _MARKER_RE.match(name)
        if marker:
            epoch, start = int(marker.group(1)), int(marker.group(2))
            starts[epoch] = min(start, starts.get(epoch, start))
    limit = _epoch_limits(starts)
    live: list[tuple[int, int, str]] = []
    fenced: list[str] = []
    for first, named_last, epoch, path in files:
        below = limit(epoch)  # records of this epoch count only below the next one's start
        if first >= below:
            fenced.append(path)
        else:
            top = below - 1 if named_last is None else min(named_last, below - 1)
            live.append((first, top, path))
    newest = max(starts) if starts else None
    return Listing(
        live=uncovered(live),
        fenced=sorted(fenced),
        sealed_below=None if newest is None else starts[newest],
        max_epoch=max([0, *starts, *(f[2] for f in files)]),
    )


def _epoch_limits(starts: dict[int, int]) -> Callable[[int], int]:
    """``limit(e)``: the lowest start of an epoch later than ``e`` (no limit: past all)."""
    ordered = sorted(starts.items())
    suffix_min: list[int] = []
    running = _MAX_OFFSET + 1
    for _, start in reversed(ordered):
        running = min(running, start)
        suffix_min.append(running)
    suffix_min.reverse()
    epochs = [e for e, _ in ordered]

    def limit(epoch: int) -> int:
        i = bisect.bisect_right(epochs, epoch)
        return suffix_min[i] if i < len(epochs) else _MAX_OFFSET + 1

    return limit


def uncovered(files: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """``(first, last, path)`` files sorted by offsets, without those whose range lies inside
    another's (what a compaction that stopped before removing its inputs leaves)."""
    out: list[tuple[int, int, str]] = []
    reach = _BEFORE_ALL
    for first, last, path in sorted(files, key=lambda f: (f[0], -f[1], f[2])):
        if last <= reach:
            continue
        out.append((first, last, path))
        reach = last
    return out


def count_upto(raw: Any, upto: int) -> int:
    """Records at or below ``upto`` in the whole blocks of a log file open at its start.

    Reads block headers only (``scan_file``) and decodes the last whole block: when its
    records are all at or below ``upto`` (a rolled file as its writer closed it), the
    blocks' counts are the answer; otherwise (a rolling file a fenced owner appended to,
    or a block a failed append left behind the name's last offset) every record is decoded.
    """
    blocks = scan_file(raw)
    if not blocks.records:
        return 0
    raw.seek(0)
    head = raw.read(blocks.header_end)
    raw.seek(blocks.last_block)
    tail = raw.read(blocks.end - blocks.last_block)
    records = cast(Iterator[dict[str, Any]], fastavro.reader(io.BytesIO(head + tail)))
    if all(rec["offset"] <= upto for rec in records):
        return blocks.records
    raw.seek(0)
    whole = io.BytesIO(raw.read(blocks.end))
    return sum(
        1 for rec in cast(Iterator[dict[str, Any]], fastavro.reader(whole)) if rec["offset"] <= upto
    )


def _last_offset(data: bytes, upto: int) -> int | None:
    """The highest offset at most ``upto`` in the whole blocks of a log file's bytes."""
    blocks = scan_blocks(data)
    if not blocks.records:
        return None
    tail = data[: blocks.header_end] + data[blocks.last_block : blocks.end]
    for chunk in (tail, data[: blocks.end]):  # the last block, else every block
        records = cast(Iterator[dict[str, Any]], fastavro.reader(io.BytesIO(chunk)))
        below = [int(rec["offset"]) for rec in records if rec["offset"] <= upto]
        if below:
            return max(below)
    return None


def _check_source_name(source: str) -> None:
    if not source or "/" in source or "\\" in source or source.startswith("."):
        raise EventLogError(
            f"event log: source name {source!r} cannot name a folder (it must be non-empty, "
            f"must not contain '/' or '\\', and must not start with '.')"
        )


def _check_header(metadata: dict[str, str], url: str) -> None:
    version = metadata.get(_META_VERSION)
    if version != ENVELOPE_VERSION:
        raise EventLogError(
            f"event-log file {url} has envelope version {version!r}, this skewless reads "
            f"{ENVELOPE_VERSION!r}; it was written by another skewless version or is not an "
            f"event-log file"
        )


def _write_local(
    folder: str,
    tmp: str,
    final: str,
    schema: dict[str, Any],
    rows: Iterable[dict[str, Any]],
    codec: Codec,
    metadata: dict[str, str],
) -> None:
    """Write, fsync, rename, then fsync the folder so the rename itself is durable."""
    _durable_local(
        folder,
        tmp,
        final,
        lambda out: fastavro.writer(
            out,
            schema,
            rows,
            codec=codec,
            codec_compression_level=_level(codec),
            sync_interval=_SYNC_INTERVAL,
            metadata=metadata,
        ),
    )


def _durable_local(folder: str, tmp: str, final: str, fill: Callable[[Any], object]) -> None:
    """``fill`` the temp file, fsync, rename, then fsync the folder so the rename is durable."""
    if not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)
        _fsync_dir(os.path.dirname(folder))
    with open(tmp, "wb") as out:
        fill(out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, final)
    _fsync_dir(folder)


# Encodes partitions' blocks, appends them to their open files and fsyncs them, all in
# one GIL-free call (tests wrap it to inject faults).
_append_blocks = _native.append_log_blocks

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _writer_pool() -> ThreadPoolExecutor:
    """Threads that write the partitions of one append at once (shared by every writer)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="skewless-log")
        return _POOL


def _int64s(values: Any) -> np.ndarray:
    """``values`` as a contiguous int64 numpy array (no copy when it already is one)."""
    return np.ascontiguousarray(values, dtype=np.int64)


def _level(codec: Codec) -> int | None:
    return _DEFLATE_LEVEL if codec == "deflate" else None


def _fsync_dir(folder: str) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync elsewhere
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(fs: Any, path: str) -> None:
    """Best-effort removal of a temp file; readers ignore temp files anyway."""
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except Exception:
        pass  # cleanup after a failure must not mask that failure


def _rows(recs: list[Envelope]) -> Iterator[dict[str, Any]]:
    for rec in recs:
        yield {
            "partition": rec.partition,
            "offset": rec.offset,
            "key": rec.key,
            "event_time": rec.event_time_ms,
            "processed_at": rec.processed_at_ms,
            "payload": rec.payload,
        }


def _list_names(fs: Any, folder: str) -> list[str]:
    """Child names of ``folder``; empty when it does not exist."""
    fs.invalidate_cache(folder)
    try:
        if not fs.isdir(folder):
            return []
        return [_basename(str(p)) for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _offset_name(offset: int) -> str:
    """``offset`` zero-padded to 20 digits, with a leading ``-`` when negative (history)."""
    return f"{offset:0{_OFFSET_DIGITS}d}" if offset >= 0 else f"-{-offset:0{_OFFSET_DIGITS}d}"


def _offset_of(rec: Envelope) -> int:
    return rec.offset


def _avro_name(source: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", source)
    return name if name and not name[0].isdigit() else "_" + name


def _named_types(node: Any) -> Iterator[str]:
    """Names of every record, enum and fixed defined in a schema."""
    if isinstance(node, dict):
        if node.get("type") in ("record", "error", "enum", "fixed") and "name" in node:
            yield str(node["name"])
        for field in node.get("fields", ()) if isinstance(node.get("fields"), list) else ():
            if isinstance(field, dict):
                yield from _named_types(field.get("type"))
        for key in ("items", "values"):
            if key in node:
                yield from _named_types(node[key])
        if isinstance(node.get("type"), dict | list):
            yield from _named_types(node["type"])
    elif isinstance(node, list):
        for item in node:
            yield from _named_types(item)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
