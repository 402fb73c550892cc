"""Import errors name only the bad cells: CSV text parsed by the schema, typed Parquet judged as is.

Each table row is a file's cells and either the exact error (every line) or the values the
event log holds after the import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from connectors.eventlog import EventLogReader
from engine import FeatureStore, InputDataError

T = 1_767_225_628_556  # epoch ms, 2026-01-01T00:00:28.556Z
JAN1 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MS = "epoch milliseconds (e.g. 1767225600000) or ISO-8601 with a zone (e.g. 2026-01-01T00:00:00Z)"
US = (
    "epoch microseconds (e.g. 1767225600000000) or ISO-8601 with a zone (e.g. 2026-01-01T00:00:00Z)"
)
VIEW = """
v = FeatureView("v", entity=customer, source=tx,
                aggregations=[Aggregation("amount", "sum", window="1d")])
"""
ONE_PARTITION = "kafka:\n  partitions: 1\n"  # offsets, and so the log, in input order
# Every kind a CSV cell can be parsed as; the event time in µs.
RICH = {
    "type": "record",
    "name": "Rich",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": None},
        {"name": "flag", "type": ["null", "boolean"], "default": None},
        {"name": "small", "type": ["null", "int"], "default": None},
        {"name": "big", "type": ["null", "long"], "default": None},
        {"name": "seen", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {"name": "blob", "type": ["null", "bytes"], "default": None},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    ],
}
RICH_HEADER = f"""
from engine import Entity, KafkaSource, FeatureView, Aggregation
customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("tx", schema={RICH!r}, timestamp_field="ts")
"""


def csv_lines(n: int = 10, **changes: dict[int, str]) -> list[str]:
    """A CSV file of the conftest schema, ``n`` valid rows with some cells changed."""
    columns: dict[str, Callable[[int], str]] = {
        "customer_id": lambda i: f"c{i}",
        "merchant_id": lambda i: "m1",
        "amount": lambda i: "114.21",
        "qty": str,
        "ts": lambda i: str(T + i),
    }
    rows = [",".join(columns)]
    for i in range(n):
        cells = [changes.get(name, {}).get(i, make(i)) for name, make in columns.items()]
        rows.append(",".join(cells))
    return rows


def rich_lines(*rows: str, header: str = "customer_id,flag,small,big,seen,ts") -> list[str]:
    return [header, *rows]


def refusal(file: Path | None, headline: str, *cells: str) -> str:
    """The exact error text: the headline (after the file), then one line per problem."""
    prefix = f"{file}: " if file is not None else ""
    return prefix + headline + "".join(f"\n  {c}" for c in cells)


def logged(store: FeatureStore) -> list[Any]:
    return list(EventLogReader(store.config.event_log_root).read_all("tx"))


@pytest.fixture
def store(make_repo: Callable[..., Path]) -> FeatureStore:
    return FeatureStore.from_repo(make_repo(VIEW, yaml=ONE_PARTITION))


@pytest.fixture
def rich(make_repo: Callable[..., Path]) -> FeatureStore:
    return FeatureStore.from_repo(make_repo(VIEW, yaml=ONE_PARTITION, header=RICH_HEADER))


HEAD_CSV = "for source 'tx' (nothing imported; line 1 is the header):"
HEAD_ROWS = "for source 'tx' (nothing imported; rows count from 0):"

CSV_REFUSED = [
    pytest.param(
        csv_lines(ts={3: "yesterday", 7: "2026-01-03"}),
        [
            f"2 bad cells {HEAD_CSV}",
            f"line 5 column 'ts': 'yesterday' is not a timestamp; expected {MS}",
            f"line 9 column 'ts': '2026-01-03' has no time zone (ambiguous); expected {MS}",
        ],
        id="issue-12: 10 rows, 2 bad ts cells, valid rows not named",
    ),
    pytest.param(
        csv_lines(amount={1: '"114,21"'}),
        [
            f"1 bad cell {HEAD_CSV}",
            "line 3 column 'amount': '114,21' is not a finite number (double)",
        ],
        id="bad double",
    ),
    pytest.param(
        csv_lines(amount={4: "1e400"}),
        [
            f"1 bad cell {HEAD_CSV}",
            "line 6 column 'amount': '1e400' is not a finite number (double)",
        ],
        id="double overflows to inf",
    ),
    pytest.param(
        csv_lines(ts={0: "2026-01-01T00:00:00"}),
        [
            f"1 bad cell {HEAD_CSV}",
            f"line 2 column 'ts': '2026-01-01T00:00:00' has no time zone (ambiguous); expected {MS}",
        ],
        id="ISO without zone",
    ),
    pytest.param(
        csv_lines(ts={2: "2026-02-30T00:00:00Z"}),
        [
            f"1 bad cell {HEAD_CSV}",
            f"line 4 column 'ts': '2026-02-30T00:00:00Z' is not a timestamp; expected {MS}",
        ],
        id="ISO with zone but no such day",
    ),
    pytest.param(
        csv_lines(ts={1: "-5"}),
        [f"1 bad cell {HEAD_CSV}", "line 3 column 'ts': timestamp -5 is before 1970"],
        id="before 1970",
    ),
    pytest.param(
        csv_lines(30, qty={i: f"q{i}" for i in range(5, 30)}),
        [
            f"25 bad cells {HEAD_CSV}",
            *(f"line {i + 2} column 'qty': 'q{i}' is not an integer (long)" for i in range(5, 25)),
            "... and 5 more bad cells",
        ],
        id="more than 20 bad cells: 20 lines and a count",
    ),
    pytest.param(
        csv_lines(qty={1: "", 2: "1.5", 3: "1e-3"}, ts={1: "x"}),
        [
            f"4 bad cells {HEAD_CSV}",
            "line 3 column 'qty': empty or NA, but the field is not nullable",
            f"line 3 column 'ts': 'x' is not a timestamp; expected {MS}",
            "line 4 column 'qty': '1.5' is not an integer (long)",
            "line 5 column 'qty': '1e-3' is not an integer (long)",
        ],
        id="empty non-nullable cell, fractions; a row's cells in column order",
    ),
    pytest.param(
        csv_lines(ts={2: ""}, customer_id={0: ""}),
        [
            f"2 bad cells {HEAD_CSV}",
            "line 2 column 'customer_id': empty or NA, but the field is not nullable",
            "line 4 column 'ts': timestamp is missing",
        ],
        id="empty key and empty event time",
    ),
    pytest.param(
        csv_lines(qty={0: "99999999999999999999"}),
        [
            f"1 bad cell {HEAD_CSV}",
            "line 2 column 'qty': '99999999999999999999' is out of range for long (64-bit integers)",
        ],
        id="long out of range",
    ),
    pytest.param(
        # a quoted cell spans two lines and a blank line is skipped: line numbers still hold
        [*csv_lines(2, merchant_id={0: '"two\nlines"'}), "", "c9,m1,1.0,9,soon"],
        [f"1 bad cell {HEAD_CSV}", f"line 6 column 'ts': 'soon' is not a timestamp; expected {MS}"],
        id="line numbers across a quoted line break and a blank line",
    ),
    pytest.param(
        [*csv_lines(2)[:1], "c1,m1,1.0,1", *csv_lines(2)[1:]],
        [f"1 bad cell {HEAD_CSV}", "line 2 column 'ts': timestamp is missing"],
        id="short row: its missing cells are empty",
    ),
]


@pytest.mark.parametrize(("lines", "expected"), CSV_REFUSED)
def test_csv_refusal_names_only_the_bad_cells(
    store: FeatureStore, tmp_path: Path, lines: list[str], expected: list[str]
) -> None:
    path = tmp_path / "history.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError) as info:
        store.import_events("tx", path)
    assert str(info.value) == refusal(path, *expected)
    assert not Path(store.config.event_log_root).exists()


CSV_ACCEPTED = [
    pytest.param(
        csv_lines(
            4,
            ts={
                1: "2026-01-01T00:00:00Z",
                2: "2026-01-01T01:00:00+01:00",
                3: " 2026-01-01 00:00:00.250-00:30 ",
            },
        ),
        {"ts": [T, JAN1, JAN1, JAN1 + 1_800_250], "amount": [114.21] * 4},
        id="epoch ms, ISO with Z and with offsets (the text path parses 114.21 too)",
    ),
    pytest.param(
        csv_lines(
            3,
            ts={
                0: "2026-01-01t00:00:00z",
                1: "2026-01-01 01:00+01",
                2: "2026-01-01T00:00:00.1239Z",
            },
        ),
        {"ts": [JAN1, JAN1, JAN1 + 123]},
        id="RFC 3339 lower-case t and z, minutes only, hour offset, sub-ms floored",
    ),
    pytest.param(
        csv_lines(3, amount={0: "", 1: "-.5"}, qty={1: "1e3", 2: "7.0"}),
        {"amount": [None, -0.5, 114.21], "qty": [0, 1000, 7]},
        id="empty nullable double is null; whole numbers in decimal form for a long",
    ),
    pytest.param(
        csv_lines(3, ts={0: "2026-01-01T00:00:00Z", 1: "1.767225600001e12", 2: "+1767225600002.0"}),
        {"ts": [JAN1, JAN1 + 1, JAN1 + 2]},
        id="whole numbers in decimal form among ISO text",
    ),
    pytest.param(
        [*csv_lines(2), "c2,m1,1.5,2,2026-01-01T00:00:00Z"],
        {"ts": [T, T + 1, JAN1], "customer_id": ["c0", "c1", "c2"]},
        id="ISO after epoch rows",
    ),
    pytest.param(
        [
            "customer_id,merchant_id,amount,qty,ts,processed_at",
            f"c1,m1,1,1,{T},2026-01-01T00:00:01Z",
            f"c1,m1,1,2,{T},{JAN1 + 2000}",
        ],
        {"processed_at": [JAN1 + 1000, JAN1 + 2000]},
        id="processed_at takes ISO too",
    ),
]


@pytest.mark.parametrize(("lines", "expected"), CSV_ACCEPTED)
def test_csv_cells_are_parsed_by_the_schema(
    store: FeatureStore, tmp_path: Path, lines: list[str], expected: dict[str, list[Any]]
) -> None:
    path = tmp_path / "history.csv"
    path.write_text("\n".join(lines) + "\n")
    store.import_events("tx", path)
    log = logged(store)
    for column, values in expected.items():
        if column == "processed_at":
            assert [e.processed_at_ms for e in log] == values
            continue
        assert [e.payload[column] for e in log] == values
        if column == "ts":
            assert [e.event_time_ms for e in log] == values


RICH_ACCEPTED = [
    pytest.param(
        rich_lines(
            "a,true,1,9007199254740993,2026-01-01T00:00:00Z,1767225600000000",
            "a,FALSE,,,,2026-01-01T00:00:00.000001Z",
            "a,1,-2147483648,,1767225600000,2026-01-01T01:00:00+01:00",
            "a,0,,-1,,1767225600000001",
            "a,,,,,1767225600000002",
            "a,True,,,,1767225600000003",
        ),
        {
            "flag": [True, False, True, False, None, True],
            "small": [1, None, -(2**31), None, None, None],
            "big": [9_007_199_254_740_993, None, None, -1, None, None],  # exact beyond 2**53
            "seen": [JAN1, None, JAN1, None, None, None],
            "ts": [
                JAN1 * 1000,
                JAN1 * 1000 + 1,
                JAN1 * 1000,
                JAN1 * 1000 + 1,
                JAN1 * 1000 + 2,
                JAN1 * 1000 + 3,
            ],
        },
        id="booleans, int, exact big long, timestamp-millis field, µs event time",
    ),
]


@pytest.mark.parametrize(("lines", "expected"), RICH_ACCEPTED)
def test_csv_rich_cells_are_parsed(
    rich: FeatureStore, tmp_path: Path, lines: list[str], expected: dict[str, list[Any]]
) -> None:
    path = tmp_path / "rich.csv"
    path.write_text("\n".join(lines) + "\n")
    rich.import_events("tx", path)
    log = logged(rich)
    for column, values in expected.items():
        assert [e.payload[column] for e in log] == values
    assert [e.event_time_ms for e in log] == [t // 1000 for t in expected["ts"]]


RICH_REFUSED = [
    pytest.param(
        rich_lines("a,yes,,,,1767225600000000", "a,true,3000000000,,,1767225600000000"),
        [
            f"2 bad cells {HEAD_CSV}",
            "line 2 column 'flag': 'yes' is not a boolean; expected true or false (any case), 1 or 0",
            "line 3 column 'small': 3000000000 is out of range for int (32-bit integers)",
        ],
        id="bad boolean, int out of its 32 bits",
    ),
    pytest.param(
        rich_lines("a,,,,yesterday,1767225600000000", "a,,,,,2026-01-01T00:00:00"),
        [
            f"2 bad cells {HEAD_CSV}",
            f"line 2 column 'seen': 'yesterday' is not a timestamp; expected {MS}",
            f"line 3 column 'ts': '2026-01-01T00:00:00' has no time zone (ambiguous); expected {US}",
        ],
        id="timestamp-millis field and µs event time say their units",
    ),
    pytest.param(
        rich_lines("a,1767225600000000,qq", header="customer_id,ts,blob"),
        [
            "1 column problem for source 'tx' (nothing imported):",
            "column 'blob': a bytes field cannot be read from CSV text; use Parquet",
        ],
        id="bytes from CSV",
    ),
]


@pytest.mark.parametrize(("lines", "expected"), RICH_REFUSED)
def test_csv_rich_refusals(
    rich: FeatureStore, tmp_path: Path, lines: list[str], expected: list[str]
) -> None:
    path = tmp_path / "rich.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError) as info:
        rich.import_events("tx", path)
    assert str(info.value) == refusal(path, *expected)


def frame(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "merchant_id": ["m1"] * n,
            "amount": np.full(n, 114.21),
            "qty": np.arange(n, dtype="int64"),
            "ts": T + np.arange(n, dtype="int64"),
        }
    )


TEXT_HINT = (
    "(text is parsed in CSV files only: convert a DataFrame's or Parquet file's columns "
    "first, e.g. with pd.to_numeric or pd.to_datetime(..., utc=True))"
)
PARQUET_REFUSED = [
    pytest.param(
        frame().assign(qty=[str(i) for i in range(10)]),
        [
            "1 column problem for source 'tx' (nothing imported):",
            "column 'qty': holds text, expected an integer (long); a DataFrame's or Parquet "
            "file's text is not parsed (only a CSV file's is): convert the column",
        ],
        id="string column of numbers for a long: refused, not guessed",
    ),
    pytest.param(
        frame().assign(amount=[114.21, 1.0, np.inf, *[2.0] * 7]),
        [
            f"1 bad cell {HEAD_ROWS}",
            "row 2 column 'amount': expected a finite number (double), got inf",
        ],
        id="bad double",
    ),
    pytest.param(
        frame().assign(qty=[0.0, np.nan, *range(2, 10)]),
        [f"1 bad cell {HEAD_ROWS}", "row 1 column 'qty': null, but the field is not nullable"],
        id="null in a non-nullable field",
    ),
    pytest.param(
        frame(30).assign(ts=[*range(-23, 0), *(T + np.arange(7))]),
        [
            f"23 bad cells {HEAD_ROWS}",
            *(f"row {r} column 'ts': timestamp {r - 23} is before 1970" for r in range(20)),
            "... and 3 more bad cells",
        ],
        id="more than 20 bad cells",
    ),
]


@pytest.mark.parametrize(("df", "expected"), PARQUET_REFUSED)
def test_parquet_refusals_are_row_numbered(
    store: FeatureStore, tmp_path: Path, df: pd.DataFrame, expected: list[str]
) -> None:
    path = tmp_path / "history.parquet"
    df.to_parquet(path)
    with pytest.raises(InputDataError) as info:
        store.import_events("tx", path)
    assert str(info.value) == refusal(path, *expected)
    assert not Path(store.config.event_log_root).exists()


PARQUET_ACCEPTED = [
    pytest.param(
        frame(3).assign(
            ts=pd.to_datetime([JAN1, JAN1 + 1, T], unit="ms", utc=True).tz_convert("Asia/Kolkata")
        ),
        {"ts": [JAN1, JAN1 + 1, T]},
        id="tz-aware datetimes",
    ),
    pytest.param(
        frame(3).assign(ts=pd.to_datetime([JAN1, JAN1 + 1, T], unit="ms")),
        {"ts": [JAN1, JAN1 + 1, T]},
        id="datetimes without a zone mean UTC, as in the backfill",
    ),
    pytest.param(
        frame(3).assign(amount=[1.5, np.nan, 2.0], qty=[1.0, 2.0, 3.0]),
        {"amount": [1.5, None, 2.0], "qty": [1, 2, 3]},
        id="null in a nullable double, whole floats for a long",
    ),
]


@pytest.mark.parametrize(("df", "expected"), PARQUET_ACCEPTED)
def test_parquet_accepts_typed_values(
    store: FeatureStore, tmp_path: Path, df: pd.DataFrame, expected: dict[str, list[Any]]
) -> None:
    path = tmp_path / "history.parquet"
    df.to_parquet(path)
    store.import_events("tx", path)
    log = logged(store)
    for column, values in expected.items():
        assert [e.payload[column] for e in log] == values
    assert [e.event_time_ms for e in log] == [e.payload["ts"] for e in log]


def test_dataframe_refusal_has_no_file_and_hints_at_text(store: FeatureStore) -> None:
    df = frame().assign(qty=["7", *range(1, 10)], ts=[*(T + np.arange(9)), "2026-01-01T00:00:00Z"])
    with pytest.raises(InputDataError) as info:
        store.import_events("tx", df)
    assert str(info.value) == refusal(
        None,
        f"2 bad cells {HEAD_ROWS}",
        "row 0 column 'qty': expected an integer (long), got '7'",
        "row 9 column 'ts': expected epoch milliseconds (an integer) or a datetime with a "
        "time zone, got '2026-01-01T00:00:00Z'",
        TEXT_HINT,
    )


def test_dataframe_mixed_datetimes_need_a_zone(store: FeatureStore) -> None:
    aware = pd.Timestamp(JAN1, unit="ms", tz="UTC")
    df = frame(3).assign(ts=pd.Series([aware, T, aware.tz_localize(None)], dtype=object))
    with pytest.raises(InputDataError) as info:
        store.import_events("tx", df)
    assert str(info.value) == refusal(
        None,
        f"1 bad cell {HEAD_ROWS}",
        "row 2 column 'ts': expected epoch milliseconds (an integer) or a datetime with a time "
        "zone, got Timestamp('2026-01-01 00:00:00') (no time zone, so ambiguous)",
    )
    store.import_events("tx", df.iloc[:2])
    assert [e.event_time_ms for e in logged(store)] == [JAN1, T]


def test_a_csv_frame_cut_after_reading_is_judged_as_a_dataframe(
    store: FeatureStore, tmp_path: Path
) -> None:
    """Line numbers are only claimed while the frame's rows are still the file's rows."""
    from engine.frames import read_table

    path = tmp_path / "history.csv"
    path.write_text("\n".join(csv_lines(4, qty={3: "x"})) + "\n")
    whole = read_table(path)
    with pytest.raises(InputDataError) as info:
        store.import_events("tx", whole)
    assert str(info.value) == refusal(
        path, f"1 bad cell {HEAD_CSV}", "line 5 column 'qty': 'x' is not an integer (long)"
    )
    with pytest.raises(InputDataError) as info:
        store.import_events("tx", whole.iloc[2:])
    assert str(info.value) == refusal(
        None,
        "1 column problem for source 'tx' (nothing imported):",
        "column 'qty': holds text, expected an integer (long); a DataFrame's or Parquet "
        "file's text is not parsed (only a CSV file's is): convert the column",
    )
