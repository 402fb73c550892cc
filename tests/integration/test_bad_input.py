"""The bad-input catalogue against the real broker and Redis, for both runtimes.

Each test defines three sources — schemaless Avro, Confluent wire format and JSON — on
topics of its own, produces every catalogue entry that applies to each (``tests/bad_inputs.py``)
at random places among valid and unusual-but-valid records, and runs one worker process of
the runtime over the backlog in small batches. Then: every bad record is in
``skewless.<source>.dlq`` exactly once, with its key and value bytes, the expected
``skewless.reason_code`` and a reason naming the field or problem; every valid record is in
the event log exactly once; the online values equal an independent fold of the valid
records; the worker's ``refused`` counters add up; the worker stopped cleanly.
"""

from __future__ import annotations

import ast
import math
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from connectors.kafka import DLQ_HEADERS, dead_letter_topic
from engine.keys import encode_key
from engine.serde import SourceCodec
from engine.store import FeatureStore
from tests.bad_inputs import (
    FEATURES,
    KINDS,
    MAX_RECORD_BYTES,
    BadInput,
    Kind,
    Sample,
    bad_inputs,
    defs,
    edge_valid,
)
from tests.stream_harness import (
    WorkerProcess,
    delete_topics,
    flushed_redis_db,
    logged,
    produce_raw,
    read_topic,
    same,
    unique,
    wait_caught_up,
    write_repo,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

BAD_INPUT_DB = 14  # this file's Redis database, flushed per test
CUSTOMERS = [f"c{i:03d}" for i in range(20)]
VALID_PER_SOURCE = 150
HOP_1H_MS = 300_000  # the default hop of a 1h window


@pytest.fixture
def bad_input_redis_url(redis_service: str) -> Iterator[str]:
    with flushed_redis_db(redis_service, BAD_INPUT_DB) as url:
        yield url


@dataclass
class Source:
    """What was produced to one source: valid payloads and bad entries by coordinates."""

    kind: Kind
    name: str
    codec: SourceCodec
    valid: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    bad: dict[tuple[int, int], tuple[bytes | None, bytes | None, BadInput]] = field(
        default_factory=dict
    )


class Scenario:
    """A repo with one source per kind on unique topics, limits of the catalogue, applied."""

    def __init__(self, tmp_path: Path, bootstrap: str, redis_url: str) -> None:
        self.bootstrap = bootstrap
        names = {kind: unique(f"bad_{kind}") for kind in KINDS}
        self.project = unique("badin")
        self.path = write_repo(
            tmp_path / "repo",
            defs(names),
            project=self.project,
            bootstrap=bootstrap,
            redis_url=redis_url,
            partitions=2,
        )
        with (self.path / "skewless.yaml").open("a") as fh:
            fh.write(f"decode:\n  max_record_bytes: {MAX_RECORD_BYTES}\n")
        self.store = FeatureStore.from_repo(self.path)
        self.topics = [t for n in names.values() for t in (n, dead_letter_topic(n))]
        self.store.apply()
        self.sources = {
            kind: Source(kind, name, SourceCodec(self.store.plan.sources[name]))
            for kind, name in names.items()
        }
        self.group = f"skewless.{self.project}"

    def produce(self, seed: int) -> None:
        """Valid, unusual-but-valid and every applicable bad record, shuffled, per source."""
        rng = random.Random(seed)
        now = int(time.time() * 1000)
        for kind, src in self.sources.items():
            s = Sample(kind, src.codec, now)
            records: list[tuple[bytes | None, bytes | None, BadInput | None]] = []
            for _ in range(VALID_PER_SOURCE):
                customer = rng.choice(CUSTOMERS)
                row = s.row(
                    customer_id=customer,
                    merchant_id=f"m{rng.randrange(5)}",
                    amount=None if rng.random() < 0.05 else round(rng.uniform(-5, 500), 2),
                    qty=rng.randrange(1, 9),
                    ratio=None if rng.random() < 0.05 else rng.random(),
                    channel=rng.choice(["web", "pos"]),
                    ts=now - rng.randrange(40 * 60_000),
                )
                records.append((encode_key([customer]), s.value(**row), None))
            records += [(k, v, None) for k, v in edge_valid(s)]
            bad = bad_inputs(kind)
            assert len(bad) >= 15, f"{kind}: the catalogue shrank"
            for bad_one in bad:
                key, value = bad_one.build(s)
                records.insert(rng.randrange(len(records) + 1), (key, value, bad_one))
            where = produce_raw(self.bootstrap, src.name, [(k, v) for k, v, _ in records])
            assert len(where) == len(records)
            for coords, (key, value, entry) in zip(where, records, strict=True):
                if entry is None:
                    assert value is not None
                    src.valid[coords] = src.codec.decode(key, value, now_ms=now)
                else:
                    src.bad[coords] = (key, value, entry)

    # -- checks ------------------------------------------------------------------------------

    def check_dead_letters(self) -> int:
        checked = 0
        for src in self.sources.values():
            got: dict[tuple[int, int], tuple[bytes | None, bytes | None, str]] = {}
            for letter in read_topic(self.bootstrap, dead_letter_topic(src.name)):
                h = letter.headers
                assert set(DLQ_HEADERS) <= set(h), h
                assert h["skewless.source_topic"] == src.name.encode()
                where = (int(h["skewless.source_partition"]), int(h["skewless.source_offset"]))
                assert where not in got, f"{src.name}: dead letter {where} sent twice"
                code = h["skewless.reason_code"].decode()
                got[where] = (letter.key, letter.value, code)
                entry = src.bad.get(where)
                assert entry is not None, f"{src.name}: a valid record was refused: {h}"
                reason = h["skewless.reason"].decode("utf-8")
                assert reason.startswith(f"source {src.name!r}: "), reason
                for fragment in entry[2].says:
                    assert fragment in reason, f"{entry[2].name}: {fragment!r} not in {reason!r}"
                checked += 1
            want = {w: (k, v, e.code) for w, (k, v, e) in src.bad.items()}
            assert got == want, f"{src.kind}: dead letters differ from the bad records produced"
        return checked

    def check_log_exactly_once(self) -> None:
        for src in self.sources.values():
            found = logged(self.store.config.event_log_root, src.name)
            assert set(found) == set(src.valid), f"{src.kind}: logged != valid records"
            assert set(found.values()) == {1}, f"{src.kind}: some records logged twice"

    def check_online_equals_fold(self) -> int:
        """Every feature of every customer, read online, equals a fold of the valid payloads."""
        t = int(time.time() * 1000)
        start = -(-t // HOP_1H_MS) * HOP_1H_MS - 3_600_000
        entity_rows = [{"customer_id": c} for c in CUSTOMERS]
        compared = 0
        for kind, src in self.sources.items():
            refs = [f"v_{kind}:{f}" for f in FEATURES]
            online = self.store.get_online_features(refs, entity_rows, now_ms=t).to_dict()
            for i, c in enumerate(CUSTOMERS):
                mine = [p for p in src.valid.values() if p["customer_id"] == c]
                window = [
                    p["amount"] for p in mine if p["amount"] is not None and start <= p["ts"] < t
                ]
                ratios = [p["ratio"] for p in mine if p["ratio"] is not None]
                want = {  # None: nothing to sum, which reads as 0, 0.0 or null
                    "amount_sum_1h": math.fsum(window) if window else None,
                    "amount_count_lifetime": len(mine),  # count counts null amounts too
                    "ratio_sum_lifetime": math.fsum(ratios) if ratios else None,
                    "qty_sum_lifetime": sum(p["qty"] for p in mine) if mine else None,
                }
                for feature, expected in want.items():
                    got = online[feature][i]
                    if expected is None:
                        assert got in (0, None), f"v_{kind}:{feature} {c}: {got!r}, expected 0"
                    else:
                        assert same(got, expected), (
                            f"v_{kind}:{feature} {c}: {got!r} != {expected!r}"
                        )
                    compared += 1
        return compared

    def check_online_equals_backfill(self) -> int:
        """Online values == a processing-time backfill from the log, bit for bit: what the
        worker folded is what it logged (e.g. JSON floats of an Avro float field)."""
        t = int(time.time() * 1000)
        refs = [f"v_{kind}:{f}" for kind in KINDS for f in FEATURES]
        entity_rows = [{"customer_id": c} for c in CUSTOMERS]
        online = self.store.get_online_features(
            refs, entity_rows, now_ms=t, full_feature_names=True
        ).to_dict()
        labels = pd.DataFrame({"customer_id": CUSTOMERS, "event_timestamp": [t] * len(CUSTOMERS)})
        hist = self.store.get_historical_features(
            labels, refs, mode="processing_time", workers=1, full_feature_names=True
        )
        compared = 0
        for ref in refs:
            column = ref.replace(":", "__")
            for i, c in enumerate(CUSTOMERS):
                got, want = online[column][i], hist[column].iloc[i]
                assert same(got, want), f"{ref} {c}: online {got!r} != backfill {want!r}"
                compared += 1
        return compared

    def check_counters(self, text: str) -> None:
        found = re.findall(r"refused (\{[^}]*\}|0)", text)
        assert found, text[-3000:]
        refused: dict[str, int] = ast.literal_eval(found[-1]) or {}  # a logged dict literal
        want = Counter(e.code for src in self.sources.values() for _, _, e in src.bad.values())
        assert Counter(refused) == want


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_every_bad_input_is_dead_lettered_and_every_valid_record_is_kept(
    tmp_path: Path, kafka_service: str, bad_input_redis_url: str, runtime: str
) -> None:
    scenario = Scenario(tmp_path, kafka_service, bad_input_redis_url)
    try:
        scenario.produce(seed=4)
        worker = WorkerProcess(scenario.path, "--runtime", runtime, "--batch-max", "40")
        try:
            sources = [s.name for s in scenario.sources.values()]
            wait_caught_up(kafka_service, scenario.group, sources, 180)
        finally:
            code = worker.terminate()
        text = worker.text()
        assert code == 0, text[-3000:]
        assert "retries 0" in text, text[-3000:]
        assert scenario.check_dead_letters() == sum(len(s.bad) for s in scenario.sources.values())
        scenario.check_log_exactly_once()
        assert scenario.check_online_equals_fold() > len(CUSTOMERS) * len(KINDS) * 3
        assert scenario.check_online_equals_backfill() == len(CUSTOMERS) * len(KINDS) * 4
        scenario.check_counters(text)
    finally:
        delete_topics(kafka_service, scenario.topics)
