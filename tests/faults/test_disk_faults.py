"""The disk holding the event log full (ENOSPC) and then read-only (EROFS), mid-stream, on a
real filesystem: a small tmpfs mounted for the log root (needs root; under ``CI=true`` a mount
that fails is a failure, not a skip). While the fault lasts the worker commits nothing and
backs off, retrying the same records; when it clears the worker resumes, and nothing is lost
or duplicated."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import PrivateServices, unavailable
from tests.faults.scenario import Run
from tests.stream_harness import end_offsets, holds_partitions, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.redis]

EVENTS = int(os.environ.get("SKEWLESS_FAULT_EVENTS", "20000"))
FILLER = "filler"
HOLD_S = 2.0  # how long the fault is watched after the worker began to back off


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of our own, unmounted at the end."""
    where = tmp_path / "logfs"
    where.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=32m,mode=0755", "tmpfs", str(where))
    except OSError as exc:
        unavailable(f"cannot mount a tmpfs for the event log (root needed): {exc}")
    # the file that fills the disk is made now, while the disk is empty: filling it later
    # then needs no new inode, so the fault starts the same way whatever the log holds
    (where / FILLER).touch()
    try:
        yield where
    finally:
        with contextlib.suppress(OSError):
            _mount("-o", "remount,rw", str(where))
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Append to the fixture's filler file until the filesystem is full."""
    filler = disk / FILLER
    block = b"\0" * (1 << 16)
    before = shutil.disk_usage(disk)
    try:
        with open(filler, "ab") as fh:
            while True:
                fh.write(block)
                fh.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, f"{exc}; {describe(disk, before)}"
    assert filler.stat().st_size > 0 or before.free < len(block), describe(disk, before)
    return filler


def describe(disk: Path, before: Any) -> str:
    """What the small disk held (for a failure message)."""
    files = [p for p in disk.rglob("*") if p.is_file()]
    largest = sorted(files, key=lambda p: p.stat().st_size, reverse=True)[:5]
    return (f"before filling: {before}; {len(files)} files, largest "
            f"{[(str(p.relative_to(disk)), p.stat().st_size) for p in largest]}")  # fmt: skip


def remount(disk: Path, mode: str) -> None:
    """``mount -o remount,<mode>``, retried while a file is open for writing (EBUSY)."""
    for _ in range(100):
        try:
            _mount("-o", f"remount,{mode}", str(disk))
            return
        except OSError:
            time.sleep(0.05)
    _mount("-o", f"remount,{mode}", str(disk))


def settled(run: Run) -> tuple[Any, Any]:
    """``committed_and_logged()`` once two readings 1 s apart agree (a commit timer that
    fired just before the fault may land late on a loaded machine); at most 30 s."""
    last = run.committed_and_logged()
    for _ in range(30):
        time.sleep(1.0)
        now = run.committed_and_logged()
        if now == last:
            return now
        last = now
    raise AssertionError(f"commits or log files still moving 30 s into the fault: {last}")


def watch_stalled(run: Run, symptom: str) -> None:
    """Once the worker backs off with ``symptom``: nothing is committed or logged while the
    fault lasts, though records wait."""
    wait_until(lambda: sum(w.text().count(symptom) for w in run.live()) >= 3, 120,
               f"the worker to fail three times on {symptom!r}")  # fmt: skip
    committed, files = settled(run)  # an offset committed just before the fault has landed
    time.sleep(HOLD_S)
    assert run.committed_and_logged() == (committed, files)
    ends = end_offsets(run.bootstrap, run.source)
    assert any(end > committed.get(p, -1) for p, end in ends.items())  # records wait


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_log_disk_full_then_read_only(
    runtime: str, tmp_path: Path, services: PrivateServices, small_disk: Path
) -> None:
    run = Run(tmp_path, bootstrap=services.bootstrap, redis_url=services.redis_url,
              events=EVENTS, seed=404, runtime=runtime, log_root=str(small_disk))  # fmt: skip
    try:
        worker = run.start_worker()
        wait_until(lambda: holds_partitions(worker, run.source), 120, "the worker's assignment")
        run.push_in_background(chunk=500, pause_s=0.3)

        run.wait_pushed(0.3)
        filler = fill(small_disk)
        watch_stalled(run, "No space left on device")
        committed, _ = run.committed_and_logged()
        filler.write_bytes(b"")  # the space comes back
        wait_until(lambda: run.committed_and_logged()[0] != committed, 120, "commits to resume")

        run.wait_pushed(0.6)
        remount(small_disk, "ro")
        try:
            watch_stalled(run, "Read-only file system")
            committed, _ = run.committed_and_logged()
        finally:
            remount(small_disk, "rw")
        wait_until(lambda: run.committed_and_logged()[0] != committed, 120, "commits to resume")

        run.finish()
        assert run.stop_workers() == [0], run.log_tail()
        report = run.check()
    finally:
        run.cleanup()
    print(f"\n{runtime}: disk full then read-only, {report}")
    assert not report.problems(), report.problems()
