"""Errors of the rules layer, under the project's one root error."""

from __future__ import annotations

from yibao.errors import YibaoError


class RulesError(YibaoError):
    """A rules-layer failure."""


class PolicyError(RulesError, ValueError):
    """A policy file or document that cannot be used; the message names the key and value."""


class CatalogError(RulesError, ValueError):
    """An audit catalog file that cannot be used; the message names the key and value."""
