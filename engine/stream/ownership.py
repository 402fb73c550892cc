"""Owner epochs: a worker that lost its partitions without knowing it (a zombie) writes nothing.

Protocol (docs/reliability.md#owner-epochs). Per (consumer group, topic, partition) one owner
register in Redis, ``sk:own:<group>:<topic>:<partition>`` = {gen, epoch}:

1. On each assignment the runtime tells the processor the consumer-group **generation** it
   was assigned in (``Ownership.assign``). Kafka gives every rebalance a higher generation
   and a partition to one member per generation, so a zombie's generation is always below
   its successor's.
2. Before its first write of the partition the worker **takes an epoch** under that
   generation (``RedisOnlineStore.take_epochs``, one atomic script): refused if a later
   generation already took the register — then the worker is a zombie and drops the
   partition — else the epoch becomes one above both the stored epoch and the highest epoch
   the event log knows (so epochs grow even if Redis lost the register).
3. Every online write script of the batch — entity writes, watermarks, in-place rebuilds —
   first checks that each register still holds the worker's epoch; a call that finds a
   later one applies nothing and raises ``OwnerFenced``.
4. The worker's log files carry the epoch in their names and, before its first file, the
   epoch's **start marker** names the first offset it logs; readers, the next owner's writer
   and compaction ignore a file of an earlier epoch that starts at or past a later epoch's
   start (``connectors.eventlog.read_listing``).
5. Offsets are committed only for records written under a current epoch; a fenced worker
   drops the partition's records, commits nothing for it, and takes a new epoch only when the
   runtime assigns the partition to it again (a new generation).

Example:
    >>> own = Ownership(store, group="skewless.payments", topic="transactions", log=writer)  # doctest: +SKIP
    >>> own.assign([0, 1], generation=7)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from engine.online import PREFIX
from engine.ports import EventLogSink

log = logging.getLogger("skewless.worker")


@runtime_checkable
class OwnerRegister(Protocol):
    """Where owner epochs are taken (``RedisOnlineStore``)."""

    def take_epochs(
        self, keys: Sequence[str], generation: int, floors: Sequence[int]
    ) -> list[int | None]:
        """A new epoch per key under ``generation``; None where a later generation holds it."""
        ...


def register_key(group: str, topic: str, partition: int) -> str:
    """The owner register of one source partition for one consumer group."""
    return f"{PREFIX}:own:{group}:{topic}:{partition}"


class Ownership:
    """The owner epochs of one source's partitions in this worker (see the module docstring).

    Not thread-safe: the processor's thread calls it; ``assign``/``forget`` come from the
    runtime's rebalance callbacks, which run between batches.
    """

    def __init__(self, register: OwnerRegister, *, group: str, topic: str, log: EventLogSink):
        self.register = register
        self.group = group
        self.topic = topic
        self.log = log
        self._generation: dict[int, int] = {}  # assigned partition → its generation
        self._epoch: dict[int, int] = {}  # partition → epoch taken under that generation
        self._unmarked: dict[int, int] = {}  # epochs whose start marker is not logged yet
        self._keys: dict[str, int] = {}  # register key → partition
        self.fenced_total = 0  # partitions this worker found taken by a later owner

    def assign(self, partitions: Iterable[int], generation: int) -> None:
        """The runtime assigned ``partitions`` in consumer-group ``generation``."""
        for p in partitions:
            self._generation[p] = generation
            self._epoch.pop(p, None)
            self._unmarked.pop(p, None)

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked, lost, or fenced: nothing more is written for ``partitions``."""
        for p in partitions:
            self._generation.pop(p, None)
            self._epoch.pop(p, None)
            self._unmarked.pop(p, None)

    def forget_all(self) -> None:
        self.forget(list(self._generation))

    def owns(self, partition: int) -> bool:
        return partition in self._generation

    def take(self, partitions: Iterable[int]) -> list[int]:
        """Take an epoch for each assigned partition that has none yet; returns the partitions
        refused (a later generation holds them: forgotten here, the caller drops them)."""
        need = sorted(p for p in set(partitions) if p in self._generation and p not in self._epoch)
        refused: list[int] = []
        by_generation: dict[int, list[int]] = {}
        for p in need:
            by_generation.setdefault(self._generation[p], []).append(p)
        for generation, ps in by_generation.items():
            floors = [self._log_epoch(p) for p in ps]
            keys = [register_key(self.group, self.topic, p) for p in ps]
            got = self.register.take_epochs(keys, generation, floors)
            for p, key, epoch in zip(ps, keys, got, strict=True):
                self._keys[key] = p
                if epoch is None:
                    refused.append(p)
                    continue
                self._epoch[p] = epoch
                self._unmarked[p] = epoch
                log.info("%s partition %d: owner epoch %d (generation %d)",
                         self.topic, p, epoch, generation)  # fmt: skip
        if refused:
            self._refuse(refused, "a later consumer-group generation took them")
        return refused

    def fence(self, partitions: Iterable[int]) -> list[tuple[str, int]]:
        """(register key, epoch) pairs a write touching ``partitions`` must hold."""
        return [
            (register_key(self.group, self.topic, p), self._epoch[p])
            for p in sorted(set(partitions))
            if p in self._epoch
        ]

    def fenced_out(self, keys: Iterable[str]) -> list[int]:
        """The partitions of refused register ``keys``: forgotten, to be dropped."""
        gone = sorted({self._keys[k] for k in keys if k in self._keys})
        self._refuse(gone, "a later owner took them while this worker was not looking")
        return gone

    def mark(self, partitions: np.ndarray, offsets: np.ndarray) -> None:
        """Log the start marker of each epoch whose first records are about to be logged."""
        if not self._unmarked:
            return
        begin = getattr(self.log, "begin_epoch", None)
        for p in [int(x) for x in np.unique(partitions)]:
            epoch = self._unmarked.get(p)
            if epoch is None:
                continue
            start = int(offsets[partitions == p].min())
            if begin is not None:
                begin(p, epoch, start)
            del self._unmarked[p]

    def _log_epoch(self, partition: int) -> int:
        highest = getattr(self.log, "max_epoch", None)
        return int(highest(partition)) if highest is not None else 0

    def _refuse(self, partitions: Sequence[int], why: str) -> None:
        if not partitions:
            return
        self.fenced_total += len(partitions)
        log.warning(
            "%s partition(s) %s: FENCED — %s; this worker writes nothing more for them and "
            "drops their records until they are assigned to it again",
            self.topic, list(partitions), why,
        )  # fmt: skip
        self.forget(partitions)
