"""One fault run over real services: the payments example, its events, workers as processes, checks.

Shared by the fault tests (``tests/faults``) and the soak (``benchmarks/soak.py``). A run:

- generates events that are never late (event times within the last 15 minutes, no day
  boundaries), so ``processed_at`` never changes what a view admits, with ties, tile
  boundaries, nulls, extreme amounts, unknown currencies, and ~1% invalid records;
- pushes them in paced chunks from a thread (invalid ones produced raw between chunks)
  while the caller injects faults;
- runs ``python -m engine.cli worker`` processes, so SIGKILL and SIGSTOP/SIGCONT are real;
- checks, once every record has been committed, that it equals an undisturbed run
  (``Run.check``): every entity's online value at a read time ``t`` equals the event-time
  backfill at ``t`` of the pushed valid events imported into a separate, clean log, and so
  does the processing-time backfill of the log the workers wrote; the log holds every
  valid (partition, offset) exactly once and nothing else; the dead-letter topic holds
  every invalid record and nothing else.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import redis

from connectors.kafka import dead_letter_topic
from engine.online import state_key
from engine.serde import SourceCodec
from engine.store import FeatureStore
from tests.stream_harness import (
    WorkerProcess,
    delete_topics,
    end_offsets,
    holds_partitions,
    lag,
    log_listing,
    logged,
    payment_events,
    payments_repo,
    produce_raw,
    read_topic,
    same,
    unique,
    wait_caught_up,
    wait_until,
)

MINUTE = 60_000
CUSTOMER_VIEWS = ("customer_spend", "customer_activity", "customer_online")
MERCHANT_VIEWS = ("merchant_risk",)
LOST_STATE = "ONLINE STATE LOST"  # what a worker logs when it finds its state lost


@dataclass
class Events:
    valid: list[dict[str, Any]]
    invalid: list[tuple[bytes | None, bytes | None, str]]


def generate(n: int, seed: int, now_ms: int, codec: SourceCodec) -> Events:
    """``n`` valid events within the 15 minutes before ``now_ms`` and ~1% invalid records."""
    rng = random.Random(seed)

    def event_time(rng: random.Random, so_far: list[dict[str, Any]]) -> int:
        kind = rng.random()
        if kind < 0.8 or not so_far:
            return now_ms - rng.randrange(15 * MINUTE)
        if kind < 0.9:  # exactly on a tile boundary (10s, 1m, 5m)
            hop = rng.choice([10_000, MINUTE, 5 * MINUTE])
            return (now_ms - rng.randrange(15 * MINUTE)) // hop * hop
        return int(rng.choice(so_far)["ts"])  # a tie with an earlier event

    valid, invalid = payment_events(
        n, rng, codec, event_time=event_time,
        customers=[f"c{i:06d}" for i in range(max(200, n // 10))],
        merchants=[f"m{i:05d}" for i in range(max(50, n // 200))],
        invalid_kinds=("truncated", "future_timestamp", "not_finite", "null_value"),
        now_ms=now_ms,
    )  # fmt: skip
    return Events(valid, invalid)


_EXAMPLES = 20  # mismatches described (with what Redis holds) per check; the rest counted
_COUNTED_PROBLEMS = ("duplicates", "missing", "extra", "dead_missing", "dead_extra",
                     "online_mismatches", "log_mismatches")  # fmt: skip


@dataclass
class Report:
    """What ``Run.check`` found; ``problems`` is empty for a run equal to an undisturbed one."""

    valid: int = 0
    invalid: int = 0
    logged: int = 0
    duplicates: int = 0  # log records beyond the first of each (partition, offset)
    missing: int = 0  # valid records the log lacks
    extra: int = 0  # log records that are not valid records of the topic
    dead_letters: int = 0  # distinct (partition, offset) in the dead-letter topic
    dead_missing: int = 0
    dead_extra: int = 0
    entities: int = 0
    values: int = 0  # feature values compared per comparison
    online_mismatches: int = 0  # online value at t != the undisturbed reference
    log_mismatches: int = 0  # processing-time backfill of the workers' log != the reference
    examples: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = [
            f"{name}: {getattr(self, name)}" for name in _COUNTED_PROBLEMS if getattr(self, name)
        ]
        if self.values == 0:
            out.append("no value compared")
        return out + self.examples[:10]


class Run:
    """A payments repo with a unique topic on the given services, its events and workers."""

    def __init__(
        self,
        root: Path,
        *,
        bootstrap: str,
        redis_url: str,
        events: int,
        seed: int,
        runtime: str = "kafka",
        batch_max: int = 1000,
        log_root: str | None = None,
        merged: bool = True,
    ) -> None:
        self.root = root
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.runtime = runtime
        self.batch_max = batch_max
        self.source = unique("pay")
        project = unique("fault")
        self.repo = payments_repo(
            root / "repo", self.source, project=project, bootstrap=bootstrap, redis_url=redis_url
        )
        if log_root is not None:
            with open(self.repo / "skewless.yaml", "a") as fh:
                fh.write(f"event_log:\n  root: {log_root}\n")
        # merchant_risk (keyed by merchant) on the merge-on-write layout (the default), or
        # on the per-partition one
        with open(self.repo / "skewless.yaml", "a") as fh:
            fh.write(f"online:\n  merge_rekeyed_views: {str(merged).lower()}\n")
        self.store = FeatureStore.from_repo(self.repo)
        self.store.apply()
        self.group = f"skewless.{project}"
        self.reference_repo = payments_repo(
            root / "reference", self.source, project=project, bootstrap=bootstrap,
            redis_url=redis_url,
        )  # fmt: skip
        codec = SourceCodec(self.store.plan.sources[self.source])
        self.events = generate(events, seed, int(time.time() * 1000), codec)
        self.invalid_at: dict[tuple[int, int], tuple[bytes | None, bytes | None, str]] = {}
        self.workers: list[WorkerProcess] = []  # every worker process started, dead ones too
        self.kills = 0
        self.stops = 0  # SIGSTOPs (each followed by its SIGCONT), see zombie_loop
        self.pushed = 0
        # A deadline (time.monotonic()) to spread the pushes until: when set, the pusher's
        # pause between chunks is the time left over the chunks left, instead of pause_s, so
        # events keep flowing through fault rounds of unknown length (zombie_loop moves it).
        self.push_until: float | None = None
        self.push_reserve = 0  # events kept back from that spread for rush() (waves)
        self._rush = 0  # events still to push back to back (rush)
        self._wake = threading.Event()  # cuts the pusher's pause short (rush, cleanup)
        self.gate = threading.Event()  # cleared: the pusher waits (e.g. while Kafka is down)
        self.gate.set()
        self.release = threading.Event()  # see push_in_background's hold_at
        self._pusher: threading.Thread | None = None
        self._stopping = threading.Event()  # set by cleanup: a pusher still running stops
        self._push_error: list[BaseException] = []
        self._redis_run_id = self._redis_info("server").get("run_id")  # see _redis_history

    # -- workers --------------------------------------------------------------------------

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(
            self.repo, "--runtime", self.runtime, "--batch-max", str(self.batch_max)
        )
        self.workers.append(worker)
        return worker

    def kill(self, worker: WorkerProcess) -> None:
        """SIGKILL: no drain, no commit, no goodbye to the group."""
        worker.proc.kill()
        worker.proc.wait(30)
        self.kills += 1

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc.poll() is None]

    def stop_workers(self, timeout_s: float = 120) -> list[int]:
        return [w.terminate(timeout_s) for w in self.live()]

    def logs(self) -> str:
        return "\n".join(f"== {w.log_path.name}\n{w.text()}" for w in self.workers)

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(f"== {w.log_path.name}\n{w.text()[-chars:]}" for w in self.workers)

    # -- events ---------------------------------------------------------------------------

    def push_in_background(self, chunk: int, pause_s: float, hold_at: float = 1.0) -> None:
        """Push every event in chunks of ``chunk`` valid ones, ``pause_s`` apart; once
        ``hold_at`` of them are out, wait for ``release``."""
        hold = int(hold_at * len(self.events.valid))

        def pusher() -> None:
            try:
                valid, bad = self.events.valid, list(self.events.invalid)
                per_chunk = max(1, len(bad) * chunk // max(1, len(valid)))
                for start in range(0, len(valid), chunk):
                    self.gate.wait()
                    if self._stopping.is_set():
                        return
                    self.store.push(self.source, valid[start : start + chunk])
                    mine, bad = bad[:per_chunk], bad[per_chunk:]
                    if start + chunk >= len(valid):
                        mine, bad = mine + bad, []
                    if mine:
                        where = produce_raw(
                            self.bootstrap, self.source, [(k, v) for k, v, _ in mine]
                        )
                        self.invalid_at.update(zip(where, mine, strict=True))
                    self.pushed = min(len(valid), start + chunk)
                    if self.pushed < len(valid) and self.pushed >= hold > self.pushed - chunk:
                        self.release.wait()
                    if self._rush > 0:
                        self._rush -= chunk
                    self._wake.wait(self._pause(pause_s, chunk, hold))
                    self._wake.clear()
            except BaseException as exc:
                if self._stopping.is_set():  # the test is over (it failed): the topic is gone
                    return
                self._push_error.append(exc)
                raise

        self._pusher = threading.Thread(target=pusher, daemon=True)
        self._pusher.start()

    def rush(self, events: int) -> int:
        """Push the next ``events`` valid events back to back, a wave that keeps the workers
        busy (then the pace resumes); returns how many had been pushed before it."""
        before = self.pushed
        self._rush = events
        self._wake.set()
        return before

    def _pause(self, pause_s: float, chunk: int, hold: int) -> float:
        """0 in a ``rush``; ``pause_s``; or with ``push_until`` set the time left over the
        chunks left before the hold (or the end), less ``push_reserve``."""
        if self._rush > 0:
            return 0.0
        until = self.push_until
        if until is None:
            return pause_s
        total = len(self.events.valid)
        stop_at = hold if self.pushed < hold else total
        remaining_s = until - time.monotonic()
        spare = stop_at - self.pushed - self.push_reserve
        if spare <= 0:  # only the reserve is left: wait for a rush (or the deadline)
            return min(10.0, max(0.0, remaining_s))
        return min(10.0, max(0.0, remaining_s / math.ceil(spare / chunk)))

    def flowing(self) -> bool:
        """Whether the pusher is still pushing (not done, not failed)."""
        return (
            self._pusher is not None
            and self._pusher.is_alive()
            and self.pushed < len(self.events.valid)
        )

    def wait_pushed(self, fraction: float, timeout_s: float = 300) -> None:
        """Until ``fraction`` of the valid events have been pushed."""
        wanted = int(fraction * len(self.events.valid))
        wait_until(lambda: self.pushed >= wanted or bool(self._push_error), timeout_s,
                   f"{wanted} events pushed")  # fmt: skip
        assert not self._push_error, self._push_error

    def finish(self, timeout_s: float = 600) -> None:
        """Until every event is pushed and the group has committed the end of the topic."""
        assert self._pusher is not None
        self._pusher.join(timeout_s)
        assert not self._pusher.is_alive(), "the pusher did not finish"
        assert not self._push_error, self._push_error
        wait_caught_up(self.bootstrap, self.group, [self.source], timeout_s)

    def committed_and_logged(self) -> tuple[dict[int, int], int]:
        """The group's committed offsets and the number of log files (to show nothing moves)."""
        from tests.stream_harness import committed

        files = len(list(Path(self.store.config.event_log_root, self.source).glob("*/*.avro")))
        return committed(self.bootstrap, self.group, self.source), files

    # -- the check ------------------------------------------------------------------------

    def check(self) -> Report:
        """Compare with an undisturbed run of the same events (see the module docstring)."""
        report = Report(valid=len(self.events.valid), invalid=len(self.events.invalid))
        ends = end_offsets(self.bootstrap, self.source)
        assert sum(ends.values()) == report.valid + report.invalid, (ends, report)
        everything = {(p, o) for p, end in ends.items() for o in range(end)}
        valid_at = everything - set(self.invalid_at)
        found = logged(self.store.config.event_log_root, self.source)
        report.logged = sum(found.values())
        report.duplicates = sum(n - 1 for n in found.values())
        report.missing = len(valid_at - set(found))
        report.extra = len(set(found) - valid_at)
        dead = {
            (int(x.headers["skewless.source_partition"]), int(x.headers["skewless.source_offset"]))
            for x in read_topic(self.bootstrap, dead_letter_topic(self.source))
        }
        report.dead_letters = len(dead)
        report.dead_missing = len(set(self.invalid_at) - dead)
        report.dead_extra = len(dead - set(self.invalid_at))

        reference = FeatureStore.from_repo(self.reference_repo)
        reference.import_events(self.source, pd.DataFrame(self.events.valid))
        t = int(time.time() * 1000) + 1
        for column, views in (("customer_id", CUSTOMER_VIEWS), ("merchant_id", MERCHANT_VIEWS)):
            entities = sorted({e[column] for e in self.events.valid})
            report.entities += len(entities)
            refs = [f"{v}:{f}" for v in views for f in self.store.plan.views[v].features]
            labels = pd.DataFrame({column: entities, "event_timestamp": [t] * len(entities)})
            want = reference.get_historical_features(labels, refs, full_feature_names=True)
            from_log = self.store.get_historical_features(
                labels, refs, mode="processing_time", full_feature_names=True
            )
            online = self.store.get_online_features(
                refs, [{column: e} for e in entities], now_ms=t, full_feature_names=True
            ).to_dict()
            for ref in refs:
                name = ref.replace(":", "__")
                for r, entity in enumerate(entities):
                    expected = want[name].iloc[r]
                    report.values += 1
                    for kind, got in (("online", online[name][r]),
                                      ("log", from_log[name].iloc[r])):  # fmt: skip
                        if not same(got, expected):
                            if kind == "online":
                                report.online_mismatches += 1
                            else:
                                report.log_mismatches += 1
                            if len(report.examples) < _EXAMPLES:  # each reads Redis
                                report.examples.append(
                                    f"{kind} {ref} of {entity} at {t}: {got!r} != undisturbed "
                                    f"{expected!r}" + self._held(ref.split(":")[0], entity)
                                )
        if report.online_mismatches:
            report.examples.insert(0, self._redis_history())
        return report

    def _redis_info(self, section: str) -> dict[str, Any]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def _redis_history(self) -> str:
        """Whether Redis restarted since the run began, and the FLUSHALL/FLUSHDB it has run
        since it started (for a failure message): a restart or a flush that this test did
        not make — another session on the same private services — shows only as online
        values gone missing, with no lost state for the workers to find."""
        server, stats = self._redis_info("server"), self._redis_info("commandstats")
        restarted = server.get("run_id") != self._redis_run_id
        calls = {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("flushall", "flushdb")}
        return (
            f"Redis {'RESTARTED since the run began' if restarted else 'not restarted'} "
            f"(up {server.get('uptime_in_seconds')} s); since it started: FLUSHALL x"
            f"{calls['flushall']} (the fixture makes 1 per test), FLUSHDB x{calls['flushdb']}"
        )

    def _held(self, view_name: str, entity: str) -> str:
        """What Redis holds of an entity and the view's watermarks (for a failure message)."""
        view = self.store.plan.views[view_name]
        client = redis.Redis.from_url(self.redis_url)
        try:
            fields = sorted(str(k) for k in client.hkeys(state_key(view, (entity,))))
            marks = {str(k): client.get(k) for k in client.scan_iter(f"sk:wm:{view.fingerprint}:*")}
        finally:
            client.close()
        return f" (Redis holds fields {fields[:12]}, watermarks {marks})"

    def cleanup(self) -> None:
        self._stopping.set()
        self._wake.set()
        self.gate.set()
        self.release.set()
        if self._pusher is not None:
            self._pusher.join(60)
        for w in self.live():
            w.kill()
        delete_topics(self.bootstrap, [self.source, dead_letter_topic(self.source)])


