"""Shared by the decoder benchmarks (llm_quality, gguf_quality, fp_formats): one reference, rows printed as they finish.

``qviz.compare`` evaluates every config and returns at the end, and recomputes
the full-precision row (a second forward pass over all the held-out text).
On a loaded 2-core machine a config over 10,000 scored tokens takes minutes,
so these benchmarks instead

* compute the reference's log-probabilities once per (model, chunks, seq_len)
  and keep them in a ``.npy`` file (llama.cpp's ``--kl-divergence-base``),
  reused by the next benchmark that scores the same text;
* score each config with :func:`qviz.evaluate.decoder.decoder_quality` (the
  numbers ``compare`` reports) and print its row the moment it is done, so a
  run cut short keeps what it measured.

The fp32 row's perplexity comes from the reference's own log-probabilities.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHE = Path(os.environ.get("QVIZ_BENCH_REF_DIR", Path(tempfile.gettempdir()) / "qviz-bench-ref"))
DEVICE = os.environ.get("QVIZ_BENCH_DEVICE", "cpu")  # e.g. "cuda": the model, its copies and their forwards there


def on_device(model):
    """``model`` moved to ``QVIZ_BENCH_DEVICE`` (default the CPU, where it already is)."""
    if DEVICE == "cpu":
        return model
    return model.with_module(model.module.to(DEVICE))

HEAD = (f"{'config':<40} {'PPL':>8} {'±':>6} {'ΔPPL%':>7} {'mean KL':>8} {'±':>7} {'KL p99':>7} "
        f"{'top-1%':>6} {'bits/w':>6} {'size MB':>7} {'secs':>5}")


def reference(model, n_chunks: int, seq_len: int = 256):
    """The full-precision log-probabilities on ``n_chunks`` held-out chunks, from the file if an earlier run made it."""
    from qviz.evaluate.accuracy import PerplexityTask
    from qviz.evaluate.decoder import ReferenceLogProbs, reference_log_probs

    def key(n: int):
        ids = PerplexityTask(n=n, seq_len=seq_len).data(model)["input_ids"].cpu()
        w = next(model.module.parameters()).detach()
        digest = hashlib.sha256(ids.numpy().tobytes() + w.flatten()[:4096].cpu().numpy().tobytes()).hexdigest()[:16]
        return ids, CACHE / f"{model.name}-{n}x{seq_len}-{digest}.npy"

    data = PerplexityTask(n=n_chunks, seq_len=seq_len).data(model)
    ids, path = key(n_chunks)
    first = seq_len // 2
    t0 = time.perf_counter()
    # this text, or a longer run of the same chunks (its first n_chunks rows are these)
    found = sorted(CACHE.glob(f"{model.name}-*x{seq_len}-*.npy")) if CACHE.exists() else []
    for f in [path, *found]:
        if not f.exists() or f.name.endswith(".part.npy"):
            continue
        n_file = int(f.name[len(model.name) + 1:].split("x")[0])
        if n_file < n_chunks or (f != path and key(n_file)[1] != f) or not torch.equal(key(n_file)[0][:n_chunks], ids):
            continue
        try:
            lp = np.load(f, mmap_mode="r")
        except (OSError, ValueError):
            continue
        if lp.shape[1] == seq_len - 1 - first:
            print(f"reference log-probabilities: the first {n_chunks} chunks of {f} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
            return ReferenceLogProbs(ids, first, lp[:n_chunks], f, model.name)
    CACHE.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.stem + ".part.npy")
    ref = reference_log_probs(model, data, spill_to=part)
    part.replace(path)
    print(f"reference log-probabilities computed in {time.perf_counter() - t0:.0f} s, kept in {path}", flush=True)
    return ReferenceLogProbs(ids, first, np.load(path, mmap_mode="r"), path, model.name)


def reference_row(model, ref) -> dict[str, Any]:
    """Perplexity ± stderr of the reference itself (from its stored log-probabilities) and its size."""
    from qviz.evaluate import size as size_mod

    lp = np.asarray(ref.log_probs)
    tg = ref.targets.numpy()
    nll = -np.take_along_axis(lp, tg[..., None], axis=-1)[..., 0].astype(np.float64).ravel()
    mean = float(nll.mean())
    se = math.sqrt(max(float((nll * nll).mean()) - mean * mean, 0.0) / (nll.size - 1))
    size = size_mod.model_size(model)
    return {"label": "fp32", "perplexity": math.exp(mean), "perplexity_stderr": math.exp(mean) * se,
            "delta_perplexity_pct": 0.0, "kl_divergence": 0.0, "kl_divergence_stderr": 0.0, "kl_divergence_p99": 0.0,
            "agreement": 1.0, "bits_per_weight": 32.0, "size_bytes": size["total_bytes"], "seconds": 0.0,
            "n_scored_tokens": int(nll.size)}


def evaluate(model, cfg, ref, *, calib=None, prompts=None, max_new_tokens: int = 32, skip=None,
             keep_model: bool = False) -> dict[str, Any]:
    """Quantize ``model`` with ``cfg`` and score it against ``ref``; the answers to ``prompts`` too (``model``: the copy)."""
    import qviz
    from qviz.evaluate import size as size_mod
    from qviz.evaluate.decoder import decoder_quality

    t0 = time.perf_counter()
    q = qviz.quantize(model, cfg, calib=calib, progress=False, skip=skip or None)
    t_q = time.perf_counter() - t0
    row = dict(decoder_quality(q, ref))
    size = size_mod.model_size(q)
    row.update(label=cfg.label, bits_per_weight=size["bits_per_weight"], size_bytes=size["total_bytes"],
               quantize_seconds=t_q)
    if prompts:
        row["answers"] = qviz.generate(q, list(prompts), max_new_tokens)
    row["seconds"] = time.perf_counter() - t0
    if keep_model:
        row["model"] = q
    return row


def line(r: dict[str, Any]) -> str:
    return (f"{r['label']:<40} {r['perplexity']:>8.3f} {r['perplexity_stderr']:>6.3f} {r['delta_perplexity_pct']:>+7.2f} "
            f"{r['kl_divergence']:>8.5f} {r['kl_divergence_stderr']:>7.5f} {r['kl_divergence_p99']:>7.4f} "
            f"{100 * r['agreement']:>6.2f} {r['bits_per_weight']:>6.3f} {r['size_bytes'] / 1e6:>7.2f} {r['seconds']:>5.0f}")


def peak_rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def peak_rss_gb() -> float:
    for text in Path("/proc/self/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1]) / 1e6
    return float("nan")

