"""The one exception tree of skewless; every error a user can meet is a subclass of SkewlessError.

SkewlessError                      root of everything skewless raises on purpose
├── DefinitionError (ValueError)   a definitions folder breaks a rule of DESIGN §2; lists every problem
├── ConfigError (ValueError)       skewless.yaml or a SKEWLESS_* variable is invalid
├── FeatureRefError (KeyError)     a "view:feature" reference names nothing in the plan
├── InputDataError (ValueError)    user data (entity_df, import rows) is malformed; names row and column
├── DecodeError (ValueError)       a record's bytes or fields cannot be decoded against its source schema
│   └── RecordRefused              a source record the worker dead-letters; ``code`` names the rule
├── CodecError (ValueError)        stored accumulator/tile bytes are corrupt or of an unknown version
├── EventLogError (OSError)        the event log cannot be read or written
│   └── EventLogMissing            no log exists yet for a source a backfill needs
├── NothingToVerify (LookupError)  `verify` found no entity to check (the log applies nothing to the views)
├── OnlineStoreUnavailable (ConnectionError)  Redis cannot be reached
│   └── OnlineStoreAuthError                  Redis refused the credentials (wrong password, ACL)
├── OnlineStateLost (RuntimeError) Redis lost a worker's state again and again, right after each rebuild
├── OnlineWriteConflict (RuntimeError) another writer moved an entity's fence since this worker read it
├── OwnerFenced (RuntimeError)     a later owner epoch holds the partition: this worker is a zombie
├── KafkaUnavailable (ConnectionError)        Kafka cannot be reached, or refused a request
├── ClusterUnavailable (ConnectionError)      the Dask scheduler of a backfill cannot be reached
└── ServicesError (RuntimeError)   the local Kafka/Redis of scripts/services.sh cannot be run
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ClusterUnavailable",
    "CodecError",
    "ConfigError",
    "DecodeError",
    "DefinitionError",
    "EventLogError",
    "EventLogMissing",
    "FeatureRefError",
    "InputDataError",
    "KafkaUnavailable",
    "NothingToVerify",
    "OnlineStateLost",
    "OnlineWriteConflict",
    "OwnerFenced",
    "OnlineStoreAuthError",
    "OnlineStoreUnavailable",
    "RecordRefused",
    "ServicesError",
    "SkewlessError",
]


class SkewlessError(Exception):
    """Root of the skewless exception tree."""


class DefinitionError(SkewlessError, ValueError):
    """One or more definition rules are broken; ``problems`` holds every message.

    Each message reads ``<file>:<line> view '<name>' <field>: <what is wrong>``.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} definition errors:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(text)


class ConfigError(SkewlessError, ValueError):
    """Configuration (skewless.yaml or SKEWLESS_* environment) is invalid."""


class FeatureRefError(SkewlessError, KeyError):
    """A feature reference does not resolve against the plan."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InputDataError(SkewlessError, ValueError):
    """User-supplied data (entity_df, imported rows) is malformed."""


class DecodeError(SkewlessError, ValueError):
    """A record cannot be decoded against its source schema."""


class RecordRefused(DecodeError):
    """A source record that goes to the dead-letter topic instead of the online store and log.

    ``code`` is one of ``engine.serde.REASON_CODES`` (the ``skewless.reason_code`` header and
    the worker's ``refused`` counter); the message names the source, the field and the rule.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CodecError(SkewlessError, ValueError):
    """Encoded accumulator or tile bytes are corrupt or of an unknown codec version."""


class EventLogError(SkewlessError, OSError):
    """The event log cannot be read or written."""


class EventLogMissing(EventLogError):
    """No event log exists for a source that a backfill needs."""


class NothingToVerify(SkewlessError, LookupError):
    """``verify`` has no entity to check: the log holds no record the views apply."""


class OnlineStoreUnavailable(SkewlessError, ConnectionError):
    """The online store (Redis) cannot be reached."""


class OnlineStoreAuthError(OnlineStoreUnavailable):
    """Redis refused skewless's credentials (wrong password, unknown or disabled ACL user).

    Retrying cannot help: the message names the address, the user and the settings to fix,
    never the password.
    """


class OnlineStateLost(SkewlessError, RuntimeError):
    """A worker found its online state lost right after each of several rebuilds from the log.

    One loss is recovered in place (engine/stream/recovery.py); this is raised only when it
    keeps happening, e.g. something keeps emptying Redis or another worker writes the same
    partitions. The batch stays uncommitted and the runtime retries it.
    """


class OnlineWriteConflict(SkewlessError, RuntimeError):
    """Entity writes refused because the stored fence of their source partition is not the one
    the writer read: another worker wrote them since (the partition changed owner while this
    worker was still processing — a "zombie" write), or Redis lost or rolled back state.

    The other writes of the call were applied; ``previous`` holds the watermarks' previous
    values as ``OnlineStateStore.write`` returns them, ``keys`` the refused keys. The batch
    must not be committed: the runtime retries it, dropping partitions it no longer owns.
    """

    def __init__(self, keys: Iterable[str], previous: list[bytes | None]) -> None:
        self.keys = tuple(keys)
        self.previous = previous
        shown = ", ".join(self.keys[:3]) + (" …" if len(self.keys) > 3 else "")
        super().__init__(
            f"{len(self.keys)} entity write(s) refused: their partition fence in Redis moved "
            f"since this worker read it ({shown}); another worker owns the partition now, or "
            "Redis lost state — nothing of this batch is committed and it is retried"
        )


class OwnerFenced(SkewlessError, RuntimeError):
    """A write or an owner-epoch take refused: a later owner (a later consumer-group
    generation) holds these source partitions now, so this worker lost them without knowing
    (a long pause, a network partition: a "zombie"). docs/reliability.md#owner-epochs.

    ``keys`` are the owner-register keys refused. Nothing of the refused script call was
    applied; the worker drops the partitions and waits for its next assignment.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(keys)
        super().__init__(
            f"fenced: a later owner holds {', '.join(self.keys)}; this worker lost the "
            "partition(s) in a rebalance it has not seen yet and writes nothing more for them"
        )


class KafkaUnavailable(SkewlessError, ConnectionError):
    """Kafka cannot be reached, or a broker refused what skewless asked (topic, produce, commit)."""


class ClusterUnavailable(SkewlessError, ConnectionError):
    """The Dask scheduler of a distributed backfill cannot be reached (its address is named),
    or dask.distributed is not installed."""


class ServicesError(SkewlessError, RuntimeError):
    """``skewless services`` / the demo could not run or start the local Kafka and Redis."""