def wait_assigned(worker: WorkerProcess, source: str, timeout_s: float = 120) -> None:
    """Until the worker has been assigned partitions of ``source`` (once since it started)."""
    wait_until(lambda: holds_partitions(worker, source), timeout_s,
               f"{worker.log_path.name} to be assigned partitions of {source}")  # fmt: skip


def kill_loop(
    run: Run,
    kills: int,
    rng: random.Random,
    *,
    max_delay_s: float = 2.5,
    on_kill: Callable[[int], None] | None = None,
) -> None:
    """``kills`` times: once the chosen worker has its partitions, wait a random moment,
    SIGKILL it and start a replacement at once."""
    for k in range(kills):
        live = run.live()
        victim = rng.choice(live)
        wait_assigned(victim, run.source)
        time.sleep(rng.uniform(0.2, max_delay_s))
        run.kill(victim)
        run.start_worker()
        if on_kill:
            on_kill(k)


# -- zombies: SIGSTOP past the session timeout, SIGCONT once the group moved on ---------------

SESSION_TIMEOUT_S = 10.0  # the group's session.timeout.ms (connectors/kafka.py, faust_runtime.py)


def stop(worker: WorkerProcess) -> None:
    """SIGSTOP: the whole process freezes — its heartbeat thread, its batch in hand, a log
    file half written — and says nothing to the group."""
    os.kill(worker.proc.pid, signal.SIGSTOP)


