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

Run:  nice python benchmarks/llm_quality.py [--n-chunks 80] [--n-calib 32] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qviz  # noqa: E402

PROMPTS = ["What is the capital of France?", "Name three primary colours.", "What is 12 plus 7?"]
GROUP = 64


def configs(quick: bool) -> list:
    rows = [
        qviz.BnbInt8(threshold=6.0),
        qviz.BnbInt8(threshold=0.0),
        qviz.RTN(bits=8, group_size=None),
        qviz.RTN(bits=4, group_size=GROUP),
        qviz.RTN(bits=3, group_size=GROUP),
        qviz.RTN(bits=2, group_size=GROUP),
        qviz.BnbNF4(blocksize=64),
        qviz.BnbFP4(blocksize=64),
        qviz.GPTQ(bits=4, group_size=GROUP),
        qviz.GPTQ(bits=3, group_size=GROUP),
        qviz.AWQ(bits=4, group_size=GROUP),
        qviz.AWQ(bits=3, group_size=GROUP),
        qviz.SmoothQuant(alpha=0.5, w_bits=8, a_bits=8, act_scheme="per-tensor"),
        qviz.RTN(bits=8, group_size=None, act_bits=8, act_scheme="per-tensor"),  # naive W8A8: no smoothing
    ]
    return rows[2:6] if quick else rows


def _peak_rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


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


def table(model, cfgs, n_chunks: int, calib, out: Path | None) -> None:
    from qviz.evaluate.accuracy import PerplexityTask

    _peak_rss_reset()
    before = _peak_rss_gb()
    t = time.perf_counter()
    cmp = qviz.compare(model, cfgs, task=PerplexityTask(n=n_chunks, seq_len=256), calib=calib,
                       metrics=["accuracy", "size"], prompts=PROMPTS, max_new_tokens=32, progress=True)
    secs = time.perf_counter() - t
    peak = _peak_rss_gb()
    n = int(cmp.n_scored_tokens.sel(config="fp32"))
    print(f"\n{cmp.attrs['reference']}; {n:,} held-out tokens scored ({n_chunks} chunks of 256, second halves); "
          f"{calib['input_ids'].shape[0]} calibration chunks of {calib['input_ids'].shape[1]} tokens")
    print(f"qviz.compare: {secs:.0f} s, peak RSS {peak:.2f} GB (process before: {before:.2f} GB)")
    head = f"{'config':<34} {'PPL':>9} {'±':>6} {'ΔPPL%':>7} {'mean KL':>9} {'KL p99':>8} {'top-1%':>7} {'bits/w':>7} {'size MB':>8}"
    print(head)
    for c in cmp.config.values:
        r = cmp.sel(config=c)
        print(f"{str(c):<34} {float(r.perplexity):>9.4f} {float(r.perplexity_stderr):>6.3f} {float(r.delta_perplexity_pct):>+7.2f} "
              f"{float(r.kl_divergence):>9.5f} {float(r.kl_divergence_p99):>8.4f} {100 * float(r.agreement):>7.2f} "
              f"{float(r.bits_per_weight):>7.3f} {float(r.size_bytes) / 1e6:>8.2f}")
    print("\nanswers (greedy, 32 new tokens at most; [n] = first token that differs from fp32):")
    for p in cmp.prompt.values:
        print(f"  {p}")
        for c in cmp.config.values:
            d = int(cmp.first_divergence.sel(config=c, prompt=p))
            print(f"    {str(c):<34} {'' if d < 0 else f'[{d}] '}{str(cmp.answer.sel(config=c, prompt=p).item())!r}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        qviz.save(cmp, out / "llm_quality.nc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-chunks", type=int, default=80, help="held-out chunks of 256 tokens (127 scored each)")
    ap.add_argument("--n-calib", type=int, default=32, help="calibration chunks of 128 tokens")
    ap.add_argument("--quick", action="store_true", help="RTN rows only")
    ap.add_argument("--out", type=Path, default=None, help="write the comparison Dataset here (netCDF)")
    args = ap.parse_args()
    model = load_times()
    calib = qviz.calibration_data(model, n=args.n_calib)
    capture_ratio(model, qviz.calibration_data(model, n=4))
    massive(model, calib)
    table(model, configs(args.quick), args.n_chunks, calib, args.out)


if __name__ == "__main__":
    main()
