"""The batch core with in-memory fakes behind its Protocols: parity with the backfill, fences,
partial-write crashes, dead letters."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pytest

from connectors.eventlog import EventLogReader, EventLogWriter
from engine import FeatureStore
from engine.keys import encode_key, partition_for
from engine.online import state_key, values_at
from engine.ports import DeadLetter, StateWrite, Watermark
from engine.serde import SourceCodec
from engine.stream.core import BatchInput, BatchProcessor, SourceRecord

VIEWS = """
def double(row):
    row["amount2"] = None if row["amount"] is None else row["amount"] * 2
    return row

merchant = Entity("merchant", join_keys=["merchant_id"])
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="10m", hop="1m"),
    Aggregation("amount", "count", window="1h"),
    Aggregation("qty", "last", window="lifetime"),
    Aggregation("amount", "stddev", window="10m", hop="1m"),
])
shop = FeatureView("shop", entity=merchant, source=tx, transform=double,
    columns={"amount2": "double"}, allowed_lateness="2m", aggregations=[
    Aggregation("amount2", "sum", window="5m", hop="1m"),
    Aggregation("customer_id", "count_distinct", window="5m", hop="1m"),
])
"""
T0 = 1_800_000_000_000
PARTITIONS = 3


class FakeStore:
    """A dict of hashes behind OnlineStateStore; ``fail_after`` makes write die midway."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.fail_after: int | None = None

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        return [dict(self.hashes.get(k, {})) for k in keys]

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        assert not marks, "a processor without a recovery writes no watermarks"
        for n, w in enumerate(writes):
            if self.fail_after is not None and n >= self.fail_after:
                self.fail_after = None
                raise ConnectionError("store went away")
            h = self.hashes.setdefault(w.key, {})
            h.update({k.encode(): v for k, v in w.fields.items()})
            for name in w.delete:
                h.pop(name.encode(), None)
        return []


class FailingLog:
    """Wraps a real log writer; fails once when armed."""

    def __init__(self, inner: EventLogWriter) -> None:
        self.inner = inner
        self.armed = False

    def append(self, records):  # type: ignore[no-untyped-def]
        if self.armed:
            self.armed = False
            raise OSError("disk full")
        return self.inner.append(records)

    def last_offset(self, partition: int) -> int | None:
        return self.inner.last_offset(partition)


class Letters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    def send(self, letters: Sequence[DeadLetter]) -> None:
        self.sent.extend(letters)


def make_records(store: FeatureStore, n: int, seed: int) -> list[SourceRecord]:
    """Keyed, partitioned records with disorder, ties, boundary times, nulls and bad ones."""
    rnd = random.Random(seed)
    codec = SourceCodec(store.plan.sources["tx"])
    offsets = [0] * PARTITIONS
    out: list[SourceRecord] = []
    for i in range(n):
        customer = f"c{rnd.randrange(12)}"
        ts = (
            T0
            + rnd.choice([0, 60_000, 120_000]) * rnd.randrange(8)
            + rnd.randrange(-1, 2) * rnd.randrange(90_000)
        )
        payload = {
            "customer_id": customer,
            "merchant_id": f"m{rnd.randrange(4)}",
            "amount": None if rnd.random() < 0.05 else rnd.choice([0.1, 0.2, 1e9, 3.5, -2.25]),
            "qty": i,
            "ts": max(ts, 0),
        }
        key = encode_key([customer])
        p = partition_for(key, PARTITIONS)
        value = codec.encode(payload)
        if rnd.random() < 0.03:
            value = value[:3]  # truncated Avro
        out.append(SourceRecord(topic="tx", partition=p, offset=offsets[p], key=key, value=value))
        offsets[p] += 1
    return out


def online_values(
    store: FeatureStore, fake: FakeStore, entities: dict[str, list[tuple]], t_ms: int
) -> dict:
    out = {}
    for view_name, keys in entities.items():
        view = store.plan.views[view_name]
        for entity in keys:
            fields = fake.hashes.get(state_key(view, entity), {})
            out[(view_name, entity)] = values_at(view, [fields], t_ms)[0]
    return out


