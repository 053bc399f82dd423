"""Decoder quality against a full-precision reference, the way llama.cpp's ``perplexity --kl-divergence`` reports it.

The text is token chunks (:func:`qviz.data.token_batches`, each starting with
BOS). As llama.cpp does, each chunk's first half is context only: the logits at
positions ``seq_len // 2 .. seq_len - 2`` are scored against the next token.
:func:`reference_log_probs` runs the reference once and keeps its
log-probabilities of those positions (in memory, or in a file on disk for text
too big to hold twice, as ``--kl-divergence-base`` does); :func:`decoder_quality`
then scores any number of quantized copies against it.

Per scored token ``i`` with correct next token ``t``:

* negative log-likelihood ``nll_i = -log p(t)``; perplexity ``exp(mean nll)``,
  its standard error ``ppl * sqrt((mean(nll²) - mean(nll)²) / (n - 1))``;
* ``ln(PPL(Q)/PPL(base))`` with the standard error of a difference of two
  correlated means, and ``PPL(Q)/PPL(base)`` = its ``exp``;
* ``KL_i = Σ_v p_ref(v) (log p_ref(v) - log p(v))`` (exact, in float32 over
  the whole vocabulary; llama.cpp skips reference log-probabilities below −16
  because it stores them in 16 bits), its mean with standard error, median
  (mean of the two middle values for an even count), percentiles by linear
  interpolation between order statistics (llama.cpp's) and max;
* ``Δp_i = p(t) - p_ref(t)``: mean ± standard error, percentiles, RMS;
* same top-1 token as the reference (``agreement``) ± ``sqrt(f (1 - f) / (n - 1))``.

Examples
--------
>>> import qviz
>>> from qviz.evaluate.decoder import decoder_quality, reference_log_probs
>>> m = qviz.load("tiny-llama")
>>> data = qviz.data.token_batches(m, ["A few words of text to score here."], seq_len=16)
>>> ref = reference_log_probs(m, data)
>>> r = decoder_quality(m, ref)
>>> r["kl_divergence"], r["agreement"], r["perplexity_ratio"]
(0.0, 1.0, 1.0)
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from qviz.models import QvizModel

__all__ = ["METRIC_ATTRS", "ReferenceLogProbs", "decoder_quality", "reference_log_probs"]

SPILL_BYTES = 1 << 30
"""Reference log-probabilities larger than this go to a file on disk unless told otherwise."""

METRIC_ATTRS: dict[str, dict[str, str]] = {
    "perplexity": {"long_name": "perplexity on held-out text (second half of each chunk scored)", "units": "1"},
    "perplexity_stderr": {"long_name": "standard error of the perplexity", "units": "1"},
    "perplexity_ratio": {"long_name": "PPL(config) / PPL(reference)", "units": "1"},
    "perplexity_ratio_stderr": {"long_name": "standard error of PPL(config) / PPL(reference)", "units": "1"},
    "log_perplexity_ratio": {"long_name": "ln(PPL(config) / PPL(reference))", "units": "1"},
    "delta_perplexity_pct": {"long_name": "change in perplexity from the reference", "units": "%"},
    "kl_divergence": {"long_name": "mean KL(reference ‖ config) of the next-token distributions", "units": "nat"},
    "kl_divergence_stderr": {"long_name": "standard error of the mean KL divergence", "units": "nat"},
    "kl_divergence_median": {"long_name": "median per-token KL divergence", "units": "nat"},
    "kl_divergence_p90": {"long_name": "90th percentile of the per-token KL divergence", "units": "nat"},
    "kl_divergence_p99": {"long_name": "99th percentile of the per-token KL divergence", "units": "nat"},
    "kl_divergence_p999": {"long_name": "99.9th percentile of the per-token KL divergence", "units": "nat"},
    "kl_divergence_max": {"long_name": "largest per-token KL divergence", "units": "nat"},
    "delta_p_mean": {"long_name": "mean change in the probability of the correct token (Δp)", "units": "1"},
    "delta_p_stderr": {"long_name": "standard error of the mean Δp", "units": "1"},
    "delta_p_rms": {"long_name": "root mean square Δp", "units": "1"},
    "delta_p_p01": {"long_name": "1st percentile of Δp", "units": "1"},
    "delta_p_p05": {"long_name": "5th percentile of Δp", "units": "1"},
    "delta_p_median": {"long_name": "median Δp", "units": "1"},
    "delta_p_p95": {"long_name": "95th percentile of Δp", "units": "1"},
    "delta_p_p99": {"long_name": "99th percentile of Δp", "units": "1"},
    "agreement": {"long_name": "same top-1 token as the reference", "units": "fraction"},
    "agreement_stderr": {"long_name": "standard error of the same-top-1 share", "units": "fraction"},
    "accuracy": {"long_name": "next-token top-1 accuracy", "units": "fraction"},
    "n_scored_tokens": {"long_name": "tokens scored", "units": "tokens"},
}


@dataclass
class ReferenceLogProbs:
    """The reference's log-probabilities on scored positions, computed once and reused for every config.

    Attributes
    ----------
    input_ids : torch.Tensor
        ``[n_chunks, seq_len]`` the text.
    first : int
        The first scored position (``seq_len // 2``): logits at ``first .. seq_len - 2`` are scored.
    log_probs : numpy.ndarray
        ``[n_chunks, n_scored, vocab]`` float32 (a ``numpy.memmap`` when spilled to disk).
    path : pathlib.Path or None
        The file behind ``log_probs`` when spilled.
    model_name : str
        The reference's name.
    """

    input_ids: torch.Tensor
    first: int
    log_probs: np.ndarray
    path: Path | None = None
    model_name: str = ""

    @property
    def n_scored(self) -> int:
        """Scored tokens in all."""
        return int(self.log_probs.shape[0] * self.log_probs.shape[1])

    @property
    def targets(self) -> torch.Tensor:
        """``[n_chunks, n_scored]`` the correct next tokens."""
        return self.input_ids[:, self.first + 1 :]


def _check_data(data: Any) -> torch.Tensor:
    if not (isinstance(data, dict) and "input_ids" in data):
        raise TypeError(
            "Decoder quality needs token batches: a dict with 'input_ids' [n_chunks, seq_len], e.g. "
            f"qviz.eval_data(model)[0] or qviz.data.token_batches(model, texts); got {type(data).__name__}."
        )
    ids = data["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] == 0:
        raise ValueError(f"input_ids must be a non-empty [n_chunks, seq_len] tensor; got {getattr(ids, 'shape', ids)}.")
    if ids.shape[1] < 3:
        raise ValueError(f"Each chunk needs at least 3 tokens (half context, then scored ones); got seq_len={ids.shape[1]}.")
    if "attention_mask" in data and not bool(data["attention_mask"].bool().all()):
        raise ValueError("Token batches for decoder quality have no padding (each chunk is full); build them with qviz.data.token_batches.")
    return ids.cpu()


def _check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (chunks per forward pass); got {batch_size!r}.")
    return batch_size


def _scored_log_probs(model: QvizModel, ids: torch.Tensor, first: int) -> torch.Tensor:
    """``[b, n_scored, vocab]`` float32 log-probabilities at the scored positions of a batch of chunks."""
    inputs = {"input_ids": ids.to(model.device), "attention_mask": torch.ones_like(ids, device=model.device)}
    logits = model.run(inputs)[:, first:-1]  # [b, n_scored, vocab]
    return F.log_softmax(logits.float(), dim=-1).cpu()


@torch.no_grad()
def reference_log_probs(
    model: QvizModel,
    data: dict[str, torch.Tensor],
    *,
    batch_size: int = 4,
    spill_to: str | os.PathLike[str] | bool | None = None,
) -> ReferenceLogProbs:
    """Run the full-precision ``model`` once on ``data`` and keep its scored log-probabilities.

    Parameters
    ----------
    model
        The reference decoder.
    data
        Token batches (``input_ids`` ``[n_chunks, seq_len]``, no padding).
    batch_size
        Chunks per forward pass.
    spill_to
        None: in memory unless larger than 1 GiB (then a temporary file);
        True: a temporary file; False: in memory; a path: that file.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-llama")
    >>> ref = reference_log_probs(m, qviz.data.token_batches(m, ["Text to read, and then some."], seq_len=10))
    >>> ref.log_probs.shape
    (3, 4, 259)
    """
    if model.kind != "decoder":
        raise ValueError(f"reference_log_probs needs a decoder; {model.name!r} is a {model.kind!r}.")
    ids = _check_data(data)
    batch_size = _check_batch_size(batch_size)
    n, seq = ids.shape
    first = seq // 2
    n_scored = seq - 1 - first
    head = _scored_log_probs(model, ids[:batch_size], first).numpy()  # [b, n_scored, vocab]
    vocab = head.shape[-1]
    nbytes = n * n_scored * vocab * 4
    path = None
    if spill_to is True or (spill_to is None and nbytes > SPILL_BYTES):
        fd, name = tempfile.mkstemp(prefix="qviz-reference-logprobs-", suffix=".npy")
        os.close(fd)
        path = Path(name)
    elif spill_to not in (None, False, True):
        path = Path(spill_to)
    if path is not None:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n_scored, vocab))
    else:
        out = np.empty((n, n_scored, vocab), dtype=np.float32)
    out[:batch_size] = head
    for i in range(batch_size, n, batch_size):
        out[i : i + batch_size] = _scored_log_probs(model, ids[i : i + batch_size], first).numpy()
    if path is not None:
        out.flush()
    return ReferenceLogProbs(ids, first, out, path, model.name)


def _mean_stderr(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error ``sqrt((mean(x²) - mean(x)²) / (n - 1))`` (0 for n <= 10, as llama.cpp)."""
    n = x.size
    mean = float(x.mean())
    var = float((x * x).mean()) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def _median(x: np.ndarray) -> float:
    return float(np.median(x))


def _percentile(sorted_x: np.ndarray, fraction: float) -> float:
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    return float(np.quantile(sorted_x, fraction))


@torch.no_grad()
def decoder_quality(
    model: QvizModel,
    reference: ReferenceLogProbs | QvizModel,
    data: dict[str, torch.Tensor] | None = None,
    *,
    batch_size: int = 4,
    per_token: bool = False,
) -> dict[str, Any]:
    """Perplexity ± stderr, ratio to the reference, KL divergence, Δp and same-top-1 of ``model``.

    Parameters
    ----------
    model
        The decoder under test (a quantized copy, say).
    reference
        A :class:`ReferenceLogProbs` (computed once, reused across configs) or
        the full-precision decoder itself (then ``data`` is required and the
        reference is run here).
    data
        Token batches; only when ``reference`` is a model.
    batch_size
        Chunks per forward pass.
    per_token
        Also return ``"kl_per_token"``, ``"delta_p_per_token"`` and ``"nll_per_token"`` arrays.

    Returns
    -------
    dict
        The numbers named in :data:`METRIC_ATTRS` (see the module docstring for the definitions).

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-llama")
    >>> data = qviz.data.token_batches(m, ["Some held-out words for the test."], seq_len=12)
    >>> q = qviz.quantize(m, qviz.RTN(bits=2, group_size=16))
    >>> r = decoder_quality(q, m, data)
    >>> r["kl_divergence"] > 0, r["n_scored_tokens"]
    (True, 15)
    """
    if model.kind != "decoder":
        raise ValueError(f"decoder_quality needs a decoder; {model.name!r} is a {model.kind!r}.")
    batch_size = _check_batch_size(batch_size)
    if isinstance(reference, QvizModel):
        if data is None:
            raise ValueError("Pass data= (token batches) when the reference is a model, or pass a ReferenceLogProbs.")
        reference = reference_log_probs(reference, data, batch_size=batch_size, spill_to=False)
    elif not isinstance(reference, ReferenceLogProbs):
        raise TypeError(f"reference must be a ReferenceLogProbs or a decoder QvizModel; got {type(reference).__name__}.")
    elif data is not None and not torch.equal(_check_data(data), reference.input_ids):
        raise ValueError("data is not the text the reference was computed on; leave data=None to use the reference's.")
    ids, first = reference.input_ids, reference.first
    targets = reference.targets  # [n_chunks, n_scored]
    kl, dp, nll, nll_ref, same, right = [], [], [], [], [], []
    for i in range(0, len(ids), batch_size):
        lp = _scored_log_probs(model, ids[i : i + batch_size], first)  # [b, s, vocab]
        lr = torch.from_numpy(np.asarray(reference.log_probs[i : i + batch_size]))  # [b, s, vocab]
        if lp.shape != lr.shape:
            raise ValueError(f"The model's vocabulary ({lp.shape[-1]}) differs from the reference's ({lr.shape[-1]}).")
        tg = targets[i : i + batch_size, :, None]  # [b, s, 1]
        lp_t, lr_t = lp.gather(-1, tg)[..., 0], lr.gather(-1, tg)[..., 0]  # [b, s]
        kl.append((lr.exp() * (lr - lp)).sum(-1).double().flatten())
        dp.append((lp_t.double().exp() - lr_t.double().exp()).flatten())
        nll.append(-lp_t.double().flatten())
        nll_ref.append(-lr_t.double().flatten())
        top = lp.argmax(-1)
        same.append((top == lr.argmax(-1)).flatten())
        right.append((top == tg[..., 0]).flatten())
    kl_a, dp_a = torch.cat(kl).numpy(), torch.cat(dp).numpy()
    nll_a, nll_r = torch.cat(nll).numpy(), torch.cat(nll_ref).numpy()
    n = kl_a.size
    out: dict[str, Any] = {"n_scored_tokens": int(n)}
    log_ppl, log_ppl_se = _mean_stderr(nll_a)
    log_ref, log_ref_se = _mean_stderr(nll_r)
    out["perplexity"] = math.exp(log_ppl)
    out["perplexity_stderr"] = out["perplexity"] * log_ppl_se
    cov = (float((nll_a * nll_r).mean()) - log_ppl * log_ref) / (n - 1) if n >= 10 else 0.0
    ratio_se = math.sqrt(max(log_ppl_se**2 + log_ref_se**2 - 2 * cov, 0.0))
    out["log_perplexity_ratio"] = log_ppl - log_ref
    out["perplexity_ratio"] = math.exp(log_ppl - log_ref)
    out["perplexity_ratio_stderr"] = out["perplexity_ratio"] * ratio_se
    out["delta_perplexity_pct"] = 100.0 * (out["perplexity_ratio"] - 1.0)
    out["kl_divergence"], out["kl_divergence_stderr"] = _mean_stderr(kl_a)
    out["kl_divergence"] = max(out["kl_divergence"], 0.0)  # float rounding can leave -1e-9 for identical models
    ks = np.sort(kl_a)
    out["kl_divergence_median"] = _median(ks)
    out["kl_divergence_p90"] = _percentile(ks, 0.90)
    out["kl_divergence_p99"] = _percentile(ks, 0.99)
    out["kl_divergence_p999"] = _percentile(ks, 0.999)
    out["kl_divergence_max"] = float(ks[-1])
    out["delta_p_mean"], out["delta_p_stderr"] = _mean_stderr(dp_a)
    out["delta_p_rms"] = math.sqrt(float((dp_a * dp_a).mean()))
    ds = np.sort(dp_a)
    for key, f in (("p01", 0.01), ("p05", 0.05), ("p95", 0.95), ("p99", 0.99)):
        out[f"delta_p_{key}"] = _percentile(ds, f)
    out["delta_p_median"] = _median(ds)
    agree = float(torch.cat(same).double().mean())
    out["agreement"] = agree
    out["agreement_stderr"] = math.sqrt(agree * (1 - agree) / (n - 1)) if n > 1 else 0.0
    out["accuracy"] = float(torch.cat(right).double().mean())
    if per_token:
        out.update(kl_per_token=kl_a, delta_p_per_token=dp_a, nll_per_token=nll_a)
    return out
