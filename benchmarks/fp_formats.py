"""Floating-point formats, HQQ and Hadamard rotation, measured in one run.

Run ``python benchmarks/fp_formats.py [--model tiny-llama] [--n-calib 16] [--n-chunks 80]``
(any decoder ``qviz.load`` knows, e.g. ``smollm2-135m`` once that loader exists;
``--kernels-only`` for part 1 alone). It prints:

1. kernel speed on a 4096 x 4096 float32 matrix, as a ratio to ``np.copyto``
   into a preallocated array (medians of interleaved repeats): FP8 scales,
   quantize (E4M3, E5M2) and dequantize; MXFP4 / MXFP6 / MXFP8 quantize, MXFP4 /
   MXFP8 dequantize; NVFP4 quantize and dequantize; and ``qviz.fake_quantize`` on a
   torch tensor (FP8, MXFP4: the whole API path, checks and conversions included);
2. the max/median channel ratio of the input of every linear layer of the
   model, original vs rotated (and after SmoothQuant's smoothing, alpha 0.5), and the
   full-precision output error of the rotated model (relative, float32);
3. mean KL to the full-precision model, perplexity change and same-top-1 on
   held-out text, and the mean per-layer output error, for:
   W4A4 naive / SmoothQuant / rotation / rotation + GPTQ (the QuaRot recipe);
   W8A8 INT8 vs FP8 E4M3 dynamic per-token vs static per-tensor;
   about 4.25-4.5 bits per weight: MXFP4, NVFP4, NF4, FP4, GGUF Q4_0, RTN g32 and g128 (g64 where
   128 does not divide every row, as on smollm2), HQQ g64;
   HQQ vs RTN at 4 and 3 bits (group 64, no calibration).

Layers a format cannot hold (a row length that is not a multiple of its block)
are left in full precision and listed. Nothing here is a fixed number: every
figure is measured when the script runs.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

N = 4096


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernels(repeats: int = 5) -> None:
    """Part 1: each kernel's median time over ``repeats`` runs, each run next to an ``np.copyto`` of the same array."""
    import numba
    import torch

    import kernels_numba.fp as kfp
    import qviz

    x = np.random.default_rng(0).standard_normal((N, N)).astype(np.float32)
    dst = np.empty_like(x)
    scale = kfp.fp_scales(x, "e4m3")
    fp8 = kfp.fp_quantize(x, scale, "e4m3")
    codes, exps = kfp.mx_quantize(x, "e2m1")
    codes8, exps8 = kfp.mx_quantize(x, "e4m3")
    nv_codes, nv_scales, nv_g = kfp.nvfp4_quantize(x)
    xt = torch.from_numpy(x)
    cases = {
        "FP8 e4m3 per-channel scales": lambda: kfp.fp_scales(x, "e4m3"),
        "FP8 e4m3 per-channel quantize": lambda: kfp.fp_quantize(x, scale, "e4m3"),
        "FP8 e5m2 per-channel quantize": lambda: kfp.fp_quantize(x, kfp.fp_scales(x, "e5m2"), "e5m2"),
        "FP8 e4m3 per-channel dequantize": lambda: kfp.fp_dequantize(fp8, scale, "e4m3"),
        "MXFP4 quantize": lambda: kfp.mx_quantize(x, "e2m1"),
        "MXFP6 e2m3 quantize": lambda: kfp.mx_quantize(x, "e2m3"),
        "MXFP8 quantize": lambda: kfp.mx_quantize(x, "e4m3"),
        "MXFP4 dequantize": lambda: kfp.mx_dequantize(codes, exps, "e2m1"),
        "MXFP8 dequantize": lambda: kfp.mx_dequantize(codes8, exps8, "e4m3"),
        "NVFP4 quantize": lambda: kfp.nvfp4_quantize(x),
        "NVFP4 dequantize": lambda: kfp.nvfp4_dequantize(nv_codes, nv_scales, nv_g),
        "qviz.fake_quantize(torch, FP8)": lambda: qviz.fake_quantize(xt, qviz.FP8()),
        "qviz.fake_quantize(torch, MXFP4)": lambda: qviz.fake_quantize(xt, qviz.MXFP4()),
    }
    for fn in cases.values():  # compile / warm
        fn()
    print(f"\n1. kernels on a {N} x {N} float32 matrix (ratio to np.copyto into a preallocated array, one thread; "
          f"kernels on {numba.get_num_threads()} Numba threads, each allocating its output; medians of {repeats} "
          "interleaved runs)")
    for name, fn in cases.items():
        copies, runs = [], []
        for _ in range(repeats):
            copies.append(_median_time(lambda: np.copyto(dst, x), 1))
            runs.append(_median_time(fn, 1))
        c, r = statistics.median(copies), statistics.median(runs)
        print(f"   {name:34s} {r * 1e3:8.1f} ms  = {r / c:6.1f} x copy ({c * 1e3:.1f} ms)", flush=True)


def _linear_names(model) -> list[str]:
    from qviz.models import layer_type, quantizable_layers

    return [n for n, m in quantizable_layers(model).items() if layer_type(m) == "linear"]


