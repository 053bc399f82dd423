"""Fingerprint the numbers qviz computes, to hold them still through a refactor.

Runs ``layer_error``, ``capture``, ``fake_quantize`` and ``quantize`` with RTN,
GPTQ, AWQ, SmoothQuant, NF4/FP4 (the generic CPU kernel), the GGUF and FP
formats and HQQ on the embedded digits CNN and MiniLM, and writes, for every
result, a SHA-256 of its exact bytes plus a few readable values. Run it before
a change and after it, then compare:

    python benchmarks/refactor_fingerprint.py --out before.json
    ... refactor ...
    python benchmarks/refactor_fingerprint.py --out after.json --compare before.json

``--compare`` exits 1 and names each result whose bytes changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

import qviz


def _digest(obj) -> str:
    h = hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().contiguous().numpy()
    if isinstance(obj, np.ndarray):
        h.update(str(obj.dtype).encode() + str(obj.shape).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj):
            h.update(k.encode())
            h.update(_digest(obj[k]).encode())
    else:
        h.update(repr(obj).encode())
    return h.hexdigest()[:16]


def _dataset(ds) -> dict:
    """Digest of every data variable of an xarray Dataset (values and dims), plus its first value."""
    out = {}
    for name in sorted(ds.data_vars):
        values = np.asarray(ds[name].values)
        if values.dtype == object:
            values = np.asarray([repr(v) for v in values.ravel()])
        out[name] = {"sha": _digest(values), "dims": list(ds[name].dims)}
        if values.dtype.kind == "f" and values.size:
            out[name]["first"] = repr(float(values.ravel()[0]))  # a string, so NaN equals NaN
    return out


def _quantized(model, cfg, calib) -> dict:
    q = qviz.quantize(model, cfg, calib=calib, progress=False)
    state = {k: v for k, v in q.module.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"state": _digest(state), "n_tensors": len(state)}


def fingerprint() -> dict:
    torch.manual_seed(0)
    out: dict = {}
    rtn4 = qviz.RTN(bits=4, group_size=32)
    # digits-cnn: a CNN whose conv and linear layers all quantize (rows of 9 and 144: one scale per channel)
    ch = {"group_size": None}
    methods = [qviz.RTN(bits=4, **ch), qviz.RTN(bits=3, symmetric=True, **ch), qviz.RTN(bits=4, clip_search=True, **ch),
               qviz.GPTQ(bits=4, **ch), qviz.AWQ(bits=4, **ch), qviz.SmoothQuant(), qviz.HQQ(bits=4, **ch),
               qviz.BnbNF4(), qviz.BnbFP4(), qviz.BnbInt8()]
    digits = qviz.load("digits-cnn")
    dcal = qviz.calibration_data(digits, n=64)
    out["digits/capture"] = _dataset(qviz.capture(digits, dcal, progress=False))
    out["digits/layer_error"] = _dataset(qviz.layer_error(digits, methods, calib=dcal))
    for cfg in (qviz.RTN(bits=4, **ch), qviz.GPTQ(bits=4, **ch), qviz.AWQ(bits=4, **ch), qviz.SmoothQuant()):
        out[f"digits/quantize/{cfg.label}"] = _quantized(digits, cfg, dcal)
    # MiniLM: a real pretrained transformer with outlier channels
    minilm = qviz.load("minilm")
    mcal = qviz.calibration_data(minilm, n=16)
    out["minilm/capture"] = _dataset(qviz.capture(minilm, mcal, progress=False))
    out["minilm/layer_error"] = _dataset(qviz.layer_error(
        minilm, [qviz.RTN(bits=4, group_size=32), qviz.GPTQ(bits=4, group_size=32), qviz.AWQ(bits=4, group_size=32),
                 qviz.SmoothQuant(), qviz.GGUF("Q4_0"), qviz.MXFP4(), qviz.FP8()],
        calib=mcal, layers="encoder.layer.0.*"))
    for cfg in (rtn4, qviz.GPTQ(bits=4, group_size=32), qviz.SmoothQuant()):
        out[f"minilm/quantize/{cfg.label}"] = _quantized(minilm, cfg, mcal)
    # fake_quantize on one weight, every format family
    w = minilm.module.get_submodule("encoder.layer.0.attention.self.query").weight.detach()
    for cfg in (qviz.RTN(bits=b, group_size=g) for b in (2, 3, 4, 8) for g in (None, 32)):
        out[f"fake_quantize/{cfg.label}"] = _digest(qviz.fake_quantize(w, cfg))
    for cfg in (qviz.BnbNF4(), qviz.BnbFP4(), qviz.GGUF("Q4_0"), qviz.GGUF("Q5_1"), qviz.MXFP4(), qviz.NVFP4(),
                qviz.FP8(), qviz.HQQ(bits=4, group_size=64)):
        out[f"fake_quantize/{cfg.label}"] = _digest(qviz.fake_quantize(w, cfg))
    for cfg in (rtn4, qviz.RTN(bits=8, group_size=None), qviz.GPTQ(bits=4, group_size=32), qviz.BnbNF4(),
                qviz.BnbInt8(), qviz.GGUF("Q4_0"), qviz.GGUF("Q4_K"), qviz.MXFP4(), qviz.NVFP4(), "fp16"):
        label = cfg if isinstance(cfg, str) else cfg.label
        out[f"project_size/{label}"] = qviz.project_size(7e9, cfg, row_length=4096, fp_params=2.6e8)
    return out


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{path}/{k}" if path else k)]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def _leaves(d) -> int:
    return sum(_leaves(v) for v in d.values()) if isinstance(d, dict) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path, help="an earlier fingerprint: exit 1 if any result differs")
    args = ap.parse_args(argv)
    fp = fingerprint()
    args.out.write_text(json.dumps(fp, indent=1, sort_keys=True))
    print(f"{len(fp)} results, {_leaves(fp)} fingerprinted values -> {args.out}")
    if args.compare:
        diffs = _diff(json.loads(args.compare.read_text()), fp)
        print(f"vs {args.compare}: {len(diffs)} differ")
        for d in diffs:
            print("  ", d)
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
