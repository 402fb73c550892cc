"""Streaming benchmark: worker throughput per process, freshness at a fixed load, and Quix Streams.

In one run, against the local Kafka and Redis (``bash scripts/services.sh up``):

1. **Throughput.** ``--events`` Avro records (10k customers, 1k merchants, out of order over
   the last 2 hours) are produced to a fresh 4-partition topic. Then one worker process
   (``python -m engine.cli worker``) consumes that backlog, per runtime and per definitions
   set: the example ``definitions/`` (4 views, 23 aggregations) and ``count`` (one view, a
   1-minute tumbling count per customer — the same work as the Quix job). Events/s per
   process = records committed between the first and the last commit / the time between.
2. **Quix Streams** (its own virtualenv ``benchmarks/.venv-quix``, created on first use;
   driven by ``benchmarks/quix_peer.py``) runs a 1-minute tumbling-window count per key over
   the same topic, event time from ``ts``, RocksDB state with its changelog. Events/s between
   its first and last record. The count jobs and Quix run ``--repeat`` alternating rounds
   (medians reported), so they see the same machine noise.
3. **Freshness.** A worker (example definitions) is fed ``--rate`` events/s (batch timeout
   50 ms and 10 ms; then two worker processes in one group at 10 ms, and at 4x ``--rate``)
   and then ``--low-rate``,
   a load one worker sustains, for ``--freshness-seconds``, after an untimed warm-up of
   30,000 events that puts every customer and merchant in the workers' caches; for a sample of the events (``--sample``), freshness = the time
   the entity's fence field ``f:<partition>`` in Redis first shows the event's offset (it is
   written in the same HSET as the tiles) minus the time ``produce()`` was called. A watcher polls
   the pending samples' fences with one pipelined HMGET every millisecond.

Prints a table with ratios against the targets (>= 100k events/s per process, >= 2x Quix,
freshness p99 <= 25 ms (issue 10)), writes ``benchmarks/out/stream.json``, ``docs/img/stream.png``.

Usage (from the repo root)::

    .venv/bin/python benchmarks/stream.py                      # 200k events, 5k/s for 20 s
    .venv/bin/python benchmarks/stream.py --quick              # 50k events, 10 s of freshness
    .venv/bin/python benchmarks/stream.py --profile            # + cProfile of the kafka loop
    # freshness alone, where each sample's time went, and an A/B of worker switches
    # (variants alternate over --rounds in one run; benchmarks/out/stream-freshness-ab.json):
    .venv/bin/python benchmarks/stream.py --freshness-only --loads 5000:0.01:1 --breakdown \
        --rounds 3 --variant "serial:SKEWLESS_WORKER_PIPELINE=0" \
        --variant "pipeline:SKEWLESS_WORKER_PIPELINE=1"
    # a backlog with Redis's append-only file on and off, alternating (what AOF costs):
    .venv/bin/python benchmarks/stream.py --backlog-only 2 --events 2000000 \
        --batch-max 200000 --redis-aof yes,no

With ``--breakdown`` the workers write a trace of their batches (``SKEWLESS_WORKER_TRACE``,
engine/stream/kafka_runtime.py ``BatchTrace``) and the freshness topic stamps records with
the broker's append time, so each sample splits into produce → broker, waiting behind the
batch before, fetch, the batch's decode/fold/Redis write, and the watcher's lag; per batch,
the log append, commit and gc times on the loop between two batches.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from engine.keys import encode_key  # noqa: E402
from engine.serde import SourceCodec  # noqa: E402
from engine.store import FeatureStore  # noqa: E402

OUT = HERE / "out"
WORK = OUT / "stream"
RESULTS_JSON = OUT / "stream.json"
CHART = REPO / "docs" / "img" / "stream.png"
QUIX_VENV = HERE / ".venv-quix"
QUIX_VERSION = "3.28.1"
SCHEMA = REPO / "definitions" / "schemas" / "transaction.avsc"
BOOTSTRAP = os.environ.get("SKEWLESS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("SKEWLESS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
PREFIX = os.environ.get("SKEWLESS_BENCH_PREFIX", "bench")  # of the run's topics and groups
PARTITIONS = 4
TARGET_RATE = 100_000
TARGET_VS_QUIX = 4.0  # issue 10: the count job >= 4x Quix Streams, same run
TARGET_P99_MS = 25.0  # issue 10: p99 <= 25 ms at 5k events/s, one worker

COUNT_DEFS = """
from engine import Aggregation, Entity, FeatureView, KafkaSource

customer = Entity("customer", join_keys=["customer_id"])
transactions = KafkaSource("SOURCE", topic="TOPIC", schema="schemas/transaction.avsc",
                           timestamp_field="ts", key_fields=["customer_id"])
