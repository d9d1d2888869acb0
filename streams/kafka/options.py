"""The one place that turns :class:`~yibao.settings.Settings` into aiokafka client options.

Every ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / ``AIOKafkaAdminClient`` in yibao is built
with ``**client_options(settings)``: the bootstrap servers plus the security settings
(``YIBAO_KAFKA_SECURITY_PROTOCOL``, ``YIBAO_KAFKA_SASL_*``, ``YIBAO_KAFKA_SSL_*``).

    >>> client_options("127.0.0.1:9092")
    {'bootstrap_servers': '127.0.0.1:9092'}
    >>> client_options(Settings())["security_protocol"]
    'PLAINTEXT'

A plain ``"host:port"`` string (tests, tools that only know a bootstrap) means PLAINTEXT with
aiokafka's defaults. The TLS context is built once per distinct set of files and shared by
every client of the process. The SASL password leaves its ``SecretStr`` only here, into the
options dict handed to aiokafka; never log that dict (use :func:`describe`).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from yibao.settings import Settings
from yibao.streams.kafka.exceptions import KafkaAccessError, KafkaSecurityError

__all__ = [
    "KafkaAccessError",
    "KafkaSecurityError",
    "KafkaTarget",
    "bootstrap_of",
    "client_options",
    "describe",
    "probe",
    "security_env",
    "ssl_context",
]

KafkaTarget = Settings | str
"""Where a client connects: full settings, or just a PLAINTEXT bootstrap string."""


@functools.lru_cache(maxsize=8)
def _context(cafile: Path | None, certfile: Path | None, keyfile: Path | None,
             check_hostname: bool) -> ssl.SSLContext:
    for var, path in (("YIBAO_KAFKA_SSL_CAFILE", cafile), ("YIBAO_KAFKA_SSL_CERTFILE", certfile),
                      ("YIBAO_KAFKA_SSL_KEYFILE", keyfile)):
        if path is not None and not path.is_file():
            raise KafkaSecurityError(f"{var}={path}: no such file")
    try:
        context = create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    except ssl.SSLError as e:
        raise KafkaSecurityError(
            f"cannot load the TLS files (YIBAO_KAFKA_SSL_CAFILE={cafile}, "
            f"YIBAO_KAFKA_SSL_CERTFILE={certfile}, YIBAO_KAFKA_SSL_KEYFILE={keyfile}): {e}"
        ) from e
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname  # verify_mode stays CERT_REQUIRED either way
    return context


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context of ``settings`` (cached: one per distinct set of files)."""
    return _context(settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile,
                    settings.kafka_ssl_check_hostname)


def client_options(target: KafkaTarget) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: ``bootstrap_servers`` + security."""
    if isinstance(target, str):
        return {"bootstrap_servers": target}
    s = target
    protocol = s.kafka_security_protocol
    options: dict[str, Any] = {"bootstrap_servers": s.bootstrap_servers, "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(s)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert s.kafka_sasl_password is not None  # Settings validated it
        options["sasl_mechanism"] = s.kafka_sasl_mechanism
        options["sasl_plain_username"] = s.kafka_sasl_username
        options["sasl_plain_password"] = s.kafka_sasl_password.get_secret_value()
    return options


def bootstrap_of(target: KafkaTarget) -> str:
    return target if isinstance(target, str) else target.bootstrap_servers


def _how(target: KafkaTarget) -> str:
    if isinstance(target, str):
        return "(PLAINTEXT)"
    how: str = target.kafka_security_protocol
    if how.startswith("SASL_"):
        how += f" {target.kafka_sasl_mechanism} as {target.kafka_sasl_username}"
    return f"({how})"


def describe(target: KafkaTarget) -> str:
    """For logs and messages: where and how a client connects, without the password."""
    return f"{bootstrap_of(target)} {_how(target)}"


def security_env(settings: Settings) -> dict[str, str]:
    """The ``YIBAO_KAFKA_*`` security variables that rebuild ``settings``' client security in
    a subprocess (``yibao worker`` spawned by tests and benchmarks). Contains the password:
    pass it in a child's environment only, never print it."""
    s = settings
    env = {
        "YIBAO_KAFKA_SECURITY_PROTOCOL": s.kafka_security_protocol,
        "YIBAO_KAFKA_SASL_MECHANISM": s.kafka_sasl_mechanism,
        "YIBAO_KAFKA_SSL_CHECK_HOSTNAME": "true" if s.kafka_ssl_check_hostname else "false",
    }
    optional = {
        "YIBAO_KAFKA_SASL_USERNAME": s.kafka_sasl_username,
        "YIBAO_KAFKA_SASL_PASSWORD": s.kafka_sasl_password.get_secret_value()
        if s.kafka_sasl_password is not None else None,
        "YIBAO_KAFKA_SSL_CAFILE": s.kafka_ssl_cafile,
        "YIBAO_KAFKA_SSL_CERTFILE": s.kafka_ssl_certfile,
        "YIBAO_KAFKA_SSL_KEYFILE": s.kafka_ssl_keyfile,
    }
    # Unset ones as "" (read as unset), so a stray variable of the parent's doesn't leak in.
    env.update({k: "" if v is None else str(v) for k, v in optional.items()})
    return env


async def probe(target: KafkaTarget, timeout: float = 10.0) -> str:
    """Connect to each bootstrap server with the client security of ``target`` (TLS handshake
    and SASL authentication included) and return a one-line summary; raise
    :class:`KafkaAccessError` with the server's actual reason otherwise.

    aiokafka clients hide that reason behind "Unable to bootstrap from [...]" (it is only
    logged), so entry points call this to say *why* (wrong password, untrusted certificate,
    plaintext client on a TLS listener...)."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError
    from aiokafka.protocol.metadata import MetadataRequest

    options = client_options(target)
    servers = [s.strip() for s in str(options.pop("bootstrap_servers")).split(",") if s.strip()]
    how = _how(target)
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), request_timeout_ms=int(timeout * 1000), **options),
                timeout,
            )
            try:  # a request proves the listener serves us (an SSL-only client gets through
                # the handshake of a SASL_SSL listener, and is dropped at its first request)
                await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
            finally:
                conn.close()
        except SaslAuthenticationFailed as e:
            raise KafkaAccessError(
                f"authentication failed on {server} {how}: {e} — check YIBAO_KAFKA_SASL_USERNAME, "
                "YIBAO_KAFKA_SASL_PASSWORD and YIBAO_KAFKA_SASL_MECHANISM"
            ) from e
        except UnsupportedSaslMechanismError as e:
            raise KafkaAccessError(f"{server} does not accept {how}: {e}") from e
        except ssl.SSLError as e:
            raise KafkaAccessError(
                f"TLS handshake with {server} failed {how}: {e.reason or e} — check "
                "YIBAO_KAFKA_SSL_CAFILE (the CA that signed the broker's certificate) and that the "
                "broker's certificate names this host"
            ) from e
        except (TimeoutError, OSError, KafkaError) as e:
            hint = ""
            if "closed" in str(e) or isinstance(e, TimeoutError):
                hint = (" — the listener may expect another security protocol than "
                        f"{options.get('security_protocol', 'PLAINTEXT')} (YIBAO_KAFKA_SECURITY_PROTOCOL)")
            reason = str(e) or type(e).__name__
            raise KafkaAccessError(f"cannot connect to {server} {how}: {reason}{hint}") from e
    return f"connected and authenticated: {describe(target)}"
