"""Python's cyclic garbage collector, set for workers that move batches of decoded events.

A batch of 5,000 events is a quarter of a million small dicts, lists and strings, none of
them in a reference cycle: reference counting frees them all. With CPython's default
thresholds (700, 10, 10) the collector still walks them again and again while they live,
and full collections walk every object the process holds; profiled with py-spy, that was a
quarter of the applier's time. :func:`tune_for_batches` moves what the process built at
start (modules, schemas, the codec) out of the collector's sight and collects less often;
cycles (an exception and its traceback, say) are still found, later.
"""

from __future__ import annotations

import gc

__all__ = ["tune_for_batches"]

#: Allocations between young collections, and collections between older ones: fourteen
#: times fewer young collections than the default, and ten times fewer full ones.
THRESHOLDS = (10_000, 20, 100)


def tune_for_batches() -> None:
    """Freeze the objects alive now and raise the collector's thresholds, for this process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