def cont(worker: WorkerProcess) -> None:
    """SIGCONT: the process goes on where it stopped, still believing what it believed."""
    os.kill(worker.proc.pid, signal.SIGCONT)


def running(worker: WorkerProcess) -> bool:
    """Whether a thread of the worker's own code is running or in an uninterruptible wait
    (an fsync) right now: it has a batch in hand, not just a poll waiting for records.
    librdkafka's threads (``rdk:…``), which fetch and heartbeat by themselves, do not count."""
    for task in Path(f"/proc/{worker.proc.pid}/task").glob("*"):
        try:
            comm = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if not comm.startswith("rdk:") and stat[stat.rindex(")") + 2 :][:1] in ("R", "D"):
            return True
    return False


def _wait_busy(workers: list[WorkerProcess], timeout_s: float) -> bool:
    """Until one of ``workers`` is ``running`` (True), or ``timeout_s`` went by (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(running(w) for w in workers):
            return True
        time.sleep(0.002)
    return any(running(w) for w in workers)


def _wave(run: Run, events: int, rng: random.Random, timeout_s: float = 10) -> None:
    """Start a ``rush`` of ``events`` and return a random moment (0-0.3 s) after its first
    chunk went out; at once when ``events`` is 0 or nothing is left to push."""
    if events <= 0 or not run.flowing():
        return
    before = run.rush(events)
    deadline = time.monotonic() + timeout_s
    while run.pushed == before and run.flowing() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.3))


def _rebalance_lines(worker: WorkerProcess, source: str) -> list[tuple[str, set[int]]]:
    """Each ``assigned``/``revoked``/``lost <source> [p, …]`` line of the worker's log, in order
    (both runtimes log these; the kafka runtime logs ``lost`` when its session expired)."""
    pattern = rf"\b(assigned|revoked|lost) {re.escape(source)} \[([\d, ]*)\]"
    return [
        (how, {int(x) for x in parts.split(",") if x.strip()})
        for how, parts in re.findall(pattern, worker.text())
    ]


def assignment(worker: WorkerProcess, source: str) -> set[int]:
    """The partitions of ``source`` the worker believes it holds, from its log: ``assigned``
    adds (the eager protocol hands over the whole assignment, an incremental one the new
    partitions), ``revoked`` and ``lost`` remove. A stopped worker's belief is frozen."""
    held: set[int] = set()
    for how, parts in _rebalance_lines(worker, source):
        held = held | parts if how == "assigned" else held - parts
    return held


