"""Quantization quality on the real SmolLM2-135M-Instruct, the way llama.cpp's ``perplexity --kl-divergence`` reports it.

Prints (issue 11's "Must show"):

1. load time cold (first use: GGUF read, dequantized, cached) and warm (from the safetensors cache);
2. the forward time of one calibration batch against ``qviz.capture`` of it (capture/forward ratio);
3. the massive activations (top channel per block, its |x|, the token it sits on);
4. on held-out text (>= 10,000 scored tokens by default), per config: perplexity ± stderr,
   ΔPPL %, mean KL, KL p99, same-top-1, bits per weight, size; and the peak memory of that ``qviz.compare``;
5. three prompts' greedy answers per config.

SmolLM2's rows are 576 wide, which groups of 128 do not divide (576 = 4.5 × 128): the grouped
configs use groups of 64, the nearest size that divides every row. The reference is the GGUF's
Q4_1 weights, dequantized (not the original bf16 checkpoint).

GPTQ is qviz's own, sequential: each layer is calibrated on the inputs it gets with the earlier layers
already quantized, computed block by block (qviz.quant._blockwise: about one pass of the calibration set
in all, as in the GPTQ reference implementation), so the GPTQ rows take minutes, not hours.

Run:  nice python benchmarks/llm_quality.py [--n-chunks 80] [--n-calib 32] [--quick]

Rows are scored one by one against a reference kept on disk (benchmarks/_decoder_rows.py) and printed as
they finish; the peak memory of a real ``qviz.compare`` call is measured at the end on --compare-chunks chunks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qviz  # noqa: E402

import _decoder_rows as rows_mod  # noqa: E402

PROMPTS = ["What is the capital of France?", "Name three primary colours.", "What is 12 plus 7?"]
GROUP = 64


def configs(quick: bool) -> list[tuple[object, bool]]:
    """(config, answers?) in the order the must-show claims need them first; answers for the weight-only bit widths."""
    rows = [
        (qviz.RTN(bits=4, group_size=GROUP), True),
        (qviz.GPTQ(bits=4, group_size=GROUP), True),
        (qviz.AWQ(bits=4, group_size=GROUP), True),
        (qviz.RTN(bits=3, group_size=GROUP), True),
        (qviz.GPTQ(bits=3, group_size=GROUP), True),
        (qviz.AWQ(bits=3, group_size=GROUP), True),
        (qviz.RTN(bits=8, group_size=None, act_bits=8, act_scheme="per-tensor"), False),  # naive W8A8: no smoothing
        (qviz.SmoothQuant(alpha=0.5, w_bits=8, a_bits=8, act_scheme="per-tensor"), False),
        (qviz.RTN(bits=8, group_size=None), True),
        (qviz.RTN(bits=2, group_size=GROUP), True),
        (qviz.BnbNF4(blocksize=64), True),
        (qviz.BnbFP4(blocksize=64), False),
        (qviz.BnbInt8(threshold=6.0), False),
        (qviz.BnbInt8(threshold=0.0), False),
    ]
    return [rows[0], rows[3]] if quick else rows


def load_times() -> qviz.QvizModel:
    cold_dir = tempfile.mkdtemp(prefix="qviz-llm-bench-")
    os.environ["QVIZ_CACHE_DIR"] = cold_dir
    t = time.perf_counter()
    qviz.load("smollm2-135m")
    cold = time.perf_counter() - t
    t = time.perf_counter()
    model = qviz.load("smollm2-135m")
    warm = time.perf_counter() - t
    print(f"load smollm2-135m: cold (first use, cache {cold_dir}) {cold:.1f} s; warm (safetensors cache) {warm:.1f} s")
    return model


def capture_ratio(model, calib) -> None:
    model.run(calib)  # warm-up
    t = time.perf_counter()
    model.run(calib)
    fwd = time.perf_counter() - t
    t = time.perf_counter()
    qviz.capture(model, calib, progress=False)
    cap = time.perf_counter() - t
    n = calib["input_ids"].numel()
    print(f"forward of {n} tokens: {fwd:.2f} s; qviz.capture of them: {cap:.2f} s; capture/forward = {cap / fwd:.2f}")


def massive(model, calib) -> None:
    ds = qviz.massive_activations(model, calib, top_k=2)
    print("\nmassive activations (residual stream entering each block; rank 0 and 1):")
    print(f"{'block':>5} {'ch0':>5} {'max|x|':>10} {'pos':>4} {'token':>14} {'ch1':>5} {'max|x|':>10} {'max/median':>11}")
    for b in ds.block.values:
        r0, r1 = ds.sel(block=b, rank=0), ds.sel(block=b, rank=1)
        print(f"{int(b):>5} {int(r0.channel):>5} {float(r0.absmax):>10.1f} {int(r0.token_position):>4} "
              f"{str(r0.token.item())!r:>14} {int(r1.channel):>5} {float(r1.absmax):>10.1f} {float(ds.ratio.sel(block=b)):>11.1f}")


from qviz.generation import first_divergence  # noqa: E402


def table(model, cfgs, n_chunks: int, calib, max_new_tokens: int, skip_first: int = 0) -> None:
    rows_mod.peak_rss_reset()
    before = rows_mod.peak_rss_gb()
    t = time.perf_counter()
    ref = rows_mod.reference(model, n_chunks)
    base = rows_mod.reference_row(model, ref)
    from qviz.models.gguf import reference_note

    print(f"\n{reference_note(model)}; {base['n_scored_tokens']:,} held-out tokens scored ({n_chunks} chunks of 256, "
          f"second halves); {calib['input_ids'].shape[0]} calibration chunks of {calib['input_ids'].shape[1]} tokens")
    print(rows_mod.HEAD)
    print(rows_mod.line(base), flush=True)
    ref_answers = qviz.generate(model, PROMPTS, max_new_tokens)
    _print_answers("fp32", ref_answers, ref_answers)
    rows = [base]
    claims_printed = False
    for cfg, want_answers in cfgs[skip_first:]:
        try:
            r = rows_mod.evaluate(model, cfg, ref, calib=calib, prompts=PROMPTS if want_answers else None,
                                  max_new_tokens=max_new_tokens)
        except Exception as err:  # one config that cannot run here (e.g. bitsandbytes missing) is reported
            print(f"{cfg.label:<40} did not run: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
            continue
        rows.append(r)
        print(rows_mod.line(r), flush=True)
        if "answers" in r:
            _print_answers(r["label"], r["answers"], ref_answers)
        if not claims_printed and _claims(rows, final=False):
            claims_printed = True
    secs = time.perf_counter() - t
    print(f"table: {secs:.0f} s, peak RSS {rows_mod.peak_rss_gb():.2f} GB (process before: {before:.2f} GB)")
    _claims(rows, final=True)
    print(f"\nanswers (greedy, {max_new_tokens} new tokens at most; [n] = first token that differs from fp32), by prompt:")
    for i, p in enumerate(PROMPTS):
        print(f"  {p}")
        for r in [{"label": "fp32", "answers": ref_answers}, *rows[1:]]:
            if "answers" in r:
                d = first_divergence(r["answers"][i], ref_answers[i])
                print(f"    {r['label']:<34} {'' if d < 0 else f'[{d}] '}{r['answers'][i].text!r}")


CLAIMS = ((f"GPTQ w4 g{GROUP}", f"RTN w4 g{GROUP}"), (f"AWQ w4 g{GROUP}", f"RTN w4 g{GROUP}"),
          (f"GPTQ w3 g{GROUP}", f"RTN w3 g{GROUP}"), (f"AWQ w3 g{GROUP}", f"RTN w3 g{GROUP}"),
          ("SmoothQuant", "RTN w8 ch asym a8"))


def _claims(rows, final: bool) -> bool:
    """Print the must-show comparisons once every row they need is measured (or, ``final``, whatever there is)."""
    kl = {r["label"]: (r["kl_divergence"], r["kl_divergence_stderr"]) for r in rows}
    found = [(next((k for k in kl if k.startswith(a)), None), next((k for k in kl if k.startswith(b)), None))
             for a, b in CLAIMS]
    if not final and not all(la and lb for la, lb in found):
        return False
    print("\nmust-show claims (mean KL ± stderr):", flush=True)
    for (a, b), (la, lb) in zip(CLAIMS, found, strict=True):
        if la is None or lb is None:
            print(f"  {a} vs {b}: not both measured")
            continue
        (ka, sa), (kb, sb) = kl[la], kl[lb]
        print(f"  {la} {ka:.5f} ± {sa:.5f}  <  {lb} {kb:.5f} ± {sb:.5f} : {'holds' if ka < kb else 'DOES NOT hold'}",
              flush=True)
    print(flush=True)
    return True


def _print_answers(label, answers, ref_answers) -> None:
    for a, r in zip(answers, ref_answers, strict=True):
        d = first_divergence(a, r)
        print(f"      answer {label:<30} {'' if d < 0 else f'[{d}] '}{a.text!r}", flush=True)


def compare_memory(model, calib, n_chunks: int) -> None:
    """Peak memory of one real ``qviz.compare`` call (fp32 + RTN w4) on ``n_chunks`` chunks."""
    from qviz.evaluate.accuracy import PerplexityTask

    rows_mod.peak_rss_reset()
    before = rows_mod.peak_rss_gb()
    t = time.perf_counter()
    cmp = qviz.compare(model, [qviz.RTN(bits=4, group_size=GROUP)], task=PerplexityTask(n=n_chunks, seq_len=256),
                       calib=calib, metrics=["accuracy", "size"], progress=False)
    print(f"\nqviz.compare(smollm2-135m, [RTN w4 g{GROUP}], PerplexityTask(n={n_chunks}), metrics=accuracy+size): "
          f"{time.perf_counter() - t:.0f} s, peak RSS {rows_mod.peak_rss_gb():.2f} GB (process before {before:.2f} GB); "
          f"mean KL {float(cmp.kl_divergence.sel(config=f'RTN w4 g{GROUP} asym')):.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-chunks", type=int, default=80, help="held-out chunks of 256 tokens (127 scored each)")
    ap.add_argument("--n-calib", type=int, default=32, help="calibration chunks of 128 tokens")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--compare-chunks", type=int, default=8, help="chunks for the qviz.compare peak-memory run (0: skip)")
    ap.add_argument("--quick", action="store_true", help="RTN w4 and w3 rows only")
    ap.add_argument("--skip-first", type=int, default=0, help="leave out the first N configs (measured by an earlier run)")
    ap.add_argument("--table-only", action="store_true", help="skip the load timing, capture/forward and massive activations")
    args = ap.parse_args()
    model = rows_mod.on_device(qviz.load("smollm2-135m") if args.table_only else load_times())
    print(f"device: {model.device}", flush=True)
    calib = qviz.calibration_data(model, n=args.n_calib)
    if not args.table_only:
        capture_ratio(model, qviz.calibration_data(model, n=2))
        massive(model, calib)
    table(model, configs(args.quick), args.n_chunks, calib, args.max_new_tokens, args.skip_first)
    if args.compare_chunks:
        compare_memory(model, calib, args.compare_chunks)


if __name__ == "__main__":
    main()
