"""A minimal WebSocket client (asyncio Protocol) for load generation: one parse per frame, nothing else.

The same client drives durable-chat and the bare baseline, so its cost is the same on both sides. It speaks
just enough RFC 6455 for this: no extensions, unfragmented server frames, a zero mask on client frames
(valid: the mask key is present; the bench only talks to 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable
from urllib.parse import urlsplit


class WsClient(asyncio.Protocol):
    def __init__(self, on_text: Callable[[WsClient, bytes], None]) -> None:
        self.on_text = on_text
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._open = False
        self._request = b""
        self.frames = 0
        self.state: object = None  # free for the caller

    @classmethod
    async def connect(cls, url: str, on_text: Callable[[WsClient, bytes], None], timeout: float = 30) -> WsClient:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1", "load generators target 127.0.0.1 only"
        loop = asyncio.get_running_loop()
        client = cls(on_text)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        client._request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{parts.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        await asyncio.wait_for(loop.create_connection(lambda: client, "127.0.0.1", parts.port), timeout)
        await asyncio.wait_for(client.opened, timeout)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buf[:end]).decode(errors="replace")[:200]))
                assert self.transport is not None
                self.transport.close()
                return
            self._open = True
            self.opened.set_result(None)
            pos = end + 4
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + length:
                break
            start = pos + head
            payload = bytes(buf[start : start + length])
            pos = start + length
            opcode = b0 & 0x0F
            if opcode == 1:
                self.frames += 1
                self.on_text(self, payload)
            elif opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if not self.closed.done():
                    self.closed.set_result(code)
                self._write(0x88, payload[:2])
                assert self.transport is not None
                self.transport.close()
            elif opcode == 9:
                self._write(0x8A, payload)
        del buf[:pos]

    def _write(self, first: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((first, 0x80 | n))
        elif n < 65536:
            header = bytes((first, 0x80 | 126)) + struct.pack("!H", n)
        else:
            header = bytes((first, 0x80 | 127)) + struct.pack("!Q", n)
        self.transport.write(header + b"\x00\x00\x00\x00" + payload)  # zero mask: payload unchanged

    def send_text(self, text: str | bytes) -> None:
        self._write(0x81, text.encode() if isinstance(text, str) else text)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(0x88, struct.pack("!H", 1000))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
