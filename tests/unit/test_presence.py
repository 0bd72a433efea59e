"""The presence model with an injected clock: membership across replicas, expiry, bounds, chunking, typing; and
the replica's side of it without a broker: which of its connections get which frames."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from services.chat.app import create_app
from services.chat.hub import Subscriber
from services.chat.metrics import ChatMetrics
from services.chat.presence import (
    InvalidPresence,
    PresenceMessage,
    PresenceView,
    Ticket,
    Transition,
    TypingThrottle,
)
from services.chat.presence_relay import PresenceRelay, now_ms
from services.chat.settings import ChatSettings, load_config
from services.common.settings import AmqpSettings, ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def view(clock: Clock, ttl_s: float = 45, max_members: int = 100) -> PresenceView:
    return PresenceView(ttl_s, max_members, clock)


def members(v: PresenceView, room: str, first: int = 100) -> dict[str, tuple[int, int]]:
    return {m.author: (m.since, m.connections) for m in v.snapshot(room, first).members}


def test_a_local_join_and_leave_are_transitions_only_for_the_first_and_last_connection() -> None:
    v = view(Clock())
    first, joined = v.connect("r", "ann", 10)
    assert joined == [Transition("join", "r", "ann")]
    second, joined_again = v.connect("r", "ann", 20)
    assert joined_again == []
    assert members(v, "r") == {"ann": (10, 2)} and v.snapshot("r", 10).occupancy == 2
    assert v.disconnect(second) == []
    assert v.disconnect(first) == [Transition("leave", "r", "ann")]
    assert v.snapshot("r", 10).occupancy == 0 and members(v, "r") == {}
    assert v.local_members == 0 and v.local_connections == 0


def test_anonymous_connections_are_occupancy_not_members() -> None:
    v = view(Clock())
    ticket, transitions = v.connect("r", None, 10)
    assert transitions == [] and ticket.author is None
    v.connect("r", "bob", 11)
    snapshot = v.snapshot("r", 10)
    assert snapshot.occupancy == 2 and [m.author for m in snapshot.members] == ["bob"] and snapshot.total == 1
    v.disconnect(ticket)
    assert v.snapshot("r", 10).occupancy == 1


def test_one_author_on_several_replicas_is_one_member_with_a_connection_count() -> None:
    v = view(Clock())
    ticket, _ = v.connect("r", "ann", 500)
    remote = {"r": {"o": 3, "m": {"ann": [300, 2], "cy": [400, 1]}}}
    assert v.apply("B", remote) == [Transition("join", "r", "cy")]  # ann was already here
    assert members(v, "r") == {"ann": (300, 3), "cy": (400, 1)}
    assert v.snapshot("r", 10).occupancy == 4
    assert v.disconnect(ticket) == []  # still on B
    assert v.apply("B", {"r": {"o": 1, "m": {"ann": [0, 0]}}}) == [Transition("leave", "r", "ann")]
    assert members(v, "r") == {"cy": (400, 1)} and v.snapshot("r", 10).occupancy == 1


def test_a_silent_replica_expires_after_the_ttl_and_its_heartbeats_keep_it() -> None:
    clock = Clock()
    v = view(clock, ttl_s=45)
    v.connect("r", "local", 1)
    v.apply("B", {"r": {"o": 2, "m": {"bob": [5, 2]}}})
    clock.now += 30
    assert v.expire() == []
    v.apply("B", {"r": {"o": 2, "m": {"bob": [5, 2]}}})  # a heartbeat refreshes
    clock.now += 44
    assert v.expire() == []
    clock.now += 2
    assert v.expire() == [Transition("leave", "r", "bob")]
    assert members(v, "r") == {"local": (1, 1)} and v.snapshot("r", 10).occupancy == 1  # own entries never expire


def test_an_entry_a_heartbeat_stops_listing_expires_while_the_others_stay() -> None:
    clock = Clock()
    v = view(clock)
    v.apply("B", {"r": {"o": 2, "m": {"bob": [5, 1], "cy": [6, 1]}}})  # the leave of cy was lost
    clock.now += 30
    v.apply("B", {"r": {"o": 1, "m": {"bob": [5, 1]}}})
    clock.now += 20
    assert v.expire() == [Transition("leave", "r", "cy")]
    assert list(members(v, "r")) == ["bob"]


def test_a_replica_that_says_goodbye_is_forgotten_at_once() -> None:
    v = view(Clock())
    v.apply("B", {"r": {"o": 1, "m": {"bob": [5, 1]}}, "s": {"o": 4, "m": {}}})
    v.apply("C", {"r": {"o": 1, "m": {"bob": [7, 1]}}})
    assert v.drop_origin("B") == []  # bob is still on C
    assert v.snapshot("s", 10).occupancy == 0
    assert v.drop_origin("C") == [Transition("leave", "r", "bob")]


def test_a_full_room_counts_further_authors_as_occupancy_and_lists_the_first_k() -> None:
    v = view(Clock(), max_members=3)
    tickets = [v.connect("r", f"u{i}", 100 - i)[0] for i in range(5)]
    assert [t.author for t in tickets] == ["u0", "u1", "u2", None, None]
    assert v.refused_members == 2
    v.apply("B", {"r": {"o": 1, "m": {"zed": [1, 1]}}})
    assert v.refused_members == 3
    snapshot = v.snapshot("r", 2)
    assert [m.author for m in snapshot.members] == ["u2", "u1"]  # the earliest first
    assert snapshot.total == 3 and snapshot.occupancy == 6
    for ticket in tickets:
        v.disconnect(ticket)
    assert v.snapshot("r", 2).occupancy == 1 and v.local_connections == 0


def test_a_heartbeat_is_cut_into_parts_and_a_large_room_spans_parts() -> None:
    v = view(Clock(), max_members=10_000)
    for i in range(1200):
        v.connect("big", f"a{i}", i)
    for room in range(30):
        v.connect(f"room{room}", None, 0)
    parts = list(v.heartbeat(500))
    assert [sum(max(1, len(s["m"])) for s in part.values()) for part in parts] == [500, 500, 230]
    listed = [a for part in parts for a in part.get("big", {"m": {}})["m"]]
    assert sorted(listed) == sorted(f"a{i}" for i in range(1200))
    assert all(part["big"]["o"] == 1200 for part in parts if "big" in part)
    other = view(Clock(), max_members=10_000)
    for part in parts:
        other.apply("A", part)
    assert other.snapshot("big", 5).total == 1200 and other.snapshot("room7", 5).occupancy == 1


def test_a_replica_without_connections_still_beats_and_its_empty_beat_changes_nothing() -> None:
    idle = view(Clock())
    assert list(idle.heartbeat(500)) == [{}]
    other = view(Clock())
    other.connect("r", "ann", 1)
    other.apply("B", {"r": {"o": 1, "m": {"bob": [2, 1]}}})
    assert other.apply("A", {}) == [] and other.snapshot("r", 5).total == 2


def test_a_heartbeat_of_10000_connections_in_1000_rooms_is_bounded_per_message() -> None:
    v = view(Clock(), max_members=10_000)
    for i in range(10_000):
        v.connect(f"room{i % 1000}", f"user{i}", i)
    parts = list(v.heartbeat(500))
    sizes = [len(PresenceMessage("beat", "ORIGIN01", 1, rooms=part).encode()) for part in parts]
    assert len(parts) == 20 and max(sizes) < 32 * 1024


def test_local_state_reports_current_counts_and_gone_authors() -> None:
    v = view(Clock())
    ticket, _ = v.connect("r", "ann", 10)
    v.connect("r", None, 11)
    assert v.local_state("r", ["ann", "gone"]) == {"o": 2, "m": {"ann": [10, 1], "gone": [0, 0]}}
    v.disconnect(ticket)
    assert v.local_state("r", ["ann"]) == {"o": 1, "m": {"ann": [0, 0]}}


def test_typing_is_throttled_per_author_and_room() -> None:
    clock = Clock()
    throttle = TypingThrottle(2.0, 100, clock)
    assert throttle.allow("r", "ann") == "ok"
    assert throttle.allow("r", "ann") == "throttled"
    assert throttle.allow("s", "ann") == "ok" and throttle.allow("r", "bob") == "ok"
    clock.now += 1.9
    assert throttle.allow("r", "ann") == "throttled"
    clock.now += 0.2
    assert throttle.allow("r", "ann") == "ok"
    assert len(throttle) == 1  # the others were past their interval and pruned


def test_a_full_typing_throttle_refuses_new_authors_instead_of_forgetting_old_ones() -> None:
    clock = Clock()
    throttle = TypingThrottle(2.0, 3, clock)
    for author in ("a", "b", "c"):
        assert throttle.allow("r", author) == "ok"
    assert throttle.allow("r", "d") == "full"
    assert throttle.allow("r", "a") == "throttled"
    clock.now += 2
    assert throttle.allow("r", "d") == "ok"


def test_the_wire_form_round_trips_and_refuses_what_is_not_presence() -> None:
    beat = PresenceMessage("beat", "ORIGIN01", 5, rooms={"r": {"o": 1, "m": {"ann": [1, 1]}}})
    assert PresenceMessage.decode(beat.encode()) == beat
    typing = PresenceMessage("typing", "ORIGIN01", 5, typing=[("r", "ann"), ("s", "bob")])
    assert PresenceMessage.decode(typing.encode()) == typing
    assert PresenceMessage.decode(PresenceMessage("bye", "ORIGIN01", 5).encode()).kind == "bye"
    for bad in (
        b"nope",
        b"[]",
        orjson.dumps({"k": "beat", "origin": "O", "ts": 1, "rooms": {"bad room": {"o": 1, "m": {}}}}),
        orjson.dumps({"k": "beat", "origin": "O", "ts": 1, "rooms": {"r": {"o": 1, "m": {"a": [1]}}}}),
        orjson.dumps({"k": "typing", "origin": "O", "ts": 1, "typing": [["r", ""]]}),
        orjson.dumps({"k": "typing", "origin": "O", "ts": 1, "typing": [["bad room", "ann"]]}),
        orjson.dumps({"k": "what", "origin": "O", "ts": 1}),
        orjson.dumps({"k": "bye", "origin": "O", "ts": "1"}),
    ):
        with pytest.raises(InvalidPresence):
            PresenceMessage.decode(bad)


# ---- the replica's side, without a broker: frames to its own connections ---------------------------------------


class Conn:
    """One connection of the replica: its subscriber, the frames its socket got, and its presence ticket."""

    def __init__(self, room: str) -> None:
        self.frames: list[dict[str, object]] = []
        self.subscriber = Subscriber(room, self.send, self.close, 100, False)
        self.subscriber.finish_sync()
        self.ticket: Ticket | None = None

    async def send(self, text: str) -> None:
        self.frames.append(orjson.loads(text))

    async def close(self, code: int, reason: str) -> None:
        pass


def relay(clock: Clock) -> PresenceRelay:
    settings = ChatSettings(presence_typing_throttle_s=2, presence_snapshot_members=10)
    relay = PresenceRelay(settings, AmqpSettings(), ChatMetrics.create(), clock)
    relay.origin = "SELF0001"
    return relay


def connected(presence: PresenceRelay, room: str, author: str | None, listening: bool = True) -> Conn:
    conn = Conn(room)
    conn.ticket = presence.enter(conn.subscriber, author, listening)
    return conn


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_replica_sends_the_snapshot_then_joins_leaves_and_typing_to_the_others_only() -> None:
    clock = Clock()
    presence = relay(clock)
    ann = connected(presence, "r", "ann")
    ann_tab = connected(presence, "r", "ann")
    bob = connected(presence, "r", "bob")
    quiet = connected(presence, "r", "sil", listening=False)
    other = connected(presence, "s", "eve")
    await settle()
    assert ann.frames[0]["type"] == "presence" and ann.frames[1:] == [{"type": "join", "room": "r", "author": "bob"}]
    assert [m["author"] for m in bob.frames[0]["members"]] == ["ann", "bob"]  # type: ignore[index]
    assert bob.frames[0]["occupancy"] == 3 and quiet.frames == []

    presence.typing(ann.subscriber, "ann")
    presence.typing(ann_tab.subscriber, "ann")  # throttled: one per 2 s
    presence.typing(quiet.subscriber, "sil")  # not taking part: dropped
    await settle()
    typing = {"type": "typing", "room": "r", "author": "ann"}
    assert bob.frames[-1] == typing and bob.frames.count(typing) == 1
    assert typing not in ann.frames + ann_tab.frames + other.frames + quiet.frames
    clock.now += 2
    presence.typing(ann_tab.subscriber, "ann")
    await settle()
    assert bob.frames.count(typing) == 2

    # A typing event from another replica: shown once per 2 s, and not at all once older than 5 s.
    remote = PresenceMessage("typing", "OTHER001", now_ms(), typing=[("r", "cy"), ("nobody-here", "zed")])
    presence.receive(remote.encode())
    presence.receive(remote.encode())
    presence.receive(PresenceMessage("typing", "OTHER001", now_ms() - 6000, typing=[("r", "dan")]).encode())
    presence.receive(b"{not json")
    await settle()
    assert [f.get("author") for f in bob.frames if f["type"] == "typing"] == ["ann", "ann", "cy"]

    assert bob.ticket is not None
    presence.leave(bob.subscriber, bob.ticket)
    await settle()
    assert ann.frames[-1] == {"type": "leave", "room": "r", "author": "bob"}
    for conn in (ann, ann_tab, bob, quiet, other):
        await conn.subscriber.aclose()


def test_a_ttl_not_above_the_heartbeat_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_PRESENCE_HEARTBEAT_S", "15")
    monkeypatch.setenv("CHAT_PRESENCE_TTL_S", "15")
    with pytest.raises(ConfigError, match="CHAT_PRESENCE_TTL_S must be larger than CHAT_PRESENCE_HEARTBEAT_S"):
        load_config()


async def presence_api(path: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> httpx.Response:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = create_app(load_config())  # no lifespan: the view is empty, and no broker is needed
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
        return await client.get(path)


async def test_the_presence_api_answers_refuses_and_says_when_presence_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    ok = await presence_api("/api/rooms/lobby/presence", monkeypatch)
    assert ok.status_code == 200 and ok.json() == {"room": "lobby", "members": [], "occupancy": 0, "total": 0}
    bad = await presence_api("/api/rooms/no%20spaces/presence", monkeypatch)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_room"
    off = await presence_api("/api/rooms/lobby/presence", monkeypatch, CHAT_PRESENCE_ENABLED="false")
    assert off.status_code == 404 and off.json()["error"]["code"] == "presence_disabled"
    locked = await presence_api("/api/rooms/lobby/presence", monkeypatch, CHAT_AUTH_SECRET="s" * 32)
    assert locked.status_code == 401 and locked.json()["error"]["code"] == "unauthorized"
