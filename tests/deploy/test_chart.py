"""The Helm chart, rendered by the real helm for the default values and every ci/*-values.yaml: lint, Kubernetes
schema validation (kubernetes-validate --strict, two versions), CRD objects, labels and selectors, probes,
security contexts, toggles, and the values schema refusing bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    CI_VALUES,
    K8S_VERSIONS,
    Doc,
    Renderer,
    Validation,
    ValuesCase,
    core_objects,
    find,
    kinds,
    pod_specs,
    run,
)
from tests.deploy.crd_schemas import CRD_SCHEMAS

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is missing: run scripts/install-deploy-tools.sh")
CORE_API_GROUPS = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")


def test_ci_values_cover_the_four_scenarios() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "all-features-on-values.yaml", "external-broker-values.yaml",
        "rabbitmq-cluster-values.yaml", "minimal-values.yaml",
    }


def test_helm_lint_strict(helm: str, values_case: ValuesCase) -> None:
    args = [helm, "lint", "--strict", str(CHART)]
    for path in values_case[1]:
        args += ["-f", path]
    run(args)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_validate_against_kubernetes(
    render: Renderer, chart_validation: Validation, values_case: ValuesCase, version: str
) -> None:
    docs = render.docs(values_case[1])
    assert {d["apiVersion"] for d in core_objects(docs)} <= set(CORE_API_GROUPS)
    assert chart_validation.errors(values_case[0], version) == []


def test_custom_resources_match_their_crd_schemas(render: Renderer, values_case: ValuesCase) -> None:
    for doc in render.docs(values_case[1]):
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            assert doc["apiVersion"] in CORE_API_GROUPS, f"unchecked custom resource {doc['kind']}"
            continue
        jsonschema.validate(doc, schema)


def test_all_features_render_every_optional_object(render: Renderer) -> None:
    docs = render.docs((str(CHART / "ci" / "all-features-on-values.yaml"),))
    assert kinds(docs) >= {
        "Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "ServiceAccount", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "Ingress", "HTTPRoute", "NetworkPolicy", "PodMonitor", "PrometheusRule",
        "RabbitmqCluster", "Pod",
    }


def test_defaults_keep_add_on_features_off(render: Renderer) -> None:
    docs = render.docs()
    assert kinds(docs) == {
        "Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "ServiceAccount", "PodDisruptionBudget", "Pod",
    }
    assert find(docs, "Deployment", "-chat")["spec"]["replicas"] >= 2


def test_labels_and_selectors(render: Renderer, values_case: ValuesCase) -> None:
    docs = render.docs(values_case[1])
    pods: dict[str, dict[str, str]] = {}
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "helm.sh/chart"):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks label {key}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            template_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert "helm.sh/chart" not in selector and "app.kubernetes.io/version" not in selector
            assert "app.kubernetes.io/component" in selector
            assert selector.items() <= template_labels.items()
            pods[doc["metadata"]["name"]] = template_labels
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            targets = [name for name, labels in pods.items() if selector.items() <= labels.items()]
            assert len(targets) == 1, f"Service {doc['metadata']['name']} selects {targets}"
        if doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            component = doc["metadata"]["labels"].get("app.kubernetes.io/component")
            if component == "rabbitmq":
                # the operator's pods, not rendered here: selected by the label it gives them
                assert selector == {"app.kubernetes.io/name": find(docs, "RabbitmqCluster")["metadata"]["name"]}
                continue
            workload = {"chat": ("Deployment", "-chat"), "history": ("StatefulSet", "-history")}[component]
            assert [n for n, labels in pods.items() if selector.items() <= labels.items()] == [
                find(docs, *workload)["metadata"]["name"]
            ]


def _named_port(container: Doc, name: str) -> int:
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == name)


def test_probes_point_at_served_paths_on_the_service_port(render: Renderer, values_case: ValuesCase) -> None:
    for obj, spec in pod_specs(render.docs(values_case[1])):
        if obj["kind"] == "Pod":
            continue
        (container,) = spec["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == "http"
        assert {p["name"] for p in container["ports"]} == {"http", "metrics"}


def test_security_contexts_meet_the_restricted_profile(render: Renderer, values_case: ValuesCase) -> None:
    for obj, spec in pod_specs(render.docs(values_case[1])):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc["runAsNonRoot"] is True and int(sc["runAsUser"]) > 0, where
        mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        if obj["kind"] != "Pod":
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


def test_chat_drains_before_it_is_killed(render: Renderer, values_case: ValuesCase) -> None:
    docs = render.docs(values_case[1])
    deployment = find(docs, "Deployment", "-chat")
    spec = deployment["spec"]["template"]["spec"]
    config = find(docs, "ConfigMap", "-chat")["data"]
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + float(config["CHAT_SHUTDOWN_GRACE_S"])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_history_is_a_statefulset_with_a_volume_per_replica(render: Renderer, values_case: ValuesCase) -> None:
    docs = render.docs(values_case[1])
    sts = find(docs, "StatefulSet", "-history")
    values = [yaml.safe_load(Path(path).read_text()) for path in values_case[1]]
    wanted = next((v["history"]["replicas"] for v in values if "replicas" in v.get("history", {})), 1)
    assert sts["spec"]["replicas"] == wanted, "one replica unless history.replicas says otherwise"
    headless = find(docs, "Service", "-history-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert data_mount["mountPath"] == "/data"
    assert find(docs, "ConfigMap", "-history")["data"]["HISTORY_DATA_DIR"].startswith("/data/")
    claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
    volumes = [v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])]
    assert (claims == ["data"]) != ("data" in volumes), "data comes from exactly one of a PVC template or a volume"
    assert "HorizontalPodAutoscaler" not in kinds([d for d in docs if d["metadata"]["name"].endswith("-history")])


def test_history_service_routes_to_ready_replicas_and_peers_resolve_the_others(render: Renderer) -> None:
    """Reads through the ClusterIP Service reach ready pods only (Kubernetes' default); the headless Service, whose
    per-pod names are the peer and reader URLs, also publishes pods that are not ready: a copying replica must
    resolve its peers, and it answers readers 503 not_ready itself."""
    docs = render.docs(sets=("history.replicas=2",))
    assert not find(docs, "Service", "-history")["spec"].get("publishNotReadyAddresses", False)
    assert find(docs, "Service", "-history")["spec"].get("clusterIP") != "None"
    assert find(docs, "Service", "-history-headless")["spec"]["publishNotReadyAddresses"] is True


def _replica_urls(docs: list[Doc]) -> list[str]:
    sts = find(docs, "StatefulSet", "-history")
    port = _named_port(sts["spec"]["template"]["spec"]["containers"][0], "http")
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    return [f"http://{name}-{ordinal}.{service}:{port}" for ordinal in range(sts["spec"]["replicas"])]


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_replica_count_sets_queues_peers_and_reader_urls(render: Renderer, replicas: int) -> None:
    docs = render.docs(sets=(f"history.replicas={replicas}",))
    chat = find(docs, "ConfigMap", "-chat")["data"]
    history = find(docs, "ConfigMap", "-history")["data"]
    assert find(docs, "StatefulSet", "-history")["spec"]["replicas"] == replicas
    # Chat declares every history queue; history checks its own ordinal against the count.
    assert chat["AMQP_HISTORY_REPLICAS"] == history["AMQP_HISTORY_REPLICAS"] == str(replicas)
    # Pod n of the StatefulSet is `<name>-<n>` under the headless Service: index = ordinal, in both lists.
    urls = _replica_urls(docs)
    assert history["HISTORY_PEERS"].split(",") == chat["CHAT_HISTORY_URL"].split(",") == urls
    # One ConfigMap for every pod: the ordinal comes from the pod's own name (HOSTNAME), never from the chart.
    sts = find(docs, "StatefulSet", "-history")
    env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert "HISTORY_REPLICA" not in history and "HISTORY_REPLICA" not in env


def test_history_replicas_have_a_budget_and_spread_softly(render: Renderer) -> None:
    docs = render.docs(sets=("history.replicas=2",), kube_version="1.30.0")
    pdb = find(docs, "PodDisruptionBudget", "-history")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    spec = find(docs, "StatefulSet", "-history")["spec"]["template"]["spec"]
    # Soft only by default: two replicas still schedule on a one-node cluster (kind).
    anti = spec["affinity"]["podAntiAffinity"]
    assert set(anti) == {"preferredDuringSchedulingIgnoredDuringExecution"}
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "history"
    assert [c["whenUnsatisfiable"] for c in spec["topologySpreadConstraints"]] == ["ScheduleAnyway"]
    required = {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"a": "b"}},
                                                                    "topologyKey": "kubernetes.io/hostname"}]}
    docs = render.docs(sets=("history.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
                             ".topologyKey=kubernetes.io/hostname",
                             "history.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
                             ".labelSelector.matchLabels.a=b", "history.podDisruptionBudget.enabled=false"))
    assert find(docs, "StatefulSet", "-history")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"] == required
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"] == [
        find(docs, "Deployment", "-chat")["metadata"]["name"]]


# What Kubernetes lets `helm upgrade` change on an existing StatefulSet; everything else is immutable.
STATEFULSET_MUTABLE = {"replicas", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                       "minReadySeconds", "ordinals"}


def test_scaling_history_changes_no_immutable_statefulset_field(render: Renderer) -> None:
    """A release installed with one replica (the v1 chart) upgrades in place to more: the immutable fields
    (podManagementPolicy, serviceName, selector, volumeClaimTemplates) are what v1 released."""
    specs = [find(render.docs(sets=(f"history.replicas={n}",)), "StatefulSet", "-history")["spec"] for n in (1, 3)]
    frozen = [{k: v for k, v in spec.items() if k not in STATEFULSET_MUTABLE} for spec in specs]
    assert frozen[0] == frozen[1]
    assert frozen[0]["podManagementPolicy"] == "OrderedReady", "v1's value; changing it needs a delete and recreate"
    assert specs[1]["updateStrategy"] == {"type": "RollingUpdate"}, "one pod at a time, highest ordinal first"


def test_pdb_and_hpa_toggles(render: Renderer) -> None:
    docs = render.docs(sets=("chat.podDisruptionBudget.enabled=false", "history.podDisruptionBudget.enabled=false"))
    assert "PodDisruptionBudget" not in kinds(docs)
    docs = render.docs(sets=("chat.autoscaling.enabled=true", "chat.autoscaling.minReplicas=3"))
    hpa = find(docs, "HorizontalPodAutoscaler", "-chat")
    deployment = find(docs, "Deployment", "-chat")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 3
    assert "replicas" not in deployment["spec"], "the HPA owns replicas"


def test_monitoring_objects_only_when_enabled(render: Renderer) -> None:
    assert not kinds(render.docs()) & {"PodMonitor", "PrometheusRule"}
    docs = render.docs(sets=("metrics.podMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
                             "metrics.dashboard.enabled=true"))
    monitor = find(docs, "PodMonitor")
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/component"
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    dashboard = find(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["durable-chat.json"])


def test_ingress_has_websocket_timeouts(render: Renderer) -> None:
    docs = render.docs(sets=("chat.ingress.enabled=true",))
    ingress = find(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == find(docs, "Service", "-chat")["metadata"]["name"]


def _allowed_ports(rules: list[Doc]) -> set[int]:
    return {int(p["port"]) for rule in rules for p in rule.get("ports", [])}


def test_network_policies_allow_only_the_topology(render: Renderer) -> None:
    docs = render.docs(sets=("networkPolicy.enabled=true",))
    chat = find(docs, "NetworkPolicy", "-chat")["spec"]
    history = find(docs, "NetworkPolicy", "-history")["spec"]
    assert chat["policyTypes"] == history["policyTypes"] == ["Ingress", "Egress"]
    assert _allowed_ports(chat["ingress"]) == {8000, 9000}
    assert _allowed_ports(history["ingress"]) == {8001, 9001}
    assert _allowed_ports(chat["egress"]) == {53, 5672, 5671, 8001}
    assert _allowed_ports(history["egress"]) == {53, 5672, 5671, 8001}
    api_rule = next(r for r in history["ingress"] if _allowed_ports([r]) == {8001})
    components = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in api_rule["from"]}
    assert components == {"chat", "history", "test"}, "readers, peers (copy, verify) and helm test"
    peer_rule = next(r for r in history["egress"] if _allowed_ports([r]) == {8001})
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in peer_rule["to"]] == [
        "history"]


def test_config_change_rolls_the_pods(render: Renderer) -> None:
    def checksums(*sets: str) -> tuple[str, str]:
        docs = render.docs(sets=sets)
        return tuple(  # type: ignore[return-value]
            find(docs, kind, suffix)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for kind, suffix in (("Deployment", "-chat"), ("StatefulSet", "-history"))
        )

    base = checksums()
    assert checksums()[0] == base[0]
    changed_chat = checksums("config.chat.maxMessageBytes=2048")
    assert changed_chat[0] != base[0] and changed_chat[1] == base[1]
    changed_amqp = checksums("config.amqp.prefetch=64")
    assert changed_amqp[0] != base[0] and changed_amqp[1] != base[1]
    changed_secret = checksums("secret.amqpUrl=amqp://u:p@broker:5672/x")
    assert changed_secret[0] != base[0] and changed_secret[1] != base[1]
    # More history replicas: chat must declare the new queue and read from the new pod, history gets new peers.
    scaled = checksums("history.replicas=2")
    assert scaled[0] != base[0] and scaled[1] != base[1]


def test_helm_test_pod_checks_both_services(render: Renderer) -> None:
    docs = render.docs()
    pod = find(docs, "Pod", "-test-readyz")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = " ".join(pod["spec"]["containers"][0]["command"])
    for suffix, port in (("-chat", 80), ("-history", 8001)):
        assert f"http://{find(docs, 'Service', suffix)['metadata']['name']}:{port}/readyz" in args


def test_rabbitmq_cluster_supplies_amqp_url(render: Renderer) -> None:
    docs = render.docs((str(CHART / "ci" / "rabbitmq-cluster-values.yaml"),))
    cluster = find(docs, "RabbitmqCluster")
    secret_name = f"{cluster['metadata']['name']}-default-user"
    for _, spec in pod_specs(docs):
        env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
        if "AMQP_URL" not in env:
            continue
        url = env["AMQP_URL"]["value"]
        assert url.startswith("amqp://$(RABBITMQ_DEFAULT_USER_USERNAME):$(RABBITMQ_DEFAULT_USER_PASSWORD)@")
        assert url.endswith("/chat")
        for var in ("USERNAME", "PASSWORD", "HOST", "PORT"):
            ref = env[f"RABBITMQ_DEFAULT_USER_{var}"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret_name and ref["key"] == var.lower()
        names = list(env)
        inputs = [names.index(f"RABBITMQ_DEFAULT_USER_{v}") for v in ("USERNAME", "PASSWORD", "HOST", "PORT")]
        assert names.index("AMQP_URL") > max(inputs), "$(VAR) expands only variables defined earlier"


def test_rabbitmq_cluster_has_a_disruption_budget_of_one_node(render: Renderer) -> None:
    docs = render.docs((str(CHART / "ci" / "rabbitmq-cluster-values.yaml"),))
    cluster = find(docs, "RabbitmqCluster")
    name = cluster["metadata"]["name"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == name)
    assert cluster["spec"]["replicas"] == 3 and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": cluster["metadata"]["name"]}
    docs = render.docs((str(CHART / "ci" / "rabbitmq-cluster-values.yaml"),),
                       ("rabbitmq.cluster.podDisruptionBudget.enabled=false",))
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget") == [
        find(docs, "Deployment", "-chat")["metadata"]["name"],
        find(docs, "StatefulSet", "-history")["metadata"]["name"],
    ]


def test_secrets_never_land_in_configmaps(render: Renderer) -> None:
    docs = render.docs((str(CHART / "ci" / "all-features-on-values.yaml"),),
                       ("secret.authPublicKey=PEM",))
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert not {k for k in doc.get("data", {}) if k.endswith(("_URL", "_SECRET", "_PUBLIC_KEY"))} - {
                "CHAT_HISTORY_URL"}
    assert set(find(docs, "Secret")["data"]) == {"auth-secret", "auth-public-key"}


BAD_VALUES = [
    ("unknownTopLevel=1", "(root): additional property unknowntoplevel is not allowed"),
    ("config.chat.maxMessageBytes=0", "config.chat.maxmessagebytes: must be greater than or equal to 1"),
    ("config.chat.maxMessageBytes=70000", "config.chat.maxmessagebytes: must be less than or equal to 65536"),
    ("config.log.level=TRACE", "config.log.level must be one of"),
    ("config.chat.noSuchSetting=1", "config.chat: additional property nosuchsetting is not allowed"),
    ("config.amqp.publishTimeoutS=0", "config.amqp.publishtimeouts: must be greater than 0"),
    ("chat.port=abc", "chat.port: invalid type"),
    ("image.pullPolicy=Sometimes", "image.pullpolicy must be one of"),
    ("history.persistence.size=lots", "history.persistence.size: does not match pattern"),
    ("history.replicas=0", "history.replicas: must be greater than or equal to 1"),
    ("secret.amqpUrl=http://broker", "secret.amqpurl: does not match pattern"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_VALUES, ids=[b[0].split("=")[0] for b in BAD_VALUES])
def test_values_schema_rejects_bad_input(render: Renderer, setting: str, message: str) -> None:
    error = render.fails(sets=(setting,))
    assert "values don't meet the specifications of the schema" in error, error
    assert message in error.lower(), error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("chat.terminationGracePeriodSeconds=12",), "must exceed chat.preStopSleepSeconds"),
        (("config.chat.recoveryWindowMs=4000",), "recoveryWindowMs must be larger"),
        (("rabbitmq.cluster.enabled=true", "secret.amqpUrl=amqp://x"), "exclude each other"),
        (("chat.metricsPort=8000",), "must differ"),
    ],
)
def test_render_time_checks_refuse_broken_combinations(render: Renderer, sets: tuple[str, ...], message: str) -> None:
    assert message in render.fails(sets=sets)


def test_large_numbers_are_not_rendered_in_exponent_form(render: Renderer) -> None:
    docs = render.docs((str(CHART / "ci" / "external-broker-values.yaml"),))
    data = find(docs, "ConfigMap", "-chat")["data"]
    assert data["CHAT_SEND_BUFFER_FRAMES"] == "1000000"
    assert data["AMQP_PUBLISH_TIMEOUT_S"] == "3.5"
    assert data["CHAT_TRUSTED_PROXIES"] == "10.0.0.0/8,192.168.0.0/16"
