"""History service settings (prefix ``HISTORY_``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import AmqpSettings, LogSettings, load


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
    auth_secret: str = Field(default="", description="HS256 secret; when set, the API requires a JWT.")
    auth_public_key: str = Field(default="", description="PEM RS256 public key; when set, the API requires a JWT.")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_secret or self.auth_public_key)


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    history: HistorySettings
    amqp: AmqpSettings
    log: LogSettings


def load_config() -> HistoryConfig:
    return HistoryConfig(history=load(HistorySettings), amqp=load(AmqpSettings), log=load(LogSettings))
