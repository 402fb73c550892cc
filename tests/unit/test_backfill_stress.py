"""Backfill stress: many calls in a row, two threads each, under a watchdog.

One ``get_historical_features`` call in ~70 once hung forever (the forked backfill of
issue 10). The sweep now runs in threads inside the native core; this runs a small backfill
200 times with ``workers=2`` and fails — with every thread's stack — if one call takes
longer than ``CALL_TIMEOUT_S``, and checks every result equals the first, bit for bit.
"""

from __future__ import annotations

import faulthandler
import sys

import pandas as pd

from tests.unit.test_backfill_reference import (
    ALL_REFS,
    World,
    world,  # noqa: F401  (module fixture, used by name)
)

CALLS = 200
CALL_TIMEOUT_S = 30.0
# No budget for the whole loop: speed is the benchmarks' business, and a loaded CI machine
# must not fail a run whose every call returned. A hang is what the watchdog catches.


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Equal frames, floats by bits (NaN equals NaN)."""
    if list(a.columns) != list(b.columns) or list(a.dtypes) != list(b.dtypes):
        return False
    for column in a.columns:
        x, y = a[column].to_numpy(), b[column].to_numpy()
        if x.dtype.kind == "f":
            if x.view("int64").tolist() != y.view("int64").tolist():
                return False
        elif x.tolist() != y.tolist():
            return False
    return True


def test_many_backfills_never_hang_and_agree(world: World) -> None:  # noqa: F811
    labels = world.labels.frame()
    first: pd.DataFrame | None = None
    try:
        for call in range(CALLS):
            # a hung call cannot be interrupted from Python: dump every thread's stack and
            # end the process, which fails the run with the stacks on stderr
            faulthandler.dump_traceback_later(CALL_TIMEOUT_S, exit=True, file=sys.stderr)
            out = world.store.get_historical_features(
                labels, ALL_REFS, mode="event_time", workers=2, full_feature_names=True
            )
            faulthandler.cancel_dump_traceback_later()
            if first is None:
                first = out
            else:
                assert _same(out, first), f"call {call} differs from the first"
    finally:
        faulthandler.cancel_dump_traceback_later()
