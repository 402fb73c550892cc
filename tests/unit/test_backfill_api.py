"""get_historical_features / skewless backfill: inputs, outputs, errors a user meets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import EventLogMissing, FeatureRefError, FeatureStore, InputDataError
from engine.cli import main

VIEW = """
v = FeatureView("v", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="1h"),
    Aggregation("qty", "last", window="lifetime"),
])
"""
T0 = 1_700_000_000_000
H = 3_600_000


@pytest.fixture
def store(make_repo: Callable[..., Path]) -> FeatureStore:
    s = FeatureStore.from_repo(make_repo(VIEW, yaml="kafka:\n  partitions: 2\n"))
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "a"],
            "merchant_id": ["m"] * 4,
            "amount": [1.0, 2.0, 4.0, 8.0],
            "qty": [1, 2, 3, 4],
            "ts": [T0, T0 + 1000, T0 + 1000, T0 + 2 * H],
        }
    )
    s.import_events("tx", events)
    return s


def labels(times: list[object]) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": ["a", "b", "zz", "a"][: len(times)], "event_timestamp": times}
    )


def test_values_order_and_self_exclusion(store: FeatureStore) -> None:
    df = labels([T0 + 1000, T0 + 1001, T0 + 5000, T0 + 2 * H + 1])
    out = store.get_historical_features(df, ["v:amount_sum_1h", "v:qty_last_lifetime"], workers=1)
    assert list(out.columns) == [
        "customer_id",
        "event_timestamp",
        "amount_sum_1h",
        "qty_last_lifetime",
    ]
    assert out["customer_id"].tolist() == ["a", "b", "zz", "a"]  # input order kept
    # a at T0+1000 does not see its own event at T0+1000; b sees its event 1 ms later
    assert out["amount_sum_1h"].tolist() == [1.0, 4.0, 0.0, 8.0]
    assert out["qty_last_lifetime"].tolist()[:2] == [1, 3]
    assert pd.isna(out["qty_last_lifetime"][2])  # unknown entity: empty default (null)


def test_timestamp_forms_agree(store: FeatureStore) -> None:
    ints = [T0 + 1000, T0 + 1001, T0 + 2 * H + 1]
    aware = pd.to_datetime(ints, unit="ms", utc=True).tz_convert("Europe/Paris")
    naive = pd.to_datetime(ints, unit="ms")
    refs = ["v:amount_sum_1h"]
    results = [
        store.get_historical_features(labels(list(t)), refs, workers=1)["amount_sum_1h"].tolist()
        for t in (ints, aware, naive)
    ]
    assert results[0] == results[1] == results[2] == [1.0, 4.0, 0.0]


def test_full_feature_names_and_workers(store: FeatureStore) -> None:
    df = labels([T0 + 5000, T0 + 5000])
    one = store.get_historical_features(df, ["v:amount_sum_1h"], full_feature_names=True, workers=1)
    two = store.get_historical_features(df, ["v:amount_sum_1h"], full_feature_names=True, workers=2)
    assert "v__amount_sum_1h" in one.columns
    assert one.equals(two)


def test_clear_errors(store: FeatureStore, make_repo: Callable[..., Path]) -> None:
    df = labels([T0])
    with pytest.raises(FeatureRefError, match="no view 'nope'"):
        store.get_historical_features(df, ["nope:x"])
    with pytest.raises(InputDataError, match=r"lacks join key column\(s\) \['customer_id'\]"):
        store.get_historical_features(df.drop(columns=["customer_id"]), ["v:amount_sum_1h"])
    with pytest.raises(InputDataError, match="no timestamp column 'event_timestamp'"):
        store.get_historical_features(
            df.rename(columns={"event_timestamp": "t"}), ["v:amount_sum_1h"]
        )
    with pytest.raises(InputDataError, match="row 0: timestamp is null"):
        store.get_historical_features(labels([None]), ["v:amount_sum_1h"])
    with pytest.raises(InputDataError, match="mode must be one of"):
        store.get_historical_features(df, ["v:amount_sum_1h"], mode="wall")  # type: ignore[arg-type]
    fresh = FeatureStore.from_repo(make_repo(VIEW))
    fresh_log = Path(fresh.config.event_log_root)
    if fresh_log.exists():  # the fixture's import went to the same repo folder
        import shutil

        shutil.rmtree(fresh_log)
    with pytest.raises(EventLogMissing, match="skewless import"):
        fresh.get_historical_features(df, ["v:amount_sum_1h"])


BY_QTY = """
by_qty = Entity("by_qty", join_keys=["qty"])
q = FeatureView("q", entity=by_qty, source=tx, aggregations=[
    Aggregation("amount", "sum", window="1h"),
])
"""


def test_label_keys_of_the_wrong_type_are_refused_not_left_empty(
    make_repo: Callable[..., Path],
) -> None:
    """A label whose key could match no event — a string for an integer join key, an int for
    a string one, a fraction, a bool, a null (pandas' NA too) — is an error naming the column,
    the row and the value, as ``get_online_features`` has it: never a training row that
    quietly holds the empty default. Integral floats are the integer they equal."""
    s = FeatureStore.from_repo(make_repo(VIEW + BY_QTY, yaml="kafka:\n  partitions: 2\n"))
    s.import_events("tx", pd.DataFrame({
        "customer_id": ["a", "b"], "merchant_id": ["m", "m"], "amount": [1.0, 4.0],
        "qty": [7, 9], "ts": [T0, T0 + 1000],
    }))  # fmt: skip

    def frame(column: str, keys: object) -> pd.DataFrame:
        keys = pd.Series(keys) if not isinstance(keys, pd.Series) else keys
        return pd.DataFrame({column: keys, "event_timestamp": [T0 + 5000] * len(keys)})

    want = [1.0, 4.0, 0.0]
    for keys in ([7, 9, 8], [7.0, 9.0, 8.0], pd.array([7, 9, 8], dtype="Int64"),
                 pd.Series([7, 9.0, 8], dtype=object),
                 pd.Series([np.int64(7), np.int32(9), 8], dtype=object)):  # fmt: skip
        got = s.get_historical_features(frame("qty", keys), ["q:amount_sum_1h"], workers=1)
        assert got["amount_sum_1h"].tolist() == want, keys
    limits = frame("qty", pd.Series([7, 2**63 - 1, -(2**63)], dtype=object))  # a long's limits
    got = s.get_historical_features(limits, ["q:amount_sum_1h"], workers=1)
    assert got["amount_sum_1h"].tolist() == [1.0, 0.0, 0.0]
    refused = [
        ("qty", ["7"], r"column 'qty' row 0: join key must be an integer .*got str '7'"),
        ("qty", [7.0, 9.5], r"column 'qty' row 1: join key must be an integer .*got float 9.5"),
        ("qty", [7.0, float("inf")], r"column 'qty' row 1: .* an integer .*got float inf"),
        ("qty", pd.Series([7, True], dtype=object), r"row 1: .*an integer .*got bool True"),
        ("qty", pd.array([7, None], dtype="Int64"), r"column 'qty' row 1: null join key"),
        ("customer_id", ["a", 7], r"column 'customer_id' row 1: join key must be a string .*got int 7"),
        ("customer_id", [None, "a"], r"column 'customer_id' row 0: null join key"),
        ("qty", [7, 2**63], r"column 'qty' row 1: join key 9223372036854775808 is outside "
                            r"the 64-bit range of its source field"),
        ("qty", [-(2**63) - 1], r"row 0: join key -9223372036854775809 is outside the 64-bit"),
    ]  # fmt: skip
    for column, keys, message in refused:
        view = "q" if column == "qty" else "v"
        with pytest.raises(InputDataError, match=message):
            s.get_historical_features(frame(column, keys), [f"{view}:amount_sum_1h"])


def test_cli_plan_import_backfill(
    make_repo: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.registry import write_applied

    repo = make_repo(VIEW)
    assert main(["--repo", str(repo), "plan"]) == 0
    assert "nothing applied yet" in capsys.readouterr().out
    store = FeatureStore.from_repo(repo)
    write_applied(store.config.registry_path, store.plan)  # what `apply` records (needs Kafka)
    assert main(["--repo", str(repo), "plan"]) == 0
    assert "no changes since the last apply" in capsys.readouterr().out
    events = tmp_path / "events.csv"
    pd.DataFrame(
        {
            "customer_id": ["a", "a"],
            "merchant_id": ["m", "m"],
            "amount": [1.5, 2.5],
            "qty": [1, 2],
            "ts": [T0, T0 + 10],
        }
    ).to_csv(events, index=False)
    assert main(["--repo", str(repo), "import", "tx", str(events)]) == 0
    assert "imported 2 rows into tx" in capsys.readouterr().out
    entities = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0 + 11]}).to_csv(entities, index=False)
    out = tmp_path / "train.parquet"
    code = main(
        [
            "--repo",
            str(repo),
            "backfill",
            "--entities",
            str(entities),
            "--features",
            "v:amount_sum_1h,v:qty_last_lifetime",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = pd.read_parquet(out)
    assert result["amount_sum_1h"].tolist() == [4.0]
    assert result["qty_last_lifetime"].tolist() == [2]
    assert (
        main(
            [
                "--repo",
                str(repo),
                "backfill",
                "--entities",
                str(entities),
                "--features",
                "v:nope",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "view 'v' has no feature 'nope'" in capsys.readouterr().err
    (repo / "defs.py").write_text((repo / "defs.py").read_text().replace('"1h"', '"2h"'))
    assert main(["--repo", str(repo), "plan"]) == 0
    assert "CHANGED (rebuild online)" in capsys.readouterr().out


def test_spilled_sort_gives_identical_values(store: FeatureStore) -> None:
    from connectors.eventlog import EventLogReader
    from engine import backfill

    view = store.plan.views["v"]
    request = backfill.ViewRequest(
        view="v", entities=[("a",), ("b",), ("a",)], times_ms=[T0 + 1001, T0 + 1001, T0 + 2 * H + H // 2],
        indices=(0, 1),
    )  # fmt: skip
    log = EventLogReader(store.config.event_log_root)
    results = [
        backfill.run(store.plan, log, [request], mode=m, workers=w, spill_items=s)
        for m in backfill.MODES
        for w in (1, 2)
        for s in (1, 2, 1_000)
    ]
    assert all(r == results[0] for r in results)
    assert results[0][0] == [[3.0, 2], [4.0, 3], [8.0, 4]]
    assert view.features == ("amount_sum_1h", "qty_last_lifetime")


def test_entity_spanning_partitions_is_merged(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    """After a topic grows, one entity's events sit in two partitions: values stay exact."""
    events = pd.DataFrame({
        "customer_id": ["a"] * 6,
        "merchant_id": ["m"] * 6,
        "amount": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
        "qty": [1, 2, 3, 4, 5, 6],
        "ts": [T0 + k * 60_000 for k in range(6)],
    })  # fmt: skip
    repo = make_repo(VIEW, yaml="kafka:\n  partitions: 1\n")
    single = FeatureStore.from_repo(repo)
    single.import_events("tx", events)
    df = labels([T0 + 10 * 60_000])
    refs = ["v:amount_sum_1h", "v:qty_last_lifetime"]
    expected = single.get_historical_features(df, refs, workers=1)
    assert expected["amount_sum_1h"].tolist() == [63.0]

    import os

    grown = tmp_path / "grown"
    os.environ["SKEWLESS_STATE_DIR"] = str(grown)
    try:
        for n, chunk in ((1, events.iloc[:3]), (7, events.iloc[3:])):
            os.environ["SKEWLESS_KAFKA_PARTITIONS"] = str(n)
            FeatureStore.from_repo(repo).import_events("tx", chunk)
        os.environ.pop("SKEWLESS_KAFKA_PARTITIONS")
        store = FeatureStore.from_repo(repo)
        from connectors.eventlog import EventLogReader

        parts = EventLogReader(store.config.event_log_root).partitions("tx")
        assert len(parts) == 2, parts  # "a" landed in two partitions
        for workers in (1, 2):
            got = store.get_historical_features(df, refs, workers=workers)
            assert got.equals(expected)
    finally:
        os.environ.pop("SKEWLESS_STATE_DIR", None)
        os.environ.pop("SKEWLESS_KAFKA_PARTITIONS", None)
