"""Presence and typing, the model: who is in which room across the cluster, with no I/O (contract section 10).

Each replica holds a ``PresenceView``: per room, the members (authors) and, per member, which replicas (origins)
hold how many of its connections since when; per room and origin, the occupancy (every connection, named or
anonymous). This replica's own connections are kept under ``LOCAL`` and never expire; other replicas' entries are
refreshed by their heartbeats and deltas and expire ``ttl_s`` after they were last refreshed, so the members of a
replica that died vanish without anyone announcing it. An author is one member however many connections and
replicas hold it; every change of membership the view sees is returned as a ``Transition`` (join or leave).

Bounds: a room lists at most ``max_members`` members (a connection of one more author counts as occupancy only),
a heartbeat is cut into messages of at most ``chunk`` member entries, and the typing throttle holds at most
``max_entries`` (room, author) pairs. Times are the injected clock's seconds; ``since`` is wall-clock milliseconds.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from services.chat.bounds import HighWater
from services.common.schema import valid_room

Clock = Callable[[], float]
LOCAL = ""  # the origin key of this replica's own connections (never a real origin: those are 8 characters)
WIRE_VERSION = 1
MAX_AUTHOR_CHARS = 256  # an author is a display name (<= 32) or a JWT subject; anything longer is not one


@dataclass(frozen=True, slots=True)
class Transition:
    kind: Literal["join", "leave"]
    room: str
    author: str

    def frame(self) -> str:
        return orjson.dumps({"type": self.kind, "room": self.room, "author": self.author}).decode()


@dataclass(frozen=True, slots=True)
class Member:
    author: str
    since: int  # ms since the epoch: the earliest connection of this author in the room, on any replica
    connections: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    room: str
    members: list[Member]  # the first K by `since`
    total: int  # members known, listed or not
    occupancy: int  # connections in the room across the cluster, named and anonymous

    def frame(self) -> str:
        return orjson.dumps({"type": "presence", **self.body()}).decode()

    def body(self) -> dict[str, Any]:
        members = [{"author": m.author, "since": m.since, "connections": m.connections} for m in self.members]
        return {"room": self.room, "members": members, "occupancy": self.occupancy}


@dataclass(frozen=True, slots=True)
class Ticket:
    """How one connection was counted: as a member (``author``) or as occupancy only (``author`` None)."""

    room: str
    author: str | None


@dataclass(slots=True)
class _Hold:
    """One origin's connections of one member."""

    since: int
    connections: int
    seen: float


@dataclass(slots=True)
class _Room:
    members: dict[str, dict[str, _Hold]] = field(default_factory=dict)  # author -> origin -> hold
    occupancy: dict[str, tuple[int, float]] = field(default_factory=dict)  # origin -> (connections, seen)

    def empty(self) -> bool:
        return not self.members and not self.occupancy


# One room of a replica's state on the wire: occupancy and {author: [since_ms, connections]} (0: gone).
RoomState = dict[str, Any]


