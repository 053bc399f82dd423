"""Time per layer of GPTQ and AWQ (qviz.quant.methods) against straightforward torch versions of the same algorithms.

For each layer shape (384x1536 as in MiniLM's MLP, and 4096x4096 as in a 7B decoder) it
prints seconds per layer of

* ``qviz.quant.methods.gptq_quantize_weight`` (numba row-parallel block kernel, BLAS lazy updates,
  one Cholesky + one triangular inverse) and of a plain torch GPTQ written the way the reference
  implementation is (a Python loop over columns with vectorised row updates, lazy block updates,
  ``cholesky`` + ``cholesky_inverse`` + ``cholesky(upper=True)``), and the ratio of the two;
  the baseline is also timed with qviz's inverse, to isolate the column loop;
* ``qviz.quant.methods.awq_search`` (numba RTN kernel, Gram matrices where they are cheaper) and a
  plain torch AWQ (torch fake-quant, the output error as ``||X W^T - X W_hat^T||^2`` for every
  alpha, the clipping error from the per-group partial outputs of every token) with the same
  grid, tokens and clipping ratios, and the ratio.

Both sides get the same Hessian / inputs and the same number of threads. The baselines are
checked to give the same answer. Run on 2 CPU cores:

    taskset -c 0,1 python benchmarks/algorithms.py [--shapes 384x1536 4096x4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qviz.quant.methods import awq_search, gptq_hessian, gptq_quantize_weight  # noqa: E402
from qviz.quant.primitives import qparams_from_range  # noqa: E402

# --------------------------------------------------------------------------- plain torch GPTQ


def _torch_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max scale and zero per row of ``w`` ``[rows, cols]`` (float16-exact scales)."""
    scale, zero = qparams_from_range(w.amin(1), w.amax(1), bits)
    return scale, zero.float()


def plain_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float = 0.01,
               block_size: int = 128, fast_inverse: bool = False) -> tuple[torch.Tensor, float]:
    """GPTQ without act-order, written plainly in torch float32 (the reference's structure)."""
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * H.diagonal().mean() * torch.eye(cols)
    if fast_inverse:
        R = torch.linalg.cholesky(H.flip(0, 1)).flip(0, 1)
        U = torch.linalg.solve_triangular(R, torch.eye(cols), upper=True)
    else:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    qmax = 2**bits - 1
    loss = 0.0
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        E = torch.zeros_like(W1)
        for j in range(i2 - i1):
            c = i1 + j
            if c % group_size == 0:
                scale, zero = _torch_params(W[:, c:c + group_size], bits)
            w = W1[:, j]
            q = (torch.clamp(torch.round(w * torch.reciprocal(scale)) + zero, 0, qmax) - zero) * scale
            Q[:, c] = q
            e = (w - q) / U[c, c]
            loss += float((e * e).sum()) / 2
            W1[:, j:] -= e[:, None] * U[c, c:i2][None, :]
            E[:, j] = e
        W[:, i2:] -= E @ U[i1:i2, i2:]
    return Q, loss


# --------------------------------------------------------------------------- plain torch AWQ


def _torch_fake_quant(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    rows, cols = w.shape
    g = w.reshape(-1, group_size)
    scale, zero = qparams_from_range(g.amin(1), g.amax(1), bits)
    s, z = scale[:, None], zero.float()[:, None]
    q = (torch.clamp(torch.round(g * torch.reciprocal(s)) + z, 0, 2**bits - 1) - z) * s
    return q.reshape(rows, cols)


def plain_awq(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int, n_grid: int = 20,
              n_clip: int = 10, max_shrink: float = 0.5, row_batch: int = 64) -> tuple[float, float]:
    """AWQ scale + clip search written plainly in torch; returns (best alpha, final relative error)."""
    rows, cols = W.shape
    ref_out = X @ W.T
    ref = float((ref_out**2).sum())
    x_mean = X.abs().mean(0)
    best = (float("inf"), 0.0, None)
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.clamp(min=1e-4).pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        w_hat = _torch_fake_quant(W * s, bits, group_size) / s
        err = float(((X @ w_hat.T - ref_out) ** 2).sum())
        if err < best[0]:
            best = (err, alpha, s)
    _, alpha, s = best
    Ws, Xs = W * s, X / s
    ng = cols // group_size
    Xg = Xs.reshape(-1, ng, group_size)  # [tokens, groups, gs]
    ratios = 1.0 - np.arange(n_clip) * (max_shrink / n_clip)
    chosen = torch.ones(rows, ng)
    for r0 in range(0, rows, row_batch):  # batches of output rows, as the reference does
        wb = Ws[r0:r0 + row_batch].reshape(-1, ng, group_size)  # [b, groups, gs]
        org = torch.einsum("tgi,bgi->btg", Xg, wb)  # per-group partial outputs
        amax = wb.abs().amax(-1, keepdim=True)
        best_err = torch.full((wb.shape[0], ng), float("inf"))
        for ratio in ratios:
            clamped = torch.maximum(torch.minimum(wb, amax * ratio), -amax * ratio)
            q = _torch_fake_quant(clamped.reshape(wb.shape[0], cols), bits, group_size).reshape(wb.shape)
            err = ((torch.einsum("tgi,bgi->btg", Xg, q) - org) ** 2).sum(1)  # [b, groups]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            chosen[r0:r0 + row_batch] = torch.where(better, torch.full_like(err, float(ratio)),
                                                    chosen[r0:r0 + row_batch])
    amax = Ws.abs().reshape(rows, ng, group_size).amax(-1, keepdim=True)
    lim = amax * chosen[..., None]
    clamped = torch.maximum(torch.minimum(Ws.reshape(rows, ng, group_size), lim), -lim).reshape(rows, cols)
    w_hat = _torch_fake_quant(clamped, bits, group_size) / s
    return alpha, float(((X @ w_hat.T - ref_out) ** 2).sum()) / ref


