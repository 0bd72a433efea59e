"""Subsets of the published CRD schemas of the custom resources the chart renders, written from their reference
docs (prometheus-operator `monitoring.coreos.com/v1` PodMonitor and PrometheusRule; RabbitMQ Cluster Operator
`rabbitmq.com/v1beta1` RabbitmqCluster; Gateway API `gateway.networking.k8s.io/v1` HTTPRoute, standard channel
v1.2+, with the patterns and limits of its CRD). They check apiVersion/kind, the required fields, and the type of
every field the chart sets; `additionalProperties: false` on the parts the chart fills catches typos. Not the full
schemas: kubernetes-validate has no CRDs and the full definitions are not vendored here."""

from __future__ import annotations

from typing import Any

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                   "labels": _STR_MAP, "annotations": _STR_MAP},
}


def _object(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


POD_MONITOR = _object("monitoring.coreos.com/v1", "PodMonitor", {
    "type": "object",
    "required": ["selector"],
    "additionalProperties": False,
    "properties": {
        "jobLabel": {"type": "string"},
        "namespaceSelector": {
            "type": "object", "additionalProperties": False,
            "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
        },
        "selector": _LABEL_SELECTOR,
        "podMetricsEndpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "port": {"type": "string", "minLength": 1},
                    "path": {"type": "string"},
                    "interval": _DURATION,
                    "scrapeTimeout": _DURATION,
                },
            },
        },
    },
})

PROMETHEUS_RULE = _object("monitoring.coreos.com/v1", "PrometheusRule", {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": _DURATION,
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "additionalProperties": False,
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string"},
                                "record": {"type": "string"},
                                "expr": {"type": ["string", "integer"]},
                                "for": _DURATION,
                                "keep_firing_for": _DURATION,
                                "labels": _STR_MAP,
                                "annotations": _STR_MAP,
                            },
                        },
                    },
                },
            },
        },
    },
})

_QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE]|m)?$"}
_RESOURCES = {
    "type": "object", "additionalProperties": False,
    "properties": {"requests": {"type": "object", "additionalProperties": _QUANTITY},
                   "limits": {"type": "object", "additionalProperties": _QUANTITY}},
}
RABBITMQ_CLUSTER = _object("rabbitmq.com/v1beta1", "RabbitmqCluster", {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "image": {"type": "string"},
        "resources": _RESOURCES,
        "persistence": {
            "type": "object", "additionalProperties": False,
            "properties": {"storage": _QUANTITY, "storageClassName": {"type": "string"}},
        },
        "rabbitmq": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "additionalPlugins": {"type": "array", "items": {"type": "string", "pattern": r"^\w+$"}},
                "additionalConfig": {"type": "string", "maxLength": 100000},
            },
        },
    },
})

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_GW_NAME = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _DNS_SUBDOMAIN}
_GW_SECTION = _GW_NAME
_GW_NAMESPACE = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_GW_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_GW_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
_GW_HOSTNAME = {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
HTTP_ROUTE = _object("gateway.networking.k8s.io/v1", "HTTPRoute", {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "parentRefs": {
            "type": "array", "maxItems": 32,
            "items": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"group": {"type": "string", "maxLength": 253},
                               "kind": {"type": "string", "maxLength": 63}, "namespace": _GW_NAMESPACE,
                               "name": _GW_NAME, "sectionName": _GW_SECTION,
                               "port": _GW_PORT},
            },
        },
        "hostnames": {"type": "array", "maxItems": 16, "items": _GW_HOSTNAME},
        "rules": {
            "type": "array", "minItems": 1, "maxItems": 16,
            "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "matches": {
                        "type": "array", "maxItems": 64,
                        "items": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"path": {
                                "type": "object", "additionalProperties": False,
                                "properties": {"type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                               "value": {"type": "string", "maxLength": 1024, "pattern": "^/"}},
                            }},
                        },
                    },
                    "backendRefs": {
                        "type": "array", "maxItems": 16,
                        "items": {
                            "type": "object", "required": ["name"], "additionalProperties": False,
                            # A Service backend needs a port (the CRD's CEL rule).
                            "if": {"not": {"required": ["kind"]}}, "then": {"required": ["name", "port"]},
                            "properties": {"group": {"type": "string"}, "kind": {"type": "string"},
                                           "name": _GW_NAME, "namespace": _GW_NAMESPACE, "port": _GW_PORT,
                                           "weight": {"type": "integer", "minimum": 0, "maximum": 1000000}},
                        },
                    },
                    "timeouts": {"type": "object", "additionalProperties": False,
                                 "properties": {"request": _GW_DURATION, "backendRequest": _GW_DURATION}},
                },
            },
        },
    },
})

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): RABBITMQ_CLUSTER,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
}
