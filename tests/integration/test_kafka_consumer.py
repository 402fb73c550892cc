"""The batch consumer on a real broker: records in hand go out at once, batches are bounded."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from connectors.kafka import KafkaBatchConsumer, KafkaSettings, ensure_topics
from engine.stream.core import SourceRecord

# poll_batch is given this long to wait; every call below must return long before it
# (a returning call proves the consumer did not wait for its timeout or a full batch)
PATIENT_S = 120.0
RETURNS_WITHIN_S = 30.0


@pytest.fixture
def topic(kafka_service: str) -> Iterator[tuple[KafkaSettings, str]]:
    settings = KafkaSettings(bootstrap_servers=kafka_service)
    name = f"consumer_{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, {name: 1})
    yield settings, name
    AdminClient({"bootstrap.servers": kafka_service}).delete_topics([name])


def _member(settings: KafkaSettings, name: str) -> KafkaBatchConsumer:
    assigned = threading.Event()
    consumer = KafkaBatchConsumer(
        settings,
        f"test-{name}",
        [name],
        on_assign=lambda parts: assigned.set(),
        on_revoke=lambda parts: None,
        on_lost=lambda parts: None,
    )
    for _ in range(300):  # join the group: served inside poll_batch
        if assigned.is_set():
            return consumer
        assert consumer.poll_batch(10, 0.2) == []  # nothing produced yet
    consumer.close()
    raise AssertionError(f"no partition of {name} assigned within 60 s")


def _produce(settings: KafkaSettings, name: str, values: list[bytes]) -> None:
    # a long linger: the values go out as one produce batch (flush() does not wait for it),
    # so they are fetched together however slowly this loop runs
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 1000})
    for value in values:
        producer.produce(name, value, b"k")
    assert producer.flush(30) == 0


def _poll_in_thread(
    consumer: KafkaBatchConsumer, max_records: int, until: int
) -> list[list[SourceRecord]]:
    """Batches of ``poll_batch(max_records, PATIENT_S)`` until ``until`` records came back."""
    batches: list[list[SourceRecord]] = []

    def run() -> None:
        while sum(len(b) for b in batches) < until:
            batches.append(consumer.poll_batch(max_records, PATIENT_S))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(RETURNS_WITHIN_S)
    assert not thread.is_alive(), (
        f"poll_batch({max_records}, {PATIENT_S}) waited for its timeout or a full batch "
        f"with {sum(len(b) for b in batches)} of {until} records available"
    )
    return batches


def _first(consumer: KafkaBatchConsumer) -> SourceRecord:
    """The first record, fetched; the rest of its fetch is then held by the client."""
    for _ in range(60):
        got = consumer.poll_batch(1, 0.5)
        if got:
            return got[0]
    raise AssertionError("nothing consumed within 30 s of producing")


def test_records_in_hand_are_handed_out_without_waiting_for_the_timeout(
    topic: tuple[KafkaSettings, str],
) -> None:
    settings, name = topic
    consumer = _member(settings, name)
    try:
        _produce(settings, name, [b"a", b"b", b"c"])  # one produce batch: fetched together
        first = _first(consumer)
        batches = _poll_in_thread(consumer, 5000, until=2)
        got = [first.value] + [r.value for b in batches for r in b]
        assert got == [b"a", b"b", b"c"]
        assert [first.offset] + [r.offset for b in batches for r in b] == [0, 1, 2]
    finally:
        consumer.close()


def test_a_batch_holds_at_most_max_records(topic: tuple[KafkaSettings, str]) -> None:
    settings, name = topic
    consumer = _member(settings, name)
    try:
        values = [f"v{i}".encode() for i in range(10)]
        _produce(settings, name, values)
        first = _first(consumer)
        batches = _poll_in_thread(consumer, 4, until=9)
        assert [len(b) for b in batches] == [4, 4, 1]
        assert [first.value] + [r.value for b in batches for r in b] == values
    finally:
        consumer.close()
