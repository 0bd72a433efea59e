"""The shipped dashboard and alerts, evaluated by a real Prometheus scraping the real processes.

Prometheus (Debian's package) scrapes both chat replicas (job `chat`), two history replicas (job `history`) and
the private RabbitMQ node's rabbitmq_prometheus plugin (job `rabbitmq`), and loads the chart's alert file as
its rule file. After a short load, every PromQL expression of the Grafana dashboard must return data (the
per-replica panels included: copy, digest verify every second) and every alert must be inactive. Then history is
scaled down to one replica: `chat.history.1` keeps receiving every message with no consumer, and the orphan-queue
and backlog alerts' expressions turn true for that queue, and only for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import yaml

from tests.e2e.conftest import REMOTE_CHAT_URLS, Endpoints
from tests.support.client import ChatClient
from tests.support.ports import free_port
from tests.support.procs import LocalTopology
from tests.support.rabbit import PrivateRabbit
from tests.support.shared_node import shared_private_rabbit

FILES = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "durable-chat" / "files"
DASHBOARD = FILES / "dashboard.json"
ALERTS = FILES / "alerts.yaml"
BACKLOG_ALERT = "DurableChatHistoryBacklogGrowing"
ORPHAN_ALERT = "DurableChatHistoryQueueOrphaned"
ORPHAN_QUEUE = "chat.history.1"
# Grafana's own variables, as Grafana would expand them for a 5-minute view.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "${__range}": "5m"}

pytestmark = pytest.mark.e2e


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus is not installed (scripts/install-browser-tools.sh installs Debian's package)")
    if not DASHBOARD.exists() or not ALERTS.exists():
        pytest.skip(f"the chart's dashboard and alerts are not in {FILES}")
    return path


@pytest.fixture(scope="module")
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A node with the Prometheus plugin on a free port (overrides the suite's node for this module)."""
    _prometheus()
    with shared_private_rabbit() as node:
        yield node


