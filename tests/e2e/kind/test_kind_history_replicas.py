"""Replicated history on a real cluster (issue 13), under steady load, each test ending with the chaos checker:

- `helm upgrade --set history.replicas=2` of the one-replica release the run installed: replica 1 starts on an empty
  volume, copies everything from replica 0 and becomes ready; replica 0 keeps its claim and its data; both hold the
  same rooms (their /digest answers are equal);
- history pod 0 **and its PersistentVolumeClaim** deleted: it returns on a new, empty volume, copies from replica 1
  before it is ready, the readers (reconnecting all along) never get `history_unavailable`, and the digests are
  equal again.

Runs after test_kind_chaos.py (run.sh passes both, in that order): it leaves the release with two history replicas.
Each replica is reached by a NodePort Service of its own (selector `statefulset.kubernetes.io/pod-name`), which, as
every Service, routes to the pod only while it is ready.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.e2e.chaos.load import ChaosLoad
from tests.e2e.chaos.replicas import Reconnects, digests
from tests.e2e.kind.kube import (
    CHART,
    CHAT,
    FULLNAME,
    HISTORY,
    RELEASE,
    ROLL_TIMEOUT_S,
    Cluster,
    cluster_test_marks,
    expose,
    helm,
    kubectl,
    node_address,
    pods,
    under_load,
    wait_gone,
    wait_http,
    wait_replaced,
)

pytestmark = cluster_test_marks()

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"


def history_pod(ordinal: int) -> str:
    return f"{FULLNAME}-history-{ordinal}"


def claim_of(ordinal: int) -> dict[str, Any] | None:
    """The replica's PersistentVolumeClaim (uid, volume), or None while there is none."""
    found = json.loads(kubectl("get", "pvc", "-o", "json"))["items"]
    name = f"data-{history_pod(ordinal)}"
    return next((c for c in found if c["metadata"]["name"] == name and not c["metadata"].get("deletionTimestamp")),
                None)


def replica_url(ordinal: int) -> str:
    """A NodePort Service in front of one history pod, once it answers (a Service routes to ready pods only)."""
    port = expose(f"e2e-history-{ordinal}", f"{POD_NAME_LABEL}={history_pod(ordinal)}", 8001)
    url = f"http://{node_address()}:{port}"
    wait_http(url + "/readyz", 60)
    return url


async def equal_replica_digests(urls: list[str], timeout: float = 90) -> list[dict[str, Any]]:
    """Wait until every replica answers the same /digest (the last messages of the load settle); return it."""
    deadline = time.monotonic() + timeout
    while True:
        answers = [await digests(url) for url in urls]
        if all(answer == answers[0] for answer in answers):
            return answers[0]
        if time.monotonic() > deadline:
            summary = [{d["room"]: d["count"] for d in answer} for answer in answers]
            raise AssertionError(f"replica digests still differ after {timeout} s: {summary}")
        await asyncio.sleep(1)


def copied_from_peer(ordinal: int) -> bool:
    """The replica's log since its start has the copy's progress line (services/history/replication.py)."""
    return "copying from peer" in kubectl("logs", history_pod(ordinal), timeout=60)


def unavailable_errors(load: ChaosLoad) -> int:
    return sum(1 for client in load.clients for frame in client.frames
               if frame.get("type") == "error" and frame.get("code") == "history_unavailable")


def replicas_setting() -> int:
    data: dict[str, str] = json.loads(kubectl("get", "configmap", f"{FULLNAME}-chat", "-o", "json"))["data"]
    return int(data["AMQP_HISTORY_REPLICAS"])


