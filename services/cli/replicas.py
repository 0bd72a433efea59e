"""`durable-chat verify` and `durable-chat repair`: compare the history replicas, copy what one of them lacks.

Both talk to the history replicas themselves (``--history URL,URL...``, their own HTTP API), not to the chat
service. Every replica answers ``/digest`` (one NDJSON line per room: count, first and last id, an
order-independent hash of the ids) whatever its readiness.

verify: a room differs when a replica lacks it or holds another count or hash. Messages in flight (published, not
yet stored by every replica) make a room differ for a moment, so each room that differs is asked again, alone
(``--recheck`` times, ``--interval`` seconds apart), and counts only if it still differs.

repair: for each room that differs, streams ``/export?room=R`` from every replica at once (each in id order),
merges them, and sends each replica the bodies it lacks (``POST /import``, in batches of ``--batch``; storing is
idempotent by id, so a repair run twice, or racing live traffic, stores nothing twice). Memory stays bounded by
the batches: no room is ever held whole. Then it verifies again.

Exit codes (both): 0 every replica holds the same; 1 some room differs (after repair: still differs); 2 a replica
did not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import httpx
import orjson

EQUAL, DIFFERENT, UNANSWERED = 0, 1, 2
NDJSON = "application/x-ndjson"


class ReplicaUnanswered(Exception):
    """A replica did not answer, or answered something other than what was asked."""


@dataclass(frozen=True, slots=True)
class RoomDigest:
    count: int
    first: str
    last: str
    hash: str


Digests = dict[str, RoomDigest]  # room -> digest, one replica


@dataclass(frozen=True, slots=True)
class Replica:
    index: int
    url: str

    @property
    def name(self) -> str:
        return f"replica {self.index} ({self.url})"


async def cmd_verify(http: httpx.AsyncClient, replicas: list[Replica], args: argparse.Namespace) -> int:
    differing = await _differing_rooms(http, replicas, args.recheck, args.interval)
    _report(differing, replicas)
    return DIFFERENT if differing else EQUAL


async def cmd_repair(http: httpx.AsyncClient, replicas: list[Replica], args: argparse.Namespace) -> int:
    differing = await _differing_rooms(http, replicas, args.recheck, args.interval)
    if not differing:
        print("every replica holds the same messages: nothing to repair")
        return EQUAL
    for room in differing:
        copied = await repair_room(http, replicas, room, args.batch)
        sent = ", ".join(f"{copied[r.index]} to {r.name}" for r in replicas if copied[r.index])
        print(f"room {room}: copied {sent or 'nothing (the difference settled meanwhile)'}")
    remaining = await _differing_rooms(http, replicas, args.recheck, args.interval, rooms=list(differing))
    _report(remaining, replicas)
    if not remaining:
        print(f"repaired {len(differing)} room(s): every replica holds the same messages")
    return DIFFERENT if remaining else EQUAL


async def fetch_digests(http: httpx.AsyncClient, replica: Replica, room: str | None = None) -> Digests:
    digests: Digests = {}
    params = {"room": room} if room is not None else {}
    async for line in _ndjson(http, "GET", f"{replica.url}/digest", replica, params=params):
        body = orjson.loads(line)
        digests[str(body["room"])] = RoomDigest(int(body["count"]), str(body["first"]), str(body["last"]),
                                                str(body["hash"]))
    return digests


def differing_rooms(per_replica: Sequence[Digests]) -> list[str]:
    rooms = set().union(*per_replica)
    return sorted(room for room in rooms if len({digests.get(room) for digests in per_replica}) > 1)


async def _differing_rooms(
    http: httpx.AsyncClient, replicas: list[Replica], recheck: int, interval: float, rooms: list[str] | None = None
) -> dict[str, list[RoomDigest | None]]:
    """The rooms that still differ after the rechecks, with each replica's digest (None: it lacks the room)."""
    if rooms is None:
        everything = await asyncio.gather(*(fetch_digests(http, r) for r in replicas))
        rooms = differing_rooms(everything)
        found = {room: [digests.get(room) for digests in everything] for room in rooms}
    else:
        found = {room: await _room_digests(http, replicas, room) for room in rooms}
    for _ in range(recheck):
        found = {room: digests for room, digests in found.items() if len(set(digests)) > 1}
        if not found:
            break
        await asyncio.sleep(interval)
        found = {room: await _room_digests(http, replicas, room) for room in found}
    return {room: digests for room, digests in found.items() if len(set(digests)) > 1}


async def _room_digests(http: httpx.AsyncClient, replicas: list[Replica], room: str) -> list[RoomDigest | None]:
    answers = await asyncio.gather(*(fetch_digests(http, r, room) for r in replicas))
    return [digests.get(room) for digests in answers]


def _report(differing: dict[str, list[RoomDigest | None]], replicas: list[Replica]) -> None:
    for room, digests in differing.items():
        most = max(d.count if d else 0 for d in digests)
        held = "; ".join(
            f"{r.name}: " + (f"{d.count} messages, {d.first}..{d.last}" if d else "no such room")
            for r, d in zip(replicas, digests, strict=True)
        )
        lacking = [
            f"{r.name} lacks at least {most - (d.count if d else 0)}"
            for r, d in zip(replicas, digests, strict=True) if (d.count if d else 0) < most
        ]
        verdict = "; ".join(lacking) if lacking else "same counts, different ids: each lacks some the others hold"
        print(f"room {room} differs: {verdict} ({held})")


