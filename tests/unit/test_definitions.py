"""Definition validation: every DESIGN §2 rule, all errors at once, each naming file/view/field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine import DefinitionError, FeatureStore
from engine.errors import FeatureRefError


def problems(repo: Path) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        FeatureStore.from_repo(repo)
    return list(info.value.problems)


def test_valid_view_compiles_with_default_hops_and_names(make_repo: Callable[..., Path]) -> None:
    repo = make_repo("""
        v = FeatureView("spend", entity=customer, source=tx, aggregations=[
            Aggregation("amount", "sum", window="30d"),
            Aggregation("amount", "mean", window="1h", hop="5m"),
            Aggregation("qty", "last_n", window="7d", n=3),
            Aggregation("amount", "count", window="lifetime", name="n_all"),
        ])
    """)
    view = FeatureStore.from_repo(repo).plan.views["spend"]
    assert view.features == ("amount_sum_30d", "amount_mean_1h", "qty_last_3_7d", "n_all")
    assert [a.hop_ms for a in view.aggregations] == [86_400_000, 300_000, 3_600_000, None]
    assert view.allowed_lateness_ms == 30 * 86_400_000
    assert len(view.fingerprint) == 16


def test_all_errors_reported_at_once_with_file_view_and_field(
    make_repo: Callable[..., Path],
) -> None:
    repo = make_repo("""
        v = FeatureView("spend", entity=customer, source=tx, aggregations=[
            Aggregation("amount", "median", window="1h"),
            Aggregation("amount", "sum", window="1h", hop="7m"),
            Aggregation("nope", "sum", window="1d"),
            Aggregation("amount", "sum", window="1d"),
            Aggregation("amount", "sum", window="1d"),
            Aggregation("amount", "last_n", window="1d"),
            Aggregation("amount", "sum", window="3 days"),
            Aggregation("merchant_id", "sum", window="1d"),
            Aggregation("amount", "sum", window="lifetime", hop="1h"),
        ])
    """)
    found = problems(repo)
    joined = "\n".join(found)
    assert (
        "repo/defs.py:6 view 'spend' aggregation[0] function: unknown function 'median'" in joined
    )
    assert "aggregation[1] window: hop '7m' does not divide '1h'" in joined
    assert "aggregation[2] column: 'nope' is not in the schema of source 'tx'" in joined
    assert "aggregation[4] name: duplicate feature name 'amount_sum_1d'" in joined
    assert "aggregation[5] n: last_n needs n=" in joined
    assert "aggregation[6] window: expected a duration" in joined
    assert (
        "aggregation[7] column: sum needs a column of kind float/int, 'merchant_id' is str"
        in joined
    )
    assert "aggregation[8] hop: a lifetime window has no hop" in joined
    assert len(found) == 8


def test_transform_must_be_a_plain_named_function(make_repo: Callable[..., Path]) -> None:
    repo = make_repo("""
        class Callable:
            def __call__(self, row):
                return row
        a = FeatureView("a", entity=customer, source=tx, transform=lambda r: r,
                        aggregations=[Aggregation("amount", "sum", window="1d")])
        b = FeatureView("b", entity=customer, source=tx, transform=Callable(),
                        aggregations=[Aggregation("amount", "sum", window="1d")])
    """)
    joined = "\n".join(problems(repo))
    assert "view 'a' transform: a lambda cannot be fingerprinted" in joined
    assert "view 'b' transform: expected a plain Python function" in joined


def test_source_and_entity_problems(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    header = """
from engine import Entity, KafkaSource, FeatureView, Aggregation
customer = Entity("customer", join_keys=["customer_id"])
shop = Entity("shop", join_keys=["shop_id"])
missing = KafkaSource("missing", schema="schemas/none.avsc", timestamp_field="ts")
bad_ts = KafkaSource("bad_ts", schema={"type": "record", "name": "R", "fields": [
    {"name": "customer_id", "type": "string"}, {"name": "ts", "type": "string"}]},
    timestamp_field="ts")
no_ts = KafkaSource("no_ts", schema={"type": "record", "name": "R2", "fields": [
    {"name": "customer_id", "type": "string"}, {"name": "when", "type": "long"}]},
    timestamp_field="ts", format="xml")
"""
    repo = make_repo(
        """
        a = FeatureView("a", entity=customer, source=missing,
                        aggregations=[Aggregation("x", "count", window="1d")])
        b = FeatureView("b", entity=customer, source=bad_ts,
                        aggregations=[Aggregation("ts", "count", window="1d")])
        c = FeatureView("c", entity=shop, source=no_ts,
                        aggregations=[Aggregation("when", "count", window="1d")])
    """,
        header=header,
    )
    joined = "\n".join(problems(repo))
    assert (
        "source 'missing' schema: schema file" in joined and "none.avsc' does not exist" in joined
    )
    assert "source 'bad_ts' timestamp_field: 'ts' must be a non-null Avro long" in joined
    assert "source 'no_ts' timestamp_field: 'ts' is not a field of the schema" in joined
    assert "source 'no_ts' format: expected 'avro' or 'json', got 'xml'" in joined


def test_join_key_missing_from_schema(make_repo: Callable[..., Path]) -> None:
    repo = make_repo("""
        shop = Entity("shop", join_keys=["shop_id"])
        v = FeatureView("v", entity=shop, source=tx,
                        aggregations=[Aggregation("amount", "sum", window="1d")])
    """)
    joined = "\n".join(problems(repo))
    assert "view 'v' entity: join key 'shop_id' of entity 'shop' is not in the schema" in joined


def test_import_failure_reported_with_line(make_repo: Callable[..., Path]) -> None:
    repo = make_repo("""
        x = 1
        raise RuntimeError("boom")
    """)
    (message,) = problems(repo)
    assert "repo/defs.py:7 importing the module failed: RuntimeError: boom" in message


def test_avsc_path_resolves_relative_to_repo(make_repo: Callable[..., Path]) -> None:
    header = """
