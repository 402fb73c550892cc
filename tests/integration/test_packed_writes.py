"""The worker's entity writes packed by the native core (``PackedWrites``) leave Redis exactly
as the same writes sent through the Python packer do — fields, deletes, expiries — and a
refused compare-and-set names the right key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors.eventlog import EventLogWriter
from engine import FeatureStore
from engine.errors import OnlineWriteConflict
from engine.online import EntityWrites
from engine.ports import PackedWrites
from engine.stream.core import BatchProcessor
from tests.stream_harness import online_store, raw_redis
from tests.unit.conftest import HEADER
from tests.unit.stream.test_core import PARTITIONS, T0, FakeStore, Letters, make_records

pytestmark = pytest.mark.redis

VIEWS = """
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="10m", hop="1m"),
    Aggregation("amount", "count", window="1h"),
    Aggregation("qty", "last_n", window="lifetime", n=3),
])
"""


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    def make(body: str, yaml: str = "") -> Path:
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        (repo / "defs.py").write_text(HEADER + body)
        (repo / "skewless.yaml").write_text(yaml)
        return repo

    return make


class _Capture(FakeStore):
    """Keeps every write list the processor hands to the store."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Any] = []

    def write(self, writes, marks=()):  # type: ignore[no-untyped-def]
        self.batches.append(writes)
        return super().write(writes, marks)


def _dump(client: redis.Redis) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in client.scan_iter("sk:*"):
        out[key] = (client.hgetall(key), client.pexpiretime(key))
    return out


def _processed(
    make_repo: Callable[..., Path], records: int, seed: int, batch: int, cache: int
) -> list[Any]:
    """Run generated records through a worker core; every write list it handed the store."""
    store = FeatureStore.from_repo(make_repo(VIEWS, yaml=f"kafka:\n  partitions: {PARTITIONS}\n"))
    capture = _Capture()
    log = EventLogWriter(store.config.event_log_root, "tx", dict(store.plan.sources["tx"].schema))
    clock = iter(range(T0, T0 + 10**9, 20_000))
    core = BatchProcessor(store.plan, "tx", online=capture, log=log, dead=Letters(),
                          clock=lambda: next(clock), cache_entities=cache)  # fmt: skip
    made = make_records(store, records, seed=seed)
    for start in range(0, len(made), batch):
        core.process(made[start : start + batch])
    return capture.batches


def test_packed_writes_equal_python_packed_writes(
    make_repo: Callable[..., Path], redis_url: str
) -> None:
    batches = [
        b for b in _processed(make_repo, 400, seed=3, batch=53, cache=5)
        if isinstance(b, PackedWrites)
    ]  # fmt: skip
    assert len(batches) > 5 and sum(len(b) for b in batches) > 100
    client = raw_redis(redis_url)
    packed_store = online_store(redis_url)
    for batch in batches:
        packed_store.write(batch)
    native = _dump(client)
    client.flushdb()
    for batch in batches:
        packed_store.write(list(batch))  # the same writes as StateWrite objects
    python = _dump(client)
    assert native == python
    assert any(fields.get(b"l:0") or fields.get(b"l:1") for fields, _ in native.values())


def test_a_refused_packed_write_names_its_key(
    make_repo: Callable[..., Path], redis_url: str
) -> None:
    batches = _processed(make_repo, 120, seed=4, batch=60, cache=200_000)
    second = batches[-1]
    assert isinstance(second, EntityWrites)
    checked = [w for w in second if w.expect is not None and w.expect[1] is not None]
    assert checked, "no compare-and-set in the second batch"
    victim = checked[len(checked) // 2]
    client = raw_redis(redis_url)
    redis_store = online_store(redis_url)
    redis_store.write(batches[0])
    client.hset(victim.key, victim.expect[0], b"999999")  # another owner moved the fence
    with pytest.raises(OnlineWriteConflict) as info:
        redis_store.write(second)
    assert info.value.keys == (victim.key,)
    # the rest of the batch was applied: another refused-free key holds the new fence
    other = next(w for w in second if w.key != victim.key and w.expect is not None)
    assert client.hget(other.key, other.expect[0]) == other.fields[other.expect[0]]
