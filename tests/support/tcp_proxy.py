"""A tiny round-robin TCP load balancer for tests, standing in for the chart's Service before the replicas.

Each accepted connection goes to the next backend in turn; a backend that refuses is skipped, as a load
balancer with health checks would skip a dead pod. Paths are untouched (layer 4), so the page it serves uses
its own origin for the WebSocket and the API, as it does in a real deployment.

Run as a process: ``python -m tests.support.tcp_proxy --port P --backend 127.0.0.1:A --backend 127.0.0.1:B``.
It writes one line per connection to stdout: ``conn <n> -> <host:port>``. ``TcpProxy`` starts it in its own
process group and kills it with the group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.ports import free_port, port_open


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class _Balancer:
    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._turn = itertools.count()
        self._conns = itertools.count(1)

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        start = next(self._turn)
        conn = next(self._conns)
        for step in range(len(self.backends)):
            host, port = self.backends[(start + step) % len(self.backends)]
            try:
                opened = asyncio.open_connection(host, port)
                backend_reader, backend_writer = await asyncio.wait_for(opened, 2)
            except (OSError, TimeoutError):
                continue
            print(f"conn {conn} -> {host}:{port}", flush=True)
            await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
            return
        print(f"conn {conn} -> none", flush=True)
        client_writer.close()


async def _serve(port: int, backends: list[tuple[str, int]]) -> None:
    balancer = _Balancer(backends)
    server = await asyncio.start_server(balancer.handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", action="append", required=True, help="host:port, repeatable")
    args = parser.parse_args(argv)
    backends = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in args.backend]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, backends))


class TcpProxy:
    """The balancer as a child process in its own group; ``log`` lists which backend each connection got."""

    def __init__(self, backends: list[int], workdir: Path, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.backends = backends
        self.host = host
        self.log_path = workdir / f"tcp-proxy-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10) -> None:
        args = [sys.executable, "-m", "tests.support.tcp_proxy", "--port", str(self.port)]
        for port in self.backends:
            args += ["--backend", f"{self.host}:{port}"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(args, process_group=0, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcp proxy did not start: {self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def connections(self) -> list[str]:
        """The backend (host:port) of each connection so far, in order."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line.split(" -> ", 1)[1] for line in lines if line.startswith("conn ")]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)


if __name__ == "__main__":
    main()
