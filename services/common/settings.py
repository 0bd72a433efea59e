"""Settings shared by both services, and the loader that turns a bad variable into a clear error.

Each group is a flat pydantic-settings model with its own environment prefix. The Helm chart maps
``config.<group>.<camelCaseField>`` onto ``<PREFIX><UPPER_SNAKE_FIELD>`` (``config.amqp.prefetch`` <->
``AMQP_PREFETCH``); ``tests/deploy`` checks that rule against these models.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import AnyUrl, BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.brokers import split_urls

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(SystemExit):
    """Raised at start when a variable is invalid; the message names the variable."""


class AmqpSettings(BaseSettings):
    """How a service reaches RabbitMQ and the names of the frozen v1 topology."""

    model_config = SettingsConfigDict(env_prefix="AMQP_", extra="ignore")

    url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description=(
            "Broker URL, credentials included (kept in a Secret by the chart); a comma-separated list for a "
            "cluster's nodes, tried from a random one, then in turn."
        ),
    )
    exchange: str = Field(default="chat", min_length=1, description="Durable fanout exchange.")
    history_queue: str = Field(
        default="chat.history", min_length=1, description="Durable quorum queue of the history service."
    )
    history_replicas: int = Field(
        default=1, ge=1, le=64,
        description=(
            "Number of history replicas; chat replicas declare one history queue per replica (`chat.history`, "
            "`chat.history.1` .. `chat.history.<n-1>`) and a history replica checks its ordinal against it."
        ),
    )
    history_queue_expires_s: int = Field(
        # At most 2**32-1 ms: Erlang timers take no longer delay.
        default=604800, ge=0, le=4_294_967,
        description=(
            "`x-expires` of the history queues of ordinal >= 1 (0: never): a queue unused that long is deleted "
            "by the broker. Only applies when a queue is created (docs/guarantees.md, history replicas: changing it)."
        ),
    )
    prefetch: int = Field(default=256, ge=1, le=65535, description="Unacked deliveries per consumer.")
    heartbeat_s: int = Field(default=30, ge=1, le=600, description="AMQP heartbeat; a dead peer is seen in ~2x.")
    publish_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="How long a publish waits for the broker's confirm."
    )
    reconnect_max_s: float = Field(
        default=5.0, gt=0, le=300, description="Upper bound of the reconnect backoff."
    )

    @field_validator("url")
    @classmethod
    def _amqp_urls(cls, value: str) -> str:
        urls = split_urls(value)
        if not urls:
            raise ValueError("must be an amqp:// or amqps:// URL, or a comma-separated list of them")
        for position, url in enumerate(urls, 1):
            # The message names the entry by position: the URL itself holds credentials.
            where = f"entry {position} of {len(urls)}" if len(urls) > 1 else "the URL"
            try:
                scheme = AnyUrl(url).scheme
            except ValidationError:
                raise ValueError(f"{where} is not a URL") from None
            if scheme not in ("amqp", "amqps"):
                raise ValueError(f"{where} must be an amqp:// or amqps:// URL")
        return value


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOG_", extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    format: Literal["console", "json"] = Field(
        default="console", description="`json` in containers, `console` for people."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


_SECRET_FIELDS = frozenset({"url", "auth_secret", "auth_public_key"})


def env_name(model: type[BaseModel], field: str) -> str:
    prefix = str(model.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def load(model: type[SettingsT]) -> SettingsT:
    """Build a settings model from the environment, or exit naming each bad variable."""
    try:
        return model()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            shown = "" if field in _SECRET_FIELDS else f" (got {error.get('input')!r})"
            problems.append(f"{env_name(model, field)}: {error['msg']}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
