"""Stream/backfill parity end to end: push randomised events to a 4-partition topic, run two
worker processes, read online features while the events flow, and compare every read bit for
bit with the processing-time backfill at the read time, from the log the workers wrote.

Size: ``SKEWLESS_E2E_EVENTS`` events (default 20,000 for CI; the full run is 200,000).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from connectors.eventlog import EventLogReader
from connectors.kafka import dead_letter_topic
from engine.online import marks_key, state_key
from engine.processing import extract
from engine.serde import SourceCodec
from engine.store import FeatureStore
from tests.stream_harness import (
    WorkerProcess,
    delete_topics,
    end_offsets,
    holds_partitions,
    logged,
    payment_events,
    payments_repo,
    produce_raw,
    raw_redis,
    read_topic,
    same,
    unique,
    wait_caught_up,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.redis]

EVENTS = int(os.environ.get("SKEWLESS_E2E_EVENTS", "20000"))
RUNTIMES = ["kafka", "faust"]
PARTITIONS = 4
SETTLE_S = 0.3  # a write landing between the two snapshots of a read excludes it
CHUNK = 2000
CUSTOMER_VIEWS = ("customer_spend", "customer_activity", "customer_online")
MERCHANT_VIEWS = ("merchant_risk",)
DAY = 86_400_000


@dataclass
class Events:
    valid: list[dict[str, Any]]
    invalid: list[tuple[bytes | None, bytes | None, str]]
    customers: list[str]
    merchants: list[str]


def generate(n: int, seed: int, now: int, codec: SourceCodec) -> Events:
    """Out-of-order events with ties, tile-boundary times, late ones and ~1% invalid records."""
    rng = random.Random(seed)
    customers = [f"c{i:06d}" for i in range(max(1000, n // 10))]
    merchants = [f"m{i:05d}" for i in range(max(100, n // 200))]

    def event_time(rng: random.Random, so_far: list[dict[str, Any]]) -> int:
        kind = rng.random()
        if kind < 0.6:
            return now - rng.randrange(3 * 3_600_000)  # the last 3h: some late for a 2h lateness
        if kind < 0.7:
            return now - rng.randrange(40 * DAY)  # up to 40 days: some later than every window
        if kind < 0.8:  # exactly on a tile boundary (10s, 5m, 1h or 1d)
            hop = rng.choice([10_000, 300_000, 3_600_000, DAY])
            return (now - rng.randrange(2 * DAY)) // hop * hop
        if so_far:  # a tie with an earlier event, often of the same customer
            return int(rng.choice(so_far)["ts"])
        return now

    valid, invalid = payment_events(
        n, rng, codec, event_time=event_time, customers=customers, merchants=merchants,
        invalid_kinds=("truncated", "garbage", "future_timestamp", "not_finite", "null_value"),
        now_ms=now,
    )  # fmt: skip
    return Events(valid, invalid, customers, merchants)


Fences = tuple[tuple[int | None, ...], ...]  # per view of the group, per partition: f:<p>


@dataclass
class Read:
    entity: str
    t_ms: int
    fences: Fences
    values: dict[str, Any]
    flowing: bool
    final: bool = False  # read after every record had landed


@dataclass
class Reads:
    """Online reads that no write overlapped, to check and compare after the run."""

    got: dict[str, list[Read]] = field(default_factory=lambda: {"c": [], "m": []})
    attempted: int = 0


def features_of(store: FeatureStore, views: tuple[str, ...]) -> list[str]:
    return [f"{v}:{f}" for v in views for f in store.plan.views[v].features]


def marks(
    client: redis.Redis, keys: list[str], merged: frozenset[str] = frozenset()
) -> list[tuple[bytes | None, ...]]:
    """Fence and write-time fields of every partition, per key. A merge-on-write view's
    key (in ``merged``): the fences from its marks hash, its write time ``u:0`` (any
    partition's newest write; a write moves some fence, so a change still shows)."""
    names = [f"{kind}:{p}" for kind in "fu" for p in range(PARTITIONS)]
    fences = names[:PARTITIONS]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if key in merged:
            pipe.hmget(marks_key(key), fences)
            pipe.hmget(key, ["u:0"])
        else:
            pipe.hmget(key, names)
    replies = iter(pipe.execute())
    out: list[tuple[bytes | None, ...]] = []
    for key in keys:
        got = next(replies)
        if key in merged:
            got = [*got, *next(replies), *([None] * (PARTITIONS - 1))]
        out.append(tuple(got))
    return out


def sample_round(
    store: FeatureStore,
    client: redis.Redis,
    groups: dict[str, tuple[str, tuple[str, ...], list[str]]],
    reads: Reads,
    flowing: bool,
    final: bool = False,
) -> None:
    """Read every sampled entity at ``t``; keep the reads no write to the entity overlapped.

    A read is kept when the entity's fence and write-time fields are identical just before
    the read and ``SETTLE_S`` after it (so the read saw exactly that state) and every write
    time is before ``t``. Whether that state held *every* record processed before ``t`` — a
    batch that started before ``t`` may not have written yet — is decided after the run
    from the log (``complete``), so no timing assumption decides what is compared.
    """
    keys: dict[str, list[list[str]]] = {}
    for g, (_column, views, entities) in groups.items():
        keys[g] = [[state_key(store.plan.views[v], (e,)) for v in views] for e in entities]
    flat = [k for g in keys for per in keys[g] for k in per]
    merged = frozenset(
        state_key(store.plan.views[v], (e,))
        for _column, views, entities in groups.values()
        for v in views
        if store.plan.views[v].merged
        for e in entities
    )
    before = marks(client, flat, merged)
    t = time.time_ns() // 1_000_000
    got: dict[str, dict[str, list[Any]]] = {}
    for g, (column, views, entities) in groups.items():
        resp = store.get_online_features(
            features_of(store, views),
            [{column: e} for e in entities],
            now_ms=t,
            full_feature_names=True,
        )
        got[g] = resp.to_dict()
    time.sleep(SETTLE_S)
    after = marks(client, flat, merged)
    i = 0
    for g, (_column, views, entities) in groups.items():
        for r, entity in enumerate(entities):
            n = len(views)
            b, a = before[i : i + n], after[i : i + n]
            i += n
            reads.attempted += 1
            written = [int(x) for m in b for x in m[PARTITIONS:] if x is not None]
            if b != a or any(w >= t for w in written):
                continue
            fences = tuple(tuple(None if x is None else int(x) for x in m[:PARTITIONS]) for m in b)
            values = {name: col[r] for name, col in got[g].items()}
            reads.got[g].append(Read(entity, t, fences, values, flowing, final))


def applied_index(
    store: FeatureStore, source: str, views: tuple[str, ...]
) -> list[dict[str, list[tuple[int, int, int]]]]:
    """Per view: entity → (processed_at, partition, offset) of every record the view applied,
    from the log the workers wrote (the same admission rule the worker ran)."""
    src = store.plan.sources[source]
    plans = [store.plan.views[v] for v in views]
    index: list[dict[str, list[tuple[int, int, int]]]] = [{} for _ in views]
    for env in EventLogReader(store.config.event_log_root).read_all(source):
        for i, view in enumerate(plans):
            item = extract(view, src, env)
            if item is not None:
                index[i].setdefault(item.entity[0], []).append(
                    (env.processed_at_ms, env.partition, env.offset)
                )
    return index


def complete(read: Read, index: list[dict[str, list[tuple[int, int, int]]]]) -> bool:
    """Whether the state the read saw held every record applied with processed_at < t: per
    view and partition, its fence is the highest such offset (fences move in offset order)."""
    for v, per_entity in enumerate(index):
        highest: list[int | None] = [None] * PARTITIONS
        for processed_at, partition, offset in per_entity.get(read.entity, ()):
            if processed_at < read.t_ms:
                old = highest[partition]
                highest[partition] = offset if old is None else max(old, offset)
        if tuple(highest) != read.fences[v]:
            return False
    return True


@pytest.mark.parametrize(("runtime", "merged"), [*((r, True) for r in RUNTIMES), ("kafka", False)])
def test_online_reads_equal_processing_time_backfill(
    runtime: str, merged: bool, tmp_path: Path, kafka_service: str, stream_redis_url: str
) -> None:
    """``merged``: merchant_risk (keyed by merchant, the topic by customer) on the
    merge-on-write layout, the default; else on the per-partition layout."""
    source = unique("pay")
    repo = payments_repo(
        tmp_path / "repo",
        source,
        project=unique("e2e"),
        bootstrap=kafka_service,
        redis_url=stream_redis_url,
    )
    with open(repo / "skewless.yaml", "a") as fh:
        fh.write(f"online:\n  merge_rekeyed_views: {str(merged).lower()}\n")
    store = FeatureStore.from_repo(repo)
    assert store.plan.views["merchant_risk"].merged == merged
    store.apply()
    try:
        _parity(runtime, store, source, repo, kafka_service, stream_redis_url)
    finally:
        delete_topics(kafka_service, [source, dead_letter_topic(source)])


def _parity(
    runtime: str,
    store: FeatureStore,
    source: str,
    repo: Path,
    kafka_service: str,
    stream_redis_url: str,
) -> None:
    group = f"skewless.{store.config.project}"
    now = int(time.time() * 1000)
    events = generate(
        EVENTS, seed=20_260_101, now=now, codec=SourceCodec(store.plan.sources[source])
    )
    rng = random.Random(7)
    groups = {
        "c": ("customer_id", CUSTOMER_VIEWS, rng.sample(events.customers, 1000)),
        "m": ("merchant_id", MERCHANT_VIEWS, rng.sample(events.merchants, min(200, len(events.merchants)))),
    }  # fmt: skip

    args = ["--runtime", runtime, "--batch-max", "2000"]
    workers = [WorkerProcess(repo, *args), WorkerProcess(repo, *args)]
    invalid_at: dict[tuple[int, int], tuple[bytes | None, bytes | None, str]] = {}
    pushed = threading.Event()
    failure: list[BaseException] = []

    def pusher() -> None:
        try:
            per_chunk = max(1, len(events.invalid) * CHUNK // max(1, len(events.valid)))
            bad = list(events.invalid)
            for start in range(0, len(events.valid), CHUNK):
                store.push(source, events.valid[start : start + CHUNK])
                mine, bad = bad[:per_chunk], bad[per_chunk:]
                if start + CHUNK >= len(events.valid):
                    mine, bad = mine + bad, []
                if mine:
                    where = produce_raw(kafka_service, source, [(k, v) for k, v, _ in mine])
                    invalid_at.update(zip(where, mine, strict=True))
                time.sleep(0.05)
        except BaseException as exc:
            failure.append(exc)
        finally:
            pushed.set()

    client = raw_redis(stream_redis_url)
    reads = Reads()
    try:
        # both hold partitions (a bare "assigned" also matches aiokafka's "Revoking previously
        # assigned partitions set()", logged as a Faust worker joins, before the second one has)
        wait_until(lambda: all(holds_partitions(w, source) for w in workers), 90, "two members")
        feeding = threading.Thread(target=pusher)
        feeding.start()
        rounds = 0
        while True:
            flowing = not pushed.is_set() or _behind(kafka_service, group, source)
            sample_round(store, client, groups, reads, flowing)
            rounds += 1
            if not flowing:
                break
        feeding.join()
        assert not failure, failure
        wait_caught_up(kafka_service, group, [source], 600)
        sample_round(store, client, groups, reads, False, final=True)  # everything landed
    finally:
        codes = [w.terminate(120) for w in workers]
        client.close()
    assert codes == [0, 0], "\n".join(w.text()[-3000:] for w in workers)
    for w in workers:  # both members took part: the last counters line shows records
        counts = re.findall(r"\]: (\d+) records", w.text())
        assert counts and int(counts[-1]) > 0, w.text()[-3000:]

    # every valid record in the log exactly once, every invalid one in the dead-letter topic
    total = sum(end_offsets(kafka_service, source).values())
    assert total == len(events.valid) + len(events.invalid)
    found = logged(store.config.event_log_root, source)
    everything = {
        (p, o) for p, end in end_offsets(kafka_service, source).items() for o in range(end)
    }
    assert set(found) == everything - set(invalid_at)
    assert all(n == 1 for n in found.values())
    letters = read_topic(kafka_service, dead_letter_topic(source))
    dead = {
        (int(x.headers["skewless.source_partition"]), int(x.headers["skewless.source_offset"])):
        (x.key, x.value, x.headers["skewless.reason_code"].decode())
        for x in letters
    }  # fmt: skip
    assert dead == invalid_at

    # every complete read equals the processing-time backfill at its read time, bit for bit
    compared = Counter[str]()
    counted = flowed = incomplete = 0
    for g, (column, views, _) in groups.items():
        index = applied_index(store, source, views)
        kept = []
        for read in reads.got[g]:
            if complete(read, index):
                kept.append(read)
            else:
                assert not read.final, f"{read.entity}: online state at rest lacks records"
                incomplete += 1
        # at rest, every sampled entity's read is kept and compared
        assert sum(r.final for r in kept) == len(groups[g][2])
        counted += len(kept)
        flowed += sum(r.flowing for r in kept)
        labels = pd.DataFrame(
            {column: [r.entity for r in kept], "event_timestamp": [r.t_ms for r in kept]}
        )
        hist = store.get_historical_features(
            labels, features_of(store, views), mode="processing_time", full_feature_names=True
        )
        for r, read in enumerate(kept):
            for ref in features_of(store, views):
                name = ref.replace(":", "__")
                want = hist[name].iloc[r]
                assert same(read.values[name], want), (
                    f"{ref} of {read.entity} at {read.t_ms}: online {read.values[name]!r} != "
                    f"backfill {want!r}"
                )
                compared[g] += 1
    print(
        f"\n{runtime}: {EVENTS} events ({len(events.invalid)} invalid), {rounds} rounds while "
        f"flowing; {counted} of {reads.attempted} reads compared ({flowed} while events flowed; "
        f"{incomplete} left out: a batch begun before the read had not written yet); "
        f"{sum(compared.values())} values equal the backfill"
    )
    assert sum(compared.values()) >= 1000 * sum(
        len(store.plan.views[v].features) for v in CUSTOMER_VIEWS
    )


def _behind(bootstrap: str, group: str, topic: str) -> bool:
    from tests.stream_harness import committed

    ends, marks_ = end_offsets(bootstrap, topic), committed(bootstrap, group, topic)
    return any(end > 0 and marks_.get(p) != end for p, end in ends.items())
