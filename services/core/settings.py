"""One settings object for every gradecast process, read from the environment."""

import os
import socket
from functools import lru_cache
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Field names are the environment variables; a bad value stops the process at load."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    DATABASE_URL: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/gradecast"
    AMQP_URL: str = "amqp://guest:guest@127.0.0.1:5672/"
    GRADECAST_JWT_SECRET: SecretStr | None = None
    GRADECAST_PUBLISHER_KEYS: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    HOST: str = "127.0.0.1"
    PORT: int | None = Field(default=None, ge=1, le=65535)  # None: the service's own default
    NODE_ID: str = Field(default_factory=default_node_id, pattern=r"^[A-Za-z0-9._-]{1,64}$")

    RETENTION_HOURS: float = Field(default=24, gt=0)
    RETENTION_INTERVAL_SECONDS: float = Field(default=300, gt=0)
    RETENTION_BATCH_SIZE: int = Field(default=10_000, ge=1)

    HEARTBEAT_SECONDS: float = Field(default=15, gt=0)
    RECONNECT_MILLISECONDS: int = Field(default=3000, ge=0)  # the SSE `retry:` hint
    # Streams a node ends (shutdown, overload) reconnect after RECONNECT_MILLISECONDS plus up
    # to this much at random, so that its clients do not all come back in the same instant.
    RECONNECT_JITTER_MILLISECONDS: int = Field(default=10_000, ge=0)
    MAX_CONNECTIONS_PER_STUDENT: int = Field(default=3, ge=1)
    MAX_CONNECTIONS_PER_NODE: int = Field(default=19_000, ge=1)  # below the open-file limit
    CONNECTION_BUFFER_EVENTS: int = Field(default=1024, ge=1)  # a slower reader is dropped

    BROKER_SHARDS: int = Field(default=64, ge=1, le=4096)
    BROKER_TIMEOUT_SECONDS: float = Field(default=2, gt=0)
    DATABASE_TIMEOUT_SECONDS: float = Field(default=1.5, gt=0)  # to connect, or to get a pooled one
    DATABASE_POOL_SIZE: int = Field(default=10, ge=1)

    @field_validator("GRADECAST_PUBLISHER_KEYS", mode="before")
    @classmethod
    def split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    def require(self, *names: str) -> None:
        """Stop a service at start when a setting it cannot run without is empty."""
        missing = [name for name in names if not getattr(self, name)]
        if missing:
            raise SystemExit(f"gradecast: set {', '.join(missing)} in the environment")


@lru_cache
def get_settings() -> Settings:
    return Settings()