async def test_upgrade_to_two_history_replicas_copies_and_keeps_the_data(cluster: Cluster) -> None:
    if replicas_setting() != 1:
        pytest.skip("the release already runs more than one history replica")
    claim_before = claim_of(0)
    assert claim_before is not None
    # What replica 0 holds from the tests before this one: it must survive the upgrade, and replica 1 must copy it.
    before = {d["room"]: d for d in await digests(await asyncio.to_thread(replica_url, 0))}
    assert before, "the earlier kind tests left no history to keep"

    async def upgrade(load: ChaosLoad) -> None:
        old = {**pods(CHAT), **pods(HISTORY)}
        await asyncio.to_thread(helm, "upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "history.replicas=2",
                                "--wait", "--timeout", f"{ROLL_TIMEOUT_S}s")
        await wait_replaced(CHAT, set(old.values()), count=2)
        await wait_replaced(HISTORY, set(old.values()), count=2)
        await wait_gone(CHAT, set(old.values()))
        acked = len(load.acked)
        await load.wait_acked(acked + 50, timeout=120)

    await under_load(cluster, "kind: helm upgrade to two history replicas", upgrade)
    assert replicas_setting() == 2
    assert copied_from_peer(1), "replica 1 started empty: it must have copied from replica 0"
    claim_after = claim_of(0)
    assert claim_after is not None
    assert (claim_after["metadata"]["uid"], claim_after["spec"]["volumeName"]) == (
        claim_before["metadata"]["uid"], claim_before["spec"]["volumeName"]), "replica 0 keeps its volume"
    urls = [await asyncio.to_thread(replica_url, ordinal) for ordinal in (0, 1)]
    agreed = {d["room"]: d for d in await equal_replica_digests(urls)}
    assert {room: agreed.get(room) for room in before} == before, "rooms written before the upgrade changed"


async def delete_pod_and_claim(ordinal: int) -> tuple[str, str]:
    """Delete a history pod and its claim; return the new claim's (uid, volume) once it is bound.

    The claim's protection finalizer holds it until its pod is gone; the StatefulSet controller does not create the
    pod again while the claim is being deleted (FailedCreate: "is being deleted"), then creates claim and pod."""
    old = claim_of(ordinal)
    assert old is not None
    old_uid = old["metadata"]["uid"]
    pod = history_pod(ordinal)
    await asyncio.to_thread(kubectl, "delete", "pvc", f"data-{pod}", "--wait=false")
    await asyncio.to_thread(kubectl, "delete", "pod", pod, "--wait=false")
    deadline = time.monotonic() + ROLL_TIMEOUT_S
    while time.monotonic() < deadline:
        claim = await asyncio.to_thread(claim_of, ordinal)
        if claim is not None and claim["metadata"]["uid"] != old_uid and claim["status"].get("phase") == "Bound":
            return claim["metadata"]["uid"], claim["spec"]["volumeName"]
        await asyncio.sleep(1)
    raise TimeoutError(f"{pod}: no new claim bound in {ROLL_TIMEOUT_S} s")


async def test_history_pod_and_its_claim_deleted_returns_empty_and_copies(cluster: Cluster) -> None:
    if replicas_setting() < 2:
        pytest.skip("needs two history replicas (test_upgrade_to_two_history_replicas_... makes them)")
    claim_before = claim_of(0)
    assert claim_before is not None
    new_claim: tuple[str, str] = ("", "")

    async def lose_replica_0(load: ChaosLoad) -> None:
        nonlocal new_claim
        old = pods(HISTORY)
        # Readers reconnect with their cursor all along: every reconnect is a history read through chat.
        async with Reconnects(load, interval_s=0.5):
            new_claim = await delete_pod_and_claim(0)
            await wait_replaced(HISTORY, {old[history_pod(0)]}, count=2)
            acked = len(load.acked)
            await load.wait_acked(acked + 50, timeout=120)

    load, _ = await under_load(cluster, "kind: history pod 0 and its claim deleted (2 replicas)", lose_replica_0)
    assert new_claim[0] != claim_before["metadata"]["uid"], "replica 0 must have come back on a new claim"
    assert copied_from_peer(0), "replica 0 came back empty: it must have copied from replica 1"
    assert unavailable_errors(load) == 0, "a reader got history_unavailable while one replica was ready"
    await equal_replica_digests([await asyncio.to_thread(replica_url, ordinal) for ordinal in (0, 1)])
