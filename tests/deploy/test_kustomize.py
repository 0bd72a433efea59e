"""The Kustomize tree: every overlay builds with the real kubectl kustomize and validates against Kubernetes; the base
and the components are the same objects as the chart renders; overlays use the current syntax; the settings they
merge are read by the services."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    K8S_VERSIONS,
    KUSTOMIZE,
    KUSTOMIZE_TREES,
    Doc,
    Renderer,
    Validation,
    kustomize_build,
    pod_specs,
)
from tests.deploy.crd_schemas import CRD_SCHEMAS
from tests.deploy.test_config_parity import MODELS_OF, env_names

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is missing: run scripts/install-deploy-tools.sh")

OVERLAYS = [tree.split("/", 1)[1] for tree in KUSTOMIZE_TREES if tree.startswith("overlays/")]
TREES = KUSTOMIZE_TREES
HASH_SUFFIX = re.compile(r"-[a-z0-9]{10}$")
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/part-of", "environment")
DEPRECATED = {"patchesStrategicMerge", "patchesJson6902", "commonLabels", "bases", "vars"}

build = kustomize_build


def normalize(doc: Doc) -> Doc:
    """Drop what legitimately differs between helm and kustomize: tool labels, the config checksum (kustomize
    rolls pods by the ConfigMap hash suffix instead), hash suffixes, the namespace."""
    doc = copy.deepcopy(doc)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("labels", "annotations"):
                if isinstance(node.get(key), dict):
                    for drop in (*HELM_ONLY_LABELS, "checksum/config"):
                        node[key].pop(drop, None)
                    if not node[key]:
                        del node[key]
            for key, value in list(node.items()):
                if key == "name" and isinstance(value, str):
                    node[key] = HASH_SUFFIX.sub("", value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    doc["metadata"].pop("namespace", None)
    walk(doc)
    return doc


def by_key(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    normalized = [normalize(d) for d in docs]
    return {(d["kind"], d["metadata"]["name"]): d for d in normalized}


@pytest.fixture(scope="module")
def chart_like_base(render: Renderer) -> dict[tuple[str, str], Doc]:
    docs = render.docs(release="durable-chat", sets=("tests.enabled=false",))
    return by_key([d for d in docs if d["kind"] != "Secret"])


def test_overlays_exist() -> None:
    assert set(OVERLAYS) >= {"dev", "kind", "production"}


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builds_and_validates(kubectl: str, kustomize_validation: Validation, tree: str, version: str) -> None:
    docs = build(kubectl, tree)
    assert kustomize_validation.errors(tree, version) == []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])])


def test_base_is_the_chart_defaults(kubectl: str, chart_like_base: dict[tuple[str, str], Doc]) -> None:
    base = by_key(build(kubectl, "base"))
    assert set(base) == set(chart_like_base)
    for key, doc in base.items():
        assert doc == chart_like_base[key], f"{key} differs between deploy/kustomize/base and the chart"


def test_components_are_the_chart_objects(kubectl: str, render: Renderer) -> None:
    production = by_key(build(kubectl, "overlays/production"))
    chart = by_key(render.docs(release="durable-chat", sets=(
        "networkPolicy.enabled=true", "chat.autoscaling.enabled=true", "metrics.podMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true", "metrics.dashboard.enabled=true")))
    for key in (("NetworkPolicy", "durable-chat-chat"), ("NetworkPolicy", "durable-chat-history")):
        assert production[key] == chart[key]
    hpa = ("HorizontalPodAutoscaler", "durable-chat-chat")
    assert production[hpa]["spec"]["scaleTargetRef"] == chart[hpa]["spec"]["scaleTargetRef"]
    assert "replicas" not in production[("Deployment", "durable-chat-chat")]["spec"]
    monitor = ("PodMonitor", "durable-chat")
    chart_monitor = copy.deepcopy(chart[monitor])
    chart_monitor["spec"].pop("namespaceSelector")  # kustomize: the PodMonitor's own namespace
    production[monitor]["metadata"]["labels"].pop("release")
    assert production[monitor] == chart_monitor
    rule = ("PrometheusRule", "durable-chat")
    assert production[rule]["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    dashboard = production[("ConfigMap", "durable-chat-dashboard")]
    assert json.loads(dashboard["data"]["durable-chat.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text())
    assert (KUSTOMIZE / "components" / "monitoring" / "dashboard.json").read_bytes() == (
        CHART / "files" / "dashboard.json").read_bytes()


@pytest.mark.parametrize("path", sorted(KUSTOMIZE.rglob("kustomization.yaml")), ids=lambda p: str(p.parent.name))
def test_current_kustomize_syntax(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())
    assert not DEPRECATED & set(spec), f"{path}: deprecated fields {DEPRECATED & set(spec)}"
    if path.parent.parent.name == "overlays":
        assert {"patches", "labels", "configMapGenerator"} <= set(spec), path


@pytest.mark.parametrize("tree", TREES)
def test_settings_and_security_survive_the_overlays(kubectl: str, tree: str) -> None:
    docs = build(kubectl, tree)
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for obj, spec in pod_specs(docs):
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        container = spec["containers"][0]
        names = {e["name"] for e in container.get("env", [])}
        for source in container["envFrom"]:
            names |= set(config_maps[source["configMapRef"]["name"]]["data"])
        unread = names - env_names(MODELS_OF[component])
        assert not unread, f"{tree} {component}: variables the service does not read: {sorted(unread)}"
        assert spec["securityContext"]["runAsNonRoot"] is True
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        if component == "chat":
            grace = spec["terminationGracePeriodSeconds"]
            drain = float(config_maps[container["envFrom"][0]["configMapRef"]["name"]]["data"]["CHAT_SHUTDOWN_GRACE_S"])
            assert grace > drain + float(container["lifecycle"]["preStop"]["exec"]["command"][1]), tree


@pytest.mark.parametrize("tree", TREES)
def test_history_replica_count_and_its_settings_agree(kubectl: str, tree: str) -> None:
    """An overlay that changes the StatefulSet's replicas must change AMQP_HISTORY_REPLICAS (both components),
    HISTORY_PEERS and CHAT_HISTORY_URL with it: a replica whose queue chat does not declare misses every message
    published before it first starts, and a peer list that lacks a pod hides it from readers and copies."""
    docs = build(kubectl, tree)
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env = {}
    for obj, spec in pod_specs(docs):
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        env[component] = {k: v for source in spec["containers"][0]["envFrom"]
                          for k, v in config_maps[source["configMapRef"]["name"]].items()}
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    replicas = sts["spec"]["replicas"]
    urls = [f"http://{sts['metadata']['name']}-{n}.{sts['spec']['serviceName']}:8001" for n in range(replicas)]
    assert env["chat"]["AMQP_HISTORY_REPLICAS"] == env["history"]["AMQP_HISTORY_REPLICAS"] == str(replicas), tree
    assert env["history"]["HISTORY_PEERS"].split(",") == env["chat"]["CHAT_HISTORY_URL"].split(",") == urls, tree
    if tree == "overlays/production":
        assert replicas == 2
    elif tree == "base":
        assert replicas == 1
