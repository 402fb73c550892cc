"""Load a definitions folder: import its modules and collect the definitions they declare."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from engine.definitions import Entity, FeatureView, KafkaSource
from engine.errors import DefinitionError


@dataclass(slots=True)
class LoadedDefinitions:
    """The definitions found in a folder, plus the problems met while importing it."""

    entities: list[Entity] = field(default_factory=list)
    sources: list[KafkaSource] = field(default_factory=list)
    views: list[FeatureView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _module_files(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.rglob("*.py")
        if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        and "tests" not in p.relative_to(path).parts
    )


def load_definitions(path: Path) -> LoadedDefinitions:
    """Import every ``*.py`` under ``path`` (skipping ``_*``, hidden and ``tests`` folders).

    Raises DefinitionError when ``path`` is not a folder; import failures are returned as
    problems naming the file and line so they are reported with the validation errors.
    """
    path = path.resolve()
    if not path.is_dir():
        raise DefinitionError([f"{path}: definitions folder does not exist"])
    loaded = LoadedDefinitions()
    seen: set[int] = set()
    tag = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    sys.path.insert(0, str(path))
    try:
        for file in _module_files(path):
            rel = file.relative_to(path.parent)
            name = f"_skewless_defs_{tag}_" + "_".join(file.relative_to(path).with_suffix("").parts)
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:  # pragma: no cover - .py files always load
                loaded.problems.append(f"{rel}: cannot be imported")
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except SyntaxError as exc:
                loaded.problems.append(f"{rel}:{exc.lineno} syntax error: {exc.msg}")
                continue
            except Exception as exc:  # user code: report any failure with its line
                frames = [
                    f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)
                ]
                line = frames[-1].lineno if frames else 0
                loaded.problems.append(
                    f"{rel}:{line} importing the module failed: {type(exc).__name__}: {exc}"
                )
                continue
            for value in vars(module).values():
                if id(value) in seen:
                    continue
                if isinstance(value, Entity):
                    loaded.entities.append(value)
                elif isinstance(value, KafkaSource):
                    loaded.sources.append(value)
                elif isinstance(value, FeatureView):
                    loaded.views.append(value)
                else:
                    continue
                seen.add(id(value))
    finally:
        sys.path.remove(str(path))
    return loaded
