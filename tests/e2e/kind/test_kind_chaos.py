"""On a real cluster, under steady load: the everyday events of a Kubernetes deployment, each ending with the chaos
checker (tests/e2e/chaos/invariant.py: every acknowledged message stored exactly once, every client holds them all).

- both chat pods deleted in turn: their clients are closed 1012 and resume on the other pod;
- the history pod deleted: it comes back on the same PersistentVolumeClaim with its data, the backlog drains;
- `helm upgrade` changing a setting: every pod rolls (config checksum), clients closed 1012 resume;
- `helm rollback` to the previous revision: the same;
- the RabbitMQ pod deleted: publishes fail and are resent, every service reconnects.

Run by tests/e2e/kind/run.sh, which installs the chart and sets DURABLE_CHAT_KIND_CONTEXT, _NAMESPACE, _RELEASE,
KUBECTL and HELM. The clients reach the pods as a load balancer would: through NodePort Services on the node's
address, so a deleted pod's clients land on whichever pod is ready.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.chaos.invariant import Figures, check, settle
from tests.e2e.chaos.load import ChaosLoad

pytestmark = [pytest.mark.kind, pytest.mark.e2e]

CONTEXT = os.environ.get("DURABLE_CHAT_KIND_CONTEXT", "")
NAMESPACE = os.environ.get("DURABLE_CHAT_KIND_NAMESPACE", "")
RELEASE = os.environ.get("DURABLE_CHAT_KIND_RELEASE", "dc")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or ""
ROOT = Path(__file__).resolve().parents[3]
HELM = os.environ.get("HELM") or str(ROOT / ".tools" / "bin" / "helm")
CHART = ROOT / "deploy" / "helm" / "durable-chat"
FULLNAME = f"{RELEASE}-durable-chat"
ROLL_TIMEOUT_S = 300


def _skip_reason() -> str | None:
    if not KUBECTL:
        return "kubectl is not installed"
    if not (CONTEXT and NAMESPACE):
        return ("no cluster given: DURABLE_CHAT_KIND_CONTEXT and DURABLE_CHAT_KIND_NAMESPACE are unset "
                "(tests/e2e/kind/run.sh creates the cluster and sets them)")
    probe = subprocess.run([KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, "get", "statefulset",
                            f"{FULLNAME}-history"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cluster {CONTEXT} has no durable-chat release {RELEASE} in {NAMESPACE}: {probe.stderr.strip()}"
    return None


_reason = _skip_reason()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def run(args: list[str], timeout: float) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} (rc {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def kubectl(*args: str, timeout: float = 120) -> str:
    return run([KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, *args], timeout)


def helm(*args: str, timeout: float = ROLL_TIMEOUT_S + 60) -> str:
    return run([HELM, "--kube-context", CONTEXT, "-n", NAMESPACE, *args], timeout)


def pods(selector: str) -> dict[str, str]:
    """name -> uid of the pods matching `selector` that are not being deleted."""
    items = json.loads(kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in items if not p["metadata"].get("deletionTimestamp")}


def ready_pods(selector: str) -> dict[str, str]:
    items = json.loads(kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
    return {
        p["metadata"]["name"]: p["metadata"]["uid"] for p in items
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    }


CHAT = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=chat"
HISTORY = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=history"
RABBITMQ = "app.kubernetes.io/name=rabbitmq"


async def wait_replaced(
    selector: str, old_uids: set[str], count: int, timeout: float = ROLL_TIMEOUT_S
) -> dict[str, str]:
    """Wait until `count` ready pods match and none of them is one of `old_uids`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = await asyncio.to_thread(ready_pods, selector)
        if len(ready) == count and not set(ready.values()) & old_uids:
            return ready
        await asyncio.sleep(1)
    raise TimeoutError(f"{selector}: no {count} new ready pods in {timeout} s (old {sorted(old_uids)})")