def _assignments(run: Run) -> str:
    return (
        ", ".join(f"{w.log_path.name} {sorted(assignment(w, run.source))}" for w in run.live())
        or "no live worker"
    )


def settled(run: Run, partitions: set[int]) -> bool:
    """Every partition held by exactly one live worker (by their logs), and every live worker
    holding at least one — or, for one that holds none, the others holding them all."""
    held = [assignment(w, run.source) for w in run.live()]
    union: set[int] = set().union(*held) if held else set()
    return bool(held) and union == partitions and sum(len(h) for h in held) == len(partitions)


def caught_up(run: Run, timeout_s: float) -> tuple[float | None, dict[int, int], dict[int, int]]:
    """Seconds until the group's committed offsets passed the end offsets of this moment,
    for every partition (records keep coming meanwhile: a stalled partition never does);
    None when ``timeout_s`` went by first. Also the lag (``lag``) at the start and at the end
    (records keep coming: the lag at the end need not be 0)."""
    from tests.stream_harness import committed

    started = time.monotonic()
    first = lag(run.bootstrap, run.group, run.source)
    ends = end_offsets(run.bootstrap, run.source)
    while True:
        marks = committed(run.bootstrap, run.group, run.source)
        if all(max(marks.get(p, 0), 0) >= end for p, end in ends.items()):
            return time.monotonic() - started, first, lag(run.bootstrap, run.group, run.source)
        if time.monotonic() - started > timeout_s:
            return None, first, lag(run.bootstrap, run.group, run.source)
        time.sleep(0.25)


