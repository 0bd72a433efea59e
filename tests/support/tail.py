"""`durable-chat tail` as a real subprocess: its JSON lines and its stderr notes, collected as they come."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

import orjson

CLI = shutil.which("durable-chat", path=os.path.dirname(sys.executable)) or "durable-chat"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_CHAT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Tail:
    """``durable-chat --url URL tail --json -v ARGS``; ``out`` holds the printed messages, ``err`` the notes."""

    def __init__(self, url: str, *args: str) -> None:
        self.argv = [CLI, "--url", url, "tail", "--json", "-v", *args]
        self.out: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Tail:
        self._process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
            process_group=0, limit=1024 * 1024,  # a line holds a message of up to 4 KiB, JSON-escaped
        )
        self._pumps = [asyncio.create_task(self._pump_out()), asyncio.create_task(self._pump_err())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        await self._process.wait()
        for pump in self._pumps:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    def signal(self, sig: signal.Signals) -> None:
        assert self._process is not None
        os.killpg(self._process.pid, sig)

    def notes(self, text: str) -> int:
        return sum(text in line for line in self.err)

    @property
    def texts(self) -> list[str]:
        return [str(m["text"]) for m in self.out]

    async def until(self, predicate: Callable[[], bool], limit_s: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + limit_s
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, f"out={self.out} err={''.join(self.err)}"
            await asyncio.sleep(0.05)

    async def _pump_out(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            self.out.append(orjson.loads(line))

    async def _pump_err(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        async for line in self._process.stderr:
            self.err.append(line.decode())
