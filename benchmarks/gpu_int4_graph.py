"""INT4 GEMV at batch 1 on the GPU: device time without launch gaps, and the host's time per call.

    python benchmarks/gpu_int4_graph.py          # on a machine with a CUDA GPU; writes $OUT or . /int4bench.json

For fp16 ``F.linear``, torch's tinygemm INT4 and qviz's Triton INT4 (``int4_linear``; its prep kernel
alone too) at 8192² and 4096²:

* ``do_bench``: ``triton.testing.do_bench`` median (L2 flushed before each run); it hides the host's
  launch work only while that is shorter than the flush;
* ``graph``: device µs per call from CUDA-graph replays of 20 × (L2 flush, call) minus 20 × flush, so
  neither launch gaps nor a warm L2 count;
* ``host``: host µs per call when calls are launched back to back;
* ``main_*``: the GEMV kernel alone (after one prep) for each autotune config, graph-timed as above.
"""
import json
import math
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import bench_us, host_us  # noqa: E402  (gpu.py puts the repository on the path for qviz)

import qviz.gpu.int4 as I  # noqa: E402
from qviz.quant.granularity import PerGroup  # noqa: E402
from qviz.quant.primitives import fake_quantize_codes  # noqa: E402


def graph_us(fn, n=20):
    # device µs per call with the L2 flushed before every call, from CUDA-graph replays (no launch gaps):
    # a graph of n x (flush, fn) minus a graph of n x flush
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    fn(); torch.cuda.synchronize()
    def make(with_fn):
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(n):
                flush.zero_()
                if with_fn:
                    fn()
        return g
    def t(g):
        ts = []
        for _ in range(11):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); g.replay(); b.record(); torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) * 1e3 / n)
        return sorted(ts)[5]
    return t(make(True)) - t(make(False))


out = {}
for n in (8192, 4096):
    torch.manual_seed(0)
    w = torch.randn(n, n, device="cuda") / math.sqrt(n)
    x16 = torch.randn(1, n, device="cuda", dtype=torch.float16)
    w_hat, codes, qp = fake_quantize_codes(w, PerGroup(128), 4)
    p = I.pack_int4_groups(codes, 128); s16 = qp.scale.half(); z = qp.zero
    w16 = w.half(); xb = x16.bfloat16()
    tg = I.tinygemm_pack(codes, qp.scale, qp.zero, 128)
    kw, ng = n // 8, n // 128
    xs = torch.empty(8 * kw + ng, dtype=torch.float32, device="cuda")
    y = torch.empty((1, n), dtype=torch.float16, device="cuda")
    I.int4_linear(x16, p, s16, z, 128)
    best = I.chosen_config("gemv", n, n, 128, x16.device)
    prep = lambda: I._gemv_prep_kernel[(triton.cdiv(ng, 16),)](x16, xs, xs[8 * kw:], n, GROUP=128, BLOCK_G=16)
    fns = {"fp16": lambda: torch.nn.functional.linear(x16, w16),
           "tinygemm": lambda: torch._weight_int4pack_mm(xb, tg[0], 128, tg[1]),
           "qviz": lambda: I.int4_linear(x16, p, s16, z, 128),
           "qviz_prep_only": prep}
    r = {"best_config": str(best)}
    for k, f in fns.items():
        r[k] = {"do_bench": round(bench_us(f), 2), "graph": round(graph_us(f), 2), "host": round(host_us(f), 2)}
    prep()
    for cfg in I._GEMV_CONFIGS:
        kk = cfg.kwargs
        f = lambda: I._gemv_kernel[(triton.cdiv(n, kk["BLOCK_N"]),)](xs, xs[8 * kw:], p, s16, z, y, n, I._MAGIC, n, GROUP=128, num_warps=cfg.num_warps, num_stages=1, **kk)
        r[f"main_{kk['BLOCK_N']}_{kk['GPI']}_{kk['PREFETCH']}_w{cfg.num_warps}"] = round(graph_us(f), 2)
    out[n] = r
    print(n, json.dumps(r), flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "int4bench.json"), "w"), indent=0)
