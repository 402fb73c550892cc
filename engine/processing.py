"""The one path from a logged source record to tile updates: transform → key → admission → fold.

The stream worker, the backfill and rebuild-online call ``extract_all`` on each record and
``apply_extracted`` to fold it (the backfill in the order of its mode): one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.envelope import Envelope
from engine.kernel.tiles import EntityTiles, fold
from engine.plan import SourcePlan, ViewPlan

EntityKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Extracted:
    """What one record contributes to one view: its entity, aggregation inputs and order."""

    entity: EntityKey
    values: tuple[Any, ...]
    event_time_ms: int
    processed_at_ms: int
    partition: int
    offset: int


def event_time_ms(source: SourcePlan, payload: dict[str, Any]) -> int:
    """The event time in ms of a decoded payload (µs timestamps are floored to ms)."""
    return int(payload[source.timestamp_field]) // source.timestamp_divisor


def is_admitted(view: ViewPlan, event_time_ms: int, processed_at_ms: int) -> bool:
    """DESIGN §3 admission: not later than the view's allowed lateness."""
    lateness = view.allowed_lateness_ms
    return lateness is None or event_time_ms >= processed_at_ms - lateness


def view_row(view: ViewPlan, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The row a view aggregates: the payload after its transform and filter (None = dropped).

    A transform or filter that raises drops the record for this view only; the record
    stays in the log, so every path drops it the same way.
    """
    row: dict[str, Any] | None = payload
    try:
        if view.transform is not None:
            row = view.transform(dict(payload))
            if not isinstance(row, dict):
                return None
        if view.filter is not None and not view.filter(row):  # type: ignore[arg-type]
            return None
    except Exception:  # user code; the record is dropped for this view on every path
        return None
    return row


def _entity(join_keys: tuple[str, ...], row: dict[str, Any]) -> EntityKey | None:
    try:
        entity = tuple(map(row.__getitem__, join_keys))
    except KeyError:
        return None
    return None if None in entity else entity


def _values(view: ViewPlan, row: dict[str, Any]) -> tuple[Any, ...]:
    values = tuple(map(row.get, view.input_columns))
    for i in view.float_inputs:
        value = values[i]
        # a transform's 0/0 or overflow counts as null: it has no exact sum
        if value is not None and not math.isfinite(value):
            values = (*values[:i], None, *values[i + 1 :])
    return values


def extract(
    view: ViewPlan,
    source: SourcePlan,
    envelope: Envelope,
    *,
    include_late: bool = False,
) -> Extracted | None:
    """The view's share of one logged record, or None when the view drops or refuses it."""
    found = extract_all(row_groups([view]), source, envelope, include_late=include_late)
    return found[0][1] if found else None


@dataclass(frozen=True, slots=True)
class RowGroup:
    """Views that see the same row and entity (same transform, filter and join keys)."""

    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None
    filter: Callable[[dict[str, Any]], bool] | None
    join_keys: tuple[str, ...]
    members: tuple[tuple[int, ViewPlan], ...]  # (caller's slot, view)


def row_groups(views: Sequence[ViewPlan]) -> tuple[RowGroup, ...]:
    """Group views so each record's transform and key extraction run once per group.

    The slot of a view is its position in ``views``.
    """
    groups: dict[tuple[Any, Any, tuple[str, ...]], list[tuple[int, ViewPlan]]] = {}
    for slot, view in enumerate(views):
        groups.setdefault((view.transform, view.filter, view.join_keys), []).append((slot, view))
    return tuple(
        RowGroup(transform=t, filter=f, join_keys=k, members=tuple(m))
        for (t, f, k), m in groups.items()
    )


def extract_all(
    groups: Sequence[RowGroup],
    source: SourcePlan,
    envelope: Envelope,
    *,
    include_late: bool = False,
) -> list[tuple[int, Extracted]]:
    """Every view's share of one logged record as (slot, Extracted); views that drop or
    refuse the record are absent. Transforms and keys run once per row group."""
    payload = envelope.payload
    et = payload[source.timestamp_field] // source.timestamp_divisor
    pt = envelope.processed_at_ms
    out: list[tuple[int, Extracted]] = []
    for group in groups:
        members = group.members
        if not include_late:
            members = tuple((s, v) for s, v in members if is_admitted(v, et, pt))
            if not members:
                continue
        row = payload
        if group.transform is not None or group.filter is not None:
            transformed = view_row(members[0][1], payload)
            if transformed is None:
                continue
            row = transformed
        entity = _entity(group.join_keys, row)
        if entity is None:
            continue
        for slot, view in members:
            out.append(
                (slot, Extracted(entity=entity, values=_values(view, row), event_time_ms=et,
                                 processed_at_ms=pt, partition=envelope.partition,
                                 offset=envelope.offset))
            )  # fmt: skip
    return out


def apply_extracted(view: ViewPlan, tiles: EntityTiles, item: Extracted) -> None:
    """Fold an extracted record into its entity's tiles."""
    fold(
        view.layout,
        tiles,
        item.values,
        item.event_time_ms,
        (item.event_time_ms, item.partition, item.offset),
    )


def apply_record(
    view: ViewPlan,
    source: SourcePlan,
    envelope: Envelope,
    tiles_for: Callable[[EntityKey], EntityTiles],
    *,
    include_late: bool = False,
) -> EntityKey | None:
    """Extract and fold one record; returns the entity it touched (None if none)."""
    item = extract(view, source, envelope, include_late=include_late)
    if item is None:
        return None
    apply_extracted(view, tiles_for(item.entity), item)
    return item.entity
