"""One settings object for every gradecast process, read from the environment."""

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Secrets may come from files instead (Docker and Kubernetes secrets): NAME_FILE=/path.
SECRETS = ("GRADECAST_JWT_SECRET", "GRADECAST_PUBLISHER_KEYS")


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Field names are the environment variables; a bad value stops the process at load."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    DATABASE_URL: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/gradecast"
    AMQP_URL: str = "amqp://guest:guest@127.0.0.1:5672/"

    # Student tokens: a shared HS256 secret, or the identity provider's public key (PEM) or
    # key set (JWKS file) for RS256/ES256.
    GRADECAST_JWT_SECRET: SecretStr | None = None
    GRADECAST_JWT_PUBLIC_KEY_FILE: Path | None = None
    GRADECAST_JWKS_FILE: Path | None = None
    GRADECAST_JWT_AUDIENCE: str | None = None  # checked when set
    GRADECAST_JWT_ISSUER: str | None = None  # checked when set
    GRADECAST_JWT_LEEWAY_SECONDS: float = Field(default=30, ge=0, le=300)  # clock skew
    GRADECAST_JWT_TENANT_CLAIM: str = "tenant"  # absent from a token: the default tenant
    # Development and bootstrap keys, for the default tenant; `gradecast keys` manages the
    # real ones, kept hashed in Postgres.
    GRADECAST_PUBLISHER_KEYS: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    PUBLISHER_KEY_CACHE_SECONDS: float = Field(default=2, ge=0)  # how soon a revocation bites

    # Abuse limits, per publisher key and per client address, in each process.
    PUBLISH_RATE_PER_SECOND: float = Field(default=500, gt=0)
    PUBLISH_BURST: int = Field(default=1000, ge=1)
    CONNECT_RATE_PER_SECOND: float = Field(default=50, gt=0)
    CONNECT_BURST: int = Field(default=500, ge=1)
    CORS_ALLOWED_ORIGINS: Annotated[tuple[str, ...], NoDecode] = ()
    FORWARDED_ALLOW_IPS: str = "127.0.0.1"  # proxies whose X-Forwarded-For is believed
    ACCESS_LOG: bool = True  # a line per request: off for heavy traffic
    LOG_FORMAT: Literal["text", "json"] = "text"  # json: one object per line
    OPERATOR_TOKEN: SecretStr | None = None  # for /connections; unset: this host only

    HOST: str = "127.0.0.1"
    PORT: int | None = Field(default=None, ge=1, le=65535)  # None: the service's own default
    NODE_ID: str = Field(default_factory=default_node_id, pattern=r"^[A-Za-z0-9._-]{1,64}$")

    RETENTION_HOURS: float = Field(default=24, gt=0)
    RETENTION_INTERVAL_SECONDS: float = Field(default=300, gt=0)
    RETENTION_BATCH_SIZE: int = Field(default=10_000, ge=1)
    RETENTION_METRICS_PORT: int = Field(default=8010, ge=0, le=65535)  # 0: no /metrics

    HEARTBEAT_SECONDS: float = Field(default=15, gt=0)
    RECONNECT_MILLISECONDS: int = Field(default=3000, ge=0)  # the SSE `retry:` hint
    # Streams a node ends (shutdown, overload) reconnect after RECONNECT_MILLISECONDS plus up
    # to this much at random, so that its clients do not all come back in the same instant.
    RECONNECT_JITTER_MILLISECONDS: int = Field(default=10_000, ge=0)
    MAX_CONNECTIONS_PER_STUDENT: int = Field(default=3, ge=1)
    # None: the process's open-file limit, less what the node needs besides its streams.
    MAX_CONNECTIONS_PER_NODE: int | None = Field(default=None, ge=1)
    CONNECTION_BUFFER_EVENTS: int = Field(default=1024, ge=1)  # a slower reader is dropped

    BROKER_SHARDS: int = Field(default=64, ge=1, le=4096)
    BROKER_TIMEOUT_SECONDS: float = Field(default=2, gt=0)
    DATABASE_TIMEOUT_SECONDS: float = Field(default=1.5, gt=0)  # to connect, or to get a pooled one
    DATABASE_POOL_SIZE: int = Field(default=10, ge=1)

    @model_validator(mode="before")
    @classmethod
    def read_secret_files(cls, values: Any) -> Any:
        for name in SECRETS:
            path = os.environ.get(f"{name}_FILE")
            if path and isinstance(values, dict) and not values.get(name):
                values[name] = Path(path).read_text().strip()
        return values

    @field_validator("GRADECAST_PUBLISHER_KEYS", "CORS_ALLOWED_ORIGINS", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    def require(self, *names: str) -> None:
        """Stop a service at start when a setting it cannot run without is empty."""
        missing = [name for name in names if not getattr(self, name)]
        if missing:
            raise SystemExit(f"gradecast: set {', '.join(missing)} in the environment")


@lru_cache
def get_settings() -> Settings:
    return Settings()
