"""Who may call the gateway: API keys bound to a role and facilities, stored hashed.

A key is 32 random bytes (URL-safe base64), shown once by ``yibao gateway add-client``; the
file keeps only its SHA-256. A key that long needs no slow hash: guessing it is hopeless,
and a leaked file gives no key back. Lookups are by hash, so there is no string compare of
secrets to time.

Roles (gateway.md, "Who may do what"): a ``hospital`` publishes ``care`` events for visits
at its own facilities and reads its own answers; the ``bureau`` publishes ``registrations``
and ``reviews`` and reads every answer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path
from typing import Literal

import msgspec

from yibao.gateway.exceptions import ClientFileError, Unauthorized

Role = Literal["hospital", "bureau"]

#: The input topics each role may publish to.
TOPICS_OF_ROLE: dict[str, frozenset[str]] = {
    "hospital": frozenset({"care"}),
    "bureau": frozenset({"registrations", "reviews"}),
}

KEY_PREFIX = "yb_"


class Client(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    client_id: str
    role: Role
    facilities: tuple[str, ...] = ()
    key_sha256: str

    def may_publish_to(self, topic: str) -> bool:
        return topic in TOPICS_OF_ROLE[self.role]

    def serves(self, facility_id: str | None) -> bool:
        """Whether this caller acts for ``facility_id`` (the bureau acts for all)."""
        return self.role == "bureau" or (facility_id is not None
                                         and facility_id in self.facilities)


class ClientFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    clients: list[Client] = []


_DECODER = msgspec.json.Decoder(ClientFile)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def load_clients(path: Path) -> list[Client]:
    """The clients of ``path`` (none if it does not exist); ClientFileError naming the
    entry if it is malformed."""
    if not path.exists():
        return []
    try:
        return _DECODER.decode(path.read_bytes()).clients
    except msgspec.DecodeError as exc:
        raise ClientFileError(f"{path}: {exc}") from None


def add_client(path: Path, client_id: str, role: Role, facilities: tuple[str, ...]) -> str:
    """Add a client and return its new key (the only time it exists in clear)."""
    if role == "hospital" and not facilities:
        raise ClientFileError("a hospital client needs at least one --facility")
    clients = load_clients(path)
    if any(c.client_id == client_id for c in clients):
        raise ClientFileError(f"client_id {client_id!r} exists already in {path}")
    key = new_key()
    clients.append(Client(client_id=client_id, role=role, facilities=facilities,
                          key_sha256=key_hash(key)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(ClientFile(clients=clients))))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return key


class Credentials:
    """The clients by key hash; reloaded when the file changes, so a client added while the
    gateway runs can call it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._by_hash: dict[str, Client] = {}
        self.reload()

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and self._by_hash:
            return
        self._by_hash = {c.key_sha256: c for c in load_clients(self.path)}
        self._mtime = mtime

    def authenticate(self, authorization: str | None) -> Client:
        """The caller of a request with this ``Authorization`` header; Unauthorized if none."""
        if not authorization:
            raise Unauthorized("no credential: send Authorization: Bearer <api key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <api key>'")
        client = self._by_hash.get(key_hash(token.strip()))
        if client is None:
            self.reload()
            client = self._by_hash.get(key_hash(token.strip()))
        if client is None:
            raise Unauthorized("unknown API key")
        return client
