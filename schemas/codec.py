"""Bytes ⇄ events: one reused Decoder for the input union, one Encoder for outputs.

The fast path is a single ``Decoder.decode``. Only when that fails do we look closer: an
older ``schema_version`` is upcast (dict → dict, one version at a time) and decoded again,
so gateways can lag a version behind without the hot path paying for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from yibao.schemas.events import SCHEMA_VERSION, InputEvent, OutputEvent
from yibao.schemas.exceptions import SchemaError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: Upcasters shipped with the contract: version N → N+1. Version 1 is the first, so none yet.
DEFAULT_UPCASTERS: Mapping[int, Upcaster] = {}


class Codec:
    """Decode input events (validating them) and encode output events."""

    def __init__(self, upcasters: Mapping[int, Upcaster] | None = None) -> None:
        self._decoder = msgspec.json.Decoder(InputEvent)
        self._out_decoder = msgspec.json.Decoder(OutputEvent)
        self._encoder = msgspec.json.Encoder()
        self._upcasters = dict(DEFAULT_UPCASTERS if upcasters is None else upcasters)

    def decode(self, raw: bytes | str) -> InputEvent:
        """Decode and validate one input event; raise SchemaError naming the field."""
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            if isinstance(exc, msgspec.ValidationError):
                upcast = self._try_upcast(raw)
                if upcast is not None:
                    return upcast
            raise SchemaError(_describe(exc), _path(str(exc))) from None
        except UnicodeDecodeError as exc:  # msgspec raises it for bad UTF-8 inside a string
            raise SchemaError(f"not valid JSON: invalid UTF-8 ({exc.reason} at byte {exc.start})",
                              "$") from None
        except RecursionError:  # nesting thousands deep
            raise SchemaError("not valid JSON: nested too deeply", "$") from None

    def _try_upcast(self, raw: bytes | str) -> InputEvent | None:
        if not self._upcasters:
            return None
        try:
            obj = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        version = obj.get("schema_version")
        if type(version) is not int or version >= SCHEMA_VERSION:
            return None
        while version < SCHEMA_VERSION:
            step = self._upcasters.get(version)
            if step is None:
                raise SchemaError(
                    f"schema_version {version} has no upcaster to {version + 1}"
                    " - at `$.schema_version`",
                    "$.schema_version",
                )
            obj = step(dict(obj))
            version += 1
            obj["schema_version"] = version
        try:
            return self._decoder.decode(self._encoder.encode(obj))
        except msgspec.DecodeError as exc:
            raise SchemaError(
                f"after upcasting from an older schema_version: {_describe(exc)}", _path(str(exc))
            ) from None

    def encode(self, event: Any) -> bytes:
        return self._encoder.encode(event)

    def encode_into(self, event: Any, buffer: bytearray, offset: int = -1) -> None:
        self._encoder.encode_into(event, buffer, offset)

    def decode_output(self, raw: bytes | str) -> OutputEvent:
        try:
            return self._out_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise SchemaError(_describe(exc), _path(str(exc))) from None


def _path(message: str) -> str | None:
    marker = " - at `"
    i = message.rfind(marker)
    if i < 0:
        return "$"
    return message[i + len(marker) : -1]


def _describe(exc: msgspec.DecodeError) -> str:
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return f"not valid JSON: {text}"
    if " - at `" not in text:
        text = f"{text} - at `$`"
    return text
