"""History service settings (prefix ``HISTORY_``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pydantic import AnyUrl, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import AmqpSettings, ConfigError, LogSettings, load

# A StatefulSet pod is named `<statefulset>-<ordinal>`; the chart's history StatefulSet ends in `-history`.
_POD_ORDINAL = re.compile(r"(?:^|-)history-(\d+)$")


def ordinal_from_hostname(hostname: str) -> int:
    """The ordinal in a history pod's name (`...-history-<n>`); 0 for any other name (a laptop, a container)."""
    match = _POD_ORDINAL.search(hostname.strip())
    return int(match.group(1)) if match else 0


def split_peer_urls(value: str) -> list[str]:
    """The base URLs of a comma-separated ``HISTORY_PEERS``, blanks dropped, no trailing slash."""
    return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]


class HistorySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HISTORY_", extra="ignore")

    host: str = Field(default="0.0.0.0", description="Address the history API listens on.")
    port: int = Field(default=8001, ge=0, le=65535, description="History API port.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Separate /metrics port; 0 serves it on the main port."
    )
    data_dir: str = Field(default="./data/history", min_length=1, description="LevelDB directory (one process).")
    max_page: int = Field(default=1000, ge=1, le=100000, description="Largest `limit` a request may ask for.")
    batch_max: int = Field(
        default=256, ge=1, le=10000, description="Messages written and acked per LevelDB batch at most."
    )
    batch_linger_ms: float = Field(
        default=2.0, ge=0, le=1000, description="How long a partial batch waits for more messages."
    )
    retry_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="After a storage failure, how often a write is retried."
    )
    replica: int | None = Field(
        default=None, ge=0,
        description="This replica's ordinal; unset: from the pod name in HOSTNAME (`...-history-<n>`), else 0.",
    )
    peers: str = Field(
        default="",
        description=(
            "Every history replica's base URL in ordinal order (comma-separated; the entry at this replica's own "
            "ordinal is ignored). Empty: no peer to copy from or verify against."
        ),
    )
    verify_interval_s: float = Field(
        default=300.0, ge=0, le=86400,
        description="How often a ready replica compares its /digest with each ready peer's (0: never).",
    )
    auth_secret: str = Field(default="", description="HS256 secret; when set, the API requires a JWT.")
    auth_public_key: str = Field(default="", description="PEM RS256 public key; when set, the API requires a JWT.")

    @field_validator("peers")
    @classmethod
    def _peer_urls(cls, value: str) -> str:
        for position, url in enumerate(split_peer_urls(value), 1):
            try:
                scheme = AnyUrl(url).scheme
            except ValidationError:
                raise ValueError(f"entry {position} is not a URL") from None
            if scheme not in ("http", "https"):
                raise ValueError(f"entry {position} must be an http:// or https:// base URL")
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_secret or self.auth_public_key)

    @property
    def ordinal(self) -> int:
        return self.replica if self.replica is not None else ordinal_from_hostname(os.environ.get("HOSTNAME", ""))

    @property
    def peer_urls(self) -> dict[int, str]:
        """Peer ordinal -> base URL, this replica's own entry left out."""
        urls = split_peer_urls(self.peers)
        return {ordinal: url for ordinal, url in enumerate(urls) if ordinal != self.ordinal}


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """The service's settings; refuses, naming the variables, a replica set that cannot be (checked at start)."""

    history: HistorySettings
    amqp: AmqpSettings
    log: LogSettings

    def __post_init__(self) -> None:
        ordinal, replicas = self.history.ordinal, self.amqp.history_replicas
        source = "HISTORY_REPLICA" if self.history.replica is not None else "the ordinal in HOSTNAME"
        if ordinal >= replicas:
            raise ConfigError(
                f"invalid configuration: {source} is {ordinal}, but AMQP_HISTORY_REPLICAS is {replicas}: "
                "ordinals run from 0 to AMQP_HISTORY_REPLICAS - 1"
            )
        peers = split_peer_urls(self.history.peers)
        if peers and len(peers) != replicas:
            raise ConfigError(
                f"invalid configuration: HISTORY_PEERS lists {len(peers)} URL(s), but AMQP_HISTORY_REPLICAS is "
                f"{replicas}: give every replica's base URL in ordinal order (or none)"
            )


def load_config() -> HistoryConfig:
    return HistoryConfig(history=load(HistorySettings), amqp=load(AmqpSettings), log=load(LogSettings))
