"""The cyclic garbage collector's policy for yibao's long folds: the live worker, a replay,
a what-if and a reconcile.

Settlement state (households, visits, claims, the dedup window) is long-lived and has no
reference cycles: reference counting frees what is dropped. The cyclic collector still
walks it, again and again, and the folds allocate so many short-lived objects that it runs
constantly. Two measures, each measured side by side in docs/benchmarks.md:

- a young generation of 10,000 objects instead of 700 (:data:`GC_THRESHOLDS`);
- everything alive moved out of the collector's generations now and then
  (:func:`keep_out_of_the_collector`, ``gc.freeze``), so the older generations only hold
  what is younger than the last freeze. Young objects are still collected.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: A checkout allocates hundreds of short-lived objects (decoded events, steps'
#: intermediates, outputs) that reference counting frees anyway; with the default (700) the
#: collector ran ~100 times a second in the worker, and every tenth young collection
#: promoted survivors that soon triggered a full one.
GC_THRESHOLDS = (10_000, 20, 100)


def keep_out_of_the_collector() -> None:
    """Move every object alive now out of the collector's generations (``gc.freeze``):
    frozen objects are still freed by reference counting, and no collection walks them."""
    gc.freeze()


@contextlib.contextmanager
def tuned_for_a_fold() -> Iterator[None]:
    """:data:`GC_THRESHOLDS` for the duration of a batch fold (a replay, a what-if, a
    reconcile), which calls :func:`keep_out_of_the_collector` as its state grows; afterwards
    the thresholds are restored and what was frozen is given back to the collector."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
