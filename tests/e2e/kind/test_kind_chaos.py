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
from collections.abc import Callable

from tests.e2e.chaos.load import ChaosLoad
from tests.e2e.kind.kube import (
    CHART,
    CHAT,
    FULLNAME,
    HISTORY,
    RABBITMQ,
    RELEASE,
    ROLL_TIMEOUT_S,
    Cluster,
    cluster_test_marks,
    helm,
    kubectl,
    pods,
    under_load,
    wait_gone,
    wait_http,
    wait_replaced,
)

pytestmark = cluster_test_marks()


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
