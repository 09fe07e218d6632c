"""Keep freed memory in the process: fewer page faults for NumPy's temporary arrays.

Every op returns a new array, so one training step allocates and frees hundreds of arrays of
the same few sizes. glibc's malloc gives a large block straight back to the operating system
when it is freed (an `munmap`, or a trim of the heap's top), so the next step's array of the
same size is fresh memory again, and the first write to each 4 KiB page is a page fault: the
kernel zeroes tens of megabytes per step of even a small model, a sizeable share of the step's
time (benchmarks/RESULTS.md has the measured figures).

Raising two thresholds makes malloc keep those blocks and reuse them: blocks up to
`MMAP_THRESHOLD` come from the heap instead of their own mapping, and the heap's free top is
only returned to the system beyond `TRIM_THRESHOLD`. The cost: the process's resident memory
stays near its peak instead of shrinking between steps.

The setting is the whole process's, so importing `autograd` does not make it: a script that
trains or generates calls `keep_freed_memory()` once, at its start (train.py and chat.py do).
Set the environment variable DU_KEEP_MALLOC=1 to make that call leave malloc as it is. It does
nothing where malloc is not glibc's.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 512 * 1024 * 1024      # larger blocks still get their own mapping
TRIM_THRESHOLD = 1024 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameter numbers (malloc.h)

tuned = False


def keep_freed_memory() -> bool:
    """Raise malloc's mmap and trim thresholds for the rest of the process (once; later calls
    do nothing). True if glibc accepted them; False where malloc is not glibc's, and when
    DU_KEEP_MALLOC is set."""
    global tuned
    if tuned or os.environ.get("DU_KEEP_MALLOC") or not sys.platform.startswith("linux"):
        return tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc (musl, macOS, ...)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return tuned
