"""The registry of the last applied plan: view fingerprints, so `plan` can say what changed."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from engine.plan import Plan


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanDiff:
    """Views added, changed (new fingerprint: online state must be rebuilt), removed, unchanged."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]
    applied_before: bool

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def read_applied(path: Path) -> dict[str, str] | None:
    """View name → fingerprint of the last apply, or None if nothing was applied."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data["views"].items()}
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"{path}: the registry is corrupt ({exc}); delete it and re-apply"
        ) from exc


def diff(plan: Plan, applied: dict[str, str] | None) -> PlanDiff:
    """Compare a plan with the last applied fingerprints."""
    old = applied or {}
    current = {name: view.fingerprint for name, view in plan.views.items()}
    return PlanDiff(
        added=tuple(sorted(n for n in current if n not in old)),
        changed=tuple(sorted(n for n in current if n in old and old[n] != current[n])),
        removed=tuple(sorted(n for n in old if n not in current)),
        unchanged=tuple(sorted(n for n in current if old.get(n) == current[n])),
        applied_before=applied is not None,
    )


def read_retired(path: Path) -> dict[str, list[str]]:
    """View name → fingerprints replaced by an apply whose online keyspaces still exist."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): [str(f) for f in v] for k, v in data.get("retired", {}).items()}
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"{path}: the registry is corrupt ({exc}); delete it and re-apply"
        ) from exc


def write_applied(path: Path, plan: Plan) -> None:
    """Record the plan's fingerprints atomically (temp file, fsync, rename).

    Fingerprints a view had before are kept as *retired* until ``rebuild-online`` drops their
    keyspace.
    """
    old = read_applied(path) or {}
    retired = read_retired(path)
    for name, view in plan.views.items():
        previous = old.get(name)
        if previous is not None and previous != view.fingerprint:
            retired.setdefault(name, [])
            if previous not in retired[name]:
                retired[name].append(previous)
    views = {name: view.fingerprint for name, view in sorted(plan.views.items())}
    _write(path, views, retired)


def forget_retired(path: Path, view: str) -> None:
    """Remove a view's retired fingerprints (their keyspaces were dropped)."""
    applied = read_applied(path)
    if applied is None:
        return
    retired = read_retired(path)
    retired.pop(view, None)
    _write(path, applied, retired)


def _write(path: Path, views: dict[str, str], retired: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "applied_at_ms": int(time.time() * 1000),
        "views": views,
        "retired": {k: v for k, v in sorted(retired.items()) if v},
    }
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