@dataclass
class StopRound:
    """What one SIGSTOP/SIGCONT round did and saw; ``None`` times: it did not happen in time."""

    index: int
    victim: str  # its log file's name
    held: list[int]  # the partitions it held when stopped
    busy: bool  # a thread of it was running when stopped (mid-batch, not idle in a poll)
    others_busy: bool = False  # one of the others was running at the SIGCONT (mid-batch)
    stopped_s: float = 0.0  # SIGSTOP → SIGCONT
    takeover_s: float | None = None  # SIGSTOP → the others hold all of ``held``
    settled_s: float | None = None  # SIGCONT → the victim assigned again, ``settled``
    caught_up_s: float | None = None  # settled → every partition committed past its end then
    lag_before: int = 0  # total lag when the catch-up measure began
    lag_after: int = 0  # and when it ended (what arrived meanwhile, or what stalled)
    flowing: bool = False  # events were still being pushed when the catch-up measure ended
    assignments: str = ""  # each live worker's partitions at the end of the round
    exited: list[str] = field(default_factory=list)  # workers that died in the round
    rebalances_seen: int = 0  # the victim's rebalance lines when it was stopped

    def problems(self, *, catch_up_s: float) -> list[str]:
        out = []
        name = f"round {self.index + 1} ({self.victim} stopped {self.stopped_s:.1f}s, held "
        name += f"{self.held})"
        if self.takeover_s is None:
            out.append(f"{name}: the other workers never took over its partitions")
        if self.settled_s is None:
            out.append(f"{name}: after SIGCONT the group never settled: {self.assignments}")
        elif self.caught_up_s is None:
            out.append(
                f"{name}: the group did not commit every partition past its end offsets within "
                f"{catch_up_s:.0f}s (lag {self.lag_before} → {self.lag_after}; a stalled "
                f"partition): {self.assignments}"
            )
        out.extend(f"{name}: worker exited: {e}" for e in self.exited)
        return out

    def line(self) -> str:
        def s(v: float | None) -> str:
            return "never" if v is None else f"{v:.1f}s"

        return (
            f"round {self.index + 1}: {self.victim} {self.held} stopped {self.stopped_s:.1f}s "
            f"({'busy' if self.busy else 'idle'}), taken over after {s(self.takeover_s)}, "
            f"SIGCONT with the others {'busy' if self.others_busy else 'idle'}, "
            f"settled {s(self.settled_s)} after it, caught up {s(self.caught_up_s)} "
            f"(lag {self.lag_before} → {self.lag_after}{', flowing' if self.flowing else ''})"
        )


