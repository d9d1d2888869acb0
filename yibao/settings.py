"""yibao's settings: one frozen object, read from ``YIBAO_*`` environment variables.

Build it once at an entry point (the CLI group callback does, and puts it in ``ctx.obj``)
and pass it down; nothing in yibao reads the environment or keeps a module-level instance.

    >>> s = Settings(bootstrap_servers="kafka-1:9092,kafka-2:9092")
    >>> s.bootstrap_list
    ['kafka-1:9092', 'kafka-2:9092']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    """Every field ``foo`` is read from ``YIBAO_FOO`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="YIBAO_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, host:port[,host:port...]. When unset it follows "
        "kafka_host:kafka_port, the local development broker.",
    )
    topic_prefix: str = Field(default="yibao.", description="Prefix of every topic and consumer group id.")
    partitions: int = Field(default=8, ge=1, description="Partitions of the topics yibao creates.")
    duckdb_path: Path = Field(default=Path("var/yibao.duckdb"), description="DuckDB projection file.")
    pseudonym_key: str = Field(
        default="yibao-dev-pseudonym-key",
        description="HMAC key of the person pseudonyms in the DuckDB projections (set a secret one "
        "in production; a live projection and its replay must use the same key).",
    )
    log_format: LogFormat = Field(default="auto", description="auto: JSON lines unless stderr is a terminal.")
    log_level: LogLevel = "info"

    # The local development broker (`yibao kafka up`, `make kafka-up`, the test fixture).
    kafka_host: str = "127.0.0.1"
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(
        default=0, ge=0, le=65535, description="KRaft controller port; 0 means kafka_port + 1."
    )
    kafka_home: Path | None = Field(
        default=None,
        description="Where the local broker keeps config, data and logs; default var/kafka.",
    )
    kafka_libs: Path | None = Field(
        default=None,
        description="The broker's jars (fetched by `make setup`); default var/kafka/libs.",
    )
    kafka_heap: str = Field(default="512m", description="JVM -Xmx of the local broker.")

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _bootstrap_follows_local_broker(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("bootstrap_servers"):
            host = data.get("kafka_host") or "127.0.0.1"
            port = data.get("kafka_port") or 9092
            data = {**data, "bootstrap_servers": f"{host}:{port}"}
        return data

    @property
    def bootstrap_list(self) -> list[str]:
        """``bootstrap_servers`` split into a list, as aiokafka and faust accept it."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
