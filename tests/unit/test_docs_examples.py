"""The examples in README.md and docs/ are checked against the engine, read from the pages.

- The window tables (README, docs/semantics.md, docs/concepts/windows.md): the events named in
  the text, the tiles each row says are merged, and the values, in both modes.
- The late-arrival tables (docs/concepts/time.md, docs/concepts/lateness.md): events with their
  `processed_at`, values per mode and `include_late`.
- Every ```python block of definitions (README, docs/concepts) loads and compiles as a
  definitions module, the way `skewless plan` loads one.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from engine import FeatureStore
from engine.backfill import Mode

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-03-01"
HOP_MS, WINDOW_MS = 5 * 60_000, 3_600_000

HEADER = """
from engine import Aggregation, Entity, FeatureView, KafkaSource
customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("tx", schema={
    "type": "record", "name": "Tx",
    "fields": [{"name": "customer_id", "type": "string"},
               {"name": "amount", "type": ["null", "double"], "default": None},
               {"name": "ts", "type": "long"}]}, timestamp_field="ts")
"""
VIEW = """
v = FeatureView("v", entity=customer, source=tx, {lateness}
                aggregations=[Aggregation("amount", "sum", window="1h", hop="5m")])
"""


def at(text: str) -> int:
    """Epoch ms of a clock time in the examples (``10:07`` or ``10:07:00.001``) on DAY."""
    return int(pd.Timestamp(f"{DAY} {text}", tz="UTC").value // 1_000_000)


def hhmm(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%H:%M")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table_after(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    break
                rows.append(cells(body))
            return cells(line), rows
    raise AssertionError(f"no table starting with {header_start!r}")


def store_with(tmp_path: Path, events: list[tuple[float, int, int]], lateness: str) -> FeatureStore:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "defs.py").write_text(HEADER + VIEW.format(lateness=lateness))
    store = FeatureStore.from_repo(repo)
    store.import_events(
        "tx",
        pd.DataFrame(
            {
                "customer_id": ["c"] * len(events),
                "amount": [a for a, _, _ in events],
                "ts": [t for _, t, _ in events],
                "processed_at": [p for _, _, p in events],
            }
        ),
    )
    return store


def values(store: FeatureStore, times: list[int], mode: Mode, include_late: bool) -> list[float]:
    labels = pd.DataFrame({"customer_id": ["c"] * len(times), "event_timestamp": times})
    out = store.get_historical_features(
        labels, ["v:amount_sum_1h"], mode=mode, include_late=include_late, workers=1
    )
    return out["amount_sum_1h"].tolist()


WINDOW_PAGES = ["README.md", "docs/semantics.md", "docs/concepts/windows.md"]


@pytest.mark.parametrize("page", WINDOW_PAGES)
def test_worked_window_example(page: str, tmp_path: Path) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    intro = next(
        line for line in text.splitlines() if "`amount_sum_1h` (hop 5m), events at" in line
    )
    events = [(float(v), at(t), at(t)) for t, v in re.findall(r"(\d\d:\d\d) \((\d+)\)", intro)]
    assert len(events) == 3, intro
    _, rows = table_after(text, "| `t` | tiles merged (by start) | value |")
    assert len(rows) >= 4
    times = [at(row[0]) for row in rows]
    for row, t in zip(rows, times, strict=True):
        end = -(-t // HOP_MS) * HOP_MS  # ceil(t/H)·H
        first, last = (s.strip() for s in row[1].split("…"))
        assert (first, last) == (hhmm(end - WINDOW_MS), hhmm(end - HOP_MS)), row
    store = store_with(tmp_path, events, lateness="")
    want = [float(row[2]) for row in rows]
    modes: tuple[Mode, ...] = ("event_time", "processing_time")
    for mode in modes:  # processed_at == event_time here
        assert values(store, times, mode, include_late=False) == want, (page, mode)


@pytest.mark.parametrize(
    ("page", "lateness"),
    [("docs/concepts/time.md", ""), ("docs/concepts/lateness.md", 'allowed_lateness="5m",')],
)
def test_late_arrival_examples(page: str, lateness: str, tmp_path: Path) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    if lateness:
        assert f"`{lateness.rstrip(',')}`" in text, "the page names the view's lateness"
    _, event_rows = table_after(text, "| amount | event_time | processed_at |")
    events = [(float(a), at(e), at(p)) for a, e, p in event_rows]
    header, rows = table_after(text, "| `t` |")
    times = [at(row[0]) for row in rows]
    store = store_with(tmp_path, events, lateness)
    checked = 0
    for j, title in enumerate(header[1:], start=1):
        mode: Mode = "processing_time" if "processing_time" in title else "event_time"
        if "event_time" not in title and "processing_time" not in title:
            continue
        include_late = "include_late" in title
        want = [float(row[j]) for row in rows]
        assert values(store, times, mode, include_late) == want, (page, title)
        checked += 1
    assert checked >= 2, header


DSL = re.compile(r"\b(Entity|KafkaSource|FeatureView|Aggregation)\(")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
CANDIDATE_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "concepts").glob("*.md"))]
PAYMENTS_HEADER = """
from engine import Aggregation, Entity, FeatureView, KafkaSource
customer = Entity("customer", join_keys=["customer_id"])
merchant = Entity("merchant", join_keys=["merchant_id"])
transactions = KafkaSource("transactions", schema="schemas/transaction.avsc",
                           timestamp_field="ts", key_fields=["customer_id"])
"""


def definition_blocks(text: str) -> list[str]:
    """Python blocks that declare definitions (not the ones using a FeatureStore)."""
    return [
        block
        for block in PYTHON_BLOCK.findall(text)
        if DSL.search(block) and "store" not in block.lower()
    ]


DEFINITION_PAGES = [
    p.relative_to(ROOT).as_posix()
    for p in CANDIDATE_PAGES
    if definition_blocks(p.read_text(encoding="utf-8"))
]


def test_definition_blocks_are_found() -> None:
    assert {"README.md", "docs/concepts/feature-views.md"} <= set(DEFINITION_PAGES)
    blocks = [b for p in DEFINITION_PAGES for b in definition_blocks((ROOT / p).read_text())]
    assert not any("get_historical_features" in b for b in blocks)


@pytest.mark.parametrize("page", DEFINITION_PAGES)
def test_definition_blocks_compile(page: str, tmp_path: Path) -> None:
    blocks = definition_blocks((ROOT / page).read_text(encoding="utf-8"))
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "definitions" / "schemas", repo / "schemas")
    module = PAYMENTS_HEADER + "\n".join(textwrap.dedent(b) for b in blocks)
    (repo / "defs.py").write_text(module)
    store = FeatureStore.from_repo(repo)  # DefinitionError lists every problem
    declared = set(re.findall(r'FeatureView\(\s*"(\w+)"', module))
    assert declared <= set(store.plan.views), (declared, sorted(store.plan.views))
