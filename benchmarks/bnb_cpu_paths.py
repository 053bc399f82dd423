"""bitsandbytes' two CPU kernels for 4-bit weights, side by side, measured in one run.

1. ``qviz.compare(digits-cnn, [NF4, FP4, LLM.int8])`` with the generic kernel
   (float32, every CPU) and, where the CPU has AVX512-BF16, with
   ``cpu_kernel="auto"`` (the packed bf16 kernel where the layer's shape allows,
   the generic one elsewhere): accuracy, agreement, bits per weight and the
   kernel label of each row.
2. NF4 latency of one 4096x4096 Linear at batch 1 and batch 16 on each path,
   as the ratio fp32 time / NF4 time (>1: NF4 is faster than torch fp32).

Run:  python benchmarks/bnb_cpu_paths.py [--threads 2]

On a CPU without AVX512-BF16 the packed rows say "not available on this CPU".
"""

from __future__ import annotations

import argparse
import time


def _best(fn, repeats: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from torch import nn

    import qviz
    from qviz.quant.modules import packed_cpu_kernel_available

    torch.set_num_threads(args.threads)
    packed = packed_cpu_kernel_available()
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    print(f"CPU: avx512_bf16={'avx512_bf16' in flags} amx_bf16={'amx_bf16' in flags} "
          f"-> bitsandbytes packed kernel available: {packed}")

    model = qviz.load("digits-cnn")
    paths = [("generic", "generic")] + ([("auto", "packed where the shape allows")] if packed else [])
    for cpu_kernel, what in paths:
        cfgs = [qviz.BnbNF4(cpu_kernel=cpu_kernel), qviz.BnbFP4(cpu_kernel=cpu_kernel), qviz.BnbInt8()]
        cmp = qviz.compare(model, cfgs, metrics=["accuracy", "size", "cost"], progress=False)
        print(f"\ncompare on digits-cnn, 4-bit cpu_kernel={cpu_kernel!r} ({what}):")
        print(f"{'config':<26}{'accuracy':>9}{'agree':>7}{'bits/w':>8}  kernel")
        for c in cmp.config.values:
            row = cmp.sel(config=c)
            print(f"{str(c):<26}{float(row.accuracy):>9.4f}{float(row.agreement):>7.3f}"
                  f"{float(row.bits_per_weight):>8.3f}  {row.kernel.item()}")

    torch.manual_seed(0)
    lin = nn.Linear(4096, 4096, bias=False)
    print("\nNF4 4096x4096 Linear, ratio torch fp32 time / NF4 time (>1: NF4 faster), best of 20:")
    for batch in (1, 16):
        x = torch.randn(batch, 4096)
        with torch.no_grad():
            t32 = _best(lambda: lin(x))
            row = [f"batch {batch:>2}: fp32 {t32 * 1e3:.3f} ms"]
            for cpu_kernel in ("generic", "packed"):
                if cpu_kernel == "packed" and not packed:
                    row.append("packed: not available on this CPU")
                    continue
                q = qviz.quantize(nn.Sequential(lin), qviz.BnbNF4(cpu_kernel=cpu_kernel), progress=False)
                t = _best(lambda: q.module(x))
                row.append(f"{cpu_kernel} {t * 1e3:.3f} ms ({t32 / t:.2f}x)")
        print("  " + "; ".join(row))


if __name__ == "__main__":
    main()
