"""End-to-end fixtures: the same real Kafka and Redis as the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.conftest import (  # noqa: F401 - fixtures, re-exported for pytest
    kafka_service,
    redis_service,
    stream_redis_url,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end to end over real services (workers → Redis → log → backfill)"
    )
