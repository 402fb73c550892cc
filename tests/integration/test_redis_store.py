"""RedisOnlineStore against a real Redis: round trips, deletes, expiry rules, error translation."""

from __future__ import annotations

import random
import socket
import time

import pytest
import redis

from connectors.redis_store import RedisOnlineStore
from engine import _native
from engine.errors import ConfigError, OnlineStoreUnavailable, OnlineWriteConflict
from engine.ports import OnlineStateStore, StateWrite, Watermark
from tests.stream_harness import cluster_nodes, online_store

pytestmark = pytest.mark.redis

KEY = "sk:0123456789abcdef:{c1}"
HOUR_MS = 3_600_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def store(redis_url: str) -> RedisOnlineStore:
    return online_store(redis_url)


def test_implements_the_protocol(store: RedisOnlineStore) -> None:
    assert isinstance(store, OnlineStateStore)
    assert store.ping() is True
    if cluster_nodes():
        assert store.address.startswith("cluster ")
    else:
        assert store.address.endswith("/15")


def test_write_then_load_round_trip(store: RedisOnlineStore) -> None:
    other = "sk:0123456789abcdef:{c2}"
    store.write(
        [
            StateWrite(key=KEY, fields={"t:0:300000:7": b"\x92\x01\x90", "f:0": b"41"}),
            StateWrite(key=other, fields={"l:3": b"\x00\xff", "f:3": b"9"}),
        ]
    )
    got = store.load([KEY, "sk:0123456789abcdef:{missing}", other])
    assert got == [
        {b"t:0:300000:7": b"\x92\x01\x90", b"f:0": b"41"},
        {},
        {b"l:3": b"\x00\xff", b"f:3": b"9"},
    ]
    assert store.load([other]) == [{b"l:3": b"\x00\xff", b"f:3": b"9"}]
    assert store.load([]) == []
    store.write([])  # nothing to do, no round trip, no error


def test_write_sets_and_deletes_fields(store: RedisOnlineStore) -> None:
    store.write([StateWrite(key=KEY, fields={"t:0:1000:1": b"a", "t:0:1000:2": b"b", "f:0": b"1"})])
    store.write(
        [StateWrite(key=KEY, fields={"t:0:1000:3": b"c", "f:0": b"2"}, delete=("t:0:1000:1",))]
    )
    assert store.load([KEY]) == [{b"t:0:1000:2": b"b", b"t:0:1000:3": b"c", b"f:0": b"2"}]
    store.write([StateWrite(key=KEY, fields={}, delete=("t:0:1000:2", "t:0:1000:3", "f:0"))])
    assert store.load([KEY]) == [{}]


def test_expiry_is_set_once_then_only_extended(
    store: RedisOnlineStore, redis_client: redis.Redis
) -> None:
    later = _now_ms() + 2 * HOUR_MS
    store.write([StateWrite(key=KEY, fields={"f:0": b"1"}, expire_at_ms=later)])
    assert redis_client.pexpiretime(KEY) == later  # NX: a key without expiry gets one
    store.write([StateWrite(key=KEY, fields={"f:1": b"1"}, expire_at_ms=later - HOUR_MS)])
    assert redis_client.pexpiretime(KEY) == later  # GT: an earlier time never shortens it
    store.write([StateWrite(key=KEY, fields={"f:0": b"2"}, expire_at_ms=later + HOUR_MS)])
    assert redis_client.pexpiretime(KEY) == later + HOUR_MS  # GT: a later time extends it


def test_no_expiry_persists_the_key(store: RedisOnlineStore, redis_client: redis.Redis) -> None:
    store.write([StateWrite(key=KEY, fields={"f:0": b"1"}, expire_at_ms=_now_ms() + HOUR_MS)])
    assert redis_client.pexpiretime(KEY) > 0
    store.write([StateWrite(key=KEY, fields={"l:0": b"x"}, expire_at_ms=None)])
    assert redis_client.pexpiretime(KEY) == -1  # lifetime state never expires
    assert store.load([KEY]) == [{b"f:0": b"1", b"l:0": b"x"}]


