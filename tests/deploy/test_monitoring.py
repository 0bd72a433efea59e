"""Alerts and dashboard: promtool checks and unit tests every alert; the dashboard JSON parses and its PromQL names
only metrics the services export (read from their real registries) and parses as PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.deploy.conftest import CHART, ROOT, Renderer, find, run

ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
PROMTOOL_TESTS = sorted((ROOT / "tests" / "deploy" / "promtool").glob("*.test.yaml"))
# Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up"}
METRIC_TOKEN = re.compile(r"\b(durable_chat_[a-z0-9_]+|up)\b(?!\s*\()")
JOB_MATCHERS = {'job=~"(.*[-/])?chat"', 'job=~"(.*[-/])?history"'}


def exported_series() -> set[str]:
    """Every series name the services can expose, from their real metric registries."""
    from services.chat.metrics import ChatMetrics
    from services.common.observability import build_info
    from services.history.metrics import HistoryMetrics

    names: set[str] = set()
    for create, service in ((ChatMetrics.create, "chat"), (HistoryMetrics.create, "history")):
        registry = CollectorRegistry()
        create(registry)
        build_info(registry, service, "test")
        for family in registry.collect():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            elif family.type == "histogram":
                names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count",
                          f"{family.name}_created"}
            else:
                names.add(family.name)
    return names


def alert_rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    def walk(panels: list[dict[str, object]]) -> list[tuple[str, str]]:
        found = []
        for panel in panels:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                found.append((str(panel["title"]), target["expr"]))
            found += walk(panel.get("panels", []))  # type: ignore[arg-type]
        return found

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def test_promtool_checks_the_rules(promtool: str) -> None:
    run([promtool, "check", "rules", str(ALERTS)])


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=[p.name for p in PROMTOOL_TESTS])
def test_promtool_unit_tests_pass(promtool: str, test_file: Path) -> None:
    run([promtool, "test", "rules", str(test_file)])


def test_every_alert_has_a_firing_unit_test() -> None:
    fired: set[str] = set()
    for path in PROMTOOL_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    names = {str(rule["alert"]) for rule in alert_rules()}
    assert names >= {
        "DurableChatHistoryBacklogGrowing", "DurableChatHistoryNotConsuming", "DurableChatPublishConfirmFailures",
        "DurableChatNoReadyReplicas", "DurableChatHighErrorRate", "DurableChatHistoryQueueOrphaned",
        "DurableChatHistoryReplicaNotReady", "DurableChatHistoryCopyStalled", "DurableChatHistoryReplicasDiverge",
    }
    assert names - fired == set(), f"alerts without a firing unit test: {sorted(names - fired)}"


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_series() | PROMETHEUS_SERIES
    exprs = [(str(r["alert"]), str(r["expr"])) for r in alert_rules()] + dashboard_exprs()
    assert len(exprs) > 20
    for where, expr in exprs:
        unknown = set(METRIC_TOKEN.findall(expr)) - exported
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by the services"


def test_expressions_select_by_the_job_convention_only() -> None:
    """No Kubernetes-only label in a selector: a plain Prometheus with jobs `chat` and `history` evaluates all."""
    exprs = [(str(r["alert"]), str(r["expr"])) for r in alert_rules()] + dashboard_exprs()
    for where, expr in exprs:
        for selector in re.findall(r"\{([^}]*)\}", expr):
            matchers = {m.strip() for m in selector.split(",") if m.strip()}
            assert matchers & JOB_MATCHERS, f"{where}: selector {{{selector}}} lacks the job matcher"
            for matcher in matchers:
                assert not re.match(r"(namespace|pod|container|service|endpoint)\b", matcher), (where, matcher)
    for pattern, job, other in (('(.*[-/])?chat', "chat", "history"), ('(.*[-/])?history', "history", "chat")):
        regex = re.compile(f"^(?:{pattern})$")
        for name in (job, f"r1-durable-chat-{job}", f"ns/durable-chat-{job}"):
            assert regex.match(name), name
        assert not regex.match(f"r1-durable-chat-{other}") and not regex.match(other)


def test_dashboard_expressions_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    run([promtool, "check", "rules", str(path)])


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "durable-chat"
    titles = " ".join(title.lower() for title, _ in dashboard_exprs())
    for topic in ("published", "clients", "confirm", "backlog", "lag", "failures", "error", "copy", "digest",
                  "replicas ready", "members", "presence", "heartbeat"):
        assert topic in titles, f"no panel about {topic}"
    assert any("by (instance)" in expr for _, expr in dashboard_exprs()), "per-pod panels"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_history_queue_series_are_judged_per_queue() -> None:
    """Chat replicas export one series per history queue (label `queue`); an expression that drops the label
    would add up or hide the replicas' queues (one orphan among healthy queues would vanish in a plain max)."""
    exprs = [(str(r["alert"]), str(r["expr"])) for r in alert_rules()] + dashboard_exprs()
    queue_exprs = [(where, expr) for where, expr in exprs if "durable_chat_history_queue_" in expr]
    assert queue_exprs
    for where, expr in queue_exprs:
        if where == "DurableChatHistoryNotConsuming":
            continue  # deliberately over every queue: no replica consumes at all
        assert "by (queue)" in expr or "by (namespace, queue)" in expr, f"{where}: {expr}"
    per_replica = {title for title, expr in dashboard_exprs() if "by (instance" in expr and "history" in expr}
    assert {"Copy progress per replica", "History lag per replica", "Digest mismatch per replica and peer"} <= (
        per_replica)


def test_prometheus_rule_renders_the_same_alerts_file(render: Renderer) -> None:
    docs = render.docs(sets=("metrics.prometheusRule.enabled=true", "metrics.dashboard.enabled=true"))
    assert find(docs, "PrometheusRule")["spec"] == yaml.safe_load(ALERTS.read_text())
    dashboard = find(docs, "ConfigMap", "-dashboard")["data"]["durable-chat.json"]
    assert json.loads(dashboard) == json.loads(DASHBOARD.read_text())
