"""GPU benchmarks (issue 14): every ratio measured in one run on one card, written to RESULTS.json and RESULTS.md.

    python benchmarks/gpu.py --out benchmarks          # on a machine with a CUDA GPU

Sections (all timings are medians of CUDA-event timed runs after warm-up, L2 flushed between runs
by ``triton.testing.do_bench``, except the whole-model timings, which use wall time around a
synchronised call):

1. fake-quant vs a device-to-device copy of the same float32 tensor (4096² and 8192²): the fused
   Triton kernels alone and through ``qviz.fake_quantize`` (checks included), the torch path they
   replace, and bitsandbytes' own NF4 quantize + dequantize;
2. matmul time at batch 1 and 32 for fp16, bf16, bitsandbytes LLM.int8 (threshold 6 and 0), NF4,
   FP4 with double quantization, qviz's Triton INT4 kernel and torch's tinygemm INT4, against fp16
   and the HBM roofline (packed bytes over the measured copy bandwidth);
3. capture vs a plain forward on a SmolLM2-135M-shaped random Llama and a 2048-hidden Llama;
4. ``qviz.compare`` on the GPU (SmolLM2-135M shapes): real-kernel latency, throughput, cost per 1M tokens.

A speed ratio is ``reference time / measured time``: above 1 is faster than the reference.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import qviz  # noqa: E402

FAILED: dict[str, str] = {}  # what could not run, and why


def bench_us(fn: Any) -> float:
    """Median µs of ``fn()`` (CUDA events, L2 flushed between runs)."""
    return 1e3 * do_bench(fn, warmup=25, rep=200, return_mode="median")


def wall_ms(fn: Any, repeats: int = 7) -> float:
    """Median wall ms of a synchronised ``fn()`` after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def host_us(fn: Any, repeats: int = 300) -> float:
    """Host µs per call of ``fn()`` launched back to back without waiting (its launch overhead, when that
    is longer than its device time). ``bench_us`` hides up to the L2 flush's run (about 80 µs) of it."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return 1e6 * (t1 - t0) / repeats


def attempt(name: str, fn: Any) -> Any:
    """``fn()``, or None with the error recorded under ``name`` in FAILED."""
    try:
        return fn()
    except Exception as err:  # a kernel that does not run here is reported, not fatal
        FAILED[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        traceback.print_exc()
        return None


def environment() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    env = {"gpu": props.name, "nvidia_smi": smi, "driver": smi.split(", ")[1] if smi.count(",") >= 1 else "",
           "sm_count": props.multi_processor_count, "memory_gb": round(props.total_memory / 1e9, 1),
           "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
           "python": platform.python_version(), "qviz": qviz.__version__}
    for mod in ("bitsandbytes", "transformers", "numba", "xarray"):
        env[mod] = attempt(f"import {mod}", lambda m=mod: __import__(m).__version__)
    return env


# --------------------------------------------------------------------------- 1. fake-quant


def fake_quant(n: int, sweep: bool = True) -> dict[str, Any]:
    from qviz.gpu.fakequant import codebook_blocks, rtn_groups
    from qviz.quant.granularity import PerGroup
    from qviz.quant.primitives import fake_quantize_values, fake_quantize_with_stats

    torch.manual_seed(0)
    x = torch.randn(n, n, device="cuda")
    y = torch.empty_like(x)
    out = {"copy_us": bench_us(lambda: y.copy_(x))}
    out["rtn_g128_kernel_us"] = bench_us(lambda: rtn_groups(x, 128, 4, False, check=False))
    out["rtn_g128_kernel_checked_us"] = bench_us(lambda: rtn_groups(x, 128, 4, False))  # + the flag read (host sync)
    out["rtn_g128_values_us"] = bench_us(lambda: fake_quantize_values(x, PerGroup(128), 4, check_finite=False))
    out["rtn_g128_api_us"] = bench_us(lambda: qviz.fake_quantize(x, qviz.RTN(bits=4, group_size=128)))
    out["rtn_w8_channel_api_us"] = bench_us(lambda: qviz.fake_quantize(x, qviz.RTN(bits=8, group_size=None)))
    out["nf4_kernel_us"] = bench_us(lambda: codebook_blocks(x, 64, "nf4", check=False))
    out["nf4_api_us"] = bench_us(lambda: qviz.fake_quantize(x, qviz.BnbNF4()))
    out["fp4_api_us"] = bench_us(lambda: qviz.fake_quantize(x, qviz.BnbFP4()))
    out["rtn_g128_torch_path_us"] = bench_us(
        lambda: fake_quantize_with_stats(x, PerGroup(128), 4, backend="torch"))

    def bnb_nf4() -> None:
        import bitsandbytes.functional as F

        q, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
        F.dequantize_4bit(q, st)

    import qviz.gpu.fakequant as fq

    times = {}
    default = (fq.TILE, fq.WARPS)
    try:  # tile size and warps of the two kernels; the defaults are what the rows above ran
        for tile in (1024, 2048, 4096, 8192) if sweep else ():
            for warps in (4, 8, 16):
                fq.TILE, fq.WARPS = tile, warps
                times[f"rtn_tile{tile}_w{warps}_us"] = bench_us(lambda: rtn_groups(x, 128, 4, False, check=False))
                times[f"nf4_tile{tile}_w{warps}_us"] = bench_us(lambda: codebook_blocks(x, 64, "nf4", check=False))
    finally:
        fq.TILE, fq.WARPS = default
    out["sweep"] = times
    t = attempt(f"bnb nf4 quantize+dequantize {n}", lambda: bench_us(bnb_nf4))
    if t is not None:
        out["bnb_nf4_quant_dequant_us"] = t
    out["copy_bandwidth_gbps"] = 2 * x.numel() * 4 / (out["copy_us"] * 1e-6) / 1e9
    return out


# --------------------------------------------------------------------------- 2. matmul


def matmul(n: int, batch: int, copy_gbps: float) -> dict[str, dict[str, float]]:
    from torch import nn

    from qviz.gpu.int4 import int4_linear, pack_int4_groups, tinygemm_pack
    from qviz.quant.granularity import PerGroup
    from qviz.quant.primitives import fake_quantize_codes

    torch.manual_seed(1)
    w = torch.randn(n, n, device="cuda") / math.sqrt(n)  # [out, in]
    x16 = torch.randn(batch, n, device="cuda", dtype=torch.float16)
    xb = x16.to(torch.bfloat16)
    w16, wb = w.half(), w.to(torch.bfloat16)
    res: dict[str, dict[str, float]] = {}

    def record(name: str, fn: Any, weight_bytes: float) -> None:
        t = attempt(f"{name} {n}x{n} batch {batch}", lambda: bench_us(fn))
        if t is None:
            return
        moved = weight_bytes + 2 * batch * n * 2  # weights read once, fp16 x in and y out
        res[name] = {"time_us": t, "weight_bytes": weight_bytes, "roofline_us": moved / (copy_gbps * 1e9) * 1e6,
                     "host_us": host_us(fn)}

    record("fp16", lambda: torch.nn.functional.linear(x16, w16), n * n * 2)
    record("bf16", lambda: torch.nn.functional.linear(xb, wb), n * n * 2)

    def bnb_modules() -> dict[str, Any]:
        import bitsandbytes as bnb

        mods = {}
        for t in (6.0, 0.0):
            m = bnb.nn.Linear8bitLt(n, n, bias=False, has_fp16_weights=False, threshold=t)
            m.weight = bnb.nn.Int8Params(w16.cpu(), requires_grad=False, has_fp16_weights=False)
            mods[f"bnb int8 (threshold {t:g})"] = (m.cuda(), n * n + 4 * n)
        for qt, dq in (("nf4", False), ("fp4", True)):
            m = bnb.nn.Linear4bit(n, n, bias=False, compute_dtype=torch.float16, compress_statistics=dq, quant_type=qt)
            m.weight = bnb.nn.Params4bit(w16.cpu(), requires_grad=False, quant_type=qt, blocksize=64,
                                         compress_statistics=dq)
            label = f"bnb {qt}" + (" (double quant)" if dq else "")
            m = m.cuda()
            absmax_bytes = (n * n // 64) * (1 if dq else 4)
            mods[label] = (m, n * n // 2 + absmax_bytes)
        return mods

    mods = attempt("bitsandbytes modules", bnb_modules) or {}
    with torch.no_grad():
        for label, (m, nbytes) in mods.items():
            record(label, lambda m=m: m(x16), nbytes)
        w_hat, codes, qp = fake_quantize_codes(w, PerGroup(128), 4)
        packed = pack_int4_groups(codes, 128)
        s16, z = qp.scale.half(), qp.zero
        int4_bytes = 4 * packed.numel() + 3 * s16.numel()
        import qviz.gpu.int4 as int4_mod

        record("qviz triton int4 (g128)", lambda: int4_linear(x16, packed, s16, z, 128), int4_bytes)
        if batch == 1:
            best = int4_mod.chosen_config("gemv", n, n, 128, x16.device)
            if "qviz triton int4 (g128)" in res:
                res["qviz triton int4 (g128)"]["config"] = str(best)
        tg = attempt("tinygemm pack", lambda: tinygemm_pack(codes, qp.scale, qp.zero, 128))
        if tg is not None:
            record("torch tinygemm int4 (g128, bf16)", lambda: torch._weight_int4pack_mm(xb, tg[0], 128, tg[1]),
                   n * n // 2 + 4 * s16.numel())
        # correctness of the timed kernel on this very shape
        ref = x16.double() @ w_hat.double().T
        err = float((int4_linear(x16, packed, s16, z, 128).double() - ref).norm() / ref.norm())
        res["qviz triton int4 (g128)"]["rel_err_vs_fake_quant"] = err
    base = res["fp16"]["time_us"]
    for r in res.values():
        r["speed_vs_fp16"] = base / r["time_us"]
        r["speed_vs_roofline"] = r["roofline_us"] / r["time_us"]
    return res


# --------------------------------------------------------------------------- 3. capture


def random_llama(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int) -> qviz.QvizModel:
    import transformers

    base = qviz.load("tiny-llama")  # its byte tokenizer; ids stay below any vocab used here
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                   max_position_embeddings=2048, tie_word_embeddings=True)
    module = transformers.LlamaForCausalLM(cfg).eval().cuda()
    return base.with_module(module, name=f"random Llama h{hidden} x{layers}")


def capture_kernel_sweep(n_layers: int = 180, rows: int = 2048) -> dict[str, Any]:
    """Time the grouped statistics launch over ``n_layers`` SmolLM2-like activations for several tiles; keep the best.

    The per-layer launch (one per layer, what a first batch runs) is timed on the same data for comparison.
    """
    import qviz.gpu.stats as st
    from qviz.activations.moments import TritonMoments

    torch.manual_seed(0)
    widths = [1536 if i % 6 == 5 else 576 for i in range(n_layers)]
    xs = [torch.randn(rows, c, device="cuda") for c in widths]
    accs = TritonMoments.many(widths, 64, -6.0, 4.0, torch.device("cuda"))
    items = [(x, None, a) for x, a in zip(xs, accs)]
    out: dict[str, Any] = {"per_layer_launches_us": bench_us(lambda: [st.channel_stats(x, None, a, accumulate=True)
                                                                      for x, a in zip(xs, accs)])}
    default = dict(st.MANY)
    times = {}
    for br, bc, w in [(128, 16, 4), (64, 32, 4), (32, 64, 4), (64, 64, 8), (128, 32, 8), (32, 32, 4), (16, 64, 4),
                      (64, 16, 4), (256, 16, 8)]:
        st.MANY = {"BLOCK_R": br, "BLOCK_C": bc, "num_warps": w}
        t = attempt(f"grouped stats tile {br}x{bc} w{w}", lambda: bench_us(lambda: st.channel_stats_many(items)))
        if t is not None:
            times[f"{br}x{bc}_w{w}"] = t
    best = min(times, key=times.get)
    br, bc, w = best.replace("_w", "x").split("x")
    st.MANY = {"BLOCK_R": int(br), "BLOCK_C": int(bc), "num_warps": int(w)}
    out.update({"grouped_us": times, "best": best, "library_default": default, "layers": n_layers, "rows": rows})
    return out


def capture_vs_forward(model: qviz.QvizModel, batch: int = 8, tokens: int = 256, n_batches: int = 8,
                       profile: bool = False) -> dict[str, float]:
    import qviz.activations.capture as cap
    from qviz.activations.moments import HostMoments

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 250, (batch * n_batches, tokens), generator=gen)
    one = {"input_ids": ids[:batch].cuda(), "attention_mask": torch.ones(batch, tokens, dtype=torch.long).cuda()}
    many = {"input_ids": ids.cuda(), "attention_mask": torch.ones_like(ids).cuda()}
    fwd = wall_ms(lambda: model.run(one))
    cap1 = wall_ms(lambda: qviz.capture(model, one, batch_size=batch, progress=False), repeats=5)
    fwd_many = wall_ms(lambda: [model.run({k: v[i:i + batch] for k, v in many.items()})
                                for i in range(0, batch * n_batches, batch)], repeats=3)
    cap_many = wall_ms(lambda: qviz.capture(model, many, batch_size=batch, progress=False), repeats=3)
    saved = cap.accumulator
    try:  # the host (Numba) accumulator every other device uses, for the before/after figure
        cap.accumulator = lambda c, b, lo, hi, dev: HostMoments(c, b, lo, hi)
        cap_torch = wall_ms(lambda: qviz.capture(model, one, batch_size=batch, progress=False), repeats=3)
    finally:
        cap.accumulator = saved
    n_layers = len(qviz.capture(model, one, batch_size=batch, progress=False).layer)
    if profile:  # where a many-batch capture spends its time (host and device), for the record
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            qviz.capture(model, many, batch_size=batch, progress=False)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), flush=True)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12), flush=True)
    return {"forward_ms": fwd, "capture_ms": cap1, "speed_vs_forward": fwd / cap1,
            f"forward_{n_batches}_batches_ms": fwd_many, f"capture_{n_batches}_batches_ms": cap_many,
            f"speed_vs_forward_{n_batches}_batches": fwd_many / cap_many,
            "capture_host_numba_ms": cap_torch, "speed_vs_forward_host_numba": fwd / cap_torch,
            "layers_captured": n_layers, "tokens_per_batch": batch * tokens}


# --------------------------------------------------------------------------- 4. compare


def compare_on_gpu(model: qviz.QvizModel) -> dict[str, Any]:
    cfgs = [qviz.RTN(bits=4, group_size=64), qviz.BnbInt8(threshold=6.0), qviz.BnbInt8(threshold=0.0), qviz.BnbNF4(),
            qviz.BnbFP4(double_quant=True)]
    cmp = qviz.compare(model, cfgs, metrics=["size", "cost"], progress=False)
    rows = {}
    for label in cmp.config.values:
        r = cmp.sel(config=label)
        rows[str(label)] = {k: (str(r[k].item()) if r[k].dtype == object else float(r[k].item()))
                            for k in ("latency_ms", "throughput", "usd_per_1m", "kernel", "kernel_class", "size_bytes")
                            if k in r}
    gpu_rows = [str(h) for h in cmp.hardware.values if str(h).startswith("this GPU")]
    return {"configs": rows, "hardware_row": gpu_rows[0] if gpu_rows else None,
            "usd_per_hour": float(cmp.hardware_usd_per_hour.sel(hardware=gpu_rows[0])) if gpu_rows else None,
            "bandwidth_gbps": float(cmp.hardware_bandwidth_gbps.sel(hardware=gpu_rows[0])) if gpu_rows else None,
            "usd_per_1m_long_name": cmp.usd_per_1m.attrs.get("long_name", "")}


# --------------------------------------------------------------------------- report


KEY_MEANINGS = {
    "fake_quant_rtn_g128_vs_copy_4096": "copy time / the fused Triton RTN w4 g128 kernel (one read, one write; its NaN/Inf, overflow and all-zero flags computed in the same pass, the flag word not read), 4096² float32; ≥ 0.5 is 'within 2× of a copy'",
    "fake_quant_rtn_g128_vs_copy_8192": "the same at 8192²",
    "fake_quant_rtn_g128_api_vs_copy_4096": "copy time / the public qviz.fake_quantize(x, RTN(bits=4, group_size=128)): the kernel plus argument checks and the one host synchronisation that reads the flag word (to raise on NaN/Inf as the CPU path does), 4096²",
    "fake_quant_rtn_g128_api_vs_copy_8192": "the same at 8192²",
    "fake_quant_nf4_vs_copy_4096": "copy time / the Triton NF4 (block 64) kernel, as the RTN key, 4096²",
    "fake_quant_nf4_vs_copy_8192": "the same at 8192²",
    "fake_quant_nf4_api_vs_copy_8192": "copy time / the public qviz.fake_quantize(x, BnbNF4()), 8192²",
    "capture_vs_forward_smollm2": "forward time / qviz.capture time over 8 batches of 8×256 tokens (16k tokens: statistics and Dataset included), SmolLM2-135M-shaped random Llama; ≥ 0.667 is 'within 1.5×'",
    "capture_vs_forward_smollm2_1_batch": "the same for a single batch of 8×256 tokens (the one-off Dataset build and the first, layer-by-layer batch not amortised)",
    "capture_vs_forward_llama2048": "forward / capture over 8 batches of 8×256, 2048-hidden 4-block random Llama",
    "capture_vs_forward_llama2048_1_batch": "the same, one batch",
    "int4_kernel_batch1_8192": "the faster of the two INT4 kernels measured (qviz Triton, torch tinygemm), which the next two keys describe",
    "int4_vs_fp16_batch1_8192": "fp16 F.linear time / INT4 weight-only time, 8192×8192 weight, batch 1 (target ≥ 2.5)",
    "int4_vs_roofline_batch1_8192": "HBM roofline time (weight bytes as stored + activations, over the measured copy bandwidth) / INT4 time, 8192², batch 1; ≥ 0.667 is 'within 1.5× of the roofline'",
    "qviz_triton_int4_vs_fp16_batch1_8192": "fp16 time / qviz's Triton INT4 kernel (fp16 group scales, the kernel compare swaps in), 8192², batch 1",
    "qviz_triton_int4_vs_roofline_batch1_8192": "roofline time / qviz's Triton INT4 time, 8192², batch 1",
    "bnb_nf4_vs_fp16_batch1_8192": "fp16 time / bitsandbytes Linear4bit (nf4, fp16 compute) time, 8192², batch 1",
}


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    fq, mm, cp = r["fake_quant"], r["matmul"], r["capture"]
    keys: dict[str, Any] = {"gpu": r["environment"]["gpu"]}

    def put(key: str, fn: Any) -> None:
        try:
            keys[key] = round(float(fn()), 4)
        except (KeyError, TypeError, ZeroDivisionError):
            keys[key] = None

    for n in ("4096", "8192"):
        put(f"fake_quant_rtn_g128_vs_copy_{n}", lambda n=n: fq[n]["copy_us"] / fq[n]["rtn_g128_kernel_us"])
        put(f"fake_quant_rtn_g128_api_vs_copy_{n}", lambda n=n: fq[n]["copy_us"] / fq[n]["rtn_g128_api_us"])
        put(f"fake_quant_nf4_vs_copy_{n}", lambda n=n: fq[n]["copy_us"] / fq[n]["nf4_kernel_us"])
    put("fake_quant_nf4_api_vs_copy_8192", lambda: fq["8192"]["copy_us"] / fq["8192"]["nf4_api_us"])
    put("capture_vs_forward_smollm2", lambda: cp["smollm2"]["speed_vs_forward_8_batches"])
    put("capture_vs_forward_smollm2_1_batch", lambda: cp["smollm2"]["speed_vs_forward"])
    put("capture_vs_forward_llama2048", lambda: cp["llama2048"]["speed_vs_forward_8_batches"])
    put("capture_vs_forward_llama2048_1_batch", lambda: cp["llama2048"]["speed_vs_forward"])
    int4 = {k: v for k, v in mm.get("8192_b1", {}).items() if "int4" in k}
    best = max(int4, key=lambda k: int4[k]["speed_vs_fp16"]) if int4 else None
    keys["int4_kernel_batch1_8192"] = best
    put("int4_vs_fp16_batch1_8192", lambda: int4[best]["speed_vs_fp16"])
    put("int4_vs_roofline_batch1_8192", lambda: int4[best]["speed_vs_roofline"])
    put("qviz_triton_int4_vs_fp16_batch1_8192", lambda: mm["8192_b1"]["qviz triton int4 (g128)"]["speed_vs_fp16"])
    put("qviz_triton_int4_vs_roofline_batch1_8192", lambda: mm["8192_b1"]["qviz triton int4 (g128)"]["speed_vs_roofline"])
    put("bnb_nf4_vs_fp16_batch1_8192", lambda: mm["8192_b1"]["bnb nf4"]["speed_vs_fp16"])
    return keys


def markdown(r: dict[str, Any], keys: dict[str, Any], command: str) -> str:
    env = r["environment"]
    lines = ["# GPU results (issue 14)", "",
             f"Measured in one run of `{command}` on **{env['gpu']}** ({env['nvidia_smi']}), "
             f"torch {env['torch']} (CUDA {env['cuda']}), Triton {env['triton']}, bitsandbytes {env['bitsandbytes']}, "
             f"transformers {env['transformers']}, Python {env['python']}, {r['date']}.", "",
             "A ratio is **reference time / measured time**: above 1 means faster than the reference. "
             "Timings are medians of CUDA-event timed runs with the L2 cache flushed between runs "
             "(`triton.testing.do_bench`); whole-model timings are wall medians around a synchronised call.", "",
             "## Headline ratios", "", "| key | value | meaning |", "| --- | --- | --- |"]
    for k, v in keys.items():
        if k != "gpu":
            lines.append(f"| `{k}` | {v if v is not None else 'did not run'} | {KEY_MEANINGS.get(k, '')} |")
    lines += ["", "## Fake-quant vs a device-to-device copy (float32, µs)", "",
              "| n×n | copy | RTN g128 kernel | RTN g128 `fake_quantize` | RTN w8 per-channel | NF4 kernel | NF4 `fake_quantize` | FP4 `fake_quantize` | torch path (before) | bitsandbytes NF4 q+dq |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, f in r["fake_quant"].items():
        g = lambda k, f=f: f"{f[k]:.1f}" if k in f else "—"  # noqa: E731
        lines.append(f"| {n}² | {g('copy_us')} | {g('rtn_g128_kernel_us')} | {g('rtn_g128_api_us')} | {g('rtn_w8_channel_api_us')} | "
                     f"{g('nf4_kernel_us')} | {g('nf4_api_us')} | {g('fp4_api_us')} | {g('rtn_g128_torch_path_us')} | {g('bnb_nf4_quant_dequant_us')} |")
    lines += ["", f"Copy bandwidth (bytes read + written): {r['fake_quant']['8192']['copy_bandwidth_gbps']:.0f} GB/s at 8192².",
              "", "## Matmul: time (µs), speed vs fp16, speed vs the HBM roofline", "",
              "Weight n×n, activations fp16 (bf16 for bf16 and tinygemm). Roofline = (weight bytes as stored + activations in and out) / measured copy bandwidth.",
              "Host µs: the host's time per call when calls are launched back to back (launch overhead); "
              "the device time (µs) hides it while it is shorter than the L2 flush before each timed run.",
              "", "| shape, batch | kernel | µs | vs fp16 | vs roofline | host µs |", "| --- | --- | --- | --- | --- | --- |"]
    for case, kernels in r["matmul"].items():
        for name, v in kernels.items():
            lines.append(f"| {case} | {name} | {v['time_us']:.1f} | {v['speed_vs_fp16']:.2f} | {v['speed_vs_roofline']:.2f} | "
                         f"{v.get('host_us', float('nan')):.1f} |")
    lines += ["", "## Capture vs a plain forward (float32, batches of 8×256 tokens)", "",
              "| model | layers captured | forward ms | capture ms | forward/capture | 8 batches: forward/capture | host Numba instead: forward/capture |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in r["capture"].items():
        lines.append(f"| {name} | {c['layers_captured']} | {c['forward_ms']:.1f} | {c['capture_ms']:.1f} | {c['speed_vs_forward']:.2f} | "
                     f"{c['speed_vs_forward_8_batches']:.2f} | {c['speed_vs_forward_host_numba']:.2f} |")
    ck = r.get("capture_kernel")
    if ck:
        lines += ["", f"Grouped statistics launch over {ck['layers']} activations of {ck['rows']} rows (µs; the "
                  f"library default {ck['library_default']}, the capture rows above ran the best, `{ck['best']}`): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in ck["grouped_us"].items())
                  + f"; one launch per layer instead: {ck['per_layer_launches_us']:.0f}."]
    cmp = r.get("compare")
    if cmp:
        lines += ["", f"## `qviz.compare` on the GPU (SmolLM2-135M shapes, random weights), priced on `{cmp['hardware_row']}` "
                  f"at {cmp['usd_per_hour']} USD/h", "", f"usd_per_1m: {cmp['usd_per_1m_long_name']}.", "",
                  "| config | kernel | latency ms | throughput | USD / 1M tokens |", "| --- | --- | --- | --- | --- |"]
        for label, c in cmp["configs"].items():
            lines.append(f"| {label} | {c.get('kernel', '')} | {c.get('latency_ms', float('nan')):.2f} | "
                         f"{c.get('throughput', float('nan')):.1f} | {c.get('usd_per_1m', float('nan')):.4f} |")
    lines += ["", "## What did not run", ""]
    lines += [f"- {k}: {v}" for k, v in r["failed"].items()] or ["- everything above ran."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent), help="folder for RESULTS.json and RESULTS.md")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--no-sweep", action="store_true", help="skip the fake-quant tile sweep (measured before)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU.")
    r: dict[str, Any] = {"environment": environment(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    r["fake_quant"] = {str(n): fake_quant(n, sweep=not args.no_sweep) for n in (4096, 8192)}
    print(json.dumps(r["fake_quant"], indent=1), flush=True)
    bw = r["fake_quant"]["8192"]["copy_bandwidth_gbps"]
    r["matmul"] = {f"{n}_b{b}": matmul(n, b, bw) for n in (4096, 8192) for b in (1, 32)}
    print(json.dumps(r["matmul"], indent=1), flush=True)
    partial = Path(args.out) / "RESULTS.partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(r, indent=1, default=str))
    r["capture_kernel"] = attempt("capture kernel sweep", capture_kernel_sweep)
    print(json.dumps(r["capture_kernel"], indent=1), flush=True)
    smol = random_llama(576, 1536, 30, 9, 3, 49152)
    r["capture"] = {"smollm2": capture_vs_forward(smol, profile=True)}
    big = random_llama(2048, 5632, 4, 16, 4, 32000)
    r["capture"]["llama2048"] = capture_vs_forward(big)
    del big
    print(json.dumps(r["capture"], indent=1), flush=True)
    partial.write_text(json.dumps(r, indent=1, default=str))
    if not args.skip_compare:
        r["compare"] = attempt("compare on the GPU", lambda: compare_on_gpu(smol))
    r["failed"] = dict(FAILED)
    keys = summarise(r)
    command = "python benchmarks/gpu.py --out benchmarks" + (" --no-sweep" if args.no_sweep else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.json").write_text(json.dumps({**keys, "command": command, "details": r}, indent=1, default=str))
    (out / "RESULTS.md").write_text(markdown(r, keys, command))
    print(json.dumps(keys, indent=1))


if __name__ == "__main__":
    main()