def zombie_loop(
    run: Run,
    rounds: int,
    rng: random.Random,
    *,
    stop_s: tuple[float, float] = (SESSION_TIMEOUT_S + 2, SESSION_TIMEOUT_S + 10),
    max_delay_s: float = 3.0,
    wave_events: int = 2000,
    busy_wait_s: float = 2.0,
    takeover_timeout_s: float = 90.0,
    settle_timeout_s: float = 60.0,
    catch_up_s: float = 30.0,
    keep_flowing_s: float | None = None,
    on_round: Callable[[StopRound], None] | None = None,
) -> list[StopRound]:
    """``rounds`` times, while events flow: at a random moment (``0.2 … max_delay_s`` s) start a
    wave of ``wave_events`` events (``Run.rush``) and, a random moment into it, once a thread of
    it runs (up to ``busy_wait_s``: a batch in hand), SIGSTOP a random live worker that holds
    partitions, for a random ``stop_s`` (longer than the session timeout); wait until the
    other workers hold its partitions; once its stop is over (or a random moment under a
    second after a late takeover) start another wave and, once one of the others is running
    (a batch of the partitions it took over in hand), SIGCONT it — still believing it owns
    them; wait until the group settled (``settled``, the victim assigned partitions again)
    and every partition has been committed past its end offsets of that moment
    (``caught_up``).

    Nothing is asserted here: each ``StopRound`` says what happened (``problems``), so a run
    goes on through a failed round and its checks still run. A worker that died is replaced.
    With ``keep_flowing_s``, after each round the remaining pushes are spread (``push_until``,
    keeping the remaining waves' events back) until ``keep_flowing_s`` after the expected end
    of the remaining rounds; after the last one they go out at once.
    """
    partitions = set(end_offsets(run.bootstrap, run.source))
    out: list[StopRound] = []
    began = time.monotonic()
    dead = {w.proc.pid for w in run.workers if w.proc.poll() is not None}
    for index in range(rounds):
        exited = _replace_dead(run, dead)
        holders = [w for w in run.live() if assignment(w, run.source)]
        if not holders:
            raise AssertionError(
                f"round {index + 1}: no live worker holds partitions of {run.source}: "
                f"{_assignments(run)}\n{run.log_tail()}"
            )
        victim = rng.choice(holders)
        this = StopRound(index=index, victim=victim.log_path.name,
                         held=sorted(assignment(victim, run.source)), busy=False)  # fmt: skip
        this.exited = exited
        time.sleep(rng.uniform(0.2, max_delay_s))
        run.push_reserve = (2 * (rounds - index) - 1) * wave_events
        _wave(run, wave_events, rng)
        resumed = _stop_and_cont(run, victim, this, rng, stop_s=stop_s, wave_events=wave_events,
                                 busy_wait_s=busy_wait_s,
                                 takeover_timeout_s=takeover_timeout_s)  # fmt: skip
        run.push_reserve = 2 * (rounds - index - 1) * wave_events
        flow = None if keep_flowing_s is None else catch_up_s + 5
        if _settle(run, victim, this.rebalances_seen, partitions, settle_timeout_s, flow):
            this.settled_s = time.monotonic() - resumed
        if this.settled_s is not None:
            this.caught_up_s, first, last = caught_up(run, catch_up_s)
            this.lag_before, this.lag_after = sum(first.values()), sum(last.values())
        this.flowing = run.flowing()
        this.exited += _replace_dead(run, dead)
        this.assignments = _assignments(run)
        out.append(this)
        if keep_flowing_s is not None:  # after the last round: the rest at once
            per_round = (time.monotonic() - began) / (index + 1)
            left = rounds - index - 1
            run.push_until = time.monotonic() + (per_round * left + keep_flowing_s if left else 0)
        if on_round:
            on_round(this)
    return out


def _settle(
    run: Run,
    victim: WorkerProcess,
    seen: int,
    partitions: set[int],
    timeout_s: float,
    keep_flowing_s: float | None,
) -> bool:
    """Whether, within ``timeout_s``, the victim was assigned partitions again — logged an
    ``assigned`` line after the ``seen`` rebalance lines it had logged when stopped: it
    rejoined the group — (or died) and the group ``settled``. Meanwhile the pushes go on at
    least ``keep_flowing_s`` beyond each moment (``push_until``), however long it takes."""
    deadline = time.monotonic() + timeout_s
    while True:
        _keep_flowing(run, keep_flowing_s)
        after = _rebalance_lines(victim, run.source)[seen:]
        rejoined = any(how == "assigned" for how, _ in after) or victim.proc.poll() is not None
        if rejoined and settled(run, partitions):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _keep_flowing(run: Run, keep_flowing_s: float | None) -> None:
    """Push ``push_until`` to at least ``keep_flowing_s`` from now (None: leave it)."""
    if keep_flowing_s is not None:
        run.push_until = max(run.push_until or 0.0, time.monotonic() + keep_flowing_s)


