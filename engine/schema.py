"""Avro source schemas: load a schema (dict or .avsc), and describe its top-level fields."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException, UnknownType

_KINDS = {
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "boolean": "bool",
    "bytes": "bytes",
    "enum": "str",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec:
    """One top-level field: its column kind (or ``None`` when not a primitive) and nullability."""

    name: str
    kind: str | None
    nullable: bool
    avro_type: str
    logical_type: str | None


def int_range(specs: Iterable[FieldSpec]) -> tuple[int, int]:
    """The values an integer join key can hold, over the fields behind it (one per view
    read): Avro ``int`` 32 bits, ``long`` 64 (signed); the widest of them."""
    bits = max(32 if spec.avro_type == "int" else 64 for spec in specs)
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def outside(bounds: tuple[int, int]) -> str:
    """How a key past ``int_range``'s ``bounds`` is refused (both read paths say it)."""
    bits = bounds[1].bit_length() + 1
    return f"outside the {bits}-bit range of its source field (no event can carry it)"


def load_schema(schema: Mapping[str, Any] | str, base_dir: Path) -> dict[str, Any]:
    """The Avro schema as a dict; a string is a path to an ``.avsc`` file under ``base_dir``.

    Raises ValueError naming the file or the Avro problem.
    """
    if isinstance(schema, str):
        path = Path(schema)
        if not path.is_absolute():
            path = base_dir / path
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValueError(f"schema file {str(path)!r} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"schema file {str(path)!r} is not valid JSON: {exc}") from exc
    elif isinstance(schema, Mapping):
        raw = json.loads(json.dumps(schema))  # deep copy, and proves it is plain JSON
    else:
        raise ValueError(
            f"expected an Avro schema dict or a .avsc path, got {type(schema).__name__}"
        )
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise ValueError("the schema must be an Avro record (a JSON object with type 'record')")
    try:
        fastavro.parse_schema(raw)
    except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid Avro schema: {exc}") from exc
    return raw


def _describe(name: str, avro_type: Any) -> FieldSpec:
    nullable = False
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        nullable = len(branches) < len(avro_type)
        avro_type = branches[0] if len(branches) == 1 else {"type": "union"}
    logical = None
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        type_name = avro_type.get("type")
        if type_name == "enum":
            return FieldSpec(
                name=name, kind="str", nullable=nullable, avro_type="enum", logical_type=None
            )
        avro_type = type_name if isinstance(type_name, str) else "complex"
    kind = None if logical == "decimal" else _KINDS.get(avro_type)
    return FieldSpec(
        name=name, kind=kind, nullable=nullable, avro_type=str(avro_type), logical_type=logical
    )


def field_specs(schema: Mapping[str, Any]) -> dict[str, FieldSpec]:
    """Top-level fields of a record schema by name."""
    return {f["name"]: _describe(f["name"], f["type"]) for f in schema["fields"]}


def plain_schema(node: Any) -> Any:
    """A copy of an Avro schema without ``logicalType`` or fastavro's ``__`` keys.

    Read with it, timestamps stay int milliseconds (fastavro would make datetimes), in line
    with the engine's int-ms rule; the log and the stream decoder both use it.
    """
    if isinstance(node, dict):
        return {
            k: plain_schema(v)
            for k, v in node.items()
            if k != "logicalType" and not k.startswith("__")
        }
    if isinstance(node, list):
        return [plain_schema(v) for v in node]
    return node
