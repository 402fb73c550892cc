"""The compiler: validate definitions against DESIGN §2 and freeze them into a Plan.

Every problem in a definitions folder is collected and raised together as one
``DefinitionError`` whose messages name the file and line, the view and the field.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from engine.definitions import Aggregation, Entity, FeatureView, KafkaSource
from engine.durations import LIFETIME, default_hop_ms, format_duration, parse_duration
from engine.errors import DefinitionError, FeatureRefError
from engine.kernel.functions import FUNCTIONS
from engine.kernel.tiles import TileLayout
from engine.schema import FieldSpec, field_specs, load_schema

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_KINDS = frozenset({"str", "int"})
_COLUMN_TYPES = {
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "boolean": "bool",
    "bytes": "bytes",
}
_MAX_N = 1000
TILE_CODEC_VERSION = 2
"""Version of the native core's online tile codec (``native/core/src/codec.rs``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourcePlan:
    """A validated source: resolved schema, field kinds, timestamp unit and topic key."""

    name: str
    topic: str
    format: str
    wire: str
    schema_id: int | None
    schema: Mapping[str, Any]
    fields: Mapping[str, FieldSpec]
    timestamp_field: str
    timestamp_divisor: int  # raw timestamp // divisor == milliseconds
    key_fields: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AggPlan:
    """A validated aggregation."""

    feature: str
    column: str
    function: str
    window: str
    window_ms: int | None
    hop_ms: int | None
    n: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewPlan:
    """A validated feature view with its tile layout and fingerprint."""

    name: str
    entity: str
    join_keys: tuple[str, ...]
    source: str
    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None
    filter: Callable[[dict[str, Any]], bool] | None
    aggregations: tuple[AggPlan, ...]
    layout: TileLayout
    allowed_lateness_ms: int | None
    fingerprint: str
    location: str
    input_columns: tuple[str, ...]  # the column each aggregation reads, in order
    float_inputs: tuple[int, ...]  # aggregations whose column holds floats
    # the column kind each aggregation reads (int/float/str/bool/bytes)
    input_kinds: tuple[str, ...] = ()
    # the vectorized transform: a pandas DataFrame of a batch in, a DataFrame out
    batch_transform: Callable[[Any], Any] | None = None
    # merge-on-write layout (docs/decisions.md): one tile set per entity for every source
    # partition, per-partition fences in a marks hash; set by ``with_merged_tiles``
    merged: bool = False

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(a.feature for a in self.aggregations)

    def feature_index(self, feature: str) -> int:
        for i, agg in enumerate(self.aggregations):
            if agg.feature == feature:
                return i
        raise FeatureRefError(
            f"view {self.name!r} has no feature {feature!r}{_did_you_mean(feature, self.features)}; "
            f"it has: {', '.join(self.features)}"
        )


def rekeyed(view: ViewPlan, source: SourcePlan) -> bool:
    """Whether ``view`` is keyed by another entity than its source's records: one of its
    entities then gathers events from every source partition."""
    return tuple(view.join_keys) != tuple(source.key_fields)


