"""Kafka client security settings -> aiokafka options (no broker needed).

The broker side (SASL_SSL + SCRAM-SHA-256 on a local broker) is tests/test_security_kafka.py."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
from click.testing import CliRunner

from yibao.cli import main
from yibao.dev.smoke import faust_credentials
from yibao.settings import Settings
from yibao.streams.kafka.options import (
    KafkaSecurityError,
    client_options,
    describe,
    security_env,
    ssl_context,
)

PASSWORD = "s3cret-不可见"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("YIBAO_"):
            monkeypatch.delenv(name)
    yield


def sasl(**kw: object) -> Settings:
    base: dict[str, object] = {
        "bootstrap_servers": "k1:9096",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_username": "settler",
        "kafka_sasl_password": PASSWORD,
    }
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def test_default_is_plaintext() -> None:
    s = Settings()
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert client_options(s) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert client_options("h:1") == {"bootstrap_servers": "h:1"}
    assert faust_credentials(s) is None


def test_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
    monkeypatch.setenv("YIBAO_KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("YIBAO_KAFKA_SASL_USERNAME", "settler")
    monkeypatch.setenv("YIBAO_KAFKA_SASL_PASSWORD", PASSWORD)
    opts = client_options(Settings())
    assert opts["security_protocol"] == "SASL_PLAINTEXT"
    assert (opts["sasl_mechanism"], opts["sasl_plain_username"], opts["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "settler", PASSWORD)
    assert "ssl_context" not in opts


def test_sasl_ssl_options_share_one_context() -> None:
    a, b = client_options(sasl()), client_options(sasl(topic_prefix="other."))
    assert isinstance(a["ssl_context"], ssl.SSLContext)
    assert a["ssl_context"] is b["ssl_context"]  # built once per set of files
    assert a["ssl_context"].verify_mode == ssl.CERT_REQUIRED and a["ssl_context"].check_hostname
    assert a["sasl_mechanism"] == "SCRAM-SHA-256"
    no_hostname = ssl_context(sasl(kafka_ssl_check_hostname=False))
    assert not no_hostname.check_hostname and no_hostname.verify_mode == ssl.CERT_REQUIRED


def test_password_is_never_shown() -> None:
    s = sasl()
    for text in (repr(s), str(s), describe(s), str(s.model_dump())):
        assert PASSWORD not in text
    assert describe(s) == "k1:9096 (SASL_SSL SCRAM-SHA-256 as settler)"
    # a validation error must not echo the input either
    with pytest.raises(pydantic.ValidationError) as e:
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=PASSWORD)  # type: ignore[arg-type]
    assert PASSWORD not in str(e.value)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kafka_sasl_username": None}, "YIBAO_KAFKA_SASL_USERNAME is required with "
                                        "YIBAO_KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
        ({"kafka_sasl_username": "  "}, "YIBAO_KAFKA_SASL_USERNAME is required"),
        ({"kafka_sasl_password": None}, "YIBAO_KAFKA_SASL_PASSWORD is required"),
        ({"kafka_sasl_password": ""}, "YIBAO_KAFKA_SASL_PASSWORD is required"),
        ({"kafka_security_protocol": "SSL"}, "does not use SASL"),
        ({"kafka_security_protocol": "PLAINTEXT"}, "does not use SASL"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"kafka_ssl_keyfile": "k.pem"}, "YIBAO_KAFKA_SSL_KEYFILE is set without YIBAO_KAFKA_SSL_CERTFILE"),
    ],
)
def test_half_configured_security_is_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        sasl(**kw)


def test_tls_files_without_tls_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="YIBAO_KAFKA_SSL_CAFILE set but "
                       "YIBAO_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS"):
        Settings(kafka_ssl_cafile="ca.pem")  # type: ignore[arg-type]


def test_missing_tls_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(KafkaSecurityError, match=r"YIBAO_KAFKA_SSL_CAFILE=.*no such file"):
        client_options(sasl(kafka_ssl_cafile=tmp_path / "nope.pem"))
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(KafkaSecurityError, match="cannot load the TLS files"):
        client_options(sasl(kafka_ssl_cafile=garbage))


def test_security_env_rebuilds_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = sasl(kafka_sasl_mechanism="SCRAM-SHA-512", kafka_ssl_check_hostname=False)
    monkeypatch.setenv("YIBAO_KAFKA_SSL_CERTFILE", "stray-parent-value.pem")
    env = security_env(s)
    assert env["YIBAO_KAFKA_SSL_CERTFILE"] == ""  # overrides the parent's stray variable
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("YIBAO_BOOTSTRAP_SERVERS", s.bootstrap_servers)
    child = Settings()
    assert client_options(child).keys() == client_options(s).keys()
    assert child.kafka_sasl_password is not None
    assert child.kafka_sasl_password.get_secret_value() == PASSWORD
    assert (child.kafka_sasl_mechanism, child.kafka_ssl_check_hostname) == ("SCRAM-SHA-512", False)
    plain = Settings(kafka_security_protocol="SSL", kafka_sasl_username="", kafka_sasl_password="")
    assert security_env(plain)["YIBAO_KAFKA_SASL_PASSWORD"] == ""


def test_cli_names_the_missing_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("YIBAO_KAFKA_SASL_PASSWORD", PASSWORD)
    result = CliRunner().invoke(main, ["kafka", "status"])
    assert result.exit_code == 2
    assert "YIBAO_KAFKA_SASL_USERNAME is required" in result.output
    assert PASSWORD not in result.output
