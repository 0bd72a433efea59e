"""The baseline: a bare `websockets` broadcast server speaking the same frames as a chat replica.

No broker, no durability, no validation beyond JSON: a client's `send` gets an id, the frame is encoded once
and handed to `websockets.broadcast` for the room, and the sender gets an `ack`. On connect it replays from
an in-memory log (the newest 100, or everything after `after=`) and sends `synced`, so connect, seam and
recovery can be compared with the same client. Runs under uvloop when installed, like uvicorn does.

    python -m bench.bare_server PORT
"""

from __future__ import annotations

import asyncio
import bisect
import sys
from urllib.parse import parse_qs, urlsplit

import orjson
import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve

from services.common.ids import UlidGenerator

ORIGIN = "BARE0000"
LOG_MAX = 200_000


class Bare:
    def __init__(self) -> None:
        self.rooms: dict[str, set[ServerConnection]] = {}
        self.log: dict[str, tuple[list[str], list[str]]] = {}  # room -> (ids, frames)
        self.ids = UlidGenerator()

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        room = query.get("room", ["general"])[0]
        after = query.get("after", [""])[0].split(",")[-1]
        ids, frames = self.log.setdefault(room, ([], []))
        members = self.rooms.setdefault(room, set())
        start = bisect.bisect_right(ids, after) if after else max(0, len(ids) - 100)
        backlog = frames[start:]
        last = ids[-1] if ids else None
        members.add(ws)  # no await between the snapshot and joining: no gap, no duplicate
        try:
            for frame in backlog:
                await ws.send(frame)
            await ws.send(orjson.dumps({"type": "synced", "last": last}).decode())
            async for raw in ws:
                request = orjson.loads(raw)
                msg_id, ts = self.ids.mint()
                client_id = request.get("client_id")
                frame = orjson.dumps(
                    {
                        "type": "message",
                        "id": msg_id,
                        "origin": ORIGIN,
                        "room": room,
                        "author": None,
                        "text": request["text"],
                        "ts": ts,
                        "client_id": client_id,
                    }
                ).decode()
                ids.append(msg_id)
                frames.append(frame)
                if len(ids) > LOG_MAX:
                    del ids[: LOG_MAX // 2], frames[: LOG_MAX // 2]
                broadcast(members, frame)
                await ws.send(orjson.dumps({"type": "ack", "client_id": client_id, "id": msg_id}).decode())
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            members.discard(ws)


async def main(port: int) -> None:
    bare = Bare()
    async with serve(bare.handler, "127.0.0.1", port, compression=None, max_size=65536):
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
