"""The definitions DSL: Entity, KafkaSource, FeatureView, Aggregation — declarations only.

Constructing a definition never raises for a semantic mistake: the compiler
(``engine.plan``) validates a whole definitions folder at once and reports every problem
with its file and line, which this module records at construction.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

SourceFormat = Literal["avro", "json"]
AvroWire = Literal["schemaless", "confluent"]


def _caller_location(depth: int = 3) -> str:
    """``file:line`` of the user code that constructed a definition."""
    try:
        frame = sys._getframe(depth)
    except ValueError:  # pragma: no cover - interpreter without frames
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


@dataclass(frozen=True, slots=True)
class Entity:
    """What features are about, identified by one or more join keys.

    Example:
        >>> customer = Entity("customer", join_keys=["customer_id"])
    """

    name: str
    _: KW_ONLY
    join_keys: Sequence[str]
    description: str = ""
    location: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "join_keys", tuple(self.join_keys))
        if not self.location:
            object.__setattr__(self, "location", _caller_location())


@dataclass(frozen=True, slots=True)
class KafkaSource:
    """A Kafka topic of events with an Avro schema and an event-time field.

    ``schema`` is an Avro record schema as a dict or a path to an ``.avsc`` file relative
    to the definitions folder. ``timestamp_field`` is a ``long`` in milliseconds (optionally
    ``timestamp-millis``) or microseconds (``timestamp-micros``). ``key_fields`` are the
    payload fields that key the topic; by default the join keys of the first view that
    reads the source. Avro values are plain schemaless Avro (``wire="schemaless"``) or the
    Confluent wire format (``wire="confluent"``: magic byte 0, a 4-byte schema id that must
    equal ``schema_id`` when given, then the body written with this schema).

    Example:
        >>> tx = KafkaSource("transactions", topic="transactions",
        ...                  schema="schemas/transaction.avsc", timestamp_field="ts")
    """

    name: str
    _: KW_ONLY
    schema: Mapping[str, Any] | str
    timestamp_field: str
    topic: str = ""
    format: SourceFormat = "avro"
    wire: AvroWire = "schemaless"
    schema_id: int | None = None
    key_fields: Sequence[str] | None = None
    description: str = ""
    location: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.topic:
            object.__setattr__(self, "topic", self.name)
        if self.key_fields is not None:
            object.__setattr__(self, "key_fields", tuple(self.key_fields))
        if not self.location:
            object.__setattr__(self, "location", _caller_location())


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One windowed aggregate of a column: ``<column>_<function>_<window>`` unless ``name``.

    ``window`` is a duration (``"30d"``) or ``"lifetime"``; ``hop`` (the tile size) defaults
    to the largest of 1d, 1h, 5m, 1m, 10s, 1s dividing the window and at most a twelfth of
    it. ``n`` is required by ``first_n`` / ``last_n``.

    Example:
        >>> Aggregation("amount", "sum", window="30d").feature_name
        'amount_sum_30d'
    """

    column: str
    function: str
    _: KW_ONLY
    window: str
    hop: str | None = None
    n: int | None = None
    name: str | None = None

    @property
    def feature_name(self) -> str:
        if self.name:
            return self.name
        function = f"{self.function.removesuffix('_n')}_{self.n}" if self.n else self.function
        return f"{self.column}_{function}_{str(self.window).strip()}"


@dataclass(frozen=True, slots=True)
class FeatureView:
    """Aggregations of one source's events per entity.

    ``transform(row) -> row | None`` reshapes a decoded payload (``None`` drops it);
    ``filter(row) -> bool`` keeps rows after the transform. ``batch_transform(df) -> df``
    is the vectorized form (the fast path): a pandas DataFrame of a batch of payloads in, a
    DataFrame out whose index is a subset of the input's (a dropped index drops that
    record); it must compute each row from that row alone. A view has a row transform
    (with or without a filter) or a batch transform, not both. All are plain, named
    functions: their source code is part of the view's fingerprint. Columns a transform
    adds are declared in ``columns`` as Avro primitive types. ``allowed_lateness``
    overrides the default (the longest finite window).

    Example:
        >>> customer = Entity("customer", join_keys=["customer_id"])
        >>> tx = KafkaSource("transactions", schema={"type": "record", "name": "T",
        ...     "fields": [{"name": "customer_id", "type": "string"},
        ...                {"name": "amount", "type": "double"},
        ...                {"name": "ts", "type": "long"}]}, timestamp_field="ts")
        >>> view = FeatureView("customer_spend", entity=customer, source=tx,
        ...     aggregations=[Aggregation("amount", "sum", window="1d")])
    """

    name: str
    _: KW_ONLY
    entity: Entity
    source: KafkaSource
    aggregations: Sequence[Aggregation]
    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    filter: Callable[[dict[str, Any]], bool] | None = None
    batch_transform: Callable[[Any], Any] | None = None
    columns: Mapping[str, str] | None = None
    allowed_lateness: str | None = None
    description: str = ""
    location: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        if self.columns is not None:
            object.__setattr__(self, "columns", dict(self.columns))
        if not self.location:
            object.__setattr__(self, "location", _caller_location())
