"""Suite-wide fixtures: every FeatureStore a test builds is closed when the test ends."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import pytest

from engine.store import FeatureStore


@pytest.fixture(autouse=True)
def _close_feature_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close what each test's stores opened (the read cache's tracking connection and its
    thread, the publisher, Redis clients), so nothing outlives the test in the pytest process
    and tests that count server connections see only their own. ``close`` is idempotent, so a
    test that closes its store itself is unaffected."""
    opened: weakref.WeakSet[FeatureStore] = weakref.WeakSet()
    original_init = FeatureStore.__init__

    def tracked_init(self: FeatureStore, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]
        opened.add(self)

    monkeypatch.setattr(FeatureStore, "__init__", tracked_init)
    yield
    for store in list(opened):
        store.close()
