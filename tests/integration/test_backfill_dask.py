"""The backfill on a real ``dask.distributed`` cluster (issue 13 part 3): a scheduler and two
worker processes (nannies) on 127.0.0.1. Its values equal the brute-force reference and the
local run's bit for bit (NaN/None and dtypes included): on the reference world, on a rolling
log with a fenced owner's stale appends and a torn tail, and on the example definitions
(batch transforms run on the workers from the repo path). Errors name what to fix."""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pandas as pd
import pytest

from engine import FeatureStore
from engine.backfill_dask import ClusterUnavailable
from engine.cli import main
from engine.demo_data import fraud_labels, payments
from engine.errors import SkewlessError
from tests.unit.test_backfill_reference import (
    ALL_REFS,
    World,
    _report,
    engine_values,
    mismatches,
    world,  # noqa: F401  (module fixture, used by name)
)
from tests.unit.test_backfill_rolling import rolled  # noqa: F401  (module fixture)

EXAMPLE_DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A scheduler and two single-threaded worker processes; none left running after. The
    client is not the process's default one: the backfill must use the client it is given
    (or the one it makes from an address)."""
    before = set(multiprocessing.active_children())
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as local,  # fmt: skip
        distributed.Client(local, set_as_default=False) as client,
    ):
        client.wait_for_workers(2)
        yield client
    leaked = [p for p in multiprocessing.active_children() if p not in before]
    assert not leaked, f"worker processes left running: {leaked}"


def assert_identical(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns, dtypes and values bit for bit (floats by their bytes: NaN is NaN)."""
    assert list(got.columns) == list(want.columns)
    assert got.index.equals(want.index)
    for column in want.columns:
        a, b = got[column].to_numpy(), want[column].to_numpy()
        assert a.dtype == b.dtype, column
        if a.dtype.kind in "fiub":
            assert a.tobytes() == b.tobytes(), column
        else:
            assert all(type(x) is type(y) and (x is y or x == y)
                       for x, y in zip(a, b, strict=True)), column  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "include_late"), [("event_time", False), ("processing_time", True)]
)
def test_cluster_backfill_equals_the_reference_and_the_local_run(
    cluster: Any,
    world: World,  # noqa: F811
    mode: str,
    include_late: bool,
) -> None:
    got = world.store.get_historical_features(
        world.labels.frame(), ALL_REFS, mode=mode, include_late=include_late,
        full_feature_names=True, cluster=cluster,
    )  # fmt: skip
    problems = mismatches(engine_values(got, ALL_REFS), world.reference(mode, include_late),
                          world.labels)  # fmt: skip
    assert not problems, _report(problems)
    assert_identical(got, world.backfill(mode, include_late))


def test_more_shards_than_workers_and_an_address(world: World, cluster: Any) -> None:  # noqa: F811
    """Three entity shards over two workers, the client made from the scheduler's address."""
    from engine import backfill, backfill_dask

    store = world.store
    frame = world.labels.frame()
    requests = [
        backfill.ViewRequest(view=view, entities=backfill.EntityColumns(
            [frame[k].tolist() for k in store.plan.views[view].join_keys]),
            times_ms=frame["event_timestamp"].to_numpy(dtype=np.int64), indices=indices)
        for view, indices in backfill.requests_by_view(store.plan.resolve(ALL_REFS)).items()
    ]  # fmt: skip
    local = backfill.run_columns(store.plan, _reader(store), requests, mode="event_time")
    got = backfill_dask.run_columns(store.plan, store.config.event_log_root,
                                    store.config.repo_path, requests, mode="event_time",
                                    cluster=cluster.scheduler.address, shards=3)  # fmt: skip
    for want_cols, got_cols in zip(local, got, strict=True):
        for want, have in zip(want_cols, got_cols, strict=True):
            assert have.dtype == want.dtype
            if want.dtype == object:
                assert have.tolist() == want.tolist()
            else:
                assert have.tobytes() == want.tobytes()


def _reader(store: FeatureStore) -> Any:
    from connectors.eventlog import EventLogReader

    return EventLogReader(store.config.event_log_root)


@pytest.mark.parametrize(
    ("mode", "include_late"), [("event_time", False), ("processing_time", True)]
)
def test_cluster_backfill_of_a_rolling_log_equals_the_local_run(
    cluster: Any,
    world: World,  # noqa: F811
    rolled: FeatureStore,  # noqa: F811
    mode: str,
    include_late: bool,
) -> None:
    """A zombie's appends past the next owner's start (each file's ``upto``) and a torn
    tail are skipped on the workers as they are locally."""
    labels = world.labels.frame()
    kwargs: dict[str, Any] = {"mode": mode, "include_late": include_late,
                              "full_feature_names": True}  # fmt: skip
    local = rolled.get_historical_features(labels, ALL_REFS, workers=1, **kwargs)
    got = rolled.get_historical_features(labels, ALL_REFS, cluster=cluster, **kwargs)
    assert_identical(got, local)
    assert_identical(got, world.backfill(mode, include_late))


