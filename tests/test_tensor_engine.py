"""The engine around the chain rule: the rule for inputs that need no gradient, where leaf
gradients go, the op hook and the profiler on it, and no process-wide change on import."""
import ctypes
import os
import platform
import subprocess
import sys
import textwrap

import pytest

# Prints how many bytes of mmapped memory a fresh 64 MB array took: all of it with glibc's
# default thresholds, none once keep_freed_memory() has raised them.
MALLOC_CHILD = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    import autograd, bpe, gpt
    from autograd.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                    "keepcost".split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tune":
        keep_freed_memory()
    before = libc.mallinfo2().hblkhd
    block = np.empty(64 << 20, np.uint8)
    print(libc.mallinfo2().hblkhd - before)
""")


def mmapped_bytes_of_a_64mb_array(mode: str, opt_out: bool = False) -> int:
    env = {k: v for k, v in os.environ.items() if k != "DU_KEEP_MALLOC"}
    if opt_out:
        env["DU_KEEP_MALLOC"] = "1"
    done = subprocess.run([sys.executable, "-c", MALLOC_CHILD, mode], capture_output=True,
                          text=True, env=env, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or
                    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_malloc_is_tuned_only_by_the_explicit_call():
    assert mmapped_bytes_of_a_64mb_array("import only") >= 64 << 20
    assert mmapped_bytes_of_a_64mb_array("tune") == 0
    assert mmapped_bytes_of_a_64mb_array("tune", opt_out=True) >= 64 << 20