def with_merged_tiles(plan: Plan) -> Plan:
    """``plan`` with every re-keyed view on the merge-on-write layout (the default,
    ``online.merge_rekeyed_views``; docs/decisions.md): its workers fold their batches into
    one tile set per entity, so a read merges one set whatever the source's partition count.
    The layout is another keyspace (the fingerprint changes): workers fill it from the event
    log like any view new to a non-empty log."""
    views: dict[str, ViewPlan] = {}
    for name, view in plan.views.items():
        if rekeyed(view, plan.sources[view.source]) and not view.merged:
            digest = hashlib.sha256(f"{view.fingerprint}:merged-tiles:1".encode()).hexdigest()
            view = replace(view, merged=True, fingerprint=digest[: len(view.fingerprint)])
        views[name] = view
    return replace(plan, views=views)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The frozen, validated form of a definitions folder."""

    entities: Mapping[str, Entity]
    sources: Mapping[str, SourcePlan]
    views: Mapping[str, ViewPlan]

    def resolve(self, refs: Sequence[str]) -> list[tuple[ViewPlan, int]]:
        """Resolve ``"view:feature"`` references to (view, aggregation index), in order.

        Raises FeatureRefError naming every unknown reference.
        """
        if isinstance(refs, str):
            refs = [refs]
        out: list[tuple[ViewPlan, int]] = []
        problems: list[str] = []
        for ref in refs:
            view_name, sep, feature = str(ref).partition(":")
            if not sep or not view_name or not feature:
                named = self._views_with(view_name or feature)
                hint = f" (did you mean {' or '.join(repr(r) for r in named)}?)" if named else ""
                problems.append(f"feature ref {ref!r} is not of the form 'view:feature'{hint}")
                continue
            view = self.views.get(view_name)
            if view is None:
                problems.append(
                    f"feature ref {ref!r}: no view {view_name!r}"
                    f"{_did_you_mean(ref, self._refs_like(view_name, feature))}; "
                    f"views: {', '.join(sorted(self.views)) or '(none)'}"
                )
                continue
            try:
                out.append((view, view.feature_index(feature)))
            except FeatureRefError as exc:
                elsewhere = self._views_with(feature)
                problem = str(exc)
                if elsewhere:
                    problem = (
                        f"view {view_name!r} has no feature {feature!r}; it is a feature of "
                        f"{' and '.join(repr(r) for r in elsewhere)}"
                    )
                problems.append(f"feature ref {ref!r}: {problem}")
        if problems:
            raise FeatureRefError("; ".join(problems))
        return out

    def _views_with(self, feature: str) -> list[str]:
        """``view:feature`` refs of every view that has a feature named ``feature``."""
        return [f"{v}:{feature}" for v in sorted(self.views) if feature in self.views[v].features]

    def _refs_like(self, view_name: str, feature: str) -> list[str]:
        """Candidate refs for a ref whose view does not exist: close views, same feature."""
        views = get_close_matches(view_name, list(self.views), n=3, cutoff=0.6)
        views += [v for v in sorted(self.views) if feature in self.views[v].features]
        return [f"{v}:{f}" for v in dict.fromkeys(views) for f in self.views[v].features]


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates`` (difflib), else ``""``."""
    close = get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _function_source(fn: Any) -> str:
    return textwrap.dedent(inspect.getsource(fn))


_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


def _constant(value: Any, depth: int = 0) -> Any:
    """A JSON-able canonical form of a constant value, or ``None`` when it is not one."""
    if isinstance(value, _CONSTANT_TYPES):
        return {"repr": repr(value)}
    if depth < 4 and isinstance(value, list | tuple | frozenset | set):
        items = [_constant(v, depth + 1) for v in value]
        if all(i is not None for i in items):
            kind = type(value).__name__
            return {kind: sorted(items, key=repr) if isinstance(value, frozenset | set) else items}
    if depth < 4 and isinstance(value, dict):
        pairs = [(_constant(k, depth + 1), _constant(v, depth + 1)) for k, v in value.items()]
        if all(k is not None and v is not None for k, v in pairs):
            return {"dict": sorted(pairs, key=repr)}
    return None


def _code_names(code: Any) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _code_names(const)
    return names


def _function_fingerprint(fn: Any, seen: set[int] | None = None) -> dict[str, Any]:
    """The source of ``fn`` plus what it reads from its module: constants by value and
    module-level functions of the same module by their own fingerprint, so that changing
    ``RATE = 1.1`` to ``1.2`` beside a transform changes the view's fingerprint too.
    Imported modules and library objects are recorded by name only."""
    seen = set() if seen is None else seen
    seen.add(id(fn))
    refs: dict[str, Any] = {}
    module_globals = getattr(fn, "__globals__", {})
    for name in sorted(_code_names(fn.__code__)):
        if name not in module_globals:
            continue
        value = module_globals[name]
        constant = _constant(value)
        if constant is not None:
            refs[name] = constant
        elif inspect.isfunction(value) and value.__module__ == fn.__module__:
            if id(value) not in seen:
                try:
                    refs[name] = _function_fingerprint(value, seen)
                except (OSError, TypeError):
                    refs[name] = {"function": value.__qualname__}
        else:
            refs[name] = {"object": f"{type(value).__module__}.{type(value).__qualname__}"}
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(
                _constant(cell.cell_contents) or {"object": type(cell.cell_contents).__name__}
            )
        except ValueError:  # an empty cell
            cells.append(None)
    return {"source": _function_source(fn), "globals": refs, "closure": cells}