from engine import Entity, KafkaSource, FeatureView, Aggregation
customer = Entity("customer", join_keys=["customer_id"])
tx = KafkaSource("tx", schema="schemas/tx.avsc", timestamp_field="ts")
"""
    repo = make_repo(
        """
        v = FeatureView("v", entity=customer, source=tx,
                        aggregations=[Aggregation("amount", "sum", window="1d")])
    """,
        header=header,
    )
    (repo / "schemas").mkdir()
    (repo / "schemas" / "tx.avsc").write_text(
        '{"type": "record", "name": "T", "fields": [{"name": "customer_id", "type": "string"},'
        '{"name": "amount", "type": "double"},'
        '{"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}}]}'
    )
    plan = FeatureStore.from_repo(repo).plan
    assert plan.sources["tx"].timestamp_divisor == 1000
    assert plan.sources["tx"].key_fields == ("customer_id",)


def test_fingerprint_changes_with_what_changes_values(make_repo: Callable[..., Path]) -> None:
    body = """
        def clean(row):
            return row{extra}
        v = FeatureView("v", entity=customer, source=tx, transform=clean,
                        aggregations=[Aggregation("amount", "sum", window="{window}")])
    """
    fp = []
    for extra, window in (("", "1d"), ("", "1d"), ("  # changed", "1d"), ("", "2d")):
        repo = make_repo(body.replace("{extra}", extra).replace("{window}", window))
        fp.append(FeatureStore.from_repo(repo).plan.views["v"].fingerprint)
    assert fp[0] == fp[1]
    assert fp[2] != fp[0]
    assert fp[3] != fp[0]


def test_fingerprint_follows_module_constants_and_helpers(make_repo: Callable[..., Path]) -> None:
    """A transform's value depends on the constants and helpers it reads, not only its text."""
    body = """
        RATES = {"EUR": {rate}}
        UNRELATED = {unrelated}
        def scale(x):
            return x * {factor}
        def clean(row):
            return dict(row, amount=scale(row["amount"]) * RATES.get("EUR", 1.0))
        v = FeatureView("v", entity=customer, source=tx, transform=clean,
                        aggregations=[Aggregation("amount", "sum", window="1d")])
    """

    def fingerprint(rate: str, factor: str, unrelated: str) -> str:
        text = body.replace("{rate}", rate).replace("{factor}", factor)
        repo = make_repo(text.replace("{unrelated}", unrelated))
        return FeatureStore.from_repo(repo).plan.views["v"].fingerprint

    base = fingerprint("1.08", "2", "1")
    assert fingerprint("1.08", "2", "1") == base
    assert fingerprint("1.09", "2", "1") != base  # a constant the transform reads
    assert fingerprint("1.08", "3", "1") != base  # a helper function it calls
    assert fingerprint("1.08", "2", "2") == base  # a constant it never reads


def test_json_source_with_a_field_it_cannot_decode_is_refused(
    make_repo: Callable[..., Path],
) -> None:
    schema = {
        "type": "record",
        "name": "J",
        "fields": [
            {"name": "customer_id", "type": "string"},
            {"name": "amount", "type": ["null", "double"], "default": None},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "ts", "type": "long"},
        ],
    }
    header = (
        "from engine import Entity, KafkaSource, FeatureView, Aggregation\n"
        'customer = Entity("customer", join_keys=["customer_id"])\n'
        f'tx = KafkaSource("tx", schema={schema!r}, timestamp_field="ts", format="json")\n'
    )
    body = """
        v = FeatureView("v", entity=customer, source=tx,
                        aggregations=[Aggregation("amount", "sum", window="1d")])
    """
    (problem,) = problems(make_repo(body, header=header))
    assert "source 'tx' schema: field 'tags' has Avro type 'array'" in problem
    assert "format='avro'" in problem
    # the same schema read as Avro is fine
    avro = make_repo(body, header=header.replace(', format="json"', ""))
    assert FeatureStore.from_repo(avro).plan.views["v"].features == ("amount_sum_1d",)


def test_feature_refs_resolve_or_fail_clearly(make_repo: Callable[..., Path]) -> None:
    repo = make_repo("""
        v = FeatureView("v", entity=customer, source=tx,
                        aggregations=[Aggregation("amount", "sum", window="1d")])
    """)
    plan = FeatureStore.from_repo(repo).plan
    ((view, index),) = plan.resolve(["v:amount_sum_1d"])
    assert (view.name, index) == ("v", 0)
    with pytest.raises(FeatureRefError, match="no view 'w'") as info:
        plan.resolve(["w:x", "v:nope", "bare"])
    text = str(info.value)
    assert "view 'v' has no feature 'nope'; it has: amount_sum_1d" in text
    assert "'bare' is not of the form 'view:feature'" in text


def test_example_definitions_compile() -> None:
    store = FeatureStore.from_repo(Path(__file__).parents[2] / "definitions")
    functions = {a.function for v in store.plan.views.values() for a in v.aggregations}
    assert functions == {
        "count",
        "sum",
        "mean",
        "min",
        "max",
        "first",
        "last",
        "first_n",
        "last_n",
        "count_distinct",
        "approx_count_distinct",
        "variance",
        "stddev",
    }
    assert {v.entity for v in store.plan.views.values()} == {"customer", "merchant"}
