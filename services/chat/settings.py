"""Chat replica settings (prefix ``CHAT_``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.common.settings import AmqpSettings, ConfigError, LogSettings, load


def _csv_items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _split_csv(value: object) -> object:
    return _csv_items(value) if isinstance(value, str) else value


class ChatSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore")

    host: str = Field(default="0.0.0.0", description="Address the replica listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="WebSocket, page and API port.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Separate /metrics port; 0 serves it on the main port."
    )
    history_url: str = Field(
        default="http://127.0.0.1:8001",
        description=(
            "Base URL of the history service, or a comma-separated list of its replicas' base URLs in ordinal "
            "order: reads fail over between them."
        ),
    )
    history_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="Connect/read timeout towards the history service."
    )
    max_message_bytes: int = Field(default=4096, ge=1, le=65536, description="Largest accepted text, in UTF-8 bytes.")
    history_on_connect: int = Field(
        default=100, ge=0, le=1000, description="Messages a client without a cursor gets on connect."
    )
    recovery_window_ms: int = Field(
        default=10000, ge=1, le=600000, description="Ring of recent deliveries and cursor overlap window."
    )
    idempotency_window_s: int = Field(
        default=600, ge=0, le=86400, description="How long a confirmed client_id is remembered."
    )
    idempotency_max_keys: int = Field(
        default=100_000, ge=1000, le=10_000_000,
        description="Confirmed client_ids remembered at most (about 400 bytes each); the oldest go first.",
    )
    ring_max_entries: int = Field(
        default=100_000, ge=1000, le=10_000_000,
        description="Messages the recent-deliveries ring holds at most, across rooms; the oldest go first.",
    )
    ring_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024 * 1024, le=16 * 1024**3,
        description="Estimated memory of the recent-deliveries ring at most, in bytes; the oldest go first.",
    )
    rate_limit_per_s: float = Field(default=20.0, ge=0, description="Messages per second per connection; 0 is off.")
    rate_limit_burst: int = Field(default=40, ge=0, description="Token bucket size per connection; 0 is off.")
    max_connections_per_client: int = Field(
        default=100, ge=0, description="Concurrent WebSockets per client address; 0 is off."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is believed (comma-separated)."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to open a WebSocket (comma-separated); empty allows any.",
    )
    send_buffer_frames: int = Field(
        default=1000, ge=10, le=1_000_000, description="Frames queued per client before it is closed 1013."
    )
    send_buffer_bytes: int = Field(
        default=1024 * 1024, ge=64 * 1024, le=1024**3,
        description="Bytes queued per client before it is closed 1013 (at least CHAT_MAX_FRAME_BYTES).",
    )
    max_frame_bytes: int = Field(
        default=256 * 1024, ge=16 * 1024, le=64 * 1024 * 1024,
        description="Largest coalesced text frame sent, in bytes; a single larger message goes alone.",
    )
    auth_secret: str = Field(default="", description="HS256 secret; when set, a JWT is required.")
    auth_public_key: str = Field(default="", description="PEM RS256 public key; when set, a JWT is required.")
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, le=300, description="Time given to clients to drain on SIGTERM."
    )
    static_dir: str = Field(default="", description="Serve the page from this folder instead of the packaged one.")
    presence_enabled: bool = Field(
        default=True, description="Presence and typing (the chat.presence exchange); false turns both off."
    )
    presence_heartbeat_s: float = Field(
        default=15.0, gt=0, le=300, description="How often a replica sends the members of its rooms to the others."
    )
    presence_ttl_s: float = Field(
        default=45.0, gt=0, le=3600,
        description="Members of a replica not heard from for this long are dropped (above CHAT_PRESENCE_HEARTBEAT_S).",
    )
    presence_max_members_per_room: int = Field(
        default=10_000, ge=1, le=1_000_000,
        description="Members a room lists at most; connections of further authors count as occupancy only.",
    )
    presence_snapshot_members: int = Field(
        default=100, ge=0, le=10_000, description="Members sent in a presence snapshot at most (the earliest first)."
    )
    presence_heartbeat_chunk: int = Field(
        default=500, ge=1, le=100_000, description="Member entries per heartbeat message; larger heartbeats are split."
    )
    presence_typing_throttle_s: float = Field(
        default=2.0, ge=0, le=60, description="One typing event per author and room at most this often."
    )
    presence_typing_expiry_s: float = Field(
        default=5.0, gt=0, le=60, description="How long a typing event is valid; older ones are not delivered."
    )
    presence_typing_max_entries: int = Field(
        default=10_000, ge=1, le=1_000_000,
        description="Authors tracked by the typing throttle at most; past it, typing events are dropped.",
    )

    _split = field_validator("trusted_proxies", "allowed_origins", mode="before")(_split_csv)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("history_url")
    @classmethod
    def _history_urls(cls, value: str) -> str:
        if not _csv_items(value):
            raise ValueError("at least one history URL")
        return value

    @property
    def history_urls(self) -> list[str]:
        return _csv_items(self.history_url)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_secret or self.auth_public_key)


@dataclass(frozen=True, slots=True)
class ChatConfig:
    chat: ChatSettings
    amqp: AmqpSettings
    log: LogSettings


def load_config() -> ChatConfig:
    config = ChatConfig(chat=load(ChatSettings), amqp=load(AmqpSettings), log=load(LogSettings))
    if config.chat.recovery_window_ms <= config.amqp.publish_timeout_s * 1000:
        raise ConfigError(
            "invalid configuration: CHAT_RECOVERY_WINDOW_MS must be larger than AMQP_PUBLISH_TIMEOUT_S "
            f"({config.chat.recovery_window_ms} ms <= {config.amqp.publish_timeout_s} s): a stalled "
            "replica's messages would fall outside the cursor overlap"
        )
    if config.chat.send_buffer_bytes < config.chat.max_frame_bytes:
        raise ConfigError(
            "invalid configuration: CHAT_SEND_BUFFER_BYTES must be at least CHAT_MAX_FRAME_BYTES "
            f"({config.chat.send_buffer_bytes} < {config.chat.max_frame_bytes}): a client could never be sent "
            "one full coalesced frame"
        )
    if config.chat.presence_ttl_s <= config.chat.presence_heartbeat_s:
        raise ConfigError(
            "invalid configuration: CHAT_PRESENCE_TTL_S must be larger than CHAT_PRESENCE_HEARTBEAT_S "
            f"({config.chat.presence_ttl_s} <= {config.chat.presence_heartbeat_s}): every member would flicker out "
            "between two heartbeats"
        )
    return config