def outliers(model, calib) -> None:
    """Part 2: :mod:`rotation_outliers`' table and output error (one implementation of both)."""
    import rotation_outliers as ro

    print(f"\n2. max/median channel absmax of each linear layer's input ({model.name})", flush=True)
    r = ro.ratios(model, calib)
    ro.print_ratios(r)
    ro.output_error(model, r["rotated"], calib, n_heldout=4)


def _one_pass(cfg):
    """``cfg`` with every layer's calibration inputs captured once from the unquantized model (``qviz.PerLayer``).

    qviz's GPTQ alone is sequential: one full calibration pass per linear layer (211 on smollm2), hours on 2 cores.
    """
    import qviz

    return qviz.PerLayer({"*": cfg}, default=cfg)


def _skips(model, cfg) -> list[str]:
    """Layers whose row length the config's block or group does not divide."""
    from qviz.models import weight_matrix

    group = getattr(cfg, "group_size", None)
    if not isinstance(group, int):
        return []
    root = model.module
    return [n for n in _linear_names(model) if weight_matrix(root.get_submodule(n)).shape[1] % group]


def quality(model, calib, n_chunks: int, groups: dict[str, list]) -> None:
    import _decoder_rows as rows

    ref = rows.reference(model, n_chunks)
    base = rows.reference_row(model, ref)
    from qviz.models.gguf import reference_note

    print(f"\n3. quality on {base['n_scored_tokens']:,} held-out tokens of {model.name} ({n_chunks} chunks of 256, second "
          f"halves scored; {reference_note(model)}; {calib['input_ids'].shape[0]} calibration chunks)")
    print(f"   {rows.HEAD}")
    print(f"   {rows.line(base)}", flush=True)
    done: dict[str, str] = {}  # label -> printed line (a config in two groups is measured once)
    for title, cfgs in groups.items():
        print(f"   -- {title}", flush=True)
        for cfg in cfgs:
            if cfg.label in done:
                print(f"   {done[cfg.label]}  (measured above)", flush=True)
                continue
            skip = _skips(model, cfg)
            try:
                r = rows.evaluate(model, cfg, ref, calib=calib, skip=skip)
            except Exception as err:  # noqa: BLE001  (e.g. no layer whose row the group divides): report, go on
                print(f"   {cfg.label:40s} not run: {type(err).__name__}: {err}", flush=True)
                continue
            note = f"  (full precision: {len(skip)} layers whose rows {cfg.group_size} does not divide)" if skip else ""
            done[cfg.label] = rows.line(r) + note
            print(f"   {done[cfg.label]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama", help="a decoder qviz.load knows (default tiny-llama)")
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--n-chunks", type=int, default=80, help="held-out chunks of 256 tokens (127 scored each)")
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--only", choices=("outliers", "w4a4", "w8a8", "4bit", "hqq"), action="append",
                    help="run only these parts of 2-3 (repeatable)")
    args = ap.parse_args()
    if not args.no_kernels:
        kernels()
    if args.kernels_only:
        return
    import qviz

    import _decoder_rows

    model = _decoder_rows.on_device(qviz.load(args.model))
    if model.kind != "decoder":
        raise SystemExit(f"{args.model} is a {model.kind}; this benchmark needs a decoder (tiny-llama, smollm2-135m).")
    calib = qviz.calibration_data(model, n=args.n_calib)
    only = set(args.only or ("outliers", "w4a4", "w8a8", "4bit", "hqq"))
    if "outliers" in only:
        outliers(model, calib)
    from qviz.models import weight_matrix

    root = model.module
    # groups of 128 where every row takes them; smollm2's 576-wide rows (4.5 x 128) take 64
    wide = 128 if all(weight_matrix(root.get_submodule(n)).shape[1] % 128 == 0 for n in _linear_names(model)) else 64
    w4a4 = qviz.RTN(bits=4, group_size=None, symmetric=True, act_bits=4)
    groups = {
        "w4a4": ("W4A4 (per-channel weights, per-token activations)", [
            w4a4, qviz.SmoothQuant(alpha=0.5, w_bits=4, a_bits=4, act_scheme="per-token"),
            qviz.Rotated(w4a4), qviz.Rotated(_one_pass(qviz.GPTQ(bits=4, group_size=None, symmetric=True)), act_bits=4)]),
        "w8a8": ("W8A8", [
            qviz.RTN(bits=8, group_size=None, symmetric=True, act_bits=8), qviz.FP8(act_bits=8),
            qviz.FP8(act_bits=8, act_scheme="per-tensor", act_static=True)]),
        "4bit": ("about 4.25-4.5 bits per weight", [
            qviz.MXFP4(), qviz.NVFP4(), qviz.BnbNF4(blocksize=64), qviz.BnbFP4(blocksize=64),
            qviz.GGUF("Q4_0", pure=True), qviz.RTN(bits=4, group_size=32), qviz.RTN(bits=4, group_size=wide),
            qviz.HQQ(bits=4, group_size=64)]),
        "hqq": ("HQQ vs RTN, no calibration", [
            qviz.RTN(bits=4, group_size=64), qviz.HQQ(bits=4, group_size=64),
            qviz.RTN(bits=3, group_size=64), qviz.HQQ(bits=3, group_size=64)]),
    }
    chosen = {title: cfgs for key, (title, cfgs) in groups.items() if key in only}
    if chosen:
        quality(model, calib, args.n_chunks, chosen)


if __name__ == "__main__":
    main()
