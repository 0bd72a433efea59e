"""Below ASGI for the fan-out hot path: pre-encoded WebSocket frames written straight to a connection's transport.

A server-to-client WebSocket frame is not masked and, without per-message compression (the replica turns it off),
it is the same bytes for every client: header + UTF-8 payload. So a message's frame is encoded once per replica,
and the frames one consumed batch holds for one client go out in one ``transport.write`` (several WebSocket frames
in one TCP write: the wire format is unchanged).

uvicorn runs the protocol class given as ``ws=``. ``FastSendProtocol``, a subclass of its websockets-sansio
protocol, puts a ``FastSend`` handle for each upgraded connection into the ASGI scope's ``extensions``; the
close handshake, pings, reads and shutdown stay uvicorn's. Any other server or protocol class, or a connection
that negotiated an extension (compression), has no handle, and the replica uses the plain ASGI send.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

FAST_SEND = "durable_chat.fast_send"
# Waiting for room in a transport that is not paused (many tiny frames queued): look again after this long.
UNPAUSED_RETRY_S = 0.005

_TEXT_FIN = 0x81  # FIN + opcode 1 (text); server frames carry no mask


def text_frame(payload: bytes) -> bytes:
    """One complete server-to-client text frame (RFC 6455 section 5.2) around a UTF-8 payload."""
    size = len(payload)
    if size < 126:
        return bytes((_TEXT_FIN, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", _TEXT_FIN, 126, size) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, size) + payload


def encode_text(frame: str) -> bytes:
    """A JSON text frame as wire bytes (strict UTF-8, as uvicorn encodes ``websocket.send`` text)."""
    return text_frame(frame.encode())


class FastSend:
    """Write access to one upgraded connection's transport, for as long as its WebSocket is open."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    @property
    def open(self) -> bool:
        """Whether data frames may still be written: accepted, no close sent or received, transport up."""
        protocol = self._protocol
        return (
            protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.disconnected
            and protocol.initial_response is None
            and not protocol.transport.is_closing()
        )

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self._protocol.transport.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        """Queue complete frames; the caller bounds the buffer (slow consumers are closed, not waited for)."""
        self._protocol.transport.write(data)

    async def room_to_write(self) -> None:
        """Wait until the transport asks for data again (its low-water mark), or a moment when it never paused."""
        writable = self._protocol.writable
        if writable.is_set():
            await asyncio.sleep(UNPAUSED_RETRY_S)
        else:
            await writable.wait()


class _Inbox:
    """What uvicorn's protocol needs of its receive queue (``put_nowait``, ``get``, ``empty``), for less memory
    than an ``asyncio.Queue`` (three deques per connection): events wait in a list, one reader waits at a time."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """``asyncio.Event`` as the protocol uses it (set, clear, is_set, wait), its waiters made only when needed."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> None:
        if self._value:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter


class FastSendProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus a ``FastSend`` handle in the scope of uncompressed connections,
    and less memory per connection: a leaner receive queue and write flag, and no handshake objects kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        self.request = None  # type: ignore[assignment]  # read once, above; its headers are in the scope
        # A refused upgrade sent its response and has no scope; an extension would transform every frame.
        if not self.close_sent and not self.conn.extensions:
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[FAST_SEND] = FastSend(self)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            self.response = None  # type: ignore[assignment]  # sent; only the handshake reads it


def fast_send(scope: Mapping[str, Any]) -> FastSend | None:
    """The connection's fast-send handle, or None when the server is not ``FastSendProtocol``."""
    extensions = scope.get("extensions") or {}
    handle = extensions.get(FAST_SEND)
    return handle if isinstance(handle, FastSend) else None