class PresenceView:
    def __init__(self, ttl_s: float, max_members: int, clock: Clock = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_members = max_members
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        self._rooms_high = HighWater()
        self.refused_members = 0  # member entries not taken because their room was full

    # ---- this replica's connections

    def connect(self, room: str, author: str | None, since_ms: int) -> tuple[Ticket, list[Transition]]:
        """Count a connection of this replica; a named one is a member unless the room is full."""
        entry = self._room(room)
        connections, _ = entry.occupancy.get(LOCAL, (0, math.inf))
        entry.occupancy[LOCAL] = (connections + 1, math.inf)
        if author is None:
            return Ticket(room, None), []
        holders = entry.members.get(author)
        if holders is None and len(entry.members) >= self._max_members:
            self.refused_members += 1
            return Ticket(room, None), []
        joined = holders is None
        holders = entry.members.setdefault(author, {})
        hold = holders.get(LOCAL)
        if hold is None:
            holders[LOCAL] = _Hold(since_ms, 1, math.inf)
        else:
            hold.connections += 1
        return Ticket(room, author), [Transition("join", room, author)] if joined else []

    def disconnect(self, ticket: Ticket) -> list[Transition]:
        entry = self._rooms.get(ticket.room)
        if entry is None:
            return []
        connections, _ = entry.occupancy.get(LOCAL, (1, math.inf))
        if connections <= 1:
            entry.occupancy.pop(LOCAL, None)
        else:
            entry.occupancy[LOCAL] = (connections - 1, math.inf)
        transitions: list[Transition] = []
        if ticket.author is not None:
            holders = entry.members.get(ticket.author)
            hold = holders.get(LOCAL) if holders else None
            if holders is not None and hold is not None:
                hold.connections -= 1
                if hold.connections <= 0:
                    del holders[LOCAL]
                    if not holders:
                        del entry.members[ticket.author]
                        transitions.append(Transition("leave", ticket.room, ticket.author))
        self._drop_if_empty(ticket.room, entry)
        return transitions

    def local_state(self, room: str, authors: Iterable[str] = ()) -> RoomState:
        """This replica's state of ``room`` for ``authors`` (0 connections: gone here), with its occupancy."""
        entry = self._rooms.get(room)
        members: dict[str, list[int]] = {}
        for author in authors:
            hold = entry.members.get(author, {}).get(LOCAL) if entry else None
            members[author] = [hold.since, hold.connections] if hold else [0, 0]
        occupancy = entry.occupancy.get(LOCAL, (0, 0.0))[0] if entry else 0
        return {"o": occupancy, "m": members}

    def heartbeat(self, chunk: int) -> Iterator[dict[str, RoomState]]:
        """This replica's whole state, cut into parts of at most ``chunk`` entries (a member, or a room that
        has only anonymous connections); a room with more members than that spans several parts. A replica with
        no connections sends one empty part: the others' heartbeat lag then watches its presence path too."""
        part: dict[str, RoomState] = {}
        size = 0
        yielded = False
        for room, entry in list(self._rooms.items()):
            occupancy = entry.occupancy.get(LOCAL, (0, 0.0))[0]
            if not occupancy:
                continue
            members = [(a, h[LOCAL]) for a, h in entry.members.items() if LOCAL in h]
            start = 0
            while True:
                if size >= chunk:
                    yield part
                    part, size = {}, 0
                    yielded = True
                taken = members[start:start + max(1, chunk - size)]
                part[room] = {"o": occupancy, "m": {a: [h.since, h.connections] for a, h in taken}}
                size += max(1, len(taken))
                start += len(taken)
                if start >= len(members):
                    break
        if part or not yielded:
            yield part

    @property
    def local_members(self) -> int:
        return sum(1 for entry in self._rooms.values() for holders in entry.members.values() if LOCAL in holders)

    @property
    def local_connections(self) -> int:
        return sum(entry.occupancy.get(LOCAL, (0, 0.0))[0] for entry in self._rooms.values())

    # ---- other replicas

    def apply(self, origin: str, rooms: dict[str, RoomState]) -> list[Transition]:
        """Take another replica's state of some rooms (a heartbeat part or a delta): it refreshes what it lists
        and removes members it lists with 0 connections; what it does not list is left to expire."""
        now = self._clock()
        transitions: list[Transition] = []
        for room, state in rooms.items():
            entry = self._room(room)
            occupancy = state["o"]
            if occupancy > 0:
                entry.occupancy[origin] = (occupancy, now)
            else:
                entry.occupancy.pop(origin, None)
            for author, (since, connections) in state["m"].items():
                holders = entry.members.get(author)
                if connections <= 0:
                    if holders is not None and holders.pop(origin, None) is not None and not holders:
                        del entry.members[author]
                        transitions.append(Transition("leave", room, author))
                    continue
                if holders is None:
                    if len(entry.members) >= self._max_members:
                        self.refused_members += 1
                        continue
                    holders = entry.members[author] = {}
                    transitions.append(Transition("join", room, author))
                holders[origin] = _Hold(since, connections, now)
            self._drop_if_empty(room, entry)
        return transitions

    def drop_origin(self, origin: str) -> list[Transition]:
        """Forget a replica that said goodbye."""
        return self._remove(lambda holder, _seen: holder == origin)

    def expire(self) -> list[Transition]:
        """Forget what other replicas have not refreshed for ``ttl_s``."""
        oldest = self._clock() - self._ttl_s
        return self._remove(lambda holder, seen: holder != LOCAL and seen < oldest)

    def _remove(self, gone: Callable[[str, float], bool]) -> list[Transition]:
        transitions: list[Transition] = []
        for room, entry in list(self._rooms.items()):
            for origin in [o for o, (_, seen) in entry.occupancy.items() if gone(o, seen)]:
                del entry.occupancy[origin]
            for author, holders in list(entry.members.items()):
                for origin in [o for o, hold in holders.items() if gone(o, hold.seen)]:
                    del holders[origin]
                if not holders:
                    del entry.members[author]
                    transitions.append(Transition("leave", room, author))
            self._drop_if_empty(room, entry)
        return transitions

    # ---- reading

    def snapshot(self, room: str, first: int) -> Snapshot:
        entry = self._rooms.get(room)
        if entry is None:
            return Snapshot(room, [], 0, 0)
        merged = [
            Member(author, min(h.since for h in holders.values()), sum(h.connections for h in holders.values()))
            for author, holders in entry.members.items()
        ]
        merged.sort(key=lambda m: (m.since, m.author))
        occupancy = sum(connections for connections, _ in entry.occupancy.values())
        return Snapshot(room, merged[:first], len(merged), occupancy)

    def has_member(self, room: str, author: str) -> bool:
        entry = self._rooms.get(room)
        return entry is not None and author in entry.members

    def _room(self, room: str) -> _Room:
        entry = self._rooms.get(room)
        if entry is None:
            entry = self._rooms[room] = _Room()
            self._rooms_high.note(len(self._rooms))
        return entry

    def _drop_if_empty(self, room: str, entry: _Room) -> None:
        if entry.empty():
            del self._rooms[room]
            self._rooms = self._rooms_high.shrink(self._rooms)


Verdict = Literal["ok", "throttled", "full"]


class TypingThrottle:
    """At most one typing event per (room, author) every ``interval_s``, over at most ``max_entries`` pairs.

    Entries are kept in the order they were let through, so the ones past the interval are always at the front.
    When the map is full of pairs still inside their interval, a new pair is refused rather than an old one
    forgotten: forgetting would let a flood of authors lift the throttle of every other one.
    """

    def __init__(self, interval_s: float, max_entries: int, clock: Clock = time.monotonic) -> None:
        self._interval_s = interval_s
        self._max_entries = max_entries
        self._clock = clock
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def allow(self, room: str, author: str) -> Verdict:
        now = self._clock()
        while self._last:
            key, stamp = next(iter(self._last.items()))
            if now - stamp < self._interval_s:
                break
            del self._last[key]
        key = (room, author)
        if key in self._last:
            return "throttled"
        if len(self._last) >= self._max_entries:
            return "full"
        self._last[key] = now
        return "ok"


# ---- the wire form on the presence exchange ---------------------------------------------------------------------

Kind = Literal["state", "beat", "typing", "hello", "bye"]
KINDS: tuple[Kind, ...] = ("state", "beat", "typing", "hello", "bye")


class InvalidPresence(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PresenceMessage:
    """``state``: a delta of some rooms; ``beat``: a part of a heartbeat; ``typing``: (room, author) pairs typing,
    batched; ``hello``: a replica (re)joined and asks for heartbeats; ``bye``: a replica is leaving."""

    kind: Kind
    origin: str
    ts: int  # ms since the epoch, at the sender
    rooms: dict[str, RoomState] = field(default_factory=dict)
    typing: list[tuple[str, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": WIRE_VERSION, "k": self.kind, "origin": self.origin, "ts": self.ts}
        if self.kind in ("state", "beat"):
            body["rooms"] = self.rooms
        elif self.kind == "typing":
            body["typing"] = self.typing
        return orjson.dumps(body)

    @classmethod
    def decode(cls, raw: bytes) -> PresenceMessage:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidPresence("not JSON") from None
        if not isinstance(data, dict):
            raise InvalidPresence("not an object")
        kind, origin, ts = data.get("k"), data.get("origin"), data.get("ts")
        if kind not in KINDS or not isinstance(origin, str) or not origin or not isinstance(ts, int):
            raise InvalidPresence("missing or bad k, origin or ts")
        stamp = int(ts)
        if kind in ("state", "beat"):
            return cls(kind, origin, stamp, rooms=_rooms(data.get("rooms")))
        if kind == "typing":
            return cls(kind, origin, stamp, typing=_typing(data.get("typing")))
        return cls(kind, origin, stamp)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_author(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_AUTHOR_CHARS


def _typing(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise InvalidPresence("typing must be a list")
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and valid_room(pair[0])
                and _is_author(pair[1])):
            raise InvalidPresence("bad typing room or author")
        pairs.append((pair[0], str(pair[1])))
    return pairs


def _rooms(value: object) -> dict[str, RoomState]:
    if not isinstance(value, dict):
        raise InvalidPresence("rooms must be an object")
    for room, state in value.items():
        if not valid_room(room) or not isinstance(state, dict) or not _is_int(state.get("o")):
            raise InvalidPresence("bad room state")
        members = state.get("m")
        if not isinstance(members, dict):
            raise InvalidPresence("bad members")
        for author, hold in members.items():
            if not (_is_author(author) and isinstance(hold, list) and len(hold) == 2 and all(map(_is_int, hold))):
                raise InvalidPresence("bad member entry")
    return value