def test_an_expiry_in_the_past_removes_the_key(store: RedisOnlineStore) -> None:
    store.write([StateWrite(key=KEY, fields={"f:0": b"1"}, expire_at_ms=_now_ms() - 1)])
    assert store.load([KEY]) == [{}]


def test_keyspace_helpers(store: RedisOnlineStore, redis_client: redis.Redis) -> None:
    fingerprint = "00000000feedbeef"
    writes = [
        StateWrite(key=f"sk:{fingerprint}:{{c{i}}}", fields={"f:0": b"1"}) for i in range(1203)
    ]
    store.write([*writes, StateWrite(key="sk:1111111111111111:{c1}", fields={"f:0": b"1"})])
    assert store.count_keys(fingerprint) == 1203
    assert sorted(store.scan_keys(f"sk:{fingerprint}:{{c12*")) == sorted(
        f"sk:{fingerprint}:{{c{i}}}" for i in [12, *range(120, 130), *range(1200, 1203)]
    )
    assert store.delete_keyspace(fingerprint) == 1203
    assert store.count_keys(fingerprint) == 0
    assert redis_client.exists("sk:1111111111111111:{c1}") == 1  # other views untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_redis_names_the_address_never_the_password() -> None:
    port = _free_port()
    store = RedisOnlineStore(f"redis://alice:hunter2-secret@127.0.0.1:{port}/3")
    for call in (
        lambda: store.load(["k"]),
        lambda: store.load(["k", "l"]),
        lambda: store.write([StateWrite(key="k", fields={"f:0": b"1"})]),
        store.ping,
    ):
        with pytest.raises(OnlineStoreUnavailable) as info:
            call()
        message = str(info.value)
        assert f"127.0.0.1:{port}/3" in message
        assert "scripts/services.sh up redis" in message
        assert "hunter2" not in message and "hunter2" not in repr(store)
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)


@pytest.mark.single_redis
def test_wrong_password_is_an_auth_problem_without_the_password(redis_url: str) -> None:
    # a user that does not exist: Redis refuses AUTH whatever the server's own settings
    url = redis_url.replace("redis://", "redis://nobody-skewless:wrong-pass-42@")
    with pytest.raises(OnlineStoreUnavailable) as info:
        RedisOnlineStore(url).load(["k"])
    message = str(info.value)
    assert "/15" in message and "wrong-pass-42" not in message
    assert "credentials" in message


def test_malformed_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RedisOnlineStore("htp://bob:topsecret@127.0.0.1:6379/0")
    assert "topsecret" not in str(info.value)
    assert "redis://" in str(info.value)


def test_load_changed_sends_only_changed_hashes(
    store: RedisOnlineStore, redis_client: redis.Redis
) -> None:
    other = "sk:0123456789abcdef:{c2}"
    store.write(
        [
            StateWrite(key=KEY, fields={"t:0:1000:1": b"a\x00b", "f:0": b"1", "u:0": b"5"}),
            StateWrite(key=other, fields={"t:1:1000:1": b"z", "f:1": b"7", "u:1": b"9"}),
        ]
    )
    held = (3, ((b"f:0", b"1"), (b"u:0", b"5")))
    full = {b"t:0:1000:1": b"a\x00b", b"f:0": b"1", b"u:0": b"5"}
    missing = "sk:0123456789abcdef:{nobody}"
    assert store.load_changed([KEY, other, missing], [held, None, held]) == [
        None,  # unchanged: not sent
        {b"t:1:1000:1": b"z", b"f:1": b"7", b"u:1": b"9"},
        {},
    ]
    redis_client.script_flush()  # a restarted Redis forgets scripts: reloaded once
    assert store.load_changed([KEY], [held]) == [None]
    store.write([StateWrite(key=KEY, fields={"t:0:1000:2": b"c"})])  # one more field
    assert store.load_changed([KEY], [held]) == [{**full, b"t:0:1000:2": b"c"}]
    store.write([StateWrite(key=KEY, fields={"f:0": b"2"}, delete=("t:0:1000:2",))])
    assert store.load_changed([KEY], [held]) == [{**full, b"f:0": b"2"}]  # same count, new fence
    assert store.load_changed([], []) == []


