"""The report of ``skewless verify``: mismatches, unverifiable entities and per-view counts,
rendered as terminal text or as a Markdown document (engine/verify.py builds it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "Mismatch",
    "MismatchKind",
    "Unverifiable",
    "UnverifiableKind",
    "VerifyReport",
    "ViewSummary",
    "short_repr",
]

MismatchKind = Literal[
    "value_differs",  # the online state holds exactly the logged records, yet a value differs
    "missing_online",  # no hash for the entity, though the log applied records to it
    "stale_fingerprint",  # missing under the current fingerprint, present under an older one
    "online_lacks_records",  # the online fence is behind records logged before the read
    "online_has_unlogged",  # the online fence names an offset the log does not apply here
    "processed_at_differs",  # online applied a record the log says was processed at/after T
    "corrupt_state",  # the stored tiles do not decode
]
UnverifiableKind = Literal[
    "ahead_of_log",  # Redis written, the log not yet appended (batch in flight)
    "write_in_flight",  # a batch begun before T wrote the entity only after the read
    "written_after_t",  # the entity was written by a batch processed at or after T
]

_TEXT_ITEMS = 20  # mismatches / unverifiable entries printed by to_text
_TEXT_VALUE = 60  # characters of a value printed by to_text


@dataclass(frozen=True, slots=True, kw_only=True)
class Mismatch:
    """One feature value of one entity where online and the log replay disagree.

    ``online`` is None when the stored state could not be decoded (``kind`` says so).
    ``at_ms`` is the ``T`` of the round that found it.
    """

    view: str
    feature: str
    entity: dict[str, Any]
    online: Any
    expected: Any
    reason: str
    kind: MismatchKind
    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unverifiable:
    """An entity of a view still in flight after every re-check: neither match nor mismatch."""

    view: str
    entity: dict[str, Any]
    features: int
    reason: str
    kind: UnverifiableKind
    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewSummary:
    """Counts of one view: entities sampled, values checked and how they ended."""

    view: str
    entities: int
    values_checked: int
    mismatched: int
    skipped: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The outcome of ``verify``: how many values were checked and every disagreement.

    ``values_checked`` counts feature values that reached a verdict (matched or not);
    ``skipped`` counts values of entities still in flight after the last re-check
    (``unverifiable``). ``rate`` is matching values / values checked, and 0.0 when nothing
    was checked, so a report that verified nothing never reads as 100%. ``ok`` is True only
    when values were checked, all matched and none was skipped.
    """

    at_ms: int
    views: tuple[str, ...]
    entities_checked: int
    values_checked: int
    mismatches: tuple[Mismatch, ...]
    skipped: int
    unverifiable: tuple[Unverifiable, ...] = ()
    per_view: tuple[ViewSummary, ...] = ()
    sample: int = 0
    seed: int = 0
    rounds: int = 1
    records_scanned: int = 0
    notes: tuple[str, ...] = ()

    @property
    def rate(self) -> float:
        """Matching values / values checked (0.0 when nothing was checked)."""
        if not self.values_checked:
            return 0.0
        return (self.values_checked - len(self.mismatches)) / self.values_checked

    @property
    def ok(self) -> bool:
        """Every sampled value was checked and matched."""
        return bool(self.values_checked) and not self.mismatches and not self.skipped

    def _headline(self) -> str:
        matched = self.values_checked - len(self.mismatches)
        return (
            f"consistency {self.rate:.2%}: {matched:,} of {self.values_checked:,} values match "
            f"({self.entities_checked:,} entities, {len(self.views)} views)"
        )

    def to_text(self, *, max_items: int = _TEXT_ITEMS) -> str:
        """A terminal summary: headline, per-view counts, the first ``max_items`` findings."""
        lines = [
            f"verify at T={self.at_ms} ({_iso(self.at_ms)}), seed {self.seed}, "
            f"sample {self.sample} entities per view, {self.rounds} round(s), "
            f"{self.records_scanned:,} log records scanned",
            self._headline(),
        ]
        if self.skipped:
            lines.append(
                f"{self.skipped:,} values of {len(self.unverifiable)} entities unverifiable "
                "now (in flight after every re-check) — re-run"
            )
        width = max((len(v.view) for v in self.per_view), default=4)
        for v in self.per_view:
            lines.append(
                f"  {v.view:<{width}}  {v.entities:>6} entities  {v.values_checked:>7} values  "
                f"{v.mismatched:>5} mismatched  {v.skipped:>5} skipped"
            )
        if self.mismatches:
            lines.append(f"mismatches ({len(self.mismatches)}):")
            for m in self.mismatches[:max_items]:
                lines.append(
                    f"  {m.view}:{m.feature} {_entity_text(m.entity)}: online "
                    f"{short_repr(m.online)} vs log {short_repr(m.expected)}"
                )
                lines.append(f"      {m.reason}")
            if len(self.mismatches) > max_items:
                lines.append(
                    f"  … {len(self.mismatches) - max_items} more (see the Markdown report)"
                )
        if self.unverifiable:
            lines.append(f"unverifiable ({len(self.unverifiable)}):")
            for u in self.unverifiable[:max_items]:
                lines.append(f"  {u.view} {_entity_text(u.entity)}: {u.reason}")
            if len(self.unverifiable) > max_items:
                lines.append(f"  … {len(self.unverifiable) - max_items} more")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as a Markdown document: summary, per-view table, every finding, method."""
        verdict = "PASS" if self.ok else ("FAIL" if self.mismatches else "INCOMPLETE")
        out = [
            "# skewless verify report",
            "",
            f"**{verdict}** — {self._headline()}.",
            "",
            f"- Time `T`: {self.at_ms} ({_iso(self.at_ms)})",
            f"- Sample: up to {self.sample} entities per view, seed {self.seed}",
            f"- Rounds: {self.rounds} (in-flight entities re-checked)",
            f"- Log records scanned: {self.records_scanned:,}",
            f"- Values skipped (unverifiable now): {self.skipped:,}",
            "",
            "## Views",
            "",
            "| view | entities | values checked | mismatched | skipped |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for v in self.per_view:
            out.append(
                f"| {_md(v.view)} | {v.entities} | {v.values_checked} | {v.mismatched} | "
                f"{v.skipped} |"
            )
        out += ["", f"## Mismatches ({len(self.mismatches)})", ""]
        if self.mismatches:
            out += [
                "| view | feature | entity | online | log replay | kind | explanation |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for m in self.mismatches:
                out.append(
                    f"| {_md(m.view)} | {_md(m.feature)} | {_md(_entity_text(m.entity))} | "
                    f"`{_md(repr(m.online))}` | `{_md(repr(m.expected))}` | {m.kind} | "
                    f"{_md(m.reason)} |"
                )
        else:
            out.append("None: every checked value equals the log replay bit for bit.")
        if self.unverifiable:
            out += [
                "",
                f"## Unverifiable now ({len(self.unverifiable)})",
                "",
                "| view | entity | features | kind | why |",
                "| --- | --- | ---: | --- | --- |",
            ]
            for u in self.unverifiable:
                out.append(
                    f"| {_md(u.view)} | {_md(_entity_text(u.entity))} | {u.features} | {u.kind} | "
                    f"{_md(u.reason)} |"
                )
        if self.notes:
            out += ["", "## Notes", ""]
            out += [f"- {_md(n)}" for n in self.notes]
        out += [
            "",
            "## Method",
            "",
            "Entities are a seeded bottom-k sample of those the event log applies to each view. "
            "Their Redis hashes are read in one round trip at `T` and evaluated by the online "
            "read path; the log, listed just after that read, is replayed for them in "
            "processing-time mode at `T` (records with `processed_at < T`) by the backfill "
            "kernel. Values are compared bit for bit (floats by their bits, lists element by "
            "element). A difference is explained per source partition from the online fence "
            "(last offset applied) against the newest offset the log applied before `T`; "
            "batches in flight are re-checked in later rounds and reported as unverifiable if "
            "they never settle. See docs/verify.md.",
            "",
        ]
        return "\n".join(out)


def _iso(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _entity_text(entity: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in entity.items())


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a terminal-friendly length."""
    text = repr(value)
    return text if len(text) <= _TEXT_VALUE else text[: _TEXT_VALUE - 1] + "…"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
