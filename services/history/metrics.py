"""Prometheus metrics of the history service. Names are part of the contract (dashboards, alerts)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class HistoryMetrics:
    registry: CollectorRegistry
    stored: Counter
    duplicates: Counter
    dead_lettered: Counter
    store_failures: Counter
    dlq_stored: Counter
    dlq_unreadable: Gauge
    batch_seconds: Histogram
    batch_size: Histogram
    lag: Histogram
    newest_stored_ts: Gauge
    consuming: Gauge
    broker_connected: Gauge
    request_seconds: Histogram
    served: Counter
    copy_messages: Counter
    copy_in_progress: Gauge
    copy_rooms_remaining: Gauge
    digest_mismatched_rooms: Gauge
    replica: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> HistoryMetrics:
        r = registry or CollectorRegistry()
        metrics = cls(
            registry=r,
            stored=Counter("durable_chat_messages_stored_total", "Messages written to LevelDB.", registry=r),
            duplicates=Counter(
                "durable_chat_messages_duplicate_total",
                "Deliveries dropped as already stored, by key (id or client_id).", ["key"], registry=r,
            ),
            dead_lettered=Counter(
                "durable_chat_messages_dead_lettered_total", "Unreadable deliveries sent to the DLQ.", registry=r
            ),
            store_failures=Counter(
                "durable_chat_store_failures_total", "LevelDB batch writes that failed.", registry=r
            ),
            dlq_stored=Counter(
                "durable_chat_dlq_messages_stored_total",
                "Readable dead letters written to history (idempotently) and acked.", registry=r,
            ),
            dlq_unreadable=Gauge(
                "durable_chat_dlq_unreadable_messages",
                "Unreadable messages this service holds in chat.history.dlq (left there, never stored).", registry=r,
            ),
            batch_seconds=Histogram(
                "durable_chat_store_batch_seconds", "Synced LevelDB batch write.",
                buckets=_LATENCY_BUCKETS, registry=r,
            ),
            batch_size=Histogram(
                "durable_chat_store_batch_messages", "Messages per LevelDB batch.",
                buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000), registry=r,
            ),
            lag=Histogram(
                "durable_chat_history_lag_seconds", "Message timestamp to durably stored.",
                buckets=_LATENCY_BUCKETS, registry=r,
            ),
            newest_stored_ts=Gauge(
                "durable_chat_history_newest_stored_timestamp_seconds",
                "Timestamp of the newest message stored.", registry=r,
            ),
            consuming=Gauge(
                "durable_chat_history_consuming", "1 while the history consumer is attached.", registry=r
            ),
            broker_connected=Gauge(
                "durable_chat_broker_connected", "1 while the AMQP connection, channel and consumer are up.",
                registry=r,
            ),
            request_seconds=Histogram(
                "durable_chat_history_request_seconds", "History API request duration, by status.",
                ["status"], buckets=_LATENCY_BUCKETS, registry=r,
            ),
            served=Counter(
                "durable_chat_history_messages_served_total", "Messages streamed by the history API.", registry=r
            ),
            copy_messages=Counter(
                "durable_chat_history_copy_messages_total", "Messages written from a peer copy (new ones only).",
                registry=r,
            ),
            copy_in_progress=Gauge(
                "durable_chat_history_copy_in_progress", "1 while this replica copies from a peer (not ready).",
                registry=r,
            ),
            copy_rooms_remaining=Gauge(
                "durable_chat_history_copy_rooms_remaining", "Rooms the running copy has still to copy; 0 when idle.",
                registry=r,
            ),
            digest_mismatched_rooms=Gauge(
                "durable_chat_history_digest_mismatched_rooms",
                "Settled rooms whose digest differs from the peer's, at the last verify.", ["peer"], registry=r,
            ),
            replica=Gauge(
                "durable_chat_history_replica", "1, labelled with this replica's ordinal.", ["ordinal"], registry=r
            ),
        )
        for key in ("id", "client_id"):
            metrics.duplicates.labels(key=key)  # a healthy system exports zeros, not missing series
        return metrics