async def wait_gone(selector: str, old_uids: set[str], timeout: float = ROLL_TIMEOUT_S) -> None:
    """Wait until none of `old_uids` exists, terminating ones included: a replaced pod still serves its clients
    through its preStop sleep and closes them (1012) only when it shuts down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(await asyncio.to_thread(kubectl, "get", "pods", "-l", selector, "-o", "json"))["items"]
        if not {p["metadata"]["uid"] for p in items} & old_uids:
            return
        await asyncio.sleep(1)
    raise TimeoutError(f"{selector}: old pods still there after {timeout} s ({sorted(old_uids)})")


def node_address() -> str:
    nodes = json.loads(run([KUBECTL, "--context", CONTEXT, "get", "nodes", "-o", "json"], 60))["items"]
    return str(next(a["address"] for a in nodes[0]["status"]["addresses"] if a["type"] == "InternalIP"))


def expose(name: str, selector: str, port: int) -> int:
    """A NodePort Service `name` in front of the pods of `selector`; returns its node port."""
    labels = dict(pair.split("=") for pair in selector.split(","))
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"e2e": "kind-chaos"}},
        "spec": {"type": "NodePort", "selector": labels, "ports": [{"port": port, "targetPort": port}]},
    }
    subprocess.run([KUBECTL, "--context", CONTEXT, "-n", NAMESPACE, "apply", "-f", "-"], input=json.dumps(service),
                   capture_output=True, text=True, timeout=60, check=True)
    return int(json.loads(kubectl("get", "service", name, "-o", "json"))["spec"]["ports"][0]["nodePort"])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 in {timeout} s")


@dataclass
class Cluster:
    chat_url: str
    history_url: str

    @property
    def ws_url(self) -> str:
        return self.chat_url.replace("http", "ws", 1) + "/ws"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    address = node_address()
    chat_port = expose("e2e-chat", CHAT, 8000)
    history_port = expose("e2e-history", HISTORY, 8001)
    found = Cluster(f"http://{address}:{chat_port}", f"http://{address}:{history_port}")
    wait_http(found.chat_url + "/readyz")
    wait_http(found.history_url + "/readyz")
    try:
        yield found
    finally:
        kubectl("delete", "service", "-l", "e2e=kind-chaos", "--wait=false")


Fault = Callable[[ChaosLoad], Awaitable[None]]


async def under_load(cluster: Cluster, fault_name: str, fault: Fault) -> tuple[ChaosLoad, Figures]:
    """4 senders and 2 readers through the Service; the fault; 100 more acknowledged; settle; the checker."""
    load = ChaosLoad([cluster.ws_url], f"kind-{uuid.uuid4().hex[:8]}", senders=4, readers=2)
    try:
        await load.start()
        await load.wait_acked(100)
        await fault(load)
        await load.wait_acked(len(load.acked) + 100, timeout=120)
        await load.stop_sending(timeout=120)
        stored = await settle(load, cluster.history_url, timeout=180)
        return load, check(fault_name, load, stored)
    finally:
        await load.shutdown()


def closed_by_restart(load: ChaosLoad) -> list[str]:
    """Clients never closed with 1012 (service restart) nor reconnected: there should be none."""
    return [c.name or "" for c in load.clients if 1012 not in c.close_codes or c.connections < 2]


async def test_chat_pods_deleted_in_turn_clients_resume_on_the_other(cluster: Cluster) -> None:
    async def delete_each_chat_pod(load: ChaosLoad) -> None:
        for name, uid in sorted(pods(CHAT).items()):
            acked = len(load.acked)
            await asyncio.to_thread(kubectl, "delete", "pod", name, "--wait=false")
            await wait_replaced(CHAT, {uid}, count=2)
            await load.wait_acked(acked + 50, timeout=120)

    load, _ = await under_load(cluster, "kind: chat pods deleted in turn", delete_each_chat_pod)
    # Every client was on one of the two original pods, so each was closed 1012 and came back at least once.
    assert closed_by_restart(load) == []


def history_claim() -> tuple[str, str]:
    claim = json.loads(kubectl("get", "pvc", f"data-{FULLNAME}-history-0", "-o", "json"))
    return claim["metadata"]["uid"], claim["spec"]["volumeName"]


async def test_history_pod_deleted_returns_with_its_volume_and_drains_the_backlog(cluster: Cluster) -> None:
    claim_before = history_claim()

    async def delete_history(load: ChaosLoad) -> None:
        old = pods(HISTORY)
        await asyncio.to_thread(kubectl, "delete", "pod", f"{FULLNAME}-history-0", "--wait=false")
        # While it is away, chat keeps acknowledging: the messages wait in the durable queue.
        acked = len(load.acked)
        await load.wait_acked(acked + 50, timeout=60)
        await wait_replaced(HISTORY, set(old.values()), count=1)

    await under_load(cluster, "kind: history pod deleted (PVC kept)", delete_history)
    assert history_claim() == claim_before, "the history pod must come back on the same claim and volume"


def config_value(component: str, key: str) -> str:
    data: dict[str, str] = json.loads(kubectl("get", "configmap", f"{FULLNAME}-{component}", "-o", "json"))["data"]
    return data[key]


def current_revision() -> int:
    history = json.loads(helm("history", RELEASE, "-o", "json", timeout=60))
    return int(history[-1]["revision"])


async def roll_all(load: ChaosLoad, action: Callable[[], str]) -> None:
    """Run a Helm action that changes the config of both components; every pod must be replaced."""
    old = {**pods(CHAT), **pods(HISTORY)}
    await asyncio.to_thread(action)
    await wait_replaced(CHAT, set(old.values()), count=2)
    await wait_replaced(HISTORY, set(old.values()), count=1)
    await wait_gone(CHAT, set(old.values()))
    acked = len(load.acked)
    await load.wait_acked(acked + 50, timeout=120)  # the clients the old pods closed are back and sending


def upgrade_heartbeat(seconds: int) -> str:
    return helm("upgrade", RELEASE, str(CHART), "--reuse-values", "--set", f"config.amqp.heartbeatS={seconds}",
                "--wait", "--timeout", f"{ROLL_TIMEOUT_S}s")


async def test_helm_upgrade_rolls_every_pod_and_loses_nothing(cluster: Cluster) -> None:
    before = int(config_value("chat", "AMQP_HEARTBEAT_S"))
    changed = before + 1

    async def upgrade(load: ChaosLoad) -> None:
        await roll_all(load, lambda: upgrade_heartbeat(changed))

    load, _ = await under_load(cluster, "kind: helm upgrade (config change rolls all pods)", upgrade)
    assert config_value("chat", "AMQP_HEARTBEAT_S") == config_value("history", "AMQP_HEARTBEAT_S") == str(changed)
    assert closed_by_restart(load) == []


async def test_helm_rollback_rolls_every_pod_and_loses_nothing(cluster: Cluster) -> None:
    before = config_value("chat", "AMQP_HEARTBEAT_S")
    await asyncio.to_thread(upgrade_heartbeat, int(before) + 2)
    target = current_revision() - 1

    async def rollback(load: ChaosLoad) -> None:
        await roll_all(load, lambda: helm("rollback", RELEASE, str(target), "--wait", "--timeout",
                                          f"{ROLL_TIMEOUT_S}s"))

    load, _ = await under_load(cluster, "kind: helm rollback (config change rolls all pods)", rollback)
    assert config_value("chat", "AMQP_HEARTBEAT_S") == before
    assert closed_by_restart(load) == []


async def test_rabbitmq_pod_deleted_everything_reconnects(cluster: Cluster) -> None:
    async def delete_broker(load: ChaosLoad) -> None:
        old = pods(RABBITMQ)
        await asyncio.to_thread(kubectl, "delete", "pod", "rabbitmq-0", "--wait=false")
        await wait_replaced(RABBITMQ, set(old.values()), count=1)
        await asyncio.to_thread(wait_http, cluster.chat_url + "/readyz", 120)
        await asyncio.to_thread(wait_http, cluster.history_url + "/readyz", 120)

    load, figures = await under_load(cluster, "kind: RabbitMQ pod deleted", delete_broker)
    assert figures.publish_failed + figures.resends + figures.reconnects > 0, "the broker's absence went unnoticed"