def _resp_as_dicts(
    replies: _native.RespReplies | None, keys: int
) -> tuple[list[dict[bytes, bytes] | None], list[bool]]:
    """What ``load_and_probe`` returns, read from ``load_and_probe_resp``'s replies."""
    assert replies is not None
    shape = replies.shape()
    hashes = [None if shape[i] < 0 else replies.hash(i) for i in range(keys)]
    probes = [bool(replies.int_at(i)) for i in range(keys, len(shape))]
    return hashes, probes


@pytest.mark.single_redis
def test_resp_loads_equal_the_parsed_loads(
    store: RedisOnlineStore, redis_client: redis.Redis, redis_url: str
) -> None:
    """``load_and_probe_resp`` (replies indexed in the socket's buffer) gives what
    ``load_and_probe`` gives: hashes bigger than a receive, unchanged held hashes, missing
    keys, probes; after a flushed script cache; for a user without scripting; and the same
    error for a key of the wrong type."""
    rng = random.Random(11)
    keys = [f"sk:0123456789abcdef:{{r{i}}}" for i in range(60)]
    store.write(
        [
            StateWrite(
                key=key,
                fields={
                    **{
                        f"t:{i % 3}:60000:{k}": rng.randbytes(rng.randrange(0, 3000))
                        for k in range(rng.randrange(1, 40))
                    },
                    f"f:{i % 3}": b"%d" % i,
                    f"u:{i % 3}": b"%d" % (1000 + i),
                    "j:0": b"\r\n$3\r\n*1\r\n",  # RESP-looking bytes inside values
                },
            )
            for i, key in enumerate(keys)
        ]
    )
    keys.append("sk:0123456789abcdef:{nobody}")
    full = store.load(keys)
    assert sum(len(v) for h in full for v in h.values()) > 1 << 20  # many receives
    held: list[tuple[int, tuple[tuple[bytes, bytes], ...]] | None] = [
        (len(h), tuple((n, v) for n, v in h.items() if n[:1] in b"fu")) if i % 2 else None
        for i, h in enumerate(full)
    ]
    held[-1] = (3, ((b"f:0", b"1"),))  # held once, missing now
    probes = [keys[0], "sk:0123456789abcdef:{absent}"]
    want = store.load_and_probe(keys, held, probes)
    assert want[0][1] is None and want[0][0] == full[0] and want[1] == [True, False]
    replies = store.load_and_probe_resp(keys, held, probes)
    assert _resp_as_dicts(replies, len(keys)) == want
    redis_client.script_flush()  # NOSCRIPT: loaded and sent again
    assert _resp_as_dicts(store.load_and_probe_resp(keys, held, probes), len(keys)) == want
    plain = [None] * len(keys)
    assert _resp_as_dicts(store.load_and_probe_resp(keys, plain, []), len(keys)) == (full, [])
    user = f"noscript{random.randrange(10**6)}"
    redis_client.acl_setuser(user, enabled=True, passwords=["+pw-noscript"], keys=["*"],
                             commands=["+@all", "-@scripting"])  # fmt: skip
    try:
        limited = RedisOnlineStore(redis_url, username=user, password="pw-noscript")
        got = _resp_as_dicts(limited.load_and_probe_resp(keys, held, probes), len(keys))
        assert got == limited.load_and_probe(keys, held, probes) == (full, want[1])
    finally:
        redis_client.acl_deluser(user)
    redis_client.set("sk:0123456789abcdef:{text}", b"x")
    wrong = ["sk:0123456789abcdef:{text}", keys[0]]
    with pytest.raises(OnlineStoreUnavailable, match="WRONGTYPE") as parsed:
        store.load_and_probe(wrong, [None, None], [])
    with pytest.raises(OnlineStoreUnavailable, match="WRONGTYPE") as raw:
        store.load_and_probe_resp(wrong, [None, None], [])
    assert str(raw.value) == str(parsed.value)
    assert store.load_and_probe_resp(keys[:2], [None, None], []) is not None  # in step


