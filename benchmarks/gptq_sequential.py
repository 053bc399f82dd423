"""Sequential GPTQ on SmolLM2-135M: block by block (qviz.quant._blockwise) against the per-layer path, in one run.

Prints the time of ``qviz.quantize(m, qviz.GPTQ(bits=4, group_size=64), calib=qviz.calibration_data(m, n=16))``
(16 chunks of 128 tokens), split into GPTQ's own arithmetic (``GPTQMethod.quantize_layer``, the same in both
paths) and computing the layers' inputs, with the decoder-block forward calls counted; then the per-layer
path (one full calibration pass per layer) on block 0's 7 layers, extrapolated to the 211 layers (the whole
run would take hours on 2 cores).

Run:  nice python benchmarks/gptq_sequential.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaDecoderLayer  # noqa: E402

import qviz  # noqa: E402
import qviz.quant._blockwise as blockwise  # noqa: E402
from qviz.quant.methods.gptq import GPTQMethod  # noqa: E402


def main() -> None:
    model = qviz.load("smollm2-135m")
    calib = qviz.calibration_data(model, n=16)
    cfg = qviz.GPTQ(bits=4, group_size=64)
    original = GPTQMethod.quantize_layer
    spent, calls = [0.0], [0]

    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    def count(module, args):
        if type(module) is LlamaDecoderLayer:
            calls[0] += 1

    GPTQMethod.quantize_layer = timed
    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        batch = model.prepare(calib)
        model.run(batch)  # warm-up
        t = time.perf_counter()
        model.run(batch)
        print(f"one forward of the 16 x 128 calibration tokens: {time.perf_counter() - t:.1f} s", flush=True)

        spent[0], calls[0] = 0.0, 0
        t = time.perf_counter()
        q = qviz.quantize(model, cfg, calib=calib, progress=False)
        total, arithmetic = time.perf_counter() - t, spent[0]
        s = q.quantization.extra["sequential"]
        print(f"block by block: {total:.1f} s ({total / 60:.1f} min): {arithmetic:.1f} s GPTQ arithmetic on 211 layers, "
              f"{total - arithmetic:.1f} s computing inputs; {calls[0]} decoder-block calls in all; {s}", flush=True)

        block0 = [n for n in qviz.models.quantizable_layers(model) if n.startswith("model.layers.0.")]
        spent[0], calls[0] = 0.0, 0
        hidden = blockwise.repeated_blocks
        blockwise.repeated_blocks = lambda m: None  # the per-layer path, as for a model without repeated blocks
        try:
            t = time.perf_counter()
            qviz.quantize(model, cfg, calib=calib, layers=block0, progress=False)
            old = time.perf_counter() - t
        finally:
            blockwise.repeated_blocks = hidden
        per_layer = (old - spent[0]) / len(block0)
        print(f"per-layer path, block 0's {len(block0)} layers: {old:.1f} s, {per_layer:.1f} s of inputs per layer, "
              f"{calls[0]} block calls; whole model estimated: 211 x {per_layer:.1f} s + {arithmetic:.0f} s = "
              f"{(211 * per_layer + arithmetic) / 60:.0f} min, {211 * 30} block calls", flush=True)
    finally:
        handle.remove()
        GPTQMethod.quantize_layer = original


if __name__ == "__main__":
    main()
