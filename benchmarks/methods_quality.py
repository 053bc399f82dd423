"""Quality of the outlier-aware methods against RTN, measured in one run (issue 5's "Must show").

Prints, for the embedded models:

1. ``minilm``, 64 calibration sentences, 4-bit and 3-bit, group 128: per-layer
   ``output_rel_err`` (``qviz.layer_error``) of GPTQ and AWQ against RTN, as win rates
   (share of layers where the method's error is lower), and the end-to-end cosine of the
   quantized model's embeddings to full precision on held-out sentences (``qviz.quantize``).
2. ``minilm`` W8A8 with per-tensor activations: SmoothQuant's alpha sweep against naive W8A8
   (the same quantizer without smoothing, and qviz.ActQuant through qviz.quantize).
3. ``digits-cnn`` at 2 and 3 bits: held-out accuracy of full precision, RTN and QAT, and the
   share of RTN's accuracy loss that QAT recovers.

Run:  python benchmarks/methods_quality.py [--parts gptq-awq smoothquant qat] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qviz  # noqa: E402
from qviz.quant.methods.smoothquant import end_to_end_quality, smoothquant_alpha_sweep  # noqa: E402


def _cosine(model, qmodel, data, ref=None):
    ref = model.outputs(data) if ref is None else ref
    return end_to_end_quality(ref, qmodel.outputs(data))["cosine"]


def gptq_awq(out: Path | None, n_calib: int, n_eval: int) -> None:
    model = qviz.load("minilm")
    calib = qviz.calibration_data(model, n=n_calib)
    held, _ = qviz.eval_data(model, n=n_eval)
    ref = model.outputs(held)
    print(f"\n== minilm: GPTQ and AWQ vs RTN, {n_calib} calibration sentences, {n_eval} held-out sentences ==")
    for bits in (4, 3):
        cfgs = [qviz.RTN(bits=bits, group_size=128), qviz.GPTQ(bits=bits, group_size=128),
                qviz.AWQ(bits=bits, group_size=128)]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GPTQ: fewer tokens than 1536 features on output.dense
            errors = qviz.layer_error(model, cfgs, calib)
        t_err = time.perf_counter() - t
        if out is not None:
            errors.to_netcdf(out / f"minilm_errors_w{bits}.nc")
        rel = errors.output_rel_err
        base = rel.sel(config=cfgs[0].label).values
        print(f"-- {bits}-bit, group 128 (layer_error {t_err:.0f} s, {rel.sizes['layer']} layers)")
        print("   median output_rel_err: " + ", ".join(
            f"{c.label} {np.nanmedian(rel.sel(config=c.label).values):.4g}" for c in cfgs))
        for c in cfgs[1:]:
            r = rel.sel(config=c.label).values
            wins = int(np.sum(r < base))
            print(f"   {c.label}: lower output_rel_err than RTN on {wins}/{len(r)} layers ({100 * wins / len(r):.0f}%),"
                  f" median ratio to RTN {np.median(r / base):.3f}")
        cos = {}
        for c in cfgs:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = qviz.quantize(model, c, calib=calib, progress=False)
            cos[c.label] = _cosine(model, q, held, ref)
            print(f"   end-to-end {c.label}: mean cosine to fp32 on held-out = {cos[c.label]:.5f} "
                  f"(1 - cos = {1 - cos[c.label]:.2e}; quantize {time.perf_counter() - t:.0f} s)")


def smoothquant(out: Path | None, n_calib: int, n_eval: int) -> None:
    model = qviz.load("minilm")
    calib = qviz.calibration_data(model, n=n_calib)
    held, _ = qviz.eval_data(model, n=n_eval)
    print("\n== minilm: SmoothQuant W8A8 (per-channel int8 weights, per-tensor int8 activations) ==")
    runs = [
        ("static per-tensor activation scales (calibrated), batches of 16", True, 16,
         [round(a, 2) for a in np.arange(0.0, 1.01, 0.1)]),
        ("dynamic per-tensor activation scales, one sentence per forward", False, 1, [0.5, 0.6, 0.7, 0.8, 0.9]),
    ]
    for what, static, bs, alphas in runs:
        t = time.perf_counter()
        ds = smoothquant_alpha_sweep(model, calib, alphas, held, act_scheme="per-tensor", act_static=static,
                                     batch_size=bs)
        if out is not None:
            ds.to_netcdf(out / f"minilm_smoothquant_sweep_{'static' if static else 'dynamic'}.nc")
        print(f"-- {what} ({time.perf_counter() - t:.0f} s; {ds.attrs['n_folded']} of {ds.attrs['n_layers']} "
              "layers folded into a norm, the rest keep an explicit input scale)")
        for a, c in zip(ds.alpha.values, ds.cosine.values, strict=True):
            print(f"     alpha {a:.1f}: cosine {c:.5f}  (1 - cos {1 - c:.2e})")
        best = int(np.argmax(ds.cosine.values))
        print(f"   naive W8A8, same quantizer without smoothing: cosine {float(ds.naive_cosine):.5f} "
              f"(1 - cos {1 - float(ds.naive_cosine):.2e}); best alpha {ds.alpha.values[best]:.1f} has "
              f"{(1 - float(ds.naive_cosine)) / max(1 - ds.cosine.values[best], 1e-12):.1f}x lower 1 - cos")
    ref1 = model.outputs(held, batch_size=1)
    for cfg in (qviz.ActQuant(8, "per-tensor"), qviz.SmoothQuant(alpha=0.8)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qviz.quantize(model, cfg, calib=calib, progress=False)
        c1 = end_to_end_quality(ref1, q.outputs(held, batch_size=1))["cosine"]
        print(f"   {cfg.label} through qviz.quantize, one sentence per forward: cosine {c1:.5f}")


def qat(out: Path | None, steps: int) -> None:
    model = qviz.load("digits-cnn")
    calib = qviz.calibration_data(model, n=1024)
    x, y = qviz.eval_data(model)

    def acc(m):
        return float((m.outputs(x).argmax(-1) == y).float().mean())

    fp = acc(model)
    print(f"\n== digits-cnn: QAT ({steps} steps, distillation on 1024 training images) vs RTN, per channel ==")
    print(f"   fp32 held-out accuracy {fp:.4f} ({len(y)} images)")
    for bits in (2, 3):
        rtn = acc(qviz.quantize(model, qviz.RTN(bits=bits, group_size=None), progress=False))
        t = time.perf_counter()
        q = qviz.quantize(model, qviz.QAT(bits=bits, steps=steps, lr=1e-3, batch_size=64), calib=calib,
                          progress=False)
        qa = acc(q)
        lost = fp - rtn
        rec = (qa - rtn) / lost if lost > 0 else float("nan")
        print(f"   {bits}-bit: RTN {rtn:.4f} (loses {lost:.4f}), QAT {qa:.4f}: recovers {100 * rec:.0f}% of the loss "
              f"({time.perf_counter() - t:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["gptq-awq", "smoothquant", "qat"],
                        choices=["gptq-awq", "smoothquant", "qat"])
    parser.add_argument("--calib", type=int, default=64, help="calibration sentences for minilm")
    parser.add_argument("--eval", type=int, default=256, help="held-out sentences for minilm")
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="folder for the result Datasets (.nc)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    t = time.perf_counter()
    if "gptq-awq" in args.parts:
        gptq_awq(args.out, args.calib, args.eval)
    if "smoothquant" in args.parts:
        smoothquant(args.out, args.calib, args.eval)
    if "qat" in args.parts:
        qat(args.out, args.qat_steps)
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
