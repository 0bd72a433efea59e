"""One source of truth for settings: the services' pydantic models. The chart's `config` values, its schema, the
environment it gives each container, and the ports and paths it probes must all agree with the models and the apps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, ROOT, Doc, Renderer, ValuesCase, find

sys.path.insert(0, str(ROOT / "scripts"))
import gen_values_schema as gen  # noqa: E402

from services.chat.settings import ChatSettings  # noqa: E402
from services.common.settings import AmqpSettings, LogSettings  # noqa: E402
from services.history.settings import HistorySettings  # noqa: E402

MODELS_OF = {
    "chat": (ChatSettings, AmqpSettings, LogSettings),
    "history": (HistorySettings, AmqpSettings, LogSettings),
}
EXPANSION = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def env_names(models: tuple[type[Any], ...]) -> set[str]:
    return {gen.env_name(model, field) for model in models for field in model.model_fields}


def test_generated_schema_and_values_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_values_schema.py"), "--check"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, "values.schema.json/values.yaml drift from the settings models:\n" + result.stdout


def test_values_yaml_config_keys_are_the_models_fields() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for group, model in gen.GROUPS.items():
        expected = {gen.camel(f) for f in gen.config_fields(model)}
        assert set(values["config"][group]) == expected, f"config.{group} differs from {model.__name__}"
    assert set(values["config"]) == set(gen.GROUPS)


def test_every_model_field_is_configurable_secret_or_set_by_the_chart() -> None:
    for model in gen.GROUPS.values():
        for field in model.model_fields:
            assert field in gen.SECRET_FIELDS or field in gen.CHART_MANAGED or field in gen.config_fields(model)


def test_camel_case_round_trips_to_the_env_name(render: Renderer) -> None:
    """The template turns camelCase back into SNAKE_CASE with sprig; check it against the models' env names."""
    data = {**find(render.docs(), "ConfigMap", "-chat")["data"], **find(render.docs(), "ConfigMap", "-history")["data"]}
    for group, model in gen.GROUPS.items():
        for field in gen.config_fields(model):
            assert gen.env_name(model, field) in data, f"config.{group}.{gen.camel(field)} is not rendered"


def _container_env(docs: list[Doc], spec: Doc) -> tuple[dict[str, str | None], Doc]:
    """Names the container's environment gets, with literal values where known (None: from a Secret)."""
    container = spec["containers"][0]
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref, f"only ConfigMaps are imported whole (secrets are listed key by key): {source}"
        env.update(find(docs, "ConfigMap", ref["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env, container


def _component(doc: Doc) -> str | None:
    return doc["metadata"]["labels"].get("app.kubernetes.io/component")


def test_every_env_var_the_chart_sets_is_read_by_the_service(render: Renderer, values_case: ValuesCase) -> None:
    docs = render.docs(values_case[1])
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        component = _component(doc)
        assert component in MODELS_OF
        env, _ = _container_env(docs, doc["spec"]["template"]["spec"])
        read = env_names(MODELS_OF[component])
        expanded = {name for value in env.values() if value for name in EXPANSION.findall(value)}
        unread = set(env) - read - expanded
        assert not unread, f"{component} gets variables its settings models do not read: {sorted(unread)}"
        assert expanded <= set(env), f"{component}: $(VAR) of an unset variable {sorted(expanded - set(env))}"
        assert "AMQP_URL" in env and "LOG_FORMAT" in env


def test_the_chart_settings_load_through_the_models(
    render: Renderer, values_case: ValuesCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact strings the chart renders pass the services' own validation (load_config)."""
    from services.chat.settings import load_config as load_chat
    from services.history.settings import load_config as load_history

    docs = render.docs(values_case[1])
    loaders = {"chat": load_chat, "history": load_history}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        env, _ = _container_env(docs, doc["spec"]["template"]["spec"])
        with monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.startswith(("AMQP_", "LOG_", "CHAT_", "HISTORY_")):
                    patch.delenv(name)
            for name, value in env.items():
                if value is not None and not EXPANSION.search(value):
                    patch.setenv(name, value)
            patch.setenv("AMQP_URL", "amqp://user:password@broker:5672/vhost")
            config = loaders[_component(doc)]()  # type: ignore[index]
        assert config.log.format == "json"


def test_ports_and_urls_agree_with_the_services(render: Renderer, values_case: ValuesCase) -> None:
    docs = render.docs(values_case[1])
    chat_env, chat = _container_env(docs, find(docs, "Deployment", "-chat")["spec"]["template"]["spec"])
    history_env, history = _container_env(docs, find(docs, "StatefulSet", "-history")["spec"]["template"]["spec"])
    ports = {c["name"]: {p["name"]: p["containerPort"] for p in c["ports"]} for c in (chat, history)}
    assert ports["chat"]["http"] == int(chat_env["CHAT_PORT"])  # type: ignore[arg-type]
    assert ports["chat"]["metrics"] == int(chat_env["CHAT_METRICS_PORT"]) != 0  # type: ignore[arg-type]
    assert ports["history"]["http"] == int(history_env["HISTORY_PORT"])  # type: ignore[arg-type]
    assert ports["history"]["metrics"] == int(history_env["HISTORY_METRICS_PORT"]) != 0  # type: ignore[arg-type]
    # Chat reads from each history replica by its pod name under the headless Service, on the pod's http port.
    sts = find(docs, "StatefulSet", "-history")
    headless = find(docs, "Service", "-history-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert chat_env["CHAT_HISTORY_URL"] == history_env["HISTORY_PEERS"] == ",".join(
        f"http://{sts['metadata']['name']}-{n}.{headless['metadata']['name']}:{ports['history']['http']}"
        for n in range(sts["spec"]["replicas"])
    )
    assert find(docs, "Service", "-history")["spec"]["ports"][0]["targetPort"] == "http"
    assert chat_env["CHAT_HOST"] == history_env["HISTORY_HOST"] == "0.0.0.0"


def _route_paths(app: Any) -> set[str]:
    return {getattr(route, "path", "") for route in app.routes}


def test_probe_paths_are_served_by_the_apps(render: Renderer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Build each app from the chart's default settings (no broker needed: the lifespan is not run) and check the
    probe paths are routes; /metrics is not on the main app because the chart sets a separate metrics port."""
    from services.chat.app import create_app as chat_app
    from services.chat.settings import load_config as load_chat
    from services.history.app import create_app as history_app
    from services.history.settings import load_config as load_history

    docs = render.docs()
    for suffix, kind, loader, factory in (
        ("-chat", "Deployment", load_chat, chat_app),
        ("-history", "StatefulSet", load_history, history_app),
    ):
        obj = find(docs, kind, suffix)
        env, container = _container_env(docs, obj["spec"]["template"]["spec"])
        with monkeypatch.context() as patch:
            for name, value in env.items():
                if value is not None:
                    patch.setenv(name, value)
            patch.setenv("AMQP_URL", "amqp://user:password@broker:5672/vhost")
            patch.setenv("HISTORY_DATA_DIR", str(tmp_path / "history"))
            app = factory(loader())  # type: ignore[operator]
        paths = _route_paths(app)
        probed = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
        assert probed <= paths, f"{suffix}: probes {probed - paths} are not routes of the app"
        assert "/metrics" not in paths, "with a metrics port, /metrics is served there, not on the public port"
        if suffix == "-chat":
            assert {"/ws", "/api/rooms/{room}/messages"} <= paths
