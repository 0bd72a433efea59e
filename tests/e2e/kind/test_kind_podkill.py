"""On a kind cluster: delete a chat pod and the history pod while messages stream; nothing acknowledged is lost.

Run by tests/e2e/kind/run.sh, which installs the chart and sets DURABLE_CHAT_KIND_CONTEXT, _NAMESPACE and _RELEASE.
The test makes its own `kubectl port-forward`s, one per pod, and re-creates them when pods are replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.client import ChatClient

pytestmark = [pytest.mark.kind, pytest.mark.e2e]

CONTEXT = os.environ.get("DURABLE_CHAT_KIND_CONTEXT", "")
NAMESPACE = os.environ.get("DURABLE_CHAT_KIND_NAMESPACE", "")
RELEASE = os.environ.get("DURABLE_CHAT_KIND_RELEASE", "dc")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or ""
MESSAGES = 300


def _skip_reason() -> str | None:
    if not shutil.which("kind"):
        return "kind is not installed (https://kind.sigs.k8s.io); run tests/e2e/kind/run.sh on a machine with kind"
    if not shutil.which("docker"):
        return "docker is not installed; the kind e2e needs a Docker engine"
    if not KUBECTL:
        return "kubectl is not installed"
    if not (CONTEXT and NAMESPACE):
        return ("no kind cluster given: DURABLE_CHAT_KIND_CONTEXT and DURABLE_CHAT_KIND_NAMESPACE are unset "
                "(tests/e2e/kind/run.sh creates the cluster and sets them)")
    probe = subprocess.run([KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, "get", "statefulset",
                            f"{RELEASE}-durable-chat-history"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"kind cluster {CONTEXT} has no durable-chat release {RELEASE} in {NAMESPACE}: {probe.stderr.strip()}"
    return None


_reason = _skip_reason()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def kubectl(*args: str, timeout: float = 120) -> str:
    result = subprocess.run([KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, *args],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def chat_pods() -> list[str]:
    out = kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=chat",
                  "-o", "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name}{' '}{end}")
    terminating = set(out.split())
    out = kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=chat",
                  "--field-selector=status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}")
    return sorted(set(out.split()) - terminating)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortForward:
    """`kubectl port-forward` to one target, in its own process group, killed on close."""

    def __init__(self, target: str, remote_port: int) -> None:
        self.target = target
        self.port = free_port()
        self.process = subprocess.Popen(
            [KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, "port-forward", target, f"{self.port}:{remote_port}",
             "--address", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"{self.target} not ready through port-forward in {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait(10)


@pytest.fixture
def forwards() -> Iterator[list[PortForward]]:
    opened: list[PortForward] = []
    try:
        yield opened
    finally:
        for forward in opened:
            forward.close()


def forward(opened: list[PortForward], target: str, port: int) -> PortForward:
    pf = PortForward(target, port)
    opened.append(pf)
    pf.wait_ready()
    return pf


def wait_history_ready(timeout: float = 300) -> None:
    kubectl("rollout", "status", f"statefulset/{RELEASE}-durable-chat-history", f"--timeout={int(timeout)}s",
            timeout=timeout + 10)
    kubectl("wait", "--for=condition=Ready", f"pod/{RELEASE}-durable-chat-history-0", f"--timeout={int(timeout)}s",
            timeout=timeout + 10)


async def all_stored(base_url: str, room: str) -> list[dict[str, object]]:
    stored: list[dict[str, object]] = []
    after = ""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        while True:
            params = {"limit": "1000", **({"after": after} if after else {})}
            page = (await http.get(f"/api/rooms/{room}/messages", params=params)).json()
            stored += page
            if len(page) < 1000:
                return stored
            after = str(page[-1]["id"])


@contextlib.asynccontextmanager
async def clients(*items: ChatClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for client in items:
            await client.close()


async def test_pod_kill_mid_stream_loses_nothing(forwards: list[PortForward]) -> None:
    pods = chat_pods()
    assert len(pods) >= 2, f"need two running chat pods, got {pods}"
    victim, survivor = pods[0], pods[1]
    to_victim = forward(forwards, f"pod/{victim}", 8000)
    to_survivor = forward(forwards, f"pod/{survivor}", 8000)
    urls = [to_victim.url.replace("http", "ws", 1) + "/ws", to_survivor.url.replace("http", "ws", 1) + "/ws"]
    room = f"podkill-{int(time.time())}"
    sender = ChatClient(urls, room, name="sender")
    receiver = ChatClient(urls, room, name="receiver")
    await sender.connect(0)
    await receiver.connect(1)
    async with clients(sender, receiver):
        client_ids = [f"k{index}" for index in range(MESSAGES)]
        sender_on = 0
        for index, client_id in enumerate(client_ids):
            if index == MESSAGES // 3:
                # A chat pod goes away while its client sends: graceful delete, as in a rollout or node drain.
                await asyncio.to_thread(kubectl, "delete", "pod", victim, "--wait=false")
            if index == MESSAGES // 2:
                # The history pod goes away: chat keeps flowing, chat.history buffers, history catches up.
                await asyncio.to_thread(kubectl, "delete", "pod", f"{RELEASE}-durable-chat-history-0", "--wait=false")
            try:
                await sender.send(f"m{index}", client_id)
            except Exception:
                sender_on = 1
                await sender.reconnect(1)
                await sender.send(f"m{index}", client_id)
            await asyncio.sleep(0.02)
            if sender.close_codes and sender_on == 0:
                sender_on = 1
                await sender.reconnect(1)
        # Resend whatever was not acknowledged (the replica died before the confirm): same client_id, so it is
        # stored once however many times it reached the broker.
        for _ in range(5):
            with contextlib.suppress(TimeoutError):
                await sender.wait_for(lambda: len(sender.acks) == MESSAGES, timeout=15)
            missing = [c for c in client_ids if c not in sender.acks]
            if not missing:
                break
            if sender_on == 0 and sender.close_codes:
                await sender.reconnect(1)
                sender_on = 1
            for client_id in missing:
                await sender.send(f"m{client_ids.index(client_id)}", client_id)
        assert len(sender.acks) == MESSAGES, f"unacknowledged: {[c for c in client_ids if c not in sender.acks]}"
        acked = set(sender.acks.values())

        # The receiver stayed on the surviving pod: it saw every acknowledged message live.
        await receiver.wait_for(lambda: acked <= set(receiver.unique), timeout=60)

    # History restarted on its volume and stored every acknowledged message exactly once per client_id.
    await asyncio.to_thread(wait_history_ready)
    deadline = time.monotonic() + 120
    while True:
        stored = await all_stored(to_survivor.url, room)
        by_client: dict[object, list[object]] = {}
        for message in stored:
            by_client.setdefault(message["client_id"], []).append(message["id"])
        if set(by_client) >= set(client_ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert set(by_client) >= set(client_ids), f"not stored: {sorted(set(client_ids) - set(by_client))[:20]}"
    assert all(len(ids) == 1 for ids in by_client.values()), "a client_id was stored twice"

    # A fresh client on the replacement chat pod gets the newest messages from history, each once.
    await asyncio.to_thread(kubectl, "rollout", "status", f"deployment/{RELEASE}-durable-chat-chat", "--timeout=300s",
                            timeout=310)
    replacement = next((p for p in chat_pods() if p not in (victim, survivor)), survivor)
    to_new = forward(forwards, f"pod/{replacement}", 8000)
    late = ChatClient([to_new.url.replace("http", "ws", 1) + "/ws"], room, name="late")
    async with clients(late):
        await late.connect(0)
        assert late.duplicates == []
        assert len(late.unique) >= min(100, MESSAGES)
        assert set(late.unique) <= {m["id"] for m in stored} | acked
