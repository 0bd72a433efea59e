"""Generate the `config` part of the Helm chart's values.schema.json and values.yaml from the settings models.

One source of truth: the services' pydantic-settings models. The chart maps ``config.<group>.<camelCaseField>``
onto ``<PREFIX><UPPER_SNAKE_FIELD>``. Fields that hold secrets, and fields the chart sets itself (hosts, ports, the
history URL, the data directory), are left out of ``config``; every other field is in it, so a field added to a
model appears here when this script is re-run, and tests/deploy fails until it is.

    .venv/bin/python scripts/gen_values_schema.py            # rewrite values.schema.json and values.yaml
    .venv/bin/python scripts/gen_values_schema.py --check    # exit 1 with a diff when they drift
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic_settings import BaseSettings  # noqa: E402

from services.chat.settings import ChatSettings  # noqa: E402
from services.common.settings import AmqpSettings, LogSettings  # noqa: E402
from services.history.settings import HistorySettings  # noqa: E402

CHART = ROOT / "deploy" / "helm" / "durable-chat"
SCHEMA_PATH = CHART / "values.schema.json"
VALUES_PATH = CHART / "values.yaml"
VALUES_MARKER = "# --- generated: config ---"

# group -> model; the group's prefix is the model's env_prefix.
GROUPS: dict[str, type[BaseSettings]] = {
    "amqp": AmqpSettings,
    "log": LogSettings,
    "chat": ChatSettings,
    "history": HistorySettings,
}
# Held in the Secret (values `secret.*` / `existingSecret`), never in the ConfigMap.
SECRET_FIELDS = {"url", "auth_secret", "auth_public_key"}
# Set by the chart from its own values: field -> where it comes from.
CHART_MANAGED = {
    "host": "0.0.0.0",
    "port": "chat.port / history.port",
    "metrics_port": "chat.metricsPort / history.metricsPort",
    "history_url": "every history replica's URL under the headless Service (history.replicas)",
    "data_dir": "/data/history on the history volume",
    "history_replicas": "history.replicas",
    "peers": "every history replica's URL under the headless Service (history.replicas)",
    # Never set: each history pod takes its ordinal from its own name (HOSTNAME, `...-history-<n>`).
    "replica": "the pod name's ordinal",
}
# Where the chart's default differs from the model's (containers log JSON).
CHART_DEFAULTS: dict[tuple[str, str], Any] = {("log", "format"): "json"}


def camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def env_name(model: type[BaseSettings], field: str) -> str:
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def config_fields(model: type[BaseSettings]) -> list[str]:
    return [f for f in model.model_fields if f not in SECRET_FIELDS and f not in CHART_MANAGED]


def _field_schema(prop: dict[str, Any], env: str, default: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "anyOf" in prop:
        raise SystemExit(f"{env}: optional/union fields are not mapped yet; extend gen_values_schema.py")
    kind = prop.get("type")
    if "enum" in prop:
        out["type"] = kind or "string"
        out["enum"] = prop["enum"]
    elif "const" in prop:
        out["type"] = kind or "string"
        out["enum"] = [prop["const"]]
    elif kind in ("integer", "number", "string", "boolean"):
        out["type"] = kind
    elif kind == "array":
        items = prop.get("items", {})
        if items.get("type") != "string":
            raise SystemExit(f"{env}: only lists of strings are mapped (comma-separated)")
        out["type"] = "array"
        out["items"] = {"type": "string"}
    else:
        raise SystemExit(f"{env}: unsupported settings type {prop!r}; extend gen_values_schema.py")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern"):
        if key in prop:
            out[key] = prop[key]
    out["description"] = f"{prop.get('description', '').strip()} ({env})".strip()
    out["default"] = default
    return out


def _default(group: str, model: type[BaseSettings], field: str) -> Any:
    if (group, field) in CHART_DEFAULTS:
        return CHART_DEFAULTS[(group, field)]
    info = model.model_fields[field]
    value = info.get_default(call_default_factory=True)
    return list(value) if isinstance(value, (list, tuple)) else value


def config_schema() -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for group, model in GROUPS.items():
        props = model.model_json_schema()["properties"]
        fields = {
            camel(f): _field_schema(props[f], env_name(model, f), _default(group, model, f))
            for f in config_fields(model)
        }
        groups[group] = {
            "type": "object",
            "description": f"Settings read as {model.model_config.get('env_prefix')}* ({model.__name__}).",
            "additionalProperties": False,
            "required": list(fields),
            "properties": fields,
        }
    return {
        "type": "object",
        "description": "Service settings, one to one with the settings models (generated by "
        "scripts/gen_values_schema.py).",
        "additionalProperties": False,
        "required": list(groups),
        "properties": groups,
    }


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value)
    return json.dumps(value)


def config_values_yaml() -> str:
    schema = config_schema()
    lines = [VALUES_MARKER, "config:"]
    for group, group_schema in schema["properties"].items():
        lines.append(f"  # config.{group} -- {group_schema['description']}")
        lines.append(f"  {group}:")
        for key, prop in group_schema["properties"].items():
            bounds = []
            for word, name in (("min", "minimum"), (">", "exclusiveMinimum"), ("max", "maximum")):
                if name in prop:
                    bounds.append(f"{word} {prop[name]}")
            if "enum" in prop:
                bounds.append("one of " + "|".join(map(str, prop["enum"])))
            extra = f" [{', '.join(bounds)}]" if bounds else ""
            lines.append(f"    # config.{group}.{key} -- {prop['description']}{extra}")
            lines.append(f"    {key}: {_yaml_scalar(prop['default'])}")
    return "\n".join(lines) + "\n"


def rendered() -> dict[Path, str]:
    schema = json.loads(SCHEMA_PATH.read_text())
    schema["properties"]["config"] = config_schema()
    values = VALUES_PATH.read_text()
    head = values.split(VALUES_MARKER, 1)[0].rstrip("\n") + "\n"
    return {
        SCHEMA_PATH: json.dumps(schema, indent=2) + "\n",
        VALUES_PATH: head + config_values_yaml(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed files drift")
    args = parser.parse_args()
    drift = False
    for path, text in rendered().items():
        current = path.read_text()
        if current == text:
            continue
        drift = True
        if args.check:
            rel = str(path.relative_to(ROOT))
            sys.stdout.writelines(
                difflib.unified_diff(current.splitlines(True), text.splitlines(True), rel, rel + " (generated)")
            )
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and drift:
        print("\nvalues drift from the settings models: run .venv/bin/python scripts/gen_values_schema.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
