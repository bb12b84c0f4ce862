"""Fewer garbage collections while a run goes.

Why. CPython's cyclic collector looks at its youngest generation every 700 net allocations of container
objects (dicts, lists, tuples, coroutines, futures). A run makes dozens per request, and reference counting
frees nearly all of them the moment the request is done, so these collections find nothing. They are not
free, though: each one walks every young object, and every tenth also walks the older ones. Against the
zero-latency mock they took 50 to 60 us of CPU per request, a tenth of the run's CPU
(`benchmarks/overhead.py` prints each client's collection time beside its CPU).

So while a run goes, the youngest generation's threshold is raised to `RUN_THRESHOLD`, unless it is
already at least that or collection is switched off (0). The last run to end puts back what the first one
found, unless someone changed the threshold meanwhile.

Cost: what only the collector can free (reference cycles, which a run seldom makes) waits longer: at most
`RUN_THRESHOLD` container objects, a few MB. The threshold is process-wide; a program embedding the
processor that wants its own can set a threshold at or above `RUN_THRESHOLD`, or 0, and it is kept.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["RUN_THRESHOLD", "fewer_collections"]

#: Net container allocations between collections of the youngest generation while a run goes (CPython: 700).
RUN_THRESHOLD = 10_000

_lock = threading.Lock()  # runs may go in several threads (process_requests_sync makes a loop of its own)
_runs = 0
_found: tuple[int, ...] | None = None  # the thresholds the first run found, to put back; None if it left them
_set: tuple[int, ...] | None = None  # the thresholds the first run set


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """The youngest generation collected at most every `RUN_THRESHOLD` net allocations inside the block."""
    global _runs, _found, _set
    with _lock:
        if _runs == 0:
            found = gc.get_threshold()
            _found = _set = None
            if 0 < found[0] < RUN_THRESHOLD:
                _found, _set = found, (RUN_THRESHOLD, *found[1:])
                gc.set_threshold(*_set)
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0 and _found is not None and gc.get_threshold() == _set:
                gc.set_threshold(*_found)
