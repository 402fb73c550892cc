"""Errors a newcomer meets without any service: one `error:` line that says what and what next.

The CLI runs in-process (``engine.cli.main``): an exception that escaped as a traceback
would fail the test. Services-down errors are in tests/integration/test_service_errors.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine import FeatureStore
from engine.cli import main
from engine.demo import EXAMPLE_DEFINITIONS
from engine.errors import FeatureRefError


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example definitions; services at ports nothing listens on."""
    for name in ("SKEWLESS_EVENT_LOG", "SKEWLESS_STATE_DIR", "SKEWLESS_REPO"):
        monkeypatch.delenv(name, raising=False)
    dest = tmp_path / "definitions"
    shutil.copytree(EXAMPLE_DEFINITIONS, dest, ignore=shutil.ignore_patterns(".skewless"))
    return dest


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / "payments.py"
    text = path.read_text()
    assert old in text, f"definitions/payments.py changed: update this test ({old!r})"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "anchor", "expected"),
    [
        (
            'Aggregation("amount", "mean", window="1h", hop="5m")',
            'Aggregation("amount", "mean", window="1h", hop="7m")',
            "customer_spend = FeatureView(",
            "definitions/payments.py:{line} view 'customer_spend' aggregation[2] window: "
            "hop '7m' does not divide '1h'",
        ),
        (
            'Aggregation("amount", "stddev", window="30d")',
            'Aggregation("amount", "stdev", window="30d")',
            "customer_spend = FeatureView(",
            "definitions/payments.py:{line} view 'customer_spend' aggregation[7] function: "
            "unknown function 'stdev' (did you mean 'stddev'?); known: count, sum,",
        ),
        (
            "USD_PER_UNIT = {",
            "USD_PER_UNIT = {{",
            "USD_PER_UNIT = {",
            "definitions/payments.py:{line} syntax error: '{{' was never closed",
        ),
        (
            "customer = Entity(",
            "customer = Entityy(",
            "customer = Entity(",
            "definitions/payments.py:{line} importing the module failed: NameError: "
            "name 'Entityy' is not defined",
        ),
    ],
)
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_definitions_error_names_file_line_view_and_field(
    repo: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    old: str,
    new: str,
    anchor: str,
    expected: str,
) -> None:
    lines = (repo / "payments.py").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, start=1) if text.startswith(anchor))
    _edit(repo, old, new)
    code, err = _run(capsys, "--repo", str(repo), command)
    assert code == 1
    assert err.startswith("error: " + expected.format(line=line))
    assert err.count("\n") == 1, err  # one line, no traceback


def test_unknown_feature_ref_suggests_the_close_name(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(capsys, "--repo", str(repo), "get", "customer_spend:amount_sum_3d",
                     "customer_id=c1")  # fmt: skip
    assert code == 1
    assert "no feature 'amount_sum_3d' (did you mean 'amount_sum_30d'?)" in err
    code, err = _run(capsys, "--repo", str(repo), "get", "customer_spnd:amount_sum_30d",
                     "customer_id=c1")  # fmt: skip
    assert code == 1
    assert "no view 'customer_spnd' (did you mean 'customer_spend:amount_sum_30d'?)" in err


def test_feature_ref_suggestions_across_views() -> None:
    plan = FeatureStore.from_repo(EXAMPLE_DEFINITIONS, environ={}).plan
    with pytest.raises(FeatureRefError) as info:
        plan.resolve(["customer_spend:amount_usd_sum_1d"])
    assert "it is a feature of 'customer_activity:amount_usd_sum_1d'" in str(info.value)
    with pytest.raises(FeatureRefError) as info:
        plan.resolve(["amount_sum_1h"])
    assert (
        "(did you mean 'customer_online:amount_sum_1h' or 'merchant_risk:amount_sum_1h'?)"
        in str(info.value)
    )
    with pytest.raises(FeatureRefError) as info:
        plan.resolve(["customer_spend:zzz"])
    assert "did you mean" not in str(info.value)  # nothing close: the list of features only
    assert "it has: amount_sum_30d," in str(info.value)


def test_backfill_before_any_event_is_logged_says_how_to_get_a_log(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("customer_id,event_timestamp\nc00001,2026-01-02T00:00:00Z\n")
    code, err = _run(capsys, "--repo", str(repo), "backfill", "--entities", str(labels),
                     "--features", "customer_spend:amount_sum_30d",
                     "--out", str(tmp_path / "out.parquet"))  # fmt: skip
    assert code == 1
    assert err.count("\n") == 1, err
    assert "no event log for source 'transactions'" in err
    assert str(repo / ".skewless" / "log" / "transactions") in err
    assert "`skewless import`" in err and "stream workers" in err
    assert not (tmp_path / "out.parquet").exists()


def test_the_worker_passes_a_refused_connection_once_whatever_its_elapsed_time() -> None:
    """librdkafka retries a refused connection within milliseconds; the lines differ only in
    "(after Nms in state CONNECT)". The worker's filter lets the first through, not the rest;
    a different broker's failure still gets its own line."""
    import logging

    from engine.cli import _RepeatFilter

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("skewless.kafka.librdkafka", logging.ERROR, "", 0, text, (), None)

    line = (
        "FAIL [skewless.payments#producer-2] [thrd:127.0.0.1:{port}/bootstrap]: "
        "127.0.0.1:{port}/bootstrap: Connect to ipv4#127.0.0.1:{port} failed: "
        "Connection refused (after {ms}ms in state CONNECT)"
    )
    keep = _RepeatFilter(window_s=60.0)
    passed = [keep.filter(record(line.format(port=38307, ms=ms))) for ms in (0, 3, 1, 4, 2)]
    assert passed == [True, False, False, False, False]
    assert keep.filter(record(line.format(port=38308, ms=0)))
    assert keep.filter(record("another message")) and not keep.filter(record("another message"))
