"""Client security against a real broker: a throwaway single-node broker (one per module,
~5 s to start) with a SASL_SSL listener, SCRAM-SHA-256/512 users added at format time and a
server certificate from a CA generated for the test (``yibao.dev.testing.secured_kafka``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from click.testing import CliRunner
from pydantic import SecretStr

from yibao.cli import main as cli
from yibao.dev.testing import SecuredKafka, secured_kafka, unique_prefix
from yibao.settings import Settings
from yibao.streams.kafka import io as kafka_io
from yibao.streams.kafka.options import KafkaAccessError, probe, security_env

pytestmark = pytest.mark.kafka

USERS = {"settler": "settler-pw-7f3a", "analyst": "analyst-pw-91c2"}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    with secured_kafka(tmp_path_factory.mktemp("secured-kafka"), USERS) as k:
        yield k


def roundtrip(settings: Settings) -> list[tuple[bytes | None, bytes | None]]:
    topic = unique_prefix() + "secure"

    async def go() -> list[tuple[bytes | None, bytes | None]]:
        await kafka_io.create_topics(settings, [topic])
        await kafka_io.produce(settings, topic, [(b"p-1", b"hello over TLS")])
        records = await kafka_io.consume(settings, topic, until=1, timeout=20)
        return [(r.key, r.value) for r in records]

    return asyncio.run(go())


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_over_tls_produces_and_consumes(secure: SecuredKafka, mechanism: str) -> None:
    s = secure.settings("settler", kafka_sasl_mechanism=mechanism)
    assert asyncio.run(probe(s)) == f"connected and authenticated: {secure.secure_bootstrap} " \
                                    f"(SASL_SSL {mechanism} as settler)"
    assert roundtrip(s) == [(b"p-1", b"hello over TLS")]


def test_wrong_password_is_an_authentication_error(secure: SecuredKafka) -> None:
    bad = secure.settings("settler", "not-the-password")
    with pytest.raises(KafkaAccessError, match=r"authentication failed on 127\.0\.0\.1:\d+ \(SASL_SSL "
                       r"SCRAM-SHA-256 as settler\).*invalid credentials.*YIBAO_KAFKA_SASL_PASSWORD"):
        asyncio.run(probe(bad))
    # the clients themselves refuse to start (aiokafka says only "Unable to bootstrap")
    with pytest.raises(KafkaConnectionError):
        asyncio.run(kafka_io.produce(bad, "never-created", [(None, b"x")]))
    # one user's password is not another's
    with pytest.raises(KafkaAccessError, match="authentication failed"):
        asyncio.run(probe(secure.settings("analyst", USERS["settler"])))
    with pytest.raises(KafkaAccessError, match="authentication failed"):
        asyncio.run(probe(secure.settings("analyst", USERS["analyst"].upper())))


def test_unknown_user_is_refused(secure: SecuredKafka) -> None:
    mallory = Settings(bootstrap_servers=secure.secure_bootstrap, kafka_security_protocol="SASL_SSL",
                       kafka_sasl_username="mallory", kafka_sasl_password=SecretStr("guess"),
                       kafka_ssl_cafile=secure.ca_cert)
    with pytest.raises(KafkaAccessError, match=r"authentication failed.*as mallory"):
        asyncio.run(probe(mallory))


def test_cli_check_says_why_without_the_password(secure: SecuredKafka,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    good = secure.settings("settler")
    for k, v in {**security_env(good), "YIBAO_BOOTSTRAP_SERVERS": good.bootstrap_servers}.items():
        monkeypatch.setenv(k, v)
    ok = CliRunner().invoke(cli, ["kafka", "check"])
    assert ok.exit_code == 0 and "connected and authenticated" in ok.output, ok.output
    monkeypatch.setenv("YIBAO_KAFKA_SASL_PASSWORD", "wrong-pw-123")
    bad = CliRunner().invoke(cli, ["kafka", "check"])
    assert bad.exit_code == 1
    assert "authentication failed" in bad.output and "invalid credentials" in bad.output
    assert "wrong-pw-123" not in bad.output and USERS["settler"] not in bad.output


@pytest.mark.parametrize(
    ("protocol", "why"),
    [
        ("PLAINTEXT", "another security protocol than PLAINTEXT"),
        ("SASL_PLAINTEXT", "another security protocol than SASL_PLAINTEXT"),  # SASL without TLS
        ("SSL", "cannot connect"),  # TLS without SASL: the broker closes after the handshake
    ],
)
def test_clients_without_tls_or_without_sasl_are_refused(secure: SecuredKafka, protocol: str,
                                                         why: str) -> None:
    kw: dict[str, object] = {"bootstrap_servers": secure.secure_bootstrap,
                             "kafka_security_protocol": protocol}
    if protocol.startswith("SASL"):
        kw |= {"kafka_sasl_username": "settler", "kafka_sasl_password": USERS["settler"]}
    if protocol in ("SSL", "SASL_SSL"):
        kw["kafka_ssl_cafile"] = secure.ca_cert
    s = Settings(**kw)  # type: ignore[arg-type]
    with pytest.raises(KafkaAccessError, match=why):
        asyncio.run(probe(s, timeout=5))
    with pytest.raises(KafkaConnectionError):
        asyncio.run(kafka_io.produce(s, "never-created", [(None, b"x")], request_timeout_ms=5000))


def test_a_broker_certificate_from_another_ca_is_refused(secure: SecuredKafka) -> None:
    # the system trust store doesn't know the test CA
    s = Settings(bootstrap_servers=secure.secure_bootstrap, kafka_security_protocol="SASL_SSL",
                 kafka_sasl_username="settler", kafka_sasl_password=SecretStr(USERS["settler"]))
    with pytest.raises(KafkaAccessError, match=r"TLS handshake .* failed.*(?i:certificate.verify.failed)"):
        asyncio.run(probe(s))


@pytest.mark.timeout(150)
def test_live_pipeline_runs_over_sasl_ssl(secure: SecuredKafka, tmp_path: Path) -> None:
    """Worker (transactions, consumer groups, changelogs), publisher and export, all over
    SASL_SSL + SCRAM: the same settlements as file mode."""
    from test_pipeline_kafka import assert_same_outputs, lines_of, settle, wait_for

    from yibao.streams.publish import publish_lines
    from yibao.streams.topics import create_all
    from yibao.streams.worker import spawn, terminate

    s = secure.settings("settler", topic_prefix=unique_prefix(), partitions=2)
    lines = lines_of("worked")
    expected = settle(lines, tmp_path)
    asyncio.run(create_all(s))
    asyncio.run(publish_lines(s, lines))
    log = tmp_path / "worker.log"
    proc = spawn(s, worker_id="0", log_file=log, env={"YIBAO_MERGE_WAIT_MS": "300"})
    try:
        live = wait_for(s, len(expected), [proc], [log], timeout=90)
    finally:
        terminate(proc)
    assert_same_outputs(live, expected)
    text = log.read_text(errors="replace")
    assert USERS["settler"] not in text
    # Restored once and kept: no restore stalled past the session timeout (closing a TLS
    # connection can wait 30 s for the broker's close_notify, see yibao.streams.runtime.stop_later),
    # which made the group throw the worker out and assign everything again.
    assert text.count('"sequencer.assigned"') == 1, text[-3000:]
    assert "UnknownMemberId" not in text