@pytest.fixture(scope="module")
def scattered(tmp_path_factory: pytest.TempPathFactory, world: World) -> FeatureStore:  # noqa: F811
    """``world``'s records in a log not partitioned by the source's key: every third
    customer's records dealt round-robin over the 3 partitions, the others' left where
    they were (as after a producer changed its partitioner or the topic its partition count)."""
    from dataclasses import replace

    from connectors.eventlog import EventLogReader, EventLogWriter
    from engine.envelope import Envelope
    from tests.unit.test_backfill_reference import make_repo

    store = FeatureStore.from_repo(make_repo(tmp_path_factory.mktemp("scattered") / "repo"))
    customers = sorted({e.customer_id for e in world.events})
    split = set(customers[::3])
    by_partition: dict[int, list[Envelope]] = {0: [], 1: [], 2: []}
    dealt = 0
    for e in EventLogReader(world.store.config.event_log_root).read_all("tx"):
        p = e.partition
        if e.payload["customer_id"] in split:
            p, dealt = dealt % 3, dealt + 1
        by_partition[p].append(replace(e, partition=p, offset=len(by_partition[p])))
    writer = EventLogWriter(store.config.event_log_root, "tx",
                            dict(store.plan.sources["tx"].schema))  # fmt: skip
    for envs in by_partition.values():
        writer.append(envs)
    return store


@pytest.mark.parametrize(
    ("mode", "include_late"), [("event_time", False), ("processing_time", True)]
)
def test_entities_found_in_several_partitions_go_through_the_exchange(
    cluster: Any,
    world: World,  # noqa: F811
    scattered: FeatureStore,
    mode: str,
    include_late: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A view keyed by its source's key is read and swept per partition task; the labels of
    entities whose records two tasks found are swept again by entity shard: the values are
    the local run's, bit for bit."""
    from engine import backfill_dask

    exchanged: list[int] = []
    exchange = backfill_dask._exchange

    def spy(*args: Any, **kwargs: Any) -> None:
        labels = args[11] if len(args) > 11 else kwargs.get("labels")
        if labels is not None:
            exchanged.extend(len(at) for at in labels.values())
        exchange(*args, **kwargs)

    monkeypatch.setattr(backfill_dask, "_exchange", spy)
    labels = world.labels.frame()
    kwargs: dict[str, Any] = {"mode": mode, "include_late": include_late,
                              "full_feature_names": True}  # fmt: skip
    local = scattered.get_historical_features(labels, ALL_REFS, workers=1, **kwargs)
    reads: list[tuple[int, int]] = []
    got = scattered.get_historical_features(labels, ALL_REFS, cluster=cluster,
                                            progress=lambda r, d: reads.append((r, d)),
                                            **kwargs)  # fmt: skip
    assert_identical(got, local)
    # each partition reported once, though the log was read three times (partition tasks,
    # the merchant views' exchange, the customers found in two tasks)
    assert sum(d for _, d in reads) == len(reads) == 3
    assert sum(r for r, _ in reads) == len(world.events)
    # some customers' labels went through the exchange again, not all of them
    assert 0 < max(exchanged) < len(labels)


def test_only_rekeyed_views(cluster: Any, world: World) -> None:  # noqa: F811
    """Views keyed by another entity than their source's: the exchange alone, its read
    tasks reporting the progress."""
    from engine.plan import rekeyed

    plan = world.store.plan
    refs = [ref for ref in ALL_REFS
            if rekeyed(plan.views[ref.split(":")[0]], plan.sources["tx"])]  # fmt: skip
    assert refs and len(refs) < len(ALL_REFS)
    labels = world.labels.frame()
    reads: list[tuple[int, int]] = []
    got = world.store.get_historical_features(labels, refs, full_feature_names=True,
                                              cluster=cluster,
                                              progress=lambda r, d: reads.append((r, d)))  # fmt: skip
    assert_identical(got, world.store.get_historical_features(labels, refs,
                                                              full_feature_names=True))  # fmt: skip
    assert sum(d for _, d in reads) == len(reads) == 3
    assert sum(r for r, _ in reads) == len(world.events)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureStore, pd.DataFrame]:
    repo = tmp_path_factory.mktemp("example") / "definitions"
    shutil.copytree(EXAMPLE_DEFINITIONS, repo,
                    ignore=shutil.ignore_patterns(".skewless", "__pycache__"))  # fmt: skip
    store = FeatureStore.from_repo(repo, environ={})
    events = payments(6000, customers=80, merchants=12, days=3, seed=5)
    store.import_events("transactions", events)
    return store, fraud_labels(events, 500, seed=6)


def _all_refs(store: FeatureStore) -> list[str]:
    return [f"{name}:{a.feature}" for name, view in sorted(store.plan.views.items())
            for a in view.aggregations]  # fmt: skip