tx_count = FeatureView("tx_count", entity=customer, source=transactions, aggregations=[
    Aggregation("transaction_id", "count", window="1m", hop="1m"),
])
"""


# -- repos and data -----------------------------------------------------------------------------


def make_repo(kind: str, topic: str) -> Path:
    """A definitions folder reading ``topic``: the example payments views or the count view."""
    source = f"{kind}_{uuid.uuid4().hex[:8]}"
    root = WORK / source
    shutil.rmtree(root, ignore_errors=True)
    (root / "schemas").mkdir(parents=True)
    shutil.copy(SCHEMA, root / "schemas" / "transaction.avsc")
    if kind == "example":
        text = (REPO / "definitions" / "payments.py").read_text()
        old = '"transactions",\n    topic="transactions",'
        assert old in text, "definitions/payments.py changed: update benchmarks/stream.py"
        (root / "payments.py").write_text(text.replace(old, f'"{source}",\n    topic="{topic}",'))
    else:
        (root / "defs.py").write_text(COUNT_DEFS.replace("SOURCE", source).replace("TOPIC", topic))
    (root / "skewless.yaml").write_text(
        f"project:\n  name: {PREFIX}-{source}\nkafka:\n  bootstrap_servers: {BOOTSTRAP}\n"
        f"  partitions: {PARTITIONS}\nredis:\n  url: {REDIS_URL}\n"
    )
    return root


def events(n: int, seed: int, now_ms: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "transaction_id": f"t{i}",
                "customer_id": f"c{rng.randrange(10_000):05d}",
                "merchant_id": f"m{rng.randrange(1_000):04d}",
                "amount": round(rng.uniform(0.5, 900.0), 2),
                "currency": rng.choice(("USD", "EUR", "GBP", "JPY")),
                "country": rng.choice(("DE", "FR", "US", "GB")),
                "card_present": rng.random() < 0.4,
                "ts": now_ms - rng.randrange(2 * 3_600_000),
            }
        )
    return out


def producer() -> Producer:
    return Producer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def produce_backlog(topic: str, rows: list[dict[str, Any]], codec: SourceCodec) -> float:
    p = producer()
    started = time.perf_counter()
    for i, row in enumerate(rows):
        while True:
            try:
                p.produce(topic, codec.encode(row), encode_key([row["customer_id"]]))
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return time.perf_counter() - started


def create_topic(name: str, config: dict[str, str] | None = None) -> None:
    if config:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        new = NewTopic(name, num_partitions=PARTITIONS, replication_factor=1, config=config)
        admin.create_topics([new])[name].result(30)
        time.sleep(1)  # leaders elected
    else:
        from connectors.kafka import KafkaSettings, ensure_topics

        ensure_topics(KafkaSettings(bootstrap_servers=BOOTSTRAP), {name: PARTITIONS})
    CREATED.append(name)


CREATED: list[str] = []  # topics this run made, deleted at the end with Quix's state topics


def drop_topics() -> None:
    """Delete the run's topics (and every topic named after one, e.g. Quix changelogs)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    names = [t for t in admin.list_topics(timeout=10).topics if any(c in t for c in CREATED)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result(30)
            except Exception as exc:  # best effort: report and go on
                print(f"could not delete a topic: {exc}")


WARMUP_EVENTS = 30_000  # before a freshness run: the workers' caches hold every entity


def wait_committed(group: str, topic: str, total: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while committed_total(group, topic) < total:
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm-up of {topic} was not committed in {timeout_s:.0f}s")
        time.sleep(0.2)


def committed_total(group: str, topic: str, poller: Consumer | None = None) -> int:
    """Records of ``topic`` committed by ``group``; ``poller``: a consumer of ``group`` to
    ask (one kept across polls spares the broker a connection per poll), else a new one."""
    c = poller or Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in got)
    finally:
        if poller is None:
            c.close()


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


def redis_persistence(appendonly: str | None = None) -> dict[str, str]:
    """Redis's persistence settings (appendonly, appendfsync, save); with ``appendonly``
    ('yes'/'no'), set it first and wait out the rewrite that turning the append-only file on
    starts, so a drain does not share the cores with it."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        if appendonly is not None:
            client.config_set("appendonly", appendonly)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                info = client.info("persistence")
                if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                    break
                time.sleep(0.2)
        got = client.config_get("append*")
        got.update(client.config_get("save"))
        return {k: str(got[k]) for k in ("appendonly", "appendfsync", "save") if k in got}
    finally:
        client.close()


# -- 1. throughput ------------------------------------------------------------------------------


def run_until_committed(
    cmd: list[str],
    log: IO[bytes],
    group: str,
    topic: str,
    total: int,
    what: str,
    cpu: list[dict[str, float]] | None = None,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
    started: list[dict[str, float]] | None = None,
) -> list[tuple[float, int]]:
    """Run a worker command until ``group`` has committed ``total`` records of ``topic``;
    return (time, records committed) at every change. Closes ``log``. ``cpu``: filled with
    the CPU seconds of the worker, Redis, the broker, this process and the machine
    (``cpu_now``) at each of those changes. ``cwd``: the checkout the worker runs from;
    ``env``: added to the worker's environment. ``started``: given the ``cpu_now`` reading
    of the moment the worker was started (its CPU 0)."""
    pids = service_pids() if cpu is not None else {}
    before = cpu_now(pids)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})  # fmt: skip
    if started is not None:
        started.append({**before, "worker": 0.0})
    samples: list[tuple[float, int]] = []
    poller = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    try:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            done = committed_total(group, topic, poller)
            now = time.perf_counter()
            if done and (not samples or done != samples[-1][1]):
                samples.append((now, done))
                if cpu is not None:
                    cpu.append(cpu_now({"worker": proc.pid, **pids}))
            if done >= total or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        poller.close()
        if cpu:  # the worker's peak RSS (MiB), read before it stops
            cpu[-1]["worker_peak_rss_mib"] = peak_rss_mib(proc.pid)
        proc.terminate()
        proc.wait(120)
        log.close()
    if len(samples) < 2 or samples[-1][1] < total:
        raise SystemExit(f"{what} did not finish ({samples[-1:]}); see {log.name}")
    return samples


def worker_throughput(
    repo: Path,
    topic: str,
    total: int,
    runtime: str,
    batch_max: int,
    code: Path = REPO,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One worker process on the backlog; rate between its first and its last commit.
    ``code``: the checkout whose engine the worker runs (``--worker-code``); ``env``: added
    to the worker's environment (``--variant``)."""
    flush_redis()
    store = FeatureStore.from_repo(repo)
    store.apply()
    CREATED.extend(store.topics())
    group = f"skewless.{store.config.project}"
    log = (WORK / f"worker-{repo.name}-{runtime}.log").open("wb")
    cmd = [sys.executable, "-m", "engine.cli", "--repo", str(repo), "worker", "--runtime",
           runtime, "--batch-max", str(batch_max)]  # fmt: skip
    cpu: list[dict[str, float]] = []
    started: list[dict[str, float]] = []
    samples = run_until_committed(cmd, log, group, topic, total, "worker", cpu, code, env,
                                  started)  # fmt: skip
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    rate = (n1 - n0) / (t1 - t0)
    # the whole run, from the worker's start (its startup included): a pipelined worker has
    # done part of the next batches by its first commit, which flatters the window's CPU
    whole = cpu_shares(started[0], cpu[-1], n1)
    whole["events_per_s"] = n1 / (cpu[-1]["wall"] - started[0]["wall"])
    return {"runtime": runtime, "definitions": repo.name.split("_")[0], "records": total,
            "measured_records": n1 - n0, "seconds": t1 - t0, "events_per_s": rate,
            "batch_max": batch_max, "code": str(code), **cpu_shares(cpu[0], cpu[-1], n1 - n0),
            "whole_run": whole}  # fmt: skip