def backfill_values(store: FeatureStore, entities: dict[str, list[tuple]], t_ms: int) -> dict:
    out = {}
    for view_name, keys in entities.items():
        view = store.plan.views[view_name]
        column = view.join_keys[0]
        df = pd.DataFrame({column: [e[0] for e in keys], "event_timestamp": [t_ms] * len(keys)})
        refs = [f"{view_name}:{f}" for f in view.features]
        got = store.get_historical_features(df, refs, mode="processing_time", workers=1)
        for entity, row in zip(keys, got[list(view.features)].itertuples(index=False), strict=True):
            out[(view_name, entity)] = [None if isinstance(v, float) and v != v else v for v in row]
    return out


FAILURES: list[str] = []


def run(
    store: FeatureStore,
    records: list[SourceRecord],
    *,
    crash: Callable[[int, FakeStore, FailingLog], None] | None = None,
):
    fake, letters = FakeStore(), Letters()
    log = FailingLog(
        EventLogWriter(store.config.event_log_root, "tx", dict(store.plan.sources["tx"].schema))
    )
    clock = iter(range(T0, T0 + 10**9, 20_000))
    core = BatchProcessor(
        store.plan, "tx", online=fake, log=log, dead=letters, clock=lambda: next(clock)
    )
    for batch, start in enumerate(range(0, len(records), 37)):
        chunk = records[start : start + 37]
        if crash:
            crash(batch, fake, log)
        while True:
            try:
                core.process(chunk)
                break
            except (ConnectionError, OSError) as exc:
                FAILURES.append(type(exc).__name__)
                if batch % 2:
                    core = BatchProcessor(
                        store.plan,
                        "tx",
                        online=fake,
                        log=log,
                        dead=letters,
                        clock=lambda: next(clock),
                    )  # a restarted worker
        batch += 1
    return fake, letters


@pytest.fixture
def repo(make_repo: Callable[..., Path]) -> Path:
    return make_repo(VIEWS, yaml=f"kafka:\n  partitions: {PARTITIONS}\n")


def entity_sets() -> dict[str, list[tuple]]:
    return {"spend": [(f"c{i}",) for i in range(13)], "shop": [(f"m{i}",) for i in range(5)]}


