"""`yibao gateway serve` and `yibao gateway add-client`: the hospitals' HTTP front door."""

from __future__ import annotations

from pathlib import Path

import click

from yibao.settings import Settings, setting_option


@click.group()
def gateway() -> None:
    """The HTTP gateway (gateway.md): native API, credentials."""


@gateway.command("serve")
@setting_option("--host", setting="gateway_host")
@setting_option("--port", setting="gateway_port", type=click.IntRange(1, 65535))
@click.option("--access-log/--no-access-log", default=False,
              help="uvicorn's own access log (the gateway logs every request anyway).")
@click.pass_obj
def serve(settings: Settings, host: str, port: int, access_log: bool) -> None:
    """Serve the gateway (FastAPI on uvicorn) until SIGTERM/SIGINT. OpenAPI at /openapi.json,
    docs at /docs, metrics at /metrics, /healthz and /readyz."""
    import uvicorn

    from yibao.gateway import create_app

    uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log,
                log_config=None, http="httptools", loop="uvloop" if _has_uvloop() else "asyncio")


@gateway.command("add-client")
@click.option("--client-id", required=True, help="A name for the caller (shown in logs).")
@click.option("--role", type=click.Choice(["hospital", "bureau"]), required=True)
@click.option("--facility", "facilities", multiple=True,
              help="A facility_id the client acts for (repeat; a hospital needs one).")
@setting_option("--clients", "clients_path", setting="gateway_clients",
                type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def add_client(settings: Settings, client_id: str, role: str, facilities: tuple[str, ...],
               clients_path: Path) -> None:
    """Create a client and print its API key once (only its SHA-256 is stored)."""
    from yibao.gateway.credentials import add_client as add
    from yibao.gateway.exceptions import ClientFileError

    try:
        key = add(Path(clients_path), client_id, role, tuple(facilities))  # type: ignore[arg-type]
    except ClientFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key)
    click.echo(f"client {client_id} ({role}) added to {clients_path}; the key is shown once",
               err=True)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
