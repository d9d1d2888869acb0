"""One error root: every error class yibao defines derives from ``yibao.errors.YibaoError``,
mixed with the builtin it is, and lives in its package's ``exceptions.py``.

The test imports every module under ``yibao`` and fails on a ``class Foo(Exception)``
anywhere in it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import yibao
from yibao.errors import YibaoError

#: error classes known to live outside their package's ``exceptions.py`` (module, name), to be
#: moved; the test prints them and fails once one has moved, so the list only shrinks.
KNOWN_ELSEWHERE: frozenset[tuple[str, str]] = frozenset()

#: optional extras a module may need; a module failing to import for one of these is skipped
#: by name (printed), any other import failure fails the test.
OPTIONAL = frozenset({"faust"})


def _modules() -> tuple[list[ModuleType], list[str]]:
    modules: list[ModuleType] = [yibao]
    skipped: list[str] = []

    def onerror(name: str) -> None:
        raise ImportError(f"cannot walk {name}")

    for info in pkgutil.walk_packages(yibao.__path__, "yibao.", onerror=onerror):
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError as exc:
            if exc.name is None or exc.name.split(".")[0] not in OPTIONAL:
                raise
            skipped.append(f"{info.name} (needs {exc.name})")
    return modules, skipped


def _errors() -> list[type[BaseException]]:
    modules, skipped = _modules()
    for s in skipped:
        print(f"skipped, optional extra missing: {s}")
    found = {
        obj
        for mod in modules
        for obj in vars(mod).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
        and obj.__module__ == mod.__name__
    }
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


ERRORS = _errors()


def _builtins(cls: type[BaseException]) -> list[type[BaseException]]:
    """The builtin exceptions ``cls`` is, other than ``Exception``/``BaseException``."""
    return [b for b in cls.__mro__
            if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]


def test_the_walk_finds_the_package_errors() -> None:
    names = {c.__name__ for c in ERRORS}
    assert {"YibaoError", "SchemaError", "PolicyError", "StoreError", "KafkaSecurityError",
            "BrokerError", "RegionError"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_derives_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, YibaoError), f"{cls.__module__}.{cls.__qualname__} must derive from YibaoError"


@pytest.mark.parametrize("cls", [c for c in ERRORS if c is not YibaoError],
                         ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_concrete_error_is_also_its_builtin(cls: type[BaseException]) -> None:
    """A package's base error (one with subclasses) may be the root alone; an error code raises
    is also the builtin it is (ValueError, OSError...), so callers that know nothing of yibao
    catch it."""
    if any(issubclass(other, cls) for other in ERRORS if other is not cls):
        return
    assert _builtins(cls), f"{cls.__qualname__} must also derive from a builtin such as ValueError"


def test_errors_live_in_exceptions_modules() -> None:
    elsewhere = {(c.__module__, c.__qualname__) for c in ERRORS
                 if c.__module__ != "yibao.errors" and not c.__module__.endswith(".exceptions")}
    for module, name in sorted(elsewhere & KNOWN_ELSEWHERE):
        print(f"known, still to move to its package's exceptions.py: {module}.{name}")
    assert elsewhere - KNOWN_ELSEWHERE == set(), "define errors in the package's exceptions.py"
    assert KNOWN_ELSEWHERE - elsewhere == set(), "moved: remove it from KNOWN_ELSEWHERE"

