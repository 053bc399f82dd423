"""Quality of llama.cpp's GGUF file types on a decoder, beside qviz's other 4-bit methods.

Run ``python benchmarks/gguf_quality.py [--model smollm2-135m] [--n-chunks 80] [--n-calib 32] [--no-others] [--files]``.
It scores, one by one against a reference kept on disk (``benchmarks/_decoder_rows.py``,
the numbers ``qviz.compare`` reports), each row printed as it finishes:

    Q8_0, Q6_K, Q5_K_M, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, Q3_K_M, Q2_K,
    Q4_K_M and Q2_K with an importance matrix (from the calibration batch),
    and (unless --no-others) RTN w4, NF4, GPTQ w4, AWQ w4 in groups of 128
    (64 where 128 does not divide every row: smollm2's rows are 576 wide),

with mean KL, KL p99, perplexity change, same-top-1, the bits per weight of the
quantized layers and of the whole model (every byte, embeddings included), and
whether the mean-KL order of the GGUF types is llama.cpp's published one
(Q8_0 < Q6_K < Q5_K_M < Q4_K_M < Q4_0 < Q3_K_M < Q2_K). Which block type each
tensor got (llama.cpp's mixes and its fallbacks for rows the 256-weight K-quant
super-blocks do not divide) is printed per config.

For a model loaded from a GGUF file whose matrices are Q4_1 (smollm2-135m),
``GGUF("Q4_1", pure=True)`` should give those weights back: the largest weight
change it makes is printed. ``--files`` also runs ``qviz.inspect_gguf`` on the
model's own file and a Q4_K_M export -> reload round trip.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _decoder_rows as rows  # noqa: E402

GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_M", "Q2_K")
LLAMA_CPP_KL_ORDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")


def _group(model) -> int:
    from qviz.models import layer_type, quantizable_layers, weight_matrix

    lin = [m for m in quantizable_layers(model).values() if layer_type(m) == "linear"]
    return 128 if all(weight_matrix(m).shape[1] % 128 == 0 for m in lin) else 64


def configs(model, others: bool, types=GGUF_TYPES, imatrix: bool = True) -> list:
    import qviz

    out = [qviz.GGUF(t) for t in types]
    if imatrix:
        out += [qviz.GGUF("Q4_K_M", imatrix=True), qviz.GGUF("Q2_K", imatrix=True)]
    if others:
        g = _group(model)
        out += [qviz.RTN(bits=4, group_size=g), qviz.BnbNF4(blocksize=64), qviz.GPTQ(bits=4, group_size=g),
                qviz.AWQ(bits=4, group_size=g)]
    return out


def _types(q) -> str:
    """``Q5_0 x150, Q6_K x30``: which GGUF block type the quantized layers got."""
    counts = collections.Counter(m.gguf_type for m in q.module.modules() if getattr(m, "gguf_type", None))
    return ", ".join(f"{t} x{n}" for t, n in counts.most_common())


def fixed_point(model) -> None:
    import qviz
    from qviz.models import layer_type, quantizable_layers, weight_matrix
    from qviz.models.gguf import gguf_tensor_types, smollm2_path

    stored = gguf_tensor_types(smollm2_path())
    q = qviz.quantize(model, qviz.GGUF("Q4_1", pure=True), progress=False)
    a, b = quantizable_layers(model), quantizable_layers(q)
    worst = {}  # stored type -> (max |w_q - w|, max relative Frobenius error, layers)
    for name, m in a.items():
        if layer_type(m) != "linear" or name not in b:
            continue
        w, wq = weight_matrix(m).detach().float(), weight_matrix(b[name]).detach().float()
        # torch name -> GGUF name: model.layers.N.self_attn.q_proj -> blk.N.attn_q; lm_head is tied to token_embd
        kind = "Q8_0 (lm_head, tied to token_embd)" if name == "lm_head" else "Q4_1"
        e, r, n = worst.get(kind, (0.0, 0.0, 0))
        worst[kind] = (max(e, float((wq - w).abs().max())), max(r, float((wq - w).norm() / w.norm())), n + 1)
    kinds = collections.Counter(stored.values())
    print(f"\nGGUF('Q4_1', pure=True) on {model.name}'s own weights (file types: {dict(kinds)}; types given: {_types(q)}):")
    for kind, (e, r, n) in worst.items():
        print(f"   stored {kind}: {n} linear layers, max |w_q - w| = {e:.3g}, max ||w_q - w|| / ||w|| = {r:.3g}", flush=True)


def files(model, qmodel_cfg) -> None:
    import qviz

    path = None
    try:
        from qviz.models.gguf import smollm2_path

        path = smollm2_path()
    except (ImportError, ModuleNotFoundError) as err:
        print(f"\ninspect_gguf: no smollm2 file ({err})")
    if path is not None:
        ds = qviz.inspect_gguf(path)
        print(f"\nqviz.inspect_gguf({path.name}): {ds.attrs['n_tensors']} tensors, types {ds.attrs['type_counts']}; "
              f"bits per weight: whole file {ds.attrs['bits_per_weight']:.4f}, matrices {ds.attrs['bits_per_weight_matrices']:.4f}")
        for t in sorted(set(ds.type.values.tolist())):
            sel = ds.where(ds.type == t, drop=True)
            nw, nb = float(sel["n_weights"].sum()), float(sel["nbytes"].sum())
            print(f"   {t:5s} {sel.sizes['tensor']:4d} tensors  {int(nw):>11,} weights  {nb / 1e6:8.2f} MB  "
                  f"{8 * nb / nw:.4f} bits/weight")
    t0 = time.perf_counter()
    q = qviz.quantize(model, qmodel_cfg, progress=False)
    out = pathlib.Path(tempfile.mkdtemp(prefix="qviz-gguf-export-")) / "smollm2-135m-Q4_K_M.gguf"
    qviz.export_gguf(q, out, tokenizer_pre="smollm")
    ds = qviz.inspect_gguf(out)
    back = qviz.load(str(out))
    from qviz.models import layer_type, quantizable_layers, weight_matrix

    a, b = quantizable_layers(q), quantizable_layers(back)
    worst, n = 0.0, 0
    for name, m in a.items():
        if layer_type(m) == "linear" and name in b:
            worst = max(worst, float((weight_matrix(b[name]).float() - weight_matrix(m).float()).abs().max()))
            n += 1
    print(f"export_gguf({qmodel_cfg.label}) -> {out.stat().st_size / 1e6:.1f} MB, types {ds.attrs['type_counts']}, "
          f"{ds.attrs['bits_per_weight_matrices']:.4f} bits/weight (matrices); qviz.load of it: {n} linear layers, "
          f"max |w_reloaded - w_quantized| = {worst:.3g} ({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-chunks", type=int, default=80, help="held-out chunks of 256 tokens (127 scored each)")
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--no-others", action="store_true", help="only the GGUF types")
    ap.add_argument("--types", nargs="+", default=list(GGUF_TYPES), help="GGUF file types to score (default: all ten)")
    ap.add_argument("--no-imatrix", action="store_true", help="leave out the Q4_K_M / Q2_K imatrix rows")
    ap.add_argument("--no-fixed-point", action="store_true", help="leave out the Q4_1 fixed-point check")
    ap.add_argument("--files", action="store_true", help="inspect_gguf on the model's file and an export round trip")
    args = ap.parse_args()

    import qviz

    t0 = time.perf_counter()
    model = rows.on_device(qviz.load(args.model))
    calib = qviz.calibration_data(model, n=args.n_calib)
    if args.model == "smollm2-135m" and not args.no_fixed_point:
        fixed_point(model)
    ref = rows.reference(model, args.n_chunks)
    base = rows.reference_row(model, ref)
    from qviz.models.gguf import reference_note

    n_params = model.n_params()
    print(f"\n{reference_note(model)}; {base['n_scored_tokens']:,} held-out tokens scored ({args.n_chunks} chunks of 256, "
          f"second halves); {calib['input_ids'].shape[0]} calibration chunks; model bits/weight = 8 x size / {n_params:,} params")
    print(f"{rows.HEAD} {'model b/w':>9}  tensor types")
    print(rows.line(base) + f" {8 * base['size_bytes'] / n_params:>9.3f}", flush=True)
    kl = {}
    for cfg in configs(model, not args.no_others, args.types, not args.no_imatrix):
        r = rows.evaluate(model, cfg, ref, calib=calib, keep_model=True)
        kl[cfg.label] = r["kl_divergence"]
        types = _types(r.pop("model"))
        print(rows.line(r) + f" {8 * r['size_bytes'] / n_params:>9.3f}  {types}", flush=True)
    got = {t: kl[f"GGUF {t}"] for t in LLAMA_CPP_KL_ORDER if f"GGUF {t}" in kl}
    ours = sorted(got, key=got.get)
    print(f"\nmean-KL order: {' < '.join(ours)}\nllama.cpp's:   {' < '.join(LLAMA_CPP_KL_ORDER)}  "
          f"({'same' if tuple(ours) == LLAMA_CPP_KL_ORDER else 'differs'})")
    if args.files:
        files(model, qviz.GGUF("Q4_K_M"))
    print(f"\n{model.name} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
