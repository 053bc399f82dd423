"""Time qviz.compare on digits-cnn and minilm, print the tables, the 70B projection and per-token kernel timings.

Usage::

    python benchmarks/compare.py                 # everything
    python benchmarks/compare.py --only digits   # one model
    python benchmarks/compare.py --threads 1     # torch and Numba on one thread each
    python benchmarks/compare.py --no-methods    # leave out GPTQ / AWQ / SmoothQuant

Every number is measured in this run; ratios compare numbers from the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qviz  # noqa: E402
from qviz.evaluate.cost import gemv_benchmark  # noqa: E402
from qviz.evaluate.size import model_size, projection_table, serialized_size  # noqa: E402


def configs_for(model: qviz.QvizModel, methods: bool) -> list:
    """fp32 (implicit), BnbInt8, BnbNF4, RTN 8/4/3/2 and, with ``methods``, GPTQ, AWQ and SmoothQuant."""
    group = 128 if model.name == "minilm" else None  # digits-cnn rows (9, 144, 512, 64) do not divide by 128
    out = [
        qviz.BnbInt8(),
        qviz.BnbNF4(),
        qviz.RTN(bits=8, group_size=None),
        qviz.RTN(bits=4, group_size=group),
        qviz.RTN(bits=3, group_size=group),
        qviz.RTN(bits=2, group_size=group),
    ]
    if methods:
        # SmoothQuant at MiniLM's best alpha of the end-to-end sweep (benchmarks/methods_quality.py), with
        # static per-tensor activation scales calibrated once, as SmoothQuant deploys W8A8
        out += [qviz.GPTQ(bits=4, group_size=group), qviz.AWQ(bits=4, group_size=group),
                qviz.SmoothQuant(alpha=0.8, act_static=True)]
    return out


def show_cmp(cmp) -> None:
    cols = [c for c in ("accuracy", "agreement", "embedding_cosine", "size_bytes", "bits_per_weight", "serialized_bytes",
                        "latency_ms", "throughput", "usd_per_1m", "kernel_class", "quantize_seconds", "eval_seconds")
            if c in cmp]
    frame = cmp[cols].to_dataframe()
    if "size_bytes" in frame:
        frame["size_MB"] = frame.pop("size_bytes") / 1e6
    if "serialized_bytes" in frame:
        frame["safetensors_MB"] = frame.pop("serialized_bytes") / 1e6
    print(frame.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\nkernel per config:")
    for c in cmp.config.values:
        print(f"  {c}: {cmp.kernel.sel(config=c).item()}")
    asr = cmp.attack_success_rate
    for attack in asr.attack.values:
        print(f"\nattack success rate, {attack} (rows: config, columns: eps [{cmp.eps.attrs.get('units')}])")
        print(asr.sel(attack=attack).to_pandas().to_string(float_format=lambda v: f"{v:.2f}"))
    if "token_attack_success_rate" in cmp:
        for attack in cmp.token_attack.values:
            print(f"\n{attack} (columns: tokens substituted)")
            print(cmp.token_attack_success_rate.sel(token_attack=attack).to_pandas().to_string(float_format=lambda v: f"{v:.2f}"))
    amp = cmp.error_amplification
    print(f"\nerror amplification ‖Δactivation‖/‖Δinput‖ at eps={cmp.attrs.get('amplification_eps')}: "
          "mean over layers, last layer")
    for c in amp.config.values:
        v = amp.sel(config=c).values
        print(f"  {c:32s} mean {np.nanmean(v):8.3f}   last {v[-1]:8.3f}")
    print("\nroofline batch-1 decode tokens/s (weights read once per token) and fits-on:")
    print(cmp.roofline_tokens_per_s.to_pandas().to_string(float_format=lambda v: f"{v:.4g}"))


def size_check(model: qviz.QvizModel) -> None:
    print(f"\nsize accounting vs safetensors ({model.name}, packed / real storage):")
    for cfg in (qviz.RTN(bits=4, group_size=128 if model.name == "minilm" else None), qviz.RTN(bits=8, group_size=None),
                qviz.BnbInt8(), qviz.BnbNF4(), qviz.BnbNF4(double_quant=True)):
        q = qviz.quantize(model, cfg, progress=False, packed=True)
        rec = model_size(q)["total_bytes"]
        try:
            ser = serialized_size(q)
        except ValueError as err:
            print(f"  {cfg.label:22s} recorded {rec:>10d} B   not serialisable: {str(err)[:80]}...")
            continue
        print(f"  {cfg.label:22s} recorded {rec:>10d} B   safetensors file {ser['file_bytes']:>10d} B   "
              f"diff {100 * (ser['file_bytes'] - rec) / rec:+.3f}%   (tensor payload {100 * (ser['payload_bytes'] - rec) / rec:+.3f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["digits", "minilm", "none"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch and Numba threads (default: leave as is)")
    ap.add_argument("--no-methods", action="store_true", help="leave out GPTQ, AWQ and SmoothQuant")
    ap.add_argument("--out", default=None, help="folder for the cmp Datasets (.nc) and dashboards (.html)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.threads:
        import numba
        import torch

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    print("=== size of a 70B-weight model per format ===")
    t = projection_table(70e9)
    frame = t[["size_gb", "bits_per_weight", "overhead_bits", "overhead_gb"]].to_dataframe()
    frame["overhead"] = t.overhead.values
    print(frame.to_string(float_format=lambda v: f"{v:.4g}"))

    names = {"digits": ["digits-cnn"], "minilm": ["minilm"], "none": []}.get(args.only, ["digits-cnn", "minilm"])
    for name in names:
        t0 = time.perf_counter()
        model = qviz.load(name)
        t_load = time.perf_counter() - t0
        cfgs = configs_for(model, methods=not args.no_methods)
        print(f"\n=== qviz.compare on {name}: fp32 + {len(cfgs)} configs ===")
        t0 = time.perf_counter()
        cmp = qviz.compare(model, cfgs, progress=True)  # the bar goes to stderr
        t_cmp = time.perf_counter() - t0
        print(f"load {t_load:.1f} s; compare {t_cmp:.1f} s for {cmp.sizes['config']} configs "
              f"(torch threads {cmp.attrs['torch_threads']}, timings on {cmp.attrs['timing_threads']} thread(s))")
        t0 = time.perf_counter()
        fig = qviz.plot.dashboard(cmp)
        t_fig = time.perf_counter() - t0
        print(f"dashboard {t_fig:.2f} s ({len(fig.data)} traces); total {t_cmp + t_fig:.1f} s")
        show_cmp(cmp)
        size_check(model)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            qviz.save(cmp, out / f"cmp-{name}.nc")
            fig.write_html(out / f"dashboard-{name}.html", include_plotlyjs="cdn")

    print("\n=== one token at batch 1: matrix-vector product per kernel (best of 20, 1 thread each) ===")
    ds = gemv_benchmark(threads=1)
    print(ds.time_us.to_pandas().to_string(float_format=lambda v: f"{v:.1f}"))
    print("speed-up over torch fp32:")
    print(ds.speedup.to_pandas().to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
