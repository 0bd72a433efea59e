"""7. A three-node RabbitMQ 4 cluster against one node: what replication costs the publish and ingest paths.

Same run, same load, alternated: the single node is the bench's private node; the cluster is three RabbitMQ 4
nodes, each in a network namespace of its own (tests/e2e/cluster), with `chat.history` a quorum queue on all
three. The services get every node's address (`AMQP_URL` as a list).
- Publish: bench.publish's load (S WebSocket senders over 2 replicas, 2 sends in flight each); acks/s.
- Ingest: bench.ingest's method (a backlog published with the history service stopped, then drained by it);
  stored msg/s over the middle 90 % of the backlog.
The ratio is cluster / single node: below 1 is the price of a majority writing every message.
"""

from __future__ import annotations

import os
from typing import Any

from bench.common import Report, Row, log, median, run_loadgen, topology, workdir
from bench.ingest import drain_with_history, fill_backlog, history_process
from bench.loadgen import PRIVATE_NET_ENV
from bench.publish import durable_chat_spec
from tests.e2e.cluster.cluster import RabbitCluster

SINGLE, CLUSTER = "single node", "3-node cluster"


def _publish(ctx: Any, amqp: str, senders: int, warmup: float, duration: float, tag: str) -> dict[str, Any]:
    topo = topology(amqp, workdir(f"cluster-publish-{tag}"))
    try:
        topo.start()
        spec = durable_chat_spec(
            [c.ws_url for c in topo.chats], senders, warmup, duration, {"replicas": [c.pid for c in topo.chats]}
        )
        return run_loadgen(spec, ctx.logs / "loadgen.log", 180)
    finally:
        topo.stop()


def _ingest(ctx: Any, amqp: str, count: int, rep: int, tag: str) -> dict[str, Any]:
    wd = workdir(f"cluster-ingest-{tag}")
    boot = history_process(amqp, str(wd / "db-boot"), ctx.logs / "history-ingest.log", {})  # declares the topology
    boot.start()
    boot.kill()
    fill_backlog(ctx, amqp.split(",")[0], count)  # the load generator takes one node; the services take them all
    return drain_with_history(ctx, amqp, count, wd, rep, {})


def run(ctx: Any) -> Report:
    senders = 40 if ctx.quick else 100
    warmup, duration = (1.0, 3.0) if ctx.quick else (2.0, 8.0)
    count = 10_000 if ctx.quick else 50_000
    repeats = ctx.repeats if ctx.quick else min(ctx.repeats, 2)
    report = Report("cluster", ctx.command)
    report.params = {"senders": senders, "backlog": count, "repeats": repeats, "cluster": "3 x RabbitMQ 4, quorum"}
    cluster = RabbitCluster(3)
    try:
        log("cluster: starting three RabbitMQ 4 nodes")
        cluster.start()
        os.environ[PRIVATE_NET_ENV] = f"{cluster.network.prefix}.0/24"  # the load generators may reach the nodes
        amqp = {SINGLE: ctx.broker.vhost("cluster-single"), CLUSTER: cluster.url(cluster.add_vhost())}
        publish: dict[str, list[float]] = {SINGLE: [], CLUSTER: []}
        ingest: dict[str, list[float]] = {SINGLE: [], CLUSTER: []}
        for rep in range(repeats):
            for name in (SINGLE, CLUSTER) if rep % 2 == 0 else (CLUSTER, SINGLE):
                tag = f"{'c' if name == CLUSTER else 's'}{rep}"
                res = _publish(ctx, amqp[name], senders, warmup, duration, tag)
                log(f"cluster publish, {name}, rep {rep + 1}: {res['msgs_per_s']:.0f} acks/s")
                report.runs.append({"measure": "publish", "system": name, "rep": rep, **res})
                publish[name].append(res["msgs_per_s"])
                res = _ingest(ctx, amqp[name], count, rep, tag)
                log(f"cluster ingest, {name}, rep {rep + 1}: {res['msgs_per_s']:.0f} stored/s")
                report.runs.append({"measure": "ingest", "system": name, "rep": rep, **res})
                ingest[name].append(res["msgs_per_s"])
        report.rows.append(
            Row(f"accepted+acked msg/s, {senders} senders", median(publish[CLUSTER]), median(publish[SINGLE]), "msg/s",
                note="figure: 3-node cluster; baseline: single node")
        )
        report.rows.append(
            Row(f"stored durably, backlog {count:,}", median(ingest[CLUSTER]), median(ingest[SINGLE]), "msg/s",
                note="figure: 3-node cluster; baseline: single node")
        )
        report.notes.append("figure = 3-node RabbitMQ 4 cluster, baseline = one node, same run; no target")
        return report
    finally:
        cluster.destroy()
