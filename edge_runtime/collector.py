"""Keep what the keyboard holds for good out of the cyclic garbage collector's walks.

Why: a full collection walks every tracked container that is alive, and the keyboard holds
large, long-lived tables: the base n-gram (millions of entries) and the user's own words
(hundreds of thousands of histories for a mailbox). A full collection that walks them takes
tens of milliseconds (30 ms for the base n-gram; 29 ms for the words of 1,000 e-mails when they
were Counters, 11 ms as plain dicts) in the middle of whatever keystroke or idle step it falls
on. Frozen objects are still freed by reference counting when they are dropped (a wipe, a
rebuild, a new version), and dicts of atomic values added later are never tracked. The freeze
covers the whole process (the edge runtime's device loop shares it with the keyboard): an object
in a reference cycle that is alive at that moment and dropped later is never collected. Settles
are rare (a start, a wipe, a rebuild of the user's words), so what can leak is bounded by them.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


def settle() -> None:
    """Collect once, then move everything alive now out of the collector's reach (gc.freeze):
    called after a large table is built (`base_ngram`, the keyboard's user's words)."""
    gc.collect()
    gc.freeze()


def release_freed() -> None:
    """Hand the heap's freed memory back to the system (glibc's `malloc_trim`); nothing on a C
    library without it. A version's interpreter and its tensors are freed when a predictor or a
    training model is dropped, but glibc keeps the pages for reuse: a device that swaps versions
    and runs canary evaluations for half an hour holds 200 to 300 MB it no longer uses (one trim
    took such a process from 683 to 484 MB). Called after the device loop's training or evaluation and
    after the keyboard swaps its model; a trim takes about 10 ms."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):   # not glibc (musl, macOS)
        return None