def _fingerprint(
    view: FeatureView, source: SourcePlan, aggs: Sequence[AggPlan], lateness_ms: int | None
) -> str:
    canonical = {
        "source": {
            "name": source.name,
            "topic": source.topic,
            "format": source.format,
            "schema": source.schema,
            "timestamp_field": source.timestamp_field,
        },
        "entity": {"name": view.entity.name, "join_keys": list(view.entity.join_keys)},
        "transform": _function_fingerprint(view.transform) if view.transform else None,
        "filter": _function_fingerprint(view.filter) if view.filter else None,
        "batch_transform": (
            _function_fingerprint(view.batch_transform) if view.batch_transform else None
        ),
        "columns": dict(sorted((view.columns or {}).items())),
        "aggregations": [
            [a.feature, a.column, a.function, a.window_ms, a.hop_ms, a.n] for a in aggs
        ],
        "allowed_lateness_ms": lateness_ms,
        # the online tile codec: a new version is a new keyspace, rebuilt from the log
        # (`skewless plan` lists the views; `skewless rebuild-online` fills them)
        "tile_codec": TILE_CODEC_VERSION,
    }
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


class _Collector:
    """Accumulates problems with a uniform ``<where> <subject> <field>: <message>`` form."""

    def __init__(self, repo_parent: Path | None) -> None:
        self.problems: list[str] = []
        self.repo_parent = repo_parent

    def where(self, location: str) -> str:
        if self.repo_parent is not None and location.startswith(str(self.repo_parent)):
            return location[len(str(self.repo_parent)) :].lstrip("/")
        return location

    def add(self, location: str, subject: str, field: str, message: str) -> None:
        self.problems.append(f"{self.where(location)} {subject} {field}: {message}")


def _check_function(c: _Collector, view: FeatureView, field: str, fn: Any) -> bool:
    """True when ``fn`` is absent or a plain named function whose source can be read."""
    subject = f"view {view.name!r}"
    if fn is None:
        return True
    if not inspect.isfunction(fn):
        c.add(
            view.location,
            subject,
            field,
            f"expected a plain Python function (def ...), got {type(fn).__name__}",
        )
        return False
    if fn.__name__ == "<lambda>":
        c.add(
            view.location,
            subject,
            field,
            "a lambda cannot be fingerprinted reliably; define it with def",
        )
        return False
    try:
        _function_source(fn)
    except (OSError, TypeError):
        c.add(
            view.location,
            subject,
            field,
            f"the source code of {fn.__name__!r} is not available to fingerprint it",
        )
        return False
    return True


def _compile_source(
    c: _Collector, src: KafkaSource, base_dir: Path, candidates: Sequence[tuple[str, ...]]
) -> SourcePlan | None:
    subject = f"source {src.name!r}"
    ok = True
    if not isinstance(src.name, str) or not _NAME.match(src.name):
        c.add(src.location, subject, "name", "must be an identifier (letters, digits, _)")
        ok = False
    if src.format not in ("avro", "json"):
        c.add(src.location, subject, "format", f"expected 'avro' or 'json', got {src.format!r}")
        ok = False
    if src.wire not in ("schemaless", "confluent"):
        c.add(src.location, subject, "wire",
              f"expected 'schemaless' or 'confluent', got {src.wire!r}")  # fmt: skip
        ok = False
    if src.schema_id is not None and (
        src.wire != "confluent" or not isinstance(src.schema_id, int) or src.schema_id < 0
    ):
        c.add(src.location, subject, "schema_id",
              "a non-negative integer, only with wire='confluent'")  # fmt: skip
        ok = False
    try:
        schema = load_schema(src.schema, base_dir)
    except ValueError as exc:
        c.add(src.location, subject, "schema", str(exc))
        return None
    fields = field_specs(schema)
    if src.format == "json":
        for name, described in fields.items():
            if described.kind is None:  # array, map, record, fixed, decimal, a multi-branch union
                what = described.logical_type or described.avro_type
                c.add(src.location, subject, "schema",
                      f"field {name!r} has Avro type {what!r}, which a JSON source cannot "
                      f"decode (every non-null value would be dead-lettered): remove it from "
                      f"the source's schema (JSON keys the schema does not name are ignored) "
                      f"or use format='avro'")  # fmt: skip
                ok = False
    ts = fields.get(src.timestamp_field)
    divisor = 1
    if ts is None:
        c.add(
            src.location,
            subject,
            "timestamp_field",
            f"{src.timestamp_field!r} is not a field of the schema; fields: {', '.join(fields)}",
        )
        ok = False
    elif ts.avro_type != "long" or ts.nullable:
        c.add(
            src.location,
            subject,
            "timestamp_field",
            f"{src.timestamp_field!r} must be a non-null Avro long (ms since epoch), "
            f"got {ts.avro_type}{' (nullable)' if ts.nullable else ''}",
        )
        ok = False
    elif ts.logical_type not in (None, "timestamp-millis", "timestamp-micros"):
        c.add(
            src.location,
            subject,
            "timestamp_field",
            f"logicalType {ts.logical_type!r} is not a timestamp in ms or µs",
        )
        ok = False
    elif ts.logical_type == "timestamp-micros":
        divisor = 1000
    keys: tuple[str, ...] | None = None
    key_checked = False
    if src.key_fields is not None:
        keys = tuple(src.key_fields)
    else:  # the join keys of the first view whose entity the payload can key
        for candidate in candidates:
            if all(k in fields and fields[k].kind in _KEY_KINDS for k in candidate):
                keys = candidate
                break
        else:
            if candidates:  # the views report their unusable join keys themselves
                keys = candidates[0]
                key_checked = True
    if not keys:
        c.add(
            src.location,
            subject,
            "key_fields",
            "no key: give key_fields=[...]; no view reading it has join keys in its schema",
        )
        ok = False
    elif not key_checked:
        for key in keys:
            spec = fields.get(key)
            if spec is None or spec.kind not in _KEY_KINDS:
                c.add(
                    src.location,
                    subject,
                    "key_fields",
                    f"{key!r} must be a string or integer field of the schema",
                )
                ok = False
    if not ok:
        return None
    return SourcePlan(
        name=src.name,
        topic=src.topic,
        format=src.format,
        wire=src.wire,
        schema_id=src.schema_id,
        schema=schema,
        fields=fields,
        timestamp_field=src.timestamp_field,
        timestamp_divisor=divisor,
        key_fields=keys or (),
    )


