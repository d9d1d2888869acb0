"""The one root of every error yibao raises on purpose.

Each package's ``exceptions.py`` derives from :class:`YibaoError` *and* from the builtin the
error really is (``ValueError`` for bad input, ``OSError`` for a store, ``ConnectionError`` for
a broker that refuses us), as ``eventsourcing/errors.py`` does: a caller may catch everything
yibao means with one class, and code that knows nothing of yibao still catches what it expects.
"""

from __future__ import annotations


class YibaoError(Exception):
    """Root of every error yibao raises on purpose; callers may catch this one."""