@pytest.mark.parametrize("mode", ["event_time", "processing_time"])
def test_cluster_backfill_of_the_example_definitions_equals_the_local_run(
    cluster: Any, example: tuple[FeatureStore, pd.DataFrame], mode: str
) -> None:
    """Every view of definitions/, batch transforms included (run on the workers)."""
    store, labels = example
    refs = _all_refs(store)
    assert any(v.batch_transform is not None for v in store.plan.views.values())
    local = store.get_historical_features(labels, refs, mode=mode, full_feature_names=True)
    reads: list[tuple[int, int]] = []
    got = store.get_historical_features(labels, refs, mode=mode, full_feature_names=True,
                                        cluster=cluster,
                                        progress=lambda r, d: reads.append((r, d)))  # fmt: skip
    assert_identical(got, local)
    partitions = store.config.kafka_partitions
    assert sum(d for _, d in reads) == len(reads) == partitions  # one call per partition
    assert sum(r for r, _ in reads) == 6000


def test_workers_refuse_definitions_that_differ_from_the_clients(
    cluster: Any, example: tuple[FeatureStore, pd.DataFrame], tmp_path: Path
) -> None:
    """User code is not shipped: a worker loads the repo itself and checks fingerprints."""
    store, labels = example
    repo = tmp_path / "definitions"
    shutil.copytree(store.config.repo_path, repo,
                    ignore=shutil.ignore_patterns(".skewless", "__pycache__"))  # fmt: skip
    changed = FeatureStore.from_repo(repo, environ={"SKEWLESS_EVENT_LOG":
                                                    store.config.event_log_root})  # fmt: skip
    defs = repo / "payments.py"
    text = defs.read_text()
    assert '"EUR": 1.08' in text
    defs.write_text(text.replace('"EUR": 1.08', '"EUR": 1.09'))
    with pytest.raises(SkewlessError, match="differs between the client and this Dask worker"):
        changed.get_historical_features(labels, _all_refs(changed), cluster=cluster)


def test_an_unreachable_scheduler_is_named(
    example: tuple[FeatureStore, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import backfill_dask

    monkeypatch.setattr(backfill_dask, "_CONNECT_TIMEOUT_S", 1.0)
    store, labels = example
    with pytest.raises(ClusterUnavailable, match=r"tcp://127\.0\.0\.1:9"):
        store.get_historical_features(labels, _all_refs(store)[:1], cluster="tcp://127.0.0.1:9")


def test_a_scheduler_without_workers_is_named(
    example: tuple[FeatureStore, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import backfill_dask

    monkeypatch.setattr(backfill_dask, "_CONNECT_TIMEOUT_S", 1.0)
    store, labels = example
    with (
        distributed.LocalCluster(
            n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as empty,
        pytest.raises(ClusterUnavailable, match=f"{empty.scheduler_address} has no workers"),
    ):
        store.get_historical_features(labels, _all_refs(store)[:1], cluster=empty.scheduler_address)


def test_cli_backfill_on_a_cluster(
    cluster: Any,
    example: tuple[FeatureStore, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engine import backfill_dask

    store, labels = example
    monkeypatch.setattr(backfill_dask, "_CONNECT_TIMEOUT_S", 1.0)
    entities = tmp_path / "labels.parquet"
    labels.to_parquet(entities, index=False)
    refs = ",".join(_all_refs(store))
    args = [
        "--repo",
        str(store.config.repo_path),
        "backfill",
        "--entities",
        str(entities),
        "--features",
        refs,
        "--full-feature-names",
    ]
    assert main([*args, "--out", str(tmp_path / "local.parquet")]) == 0
    address = cluster.scheduler.address
    assert main([*args, "--out", str(tmp_path / "dask.parquet"), "--cluster", address]) == 0
    assert f"on the Dask cluster at {address}" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask.parquet"),
                                  pd.read_parquet(tmp_path / "local.parquet"), check_exact=True)  # fmt: skip
    code = main([*args, "--out", str(tmp_path / "x.parquet"), "--cluster", "tcp://127.0.0.1:9"])
    assert code != 0
    assert "tcp://127.0.0.1:9" in capsys.readouterr().err


def test_read_tasks_sharing_a_worker_sweep_at_once(world: World) -> None:  # noqa: F811
    """Two read tasks at a time in one worker process share its read sweep: each kept
    record still reaches its shard's sweep exactly once."""
    before = set(multiprocessing.active_children())
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as local,  # fmt: skip
        distributed.Client(local, set_as_default=False) as client,
    ):
        got = world.store.get_historical_features(
            world.labels.frame(), ALL_REFS, full_feature_names=True, cluster=client
        )
    assert_identical(got, world.backfill("event_time", False))
    assert not [p for p in multiprocessing.active_children() if p not in before]
