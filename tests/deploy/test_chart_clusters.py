"""The chart on the clusters it meets: API versions and fields chosen from `.Capabilities` (Kubernetes 1.20 of the
offline kind node up to the current releases), the Gateway API HTTPRoute, the PDB eviction policy and the chat
pods' spread; the Kustomize kind overlay with the kubernetes-1.20 component. Renders for an old cluster are
validated against the current schemas with the legacy API versions mapped onto their successors, whose fields are
a superset of what the chart sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    CHART,
    K8S_VERSIONS,
    KUSTOMIZE,
    Doc,
    Renderer,
    Validation,
    core_objects,
    find,
    kinds,
    load_docs,
    run,
)
from tests.deploy.crd_schemas import HTTP_ROUTE

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is missing: run scripts/install-deploy-tools.sh")

KIND_VALUES = str(CHART / "ci" / "kind-values.yaml")
ALL_ON = str(CHART / "ci" / "all-features-on-values.yaml")
LEGACY_TO_CURRENT = {"policy/v1beta1": "policy/v1", "autoscaling/v2beta2": "autoscaling/v2"}

# kube version -> (PDB apiVersion, HPA apiVersion, fields of 1.27 rendered)
CLUSTERS = {
    "1.20.2": ("policy/v1beta1", "autoscaling/v2beta2", False),
    "1.22.0": ("policy/v1", "autoscaling/v2beta2", False),
    "1.26.0": ("policy/v1", "autoscaling/v2", False),
    "1.27.0": ("policy/v1", "autoscaling/v2", True),
    "": ("policy/v1", "autoscaling/v2", True),  # helm template without --kube-version: Helm's current
}


@pytest.mark.parametrize("kube_version", list(CLUSTERS), ids=[v or "current" for v in CLUSTERS])
def test_api_versions_and_fields_follow_the_cluster(render: Renderer, kube_version: str) -> None:
    pdb_api, hpa_api, new_fields = CLUSTERS[kube_version]
    docs = render.docs((ALL_ON,), kube_version=kube_version)
    for pdb in (find(docs, "PodDisruptionBudget", "-chat"), find(docs, "PodDisruptionBudget", "-history")):
        assert pdb["apiVersion"] == pdb_api
        assert ("unhealthyPodEvictionPolicy" in pdb["spec"]) == new_fields
    assert find(docs, "HorizontalPodAutoscaler", "-chat")["apiVersion"] == hpa_api
    sts = find(docs, "StatefulSet", "-history")
    assert ("persistentVolumeClaimRetentionPolicy" in sts["spec"]) == new_fields


def as_current(docs: list[Doc]) -> list[Doc]:
    return [{**d, "apiVersion": LEGACY_TO_CURRENT.get(d["apiVersion"], d["apiVersion"])} for d in docs]


def kind_overlay_for_1_20(kubectl: str, workdir: Path) -> list[Doc]:
    """What tests/e2e/kind/run.sh applies on a 1.20 cluster: the kind overlay plus the kubernetes-1.20 component,
    in a namespace of its own, through a kustomization that names both relatively (kustomize refuses absolute)."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = os.path.relpath(KUSTOMIZE / "overlays" / "kind", workdir)
    component = os.path.relpath(KUSTOMIZE / "components" / "kubernetes-1.20", workdir)
    (workdir / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: durable-chat-kustomize\n"
        f"resources: [{overlay}]\ncomponents: [{component}]\n"
    )
    return load_docs(run([kubectl, "kustomize", str(workdir)]).stdout)


@pytest.fixture(scope="module")
def old_cluster_validation(
    render: Renderer, kubectl: str, kubernetes_validate: str, tmp_path_factory: pytest.TempPathFactory
) -> Validation:
    validation = Validation(kubernetes_validate, tmp_path_factory.mktemp("old-cluster-validate"))
    for name, values in (("kind", (KIND_VALUES,)), ("all-on", (ALL_ON,))):
        validation.add(name, as_current(core_objects(render.docs(values, kube_version="1.20.2"))))
    overlay = kind_overlay_for_1_20(kubectl, tmp_path_factory.mktemp("overlay") / "k")
    validation.add("kustomize-kind-1.20", as_current(overlay))
    validation.run_all()
    return validation


