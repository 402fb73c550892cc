"""`skewless demo` end to end on the real services, small: every step runs, the report is there.

Runs the CLI as a subprocess (as the README's command does), in Redis database 5, with its
own topic; the topic is deleted and the database flushed afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from connectors.eventlog import EventLogReader
from engine.demo import TRAINING_FEATURES
from engine.demo_monitor import LATE_NOTE
from engine.store import FeatureStore
from tests.stream_harness import delete_topics, flushed_redis_db

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

DEMO_DB = 5
EVENTS, RATE, LABELS = 3_000, 1_000, 400


@pytest.fixture
def demo_db(redis_service: str) -> Iterator[str]:
    """``redis://host:port/0`` of the shared Redis; database 5 is flushed before and after."""
    with flushed_redis_db(redis_service, DEMO_DB):
        yield f"{redis_service.rsplit('/', 1)[0]}/0"


@pytest.mark.single_redis  # the demo's own Redis database (--redis-db)
def test_demo_runs_every_step_and_writes_the_report(
    tmp_path: Path, kafka_service: str, demo_db: str
) -> None:
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    env.update(SKEWLESS_KAFKA_BOOTSTRAP=kafka_service, SKEWLESS_REDIS_URL=demo_db)
    argv = [sys.executable, "-m", "engine.cli", "demo", "--events", str(EVENTS), "--rate",
            str(RATE), "--labels", str(LABELS), "--out", str(out), "--redis-db", str(DEMO_DB),
            "--no-services", "--verify-sample", "50"]  # fmt: skip
    repo = out / "definitions"
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        stdout = proc.stdout

        # the terminal says where everything is, and how to stop the services
        assert "the 2 workers stopped cleanly (SIGTERM, exit 0)" in stdout
        for what in ("report", "training set", "event log", "worker logs"):
            assert re.search(rf"^  {what} +{re.escape(str(out))}", stdout, re.M), what
        assert "skewless services down" in stdout
        assert "Traceback" not in proc.stderr

        # what each line means: rows push sent, the late counter explained once, the reads
        n_live = EVENTS // 3
        assert f"  history  pushed {EVENTS - n_live:,} rows; all applied in " in stdout
        assert re.search(rf"^  live     pushed {n_live:,} rows in [\d.]+s \(\+\d+ probe rows\)", stdout, re.M)  # fmt: skip
        late = re.search(r"^  history  .*; late ([\d,]+)$", stdout, re.M)
        assert late is not None and int(late.group(1).replace(",", "")) > 0  # customer_online: 2 h
        assert stdout.count(LATE_NOTE.strip()) == 1
        assert re.search(r"^  customer c\d+: \d+ of \d+ live online reads equal", stdout, re.M)
        assert re.search(r"^  customer_spend__amount_sum_30d  ", stdout, re.M)  # the preview

        # the report: Markdown with the verify rate and the training set's shape, 3 valid PNGs
        report = out / "report" / "demo-report.md"
        text = report.read_text(encoding="utf-8")
        columns = 5 + len(TRAINING_FEATURES)  # the labels' columns, then one per feature
        assert "**verify rate: 100%**" in text
        assert f"**training set: {LABELS:,} rows x {columns} columns**" in text
        plots = sorted(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text))
        assert plots == ["freshness.png", "online-vs-backfill.png", "throughput.png"]
        for name in plots:
            with Image.open(report.parent / name) as image:
                image.verify()
                assert image.format == "PNG"

        # the files behind it
        training = pd.read_parquet(out / "training_set.parquet")
        assert training.shape == (LABELS, columns)
        assert training["customer_spend__amount_count_7d"].max() > 0  # history, not just zeros
        store = FeatureStore.from_repo(repo, environ={})
        assert store.config.redis_url.endswith(f"/{DEMO_DB}")
        logged = EventLogReader(store.config.event_log_root).count("transactions")
        assert logged >= EVENTS  # the payments, plus the freshness probes
        reads = re.search(r"\*\*(\d+) of (\d+) reads equal the replay bit for bit\*\*", text)
        assert reads is not None and int(reads.group(2)) > 0
        assert "differ" not in text.split("## Online vs backfill")[1].split("## Verify")[0]
        assert f"`late` counter ended at {late.group(1)}:" in text
    finally:
        if repo.exists():
            topic = FeatureStore.from_repo(repo, environ={}).plan.sources["transactions"].topic
            delete_topics(kafka_service, [topic])