def _randomised_writes(rng: random.Random, now_ms: int, rounds: int) -> list[list[StateWrite]]:
    batches = []
    for _ in range(rounds):
        batch = []
        for e in rng.sample(range(40), rng.randrange(1, 30)):
            fields = {f"t:{rng.randrange(3)}:1000:{rng.randrange(9)}": rng.randbytes(5)
                      for _ in range(rng.randrange(0, 6))}  # fmt: skip
            fields[f"f:{rng.randrange(3)}"] = b"%d" % rng.randrange(10**6)
            expire = rng.choice([None, now_ms + rng.randrange(1, 10) * HOUR_MS])
            delete = tuple(f"t:0:1000:{k}" for k in rng.sample(range(9), rng.randrange(3)))
            batch.append(StateWrite(key=f"sk:0123456789abcdef:{{e{e}}}", fields=fields,
                                    delete=delete, expire_at_ms=expire))  # fmt: skip
        batches.append(batch)
    return batches


def _snapshot(client: redis.Redis) -> dict[bytes, tuple[dict[bytes, bytes], int]]:
    return {
        k: (client.hgetall(k), client.pexpiretime(k))
        for k in client.scan_iter("sk:0123456789abcdef:*")
    }


def test_scripted_writes_equal_the_plain_pipeline(
    store: RedisOnlineStore,
    redis_client: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same randomised writes (fields, deletes, expiries set, extended, persisted) through
    the Lua chunks and through the pipeline fallback leave identical hashes and expiries;
    chunks of a few arguments force many script calls per write."""
    monkeypatch.setattr("connectors.redis_store._WRITE_CHUNK_ARGS", 7)
    batches = _randomised_writes(random.Random(5), _now_ms(), rounds=12)
    marks = [Watermark(key="sk:wm:test:0", value=b"%d" % i) for i in range(len(batches))]
    olds = [store.write(batch, [mark]) for batch, mark in zip(batches, marks, strict=True)]
    scripted = _snapshot(redis_client)
    assert olds == [[None]] + [[m.value] for m in marks[:-1]]
    redis_client.flushdb()
    plain = online_store(redis_url)
    plain._scripts_allowed = False
    olds = [plain.write(batch, [mark]) for batch, mark in zip(batches, marks, strict=True)]
    assert olds == [[None]] + [[m.value] for m in marks[:-1]]
    assert _snapshot(redis_client) == scripted
    assert len(scripted) > 20 and any(ttl == -1 for _, ttl in scripted.values())
    assert any(ttl > 0 for _, ttl in scripted.values())


def test_writes_survive_a_flushed_script_cache(
    store: RedisOnlineStore, redis_client: redis.Redis
) -> None:
    store.write([StateWrite(key=KEY, fields={"f:0": b"1"})])
    redis_client.script_flush()  # what a restart or failover does: NOSCRIPT on the next call
    store.write([StateWrite(key=KEY, fields={"f:0": b"2"})])
    assert store.load([KEY]) == [{b"f:0": b"2"}]


@pytest.mark.single_redis
def test_a_user_without_scripting_writes_through_a_pipeline(
    redis_url: str, redis_client: redis.Redis
) -> None:
    user = f"noscript{random.randrange(10**6)}"
    redis_client.acl_setuser(user, enabled=True, passwords=["+pw-noscript"], keys=["*"],
                             commands=["+@all", "-@scripting"])  # fmt: skip
    try:
        store = RedisOnlineStore(redis_url, username=user, password="pw-noscript")
        store.write([StateWrite(key=KEY, fields={"f:0": b"7"}, expire_at_ms=_now_ms() + HOUR_MS)])
        assert store.load([KEY]) == [{b"f:0": b"7"}]
        assert store._scripts_allowed is False
    finally:
        redis_client.acl_deluser(user)


def test_a_linked_write_lands_iff_the_write_before_it_did(store: RedisOnlineStore) -> None:
    """Check '&' (a merge-on-write view's marks hash): it shares the fate of the write before
    it in the script call — refused with a refused entity write, applied with an applied one."""
    marks = "sk:fm:0123456789abcdef:{c1}"
    store.write([StateWrite(key=KEY, fields={"f:0": b"9"})])
    with pytest.raises(OnlineWriteConflict) as caught:
        store.write(
            [
                StateWrite(key=KEY, fields={"f:0": b"10"}, expect=("f:0", b"5")),
                StateWrite(key=marks, fields={"f:3": b"77"}, expect=("&", None)),
            ]
        )
    assert caught.value.keys == (KEY, marks)
    assert store.load([KEY, marks]) == [{b"f:0": b"9"}, {}]
    store.write(
        [
            StateWrite(key=KEY, fields={"f:0": b"10"}, expect=("f:0", b"9")),
            StateWrite(key=marks, fields={"f:3": b"77"}, expect=("&", None)),
        ]
    )
    assert store.load([KEY, marks]) == [{b"f:0": b"10"}, {b"f:3": b"77"}]


@pytest.mark.single_redis  # an ACL user of one server (the cluster pass: every node's own)
def test_a_user_without_scripting_cannot_write_a_merged_view(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The pipeline fallback has no compare-and-set: merge-on-write writes refuse it."""
    user = f"noscript{random.randrange(10**6)}"
    redis_client.acl_setuser(user, enabled=True, passwords=["+pw-noscript"], keys=["*"],
                             commands=["+@all", "-@scripting"])  # fmt: skip
    try:
        store = RedisOnlineStore(redis_url, username=user, password="pw-noscript")
        with pytest.raises(OnlineStoreUnavailable, match="merge_rekeyed_views"):
            store.write(
                [
                    StateWrite(key=KEY, fields={"f:0": b"1"}, expect=("f:0", None)),
                    StateWrite(key="sk:fm:x:{c1}", fields={"f:3": b"7"}, expect=("&", None)),
                ]
            )
        assert store.load([KEY]) == [{}]
    finally:
        redis_client.acl_deluser(user)


def test_a_write_whose_fence_moved_is_refused_and_the_rest_applied(
    store: RedisOnlineStore,
) -> None:
    """Compare-and-set on the partition fence: a writer that read fence 5 cannot overwrite
    what another writer did since (fence 9); the batch's other writes and marks still land."""
    other = "sk:0123456789abcdef:{c2}"
    store.write([StateWrite(key=KEY, fields={"t:0:1000:1": b"new", "f:0": b"9"})])
    mark = Watermark(key="sk:wm:test:cas", value=b"42")
    with pytest.raises(OnlineWriteConflict) as caught:
        store.write(
            [
                StateWrite(key=KEY, fields={"t:0:1000:1": b"zombie", "f:0": b"7"},
                           expect=("f:0", b"5")),
                StateWrite(key=other, fields={"f:0": b"3"}, expect=("f:0", None)),
            ],
            [mark],
        )  # fmt: skip
    assert caught.value.keys == (KEY,)
    assert caught.value.previous == [None]  # the mark was swapped all the same
    assert "1 entity write(s) refused" in str(caught.value)
    assert store.load([KEY, other]) == [
        {b"t:0:1000:1": b"new", b"f:0": b"9"},
        {b"f:0": b"3"},
    ]
    assert store.write([], [mark]) == [b"42"]


def test_a_retried_write_and_an_expired_key_pass_the_fence_check(
    store: RedisOnlineStore,
) -> None:
    write = StateWrite(key=KEY, fields={"f:0": b"7", "t:0:1000:1": b"a"}, expect=("f:0", b"5"))
    store.write([StateWrite(key=KEY, fields={"f:0": b"5"})])
    store.write([write])
    store.write([write])  # applied before, reply lost, sent again: the fence is its own
    assert store.load([KEY]) == [{b"f:0": b"7", b"t:0:1000:1": b"a"}]
    gone = "sk:0123456789abcdef:{expired}"  # the key expired since the writer read it
    store.write([StateWrite(key=gone, fields={"f:0": b"8"}, expect=("f:0", b"6"))])
    assert store.load([gone]) == [{b"f:0": b"8"}]
