"""Speed of qviz's GGUF quantizers on a 4096 x 4096 float32 matrix, beside gguf-py's numpy quantizer.

Run ``python benchmarks/gguf_kernels.py [--repeats 3]``. In one run, with the
Numba kernels compiled first (the compile is reported, not timed in the ratio):

* the five types gguf-py quantizes (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): gguf-py's
  ``gguf.quants.quantize`` time / qviz's ``quantize_gguf`` time, medians of
  interleaved repeats (target >= 10x); the bytes are checked to be identical;
* the K-quants and IQ4_NL (gguf-py cannot quantize them): qviz's time, and
  with ``--imatrix`` the importance-weighted searches too; where llama.cpp's
  ggml library is found (``QVIZ_LIBGGML=/path/to/libggml-base.so``, or the one
  llama-cpp-python ships), its C quantizer ``ggml_quantize_chunk`` (one thread)
  is timed too, for every type, with the ratio C time / qviz time and whether
  the bytes are identical;
* dequantization of every type: gguf-py / qviz.

Exit status is 0 whether or not the target is met; the summary says.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
OTHERS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL")


def _time(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _libggml():
    """llama.cpp's ggml library (ctypes), or None where none is found."""
    from kernels_numba.libggml import load_libggml

    return load_libggml()[0]


def _ggml_quantize(lib, x, name):
    from kernels_numba.gguf import GGUF_TYPES

    t = GGUF_TYPES[name]
    out = np.empty((x.shape[0], x.shape[1] // t.block * t.type_size), np.uint8)
    lib.ggml_quantize_chunk(t.ggml_type, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--imatrix", action="store_true", help="also time the importance-weighted K-quant searches")
    args = ap.parse_args()

    import gguf
    from gguf.quants import dequantize as g_deq
    from gguf.quants import quantize as g_q

    from kernels_numba.gguf import dequantize_gguf, quantize_gguf

    rng = np.random.default_rng(0)
    n = args.size
    x = (rng.standard_normal((n, n)) * 0.02).astype(np.float32)
    small = x[:8, :512].copy()
    t0 = time.perf_counter()
    for name in (*LEGACY, *OTHERS):
        dequantize_gguf(quantize_gguf(small, name), name, 512)
    print(f"JIT compile (or cache load) of every type: {time.perf_counter() - t0:.1f} s")
    print(f"matrix {n} x {n} float32, {args.repeats} interleaved repeats, medians\n")

    print(f"{'type':7s} {'gguf-py q':>10s} {'qviz q':>9s} {'ratio':>7s}  {'gguf-py dq':>10s} {'qviz dq':>8s} {'ratio':>6s}  same bytes")
    ratios = {}
    for name in LEGACY:
        qt = gguf.GGMLQuantizationType[name]
        tg, tq = [], []
        for _ in range(args.repeats):  # interleave, so other load hits both sides alike
            tg += _time(lambda: g_q(x, qt), 1)
            tq += _time(lambda: quantize_gguf(x, name), 1)
        ours, theirs = quantize_gguf(x, name), g_q(x, qt)
        dg = _time(lambda: g_deq(ours, qt), args.repeats)
        dq = _time(lambda: dequantize_gguf(ours, name, n), args.repeats)
        r = statistics.median(tg) / statistics.median(tq)
        ratios[name] = r
        print(f"{name:7s} {statistics.median(tg):9.3f}s {statistics.median(tq):8.3f}s {r:6.1f}x  "
              f"{statistics.median(dg):9.3f}s {statistics.median(dq):7.3f}s {statistics.median(dg) / statistics.median(dq):5.1f}x  "
              f"{np.array_equal(ours, theirs)}")
    print()
    qw = (rng.random(n) * 2).astype(np.float32)
    lib = _libggml()
    print("llama.cpp's C quantizer: " + ("not found (set QVIZ_LIBGGML)" if lib is None else "ggml_quantize_chunk, 1 thread"))
    for name in OTHERS:
        tq = statistics.median(_time(lambda: quantize_gguf(x, name), args.repeats))
        packed = quantize_gguf(x, name)
        qt = gguf.GGMLQuantizationType[name]
        dg = statistics.median(_time(lambda: g_deq(packed, qt), args.repeats))
        dq = statistics.median(_time(lambda: dequantize_gguf(packed, name, n), args.repeats))
        line = f"{name:7s} {'-':>10s} {tq:8.3f}s {'':7s}  {dg:9.3f}s {dq:7.3f}s {dg / dq:5.1f}x"
        if args.imatrix:
            ti = statistics.median(_time(lambda: quantize_gguf(x, name, qw), args.repeats))
            line += f"   with imatrix: {ti:.3f}s"
        if lib is not None:
            lib.ggml_quantize_init(gguf.GGMLQuantizationType[name].value)
            tc = statistics.median(_time(lambda: _ggml_quantize(lib, x, name), args.repeats))
            line += (f"   llama.cpp C {tc:.3f}s, C / qviz {tc / tq:.2f}x, "
                     f"same bytes {np.array_equal(_ggml_quantize(lib, x, name), packed)}")
        print(line)
    worst = min(ratios.values())
    if lib is not None:
        for name in LEGACY:
            tq = statistics.median(_time(lambda: quantize_gguf(x, name), args.repeats))
            tc = statistics.median(_time(lambda: _ggml_quantize(lib, x, name), args.repeats))
            print(f"{name:7s} llama.cpp C {tc:.3f}s, qviz {tq:.3f}s, C / qviz {tc / tq:.2f}x")
    print(f"\nsummary: qviz / gguf-py quantize speed-up, worst of the five shared types: {worst:.1f}x "
          f"(target >= 10x: {'met' if worst >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
