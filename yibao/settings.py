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

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


class Settings(BaseSettings):
    """Every field ``foo`` is read from ``YIBAO_FOO`` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix="YIBAO_", frozen=True, extra="ignore",
        hide_input_in_errors=True,  # a validation error must never print the SASL password
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, host:port[,host:port...]. When unset it follows "
        "kafka_host:kafka_port, the local development broker.",
    )
    topic_prefix: str = Field(default="yibao.", description="Prefix of every topic and consumer group id.")
    partitions: int = Field(default=8, ge=1, description="Partitions of the topics yibao creates.")
    duckdb_path: Path = Field(default=Path("var/yibao.duckdb"), description="DuckDB projection file.")
    duckdb_memory_limit: str = Field(
        default="512MB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB's memory_limit for the projector and replay (its buffer pool; "
        "DuckDB's own default is 80% of RAM, which a long-running projector grows into).",
    )
    pseudonym_key: str = Field(
        default="yibao-dev-pseudonym-key",
        description="HMAC key of the person pseudonyms in the DuckDB projections (set a secret one "
        "in production; a live projection and its replay must use the same key).",
    )
    log_format: LogFormat = Field(default="auto", description="auto: JSON lines unless stderr is a terminal.")
    log_level: LogLevel = "info"

    # How every Kafka client authenticates and encrypts (yibao.streams.kafka.options builds the
    # aiokafka options from these). PLAINTEXT is for the local development broker only.
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS)."
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        default="SCRAM-SHA-256", description="SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (PLAIN: only over TLS)."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user (SASL_* protocols).")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; a SecretStr, shown as '**********' in logs and reprs."
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="PEM CA bundle the broker's certificate is checked against; default: the "
        "system's trust store."
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate (TLS client authentication, optional)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of the client certificate."
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker's certificate names the host connected to."
    )

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
    kafka_heap: str = Field(default="2g", description="JVM -Xmx of the local broker.")

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_cafile",
                     "kafka_ssl_certfile", "kafka_ssl_keyfile", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _security_is_consistent(self) -> Settings:
        """Refuse half-configured security instead of silently connecting in the clear."""
        protocol = self.kafka_security_protocol
        sasl, tls = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")
        where = f"YIBAO_KAFKA_SECURITY_PROTOCOL={protocol}"
        if sasl and not self.kafka_sasl_username:
            raise ValueError(f"YIBAO_KAFKA_SASL_USERNAME is required with {where}")
        if sasl and (self.kafka_sasl_password is None or not self.kafka_sasl_password.get_secret_value()):
            raise ValueError(f"YIBAO_KAFKA_SASL_PASSWORD is required with {where}")
        if not sasl and (self.kafka_sasl_username or self.kafka_sasl_password is not None):
            raise ValueError(
                f"YIBAO_KAFKA_SASL_USERNAME/PASSWORD are set but {where} does not use SASL "
                "(use SASL_SSL, or SASL_PLAINTEXT on a trusted network)"
            )
        files = {
            "YIBAO_KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "YIBAO_KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "YIBAO_KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        if not tls and any(files.values()):
            names = ", ".join(k for k, v in files.items() if v)
            raise ValueError(f"{names} set but {where} does not use TLS (use SSL or SASL_SSL)")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("YIBAO_KAFKA_SSL_KEYFILE is set without YIBAO_KAFKA_SSL_CERTFILE")
        return self

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
