"""verify with in-memory fakes behind its Protocols: the worker core writes the fake Redis and
the fake log, then each way online and the log can disagree — lost tiles, a deleted key, a
batch in flight, a stale keyspace — must be found, explained, or re-checked."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine import FeatureStore
from engine.envelope import Envelope
from engine.errors import EventLogMissing, InputDataError, NothingToVerify
from engine.keys import encode_key, partition_for
from engine.online import state_key
from engine.plan import Plan
from engine.ports import DeadLetter, StateWrite, Watermark
from engine.serde import SourceCodec
from engine.stream.core import BatchProcessor, SourceRecord
from engine.verify import Mismatch, VerifyReport, run, same_value

VIEWS = """
merchant = Entity("merchant", join_keys=["merchant_id"])
spend = FeatureView("spend", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="10m", hop="1m"),
    Aggregation("amount", "count", window="1h"),
    Aggregation("qty", "last", window="lifetime"),
    Aggregation("amount", "mean", window="10m", hop="1m"),
])
shop = FeatureView("shop", entity=merchant, source=tx, aggregations=[
    Aggregation("amount", "sum", window="5m", hop="1m"),
    Aggregation("customer_id", "count_distinct", window="5m", hop="1m"),
])
"""
T0 = 1_800_000_000_000
PARTITIONS = 3
CUSTOMERS = 8
MERCHANTS = 3


class FakeOnline:
    """A dict of hashes behind OnlineStateStore; ``on_load`` runs before each load."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.loads = 0
        self.on_load: Callable[[int], None] | None = None

    def load(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        self.loads += 1
        if self.on_load is not None:
            self.on_load(self.loads)
        return [dict(self.hashes.get(k, {})) for k in keys]

    def write(
        self, writes: Sequence[StateWrite], marks: Sequence[Watermark] = ()
    ) -> list[bytes | None]:
        for w in writes:
            h = self.hashes.setdefault(w.key, {})
            h.update({k.encode(): v for k, v in w.fields.items()})
            for name in w.delete:
                h.pop(name.encode(), None)
        return [None for _ in marks]


class FakeLog:
    """One source's event log in memory: a sink for the worker core, a source for verify.

    With ``hold`` set, appends wait in ``held`` (Redis written, the log not yet) until
    ``release``.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: dict[int, list[Envelope]] = {}
        self.hold = False
        self.held: list[Envelope] = []

    def append(self, records: Sequence[Envelope]) -> list[str]:
        if self.hold:
            self.held.extend(records)
            return []
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            part = self.parts.setdefault(rec.partition, [])
            if not part or rec.offset > part[-1].offset:
                part.append(rec)
        return [f"p{p}" for p in {r.partition for r in records}]

    def release(self) -> None:
        held, self.held, self.hold = self.held, [], False
        self.append(held)

    def last_offset(self, partition: int) -> int | None:
        part = self.parts.get(partition)
        return part[-1].offset if part else None

    def partitions(self, source: str) -> list[int]:
        assert source == self.source
        return sorted(self.parts)

    def read(self, source: str, partition: int) -> Iterator[Envelope]:
        return iter(list(self.parts.get(partition, ())))


class Letters:
    def send(self, letters: Sequence[DeadLetter]) -> None:
        pass


class World:
    """A plan, the fake Redis and log, and a worker core writing both at a fake clock."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.online = FakeOnline()
        self.log = FakeLog("tx")
        self.clock_ms = T0
        self.core = BatchProcessor(
            plan,
            "tx",
            online=self.online,
            log=self.log,
            dead=Letters(),
            clock=lambda: self.clock_ms,
        )
        self.codec = SourceCodec(plan.sources["tx"])
        self.offsets = [0] * PARTITIONS
        self.rnd = random.Random(11)

    def push(self, n: int, customers: Sequence[str] | None = None) -> None:
        """One batch of ``n`` events at the current clock; the clock then moves 1s on."""
        records = []
        for _ in range(n):
            customer = self.rnd.choice(customers or [f"c{i}" for i in range(CUSTOMERS)])
            payload = {
                "customer_id": customer,
                "merchant_id": f"m{self.rnd.randrange(MERCHANTS)}",
                "amount": self.rnd.choice([None, 0.1, 0.2, 2.5, 1e9, -0.0]),
                "qty": self.rnd.randrange(100),
                "ts": self.clock_ms - self.rnd.randrange(8 * 60_000),
            }
            key = encode_key([customer])
            p = partition_for(key, PARTITIONS)
            records.append(
                SourceRecord(
                    topic="tx",
                    partition=p,
                    offset=self.offsets[p],
                    key=key,
                    value=self.codec.encode(payload),
                )
            )
            self.offsets[p] += 1
        self.core.process(records)
        self.clock_ms += 1_000

    def key(self, view: str, *entity: Any) -> str:
        return state_key(self.plan.views[view], entity)

    def check(self, **kwargs: Any) -> VerifyReport:
        kwargs.setdefault("sample", 50)
        kwargs.setdefault("seed", 1)
        kwargs.setdefault("sleep", lambda s: None)
        kwargs.setdefault("clock", lambda: self.clock_ms)
        return run(self.plan, self.online, self.log, **kwargs)


@pytest.fixture
def world(make_repo: Callable[..., Path]) -> World:
    w = World(FeatureStore.from_repo(make_repo(VIEWS)).plan)
    for _ in range(6):
        w.push(40)
    return w


def only(report: VerifyReport, view: str, customer: str) -> list[Mismatch]:
    return [
        m for m in report.mismatches if m.view == view and m.entity == {"customer_id": customer}
    ]


# -- consistent state ---------------------------------------------------------------------------


def test_consistent_state_verifies_at_100_percent(world: World) -> None:
    report = world.check()
    assert report.mismatches == () and report.unverifiable == ()
    assert report.entities_checked == CUSTOMERS + MERCHANTS
    assert report.values_checked == CUSTOMERS * 4 + MERCHANTS * 2
    assert report.rate == 1.0 and report.ok and report.rounds == 1
    assert report.at_ms == world.clock_ms and report.seed == 1
    assert [(v.view, v.entities) for v in report.per_view] == [
        ("shop", MERCHANTS),
        ("spend", CUSTOMERS),
    ]
    assert "consistency 100.00%" in report.to_text()
    assert "**PASS**" in report.to_markdown()


def test_values_age_later_as_in_the_replay(world: World) -> None:
    later = world.clock_ms + 7 * 60_000  # part of the 10m windows has left, nothing new came
    report = world.check(at_ms=later)
    assert report.ok, report.to_text()
    assert report.at_ms == later


def sampled(world: World, seed: int, k: int) -> set[str]:
    """The customers a seed picks for ``spend``: checked on a copy of Redis without the
    lifetime accumulators, where every sampled customer shows up as a mismatch."""
    saved = {key: dict(fields) for key, fields in world.online.hashes.items()}
    prefix = world.key("spend", "x").partition("{")[0]
    try:
        for key, fields in world.online.hashes.items():
            if key.startswith(prefix):
                for name in [n for n in fields if n.startswith(b"l:")]:
                    del fields[name]
        report = world.check(sample=k, seed=seed, views=["spend"])
    finally:
        world.online.hashes = saved
    assert report.views == ("spend",) and report.values_checked == 4 * min(k, CUSTOMERS)
    return {m.entity["customer_id"] for m in report.mismatches}


def test_sample_is_seeded_and_bounded_per_view(world: World) -> None:
    first = sampled(world, seed=5, k=3)
    assert len(first) == 3
    assert sampled(world, seed=5, k=3) == first  # a seed reproduces its sample
    union = set().union(*(sampled(world, seed=s, k=3) for s in range(8)))
    assert len(union) > 3  # other seeds pick other customers
    assert sampled(world, seed=5, k=99) == {f"c{i}" for i in range(CUSTOMERS)}


# -- true disagreements --------------------------------------------------------------------------


def test_a_lost_tile_is_a_value_mismatch_naming_entity_and_feature(world: World) -> None:
    key = world.key("spend", "c3")
    fields = world.online.hashes[key]
    tile = max(n for n in fields if n.startswith(b"t:") and b":60000:" in n)
    del fields[tile]
    report = world.check()
    found = only(report, "spend", "c3")
    assert found and {m.kind for m in found} == {"value_differs"}
    assert {m.feature for m in found} <= {"amount_sum_10m", "amount_mean_10m"}
    assert "amount_sum_10m" in {m.feature for m in found} or "amount_mean_10m" in {
        m.feature for m in found
    }
    m = found[0]
    assert m.reason.startswith(f"value differs: online {m.online!r} vs log {m.expected!r}")
    assert "rebuild-online spend" in m.reason
    assert not same_value(m.online, m.expected)
    assert len(report.mismatches) == len(found) and report.rounds == 1  # no re-check needed
    assert 0 < report.rate < 1 and not report.ok
    assert "c3" in report.to_text() and "amount_" in report.to_markdown()


def test_a_wrong_tile_copied_from_another_entity_is_found(world: World) -> None:
    a, b = (
        world.online.hashes[world.key("spend", "c1")],
        world.online.hashes[world.key("spend", "c2")],
    )
    la = next(n for n in a if n.startswith(b"l:"))
    lb = next(n for n in b if n.startswith(b"l:"))
    assert a[la] != b[lb]
    a[la] = b[lb]  # c2's lifetime accumulator written into c1's hash
    report = world.check()
    assert {m.feature for m in only(report, "spend", "c1")} >= {"qty_last_lifetime"}


def test_a_deleted_key_is_missing_online_with_the_rebuild_hint(world: World) -> None:
    del world.online.hashes[world.key("spend", "c4")]
    report = world.check()
    found = only(report, "spend", "c4")
    assert found and {m.kind for m in found} == {"missing_online"}
    assert "entity missing online" in found[0].reason
    assert "skewless rebuild-online spend" in found[0].reason
    assert report.unverifiable == ()


def test_a_rolled_back_fence_is_lost_state(world: World) -> None:
    key = world.key("spend", "c5")
    before = dict(world.online.hashes[key])
    world.push(30, customers=["c5"])
    world.online.hashes[key] = before  # Redis restarted without its last writes
    report = world.check()
    found = only(report, "spend", "c5")
    assert found and {m.kind for m in found} == {"online_lacks_records"}
    assert "logged (hence written) before the read" in found[0].reason


def test_a_fence_the_log_does_not_know_is_unlogged_state(world: World) -> None:
    key = world.key("spend", "c6")
    fields = world.online.hashes[key]
    fence = next(n for n in fields if n.startswith(b"f:"))
    p = int(fence.split(b":")[1])
    owners = {e.offset: e.payload["customer_id"] for e in world.log.parts[p]}
    # state from elsewhere: a fence at an offset the log gives another customer, other tiles
    other = max(o for o, c in owners.items() if c != "c6" and o < int(fields[fence]))
    fields[fence] = str(other).encode()
    del fields[next(n for n in fields if n.startswith(b"l:"))]
    report = world.check()
    found = only(report, "spend", "c6")
    assert found and {m.kind for m in found} == {"online_has_unlogged"}
    assert f"online holds offset {other} of partition {p}" in found[0].reason


def test_undecodable_tiles_are_corrupt_state_not_a_crash(world: World) -> None:
    fields = world.online.hashes[world.key("spend", "c7")]
    tile = next(n for n in fields if n.startswith(b"t:"))
    fields[tile] = b"\xff\xfe garbage"
    report = world.check()
    found = only(report, "spend", "c7")
    assert len(found) == 4 and {m.kind for m in found} == {"corrupt_state"}
    assert all(m.online is None for m in found)
    assert len(report.mismatches) == 4  # the other entities still verified


def test_a_stale_keyspace_is_named(world: World) -> None:
    view = world.plan.views["spend"]
    old = "0123456789ab"
    key = world.key("spend", "c2")
    world.online.hashes[key.replace(view.fingerprint, old)] = world.online.hashes.pop(key)
    report = world.check(applied={"spend": old, "shop": world.plan.views["shop"].fingerprint})
    found = only(report, "spend", "c2")
    assert found and {m.kind for m in found} == {"stale_fingerprint"}
    assert old in found[0].reason and "rebuild-online spend" in found[0].reason
    assert any("definitions changed since the last apply" in n for n in report.notes)


# -- in flight: re-checked, never a false alarm ---------------------------------------------------


def test_online_ahead_of_the_log_is_rechecked_then_matches(world: World) -> None:
    world.log.hold = True
    world.push(20)  # Redis written, the log append still to come
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        world.log.release()  # the batch's log append lands while verify waits

    report = world.check(sleep=sleep)
    assert report.ok, report.to_text()
    assert report.rounds == 2 and waits == [0.2]


def test_online_ahead_of_the_log_for_good_is_unverifiable_not_a_match(world: World) -> None:
    world.log.hold = True
    world.push(20)
    report = world.check(retries=2)
    assert report.mismatches == ()
    assert report.unverifiable and {u.kind for u in report.unverifiable} == {"ahead_of_log"}
    assert "online is ahead of the log (batch in flight: online fence offset" in (
        report.unverifiable[0].reason
    )
    assert "still so after 3 round(s)" in report.unverifiable[0].reason
    assert report.skipped == sum(u.features for u in report.unverifiable)
    assert report.rounds == 3 and not report.ok
    assert report.values_checked + report.skipped == CUSTOMERS * 4 + MERCHANTS * 2
    assert "INCOMPLETE" in report.to_markdown() and "Unverifiable now" in report.to_markdown()


def test_a_write_landing_after_the_read_is_rechecked(world: World) -> None:
    """A batch begun before T writes Redis after the read and the log before its listing."""
    stale = {k: dict(v) for k, v in world.online.hashes.items()}
    world.push(20)
    world.clock_ms += 5_000
    served: list[int] = []

    original = world.online.load

    def load(keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        served.append(len(keys))
        if len(served) == 1:  # the first read sees Redis before the batch's write
            return [dict(stale.get(k, {})) for k in keys]
        return original(keys)

    world.online.load = load  # type: ignore[method-assign]
    report = world.check()
    assert report.ok, report.to_text()
    assert report.rounds == 2


def test_a_write_after_a_fixed_past_t_is_unverifiable_at_once(world: World) -> None:
    past = world.clock_ms - 3_500  # before the last two batches
    report = world.check(at_ms=past)
    assert report.mismatches == ()
    written = [u for u in report.unverifiable if u.kind == "written_after_t"]
    assert written and "verify without --at-ms" in written[0].reason
    assert report.rounds == 1  # a fixed T cannot move past the write: no re-check


# -- inputs and report ------------------------------------------------------------------------------


def test_nothing_to_verify_and_bad_arguments(world: World, make_repo: Callable[..., Path]) -> None:
    empty = World(world.plan)
    with pytest.raises(NothingToVerify, match="holds no partition"):
        empty.check()
    with pytest.raises(InputDataError, match="unknown view"):
        world.check(views=["nope"])
    with pytest.raises(InputDataError, match="sample"):
        world.check(sample=0)
    with pytest.raises(InputDataError, match="retries"):
        world.check(retries=-1)


def test_a_missing_log_is_raised_for_named_views_and_noted_otherwise(world: World) -> None:
    class NoLog(FakeLog):
        def partitions(self, source: str) -> list[int]:
            raise EventLogMissing(f"no event log for source {source!r}")

    with pytest.raises(EventLogMissing):
        run(world.plan, world.online, NoLog("tx"), views=["spend"], seed=1)
    with pytest.raises(EventLogMissing):
        run(world.plan, world.online, NoLog("tx"), seed=1)


def test_rate_is_zero_when_nothing_was_checked() -> None:
    report = VerifyReport(
        at_ms=T0, views=(), entities_checked=0, values_checked=0, mismatches=(), skipped=0
    )
    assert report.rate == 0.0 and not report.ok


def test_markdown_escapes_table_cells(world: World) -> None:
    report = VerifyReport(
        at_ms=T0,
        views=("v",),
        entities_checked=1,
        values_checked=2,
        skipped=0,
        mismatches=(
            Mismatch(view="v", feature="f", entity={"k": "a|b"}, online="x|y", expected=None,
                     reason="why\nnot", kind="value_differs", at_ms=T0),
        ),
    )  # fmt: skip
    md = report.to_markdown()
    row = next(line for line in md.splitlines() if line.startswith("| v | f"))
    assert "k=a\\|b" in row and "'x\\|y'" in row and "why not" in row
    assert report.rate == 0.5 and "**FAIL**" in md


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (None, None, True),
        (math.nan, math.nan, True),
        (0.0, -0.0, False),
        (0.1 + 0.2, 0.3, False),
        (1, 1.0, False),
        (None, math.nan, False),
        (None, 0, False),
        ([1.5, None], [1.5, None], True),
        ([1.5], (1.5,), True),
        (["a"], ["a", "b"], False),
        (True, 1, False),
        (b"x", b"x", True),
    ],
)
def test_same_value_is_bit_for_bit(a: Any, b: Any, equal: bool) -> None:
    assert same_value(a, b) is equal
