"""Output arrays for the parallel (``prange``) kernels, with their pages mapped before the threads start."""

from __future__ import annotations

import mmap

import numpy as np


def empty_mapped(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` with one byte of every memory page written by the calling thread.

    A fresh large array is mapped lazily: the first write to each page faults.
    When the threads of a ``prange`` kernel take those faults at once they can
    cost more than the kernel itself. On the 2-core KVM guest of
    ``benchmarks/gguf_kernels.py``, the Q5_1 kernel took 4-5 ms on a buffer it had
    written before and 20-40 ms on a fresh one (right after gguf-py had freed its
    temporaries); with the pages touched here first, the touch and the kernel took
    5-6 ms together. On memory the allocator hands back already mapped, the touch
    costs microseconds. The contents are undefined, as with ``np.empty``.

    Examples
    --------
    >>> empty_mapped((4, 8), np.float32).shape
    (4, 8)
    """
    out = np.empty(shape, dtype)
    out.reshape(-1).view(np.uint8)[:: mmap.PAGESIZE] = 0
    return out
