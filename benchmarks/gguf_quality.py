"""Quality of llama.cpp's GGUF file types on a decoder, beside qviz's other 4-bit methods.

Run ``python benchmarks/gguf_quality.py [--model smollm2-135m] [--n-calib 32] [--no-others]``.
It runs :func:`qviz.compare` once on

    Q8_0, Q6_K, Q5_K_M, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, Q3_K_M, Q2_K,
    Q4_K_M and Q2_K with an importance matrix (from the calibration batch),
    and (unless --no-others) RTN w4 g128, NF4, GPTQ w4 g128, AWQ w4 g128,

and prints one row per config with every decoder metric compare reports
(mean KL, KL p99, perplexity, same-top-1 agreement, bits per weight, size) and
whether the mean-KL order of the GGUF types is llama.cpp's published one
(Q8_0 < Q6_K < Q5_K_M < Q4_K_M < Q4_0 < Q3_K_M < Q2_K).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_M", "Q2_K")
LLAMA_CPP_KL_ORDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
COLUMNS = ("kl_divergence", "kl_divergence_p99", "perplexity", "agreement", "accuracy", "bits_per_weight",
           "size_bytes")


def configs(others: bool) -> list:
    import qviz

    out = [qviz.GGUF(t) for t in GGUF_TYPES]
    out += [qviz.GGUF("Q4_K_M", imatrix=True), qviz.GGUF("Q2_K", imatrix=True)]
    if others:
        out += [qviz.RTN(bits=4, group_size=128), qviz.BnbNF4(), qviz.GPTQ(bits=4, group_size=128),
                qviz.AWQ(bits=4, group_size=128)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--no-others", action="store_true", help="only the GGUF types")
    args = ap.parse_args()

    import qviz

    t0 = time.perf_counter()
    model = qviz.load(args.model)
    calib = qviz.calibration_data(model, n=args.n_calib)
    cfgs = configs(not args.no_others)
    cmp = qviz.compare(model, cfgs, calib=calib, metrics=["accuracy", "size"], progress=True)
    cols = [c for c in COLUMNS if c in cmp.data_vars]
    table = cmp[cols].to_dataframe()
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.5g}".format):
        print(table)
    if "kl_divergence" in cmp:
        kl = {t: float(cmp.kl_divergence.sel(config=f"GGUF {t}")) for t in LLAMA_CPP_KL_ORDER}
        ours = sorted(kl, key=kl.get)
        same = tuple(ours) == LLAMA_CPP_KL_ORDER
        print(f"\nmean-KL order: {' < '.join(ours)}\nllama.cpp's:   {' < '.join(LLAMA_CPP_KL_ORDER)}  "
              f"({'same' if same else 'differs'})")
    else:
        print("\n(no kl_divergence in this compare: the decoder metrics come with the llm branch)")
    print(f"\n{len(cfgs)} configs on {model.name} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