class Prometheus:
    def __init__(self, binary: str, workdir: Path, targets: dict[str, list[int]]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
                for job, ports in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.workdir / "prometheus.log").open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                process_group=0, stdout=log, stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    def log_tail(self) -> str:
        return "\n".join((self.workdir / "prometheus.log").read_text(errors="replace").splitlines()[-20:])

    async def ready(self, http: httpx.AsyncClient, limit_s: float = 20) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            assert self._process is not None and self._process.poll() is None, self.log_tail()
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{self.url}/-/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
        raise AssertionError(f"prometheus not ready: {self.log_tail()}")

    async def query(self, http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        response = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def rules(self, http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
        body = (await http.get(f"{self.url}/api/v1/rules", params={"type": "alert"})).json()
        return {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}


@pytest.fixture
async def replicated(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Endpoints]:
    """Two chat replicas and two history replicas, each comparing its digests with its peer's every second."""
    if REMOTE_CHAT_URLS:
        pytest.skip("needs local processes to scale down (running against remote endpoints)")
    topology = LocalTopology(request.getfixturevalue("vhost_url"), tmp_path, history_replicas=2,
                             extra_env={"HISTORY_VERIFY_INTERVAL_S": "1"})
    try:
        topology.start()
        yield Endpoints([chat.url for chat in topology.chats], topology.history.url, topology)
    finally:
        topology.stop()


@pytest.fixture
async def prometheus(
    replicated: Endpoints, private_rabbit: PrivateRabbit, tmp_path: Path
) -> AsyncIterator[Prometheus]:
    topology = replicated.local()
    server = Prometheus(
        _prometheus(), tmp_path,
        {
            "chat": [chat.port for chat in topology.chats],
            "history": [history.port for history in topology.histories],
            "rabbitmq": [private_rabbit.prometheus_port],
        },
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel, rows included, Grafana variables expanded."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr and not target.get("hide"):
                    for name, value in GRAFANA_VARIABLES.items():
                        expr = expr.replace(name, value)
                    assert "$" not in expr, f"unknown dashboard variable in {panel.get('title')!r}: {expr}"
                    found.append((str(panel.get("title")), expr))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"] if "alert" in rule}


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


async def healthy_load(endpoints: Endpoints, room: str) -> None:
    """Two writers on two replicas, a reader that joins late, a resend, a history read, and the usual
    client mistakes (a frame that is not JSON, a bad room)."""
    alice = ChatClient(endpoints.ws_urls, room, name="alice", coalesce=True)
    bob = ChatClient(endpoints.ws_urls, room, name="bob", coalesce=True)
    alice_again = ChatClient(endpoints.ws_urls, room, name="alice")
    late = ChatClient(endpoints.ws_urls, room, name="late")
    try:
        await alice.connect(0)
        await bob.connect(1)
        for index in range(60):
            await alice.send(f"a{index}")
            await bob.send(f"b{index}")
        await alice.wait_for(lambda: len(alice.acks) == 60 and len(alice.unique) == 120)
        await bob.wait_for(lambda: len(bob.acks) == 60 and len(bob.unique) == 120)
        first_key = next(iter(alice.acks))
        await alice.send("a0", client_id=first_key)  # answered from the replica's idempotency cache
        await alice_again.connect(1)
        await alice_again.send("a0", client_id=first_key)  # another replica: published, then dropped by history
        await alice_again.wait_for(lambda: first_key in alice_again.acks)
        await alice.send_raw("not json")
        await alice.wait_for(lambda: any(e["code"] == "bad_json" for e in alice.errors))
        await late.connect(0)
        async with websockets.connect(f"{endpoints.ws_urls[1]}?room=not%20a%20room") as refused:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                async for _ in refused:
                    pass
            assert refused.close_code == 1008
        async with httpx.AsyncClient(base_url=endpoints.chat_urls[0]) as http:
            for _ in range(3):
                assert (await http.get(f"/api/rooms/{room}/messages", params={"limit": 50})).status_code == 200
    finally:
        for client in (alice, bob, alice_again, late):
            await client.close()


_T0 = time.monotonic()


def mark(what: str) -> None:
    print(f"{time.monotonic() - _T0:6.1f} s  {what}", flush=True)


async def until(check: Any, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def test_dashboard_queries_return_data_alerts_stay_quiet_and_orphan_queue_alert_fires(
    replicated: Endpoints, prometheus: Prometheus
) -> None:
    endpoints = replicated
    topology = endpoints.local()
    queries = dashboard_queries()
    rules = alert_rules()
    assert queries and {BACKLOG_ALERT, ORPHAN_ALERT} <= set(rules)
    async with httpx.AsyncClient(timeout=10) as http:
        await prometheus.ready(http)

        async def all_targets_up() -> bool:
            up = await prometheus.query(http, "up == 1")
            jobs = [sample["metric"]["job"] for sample in up]
            return sorted(jobs) == ["chat", "chat", "history", "history", "rabbitmq"]

        await until(all_targets_up, "every target up", 30)
        mark("targets up")
        await healthy_load(endpoints, "dashboards")
        mark("load done")

        # Every dashboard query has data once the load has been scraped twice.
        pending = {expr: title for title, expr in queries}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            # Keep reads flowing, as a live system has: a rate needs traffic between two scrapes.
            await http.get(f"{endpoints.chat_urls[0]}/api/rooms/dashboards/messages")
            for expr in list(pending):
                if finite(await prometheus.query(http, expr)):
                    del pending[expr]
            if pending:
                await asyncio.sleep(0.5)
        missing = [f"{title}: {expr} -> {await prometheus.query(http, expr)}" for expr, title in pending.items()]
        mark("dashboard checked")
        assert not missing, "dashboard queries without data:\n" + "\n".join(missing)
        assert finite(await prometheus.query(http, 'rabbitmq_build_info{job="rabbitmq"}'))
        queues = await prometheus.query(http, 'max by (queue) (durable_chat_history_queue_consumers{job="chat"})')
        assert {q["metric"]["queue"]: q["value"][1] for q in queues} == {"chat.history": "1", ORPHAN_QUEUE: "1"}

        # Every alert loads, evaluates without error and is quiet under the healthy load.
        async def rules_evaluated() -> bool:
            loaded = await prometheus.rules(http)
            return set(loaded) == set(rules) and all(r["lastEvaluation"] > "2000" for r in loaded.values())

        await until(rules_evaluated, "alert rules evaluated", 10)
        loaded = await prometheus.rules(http)
        assert {name: rule["health"] for name, rule in loaded.items()} == dict.fromkeys(rules, "ok")
        assert {name: rule["state"] for name, rule in loaded.items()} == dict.fromkeys(rules, "inactive")
        firing = {name: result for name, expr in rules.items() if (result := await prometheus.query(http, expr))}
        assert firing == {}
        mark("alerts checked")

        # Scale history down to one replica: replica 1 stops (SIGTERM) and its queue is left behind. The chat
        # replicas still publish to it and still watch it: it grows with no consumer, the orphan-queue and backlog
        # alerts' expressions turn true for that queue alone (their `for:` keeps them pending).
        topology.remove_history()
        writer = ChatClient(endpoints.ws_urls, "backlog", name="writer", coalesce=True)
        await writer.connect(0)
        try:
            for index in range(1200):
                await writer.send(f"queued {index}")
            await writer.wait_for(lambda: len(writer.acks) == 1200, timeout=60)
        finally:
            await writer.close()
        mark("1200 sent with one replica gone")

        async def alerting_queues(alert: str) -> set[str]:
            return {sample["metric"].get("queue", "") for sample in await prometheus.query(http, rules[alert])}

        for alert in (ORPHAN_ALERT, BACKLOG_ALERT):
            async def true_for_the_orphan(name: str = alert) -> bool:
                return await alerting_queues(name) == {ORPHAN_QUEUE}

            await until(true_for_the_orphan, f"{alert} expression true for {ORPHAN_QUEUE} only", 30)
            mark(f"{alert} true")

        async def alerts_pending() -> bool:
            states = {name: rule["state"] for name, rule in (await prometheus.rules(http)).items()}
            return all(states[name] in ("pending", "firing") for name in (ORPHAN_ALERT, BACKLOG_ALERT))

        await until(alerts_pending, f"{ORPHAN_ALERT} and {BACKLOG_ALERT} pending", 10)