def test_kustomize_component_for_kubernetes_1_20(kubectl: str, tmp_path: Path) -> None:
    docs = kind_overlay_for_1_20(kubectl, tmp_path / "k")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert sorted(pdb["metadata"]["name"] for pdb in pdbs) == ["durable-chat-chat", "durable-chat-history"]
    for pdb in pdbs:
        assert pdb["apiVersion"] == "policy/v1beta1" and "unhealthyPodEvictionPolicy" not in pdb["spec"]
    sts = find(docs, "StatefulSet", "-history")
    assert "persistentVolumeClaimRetentionPolicy" not in sts["spec"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"durable-chat-kustomize"}
    assert find(docs, "Namespace")["metadata"]["name"] == "durable-chat-kustomize"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", ["kind", "all-on", "kustomize-kind-1.20"])
def test_renders_for_kubernetes_1_20_validate(old_cluster_validation: Validation, case: str, version: str) -> None:
    assert old_cluster_validation.errors(case, version) == []


@pytest.mark.parametrize("component", ["chat", "history"])
def test_pdb_lets_unhealthy_pods_be_evicted(render: Renderer, component: str) -> None:
    pdb = find(render.docs(), "PodDisruptionBudget", f"-{component}")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    docs = render.docs(sets=(f"{component}.podDisruptionBudget.unhealthyPodEvictionPolicy=",))
    assert "unhealthyPodEvictionPolicy" not in find(docs, "PodDisruptionBudget", f"-{component}")["spec"]


def test_httproute_is_off_by_default_and_routes_to_the_chat_service(render: Renderer) -> None:
    assert "HTTPRoute" not in kinds(render.docs())
    docs = render.docs(sets=("chat.httpRoute.enabled=true", "chat.httpRoute.parentRefs[0].name=gw",
                             "chat.httpRoute.hostnames[0]=chat.example.com"))
    route = find(docs, "HTTPRoute", "-chat")
    jsonschema.validate(route, HTTP_ROUTE)
    service = find(docs, "Service", "-chat")
    http_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    [rule] = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": http_port}]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert route["spec"]["parentRefs"] == [{"name": "gw"}]
    assert "timeouts" not in rule


def test_httproute_schema_catches_what_the_gateway_api_refuses() -> None:
    good: Doc = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}
    jsonschema.validate(good, HTTP_ROUTE)
    bad_cases: list[Doc] = [
        {"rules": [{"backendRefs": [{"name": "svc"}]}]},  # a Service backend without a port
        {"rules": [{"timeouts": {"request": "1 hour"}}]},
        {"hostnames": ["Chat.Example.com"]},
        {"rules": [{"matches": [{"path": {"type": "Prefix", "value": "/"}}]}]},
    ]
    for spec in bad_cases:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, "spec": {**good["spec"], **spec}}, HTTP_ROUTE)


def test_kustomize_gateway_api_component_is_the_chart_route(kubectl: str, render: Renderer, tmp_path: Path) -> None:
    component = os.path.relpath(KUSTOMIZE / "components" / "gateway-api", tmp_path)
    base = os.path.relpath(KUSTOMIZE / "base", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{component}]\n")
    route = find(load_docs(run([kubectl, "kustomize", str(tmp_path)]).stdout), "HTTPRoute")
    jsonschema.validate(route, HTTP_ROUTE)
    chart = find(render.docs(release="durable-chat", sets=("chat.httpRoute.enabled=true",
                                                          "chat.httpRoute.parentRefs[0].name=gateway")), "HTTPRoute")
    tool_labels = ("helm.sh/chart", "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                   "app.kubernetes.io/part-of")
    for doc in (route, chart):
        for label in tool_labels:
            doc["metadata"]["labels"].pop(label, None)
    assert route == chart


def test_httproute_needs_a_gateway(render: Renderer) -> None:
    error = render.fails(sets=("chat.httpRoute.enabled=true",))
    assert "chat.httproute.parentrefs" in error.lower(), error


def test_chat_pods_spread_over_zones(render: Renderer) -> None:
    deployment = find(render.docs(), "Deployment", "-chat")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    [constraint] = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "topology.kubernetes.io/zone"
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", "one zone (kind, small clusters) must still schedule"
    assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
