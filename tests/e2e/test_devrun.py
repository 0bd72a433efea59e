"""`make run`'s supervisor (python -m services.devrun) with the real services on the machine's RabbitMQ: it names
the broker version, refuses a busy port before anything starts, reports and restarts a process that is killed
while the others keep serving, and stops everything on SIGINT."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.rabbit import shared_vhost

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


@dataclass
class DevRun:
    process: subprocess.Popen[str]
    output: Path
    ports: dict[str, int]

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text(), re.M)
            if found:
                return found.group(0)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} (rc {self.process.poll()}):\n{self.text()[-4000:]}")

    def children(self) -> dict[int, str]:
        """pid -> command line of the supervisor's child processes."""
        found = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return found

    def pid_of(self, module: str) -> int:
        return next(pid for pid, cmd in self.children().items() if f"-m {module}" in cmd)


def start(tmp_path: Path, amqp_url: str, ports: dict[str, int]) -> DevRun:
    output = tmp_path / "devrun.out"
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "HISTORY_DATA_DIR": str(tmp_path / "history"),
        **{variable: str(port) for variable, port in ports.items()},
    }
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.devrun"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,
        )
    return DevRun(process, output, ports)


@pytest.fixture
def vhost_url() -> Iterator[str]:
    """`make run` uses the machine's broker: a throwaway vhost there, not the private node of the e2e suite."""
    with shared_vhost() as url:
        yield url


@pytest.fixture
def ports() -> dict[str, int]:
    return {"HISTORY_PORT": free_port(), "CHAT_PORT": free_port(), "CHAT_PORT_2": free_port()}


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_history_killed_is_reported_and_restarted_while_chat_keeps_serving(
    tmp_path: Path, vhost_url: str, ports: dict[str, int]
) -> None:
    run = start(tmp_path, vhost_url, ports)
    try:
        run.wait_for(r"durable-chat is running\.")
        version = run.wait_for(r"^devrun: RabbitMQ \d+\.\d+\.\d+ answers at amqp://127\.0\.0\.1:5672/dct-\w+$")
        assert run.text().index(version) < run.text().index("durable-chat is running")
        assert all(ready(port) for port in ports.values())
        chat_pids = {pid for pid, cmd in run.children().items() if "-m services.chat" in cmd}
        history = run.pid_of("services.history")

        os.kill(history, signal.SIGTERM)
        line = run.wait_for(r"^devrun +\| history exited \(killed by SIGTERM\) after .*$")
        assert re.search(r"last line: '.*Finished server process \[\d+\].*'; restarting in 0\.5 s$", line), line
        assert ready(ports["CHAT_PORT"]) and ready(ports["CHAT_PORT_2"])  # chat keeps serving without history
        deadline = time.monotonic() + 30
        while not ready(ports["HISTORY_PORT"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready(ports["HISTORY_PORT"]) and run.pid_of("services.history") != history
        assert {pid for pid, cmd in run.children().items() if "-m services.chat" in cmd} == chat_pids

        children = list(run.children())
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=40) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
        assert len(re.findall(r"^devrun +\| (history|chat-1|chat-2) stopped", run.text(), re.M)) == 3
    finally:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()


NO_BROKER = f"amqp://guest:guest@127.0.0.1:{free_port()}/"


def test_a_busy_port_fails_before_the_banner_naming_the_port_and_its_variable(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", ports["CHAT_PORT_2"]))
        holder.listen()
        run = start(tmp_path, NO_BROKER, ports)  # the ports are checked before the broker
        assert run.process.wait(timeout=15) == 2
    text = run.text()
    assert f"port {ports['CHAT_PORT_2']} (chat-2) is not free: [Errno 98] address already in use" in text
    assert "CHAT_PORT_2=<another port>" in text
    assert "durable-chat is running" not in text and "starting" not in text


def test_no_broker_fails_in_one_line_before_anything_starts(tmp_path: Path, ports: dict[str, int]) -> None:
    run = start(tmp_path, NO_BROKER, ports)
    assert run.process.wait(timeout=15) == 1
    text = run.text()
    assert text.startswith(f"devrun: RabbitMQ does not answer (amqp://127.0.0.1:{NO_BROKER.split(':')[-1]}")
    assert len(text.splitlines()) == 1
