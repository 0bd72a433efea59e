"""The cluster side of the kind tests (test_kind_chaos.py, test_kind_history_replicas.py): kubectl and helm on the
cluster tests/e2e/kind/run.sh made, pods and their readiness, NodePort Services as a load balancer would route, and a
fault under steady load ending with the chaos checker.

run.sh sets DURABLE_CHAT_KIND_CONTEXT, _NAMESPACE, _RELEASE, KUBECTL and HELM; without them every kind test skips with
the reason `skip_reason()` gives (`cluster_test_marks()`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.chaos.invariant import Figures, check, settle
from tests.e2e.chaos.load import ChaosLoad

CONTEXT = os.environ.get("DURABLE_CHAT_KIND_CONTEXT", "")
NAMESPACE = os.environ.get("DURABLE_CHAT_KIND_NAMESPACE", "")
RELEASE = os.environ.get("DURABLE_CHAT_KIND_RELEASE", "dc")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or ""
ROOT = Path(__file__).resolve().parents[3]
HELM = os.environ.get("HELM") or str(ROOT / ".tools" / "bin" / "helm")
CHART = ROOT / "deploy" / "helm" / "durable-chat"
FULLNAME = f"{RELEASE}-durable-chat"
ROLL_TIMEOUT_S = 300


def skip_reason() -> str | None:
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


def cluster_test_marks() -> list[pytest.MarkDecorator]:
    """A cluster test module's ``pytestmark``: kind and e2e, and skipped with `skip_reason()` when it has one."""
    marks = [pytest.mark.kind, pytest.mark.e2e]
    if reason := skip_reason():
        marks.append(pytest.mark.skip(reason=reason))
    return marks


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
