"""The CLI's conventions (issue 12): version, help, flag position, option help, exit codes.

Conventions are checked through the real console script (``<venv>/bin/skewless``, what a
user types), the rest in-process through ``engine.cli.main``. No service is needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import click
import pandas as pd
import pytest

from engine import cli as cli_module
from engine.cli import EXIT_ERROR, EXIT_OK, EXIT_UNVERIFIABLE, EXIT_USAGE, cli, main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "skewless"

VIEW = """
v = FeatureView("v", entity=customer, source=tx, aggregations=[
    Aggregation("amount", "sum", window="1h"),
])
"""


def run(
    *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The console script a user runs, with SKEWLESS_REPO unset unless ``env`` sets it."""
    assert SCRIPT.exists(), f"console script missing: {SCRIPT} (pip install -e . installs it)"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    base.update(env or {})
    return subprocess.run(
        [str(SCRIPT), *argv], capture_output=True, text=True, timeout=120, cwd=cwd, env=base
    )


def test_version_prints_the_installed_version() -> None:
    for flag in ("--version", "-V"):
        done = run(flag)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"skewless {version('skewless')}"


def test_bare_skewless_prints_help_and_exits_0() -> None:
    done = run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: skewless [OPTIONS] COMMAND")
    for command in cli.commands:
        assert f"\n  {command} " in done.stdout, f"{command} missing from the command list"
    # the description speaks to a user: what it does for them, and where to start
    assert "training" in done.stdout and "skewless demo" in done.stdout


@pytest.mark.parametrize("position", ["before", "after"])
def test_repo_is_accepted_before_or_after_the_command(
    make_repo: Callable[..., Path], tmp_path: Path, position: str
) -> None:
    repo = make_repo(VIEW)
    argv = ["--repo", str(repo), "plan"] if position == "before" else ["plan", "--repo", str(repo)]
    done = run(*argv, cwd=tmp_path)  # ./definitions does not exist there
    assert done.returncode == 0, done.stderr
    assert f"repo {repo}" in done.stdout
    assert "view v " in done.stdout


