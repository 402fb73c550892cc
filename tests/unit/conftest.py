"""Helpers for unit tests: throwaway definitions repos."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

SCHEMA = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "merchant_id", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "qty", "type": "long"},
        {"name": "ts", "type": "long"},
    ],
}

HEADER = f"""
from engine import Entity, KafkaSource, FeatureView, Aggregation
customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("tx", schema={SCHEMA!r}, timestamp_field="ts")
"""


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Write ``defs.py`` (HEADER + body) and an optional skewless.yaml into a fresh folder."""

    def make(body: str, yaml: str = "", header: str = HEADER) -> Path:
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        (repo / "defs.py").write_text(header + textwrap.dedent(body))
        if yaml:
            (repo / "skewless.yaml").write_text(textwrap.dedent(yaml))
        return repo

    return make
