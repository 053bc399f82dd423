"""Time qviz.layer_error on minilm: all 37 Linear layers, 64 calibration sentences, eight configs.

Configs: RTN 8/4/3/2 bits with groups of 128, LLM.int8 (bitsandbytes), NF4, FP4
(bitsandbytes) and W8A8 (RTN 8-bit per-channel weights + INT8 per-token
activations). One capture pass feeds every config.

Run:  python benchmarks/layer_error.py [--threads 2] [--repeat 3]

Prints the warm wall time (imports and JIT compilation excluded by a first
call on one layer), the process CPU time, and the machine's load average, since
a shared machine slows every number down.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best and the median are printed")
    parser.add_argument("--n", type=int, default=64, help="calibration sentences")
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))

    import numba
    import torch

    import qviz

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    model = qviz.load("minilm")
    calib = qviz.calibration_data(model, n=args.n)
    configs = [qviz.RTN(bits=b, group_size=128) for b in (8, 4, 3, 2)]
    configs += [qviz.BnbInt8(threshold=6.0), qviz.BnbNF4(blocksize=64), qviz.BnbFP4(blocksize=64), qviz.ActQuant(8)]

    t0 = time.perf_counter()
    qviz.layer_error(model, configs, calib=calib[:4], layers="encoder.layer.0.attention.self.query")
    warmup = time.perf_counter() - t0

    walls, cpus = [], []
    for _ in range(args.repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        errors = qviz.layer_error(model, configs, calib=calib)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    walls.sort()
    load = os.getloadavg()
    print(f"layer_error on minilm: {errors.sizes['layer']} layers x {errors.sizes['config']} configs, "
          f"{args.n} sentences ({int(errors.calib_rows.max())} tokens per layer), {args.threads} threads")
    print(f"  warm wall time: best {walls[0]:.2f} s, median {walls[len(walls) // 2]:.2f} s over {args.repeat} runs "
          f"(budget 10 s); process CPU time {min(cpus):.2f} s")
    print(f"  first call on one layer (imports + JIT): {warmup:.2f} s")
    print(f"  load average during the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    table = errors.output_rel_err.median("layer").to_pandas()
    bpw = errors.bits_per_weight.median("layer").to_pandas()
    sq = errors.weight_sqnr_db.median("layer").to_pandas()
    print("  median over layers:   output_rel_err   weight_sqnr_db   bits_per_weight")
    for cfg in table.index:
        print(f"  {cfg:24s} {table[cfg]:14.3e} {sq[cfg]:16.2f} {bpw[cfg]:17.3f}")


if __name__ == "__main__":
    main()
