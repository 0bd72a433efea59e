"""A TCP proxy between one service and the broker that a test can pause (a silent partition) or reset.

It runs its own event loop in a thread, so the test's loop (or a blocking call in it) never slows the link.
``pause()`` stops forwarding in both directions and holds every connection open, new ones included: nothing
is closed, so only heartbeats can tell that the peer is gone. ``resume()`` drops the connections held through
the pause (both ends have given up on them by then) and forwards new ones again. ``reset()`` aborts every
connection at once (a TCP reset from the peer's point of view).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable

from tests.support.ports import free_port


class LinkProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxy", daemon=True)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, vhost_url: str) -> str:
        """``vhost_url`` with its port replaced by the proxy's."""
        return vhost_url.replace(f":{self.target_port}/", f":{self.port}/")

    def start(self) -> None:
        self._thread.start()
        self._call(self._start)

    def pause(self) -> None:
        self._call(self._pause)

    def resume(self) -> None:
        self._call(self._resume)

    def reset(self) -> None:
        self._call(self._abort_all)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, fn: Callable[[], object]) -> None:
        async def run() -> None:
            result = fn()
            if asyncio.iscoroutine(result):
                await result

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    def _pause(self) -> None:
        assert self._flowing is not None
        self._flowing.clear()

    def _resume(self) -> None:
        assert self._flowing is not None
        self._abort_all()
        self._flowing.set()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: the close sends a reset, not a FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()
        self._writers.clear()

    async def _stop(self) -> None:
        self._abort_all()
        if self._server is not None:
            self._server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.connections += 1
        self._writers.add(client_writer)
        await self._flowing.wait()
        try:
            broker_reader, broker_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            self._writers.discard(client_writer)
            return
        self._writers.add(broker_writer)
        await asyncio.gather(
            self._pipe(client_reader, broker_writer), self._pipe(broker_reader, client_writer),
            return_exceptions=True,
        )
        for writer in (client_writer, broker_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            await self._flowing.wait()
            data = await reader.read(65536)
            if not data:
                break
            await self._flowing.wait()
            if writer.transport.is_closing():
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