def test_online_state_equals_processing_time_backfill(repo: Path) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 800, seed=1)
    fake, letters = run(store, records)
    assert letters.sent and all(dl.code == "bad_avro" for dl in letters.sent)
    end = T0 + 20_000 * (len(records) // 37 + 2)
    for t in (end, end + 60_000, end + 7 * 60_000):  # values age with no new event
        online = online_values(store, fake, entity_sets(), t)
        assert online == backfill_values(store, entity_sets(), t)
        assert sum(1 for v in online.values() if v[0]) > 3  # non-trivial windows

    logged = {
        (e.partition, e.offset) for e in EventLogReader(store.config.event_log_root).read_all("tx")
    }
    dead = {(d.partition, d.offset) for d in letters.sent}
    assert logged | dead == {(r.partition, r.offset) for r in records}
    assert not logged & dead


def test_partial_writes_and_failed_log_appends_change_nothing(
    repo: Path, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 800, seed=2)
    clean, _ = run(store, records)
    clean_log = sorted(
        (e.partition, e.offset, e.processed_at_ms)
        for e in EventLogReader(store.config.event_log_root).read_all("tx")
    )

    import os

    os.environ["SKEWLESS_STATE_DIR"] = str(tmp_path / "crashy")
    try:
        crashy_store = FeatureStore.from_repo(repo)

        def crash(batch: int, fake: FakeStore, log: FailingLog) -> None:
            if batch % 3 == 1:
                fake.fail_after = batch % 4  # some entities written, the rest not
            elif batch % 3 == 2:
                log.armed = True  # store written, log append fails

        FAILURES.clear()
        crashy, _ = run(crashy_store, records, crash=crash)
        assert FAILURES.count("ConnectionError") >= 5 and FAILURES.count("OSError") >= 5
        crashy_log = sorted(
            (e.partition, e.offset, e.processed_at_ms)
            for e in EventLogReader(crashy_store.config.event_log_root).read_all("tx")
        )
    finally:
        os.environ.pop("SKEWLESS_STATE_DIR")
    end = T0 + 10**8
    assert online_values(store, crashy, entity_sets(), end) == online_values(
        store, clean, entity_sets(), end
    )
    assert [x[:2] for x in crashy_log] == [x[:2] for x in clean_log]  # every record once
    # and the crashy run's log explains its own online state (processed_at recovered)
    last = max(x[2] for x in crashy_log) + 1
    for t in (last, last + 3 * 60_000):
        online = online_values(crashy_store, crashy, entity_sets(), t)
        assert online == backfill_values(crashy_store, entity_sets(), t)
        assert sum(1 for v in online.values() if v[0]) > 3


def test_replaying_a_batch_is_idempotent(repo: Path) -> None:
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 200, seed=3)
    fake, letters = FakeStore(), Letters()
    log = EventLogWriter(store.config.event_log_root, "tx", dict(store.plan.sources["tx"].schema))
    core = BatchProcessor(
        store.plan, "tx", online=fake, log=log, dead=letters, clock=lambda: T0 + 10**7
    )
    first = core.process(records)
    snapshot = {k: dict(v) for k, v in fake.hashes.items()}
    fresh = BatchProcessor(
        store.plan, "tx", online=fake, log=log, dead=letters, clock=lambda: T0 + 10**7 + 5
    )
    again = fresh.process(records)
    assert again.applied == 0 and again.fenced >= first.applied
    assert {
        k: {f: v for f, v in h.items() if not f.startswith((b"u:", b"j:"))}
        for k, h in fake.hashes.items()
    } == {
        k: {f: v for f, v in h.items() if not f.startswith((b"u:", b"j:"))}
        for k, h in snapshot.items()
    }
    assert (
        first.commits
        == again.commits
        == {
            p: max(r.offset for r in records if r.partition == p) + 1
            for p in {r.partition for r in records}
        }
    )


def test_a_batch_decoded_ahead_lands_exactly_as_one_decoded_in_process(
    repo: Path, tmp_path: Path
) -> None:
    """The kafka runtime's pipeline decodes batch n + 1 (``decode``: Avro, validation, the
    transforms) before batch n is processed: the same hashes and dead letters, bit for bit."""
    store = FeatureStore.from_repo(repo)
    records = make_records(store, 400, seed=4)
    chunks = [records[i : i + 37] for i in range(0, len(records), 37)]
    results = []
    for ahead in (False, True):
        fake, letters = FakeStore(), Letters()
        root = str(tmp_path / f"log-{ahead}")
        log = EventLogWriter(root, "tx", dict(store.plan.sources["tx"].schema))
        clock = functools.partial(next, iter(range(T0, T0 + 10**9, 20_000)))
        core = BatchProcessor(store.plan, "tx", online=fake, log=log, dead=letters, clock=clock)
        if ahead:
            decoded: BatchInput | None = core.decode(chunks[0])
            for n, chunk in enumerate(chunks):
                after = core.decode(chunks[n + 1]) if n + 1 < len(chunks) else None
                core.process(chunk, decoded=decoded)  # decoded before the batch before landed
                decoded = after
        else:
            for chunk in chunks:
                core.process(chunk)
        logged = list(EventLogReader(root).read_all("tx"))
        results.append((fake.hashes, letters.sent, logged))
    assert results[0][0] == results[1][0] and results[0][0]
    assert results[0][1] == results[1][1] and results[0][1]  # truncated records: dead letters
    assert results[0][2] == results[1][2]
