"""Prometheus metrics of a chat replica. Names are part of the contract (dashboards, alerts)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Label values known in advance are created at start, so a healthy system exports zeros, not missing series.
PUBLISH_FAILURE_REASONS = ("timeout", "nack", "returned", "disconnected")
ERROR_CODES = (
    "bad_json", "bad_frame", "empty_text", "too_large", "bad_text", "binary_unsupported", "rate_limited",
    "publish_failed", "history_unavailable", "bad_room", "bad_after", "unauthorized",
)
CLOSE_CODES = ("1008", "1012", "1013")
HISTORY_FETCH_RESULTS = ("ok", "unavailable", "lagging", "backfilled")
SEND_BUFFER_LIMITS = ("frames", "bytes")
PRESENCE_KINDS = ("state", "beat", "typing", "hello", "bye")
PRESENCE_DROP_REASONS = (
    "typing_throttled", "typing_full", "typing_stale", "room_full", "outbox_full", "disconnected", "unreadable",
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class ChatMetrics:
    registry: CollectorRegistry
    published: Counter
    publish_failures: Counter
    publish_duplicates: Counter
    confirm_seconds: Histogram
    received: Counter
    delivered: Counter
    delivery_lag: Histogram
    clients: Gauge
    connections: Counter
    disconnects: Counter
    errors: Counter
    history_fetches: Counter
    sync_seconds: Histogram
    history_queue_messages: Gauge
    history_queue_consumers: Gauge
    broker_connected: Gauge
    slow_consumers: Counter
    ring_evictions: Counter
    idempotency_evictions: Counter
    presence_members: Gauge
    presence_occupancy: Gauge
    presence_messages: Counter
    presence_dropped: Counter
    presence_heartbeat_lag: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ChatMetrics:
        r = registry or CollectorRegistry()
        metrics = cls(
            registry=r,
            published=Counter(
                "durable_chat_messages_published_total", "Client messages confirmed by the broker.", registry=r
            ),
            publish_failures=Counter(
                "durable_chat_publish_failures_total",
                "Publishes not confirmed (the sender got publish_failed).",
                ["reason"], registry=r,
            ),
            publish_duplicates=Counter(
                "durable_chat_publish_duplicates_total",
                "Resends answered from the idempotency cache without publishing.", registry=r,
            ),
            confirm_seconds=Histogram(
                "durable_chat_publish_confirm_seconds", "Publish to broker confirm.",
                buckets=_LATENCY_BUCKETS, registry=r,
            ),
            received=Counter(
                "durable_chat_messages_received_total", "Messages consumed from this replica's queue.", registry=r
            ),
            delivered=Counter(
                "durable_chat_messages_delivered_total", "Message frames queued to WebSocket clients.", registry=r
            ),
            delivery_lag=Histogram(
                "durable_chat_delivery_lag_seconds", "Message timestamp to arrival at this replica.",
                buckets=_LATENCY_BUCKETS, registry=r,
            ),
            clients=Gauge("durable_chat_connected_clients", "Open WebSocket connections.", registry=r),
            connections=Counter(
                "durable_chat_connections_total", "WebSocket connections accepted.", registry=r
            ),
            disconnects=Counter(
                "durable_chat_disconnects_total", "Connections closed by the server, by close code.",
                ["code"], registry=r,
            ),
            errors=Counter(
                "durable_chat_client_errors_total", "Error frames sent to clients, by code.", ["code"], registry=r
            ),
            history_fetches=Counter(
                "durable_chat_history_fetches_total", "Backlog reads from the history service, by result.",
                ["result"], registry=r,
            ),
            sync_seconds=Histogram(
                "durable_chat_sync_seconds", "Connect to `synced` (backlog delivered).",
                buckets=_LATENCY_BUCKETS, registry=r,
            ),
            history_queue_messages=Gauge(
                "durable_chat_history_queue_messages",
                "Ready messages in each history queue (passive declare, every second), by queue.",
                ["queue"], registry=r,
            ),
            history_queue_consumers=Gauge(
                "durable_chat_history_queue_consumers",
                "Consumers on each history queue, by queue (0 on a queue left by a scale-down).",
                ["queue"], registry=r,
            ),
            broker_connected=Gauge(
                "durable_chat_broker_connected", "1 while the AMQP connection, channel and consumer are up.",
                registry=r,
            ),
            slow_consumers=Counter(
                "durable_chat_slow_consumers_total",
                "Clients closed 1013 because their send buffer overflowed, by the bound hit (frames or bytes).",
                ["limit"], registry=r,
            ),
            ring_evictions=Counter(
                "durable_chat_ring_evictions_total",
                "Recent-ring entries dropped before their window ended because the ring was full.", registry=r,
            ),
            idempotency_evictions=Counter(
                "durable_chat_idempotency_evictions_total",
                "Confirmed client_ids forgotten before their window ended because the cache was full.", registry=r,
            ),
            presence_members=Gauge(
                "durable_chat_presence_members",
                "Members (distinct author and room) connected to this replica, as listed in presence.", registry=r,
            ),
            presence_occupancy=Gauge(
                "durable_chat_presence_occupancy",
                "Connections counted in presence on this replica (members' and anonymous).", registry=r,
            ),
            presence_messages=Counter(
                "durable_chat_presence_messages_total",
                "Messages on the presence exchange, by direction (in, out) and kind.", ["direction", "kind"],
                registry=r,
            ),
            presence_dropped=Counter(
                "durable_chat_presence_dropped_total",
                "Presence and typing events not sent or not taken, by reason.", ["reason"], registry=r,
            ),
            presence_heartbeat_lag=Histogram(
                "durable_chat_presence_heartbeat_lag_seconds",
                "Another replica's heartbeat, from its sending to its arrival here.", buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
        )
        for reason in PUBLISH_FAILURE_REASONS:
            metrics.publish_failures.labels(reason=reason)
        for code in ERROR_CODES:
            metrics.errors.labels(code=code)
        for close_code in CLOSE_CODES:
            metrics.disconnects.labels(code=close_code)
        for result in HISTORY_FETCH_RESULTS:
            metrics.history_fetches.labels(result=result)
        for limit in SEND_BUFFER_LIMITS:
            metrics.slow_consumers.labels(limit=limit)
        for kind in PRESENCE_KINDS:
            for direction in ("in", "out"):
                metrics.presence_messages.labels(direction=direction, kind=kind)
        for reason in PRESENCE_DROP_REASONS:
            metrics.presence_dropped.labels(reason=reason)
        return metrics
