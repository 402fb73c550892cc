"""Feast's side of benchmarks/online.py: a Redis-backed Feast store driven over stdin/stdout.

Runs inside ``benchmarks/.venv-feast`` (Feast pins its own redis-py, protobuf and pandas), never
in the skewless venv. One JSON command per line on stdin, one JSON answer per line on stdout:

- ``{"cmd": "setup", "dir": D, "redis": "host:port,db=N", "features": {name: "int"|"float"},
  "rows": {"customer_id": [...], feature: [...]}}`` — writes ``D/feature_store.yaml``
  (file offline store, redis online store), applies an entity and one feature view, flushes
  the online db and writes the rows with ``FeatureStore.write_to_online_store``.
- ``{"cmd": "read", "features": [...], "entities": [...]}`` — ``get_online_features(...).to_dict()``.
- ``{"cmd": "time", "features": [...], "calls": [[ids], ...]}`` — one timed
  ``get_online_features(...).to_dict()`` per call; answers the latencies in ns.
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

VIEW = "customer_features"
_state: dict[str, Any] = {}


def _setup(cmd: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd
    import redis
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    repo = Path(cmd["dir"])
    (repo / "data").mkdir(parents=True, exist_ok=True)
    host_port, _, params = cmd["redis"].partition(",")
    (repo / "feature_store.yaml").write_text(
        "project: skewless_bench\n"
        "registry: data/registry.db\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{cmd["redis"]}"\n'
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    db = int(dict(p.split("=") for p in params.split(",") if p).get("db", 0))
    host, _, port = host_port.partition(":")
    redis.Redis(host=host, port=int(port), db=db).flushdb()

    kinds: dict[str, str] = cmd["features"]
    frame = pd.DataFrame(cmd["rows"])
    for name, kind in kinds.items():
        frame[name] = frame[name].astype("Int64" if kind == "int" else "float64")
    now = pd.Timestamp.now(tz="UTC")
    frame["event_timestamp"] = now
    frame["created"] = now
    parquet = repo / "data" / "features.parquet"
    frame.to_parquet(parquet)

    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    source = FileSource(path=str(parquet), timestamp_field="event_timestamp",
                        created_timestamp_column="created")  # fmt: skip
    view = FeatureView(
        name=VIEW,
        entities=[customer],
        ttl=timedelta(days=3650),
        schema=[Field(name=n, dtype=Int64 if k == "int" else Float64) for n, k in kinds.items()],
        source=source,
        online=True,
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply([customer, view])
    started = time.perf_counter()
    store.write_to_online_store(VIEW, frame)
    _state["store"] = store
    return {"ok": True, "rows": len(frame), "write_s": time.perf_counter() - started}


def _refs(features: list[str]) -> list[str]:
    return [f"{VIEW}:{f}" for f in features]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _read(cmd: dict[str, Any]) -> dict[str, Any]:
    store = _state["store"]
    out = store.get_online_features(
        features=_refs(cmd["features"]),
        entity_rows=[{"customer_id": c} for c in cmd["entities"]],
    ).to_dict()
    return {k: [_plain(v) for v in values] for k, values in out.items()}


def _time(cmd: dict[str, Any]) -> dict[str, Any]:
    store = _state["store"]
    refs = _refs(cmd["features"])
    calls = [[{"customer_id": c} for c in ids] for ids in cmd["calls"]]
    latencies: list[int] = []
    clock = time.perf_counter_ns
    for rows in calls:
        t0 = clock()
        store.get_online_features(features=refs, entity_rows=rows).to_dict()
        latencies.append(clock() - t0)
    return {"ns": latencies}


def main() -> None:
    handlers = {"setup": _setup, "read": _read, "time": _time}
    import feast

    print(json.dumps({"ready": True, "feast": feast.__version__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            answer = handlers[cmd["cmd"]](cmd)
        except Exception as exc:  # reported to the driver, which stops
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
