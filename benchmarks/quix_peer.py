"""Quix Streams peer for benchmarks/stream.py: a tumbling-window count per key over a topic.

Runs inside ``benchmarks/.venv-quix`` (Quix pins an older confluent-kafka than skewless).
Reads the same Avro records skewless reads (schemaless, event time from the ``ts`` field),
counts them per key in 1-minute tumbling windows with RocksDB state and its changelog topic
(Quix's defaults), and prints one JSON line: how many records it processed, in how long.

    benchmarks/.venv-quix/bin/python benchmarks/quix_peer.py --broker 127.0.0.1:9092 \\
        --topic bench_x --schema definitions/schemas/transaction.avsc --count 300000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from importlib.metadata import version
from typing import Any

from quixstreams import Application
from quixstreams.models.serializers.avro import AvroDeserializer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--window-ms", type=int, default=60_000)
    parser.add_argument("--grace-ms", type=int, default=3 * 3_600_000)
    args = parser.parse_args()

    with open(args.schema) as fh:
        schema = json.load(fh)
    for field in schema["fields"]:  # plain long timestamps, as skewless stores them
        if isinstance(field["type"], dict):
            field["type"] = field["type"]["type"]

    state_dir = tempfile.mkdtemp(prefix="quix-state-")
    app = Application(
        broker_address=args.broker,
        consumer_group=f"quix-bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )

    def event_time(value: Any, _headers: Any, _timestamp: float, _type: Any) -> int:
        return int(value["ts"])

    topic = app.topic(
        args.topic,
        value_deserializer=AvroDeserializer(schema),
        key_deserializer="str",
        timestamp_extractor=event_time,
    )
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def count(_value: Any) -> None:
        n = seen["n"] = seen["n"] + 1
        if n == 1:
            seen["first"] = time.perf_counter()
        if n >= args.count:
            seen["last"] = time.perf_counter()
            app.stop()

    sdf = app.dataframe(topic)
    sdf = sdf.update(count)
    sdf = sdf.tumbling_window(args.window_ms, grace_ms=args.grace_ms).count().current()
    started = time.perf_counter()
    app.run()
    print(
        json.dumps(
            {
                "quixstreams": version("quixstreams"),
                "confluent_kafka": version("confluent-kafka"),
                "events": seen["n"],
                # from the first record to the last: start-up and group join excluded
                "seconds": seen["last"] - seen["first"],
                "wall_seconds": time.perf_counter() - started,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
