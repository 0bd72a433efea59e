"""History replicas, unit level: settings and ordinals, per-ordinal topology, digest math, order-independent
storage (two stores fed the same messages in different orders end equal), and the digest comparisons."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.auth import TokenVerifier, bearer_token
from services.common.ids import UlidGenerator, encode_ulid
from services.common.schema import ChatMessage
from services.common.settings import AmqpSettings, ConfigError
from services.common.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    REPLICA_DEAD_LETTER_EXCHANGE,
    history_queue,
    history_queue_arguments,
    history_queues,
)
from services.history import replication
from services.history.metrics import HistoryMetrics
from services.history.query import QueryError, parse_digest_query, parse_export_query
from services.history.replication import (
    Copier,
    CopyFailed,
    PeerClient,
    PeerError,
    differing_rooms,
    settled_mismatches,
)
from services.history.settings import HistorySettings, load_config, ordinal_from_hostname
from services.history.store import ExportPosition, MessageStore, RoomDigest, ThreadedStore, id_hash

ids = UlidGenerator()


def make(room: str = "r", client_id: str | None = None, author: str | None = "ann") -> tuple[ChatMessage, bytes]:
    msg_id, ts = ids.mint()
    message = ChatMessage(msg_id, "ORIGIN01", room, author, f"text {msg_id}", ts, client_id)
    return message, message.to_wire()


def everything(store: MessageStore) -> list[bytes]:
    return [body for _, _, body in store.export(ExportPosition(), 1_000_000)]


def recomputed(store: MessageStore) -> list[RoomDigest]:
    digests: dict[str, RoomDigest] = {}
    for room, msg_id, _ in store.export(ExportPosition(), 1_000_000):
        digests.setdefault(room, RoomDigest(room)).add(msg_id)
    return [digests[room] for room in sorted(digests)]


# --- settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "ordinal"),
    [("durable-chat-history-0", 0), ("durable-chat-history-3", 3), ("prod-history-12", 12), ("history-2", 2),
     ("durable-chat-chat-7d9f-x2", 0), ("ip-10-0-0-5", 0), ("laptop", 0), ("", 0), ("durable-chat-history", 0)],
)
def test_the_ordinal_comes_from_a_history_pod_name(hostname: str, ordinal: int) -> None:
    assert ordinal_from_hostname(hostname) == ordinal


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HISTORY_REPLICA", "HISTORY_PEERS", "AMQP_HISTORY_REPLICAS", "HOSTNAME"):
        monkeypatch.delenv(name, raising=False)


def test_replica_settings_are_read_and_the_ordinal_defaults_to_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("HOSTNAME", "durable-chat-history-1")
    monkeypatch.setenv("AMQP_HISTORY_REPLICAS", "2")
    monkeypatch.setenv("HISTORY_PEERS", "http://h0:8001, http://h1:8001/")
    monkeypatch.setenv("HISTORY_VERIFY_INTERVAL_S", "60")
    monkeypatch.setenv("AMQP_HISTORY_QUEUE_EXPIRES_S", "3600")
    config = load_config()
    assert config.history.ordinal == 1
    assert config.history.peer_urls == {0: "http://h0:8001"}
    assert (config.history.verify_interval_s, config.amqp.history_queue_expires_s) == (60, 3600)
    monkeypatch.setenv("HISTORY_REPLICA", "0")  # explicit wins over the pod name
    assert load_config().history.peer_urls == {1: "http://h1:8001"}


def test_defaults_are_one_replica_a_week_of_expiry_and_no_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    config = load_config()
    assert (config.history.ordinal, config.amqp.history_replicas, config.history.peer_urls) == (0, 1, {})
    assert (config.amqp.history_queue_expires_s, config.history.verify_interval_s) == (604800, 300)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HISTORY_REPLICA": "2", "AMQP_HISTORY_REPLICAS": "2"},
         "HISTORY_REPLICA is 2, but AMQP_HISTORY_REPLICAS is 2"),
        ({"HOSTNAME": "x-history-3", "AMQP_HISTORY_REPLICAS": "2"}, "the ordinal in HOSTNAME is 3"),
        ({"HISTORY_REPLICA": "-1"}, "HISTORY_REPLICA:"),
        ({"AMQP_HISTORY_REPLICAS": "0"}, "AMQP_HISTORY_REPLICAS:"),
        ({"AMQP_HISTORY_QUEUE_EXPIRES_S": "-5"}, "AMQP_HISTORY_QUEUE_EXPIRES_S:"),
        ({"AMQP_HISTORY_QUEUE_EXPIRES_S": "5000000"}, "AMQP_HISTORY_QUEUE_EXPIRES_S:"),
        ({"HISTORY_VERIFY_INTERVAL_S": "soon"}, "HISTORY_VERIFY_INTERVAL_S:"),
        ({"HISTORY_PEERS": "http://a:1,ftp://b"}, "HISTORY_PEERS: Value error, entry 2 must be an http"),
        ({"HISTORY_PEERS": "http://a:1", "AMQP_HISTORY_REPLICAS": "2"}, "HISTORY_PEERS lists 1 URL(s)"),
    ],
)
def test_a_bad_replica_setting_is_named_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    _clean(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert named in str(caught.value)


# --- topology ---------------------------------------------------------------------------------------------------


def test_replica_zero_keeps_the_frozen_v1_queue() -> None:
    queue = history_queue(0)
    assert (queue.name, queue.dead_letter_queue, queue.dead_letter_exchange) == (
        "chat.history", DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)
    assert queue.arguments == history_queue_arguments() == {
        "x-queue-type": "quorum", "x-dead-letter-exchange": "chat.dlx",
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
    }


def test_replicas_above_zero_get_their_own_queue_dead_letters_and_expiry() -> None:
    queues = history_queues(3, expires_s=3600)
    assert [q.name for q in queues] == ["chat.history", "chat.history.1", "chat.history.2"]
    second = queues[2]
    assert second.arguments == {
        "x-queue-type": "quorum", "x-dead-letter-exchange": REPLICA_DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": "chat.history.2", "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish", "x-expires": 3_600_000,
    }
    assert (second.dead_letter_queue, second.dead_letter_routing_key) == ("chat.history.2.dlq", "chat.history.2")
    assert second.dead_letter_arguments == {"x-queue-type": "quorum", "x-expires": 3_600_000}
    assert "x-expires" not in history_queue(1, expires_s=0).arguments
    assert history_queue(1, base="other").name == "other.1"
    assert AmqpSettings(history_replicas=2).history_replicas == 2


# --- digest and order-independent storage ----------------------------------------------------------------------


def test_the_room_hash_is_the_sum_of_the_ids_blake2b_mod_2_64() -> None:
    room_ids = [ids.mint()[0] for _ in range(50)]
    expected = sum(int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") for i in room_ids)
    forward, backward = RoomDigest("r"), RoomDigest("r")
    for msg_id in room_ids:
        forward.add(msg_id)
    for msg_id in reversed(room_ids):
        backward.add(msg_id)
    assert forward == backward
    assert forward.as_json() == {"room": "r", "count": 50, "first": min(room_ids), "last": max(room_ids),
                                 "hash": f"{expected % 2**64:016x}"}
    assert RoomDigest.decode("r", forward.encode()) == forward
    assert id_hash(room_ids[0]) < 2**64


def test_the_stored_digest_equals_a_recomputation_after_every_kind_of_write(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    batch = [make(room) for room in ("a", "b", "a.b", "a", "c") for _ in range(3)]
    store.write(batch)
    store.write(batch[:4] + [make("b")])  # duplicates by id change nothing
    first_key = make("a", client_id="k")
    store.write([make("a", client_id="k"), first_key])  # two ids for one client key in one batch: the smaller stays
    assert store.digests() == recomputed(store)
    assert [d.room for d in store.digests()] == ["a", "a.b", "b", "c"]
    assert store.digests(room="b") == [d for d in recomputed(store) if d.room == "b"]
    assert store.digests(after_room="a.b", limit=1) == [d for d in recomputed(store) if d.room == "b"]
    assert store.digests(room="nobody") == []


def _with_client_keys(count: int) -> list[tuple[ChatMessage, bytes]]:
    """Messages among which several ids share a (room, author, client_id): resends under new ids."""
    messages = []
    for index in range(count):
        client_id = f"k{index % 7}" if index % 3 else None
        messages.append(make(room=random.choice("xyz"), client_id=client_id, author=random.choice(["ann", "bob"])))
    return messages


def test_two_stores_fed_the_same_messages_in_any_order_end_equal(tmp_path: Path) -> None:
    random.seed(13)
    messages = _with_client_keys(120)
    results = []
    for run in range(4):
        order = list(messages)
        random.shuffle(order)
        store = MessageStore(str(tmp_path / f"s{run}"))
        for size in itertools.cycle((1, 5, 17)):  # batches of uneven size, so replacements cross batches too
            if not order:
                break
            store.write(order[:size])
            del order[:size]
        store.write(messages[::-1])  # everything again: nothing changes
        assert store.digests() == recomputed(store)
        results.append((everything(store), store.digests()))
    assert all(result == results[0] for result in results[1:])
    kept = {orjson_id(body) for body in results[0][0]}
    # For each client key the smallest id is the one kept; messages without a key are all kept.
    by_key: dict[tuple[str, str | None, str], list[str]] = {}
    for message, _ in messages:
        if message.client_id is not None:
            by_key.setdefault((message.room, message.author, message.client_id), []).append(message.id)
    expected = {m.id for m, _ in messages if m.client_id is None} | {min(v) for v in by_key.values()}
    assert kept == expected


def orjson_id(body: bytes) -> str:
    return ChatMessage.from_wire(body).id


def test_a_smaller_id_for_a_stored_client_key_replaces_the_larger_one(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    smaller, larger = make(client_id="k"), make(client_id="k")
    middle = make()
    assert [m.id for m in store.write([larger, middle]).stored] == [larger[0].id, middle[0].id]
    result = store.write([smaller])
    assert ([m.id for m in result.stored], result.duplicate_client_ids) == ([smaller[0].id], 1)
    assert [orjson_id(b) for b in everything(store)] == [smaller[0].id, middle[0].id]
    assert store.digests()[0] == recomputed(store)[0]
    assert store.digests()[0].first == smaller[0].id
    again = store.write([larger])  # the larger one redelivered: dropped, it never comes back
    assert (again.stored, again.duplicate_client_ids) == ([], 1)


def test_a_v1_store_gets_its_digests_once_when_first_opened(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    store.write([make(room) for room in "pqrs" for _ in range(5)])
    expected = store.digests()
    db = store._db  # a v1 store: the same messages, no digest
    for key in list(db.iterator(prefix=b"d\x00", include_value=False)):
        db.delete(key)
    db.delete(b"meta:digest")
    store.close()
    reopened = MessageStore(str(tmp_path))
    assert reopened.digests() == expected == recomputed(reopened)


def test_export_resumes_strictly_after_a_room_and_id(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    store.write([make(room) for room in ("b", "a", "a.b", "b") for _ in range(3)])
    every = store.export(ExportPosition(), 100)
    assert [(room, msg_id) for room, msg_id, _ in every] == sorted((room, msg_id) for room, msg_id, _ in every)
    assert [r for r, _, _ in every] == ["a"] * 3 + ["a.b"] * 3 + ["b"] * 6
    room, msg_id, _ = every[4]
    assert store.export(ExportPosition(from_room=room, after=msg_id), 100) == every[5:]
    assert store.export(ExportPosition(from_room="a.b"), 2) == every[3:5]
    assert store.export(ExportPosition(room="a.b"), 100) == every[3:6]
    assert store.export(ExportPosition(room="a.b", after=every[3][1]), 100) == every[4:6]
    assert store.export(ExportPosition(room="a"), 100) == every[:3]  # "a" is not a prefix match of "a.b"


# --- query parsing and comparisons -----------------------------------------------------------------------------

ID = "01HZZZZZZZZZZZZZZZZZZZZZZ1"


def test_export_and_digest_parameters() -> None:
    assert parse_digest_query({}) is None
    assert parse_digest_query({"room": "r"}) == "r"
    assert parse_export_query({"from_room": "r", "after": ID}) == ExportPosition(from_room="r", after=ID)
    assert parse_export_query({"room": "r", "after": ID}) == ExportPosition(from_room="r", after=ID, room="r")
    for params, code in (({"after": ID}, "bad_parameter"), ({"room": "bad room"}, "bad_room"),
                         ({"from_room": "r", "after": "x"}, "bad_after"), ({"limit": "1"}, "bad_parameter"),
                         ({"room": "a", "from_room": "b"}, "bad_parameter")):
        with pytest.raises(QueryError) as caught:
            parse_export_query(params)
        assert caught.value.code == code
    with pytest.raises(QueryError):
        parse_digest_query({"room": "a b"})


def _digest(room: str, *id_list: str) -> RoomDigest:
    digest = RoomDigest(room)
    for msg_id in id_list:
        digest.add(msg_id)
    return digest


def test_rooms_to_copy_are_those_where_the_peer_differs() -> None:
    a, b, c = (ids.mint()[0] for _ in range(3))
    mine = {"same": _digest("same", a), "behind": _digest("behind", a), "ahead": _digest("ahead", a, b)}
    theirs = {"same": _digest("same", a), "behind": _digest("behind", a, b), "ahead": _digest("ahead", a),
              "new": _digest("new", c)}
    assert differing_rooms(mine, theirs) == ["ahead", "behind", "new"]
    assert differing_rooms({}, theirs) == ["ahead", "behind", "new", "same"]


def test_verify_skips_rooms_with_messages_inside_the_settle_window() -> None:
    now_ms = 10**12
    old = [encode_ulid(now_ms - 60_000, n) for n in range(3)]
    recent = encode_ulid(now_ms - 1_000, 0)
    mine = {"old": _digest("old", *old[:2]), "hot": _digest("hot", old[0]), "equal": _digest("equal", old[2])}
    theirs = {"old": _digest("old", *old), "hot": _digest("hot", old[0], recent), "equal": _digest("equal", old[2]),
              "only_theirs": _digest("only_theirs", old[1])}
    assert settled_mismatches(mine, theirs, now_ms) == ["old", "only_theirs"]


def test_replicas_call_each_other_with_a_token_their_peers_accept() -> None:
    secret = "a-shared-secret-of-at-least-32-bytes"
    authorization = PeerClient(HistorySettings(replica=1, auth_secret=secret))._headers()["Authorization"]
    assert TokenVerifier(secret=secret).subject(bearer_token(authorization, None)) == "history-1"
    assert PeerClient(HistorySettings(replica=1))._headers() == {}  # anonymous mode: no token


# --- the copier's decisions, with a fake peer and a real store ---------------------------------------------------


class FakePeer:
    """A peer whose readiness and digests the test sets; its export always fails, like a peer refusing our token."""

    def __init__(self, ready: bool, digests: dict[str, RoomDigest]) -> None:
        self.is_ready = ready
        self.digest_map = digests
        self.exports = 0

    async def ready(self, url: str) -> bool:
        return self.is_ready

    async def progress(self, url: str) -> dict[str, object]:
        return {"boot": "B", "received": 0, "settled": 0}

    async def digests(self, url: str) -> dict[str, RoomDigest]:
        return self.digest_map

    async def export(self, url: str, position: ExportPosition) -> AsyncIterator[bytes]:
        self.exports += 1
        raise PeerError("401 unauthorized")
        yield b""  # an async generator

    async def aclose(self) -> None:
        return None


def _copier(tmp_path: Path, peer: FakePeer) -> tuple[Copier, ThreadedStore]:
    settings = HistorySettings(replica=0, peers="http://h0:1,http://h1:1")
    store = ThreadedStore(str(tmp_path))
    attached = asyncio.Event()
    attached.set()
    copier = Copier(store, settings, HistoryMetrics.create(), attached)
    copier._client = peer  # type: ignore[assignment]
    return copier, store


async def test_a_copy_that_every_ready_peer_fails_never_makes_the_replica_ready(tmp_path: Path) -> None:
    peer = FakePeer(ready=True, digests={"r": _digest("r", ids.mint()[0])})
    copier, store = _copier(tmp_path, peer)
    async with store:
        with pytest.raises(CopyFailed):
            await copier._copy_round()
        assert peer.exports == 3 and not copier.status.serving
        peer.is_ready = False  # now no peer answers: serve what we hold, and say so
        assert await copier._copy_round() is False
        assert copier.status.state == "no_peer" and copier.status.serving


async def test_a_replica_without_a_copy_turns_complete_when_a_ready_peer_holds_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replication, "_NO_PEER_POLL_S", 0.01)
    old_id = encode_ulid(int(time.time() * 1000) - 120_000, 1)
    peer = FakePeer(ready=False, digests={"r": _digest("r", old_id)})
    copier, store = _copier(tmp_path, peer)
    async with store:
        await store.write([(m, m.to_wire()) for m in [ChatMessage(old_id, "O", "r", "ann", "t", 1)]])
        task = asyncio.create_task(copier.run())
        try:
            for _ in range(200):
                if copier.status.state == "no_peer":
                    break
                await asyncio.sleep(0.01)
            assert copier.status.state == "no_peer"
            peer.is_ready = True
            for _ in range(200):
                if copier.status.state == "done":
                    break
                await asyncio.sleep(0.01)
            assert copier.status.state == "done" and peer.exports == 0  # equal: no copy, never unready
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