def _compile_aggregation(
    c: _Collector, view: FeatureView, index: int, agg: Any, columns: Mapping[str, str | None]
) -> AggPlan | None:
    subject = f"view {view.name!r}"
    here = f"aggregation[{index}]"
    if not isinstance(agg, Aggregation):
        c.add(view.location, subject, here, f"expected an Aggregation, got {type(agg).__name__}")
        return None
    ok = True
    spec = FUNCTIONS.get(agg.function)
    if spec is None:
        c.add(
            view.location,
            subject,
            f"{here} function",
            f"unknown function {agg.function!r}{_did_you_mean(str(agg.function), FUNCTIONS)}; "
            f"known: {', '.join(FUNCTIONS)}",
        )
        ok = False
    if agg.column not in columns:
        c.add(
            view.location,
            subject,
            f"{here} column",
            f"{agg.column!r} is not in the schema of source {view.source.name!r}"
            f" nor in the view's columns; available: {', '.join(columns)}",
        )
        ok = False
    elif spec is not None:
        kind = columns[agg.column]
        if kind not in spec.kinds:
            c.add(
                view.location,
                subject,
                f"{here} column",
                f"{agg.function} needs a column of kind {'/'.join(sorted(spec.kinds))}, "
                f"{agg.column!r} is {kind or 'not a primitive'}",
            )
            ok = False
    if spec is not None:
        if spec.needs_n and (
            not isinstance(agg.n, int) or isinstance(agg.n, bool) or not 1 <= agg.n <= _MAX_N
        ):
            c.add(
                view.location,
                subject,
                f"{here} n",
                f"{agg.function} needs n=<integer 1..{_MAX_N}>, got {agg.n!r}",
            )
            ok = False
        if not spec.needs_n and agg.n is not None:
            c.add(view.location, subject, f"{here} n", f"{agg.function} takes no n")
            ok = False
    window_ms: int | None = None
    hop_ms: int | None = None
    if agg.window == LIFETIME:
        if agg.hop is not None:
            c.add(view.location, subject, f"{here} hop", "a lifetime window has no hop")
            ok = False
    else:
        try:
            window_ms = parse_duration(agg.window)
        except ValueError as exc:
            c.add(view.location, subject, f"{here} window", f"{exc} (or 'lifetime')")
            return None
        if agg.hop is None:
            hop_ms = default_hop_ms(window_ms)
            if hop_ms is None:
                c.add(
                    view.location,
                    subject,
                    f"{here} hop",
                    f"window {agg.window!r} has no default hop (1d/1h/5m/1m/10s/1s dividing "
                    "it and at most a twelfth of it); give hop=...",
                )
                ok = False
        else:
            try:
                hop_ms = parse_duration(agg.hop)
            except ValueError as exc:
                c.add(view.location, subject, f"{here} hop", str(exc))
                return None
            if window_ms % hop_ms != 0:
                c.add(
                    view.location,
                    subject,
                    f"{here} window",
                    f"hop {agg.hop!r} does not divide {agg.window!r}",
                )
                ok = False
    feature = agg.feature_name
    if not _NAME.match(feature):
        c.add(
            view.location,
            subject,
            f"{here} name",
            f"feature name {feature!r} must be an identifier (letters, digits, _)",
        )
        ok = False
    if not ok:
        return None
    return AggPlan(
        feature=feature,
        column=agg.column,
        function=agg.function,
        window=agg.window if window_ms is None else agg.window.strip(),
        window_ms=window_ms,
        hop_ms=hop_ms,
        n=agg.n,
    )


