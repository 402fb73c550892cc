"""One fault run over real services: the payments example, its events, workers as processes, checks.

Shared by the fault tests (``tests/faults``) and the soak (``benchmarks/soak.py``). A run:

- generates events that are never late (event times within the last 15 minutes, no day
  boundaries), so ``processed_at`` never changes what a view admits, with ties, tile
  boundaries, nulls, extreme amounts, unknown currencies, and ~1% invalid records;
- pushes them in paced chunks from a thread (invalid ones produced raw between chunks)
  while the caller injects faults;
- runs ``python -m engine.cli worker`` processes, so SIGKILL is real;
- checks, once every record has been committed, that it equals an undisturbed run
  (``Run.check``): every entity's online value at a read time ``t`` equals the event-time
  backfill at ``t`` of the pushed valid events imported into a separate, clean log, and so
  does the processing-time backfill of the log the workers wrote; the log holds every
  valid (partition, offset) exactly once and nothing else; the dead-letter topic holds
  every invalid record and nothing else.
"""

from __future__ import annotations

import random
import re
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
        self.pushed = 0
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
                    time.sleep(pause_s)
            except BaseException as exc:
                if self._stopping.is_set():  # the test is over (it failed): the topic is gone
                    return
                self._push_error.append(exc)
                raise

        self._pusher = threading.Thread(target=pusher, daemon=True)
        self._pusher.start()

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
        self.gate.set()
        self.release.set()
        if self._pusher is not None:
            self._pusher.join(60)
        for w in self.live():
            w.kill()
        delete_topics(self.bootstrap, [self.source, dead_letter_topic(self.source)])


def holds_partitions(worker: WorkerProcess, source: str) -> bool:
    """Whether the worker has logged an assignment of at least one partition of ``source``
    (both runtimes log ``assigned <source> [0, 2]``). A bare ``"assigned"`` is not enough:
    aiokafka logs ``Revoking previously assigned partitions set()`` as a Faust worker joins,
    before it holds anything."""
    return re.search(rf"assigned {re.escape(source)} \[\d", worker.text()) is not None


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
