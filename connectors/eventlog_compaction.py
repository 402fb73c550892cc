"""Merging an event-log partition's small files into larger ones, without a moment of loss.

A stream worker writes one file per partition per batch, so a partition fed at a low rate
with short batches collects thousands of small files (DESIGN §4 names each file by its
first and last offset). ``EventLogCompactor.compact`` replaces each run of consecutive small
files by one file holding the same records in the same order:

1. write the merged file under a temporary name (``.compact-<uuid>.avro``), fsync it;
2. rename it to ``<first offset of the run>-<last offset of the run>.avro``, fsync the folder;
3. delete the run's files.

Between 2 and 3 the merged file and its inputs are both listed; readers skip a file whose
offset range lies inside another's (``eventlog.uncovered``), so a crash there leaves
nothing counted twice, and the next compaction deletes the leftovers. A reader that listed
the files before step 3 and then finds one gone lists the partition again and goes on after
the last offset it handed out. The writer only ever adds files above the partition's
highest offset and the compactor only merges files already there, so a compaction can run
beside the partition's live worker. One compaction per partition at a time: on a local disk
a lock file (``.compact.lock``) enforces it.

Example:
    >>> from engine.envelope import Envelope
    >>> from connectors.eventlog import EventLogReader, EventLogWriter
    >>> schema = {"type": "record", "name": "Order",
    ...           "fields": [{"name": "amount", "type": "double"}]}
    >>> writer = EventLogWriter("memory://doc-compact", "orders", schema)
    >>> for o in range(3):
    ...     _ = writer.append([Envelope(partition=0, offset=o, key=None, event_time_ms=o,
    ...                                 processed_at_ms=o, payload={"amount": 1.0})])
    >>> done = EventLogCompactor("memory://doc-compact").compact("orders", 0)
    >>> done.files_before, done.files_after, done.records_merged
    (3, 1, 3)
    >>> [e.offset for e in EventLogReader("memory://doc-compact").read("orders", 0)]
    [0, 1, 2]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import fastavro
from fsspec.implementations.local import LocalFileSystem

from connectors.eventlog import (
    _FILE_RE,
    _MAX_OFFSET,
    _META_RECORDS,
    _META_SOURCE,
    _META_VERSION,
    _PARTITION_PREFIX,
    _SYNC_INTERVAL,
    _TMP_PREFIX,
    ENVELOPE_VERSION,
    Codec,
    _check_header,
    _check_source_name,
    _filesystem,
    _fsync_dir,
    _level,
    _list_names,
    _remove_quietly,
    count_upto,
    epoch_of,
    file_name,
    is_open,
    read_listing,
)
from engine.errors import EventLogError
from engine.log_files import whole_blocks

__all__ = ["Compaction", "EventLogCompactor"]

_COMPACT_PREFIX = ".compact-"
_LOCK_NAME = ".compact.lock"
STALE_TEMP_S = 3600.0  # a writer's temp file older than this was left by a crash: removed


@dataclass(frozen=True, slots=True, kw_only=True)
class Compaction:
    """What one ``compact`` call did to one partition."""

    source: str
    partition: int
    files_before: int
    files_after: int
    records_merged: int  # records moved into new files
    leftovers_removed: int  # files inside another's range, left by an interrupted compaction
    fenced_removed: int = 0  # files of fenced owner epochs, which readers ignore
    temps_removed: int = 0  # writers' temp files older than STALE_TEMP_S (crashed writers)


@dataclass(frozen=True, slots=True)
class _File:
    first: int
    last: int
    path: str
    records: int
    epoch: int  # owner epoch of the file (0: none)
    schema: str  # the header's schema text: only files with the same schema are merged
    codec: str
    # the listing cuts the file (a fenced owner's rolling file that runs past the next
    # epoch's start, or an open file an epoch ended): rewritten up to ``last`` even alone
    cut: bool = False


class EventLogCompactor:
    """Merges runs of small event-log files; see the module docstring for the protocol."""

    def __init__(self, root: str) -> None:
        self._root = root.rstrip("/")
        self._fs, root_path = _filesystem(root)
        self._root_path = root_path.rstrip("/")
        self._local = isinstance(self._fs, LocalFileSystem)

    def compact(
        self,
        source: str,
        partition: int,
        *,
        small_records: int = 10_000,
        target_records: int = 100_000,
        committed: int | Callable[[], int | None] | None = None,
    ) -> Compaction:
        """Merge each run of at least two consecutive files of fewer than ``small_records``
        records into files of up to ``target_records`` records.

        ``committed``: the consumer group's committed offset of the partition, if known (or a
        function giving it, called only when the partition has owner epochs).
        With owner epochs only files that no later epoch can fence are merged: those below
        the newest epoch's start, and those below ``committed`` (the next owner starts at a
        committed offset, and commits only move forward)."""
        _check_source_name(source)
        if small_records < 1 or target_records < 1:
            raise EventLogError(
                f"compaction: small_records and target_records must be at least 1, got "
                f"{small_records} and {target_records}"
            )
        folder = f"{self._root_path}/{source}/{_PARTITION_PREFIX}{partition}"
        with self._locked(folder):
            names = _list_names(self._fs, folder)
            for name in names:
                if name.startswith(_COMPACT_PREFIX):  # an interrupted compaction's temp file
                    _remove_quietly(self._fs, f"{folder}/{name}")
            temps = [f"{folder}/{n}" for n in names if n.startswith(_TMP_PREFIX)]
            stale = [path for path in temps if self._older_than(path, STALE_TEMP_S)]
            for path in stale:
                _remove_quietly(self._fs, path)
            listed = [f"{folder}/{name}" for name in names if _FILE_RE.match(name)]
            listing = read_listing(folder, names)
            for path in listing.fenced:  # readers ignore them: an owner that had been fenced
                self._fs.rm_file(path)
            kept = listing.live
            leftovers = set(listed) - {path for _, _, path in kept} - set(listing.fenced)
            for path in sorted(leftovers):
                self._fs.rm_file(path)
            files = [self._describe(first, last, path) for first, last, path in kept]
            merged = 0
            after = len(files)
            # Files the partition's current owner may still be fenced within stay as they are:
            # only what lies below the newest epoch's start is sealed (the next epoch starts
            # at or after it). A partition without owner epochs is merged as before.
            sealed = listing.sealed_below
            if sealed is not None:
                offset = committed() if callable(committed) else committed
                if offset is not None:
                    sealed = max(sealed, offset)
            for run in _runs(files, small_records, target_records, sealed):
                self._merge(folder, source, run)
                merged += sum(f.records for f in run)
                after -= len(run) - 1
        return Compaction(
            source=source,
            partition=partition,
            files_before=len(listed),
            files_after=after,
            records_merged=merged,
            leftovers_removed=len(leftovers),
            fenced_removed=len(listing.fenced),
            temps_removed=len(stale),
        )

    def _describe(self, first: int, last: int, path: str) -> _File:
        name = path.rsplit("/", 1)[-1]
        match = _FILE_RE.match(name)
        # an open rolling file no later epoch bounds is still being appended to: never merged
        growing = is_open(name) and last >= _MAX_OFFSET
        # a rolling file, or one a fenced owner appended to past the next epoch's start:
        # only its records up to `last` count
        limited = match is None or is_open(name) or int(match.group(2)) > last
        try:
            with self._fs.open(path, "rb") as raw:
                avro = fastavro.reader(raw)
                meta = avro.metadata
                _check_header(meta, self._url(path))
                stored = meta.get(_META_RECORDS)
                if growing:
                    records = -1
                elif stored is None or limited:  # rolling or rolled: count up to `last`
                    raw.seek(0)
                    records = count_upto(raw, last)
                else:
                    records = int(stored)
                return _File(
                    first=first,
                    last=last,
                    path=path,
                    records=records,
                    cut=limited and not growing,
                    epoch=epoch_of(name) or 0,
                    schema=str(meta.get("avro.schema", "")),
                    codec=str(meta.get("avro.codec", "null")),
                )
        except EventLogError:
            raise
        except Exception as exc:
            raise EventLogError(
                f"compaction: cannot read event-log file {self._url(path)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _merge(self, folder: str, source: str, run: list[_File]) -> None:
        epoch = max(f.epoch for f in run)  # the run's valid records stay valid under it
        final = f"{folder}/{file_name(run[0].first, run[-1].last, epoch)}"
        tmp = f"{folder}/{_COMPACT_PREFIX}{uuid.uuid4().hex}.avro"
        expected = sum(f.records for f in run)
        counted = [0]
        metadata = {
            _META_VERSION: ENVELOPE_VERSION,
            _META_SOURCE: source,
            _META_RECORDS: str(expected),
        }
        try:
            schema = json.loads(run[0].schema)  # the header's text, read by _describe
            codec = run[0].codec
            with self._fs.open(tmp, "wb") as out:
                fastavro.writer(
                    out,
                    fastavro.parse_schema(schema),
                    self._rows(run, counted),
                    codec=codec,
                    codec_compression_level=_level(cast(Codec, codec)),  # as the header says
                    sync_interval=_SYNC_INTERVAL,
                    metadata=metadata,
                )
                out.flush()
                if self._local:
                    os.fsync(out.fileno())
            if counted[0] != expected:
                raise EventLogError(
                    f"compaction: files {self._url(run[0].path)} .. {self._url(run[-1].path)} "
                    f"hold {counted[0]} records, their headers say {expected}; left as they were"
                )
            self._fs.mv(tmp, final)
            if self._local:
                _fsync_dir(folder)
        except Exception as exc:
            _remove_quietly(self._fs, tmp)
            if isinstance(exc, EventLogError):
                raise
            raise EventLogError(
                f"compaction: cannot merge {len(run)} files into {self._url(final)}: "
                f"{type(exc).__name__}: {exc}; the files are left as they were"
            ) from exc
        for f in run:
            self._fs.rm_file(f.path)
        if self._local:
            _fsync_dir(folder)

    def _rows(self, run: list[_File], counted: list[int]) -> Iterator[dict[str, Any]]:
        last = None
        for f in run:
            with self._fs.open(f.path, "rb") as raw:
                data = raw if not is_open(f.path) else io.BytesIO(whole_blocks(raw.read()))
                for rec in cast(Iterator[dict[str, Any]], fastavro.reader(data)):
                    offset = rec["offset"]
                    if offset > f.last:
                        break  # past the listing's limit: a fenced owner's late append
                    if last is not None and offset <= last:
                        raise EventLogError(
                            f"compaction: offset {offset} of {self._url(f.path)} is not above "
                            f"{last}; the files overlap, left as they were"
                        )
                    last = offset
                    counted[0] += 1
                    yield rec
                    if offset == f.last:
                        break  # nothing after it counts (a torn tail may follow)

    def _older_than(self, path: str, seconds: float) -> bool:
        """Whether ``path`` was last modified more than ``seconds`` ago (False if unknown)."""
        import time

        try:
            info = self._fs.info(path)
        except FileNotFoundError:
            return False
        stamp = info.get("mtime") or info.get("created") or info.get("LastModified")
        if stamp is None:
            return False
        if hasattr(stamp, "timestamp"):
            stamp = stamp.timestamp()
        return time.time() - float(stamp) > seconds

    @contextlib.contextmanager
    def _locked(self, folder: str) -> Iterator[None]:
        if not self._local:
            yield  # object storage has no lock: run one compactor per partition
            return
        import fcntl

        if not os.path.isdir(folder):
            yield
            return
        with open(os.path.join(folder, _LOCK_NAME), "a+b") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EventLogError(
                    f"compaction of {self._url(folder)} is already running in another "
                    f"process; wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _url(self, fs_path: str) -> str:
        return self._root + fs_path[len(self._root_path) :]


def _runs(
    files: list[_File], small: int, target: int, sealed_below: int | None = None
) -> Iterator[list[_File]]:
    """Runs of at least two consecutive small files with one schema and codec, each run
    holding at most ``target`` records; with ``sealed_below``, only files wholly below it.
    A file the listing cuts (``_File.cut``) is rewritten even alone, without what lies past
    its limit."""
    run: list[_File] = []
    total = 0

    def worth(run: list[_File]) -> bool:
        return len(run) >= 2 or any(f.cut for f in run)

    for f in files:
        if f.records < 0 or (sealed_below is not None and f.last >= sealed_below):
            if worth(run):
                yield run
            run, total = [], 0
            continue
        fits = (
            f.records < small
            and run
            and f.schema == run[0].schema
            and f.codec == run[0].codec
            and total + f.records <= target
        )
        if fits:
            run.append(f)
            total += f.records
            continue
        if worth(run):
            yield run
        run, total = ([f], f.records) if f.records < small or f.cut else ([], 0)
    if worth(run):
        yield run
