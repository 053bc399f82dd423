"""Math helpers for the Triton kernels: libdevice on the GPU, plain arithmetic under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` runs kernels with numpy, which has no libdevice; the stand-ins below
compute the same values there (numpy evaluates them unfused), so the kernels' logic can be
checked on a machine without a GPU. On a GPU the libdevice functions run.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if INTERPRETED:

    @triton.jit
    def rint(v):
        """Round half to even by the 1.5 * 2**(mantissa bits) trick."""
        if v.dtype == tl.float64:
            return (v + 6755399441055744.0) - 6755399441055744.0
        return (v + 12582912.0) - 12582912.0

    @triton.jit
    def log10(v):
        """log10 through log2 (the interpreter's stand-in; the GPU uses libdevice's log10f)."""
        return tl.log2(v) * 0.30102999566398120

else:
    from triton.language.extra import libdevice

    @triton.jit
    def rint(v):
        """Round half to even (``rint``), float32 or float64."""
        return libdevice.rint(v)

    @triton.jit
    def log10(v):
        """``log10f``, the function torch's CUDA ``log10`` calls."""
        return libdevice.log10(v)
