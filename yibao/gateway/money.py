"""Yuan in the dialects, fen inside: exact both ways (``Decimal``, never a float), because a
fen lost to binary rounding is a fen the fund and the patient disagree on."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from yibao.gateway.exceptions import Invalid


def fen_of_yuan(value: Any, path: str) -> int:
    """A yuan amount (a JSON number read as ``Decimal``, an int, or a numeric string) in fen;
    refused when it is not a whole number of fen."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise Invalid(f"{path} must be an amount in yuan", path=path)
    try:
        amount = Decimal(value)
        whole = amount == amount.quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        raise Invalid(f"{path} must be an amount in yuan, not {value!r}", path=path) from None
    if not whole:
        raise Invalid(f"{path} {value} has more than two decimals (yuan to the fen)", path=path)
    return int(amount * 100)


def yuan_of_fen(fen: int) -> Decimal:
    """Fen as yuan with exactly two decimals (``Decimal(97750).scaleb(-2)`` is ``977.50``)."""
    return Decimal(fen).scaleb(-2)
