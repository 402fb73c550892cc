"""The worker compacts its own event-log partitions in the background (issue 11).

A worker writes one file per partition per batch — durable before the batch's offsets are
committed — so a partition fed at 1,000 events/s with short batches gains thousands of small
files an hour. Every ``interval_s`` a daemon thread of the worker merges the small files of
the partitions it owns (``EventLogCompactor``, the same code as ``skewless compact-log``:
safe beside the writer and every reader) up to the group's committed offset: nothing a later
owner epoch could fence is merged (docs/reliability.md#owner-epochs). Compaction also deletes
the files of fenced epochs and writers' temp files older than an hour.

Example:
    >>> upkeep = BackgroundCompaction(config, {"transactions": "transactions"},
    ...                               owned=lambda: {"transactions": [0, 1]})  # doctest: +SKIP
    >>> upkeep.start()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from engine.config import Config
from engine.errors import SkewlessError

log = logging.getLogger("skewless.worker")


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactionOptions:
    """When and how much the worker compacts (CLI: ``skewless worker --compact-interval``)."""

    interval_s: float = 60.0  # 0: the worker does not compact (run `skewless compact-log`)
    small_records: int = 50_000  # files below this are merged
    target_records: int = 500_000  # records per merged file


class BackgroundCompaction:
    """Merges the small event-log files of the partitions this worker owns, periodically.

    ``sources`` maps each source name to its topic; ``owned()`` returns, per source name, the
    partitions the worker holds now (the runtime's assignment).
    """

    def __init__(
        self,
        config: Config,
        sources: Mapping[str, str],
        *,
        owned: Callable[[], Mapping[str, Collection[int]]],
        options: CompactionOptions | None = None,
    ) -> None:
        self.config = config
        self.sources = dict(sources)
        self.owned = owned
        self.options = options or CompactionOptions()
        self.rounds = 0
        self.files_merged = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.options.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="skewless-log-compaction", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def run_once(self) -> int:
        """One round over the owned partitions; returns the files merged away."""
        from connectors.eventlog_compaction import EventLogCompactor
        from connectors.kafka import KafkaOffsets, KafkaSettings, group_id

        owned = {name: sorted(ps) for name, ps in self.owned().items() if ps}
        if not owned:
            return 0
        offsets = KafkaOffsets(KafkaSettings.from_config(self.config))
        tps = [(self.sources[name], p) for name, ps in owned.items() for p in ps]
        committed = offsets.committed(group_id(self.config.project), tps)
        compactor = EventLogCompactor(self.config.event_log_root)
        merged = 0
        started = time.monotonic()
        for name, ps in owned.items():
            for p in ps:
                done = compactor.compact(
                    name,
                    p,
                    small_records=self.options.small_records,
                    target_records=self.options.target_records,
                    committed=committed.get((self.sources[name], p)),
                )
                merged += done.files_before - done.files_after
        self.rounds += 1
        self.files_merged += merged
        if merged:
            log.info("log compaction: %d files merged away in %.1fs", merged,
                     time.monotonic() - started)  # fmt: skip
        return merged

    def _run(self) -> None:
        while not self._stop.wait(self.options.interval_s):
            try:
                self.run_once()
            except SkewlessError as exc:  # Kafka or the log unreachable: try next round
                log.warning("log compaction skipped this round: %s", exc)
            except Exception:  # never let upkeep take the worker down
                log.exception("log compaction failed this round")