async def repair_room(http: httpx.AsyncClient, replicas: list[Replica], room: str, batch: int) -> dict[int, int]:
    """Give every replica the room's messages it lacks; the number of messages each was sent."""
    importers = [_Importer(http, replica, batch) for replica in replicas]
    streams = [_export(http, replica, room) for replica in replicas]
    async for body, holders in _merged(streams):
        for importer in importers:
            if importer.replica.index not in holders:
                await importer.add(body)
    for importer in importers:
        await importer.flush()
    return {importer.replica.index: importer.sent for importer in importers}


async def _export(http: httpx.AsyncClient, replica: Replica, room: str) -> AsyncIterator[tuple[str, bytes]]:
    async for line in _ndjson(http, "GET", f"{replica.url}/export", replica, params={"room": room}):
        yield str(orjson.loads(line)["id"]), line


async def _merged(streams: list[AsyncIterator[tuple[str, bytes]]]) -> AsyncIterator[tuple[bytes, set[int]]]:
    """Merge id-ordered streams: each id once, with the indices of the streams that hold it."""
    heads = [await anext(stream, None) for stream in streams]
    while any(head is not None for head in heads):
        lowest = min(head[0] for head in heads if head is not None)
        holders = {i for i, head in enumerate(heads) if head is not None and head[0] == lowest}
        body = next(head[1] for head in heads if head is not None and head[0] == lowest)
        yield body, holders
        for i in holders:
            heads[i] = await anext(streams[i], None)


class _Importer:
    def __init__(self, http: httpx.AsyncClient, replica: Replica, batch: int) -> None:
        self._http = http
        self.replica = replica
        self._batch = batch
        self._pending: list[bytes] = []
        self.sent = 0

    async def add(self, body: bytes) -> None:
        self._pending.append(body)
        if len(self._pending) >= self._batch:
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        content = b"\n".join(self._pending) + b"\n"
        try:
            response = await self._http.post(
                f"{self.replica.url}/import", content=content, headers={"Content-Type": NDJSON}
            )
        except httpx.HTTPError as exc:
            raise ReplicaUnanswered(f"{self.replica.name}: import failed: {exc!r}"[:300]) from None
        if response.status_code != 200:
            raise ReplicaUnanswered(f"{self.replica.name}: import answered {response.status_code}: "
                                    f"{response.text[:200]}")
        self.sent += len(self._pending)
        self._pending = []


async def _ndjson(
    http: httpx.AsyncClient, method: str, url: str, replica: Replica, params: dict[str, str]
) -> AsyncIterator[bytes]:
    try:
        async with http.stream(method, url, params=params, headers={"Accept": NDJSON}) as response:
            if response.status_code != 200:
                body = (await response.aread())[:200].decode(errors="replace")
                raise ReplicaUnanswered(f"{replica.name}: {url} answered {response.status_code}: {body}")
            async for line in response.aiter_lines():
                if line.strip():
                    yield line.encode()
    except httpx.HTTPError as exc:
        raise ReplicaUnanswered(f"{replica.name}: {exc!r}"[:300]) from None


async def run(args: argparse.Namespace, token: str | None) -> int:
    """Entry of both commands: the replicas from ``--history``, one HTTP client, errors as exit 2."""
    urls = [url.strip().rstrip("/") for url in args.history.split(",") if url.strip()]
    replicas = [Replica(index, url) for index, url in enumerate(urls)]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(args.timeout, connect=min(args.timeout, 10.0))
    async with httpx.AsyncClient(headers=headers, timeout=timeout) as http:
        try:
            return int(await args.replica_command(http, replicas, args))
        except (ReplicaUnanswered, orjson.JSONDecodeError, KeyError, ValueError) as exc:
            sys.stderr.write(f"durable-chat: a history replica did not answer: {exc}\n")
            return UNANSWERED


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register verify and repair with ``command(name, help=...)`` (the CLI's subparser factory)."""
    verify = command("verify", help="compare the history replicas' digests; name the rooms that differ")
    repair = command("repair", help="copy to each history replica the messages it lacks, from its peers")
    for parser, handler in ((verify, cmd_verify), (repair, cmd_repair)):
        parser.add_argument(
            "--history", required=True, metavar="URL[,URL...]",
            help="every history replica's base URL (their own API, e.g. http://history-0:8001), comma-separated",
        )
        parser.add_argument("--recheck", type=int, default=3,
                            help="times a differing room is asked again before it counts (%(default)s)")
        parser.add_argument("--interval", type=float, default=1.0,
                            help="seconds between rechecks: messages in flight settle (%(default)s)")
        parser.add_argument("--timeout", type=float, default=60.0,
                            help="seconds a replica may take to answer one request (%(default)s)")
        parser.set_defaults(replica_command=handler)
    repair.add_argument("--batch", type=int, default=500, help="messages per import request (%(default)s)")