def service_pids() -> dict[str, int]:
    """The pids of the Redis server (its ``INFO``; only when it runs on this machine) and of
    the Kafka broker (the ``kafka.Kafka`` java process) whose CPU a drain is charged."""
    import redis

    pids: dict[str, int] = {}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        pid = int(client.info("server")["process_id"])
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"redis-server"):
            pids["redis"] = pid
    except (OSError, redis.exceptions.RedisError):
        pass
    finally:
        client.close()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"kafka.Kafka" in (entry / "cmdline").read_bytes():
                    pids["kafka"] = int(entry.name)
                    break
            except OSError:
                continue
    return pids


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` of ``/proc/PID/status`` in MiB (NaN if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, every thread) so far of each named pid (from
    ``/proc/PID/stat``), of this process (``bench``: the commit poller) and of the whole
    machine (``machine``, busy time of every core, and ``wall``)."""
    out: dict[str, float] = {"wall": time.perf_counter()}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            continue
    times = os.times()
    out["bench"] = times.user + times.system
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        out["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / _TICK  # all but idle, iowait
    except (OSError, ValueError):
        pass
    return out


def cpu_shares(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, Any]:
    """The drain's CPU seconds per process between two ``cpu_now`` readings, their shares
    of the machine's busy time, and events per worker CPU-second."""
    spent = {k: after[k] - before[k] for k in after if k in before and k != "wall"}
    peak = after.get("worker_peak_rss_mib", float("nan"))
    wall = after["wall"] - before["wall"]
    busy = spent.get("machine", 0.0)
    out: dict[str, Any] = {"cpu_s": spent, "cores": os.cpu_count(), "cpu_wall_s": wall,
                           "worker_peak_rss_mib": peak}  # fmt: skip
    if busy > 0:
        out["cpu_share"] = {k: v / busy for k, v in spent.items() if k != "machine"}
    if spent.get("worker", 0) > 0:
        out["events_per_worker_cpu_s"] = events / spent["worker"]
    out["us_per_event"] = {k: v / events * 1e6 for k, v in spent.items()}
    return out


def profile_worker(repo: Path, topic: str, total: int, batch_max: int, top: int = 30) -> str:
    """cProfile of the kafka loop in this process on the backlog (a fresh group)."""
    from engine.stream.kafka_runtime import WorkerOptions, build_worker

    flush_redis()
    store = FeatureStore.from_repo(repo)
    store.apply()
    CREATED.extend(store.topics())
    worker = build_worker(store.plan, store.config, WorkerOptions(batch_max=batch_max))
    stop = threading.Event()

    def watch() -> None:
        while worker.stats.records < total:
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    prof = cProfile.Profile()
    prof.enable()
    worker.run(stop)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


# -- 2. Quix --------------------------------------------------------------------------------------


def quix(topic: str, total: int) -> dict[str, Any]:
    python = QUIX_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {QUIX_VENV} with quixstreams=={QUIX_VERSION} (one time)")
        subprocess.run(["python3", "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}"],
                       check=True)  # fmt: skip
    (QUIX_VENV / ".gitignore").write_text("*\n")
    done = subprocess.run(
        [str(python), "-W", "ignore", str(HERE / "quix_peer.py"), "--broker", BOOTSTRAP,
         "--topic", topic, "--schema", str(SCHEMA), "--count", str(total)],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("{")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(
            f"quix peer failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
        )
    got = json.loads(line)
    got["events_per_s"] = (got["events"] - 1) / got["seconds"]
    return dict(got)


# -- 3. freshness ---------------------------------------------------------------------------------


def freshness(
    rate: int,
    seconds: float,
    sample: float,
    batch_timeout: float,
    workers: int = 1,
    *,
    variant: str = "",
    env: dict[str, str] | None = None,
    breakdown: bool = False,
    code: Path = REPO,
) -> dict[str, Any]:
    """p50/p99 ms from produce() to the event's fence being visible in Redis, with
    ``workers`` worker processes in the group (their environment plus ``env``, the engine
    of the checkout ``code``); with ``breakdown``, where each sample's time went
    (``latency_breakdown``)."""
    import redis

    from engine.online import state_key

    topic = f"{PREFIX}_fresh_{uuid.uuid4().hex[:8]}"  # SKEWLESS_BENCH_PREFIX, as every topic
    # the broker stamps each record when it appends it: the delivery report then carries
    # the produce → broker part of a sample's latency
    create_topic(topic, {"message.timestamp.type": "LogAppendTime"})
    repo = make_repo("example", topic)
    flush_redis()
    store = FeatureStore.from_repo(repo)
    store.apply()
    CREATED.extend(store.topics())
    view = store.plan.views["customer_spend"]  # keyed by the topic key: written by one partition
    codec = SourceCodec(next(iter(store.plan.sources.values())))
    name = f"fresh-{rate}-{batch_timeout}-{workers}{'-' + variant if variant else ''}"
    logs = [(WORK / f"worker-{name}-{w}.log") for w in range(workers)]
    traces = [(WORK / f"trace-{name}-{w}.jsonl") for w in range(workers)]
    command = [sys.executable, "-m", "engine.cli", "--repo", str(repo), "worker",
               "--batch-timeout", str(batch_timeout)]  # fmt: skip
    handles = [path.open("wb") for path in logs]
    procs = []
    for fh, trace in zip(handles, traces, strict=True):
        trace.unlink(missing_ok=True)
        wenv = {**os.environ, **(env or {})}
        if breakdown:
            wenv["SKEWLESS_WORKER_TRACE"] = str(trace)
        procs.append(
            subprocess.Popen(command, cwd=code, stdout=fh, stderr=subprocess.STDOUT, env=wenv)
        )
    client = redis.Redis.from_url(REDIS_URL)
    rng = random.Random(5)
    p = producer()
    # id → (key, field, partition, offset, t0, broker append time in perf_counter seconds)
    pending: dict[int, tuple[str, str, int, int, float, float]] = {}
    lock = threading.Lock()
    results: list[float] = []
    timed: list[tuple[int, int, float, float, float]] = []  # (p, offset, t0, broker, seen)
    stop = threading.Event()
    wall_minus_perf = time.time() - time.perf_counter()

    def watcher() -> None:
        while not stop.is_set() or pending:
            with lock:
                items = list(pending.items())
            if not items:
                time.sleep(0.001)
                continue
            pipe = client.pipeline(transaction=False)
            for _, (key, field, *_) in items:
                pipe.hget(key, field)
            got = pipe.execute()
            seen = time.perf_counter()
            with lock:
                for (i, (_, _, part, offset, t0, broker)), fence in zip(items, got, strict=True):
                    if fence is not None and int(fence) >= offset:
                        results.append((seen - t0) * 1000)
                        timed.append((part, offset, t0, broker, seen))
                        del pending[i]
            if stop.is_set() and time.perf_counter() - last_produce[0] > 240:
                break
            time.sleep(0.001)

    last_produce = [time.perf_counter()]
    try:
        deadline = time.monotonic() + 120  # every worker holds partitions of the topic
        while not all(f"assigned {topic} [" in path.read_text() for path in logs):
            if time.monotonic() > deadline:
                raise SystemExit(f"freshness workers did not all get partitions; see {logs}")
            time.sleep(0.2)
        time.sleep(5)  # the group settles (a second worker's join rebalances the first)
        # warm-up, not timed: every customer and merchant once, so the workers' entity
        # caches hold them as in a running deployment (a cold cache costs a Redis load each)
        now = int(time.time() * 1000)
        warm = events(WARMUP_EVENTS, 98, now)
        for row in warm:
            row["ts"] = now - rng.randrange(60_000)
        for row in warm:
            p.produce(topic, codec.encode(row), encode_key([row["customer_id"]]))
        p.flush(30)
        wait_committed(f"skewless.{store.config.project}", topic, WARMUP_EVENTS, 300)
        watch = threading.Thread(target=watcher, daemon=True)
        watch.start()
        now = int(time.time() * 1000)
        rows = events(int(rate * seconds), 99, now)
        for row in rows:
            row["ts"] = now - rng.randrange(60_000)
        tick = 0.005
        per_tick = max(1, round(rate * tick))
        started = time.perf_counter()
        sent = 0
        ids = 0
        while sent < len(rows):
            target = started + (sent // per_tick) * tick
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            for row in rows[sent : sent + per_tick]:
                value = codec.encode(row)
                key = encode_key([row["customer_id"]])
                t0 = time.perf_counter()
                if rng.random() < sample:
                    ids += 1

                    def delivered(
                        err: Any,
                        msg: Any,
                        i: int = ids,
                        t0: float = t0,
                        k: str = row["customer_id"],
                    ) -> None:
                        if err is None:
                            broker = msg.timestamp()[1] / 1000 - wall_minus_perf
                            with lock:
                                pending[i] = (
                                    state_key(view, (k,)),
                                    f"f:{msg.partition()}",
                                    msg.partition(),
                                    msg.offset(),
                                    t0,
                                    broker,
                                )

                    p.produce(topic, value, key, on_delivery=delivered)
                else:
                    p.produce(topic, value, key)
            sent += per_tick
            p.poll(0)
        p.flush(30)
        last_produce[0] = time.perf_counter()
        produced_rate = len(rows) / (last_produce[0] - started)
        stop.set()
        watch.join(300)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(120)
        for fh in handles:
            fh.close()
        client.close()
    results.sort()
    parts = latency_breakdown(timed, traces) if breakdown else None
    return {
        "rate": rate,
        "workers": workers,
        "variant": variant,
        "env": env or {},
        "breakdown": parts,
        "warmup_events": WARMUP_EVENTS,
        "produced_rate": produced_rate,
        "seconds": seconds,
        "batch_timeout_s": batch_timeout,
        "samples": len(results),
        "unseen": len(pending),
        "p50_ms": percentile(results, 50),
        "p90_ms": percentile(results, 90),
        "p99_ms": percentile(results, 99),
        "max_ms": results[-1] if results else None,
        "mean_ms": statistics.fmean(results) if results else None,
        "cdf_ms": [percentile(results, q) for q in range(0, 101)],
    }


def read_traces(paths: list[Path]) -> list[dict[str, Any]]:
    """The workers' batch traces (``SKEWLESS_WORKER_TRACE``, engine/stream/kafka_runtime.py)."""
    batches = []
    for path in paths:
        if path.exists():
            batches += [json.loads(line) for line in path.read_text().splitlines() if line]
    batches.sort(key=lambda b: b["got"])
    return batches


BREAKDOWN_PARTS = (
    ("produce→broker", "produce() → the broker appended it (linger 5 ms, send)"),
    ("behind batch", "broker → the loop asked for records (the batch before still running)"),
    ("fetch", "the later of broker/ask → the loop had the batch (fetch, idle wait)"),
    (
        "queued",
        "had → handed to the pipeline's thread (decode ahead, the batch before; 0 serial)",
    ),
    (
        "apply+write",
        "batch start → the online write done (decode, fold, Redis; with the pipeline, on its thread)",
    ),
    ("→ seen", "online write done → the watcher saw the fence (its 1 ms poll)"),
)


def latency_breakdown(
    timed: list[tuple[int, int, float, float, float]], trace_paths: list[Path]
) -> dict[str, Any]:
    """Where each sample's latency went, joined to the batch that held it; per part the
    p50/p99 over all samples and its mean over the slowest 1%; per batch, what ran on the
    loop between two batches (log append, commit, gc)."""
    batches = read_traces(trace_paths)
    by_part: dict[int, list[dict[str, Any]]] = {}
    for b in batches:
        for p in b["parts"]:
            by_part.setdefault(int(p), []).append(b)
    rows = []
    for part, offset, t0, broker, seen in timed:
        held = next(
            (b for b in by_part.get(part, ())
             if b["parts"][str(part)][0] <= offset <= b["parts"][str(part)][1]
             and "log0" in b),
            None,
        )  # fmt: skip
        if held is None:
            continue
        broker = min(max(broker, t0), held["got"])  # ms-resolution stamp, clamped
        asked = held["poll"]
        start = held.get("start", held["got"])  # the pipeline's hand-over (serial: got)
        rows.append({
            "total": seen - t0,
            "produce→broker": broker - t0,
            "behind batch": max(0.0, asked - broker),
            "fetch": held["got"] - max(asked, broker),
            "queued": start - held["got"],
            "apply+write": held["log0"] - start,
            "→ seen": seen - held["log0"],
        })  # fmt: skip
    rows.sort(key=lambda r: r["total"])
    tail = rows[int(len(rows) * 0.99) :] if rows else []
    out: dict[str, Any] = {"samples": len(rows), "parts": {}}
    for name, _ in BREAKDOWN_PARTS:
        values = sorted(r[name] * 1000 for r in rows)
        out["parts"][name] = {
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "mean_ms": statistics.fmean(values) if values else None,
            "tail_mean_ms": statistics.fmean(r[name] * 1000 for r in tail) if tail else None,
        }
    loop = {
        "batch records": [float(b["n"]) for b in batches],
        "queued": [(b["start"] - b["got"]) * 1000 for b in batches if "start" in b],
        "apply+write": [
            (b["log0"] - b.get("start", b["got"])) * 1000 for b in batches if "log0" in b
        ],
        "log append": [(b["log1"] - b["log0"]) * 1000 for b in batches if "log1" in b],
        "after log": [(b["done"] - b["log1"]) * 1000 for b in batches if "log1" in b],
        "commit": [(b["commit"] - b["done"]) * 1000 for b in batches if "commit" in b],
        "gc freeze": [(b["gc"] - b["commit"]) * 1000 for b in batches if "commit" in b],
        "poll": [(b["got"] - b["poll"]) * 1000 for b in batches],
    }
    out["batches"] = len(batches)
    out["per_batch"] = {
        name: {
            "p50": percentile(sorted(v), 50),
            "p99": percentile(sorted(v), 99),
            "mean": statistics.fmean(v) if v else None,
        }
        for name, v in loop.items()
    }
    return out


def show_breakdown(f: dict[str, Any]) -> None:
    b = f.get("breakdown")
    if not b:
        return
    print(f"  where the time went ({b['samples']} samples joined to {b['batches']} batches):")
    print("  | part | p50 ms | p99 ms | mean ms | mean of the slowest 1% ms | what |")
    print("  | --- | ---: | ---: | ---: | ---: | --- |")
    for name, what in BREAKDOWN_PARTS:
        v = b["parts"][name]
        if v["p50_ms"] is None:
            continue
        print(f"  | {name} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['mean_ms']:.1f} | "
              f"{v['tail_mean_ms']:.1f} | {what} |")  # fmt: skip
    print("  per batch (ms; records for 'batch records'): | part | p50 | p99 | mean |")
    for name, v in b["per_batch"].items():
        if v["p50"] is None:
            continue
        print(f"  | {name} | {v['p50']:.1f} | {v['p99']:.1f} | {v['mean']:.1f} |")


def show(got: dict[str, Any]) -> None:
    print(f"{got['runtime']:>6} {got['definitions']:<8} {got['events_per_s']:>10,.0f} events/s "
          f"({got['measured_records']} records in {got['seconds']:.1f}s)")  # fmt: skip
    if "cpu_s" in got:
        print("       " + cpu_line(got))
    if "whole_run" in got:
        print("       whole run: " + whole_line(got["whole_run"]))


def whole_line(whole: dict[str, Any]) -> str:
    """A drain from the worker's start to its last commit: events/s and µs CPU per event."""
    per = whole["us_per_event"]
    parts = [f"{whole['events_per_s']:,.0f} events/s"]
    parts += [f"{name} {per[name]:.1f} µs/event" for name in ("worker", "redis", "kafka")
              if name in per]  # fmt: skip
    return "; ".join(parts)


def cpu_line(got: dict[str, Any]) -> str:
    """The drain's CPU: events per worker CPU-second, then per process µs of CPU per event
    and its share of the machine's busy CPU time."""
    per = got["us_per_event"]
    share = got.get("cpu_share", {})
    parts = [f"{got.get('events_per_worker_cpu_s', float('nan')):,.0f} events per worker CPU-s"]
    for name in ("worker", "redis", "kafka", "bench"):
        if name in per:
            parts.append(f"{name} {per[name]:.1f} µs/event ({share.get(name, float('nan')):.0%})")
    if "machine" in got["cpu_s"]:
        busy = got["cpu_s"]["machine"] / (got["cpu_wall_s"] * (got["cores"] or 1))
        parts.append(f"machine busy {busy:.0%} of {got['cores']} cores")
    parts.append(f"worker peak RSS {got.get('worker_peak_rss_mib', float('nan')):.0f} MiB")
    return "; ".join(parts)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every run's rate beside it."""
    ordered = sorted(runs, key=lambda r: float(r["events_per_s"]))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_events_per_s"] = [r["events_per_s"] for r in runs]
    return chosen


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


# -- report ------------------------------------------------------------------------------------


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    bars = [
        (f"skewless {r['runtime']}, {r['definitions']}", r["events_per_s"])
        for r in result["throughput"]
    ]
    bars.append((f"Quix {result['quix']['quixstreams']}, count", result["quix"]["events_per_s"]))
    bars.reverse()
    names, rates = zip(*bars, strict=True)
    colors = ["#2b6cb0" if n.startswith("skewless") else "#999999" for n in names]
    left.barh(names, [r / 1000 for r in rates], color=colors)
    left.axvline(TARGET_RATE / 1000, color="#c53030", linestyle="--", label="target 100k/s")
    left.set_xlabel("thousand events/s, one process")
    left.set_title("Throughput on a backlog (4 partitions)")
    left.legend(loc="lower right")
    for i, r in enumerate(rates):
        left.text(r / 1000, i, f" {r / 1000:.1f}k", va="center")
    for fresh in result["freshness"]:
        cdf = fresh["cdf_ms"]
        if cdf and cdf[0] is not None:
            right.plot(cdf, list(range(len(cdf))),
                       label=f"{fresh['rate']}/s, batch timeout "
                             f"{fresh['batch_timeout_s'] * 1000:.0f} ms, "
                             f"{fresh.get('workers', 1)} worker(s)")  # fmt: skip
    right.axvline(
        TARGET_P99_MS, color="#c53030", linestyle="--", label=f"target p99 {TARGET_P99_MS:.0f} ms"
    )
    right.set_xscale("log")
    right.set_xlabel("produce → visible in Redis (ms)")
    right.set_ylabel("percentile")
    right.set_title("Freshness, example views, one worker")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _runs(entry: dict[str, Any]) -> str:
    runs = entry.get("runs_events_per_s")
    return ", ".join(f"{r / 1000:.1f}k" for r in runs) if runs else "1 run"


def report(result: dict[str, Any]) -> None:
    quix_rate = result["quix"]["events_per_s"]
    print("\n| what | events/s per process (median) | runs | vs target 100k | vs Quix |")
    print("| --- | ---: | --- | ---: | ---: |")
    for r in result["throughput"]:
        rate = r["events_per_s"]
        print(f"| skewless {r['runtime']} runtime, {r['definitions']} definitions | {rate:,.0f} | "
              f"{_runs(r)} | {rate / TARGET_RATE:.2f}x | {rate / quix_rate:.2f}x |")  # fmt: skip
    print(f"| Quix Streams {result['quix']['quixstreams']} tumbling count | {quix_rate:,.0f} | "
          f"{_runs(result['quix'])} | {quix_rate / TARGET_RATE:.2f}x | 1.00x |")  # fmt: skip
    print(
        "\n| freshness at | batch timeout | workers | samples | p50 ms | p99 ms | max ms | p99 vs target |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for f in result["freshness"]:
        p99 = f["p99_ms"]
        print(f"| {f['rate']}/s (sent {f['produced_rate']:.0f}/s) | {f['batch_timeout_s'] * 1000:.0f} ms | "
              f"{f.get('workers', 1)} | "
              f"{f['samples']} | {f['p50_ms']:.1f} | {p99:.1f} | {f['max_ms']:.1f} | "
              f"{p99 / TARGET_P99_MS:.2f}x |")  # fmt: skip


def show_freshness(f: dict[str, Any]) -> None:
    label = f" [{f['variant']}]" if f.get("variant") else ""
    print(f"freshness @ {f['rate']}/s{label}, batch timeout {f['batch_timeout_s']}s, "
          f"{f['workers']} worker(s): p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms "
          f"({f['samples']} samples, sent {f['produced_rate']:.0f}/s)", flush=True)  # fmt: skip
    show_breakdown(f)


def _code_name(code: Path) -> str:
    """A checkout's name in a table: its directory's name (``.`` is this one's)."""
    return code.resolve().name


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(";") if a)
    return name, env


def freshness_ab(args: argparse.Namespace, loads: list[tuple[int, float, int]]) -> None:
    """Each load once per variant, the variants alternating over ``--rounds`` (one run, so
    they see the same machine); a table of every run at the end."""
    variants = [parse_variant(v) for v in args.variant] or [("", {})]
    codes: list[Path] = args.worker_code or [REPO]
    if len(codes) > 1:  # --worker-code: the checkout's directory names the variant too
        variants = [(f"{_code_name(c)}{'+' + n if n else ''}", {**e, "_code": str(c)})
                    for c in codes for n, e in variants]  # fmt: skip
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(args.rounds):
            for rate, timeout, workers in loads:
                for name, env in variants:
                    env = dict(env)
                    code = Path(env.pop("_code", str(codes[0])))
                    got = freshness(rate, args.freshness_seconds, args.sample, timeout, workers,
                                    variant=name, env=env, breakdown=args.breakdown,
                                    code=code)  # fmt: skip
                    show_freshness(got)
                    runs.append(got)
    finally:
        (OUT / "stream-freshness-ab.json").write_text(json.dumps(runs, indent=2))
    print(
        "\n| freshness at | batch timeout | workers | variant | samples | p50 ms | p99 ms | max ms |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for f in runs:
        print(f"| {f['rate']}/s (sent {f['produced_rate']:.0f}/s) | "
              f"{f['batch_timeout_s'] * 1000:.0f} ms | {f['workers']} | {f['variant'] or '-'} | "
              f"{f['samples']} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['max_ms']:.1f} |")  # fmt: skip


def backlog_rounds(
    topic: str,
    total: int,
    batch_maxes: list[int],
    rounds: int,
    codes: list[Path],
    envs: list[tuple[str, dict[str, str]]],
    aofs: list[str | None] | None = None,
) -> None:
    """``--backlog-only``: the kafka worker drains the example definitions' backlog
    ``rounds`` times per checkout in ``codes``, ``--batch-max`` in ``batch_maxes``,
    ``--variant`` (the worker's environment) in ``envs`` and ``--redis-aof`` in ``aofs``
    (Redis's append-only file on or off; None: as the server has it) (rotating, so each sees
    the same noise); prints each drain's rate and CPU shares, and Redis's persistence
    settings, and writes ``benchmarks/out/stream-backlog.json``."""
    variants = [(c, b, e, a) for c in codes for b in batch_maxes for e in envs
                for a in aofs or [None]]  # fmt: skip
    before = redis_persistence()
    print(f"redis persistence: {before}")

    def label(code: Path, b: int, name: str, aof: str | None) -> str:
        return (f"{code} --batch-max {b}" + (f" [{name}]" if name else "")
                + (f" [redis appendonly {aof}]" if aof else ""))  # fmt: skip

    runs: dict[str, list[dict[str, Any]]] = {label(c, b, e[0], a): [] for c, b, e, a in variants}
    try:
        for r in range(rounds):
            turn = variants[r % len(variants) :] + variants[: r % len(variants)]
            for code, b, (name, env), aof in turn:
                persistence = redis_persistence(aof)
                got = worker_throughput(make_repo("example", topic), topic, total, "kafka", b,
                                        code, env)  # fmt: skip
                got["redis_persistence"] = persistence
                print(f"[{label(code, b, name, aof)}]")
                show(got)
                runs[label(code, b, name, aof)].append(got)
    finally:
        if aofs:
            redis_persistence(before.get("appendonly"))
    print(f"\nbacklog of {total:,} events, kafka runtime, example definitions, {rounds} rounds:")
    for key, drains in runs.items():
        rates = [g["events_per_s"] for g in drains]
        med = median_run(drains)
        print(f"  {key}: median {med['events_per_s']:,.0f} events/s "
              f"(runs {', '.join(f'{x / 1000:.1f}k' for x in rates)}); median run: "
              f"{cpu_line(med)}")  # fmt: skip
        wholes = sorted(drains, key=lambda g: float(g["whole_run"]["events_per_s"]))
        whole_rates = ", ".join(f"{g['whole_run']['events_per_s'] / 1000:.1f}k" for g in drains)
        print(f"    whole runs (from the worker's start): {whole_rates} events/s; median "
              f"{whole_line(wholes[len(wholes) // 2]['whole_run'])}")  # fmt: skip
    path = OUT / "stream-backlog.json"
    path.write_text(json.dumps({"events": total, "runs": runs,
                                "produced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                             time.gmtime())}, indent=2))  # fmt: skip
    print(f"wrote {path.relative_to(REPO)}")


def main() -> None:
    try:
        run()
    finally:
        drop_topics()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=5_000, help="the freshness load (events/s)")
    parser.add_argument(
        "--low-rate", type=int, default=1_000, help="a second load the worker sustains"
    )
    parser.add_argument("--freshness-seconds", type=float, default=20.0)
    parser.add_argument("--sample", type=float, default=0.02, help="share of events timed")
    parser.add_argument(
        "--batch-max",
        default="50000",
        help="the worker's --batch-max (50,000 here, not the worker's 200,000: a rate is "
        "measured between a drain's first and last commit, so the backlog must span several "
        "batches); with --backlog-only a comma-separated list alternates several",
    )
    parser.add_argument("--quick", action="store_true", help="50k events, 10 s of freshness")
    parser.add_argument("--profile", action="store_true", help="cProfile the kafka loop too")
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument(
        "--backlog-only",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="only the kafka worker on the example definitions' backlog, ROUNDS times (with "
        "the CPU of the worker, Redis and the broker), then stop",
    )
    parser.add_argument(
        "--worker-code",
        type=Path,
        action="append",
        metavar="DIR",
        help="with --backlog-only or --freshness-only: a checkout whose engine the worker "
        "runs (its built engine/_native*.so beside it); repeat to alternate between several "
        "in each round (with --variant: every checkout with every variant)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of (count job, Quix), alternating"
    )
    parser.add_argument(
        "--freshness-only",
        action="store_true",
        help="skip throughput and Quix (an A/B of freshness)",
    )
    parser.add_argument(
        "--loads", default="",
        help="freshness loads rate:batch_timeout_s:workers,... (default: the table's rows)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME[:ENV=VALUE;...]",
        help="with --freshness-only: run each load once per variant (workers' environment), "
             "alternating over --rounds; with --backlog-only: each drain once per variant",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the variants")
    parser.add_argument(
        "--redis-aof", default="", metavar="yes,no",
        help="with --backlog-only: each drain once per Redis appendonly setting (CONFIG SET "
             "on the benchmark's Redis, restored at the end): what the append-only file costs",
    )  # fmt: skip
    parser.add_argument(
        "--breakdown", action="store_true",
        help="trace the workers' batches and show where each sample's latency went",
    )  # fmt: skip
    args = parser.parse_args()
    if args.redis_aof and not {a.strip() for a in args.redis_aof.split(",")} <= {"yes", "no"}:
        parser.error(f"--redis-aof: expected yes, no or yes,no; got {args.redis_aof!r}")
    batch_maxes = [int(b) for b in args.batch_max.split(",")]
    args.batch_max = batch_maxes[0]
    if args.quick:
        args.events, args.freshness_seconds, args.repeat = 50_000, 10.0, 1
    WORK.mkdir(parents=True, exist_ok=True)
    loads = [(args.rate, 0.05, 1), (args.rate, 0.01, 1), (args.rate, 0.01, 2),
             (4 * args.rate, 0.01, 2), (args.low_rate, 0.05, 1),
             (args.low_rate, 0.01, 1)]  # fmt: skip
    if args.loads:
        loads = [(int(r), float(t), int(w))
                 for r, t, w in (item.split(":") for item in args.loads.split(","))]  # fmt: skip
    if args.freshness_only:
        freshness_ab(args, loads)
        return

    from engine.cli import WORKER_RUNTIMES

    runtimes = sorted(WORKER_RUNTIMES, key=lambda r: (r != "kafka", r))
    topic = f"{PREFIX}_{uuid.uuid4().hex[:8]}"
    create_topic(topic)
    now = int(time.time() * 1000)
    rows = events(args.events, 42, now)
    plan = FeatureStore.from_repo(make_repo("count", topic)).plan
    codec = SourceCodec(next(iter(plan.sources.values())))
    produce_s = produce_backlog(topic, rows, codec)
    print(f"produced {args.events} records to {topic} in {produce_s:.1f}s")
    if args.backlog_only:
        backlog_rounds(topic, args.events, batch_maxes, args.backlog_only,
                       args.worker_code or [REPO],
                       [parse_variant(v) for v in args.variant] or [("", {})],
                       [a.strip() for a in args.redis_aof.split(",")] if args.redis_aof else None)  # fmt: skip
        return

    throughput = []
    for runtime in runtimes:
        repo = make_repo("example", topic)
        got = worker_throughput(repo, topic, args.events, runtime, args.batch_max)
        show(got)
        throughput.append(got)
    # the count job and Quix alternate, so both see the same machine noise; medians reported
    count_runs: dict[str, list[dict[str, Any]]] = {r: [] for r in runtimes}
    quix_runs: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for runtime in runtimes:
            repo = make_repo("count", topic)
            got = worker_throughput(repo, topic, args.events, runtime, args.batch_max)
            show(got)
            count_runs[runtime].append(got)
        if not args.skip_quix:
            quix_runs.append(quix(topic, args.events))
            print(f"  quix count    {quix_runs[-1]['events_per_s']:>10,.0f} events/s")
    for runtime in runtimes:
        throughput.append(median_run(count_runs[runtime]))
    quix_result: dict[str, Any] = {"quixstreams": QUIX_VERSION, "events_per_s": float("nan")}
    if quix_runs:
        quix_result = median_run(quix_runs)
    fresh = [
        freshness(rate, args.freshness_seconds, args.sample, t, w, breakdown=args.breakdown)
        for rate, t, w in loads
    ]
    for f in fresh:
        show_freshness(f)
    profile_text = None
    if args.profile:
        profile_text = profile_worker(
            make_repo("example", topic), topic, args.events, args.batch_max
        )
        path = OUT / "stream-profile.txt"
        path.write_text(profile_text)
        print(f"profile: {path}")
    result = {
        "events": args.events,
        "partitions": PARTITIONS,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "throughput": throughput,
        "quix": quix_result,
        "freshness": fresh,
        "targets": {
            "events_per_s": TARGET_RATE,
            "vs_quix": TARGET_VS_QUIX,
            "p99_ms": TARGET_P99_MS,
        },
        "produced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # a smoke run (--quick, --skip-quix) never overwrites the published results
    smoke = args.quick or args.skip_quix
    results = OUT / "stream-quick.json" if smoke else RESULTS_JSON
    image = OUT / "stream-quick.png" if smoke else CHART
    results.write_text(json.dumps(result, indent=2))
    report(result)
    chart(result, image)
    print(f"\nwrote {results.relative_to(REPO)} and {image.relative_to(REPO)}")


if __name__ == "__main__":
    main()
