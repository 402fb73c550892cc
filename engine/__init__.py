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
from engine.store import FeatureStore

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