def _stop_and_cont(
    run: Run,
    victim: WorkerProcess,
    this: StopRound,
    rng: random.Random,
    *,
    stop_s: tuple[float, float],
    wave_events: int,
    busy_wait_s: float,
    takeover_timeout_s: float,
) -> float:
    """SIGSTOP ``victim`` once a thread of it runs (or after ``busy_wait_s``), wait until the
    others hold its partitions, and once ``stop_s`` (drawn) is over — a random moment under a
    second after a takeover that came later — start a wave and SIGCONT it once one of the
    others runs; returns the moment of the SIGCONT (``time.monotonic()``)."""
    duration_s, late_s = rng.uniform(*stop_s), rng.uniform(0.0, 1.0)
    held = set(this.held)
    others = [w for w in run.live() if w is not victim]
    this.busy = _wait_busy([victim], busy_wait_s)
    stop(victim)
    stopped = time.monotonic()
    run.stops += 1
    this.rebalances_seen = len(_rebalance_lines(victim, run.source))
    try:
        try:
            wait_until(
                lambda: held <= set().union(*(assignment(w, run.source) for w in others)),
                takeover_timeout_s, f"the others to take {sorted(held)} over",
            )  # fmt: skip
            this.takeover_s = time.monotonic() - stopped
        except AssertionError:
            pass
        left = stopped + duration_s - time.monotonic()
        time.sleep(left if left > 0 else late_s)
        _wave(run, wave_events, rng)
        this.others_busy = _wait_busy(others, busy_wait_s)
    finally:
        cont(victim)
    resumed = time.monotonic()
    this.stopped_s = resumed - stopped
    return resumed


def _replace_dead(run: Run, seen: set[int]) -> list[str]:
    """Start a replacement for each worker that exited by itself (not SIGKILLed by the test)
    and is not in ``seen`` (pids); add it there and say which and how."""
    out = []
    for w in list(run.workers):
        code = w.proc.poll()
        if code is None or w.proc.pid in seen:
            continue
        seen.add(w.proc.pid)
        if code == -signal.SIGKILL:
            continue  # kill() / kill_loop
        out.append(f"{w.log_path.name} exit code {code}: …{w.text()[-1500:]}")
        run.start_worker()
    return out


@dataclass
class LogCheck:
    """What the log the workers wrote holds, file by file and through the reader
    (``check_log``); "copies" are (partition, offset)s held by more than one log file."""

    copies_before: int = 0  # before compact_log
    disagreeing_before: int = 0  # of them, copies with different processed_at / event time
    examples_before: str = ""  # of those
    examples_disagreeing: str = ""
    compaction: str = ""  # what compact_log did, or the error it raised
    compaction_failed: bool = False
    files_after: int = 0
    copies_after: int = 0
    disagreeing_after: int = 0
    examples_after: str = ""
    hidden: list[str] = field(default_factory=list)  # temp files etc. left in the folders
    other: list[str] = field(default_factory=list)  # non-Avro files
    unreadable: list[str] = field(default_factory=list)
    misplaced: int = 0
    read: int = 0  # records EventLogReader.read returned
    reader_duplicates: int = 0
    reader_unordered: int = 0
    reader_missing: int = 0
    reader_extra: int = 0
    reader_examples: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.disagreeing_before:
            out.append(
                f"{self.disagreeing_before} (partition, offset)s have copies in two log files "
                f"that differ in processed_at or event time (before compact_log; "
                f"{self.copies_before} in two files in all): {self.examples_disagreeing}"
            )
        if self.compaction_failed:
            out.append(f"compact_log failed: {self.compaction}")
        if self.copies_after:
            out.append(
                f"{self.copies_after} (partition, offset)s in two log files after compact_log "
                f"({self.disagreeing_after} with copies that differ in processed_at; "
                f"{self.copies_before} / {self.disagreeing_before} before it): "
                f"{self.examples_after}"
            )
        if self.unreadable:
            out.append(f"unreadable log files: {self.unreadable[:5]}")
        if self.misplaced:
            out.append(f"{self.misplaced} log records in another partition's folder")
        for name in ("reader_duplicates", "reader_unordered", "reader_missing", "reader_extra"):
            if getattr(self, name):
                out.append(f"EventLogReader.read: {name.split('_')[1]} {getattr(self, name)}")
        return out + self.reader_examples[:5]

    def line(self) -> str:
        return (
            f"offsets in two log files: {self.copies_before} before compaction "
            f"({self.disagreeing_before} disagreeing), {self.copies_after} after "
            f"({self.files_after} files; compaction: {self.compaction}); reader returned "
            f"{self.read} records ({self.reader_duplicates} twice, {self.reader_missing} "
            f"missing, {self.reader_extra} extra); {len(self.hidden)} hidden files left"
        )