# --------------------------------------------------------------------------- timing


def _time(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _problem(rows: int, cols: int, tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=gen)
    X *= torch.exp(torch.randn(cols, generator=gen))  # uneven channel scales, a few loud ones
    X[:, :8] *= 20
    W = torch.randn(rows, cols, generator=gen) * 0.02
    return W, X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["384x1536", "4096x4096"], help="OUTxIN layer shapes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gptq-tokens", type=int, default=4096, help="calibration tokens behind the Hessian")
    parser.add_argument("--awq-tokens", type=int, default=1024, help="calibration tokens AWQ searches on")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--skip-baseline-above", type=int, default=10**9,
                        help="skip the plain-torch AWQ for layers with more weights than this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}, numba threads={numba.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")
    b, g = args.bits, args.group_size
    W0, X0 = _problem(8, 256, 512)  # compile the JIT kernels before timing
    gptq_quantize_weight(W0, gptq_hessian(X0), b, g, act_order=False)
    awq_search(W0, X0, b, g, n_grid=2)
    for shape in args.shapes:
        rows, cols = (int(v) for v in shape.lower().split("x"))
        print(f"\n== {rows}x{cols} layer, {b}-bit, group {g} ==")
        W, X = _problem(rows, cols, args.gptq_tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            H = gptq_hessian(X)
        t_q, res = _time(lambda: gptq_quantize_weight(W, H, b, g, act_order=False))
        t_pf, (Q_pf, loss_pf) = _time(lambda: plain_gptq(W, H, b, g, fast_inverse=True))
        t_p, (Q_p, loss_p) = _time(lambda: plain_gptq(W, H, b, g))
        agree = float((res.weight_hat - Q_pf).abs().lt(1e-5).float().mean())
        print(f"GPTQ  qviz {t_q:8.2f} s/layer | plain torch {t_p:8.2f} s (ratio {t_q / t_p:.3f}) | "
              f"plain torch with qviz's inverse {t_pf:8.2f} s (ratio {t_q / t_pf:.3f})")
        print(f"      loss qviz {res.loss:.6g}, plain {loss_p:.6g}; {100 * agree:.2f}% of weights identical")
        act_t, act_res = _time(lambda: gptq_quantize_weight(W, H, b, g, act_order=True))
        print(f"      qviz with act_order (static groups) {act_t:.2f} s, loss {act_res.loss:.6g}")
        W, X = _problem(rows, cols, args.awq_tokens, seed=1)
        t_a, ds = _time(lambda: awq_search(W, X, b, g))
        line = f"AWQ   qviz {t_a:8.2f} s/layer ({args.awq_tokens} tokens, 20 alphas, 10 clip ratios)"
        if rows * cols <= args.skip_baseline_above:
            t_pa, (alpha_p, rel_p) = _time(lambda: plain_awq(W, X, b, g))
            line += f" | plain torch {t_pa:8.2f} s (ratio {t_a / t_pa:.3f})"
            print(line)
            print(f"      alpha qviz {float(ds.best_alpha):.2f} / plain {alpha_p:.2f}; relative error qviz "
                  f"{float(ds.rel_err):.5g} / plain {rel_p:.5g} (RTN {float(ds.rtn_rel_err):.5g})")
        else:
            print(line + " | plain torch skipped (--skip-baseline-above)")


if __name__ == "__main__":
    main()
