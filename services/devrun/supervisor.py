"""A small process supervisor for running the system on one machine (`make run`).

Each program runs in its own process group (a Ctrl-C in the terminal reaches only the supervisor, which then stops
the children in order) and dies with the supervisor (PR_SET_PDEATHSIG). Its output is relayed line by line with its
name in front. A program that exits is reported in one line (which, exit status, its last log line) and started
again after a backoff that doubles up to a ceiling, and resets once a run has stayed up; the others keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import httpx

PR_SET_PDEATHSIG = 1
LINE_LIMIT = 1 << 20  # a traceback logged as one JSON line can be long


@dataclass(frozen=True)
class PortClaim:
    """A port a program listens on, and the environment variable that moves it."""

    port: int
    variable: str


@dataclass(frozen=True)
class Program:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None
    ports: tuple[PortClaim, ...] = ()


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.5
    most_s: float = 30.0
    stable_s: float = 30.0  # a run this long starts the next backoff from first_s again

    def next_delay(self, previous_s: float | None, ran_s: float) -> float:
        if previous_s is None or ran_s >= self.stable_s:
            return self.first_s
        return min(previous_s * 2, self.most_s)


def busy_ports(programs: list[Program], host: str = "0.0.0.0") -> list[str]:
    """One message per claimed port that cannot be bound now, naming the program and the variable that moves it."""
    problems = []
    for program in programs:
        for claim in program.ports:
            reason = bind_error(host, claim.port)
            if reason:
                problems.append(
                    f"port {claim.port} ({program.name}) is not free: {reason}. "
                    f"Stop what holds it, or move {program.name} with {claim.variable}=<another port>."
                )
    return problems


def bind_error(host: str, port: int) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The services set SO_REUSEADDR too: a port in TIME_WAIT from a previous run is free for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"[Errno {exc.errno}] {os.strerror(exc.errno or errno.EADDRINUSE).lower()}"
    return None


def describe_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"status {returncode}"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the supervisor is SIGKILLed, the kernel sends SIGTERM here.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One program: its current process, its last output line, its restart history."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.process: asyncio.subprocess.Process | None = None
        self.last_line = ""
        self.starts = 0
        self.delay_s: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None


class Supervisor:
    def __init__(
        self,
        programs: list[Program],
        out: TextIO = sys.stdout,
        backoff: Backoff | None = None,
        stop_grace_s: float = 20.0,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.children = {p.name: Child(p) for p in programs}
        self._out = out
        self._backoff = backoff or Backoff()
        self._stop_grace_s = stop_grace_s
        self._ready_timeout_s = ready_timeout_s
        self._stopping = asyncio.Event()
        self._width = max(len(p.name) for p in programs)

    def say(self, line: str) -> None:
        self._out.write(f"{'devrun':<{self._width}} | {line}\n")
        self._out.flush()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, on_ready: Callable[[], None] = lambda: None) -> int:
        """Keep every program running until stop() (or SIGINT/SIGTERM, see main): 0 once all have stopped."""
        keepers = [asyncio.create_task(self._keep(child), name=f"keep-{name}") for name, child in self.children.items()]
        try:
            not_ready = await self._wait_ready()
            for name in not_ready:
                last = self.children[name].last_line
                self.say(f"{name} is not ready after {self._ready_timeout_s:.0f} s; its last line: {last!r}")
            if not self._stopping.is_set():
                on_ready()
            await self._stopping.wait()
        finally:
            self._stopping.set()
            await self._stop_all()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await self._stop_all()  # one that a keeper was starting while the first pass ran
        return 0

    async def _keep(self, child: Child) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                how = describe_status(await self._run_once(child))
            except OSError as exc:  # the program could not be started at all (a missing interpreter, ...)
                how = f"could not start: {exc}"
            if self._stopping.is_set():
                return
            ran_s = time.monotonic() - started
            child.delay_s = self._backoff.next_delay(child.delay_s, ran_s)
            self.say(
                f"{child.program.name} exited ({how}) after {ran_s:.1f} s; "
                f"last line: {child.last_line[-300:]!r}; restarting in {child.delay_s:g} s"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), child.delay_s)

    async def _run_once(self, child: Child) -> int:
        program = child.program
        process = await asyncio.create_subprocess_exec(
            *program.argv,
            env={**os.environ, **program.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=LINE_LIMIT,
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        child.process = process
        child.starts += 1
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                child.last_line = line
                self._out.write(f"{program.name:<{self._width}} | {line}\n")
        self._out.flush()
        return await process.wait()

    async def _wait_ready(self) -> list[str]:
        """Names of the programs whose ready_url did not answer 200 within the ready timeout."""
        pending = {name: c.program.ready_url for name, c in self.children.items() if c.program.ready_url}
        deadline = time.monotonic() + self._ready_timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while pending and time.monotonic() < deadline and not self._stopping.is_set():
                for name, url in list(pending.items()):
                    with contextlib.suppress(httpx.HTTPError):
                        if url and (await client.get(url)).status_code == 200:
                            del pending[name]
                await asyncio.sleep(0.2)
        return sorted(pending)

    async def _stop_all(self) -> None:
        running = [c for c in self.children.values() if c.pid is not None]
        for child in running:
            self.signal_child(child, signal.SIGTERM)
        waits = {c.program.name: asyncio.create_task(self._reaped(c)) for c in running}
        if not waits:
            return
        _, late = await asyncio.wait(waits.values(), timeout=self._stop_grace_s)
        for name, task in waits.items():
            if task in late:
                self.say(f"{name} did not stop within {self._stop_grace_s:g} s: SIGKILL")
                self.signal_child(self.children[name], signal.SIGKILL)
        await asyncio.gather(*waits.values(), return_exceptions=True)
        for name, task in waits.items():
            if not task.cancelled() and task.exception() is None:
                self.say(f"{name} stopped ({describe_status(task.result())})")

    @staticmethod
    async def _reaped(child: Child) -> int:
        assert child.process is not None
        return await child.process.wait()

    @staticmethod
    def signal_child(child: Child, signum: signal.Signals) -> None:
        if child.process is not None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signum)


def install_stop_signals(supervisor: Supervisor) -> None:
    """SIGINT/SIGTERM stop every program gracefully; a second one kills what is still running."""
    loop = asyncio.get_running_loop()
    seen = []

    def on_signal(signum: signal.Signals) -> None:
        seen.append(signum)
        if len(seen) == 1:
            supervisor.say(f"{signum.name}: stopping {', '.join(supervisor.children)}")
            supervisor.stop()
            return
        for child in supervisor.children.values():
            supervisor.signal_child(child, signal.SIGKILL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
