"""The `make run` supervisor (services/devrun) driving real child processes: small HTTP servers that answer with
their pid, so a test can tell a restarted process from one that kept serving."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.devrun.supervisor import Backoff, PortClaim, Program, Supervisor, busy_ports, describe_status
from tests.support.ports import free_port

# A child: serves GET / with its pid, prints one line per request, and a last line when SIGTERM stops it.
CHILD = r"""
import http.server, os, signal, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        print("served", self.path, flush=True)
def bye(*_):
    print(f"child {os.getpid()} got SIGTERM, bye", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("listening", sys.argv[1], flush=True)
server.serve_forever()
"""


class Output(io.StringIO):
    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


@dataclass
class Running:
    supervisor: Supervisor
    out: Output
    ports: dict[str, int]
    ready: asyncio.Event


def program(name: str, port: int) -> Program:
    url = f"http://127.0.0.1:{port}/"
    return Program(name, [sys.executable, "-c", CHILD, str(port)], ready_url=url, ports=(PortClaim(port, "X_PORT"),))


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    ports = {name: free_port() for name in ("a", "b", "c")}
    out = Output()
    supervisor = Supervisor(
        [program(n, p) for n, p in ports.items()], out=out, backoff=Backoff(first_s=0.3, most_s=2.0, stable_s=60.0)
    )
    ready = asyncio.Event()
    task = asyncio.create_task(supervisor.run(on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 20)
    yield Running(supervisor, out, ports, ready)
    supervisor.stop()
    assert await asyncio.wait_for(task, 30) == 0


async def pid_of(port: int) -> int:
    async with httpx.AsyncClient(timeout=2) as client:
        return int((await client.get(f"http://127.0.0.1:{port}/")).text)


async def wait_for_line(out: Output, pattern: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in out.lines() if re.search(pattern, line)]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r} in:\n{out.getvalue()}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_child_killed_is_reported_in_one_line_and_restarted_while_the_others_serve(running: Running) -> None:
    pids = {name: await pid_of(port) for name, port in running.ports.items()}
    os.kill(pids["a"], signal.SIGTERM)

    line = await wait_for_line(running.out, r"^devrun \| a exited")
    assert f"last line: 'child {pids['a']} got SIGTERM, bye'" in line
    assert "(status 0)" in line and "restarting in 0.3 s" in line
    # During the backoff and after it, b and c are the same processes, still answering.
    assert {n: await pid_of(running.ports[n]) for n in ("b", "c")} == {n: pids[n] for n in ("b", "c")}
    new_pid = await wait_pid(running, "a")
    assert new_pid != pids["a"] and running.supervisor.children["a"].starts == 2
    assert {n: await pid_of(running.ports[n]) for n in ("b", "c")} == {n: pids[n] for n in ("b", "c")}
    assert [line for line in running.out.lines() if " exited " in line] == [line]


async def test_repeated_exits_back_off_exponentially(running: Running) -> None:
    for expected in ("0.3", "0.6", "1.2"):
        os.kill(await wait_pid(running, "a"), signal.SIGKILL)
        line = await wait_for_line(running.out, rf"a exited \(killed by SIGKILL\).*restarting in {expected} s")
        assert line.count("\n") == 0


async def wait_pid(running: Running, name: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_pid = running.supervisor.children[name].pid
        if with_pid is not None:
            try:
                return await pid_of(running.ports[name])
            except httpx.HTTPError:
                pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} not serving")


async def test_stop_terminates_every_child_and_restarts_none() -> None:
    ports = {name: free_port() for name in ("a", "b")}
    out = Output()
    supervisor = Supervisor([program(n, p) for n, p in ports.items()], out=out, backoff=Backoff(first_s=0.1))
    ready = asyncio.Event()
    task = asyncio.create_task(supervisor.run(on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 20)
    pids = [await pid_of(port) for port in ports.values()]
    supervisor.stop()
    assert await asyncio.wait_for(task, 30) == 0
    assert not any(alive(pid) for pid in pids)
    assert sorted(line for line in out.lines() if line.startswith("devrun")) == [
        "devrun | a stopped (status 0)",
        "devrun | b stopped (status 0)",
    ]
    assert all(child.starts == 1 for child in supervisor.children.values())


def test_a_busy_port_is_named_with_the_variable_that_moves_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        free = free_port()
        programs = [
            Program("chat-1", ["true"], ports=(PortClaim(taken, "CHAT_PORT"),)),
            Program("history", ["true"], ports=(PortClaim(free, "HISTORY_PORT"),)),
        ]
        problems = busy_ports(programs, host="127.0.0.1")
    assert len(problems) == 1
    assert f"port {taken} (chat-1)" in problems[0] and "CHAT_PORT=" in problems[0]
    assert "[Errno 98]" in problems[0]


def test_backoff_doubles_to_its_ceiling_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first_s=0.5, most_s=3.0, stable_s=30.0)
    delays = [None]
    for _ in range(5):
        delays.append(backoff.next_delay(delays[-1], ran_s=1.0))
    assert delays[1:] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.next_delay(3.0, ran_s=31.0) == 0.5


def test_exit_statuses_read_as_people_say_them() -> None:
    assert describe_status(-15) == "killed by SIGTERM"
    assert describe_status(3) == "status 3"


async def test_a_program_that_cannot_start_is_reported_and_retried_not_fatal(tmp_path: Path) -> None:
    out = Output()
    port = free_port()
    missing = Program("ghost", [str(tmp_path / "no-such-program")])
    supervisor = Supervisor([missing, program("a", port)], out=out, backoff=Backoff(first_s=0.2), ready_timeout_s=20)
    ready = asyncio.Event()
    task = asyncio.create_task(supervisor.run(on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 20)
    line = await wait_for_line(out, r"ghost exited \(could not start: \[Errno 2\] No such file or directory")
    assert "restarting in 0.2 s" in line
    await wait_for_line(out, r"ghost exited .*restarting in 0.4 s")
    assert await pid_of(port) == supervisor.children["a"].pid
    supervisor.stop()
    assert await asyncio.wait_for(task, 30) == 0
