"""glibc heap tuning for the stages that stream tensors: freed blocks above 1 MiB go back to the OS.

    from tutorforge.heap import bound_heap
    bound_heap()   # before merge, export or verify reads its first tensor

`MALLOC_MMAP_THRESHOLD_=1048576 tutorforge train CONFIG` does the same from the environment (a
threshold already set there is left to rule). bench/heap.py measures both peaks.
"""
from __future__ import annotations

import os

MMAP_THRESHOLD = 1 << 20  # glibc M_MMAP_THRESHOLD: blocks above 1 MiB are mmap'd, and unmapped when freed


def bound_heap() -> bool:
    """Have glibc give every freed block above 1 MiB back to the OS at once. By default it raises
    its mmap threshold to the largest block freed so far (up to 32 MiB), after which freed weights
    and activations stay in the heap: RSS creeps with every layer read or step taken (bench/heap.py
    measures both). A threshold already set in the environment is left to rule. Returns whether it
    was set."""
    import ctypes

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return False
    return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # -3: M_MMAP_THRESHOLD (malloc.h)