def check_log(run: Run) -> LogCheck:
    """With the workers stopped: list every file of every partition folder, run the store's
    ``compact_log`` once (where fenced leftovers go), list again, and read every partition
    with ``EventLogReader.read``. Each valid (partition, offset) must be in exactly one file
    after the compaction and read back exactly once, in order; nothing else. Before it, two
    copies of one offset may wait for the compaction, but never with different
    ``processed_at`` or event time: whichever a reader picks must be what the online store
    applied (a compaction that keeps one of two differing copies would hide the bug)."""
    from connectors.eventlog import EventLogReader

    root = run.store.config.event_log_root
    out = LogCheck()
    before = log_listing(root, run.source)
    out.copies_before = len(before.in_several())
    out.disagreeing_before = len(before.disagreeing())
    out.examples_before = before.describe()
    out.examples_disagreeing = before.describe(disagreeing=True)
    try:
        done = run.store.compact_log(run.source)
        removed = {
            name: sum(getattr(c, f"{name}_removed", 0) for c in done)
            for name in ("leftovers", "fenced", "temps")
        }
        out.compaction = (
            f"{sum(c.files_before for c in done)} → {sum(c.files_after for c in done)} files, "
            + ", ".join(f"{n} {name} removed" for name, n in removed.items())
        )
    except Exception as exc:  # reported with the rest: the other checks still run
        out.compaction, out.compaction_failed = f"{type(exc).__name__}: {exc}", True
    after = log_listing(root, run.source)
    out.files_after = after.files
    out.copies_after = len(after.in_several())
    out.disagreeing_after = len(after.disagreeing())
    out.examples_after = after.describe()
    out.hidden, out.other, out.unreadable = after.hidden, after.other, after.unreadable
    out.misplaced = after.misplaced

    ends = end_offsets(run.bootstrap, run.source)
    valid = {(p, o) for p, end in ends.items() for o in range(end)} - set(run.invalid_at)
    seen: set[tuple[int, int]] = set()
    reader = EventLogReader(root)
    for p in sorted(ends):
        last = -1
        try:
            for env in reader.read(run.source, p):
                out.read += 1
                at = (env.partition, env.offset)
                if at in seen:
                    out.reader_duplicates += 1
                if env.partition != p or env.offset <= last:
                    out.reader_unordered += 1
                last = max(last, env.offset)
                seen.add(at)
        except Exception as exc:
            out.reader_examples.append(f"reading partition {p}: {type(exc).__name__}: {exc}")
    out.reader_missing = len(valid - seen)
    out.reader_extra = len(seen - valid)
    if out.reader_missing:
        out.reader_examples.append(f"missing e.g. {sorted(valid - seen)[:5]}")
    if out.reader_extra:
        out.reader_examples.append(f"extra e.g. {sorted(seen - valid)[:5]}")
    return out


_LOST_KEY = re.compile(r"view '([^']*)', source '[^']*' partition (\d+)")


def lost_state(run: Run) -> tuple[int, int]:
    """The ``LOST_STATE`` lines in every worker's log, and the state losses they report: a
    line names one (view, partition), and the views of a partition found lost together are
    rebuilt together, so a loss is a run of lines of one worker about one partition, each
    (view, partition) once, closed by its ``rebuilding partition`` line."""
    lines = losses = 0
    for w in run.workers:
        current: set[str] | None = None
        partition: str | None = None
        for text in w.text().splitlines():
            if LOST_STATE in text:
                lines += 1
                m = _LOST_KEY.search(text)
                view, part = (m.group(1), m.group(2)) if m else (text, None)
                if current is None or part != partition or view in current:
                    losses += 1
                    current, partition = set(), part
                current.add(view)
            elif "rebuilding partition" in text or "rebuilt partition" in text:
                current = None
    return lines, losses


@dataclass
class ZombieReport:
    """The zombie checks of a run (``Run.check`` does the rest): (a) the log, (c) every
    worker consuming after each round, (d) state rebuilt at most once per hand-over."""

    rounds: list[StopRound]
    log: LogCheck
    lost_lines: int
    losses: int
    catch_up_s: float

    @property
    def handovers(self) -> int:
        return 2 * len(self.rounds)  # away from the stopped worker, and back at its return

    def problems(self) -> list[str]:
        out = [f"(a) {p}" for p in self.log.problems()]
        for r in self.rounds:
            out.extend(f"(c) {p}" for p in r.problems(catch_up_s=self.catch_up_s))
        if self.rounds and not self.rounds[-1].flowing:
            out.append(
                "(c) events had stopped flowing before the last catch-up was measured "
                "(the harness's pacing: raise keep_flowing_s)"
            )
        if self.losses > self.handovers:
            out.append(
                f"(d) online state lost {self.losses} times ({self.lost_lines} "
                f"'{LOST_STATE}' lines) over {self.handovers} hand-overs"
            )
        return out

    def summary(self) -> str:
        busy = sum(r.busy for r in self.rounds)
        takeovers = [r.takeover_s for r in self.rounds if r.takeover_s is not None]
        catch_ups = [r.caught_up_s for r in self.rounds if r.caught_up_s is not None]
        return (
            f"{len(self.rounds)} SIGSTOP/SIGCONT rounds ({busy} stopped busy), takeover "
            f"{_span_s(takeovers)}, caught up {_span_s(catch_ups)} "
            f"({len(self.rounds) - len(catch_ups)} never); {self.log.line()}; "
            f"'{LOST_STATE}' {self.lost_lines} lines = {self.losses} losses over "
            f"{self.handovers} hand-overs"
        )


def _span_s(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}s" if values else "never"


def check_zombies(run: Run, rounds: list[StopRound], *, catch_up_s: float = 30.0) -> ZombieReport:
    """The zombie checks, once the workers are stopped (see ``ZombieReport``)."""
    lines, losses = lost_state(run)
    return ZombieReport(rounds=rounds, log=check_log(run), lost_lines=lines, losses=losses,
                        catch_up_s=catch_up_s)  # fmt: skip
