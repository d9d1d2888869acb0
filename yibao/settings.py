"""yibao's settings: one frozen object, read from ``YIBAO_*`` environment variables.

Every ``YIBAO_*`` variable is a field here, with a type, a default and a one-line
description (``yibao config`` prints them all; docs/configuration.md is its markdown).
Build it once at an entry point (the CLI group callback does, and puts it in ``ctx.obj``)
and pass it down; nothing in yibao reads the environment or keeps a module-level instance.
A command-line option that a variable also sets is a :class:`SettingOption`: its default is
the field's value in the settings of the running command.

    >>> s = Settings(bootstrap_servers="kafka-1:9092,kafka-2:9092")
    >>> s.bootstrap_list
    ['kafka-1:9092', 'kafka-2:9092']
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import click
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
Stage = Literal["sequencer", "processor", "audit"]
StoreKind = Literal["rocksdb", "memory"]
TestKafka = Literal["auto", "docker", "local"]

#: Fields whose current value ``yibao config`` never prints.
SECRETS = frozenset({"kafka_sasl_password", "pseudonym_key"})


class Settings(BaseSettings):
    """Every field ``name`` is read from ``YIBAO_<NAME>`` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix="YIBAO_", frozen=True, extra="ignore",
        hide_input_in_errors=True,  # a validation error must never print the SASL password
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, host:port[,host:port...]; when unset, "
        "YIBAO_KAFKA_HOST:YIBAO_KAFKA_PORT (the local development broker).",
    )
    topic_prefix: str = Field(default="yibao.", description="Prefix of every topic and consumer group id.")
    partitions: int = Field(default=8, ge=1, description="Partitions of the topics yibao creates.")
    duckdb_path: Path = Field(default=Path("var/yibao.duckdb"), description="DuckDB projection file.")
    # DuckDB's own default is 80% of RAM, which a long-running projector grows into.
    duckdb_memory_limit: str = Field(
        default="512MB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB's memory_limit (its buffer pool) for the projector and replay.",
    )
    # A live projection and its replay must use the same key.
    pseudonym_key: str = Field(
        default="yibao-dev-pseudonym-key",
        description="HMAC key of the person pseudonyms in the DuckDB projections; set a secret "
        "one in production.",
    )
    log_format: LogFormat = Field(
        default="auto", description="auto (JSON lines unless stderr is a terminal), json or console."
    )
    log_level: LogLevel = Field(default="info", description="debug, info, warning, error or critical.")

    # How every Kafka client authenticates and encrypts (yibao.streams.kafka.options builds the
    # aiokafka options from these). PLAINTEXT is for the local development broker only.
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS)."
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        default="SCRAM-SHA-256", description="SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (PLAIN: only over TLS)."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user (`SASL_*` protocols).")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; a SecretStr, masked in logs, reprs and `yibao config`."
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
    kafka_host: str = Field(default="127.0.0.1", description="Host of the local development broker.")
    kafka_port: int = Field(default=9092, ge=1, le=65535, description="Port of the local development broker.")
    kafka_controller_port: int = Field(
        default=0, ge=0, le=65535, description="KRaft controller port of the local broker; 0 means "
        "YIBAO_KAFKA_PORT + 1."
    )
    kafka_home: Path | None = Field(
        default=None,
        description="Where the local broker keeps config, data and logs; default var/kafka.",
    )
    kafka_libs: Path | None = Field(
        default=None,
        description="The local broker's jars (fetched by `make setup`); default var/kafka/libs.",
    )
    kafka_heap: str = Field(default="2g", description="JVM -Xmx of the local broker.")

    # `yibao worker`: the sequencer and the settlement processor (streams/worker.py).
    worker_id: str = Field(
        default="0", description="Unique per concurrently running worker (transactional ids derive from it)."
    )
    merge_wait_ms: int = Field(
        default=20, ge=0, description="How long the sequencer's merge (in broker append-time order) "
        "waits for records still in flight to an idle input partition (Kafka Streams' max.task.idle.ms).",
    )
    dedup_window_days: int = Field(
        default=30, ge=1, description="Event-time window within which a repeated event_id is a duplicate."
    )
    policy: Path | None = Field(
        default=None, description="Policy TOML the pipeline runs with (`yibao worker`, `yibao reconcile`); "
        "unset: the national policy.",
    )
    stages: Annotated[tuple[Stage, ...], NoDecode] = Field(
        default=("sequencer", "processor"), min_length=1,
        description="Which stages `yibao worker` runs (spaces or commas): sequencer, processor, audit.",
    )
    transaction_timeout_ms: int = Field(
        default=10_000, ge=1000,
        description="After this, the broker aborts a dead worker's open transaction.",
    )
    store: StoreKind = Field(
        default="rocksdb", description="Where settled visits are kept: a local RocksDB store (bounded "
        "memory) or a dict (memory grows with every visit ever settled).",
    )
    state_dir: Path = Field(
        default=Path("var/state"),
        description="Folder of the worker's local stores (rebuilt from the changelogs at start).",
    )
    store_cache_mb: int = Field(
        default=64, ge=8,
        description="RocksDB memory of the worker (block cache and memtables, all partitions).",
    )
    fuse: bool = Field(
        default=True, description="With both stages in one worker, settle the ledger partitions it owns in "
        "the sequencer's transaction (one transaction per checkout, not two).",
    )
    fault_pause_in_transaction: str = Field(
        default="", pattern=r"^([a-z]+:[0-9]+)?$",
        description="Tests only: `<stage>:<n>` stops (SIGSTOP) the worker in that stage's n-th "
        "transaction, its records sent and the commit not.",
    )

    # `yibao project`: the live DuckDB projector.
    snapshot_every: float = Field(
        default=5.0, ge=0.1,
        description="Seconds between the projector's published snapshots (`<db>.snapshot.duckdb`) "
        "for readers.",
    )
    project_max_wait_ms: int = Field(
        default=300, ge=1, description="The projector writes at least this often."
    )

    metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port of the Prometheus /metrics endpoint of `yibao worker` and `yibao "
        "project` (0: none). The gateway serves /metrics on its own port.",
    )
    profile: str | None = Field(
        default=None,
        description="Diagnosis: `yibao worker` runs under cProfile and writes the profile to "
        "this file when it stops (where the time goes: `bench/bench_capacity.py --profile`).",
    )

    # `yibao gateway`: the hospitals' HTTP front door.
    gateway_host: str = Field(default="127.0.0.1", description="Address `yibao gateway serve` listens on.")
    gateway_port: int = Field(default=8080, ge=1, le=65535, description="Port of the gateway.")
    gateway_clients: Path = Field(
        default=Path("var/gateway/clients.json"),
        description="The gateway's credentials file: API key hashes bound to a role and "
        "facilities (`yibao gateway add-client`).",
    )
    gateway_index: Path = Field(
        default=Path("var/gateway/index.sqlite"),
        description="This gateway instance's index of inputs, visits and answers (SQLite, "
        "rebuilt from the topics if missing).",
    )
    gateway_timeout_s: float = Field(
        default=5.0, gt=0, le=30,
        description="How long a command waits for its answer before 202 (the `timeout` "
        "query parameter overrides it, at most 30 s).",
    )

    # `yibao generate` and `yibao demo`: synthetic data.
    generate_from: dt.date = Field(
        default=dt.date(2025, 1, 1), description="First day of the generated log (UTC+08:00)."
    )
    generate_to: dt.date = Field(
        default=dt.date(2025, 12, 31), description="Last day of the generated log, inclusive."
    )
    demo_households: int = Field(default=10_000, ge=1, description="Households `yibao demo` generates.")

    # The test harness (yibao.dev.testing) when YIBAO_BOOTSTRAP_SERVERS is not set.
    test_kafka: TestKafka = Field(
        default="auto", description="Broker of the Kafka tests: auto (a testcontainers Kafka if Docker "
        "answers, else the local broker), docker or local.",
    )
    test_kafka_image: str = Field(
        default="confluentinc/cp-kafka:7.9.0",  # Kafka 3.9
        description="Docker image of the tests' testcontainers Kafka.",
    )

    #: whether bootstrap_servers was given (an existing cluster), not derived from the local broker
    _bootstrap_given: bool = PrivateAttr(default=False)

    @field_validator("log_format", "log_level", "test_kafka", mode="before")
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

    @field_validator("stages", mode="before")
    @classmethod
    def _split_stages(cls, value: Any) -> Any:
        return tuple(v for v in value.replace(",", " ").split()) if isinstance(value, str) else value

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

    @model_validator(mode="wrap")
    @classmethod
    def _bootstrap_follows_local_broker(cls, data: Any, handler: Callable[[Any], Settings]) -> Settings:
        given = not isinstance(data, dict) or bool(data.get("bootstrap_servers"))
        if not given:
            host = data.get("kafka_host") or "127.0.0.1"
            port = data.get("kafka_port") or 9092
            data = {**data, "bootstrap_servers": f"{host}:{port}"}
        settings = handler(data)
        settings._bootstrap_given = given
        return settings

    @property
    def bootstrap_list(self) -> list[str]:
        """``bootstrap_servers`` split into a list, as aiokafka and faust accept it."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def bootstrap_given(self) -> bool:
        """Whether YIBAO_BOOTSTRAP_SERVERS (or the argument) named the servers: an existing
        cluster, rather than the local development broker's address."""
        return self._bootstrap_given


