"""skewless: declare windowed aggregation features once; serve and train on the same values.

Example:
    >>> from engine import Entity, KafkaSource, FeatureView, Aggregation, FeatureStore
"""

import logging

from engine.definitions import Aggregation, Entity, FeatureView, KafkaSource
from engine.errors import (
    ConfigError,
    DefinitionError,
    EventLogMissing,
    FeatureRefError,
    InputDataError,
    SkewlessError,
)

# A library leaves logging to its application (Python logging HOWTO): without this, Python's
# last-resort handler would print librdkafka's connection retries to stderr of every API user.
# The CLI configures logging, so workers and commands still show what they log.
logging.getLogger("skewless").addHandler(logging.NullHandler())

TYPE_CHECKING = False
if TYPE_CHECKING:
    from engine.store import FeatureStore


def __getattr__(name: str) -> object:
    # FeatureStore wires in the connectors, which import engine's data types: import it
    # lazily so `import connectors.eventlog` does not need the whole facade first.
    if name == "FeatureStore":
        from engine.store import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = [
    "Aggregation",
    "ConfigError",
    "DefinitionError",
    "Entity",
    "EventLogMissing",
    "FeatureRefError",
    "FeatureStore",
    "FeatureView",
    "InputDataError",
    "KafkaSource",
    "SkewlessError",
]
