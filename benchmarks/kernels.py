"""Benchmarks of the kernels_numba kernels on a 4096 x 4096 float32 matrix.

Run ``python benchmarks/kernels.py``. It reports

* JIT compile time, separately: the first call of each benchmarked kernel in a
  fresh process with the on-disk cache as it is (and whether it was hit), again
  once the cache is surely warm, and with an empty cache directory (a true cold
  compile; skip it with ``--no-cold``);
* ratios measured in this one run (medians of interleaved repeats, so that load
  from other processes hits both sides alike):

  (a) fused INT4 group-128 asymmetric fake-quant with error stats / ``np.copyto``
      into a preallocated array of the same size         (target <= 2.0)
  (b) the same math written as vectorised torch / ours    (target >= 4)
  (c) bitsandbytes CPU quantize_4bit + dequantize_4bit (nf4, blocksize 64)
      / our quantize_4bit + dequantize_4bit               (target >= 3)
  (d) torch float32 ``x @ W.T`` at batch 1 / our packed INT4 GEMV (target >= 2)

Exit status is 0 whether or not targets are met; the summary says which were.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

ROWS = COLS = 4096
GROUP = 128


# ----------------------------------------------------------------------------- JIT timing


def _probe() -> None:
    """In a fresh process: time the first call of each benchmarked kernel; print JSON."""
    t0 = time.perf_counter()
    import kernels_numba as kn
    from numba.core.dispatcher import Dispatcher

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:  # start Numba's thread pool now, so that it is not billed to the first kernel
        from numba.np.ufunc.parallel import _launch_threads

        _launch_threads()
    except ImportError:
        pass
    t_pool = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    calls = {
        "fake_quantize": lambda: kn.fake_quantize(x, 4, GROUP),
        "quantize_4bit": lambda: kn.quantize_4bit(x, 64, "nf4"),
        "dequantize_4bit": lambda: kn.dequantize_4bit(*kn.quantize_4bit(x, 64, "nf4"), 64, "nf4"),
        "pack": lambda: kn.pack(np.zeros((8, 256), np.uint8), 4),
        "gemv_int4": lambda: kn.gemv_int4(np.zeros((8, 128), np.uint8), np.ones((8, 2), np.float32),
                                          np.zeros((8, 2), np.uint8), x[0], GROUP),
    }
    times = {}
    for name, fn in calls.items():
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
    hits = misses = 0
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("kernels_numba"):
            for obj in vars(mod).values():
                if isinstance(obj, Dispatcher):
                    hits += sum(obj.stats.cache_hits.values())
                    misses += sum(obj.stats.cache_misses.values())
    print(json.dumps({"import_s": t_import, "pool_s": t_pool, "first_call_s": times, "hits": hits,
                      "misses": misses}))


def _run_probe(env_extra: dict[str, str] | None = None) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    out = subprocess.run([sys.executable, __file__, "--probe"], env=env, check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _describe_probe(label: str, p: dict) -> str:
    total = sum(p["first_call_s"].values())
    state = ("cache hit" if p["misses"] == 0 else
             "cache MISS: compiled" if p["hits"] == 0 else "partly cached")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in p["first_call_s"].items())
    return (f"  {label:<34s} first calls {total:7.2f} s  [{state}: {p['hits']} loaded, "
            f"{p['misses']} compiled]\n      ({parts}; import {p['import_s']:.2f} s, "
            f"thread-pool start {p['pool_s']:.2f} s)")


# ----------------------------------------------------------------------------- baselines


def torch_fake_quantize(w, bits: int, group_size: int):
    """The same math as kernels_numba.fake_quantize (asymmetric), vectorised in torch."""
    import torch

    rows, cols = w.shape
    qmax = 2**bits - 1
    x = w.view(rows, cols // group_size, group_size)  # [rows, n_groups, group]
    lo = x.amin(-1, keepdim=True).clamp(max=0).double()
    hi = x.amax(-1, keepdim=True).clamp(min=0).double()
    scale64 = (hi - lo) / qmax
    scale = scale64.to(torch.float16).double()  # float16-exact scales
    scale = torch.where(scale64 == 0, torch.ones_like(scale), scale)
    scale = torch.where(scale == 0, torch.full_like(scale, 2.0**-24), scale)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    s32, z32 = scale.float(), zero.float()
    q = (torch.round(x * (1.0 / s32)) + z32).clamp(0, qmax)
    x_hat = (q - z32) * s32
    d = x_hat.double() - x.double()
    sse = (d * d).sum().item()
    signal = (x.double() ** 2).sum().item()
    max_err = d.abs().max().item()
    return x_hat.view(rows, cols), (sse, signal, max_err)


# ----------------------------------------------------------------------------- timing


def interleaved(fns: dict, repeats: int, clock=time.perf_counter) -> dict:
    """Seconds of each call, the functions called in turn each repeat, after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    return times