def test_repo_after_the_command_wins_and_env_is_the_fallback(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo(VIEW)
    done = run("--repo", str(tmp_path / "nowhere"), "plan", "--repo", str(repo), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run("plan", cwd=tmp_path, env={"SKEWLESS_REPO": str(repo)})
    assert done.returncode == 0, done.stderr
    assert f"repo {repo}" in done.stdout


@pytest.mark.parametrize(
    ("argv", "code", "stderr"),
    [
        (["no-such-command"], EXIT_USAGE, "No such command 'no-such-command'"),
        (["plan", "--no-such-option"], EXIT_USAGE, "No such option: --no-such-option"),
        (["import", "tx"], EXIT_USAGE, "Missing argument 'FILE'"),
        (["worker", "--batch-max", "0"], EXIT_USAGE, "--batch-max"),
        (["worker", "--runtime", "flink"], EXIT_USAGE, "'flink' is not one of"),
        (["status", "--key-scan-limit", "-1"], EXIT_USAGE, "--key-scan-limit"),
        (["backfill", "--out", "x.parquet"], EXIT_USAGE, "Missing option '--entities'"),
        (["--repo", "/nonexistent/definitions", "plan"], EXIT_ERROR, "error: "),
    ],
)
def test_exit_codes_of_usage_and_runtime_errors(argv: list[str], code: int, stderr: str) -> None:
    done = run(*argv)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert stderr in done.stderr
    assert "Traceback" not in done.stderr
    if code == EXIT_USAGE:  # a usage error says how to get help
        assert "--help" in done.stderr


def _options() -> list[tuple[str, click.Option]]:
    return [
        (name, param)
        for name, command in cli.commands.items()
        for param in command.params
        if isinstance(param, click.Option)
    ]


@pytest.mark.parametrize(("command", "option"), _options(), ids=lambda x: getattr(x, "name", x))
def test_every_option_has_help_and_shows_its_default(command: str, option: click.Option) -> None:
    assert option.help and option.help.strip(), f"{command} {option.opts}: no help text"
    ctx = click.Context(cli.commands[command], info_name=command, show_default=True)
    record = option.get_help_record(ctx)
    assert record is not None
    if option.is_flag or option.required:
        return  # a flag is off unless given; a required option has no default
    assert "default:" in record[1], f"{command} {option.opts}: default not shown: {record[1]!r}"


@pytest.mark.parametrize("command", list(cli.commands))
def test_each_command_help_ends_with_an_example(command: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0, done.stderr
    tail = done.stdout.rstrip().splitlines()
    heading = max(i for i, line in enumerate(tail) if re.fullmatch(r"\s*Examples?:", line))
    example = tail[heading + 1 :]
    assert example and all(line.startswith("    ") for line in example)
    assert example[0].strip().startswith(("skewless " + command, "echo ")), example


def test_exit_codes_are_documented_truly() -> None:
    """docs/cli.md's table names every code the CLI uses, with the values the code uses."""
    text = (ROOT / "docs" / "cli.md").read_text()
    table = dict(re.findall(r"^\| `(\d+)` \| ([^|]+) \|", text, flags=re.MULTILINE))
    assert table.keys() == {"0", "1", "2", "3", "130"}
    assert "usage" in table[str(EXIT_USAGE)].lower()
    assert "in flight" in table[str(EXIT_UNVERIFIABLE)]
    assert str(cli_module.EXIT_INTERRUPTED) == "130" and EXIT_OK == 0 and EXIT_ERROR == 1
    readme = (ROOT / "README.md").read_text()
    assert "docs/cli.md#exit-codes" in readme


# -- backfill's input errors in CLI words (issue 12 item 4) ---------------------------


@pytest.fixture
def repo(make_repo: Callable[..., Path]) -> Path:
    return make_repo(VIEW)


def _backfill(repo: Path, entities: Path, *extra: str) -> list[str]:
    return ["--repo", str(repo), "backfill", "--entities", str(entities),
            "--features", "v:amount_sum_1h", "--out", str(entities.with_suffix(".out.parquet")),
            *extra]  # fmt: skip


def test_backfill_names_the_file_its_columns_and_the_flag(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": ["a"], "ts": [1_700_000_000_000], "label": [1]}).to_csv(
        labels, index=False
    )
    assert main(_backfill(repo, labels)) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {labels}: no timestamp column 'event_timestamp'")
    assert "its columns: customer_id, ts, label" in err
    assert "--timestamp-column ts" in err
    assert "entity_df" not in err and "timestamp_column=" not in err


def test_backfill_suggests_the_flag_even_without_a_likely_column(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": ["a"], "when_it_happened": [1]}).to_csv(labels, index=False)
    assert main(_backfill(repo, labels)) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "its columns: customer_id, when_it_happened" in err
    assert "--timestamp-column COLUMN" in err


def test_backfill_missing_join_key_names_file_columns_and_view(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.parquet"
    pd.DataFrame({"customer": ["a"], "event_timestamp": [1_700_000_000_000]}).to_parquet(labels)
    assert main(_backfill(repo, labels)) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {labels}: no column 'customer_id', the join key that view 'v'")
    assert "its columns: customer, event_timestamp" in err
    assert "entity_df" not in err


def test_backfill_reads_string_join_keys_of_a_csv_as_text(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ids like 007 keep their form (a CSV reader would make them the integer 7)."""
    from engine import FeatureStore

    store = FeatureStore.from_repo(repo)
    store.import_events(
        "tx",
        pd.DataFrame(
            {
                "customer_id": ["007"],
                "merchant_id": ["m"],
                "amount": [2.5],
                "qty": [1],
                "ts": [1_700_000_000_000],
            }
        ),
    )
    labels = tmp_path / "labels.csv"
    labels.write_text("customer_id,event_timestamp\n007,1700000000001\n")
    assert main(_backfill(repo, labels)) == EXIT_OK, capsys.readouterr().err
    out = pd.read_parquet(labels.with_suffix(".out.parquet"))
    assert out["customer_id"].tolist() == ["007"]
    assert out["amount_sum_1h"].tolist() == [2.5]
