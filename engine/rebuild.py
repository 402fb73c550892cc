"""Rebuild a view's online keyspace from the event log (after a definition change or a lost Redis).

The log is replayed through the same ``processing.extract_all`` / ``apply_extracted`` the
stream worker runs, admitting each record by its *logged* ``processed_at`` — so the rebuilt
state is what the workers would have written under the current definition: per source
partition, the tiles still in a window as of ``now``, the fence (last logged offset applied),
the newest write time, and a journal entry. Workers of the view should be stopped while it
runs; restarted, they continue from their committed offsets and the fences make them skip
what the rebuild already holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.online import PartitionState, entity_write
from engine.plan import Plan
from engine.ports import EventLogSource, OnlineStateStore, StateWrite
from engine.processing import EntityKey, apply_extracted, extract_all, row_groups

_CHUNK = 2_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildResult:
    """What a rebuild wrote."""

    view: str
    fingerprint: str
    records: int
    entities_written: int


def rebuild_view(
    plan: Plan,
    view_name: str,
    log: EventLogSource,
    store: OnlineStateStore,
    *,
    now_ms: int,
    progress: Callable[[int], None] | None = None,
) -> RebuildResult:
    """Write every entity's state of ``view_name`` from the log into its current keyspace."""
    view = plan.views[view_name]
    source = plan.sources[view.source]
    groups = row_groups([view])
    records = written = 0
    for partition in log.partitions(source.name):
        states: dict[EntityKey, PartitionState] = {}
        for envelope in log.read(source.name, partition):
            records += 1
            for _, item in extract_all(groups, source, envelope):
                state = states.get(item.entity)
                if state is None:
                    state = states[item.entity] = PartitionState()
                apply_extracted(view, state.tiles, item)
                state.fence = item.offset
                state.updated_ms = max(state.updated_ms, item.processed_at_ms)
            if progress and records % 100_000 == 0:
                progress(100_000)
        batch: list[StateWrite] = []
        for entity, state in states.items():
            touched = [(hop, k) for hop, tiles in state.tiles.by_hop.items() for k in tiles]
            write = entity_write(view, entity, partition, state, touched, True,
                                 [[state.fence, state.updated_ms]], now_ms)  # fmt: skip
            if write.expire_at_ms is not None and write.expire_at_ms <= now_ms:
                continue  # nothing of this entity can be read any more
            batch.append(write)
            if len(batch) >= _CHUNK:
                store.write(batch)
                written += len(batch)
                batch = []
        if batch:
            store.write(batch)
            written += len(batch)
    if progress:
        progress(records % 100_000)
    return RebuildResult(
        view=view_name, fingerprint=view.fingerprint, records=records, entities_written=written
    )
