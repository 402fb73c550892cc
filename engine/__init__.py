"""skewless: declare windowed aggregation features once; serve and train on the same values.

Example:
    >>> from engine import Entity, KafkaSource, FeatureView, Aggregation, FeatureStore
"""

from engine.definitions import Aggregation, Entity, FeatureView, KafkaSource
from engine.errors import (
    ConfigError,
    DefinitionError,
    EventLogMissing,
    FeatureRefError,
    InputDataError,
    SkewlessError,
)

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
