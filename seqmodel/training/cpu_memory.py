"""Keep freed CPU memory inside the process for reuse (glibc malloc).

glibc serves every allocation above its mmap threshold (32 MiB at most) with fresh pages from the
kernel and hands them back on free, so each large activation of a CPU training step is
page-faulted in again, one 4 KiB page at a time: at nanoGPT's default Shakespeare shape the
(B, H, T, T) attention weights are 100 MB each, and fresh pages made element-wise work on them 2-3x
slower. Switching off mmap for allocations and trimming keeps freed memory on the heap, as
PyTorch's CUDA caching allocator does on GPUs. The price: memory freed during the run stays
reserved by the process (glibc gives back only a free heap top above 2 GiB).
"""

from __future__ import annotations

import ctypes

TUNABLES = {"MMAP_MAX": (-4, 0), "TRIM_THRESHOLD": (-1, 2**31 - 1), "TOP_PAD": (-2, 64 * 2**20)}
"""glibc malloc tunable: (its mallopt parameter from malloc.h, the value set)."""
ENVIRONMENT = {f"MALLOC_{name}_": str(value) for name, (_, value) in TUNABLES.items()}
"""The same settings as glibc environment variables, for any other program (benchmarks/train_throughput.py)."""


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in TUNABLES.values())