def variable(field: str) -> str:
    """The environment variable of a settings field: ``YIBAO_<FIELD>``."""
    return f"YIBAO_{field.upper()}"


def show(field: str, value: Any) -> str:
    """A field's value as the variable would be written; secrets masked, None or "" as (unset)."""
    if value is None or value == "":
        return "(unset)"
    if field in SECRETS and value != Settings.model_fields[field].default:
        return "**********"  # (the default key is public: it is in this file)
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


# -- command-line options set by a variable --------------------------------------------------


def _for_click(value: Any) -> Any:
    """A field value as click parses a default (a path or a date as its string)."""
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value) if isinstance(value, Path) else value


class SettingOption(click.Option):
    """A click option backed by a settings field: its default is the field's value in the
    :class:`Settings` of the running command (``ctx.obj``; the field's default unless its
    variable is set), ``--help`` shows the variable and that value, and its help is the
    field's description unless given. The option never reads the environment itself."""

    def __init__(self, param_decls: Any = None, *, setting: str, **kwargs: Any) -> None:
        field = Settings.model_fields[setting]
        self.setting = setting
        self.variable = variable(setting)
        kwargs.setdefault("help", field.description)
        kwargs["default"] = _for_click(field.default)
        kwargs["show_envvar"] = False  # shown by get_help_extra: the Settings read the variable
        super().__init__(param_decls, **kwargs)

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        settings = ctx.find_object(Settings)
        return _for_click(getattr(settings if settings is not None else Settings(), self.setting))

    def get_help_extra(self, ctx: click.Context) -> Any:
        return {"envvars": (self.variable,), **super().get_help_extra(ctx)}

    def get_error_hint(self, ctx: click.Context) -> str:
        return f"{super().get_error_hint(ctx)} (env var: '{self.variable}')"


def setting_option(*param_decls: str, setting: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``@click.option(*param_decls, **kwargs)`` whose default is ``settings.<setting>``
    (see :class:`SettingOption`)."""
    return click.option(*param_decls, cls=SettingOption, setting=setting, **kwargs)