def _view_columns(
    c: _Collector, view: FeatureView, source_fields: Mapping[str, FieldSpec]
) -> dict[str, str | None]:
    columns: dict[str, str | None] = {name: spec.kind for name, spec in source_fields.items()}
    for name, avro_type in (view.columns or {}).items():
        kind = _COLUMN_TYPES.get(avro_type) if isinstance(avro_type, str) else None
        if kind is None:
            c.add(
                view.location,
                f"view {view.name!r}",
                f"columns[{name!r}]",
                f"expected an Avro primitive type ({', '.join(_COLUMN_TYPES)}), got {avro_type!r}",
            )
            continue
        columns[name] = kind
    return columns


def compile_plan(
    entities: Iterable[Entity],
    sources: Iterable[KafkaSource],
    views: Iterable[FeatureView],
    *,
    base_dir: Path,
    problems: Sequence[str] = (),
) -> Plan:
    """Validate definitions and build the Plan; raises DefinitionError listing every problem.

    ``problems`` carries errors found while loading the modules, so they are reported
    together with the validation errors.
    """
    c = _Collector(base_dir.resolve().parent)
    c.problems.extend(problems)
    views = list(views)
    entity_map: dict[str, Entity] = {}
    for entity in [*entities, *(v.entity for v in views if isinstance(v.entity, Entity))]:
        subject = f"entity {entity.name!r}"
        if entity.name in entity_map:
            if entity_map[entity.name] != entity:
                c.add(
                    entity.location,
                    subject,
                    "name",
                    f"another entity with this name is defined at "
                    f"{c.where(entity_map[entity.name].location)}",
                )
            continue
        entity_map[entity.name] = entity
        if not isinstance(entity.name, str) or not _NAME.match(entity.name):
            c.add(entity.location, subject, "name", "must be an identifier (letters, digits, _)")
        keys = entity.join_keys
        if not keys or not all(isinstance(k, str) and _NAME.match(k) for k in keys):
            c.add(
                entity.location,
                subject,
                "join_keys",
                f"expected one or more field names, got {list(keys)!r}",
            )
        elif len(set(keys)) != len(keys):
            c.add(entity.location, subject, "join_keys", f"duplicate join key in {list(keys)!r}")

    # sources: the key defaults to the join keys of the first view reading the source
    source_defs: dict[str, KafkaSource] = {}
    default_keys: dict[str, list[tuple[str, ...]]] = {}
    for view in views:
        if isinstance(view.source, KafkaSource) and isinstance(view.entity, Entity):
            default_keys.setdefault(view.source.name, []).append(tuple(view.entity.join_keys))
    for src in [*sources, *(v.source for v in views if isinstance(v.source, KafkaSource))]:
        if src.name in source_defs:
            if source_defs[src.name] != src:
                c.add(
                    src.location,
                    f"source {src.name!r}",
                    "name",
                    f"another source with this name is defined at "
                    f"{c.where(source_defs[src.name].location)}",
                )
            continue
        source_defs[src.name] = src
    source_plans: dict[str, SourcePlan] = {}
    for name, src in source_defs.items():
        plan = _compile_source(c, src, base_dir, default_keys.get(name, []))
        if plan is not None:
            source_plans[name] = plan
    topics: dict[str, str] = {}
    for name, sp in source_plans.items():
        if sp.topic in topics:
            c.add(
                source_defs[name].location,
                f"source {name!r}",
                "topic",
                f"topic {sp.topic!r} is already read by source {topics[sp.topic]!r}",
            )
        topics[sp.topic] = name

    view_plans: dict[str, ViewPlan] = {}
    for view in views:
        subject = f"view {view.name!r}"
        if not isinstance(view.name, str) or not _NAME.match(view.name):
            c.add(view.location, subject, "name", "must be an identifier (letters, digits, _)")
            continue
        if view.name in view_plans or any(
            v is not view and v.name == view.name for v in views[: views.index(view)]
        ):
            c.add(view.location, subject, "name", "another view has this name")
            continue
        if not isinstance(view.entity, Entity):
            c.add(
                view.location,
                subject,
                "entity",
                f"expected an Entity, got {type(view.entity).__name__}",
            )
            continue
        if not isinstance(view.source, KafkaSource):
            c.add(
                view.location,
                subject,
                "source",
                f"expected a KafkaSource, got {type(view.source).__name__}",
            )
            continue
        functions_ok = _check_function(c, view, "transform", view.transform)
        functions_ok = _check_function(c, view, "filter", view.filter) and functions_ok
        functions_ok = (
            _check_function(c, view, "batch_transform", view.batch_transform) and functions_ok
        )
        if view.batch_transform is not None and (view.transform or view.filter):
            c.add(
                view.location,
                subject,
                "batch_transform",
                "a view has a row transform/filter or a batch transform, not both (a batch "
                "transform filters by dropping rows)",
            )
            functions_ok = False
        source = source_plans.get(view.source.name)
        if source is None:
            continue  # its problems are already reported
        columns = _view_columns(c, view, source.fields)
        for key in view.entity.join_keys:
            if key not in columns:
                c.add(
                    view.location,
                    subject,
                    "entity",
                    f"join key {key!r} of entity {view.entity.name!r} is not in the schema of "
                    f"source {source.name!r} nor in the view's columns",
                )
            elif columns[key] not in _KEY_KINDS:
                c.add(
                    view.location,
                    subject,
                    "entity",
                    f"join key {key!r} must be a string or integer column",
                )
        if not view.aggregations:
            c.add(view.location, subject, "aggregations", "a view needs at least one aggregation")
            continue
        aggs: list[AggPlan] = []
        failed = False
        seen: dict[str, int] = {}
        for index, agg in enumerate(view.aggregations):
            agg_plan = _compile_aggregation(c, view, index, agg, columns)
            if agg_plan is None:
                failed = True
                continue
            aggs.append(agg_plan)
            if agg_plan.feature in seen:
                c.add(
                    view.location,
                    subject,
                    f"aggregation[{index}] name",
                    f"duplicate feature name {agg_plan.feature!r}; pass name=... to one of them",
                )
                failed = True
            seen[agg_plan.feature] = index
        lateness_ms: int | None
        finite = [a.window_ms for a in aggs if a.window_ms is not None]
        if view.allowed_lateness is not None:
            try:
                lateness_ms = parse_duration(view.allowed_lateness)
            except ValueError as exc:
                c.add(view.location, subject, "allowed_lateness", str(exc))
                failed = True
                lateness_ms = None
        else:
            lateness_ms = max(finite) if finite else None
        if failed or not functions_ok:
            continue
        layout = TileLayout(
            windows_ms=tuple(a.window_ms for a in aggs),
            hops_ms=tuple(a.hop_ms for a in aggs),
        )
        view_plans[view.name] = ViewPlan(
            name=view.name,
            entity=view.entity.name,
            join_keys=tuple(view.entity.join_keys),
            source=source.name,
            transform=view.transform,
            filter=view.filter,
            aggregations=tuple(aggs),
            layout=layout,
            allowed_lateness_ms=lateness_ms,
            fingerprint=_fingerprint(view, source, aggs, lateness_ms),
            location=c.where(view.location),
            input_columns=tuple(a.column for a in aggs),
            float_inputs=tuple(i for i, a in enumerate(aggs) if columns[a.column] == "float"),
            input_kinds=tuple(columns[a.column] or "str" for a in aggs),
            batch_transform=view.batch_transform,
        )
    if c.problems:
        raise DefinitionError(c.problems)
    return Plan(entities=entity_map, sources=source_plans, views=view_plans)


def describe_window(agg: AggPlan) -> str:
    """``"30d / hop 1d"`` or ``"lifetime"`` for listings."""
    if agg.window_ms is None:
        return LIFETIME
    return f"{format_duration(agg.window_ms)} / hop {format_duration(agg.hop_ms or 0)}"
