"""Outlier channels of every linear layer's input before and after rotation (and SmoothQuant), and the rotated
model's full-precision output error, measured in one run.

Run ``python benchmarks/rotation_outliers.py [--model smollm2-135m] [--n-calib 16] [--n-heldout 4]``
(any Llama-family decoder ``qviz.load`` knows; ``--no-smooth`` skips SmoothQuant). It prints:

1. for every linear layer, the max/median channel ratio of its input (``outlier_ratio`` of
   :func:`qviz.capture`: the largest channel absmax over the median channel absmax, on the
   calibration tokens), for the original model, :func:`qviz.rotate`'s copy and SmoothQuant's
   smoothed copy (alpha 0.5, the OutlierExplorer's "after smoothing" view), with the reduction
   factor original / rotated; then the median reduction over all layers and per layer kind;
2. the full-precision output error of the rotated model:
   ``||logits_rot - logits||_F / ||logits||_F`` over every logit (all vocabulary entries of every
   position) of ``--n-heldout`` held-out chunks of 256 tokens (the text the perplexity tables
   score), in the model's own dtype (float32), and the same for the calibration chunks; beside it
   the float32 model's own error against its float64 copy on the calibration chunks (how far float32
   arithmetic alone moves these logits), and the bytes the rotation adds to the stored model.

SmoothQuant's row shows the input of a layer after smoothing only where the smoothing folds
into a preceding norm (q/k/v, gate/up); where nothing can absorb ``1/s`` (o_proj, down_proj)
the layer keeps an explicit input scale inside itself, so the input it receives is unchanged.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_names(model) -> list[str]:
    from qviz.models import layer_type, quantizable_layers

    return [n for n, m in quantizable_layers(model).items() if layer_type(m) == "linear"]


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def ratios(model, calib, smooth: bool = True) -> dict:
    """``{"names", "tokens", "rotated", "ratio": {stage: [layer] array}}``: the capture of each model's linear inputs."""
    import qviz
    from qviz.widgets.outliers import transformed_model

    names = linear_names(model)
    models = {"original": model, "rotated": qviz.rotate(model)}
    if smooth:
        models["smoothed"] = transformed_model(model, calib, "after smoothing", names)
    out = {"names": names, "rotated": models["rotated"], "ratio": {}}
    for stage, m in models.items():
        t0 = time.perf_counter()
        stats = qviz.capture(m, calib, layers=names, progress=False)
        out["ratio"][stage] = stats.outlier_ratio.sel(layer=names).values.astype(float)  # [layer]
        out["tokens"] = int(stats["count"].max()) if "count" in stats else None
        print(f"   captured {stage} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def print_ratios(r: dict) -> None:
    names, ratio = r["names"], r["ratio"]
    stages = list(ratio)
    red = ratio["original"] / ratio["rotated"]
    print(f"   {'layer':40s} " + " ".join(f"{s:>9s}" for s in stages) + f" {'orig/rot':>9s}"
          + (f" {'orig/smooth':>11s}" if "smoothed" in ratio else ""))
    for i, n in enumerate(names):
        row = " ".join(f"{ratio[s][i]:9.1f}" for s in stages)
        sm = f" {ratio['original'][i] / ratio['smoothed'][i]:10.1f}x" if "smoothed" in ratio else ""
        print(f"   {n:40s} {row} {red[i]:8.1f}x{sm}")
    print(f"\n   median over {len(names)} layers of the reduction factor (original ratio / transformed ratio):")
    print(f"   {'layers':12s} {'n':>4s} {'orig. median':>12s} {'orig. max':>9s} {'rot. max':>8s} {'by rotation':>11s}"
          + (f" {'by smoothing':>12s}" if "smoothed" in ratio else ""))
    groups = {"all": list(range(len(names)))}
    groups.update({k: [i for i, n in enumerate(names) if n.endswith(k)] for k in KINDS + ("lm_head",)})
    for label, idx in groups.items():
        if not idx:
            continue
        o, rt = ratio["original"][idx], ratio["rotated"][idx]
        line = (f"   {label:12s} {len(idx):4d} {np.median(o):12.1f} {o.max():9.1f} {rt.max():8.1f} "
                f"{np.median(o / rt):10.1f}x")
        if "smoothed" in ratio:
            line += f" {np.median(o / ratio['smoothed'][idx]):11.1f}x"
        print(line)
    big = red[ratio["original"] >= 50]
    print(f"   layers with an original ratio >= 50: {big.size}; their reductions by rotation: "
          + (", ".join(f"{v:.0f}x" for v in np.sort(big)[::-1]) if big.size else "none"))


def output_error(model, rot, calib, n_heldout: int) -> None:
    import torch

    from qviz.evaluate.accuracy import PerplexityTask
    from qviz.evaluate.size import serialized_size

    data = PerplexityTask(n=n_heldout, seq_len=256).data(model)
    held = model.prepare({k: v[:n_heldout] for k, v in data.items()} if isinstance(data, dict) else data[:n_heldout])
    cal = model.prepare(calib)
    dtype = next(model.module.parameters()).dtype
    with torch.no_grad():
        y, y_rot = model.run(held), rot.run(held)
        c, c_rot = model.run(cal), rot.run(cal)
        m64 = model.copy()
        m64.module.double()
        c64 = m64.run(cal)

    def tokens(batch) -> int:
        return int(batch["attention_mask"].sum()) if isinstance(batch, dict) and "attention_mask" in batch else -1

    print(f"   ||logits_rot - logits||_F / ||logits||_F over every logit, {dtype}:")
    print(f"     held-out    ({tokens(held):,} tokens x {y.shape[-1]:,} logits): {_rel(y_rot, y):.2e}")
    print(f"     calibration ({tokens(cal):,} tokens):                {_rel(c_rot, c):.2e}")
    per_token = ((c_rot.double() - c.double()).norm(dim=-1) / c.double().norm(dim=-1)).flatten()
    print(f"     per calibration token: median {float(per_token.median()):.2e}, max {float(per_token.max()):.2e}")
    print(f"   float32 arithmetic alone (the unrotated model vs its float64 copy, calibration): {_rel(c, c64):.2e}")
    before, after = serialized_size(model)["payload_bytes"], serialized_size(rot)["payload_bytes"]
    info = rot.rotation
    print(f"   rotation: residual {info['residual']}, value heads {info['value_heads']}, "
          f"down_proj {info.get('online_down_proj', 'none')}")
    print(f"   stored size {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB (+{(after - before) / 1e6:.1f} MB: "
          + (f"untied lm_head {info['untied_bytes'] / 1e6:.1f} MB, " if "untied_bytes" in info else "")
          + "one shared online Hadamard matrix)")
    if "untied_lm_head" in info:
        print(f"   {info['untied_lm_head']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-calib", type=int, default=16, help="calibration chunks (128 tokens each on smollm2)")
    ap.add_argument("--n-heldout", type=int, default=4, help="held-out chunks of 256 tokens for the output error")
    ap.add_argument("--no-smooth", action="store_true")
    args = ap.parse_args()
    import qviz

    t0 = time.perf_counter()
    model = qviz.load(args.model)
    calib = qviz.calibration_data(model, n=args.n_calib)
    print(f"{model.name}: {len(linear_names(model))} linear layers; calibration {args.n_calib} chunks", flush=True)
    print("\n1. max/median channel absmax of each linear layer's input", flush=True)
    r = ratios(model, calib, smooth=not args.no_smooth)
    print(f"   ({r['tokens']:,} calibration tokens per layer)" if r["tokens"] else "", flush=True)
    print_ratios(r)
    print("\n2. full-precision output error of the rotated model", flush=True)
    output_error(model, r["rotated"], calib, args.n_heldout)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