def timed(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Wall-clock medians and minima (default threads), and CPU-time medians (one thread each).

    The last is a cross-check that other processes on the machine barely disturb: with one
    thread per side, the CPU time a call uses is its work, whatever the load.
    """
    import numba
    import torch

    wall = interleaved(fns, repeats)
    nb, nt = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        cpu = interleaved(fns, max(3, repeats // 2), clock=time.process_time)
    finally:
        numba.set_num_threads(nb)
        torch.set_num_threads(nt)
    med = {k: float(np.median(v)) for k, v in wall.items()}
    best = {k: float(np.min(v)) for k, v in wall.items()}
    return med, best, {k: float(np.median(v)) for k, v in cpu.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-cold", action="store_true", help="skip the empty-cache compile timing")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    if args.probe:
        _probe()
        return

    import numba
    import torch

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"numba {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")

    print("\nJIT compile time (first call of each benchmarked kernel in a fresh process; the first "
          "one also pays\nNumba's one-time code-generator start, about a second even on a cache hit)")
    print(_describe_probe("on-disk cache as found:", _run_probe()))
    print(_describe_probe("on-disk cache warm:", _run_probe()))
    if not args.no_cold:
        with tempfile.TemporaryDirectory() as tmp:
            print(_describe_probe("empty cache dir (cold compile):", _run_probe({"NUMBA_CACHE_DIR": tmp})))

    import kernels_numba as kn

    rng = np.random.default_rng(0)
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32)  # [rows, cols]
    x = rng.standard_normal(COLS).astype(np.float32)  # [cols]
    out = np.empty_like(w)
    out2 = np.empty_like(w)
    wt, xt = torch.from_numpy(w), torch.from_numpy(x)

    results = []  # (label, ours_s, base_s, ratio, target, higher_is_better, best, cpu1, note)

    # (a) and (b): fused fake-quant
    t, b, c = timed({
        "ours": lambda: kn.fake_quantize(w, 4, GROUP, False, out=out),
        "copyto": lambda: np.copyto(out2, w),
        "torch": lambda: torch_fake_quantize(wt, 4, GROUP),
    }, args.repeats)
    x_hat, st = kn.fake_quantize(w, 4, GROUP)
    t_hat, (t_sse, _, _) = torch_fake_quantize(wt, 4, GROUP)
    n_diff = int(np.count_nonzero(t_hat.numpy() != x_hat))
    results.append(("(a) INT4 g128 fake-quant+stats / np.copyto", t["ours"], t["copyto"],
                    t["ours"] / t["copyto"], 2.0, False, b["ours"] / b["copyto"], c["ours"] / c["copyto"], ""))
    results.append(("(b) torch vectorised same math / ours", t["ours"], t["torch"],
                    t["torch"] / t["ours"], 4.0, True, b["torch"] / b["ours"], c["torch"] / c["ours"],
                    f"x_hat differs in {n_diff} of {w.size} values; sse {st.sse:.6g} vs {t_sse:.6g}"))

    # (c) NF4 against bitsandbytes
    note = "bitsandbytes not installed"
    try:
        import bitsandbytes.functional as F

        def bnb():
            q, s = F.quantize_4bit(wt, blocksize=64, quant_type="nf4")
            return F.dequantize_4bit(q, s)

        def ours4():
            c, a = kn.quantize_4bit(w, 64, "nf4")
            return kn.dequantize_4bit(c, a, 64, "nf4")

        t, b, c = timed({"ours": ours4, "bnb": bnb}, max(3, args.repeats // 3))
        same = np.array_equal(bnb().numpy(), ours4())
        results.append(("(c) bnb nf4 quant+dequant / ours", t["ours"], t["bnb"], t["bnb"] / t["ours"],
                        3.0, True, b["bnb"] / b["ours"], c["bnb"] / c["ours"], f"bit-identical to bitsandbytes: {same}"))
    except ImportError:
        nan = float("nan")
        results.append(("(c) bnb nf4 quant+dequant / ours", nan, nan, nan, 3.0, True, nan, nan, note))

    # (d) batch-1 GEMV
    codes, qp, _ = kn.quantize_with_stats(w, 4, GROUP)
    packed = kn.pack(codes, 4)  # [rows, cols // 2]
    t, b, c = timed({
        "ours": lambda: kn.gemv_int4(packed, qp.scale, qp.zero, x, GROUP),
        "torch": lambda: xt @ wt.T,
    }, args.repeats * 2)
    y = kn.gemv_int4(packed, qp.scale, qp.zero, x, GROUP)
    ref = kn.dequantize(codes, *qp, 4) @ x
    err = float(np.abs(y - ref).max() / np.abs(ref).max())
    results.append(("(d) torch fp32 x@W.T / our INT4 GEMV", t["ours"], t["torch"], t["torch"] / t["ours"],
                    2.0, True, b["torch"] / b["ours"], c["torch"] / c["ours"], f"max rel. diff vs dequantize@x {err:.1e}; weight bytes "
                               f"{packed.nbytes + qp.scale.nbytes // 2 + qp.zero.nbytes} vs {w.nbytes}"))

    print(f"\nRatios on a {ROWS}x{COLS} float32 matrix: wall-clock medians of interleaved repeats, "
          f"default threads;\nPASS/MISS judges that median ratio. Context columns: best = ratio "
          f"of the fastest repeats (least\ndisturbed by other processes); cpu1 = ratio of CPU "
          f"time with one thread per side (load-independent work)")
    print(f"  {'':46s} {'ours ms':>9s} {'other ms':>9s} {'ratio':>7s}  {'target':8s}       "
          f"{'best':>6s} {'cpu1':>6s}")
    passed = 0
    for label, ours_s, base_s, ratio, target, higher, best, cpu1, note in results:
        ok = ratio >= target if higher else ratio <= target
        passed += bool(ok)
        sign = ">=" if higher else "<="
        print(f"  {label:46s} {ours_s * 1e3:9.2f} {base_s * 1e3:9.2f} {ratio:7.2f}  {sign} {target:<5g} "
              f"{'PASS' if ok else 'MISS'} {best:6.2f} {cpu1:6.2f}")
        if note:
            print(f"      {note}")
    print(f"\nsummary: {passed}/{len(results)} targets met; load average {os.getloadavg()[0]:.2f} at end "
          f"(other processes on this machine slow both sides of each ratio)")


if __name__ == "__main__":
    main()
