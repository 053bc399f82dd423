"""GPTQ (Frantar et al. 2023): column-by-column quantization with Hessian-based error feedback.

The algorithm, as in the paper and its reference implementation:

1. ``H = 2 X^T X / n`` from the layer's ``n`` calibration input rows ``X`` ``[n, in]``
   (:func:`gptq_hessian`).
2. Dead inputs (``H[i, i] == 0``: the channel is always zero) get ``H[i, i] = 1`` and a zero
   weight column.
3. With ``act_order``, columns are processed in order of decreasing ``H[i, i]``.
4. Dampening: ``H += damp * mean(diag(H)) * I`` (also what keeps a rank-deficient ``H``,
   from fewer tokens than input features, invertible).
5. ``U`` = upper Cholesky factor of ``H^-1``.
6. Columns are quantized in blocks of ``block_size``: inside a block each column is rounded
   and its error ``(w - q) / U[j, j]`` is fed back into the block's later columns along
   row ``j`` of ``U``; after the block, the later columns get all of the block's feedback in
   one matrix product (the "lazy batch" update).
7. The permutation is undone at the end.

Group-wise scales: without ``act_order`` a group's scale and zero point are computed when the
column loop enters the group, from the weights as updated so far (the reference's default).
With ``act_order`` the groups are **static**: computed from the original weights before any
update, for contiguous groups of the original column order (AutoGPTQ's ``static_groups``), so
the stored layout is the same as RTN's ``[out, in // group_size]`` and needs no column index.
Per-channel (``group_size=None``) parameters are always computed up front, as in the reference.

The loss reported is the reference's ``sum((w - q)**2 / U[j, j]**2) / 2``, which equals
``tr((W - Q) H_damped (W - Q)^T) / 2`` exactly; divided by ``tr(W H_damped W^T) / 2`` it is the
layer's relative output error on the calibration inputs (:func:`hessian_loss`).

Examples
--------
>>> import torch
>>> X = torch.randn(256, 64); W = torch.randn(32, 64)
>>> res = gptq_quantize_weight(W, gptq_hessian(X), bits=4, group_size=32)
>>> res.weight_hat.shape, res.codes.dtype
(torch.Size([32, 64]), torch.uint8)
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz.quant.methods._common import check_matrix, conv_patches, layer_weight, replacement_for
from qviz.quant.config import GPTQ
from qviz.quant.granularity import granularity_of
from qviz.quant.method import Controls, FormatBits, LayerQuant, Method, register, scale_format_bits
from qviz.quant.primitives import check_bits, check_group_size, choose_qparams, fake_quantize_values, rtn_nbytes

__all__ = ["GPTQResult", "gptq_hessian", "gptq_quantize_weight", "hessian_loss", "GPTQMethod"]

#: a layer is flagged when its relative GPTQ loss exceeds this many times the median over layers
FLAG_FACTOR = 10.0
#: ... and this absolute relative loss (tiny losses are never worth a warning)
FLAG_FLOOR = 1e-3


class GPTQResult(NamedTuple):
    """What :func:`gptq_quantize_weight` returns (unpacks as a tuple).

    Attributes
    ----------
    weight_hat : torch.Tensor
        ``[out, in]`` float32 dequantized weight, in the original column order, on ``W``'s device
        (as are ``codes``, ``scale`` and ``zero``).
    codes : torch.Tensor
        ``[out, in]`` uint8 codes; ``weight_hat = (codes - zero) * scale`` per group.
    scale : torch.Tensor
        ``[out, in // group_size]`` float32 (float16-exact) scales (``[out, 1]`` per channel).
    zero : torch.Tensor
        uint8 zero points, shaped like ``scale``.
    loss : float
        ``sum((w - q)**2 / U[j, j]**2) / 2`` over all weights.
    """

    weight_hat: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    loss: float


def gptq_hessian(X: torch.Tensor, *, name: str = "the layer") -> torch.Tensor:
    """``H = 2 X^T X / n`` (``[in, in]``, float32 product returned as float64) from ``n`` input rows ``X`` ``[n, in]``.

    Warns (does not fail) when ``n < in``: ``H`` is then rank-deficient and only the dampening
    in :func:`gptq_quantize_weight` keeps it invertible.

    Examples
    --------
    >>> gptq_hessian(torch.tensor([[1.0, 0.0], [1.0, 2.0]])).tolist()
    [[2.0, 2.0], [2.0, 4.0]]
    """
    X = check_matrix(X, "X")
    n, d = X.shape
    if n < d:
        warnings.warn(
            f"GPTQ on {name}: {n} calibration tokens for {d} input features, so the Hessian 2XᵀX/n has "
            f"rank at most {n} < {d}. Dampening keeps it invertible, but the result is better with at "
            "least as many tokens as input features: pass more calibration data.",
            UserWarning,
            stacklevel=2,
        )
    Xf = X.detach().float()
    return (Xf.T @ Xf).double() * (2.0 / n)  # float32 product (as the reference), float64 result


def _check_hessian(H: Any, cols: int) -> torch.Tensor:
    if isinstance(H, np.ndarray):
        H = torch.from_numpy(H)
    if not isinstance(H, torch.Tensor) or H.dim() != 2 or tuple(H.shape) != (cols, cols):
        shape = tuple(H.shape) if hasattr(H, "shape") else type(H).__name__
        raise ValueError(
            f"H must be the [{cols}, {cols}] Hessian of the layer's inputs (in = {cols} columns of W); got {shape}. "
            "Build it with gptq_hessian(X) from inputs X shaped [tokens, in]."
        )
    if not torch.isfinite(H).all():
        raise ValueError("H contains NaN/Inf values; expected a finite Hessian. Check the calibration inputs.")
    if (H.diagonal() < 0).any():
        raise ValueError("H has negative diagonal entries; expected a positive semi-definite 2XᵀX/n.")
    return H


def _damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    H = H.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * float(H.diagonal().mean()))
    return H


def _inverse_cholesky_upper(H: torch.Tensor, damp: float) -> np.ndarray:
    """The upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), float32 ``[in, in]``.

    With ``J`` the reversal permutation, ``chol(J H J) = M`` gives ``H = R R^T`` for the upper
    triangular ``R = J M J``, so ``H^-1 = R^-T R^-1`` and ``U = R^-1``: one Cholesky and one
    triangular inverse, no explicit ``H^-1``. float32 as the reference, float64 if that fails.
    """
    for dtype in (torch.float32, torch.float64):
        M, info = torch.linalg.cholesky_ex(H.to(dtype).flip(0, 1))
        if int(info) == 0:
            break
    else:
        raise ValueError(
            f"The Hessian is not positive definite even after dampening with damp={damp} "
            "(cholesky failed). Increase damp (e.g. 0.1) or pass more varied calibration inputs."
        )
    R = M.flip(0, 1)  # upper triangular, H = R R^T
    try:  # LAPACK's triangular inverse: a third of the work of solving against the identity
        from scipy.linalg import lapack

        trtri = lapack.strtri if R.dtype == torch.float32 else lapack.dtrtri
        inv, info = trtri(np.asfortranarray(R.numpy()), lower=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"trtri info={info}")
        U = np.triu(inv)
    except (ImportError, np.linalg.LinAlgError):
        U = torch.linalg.solve_triangular(R, torch.eye(R.shape[0], dtype=R.dtype), upper=True).numpy()
    return np.ascontiguousarray(U, dtype=np.float32)


def hessian_loss(delta: torch.Tensor, H: torch.Tensor, damp: float | None = None) -> float:
    """``tr(delta H delta^T) / 2`` for a weight error ``delta`` ``[out, in]`` (``H`` dampened as GPTQ does when ``damp``).

    With ``delta = W - W_hat`` and ``H = 2 X^T X / n`` this is ``||X delta^T||^2 / n``.

    Examples
    --------
    >>> hessian_loss(torch.ones(1, 2), torch.eye(2))
    1.0
    """
    Hd = (_damped(H, damp) if damp is not None else H).float()
    d = delta.float()
    return float(((d @ Hd) * d).sum(dtype=torch.float64) / 2.0)


def gptq_quantize_weight(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int = 4,
    group_size: int | None = 128,
    act_order: bool = True,
    damp: float = 0.01,
    block_size: int = 128,
    symmetric: bool = False,
) -> GPTQResult:
    """Quantize one weight matrix with GPTQ. ``W`` and ``H`` are not modified.

    Parameters
    ----------
    W : torch.Tensor
        ``[out, in]`` weight.
    H : torch.Tensor
        ``[in, in]`` Hessian ``2 X^T X / n`` of the layer's inputs (:func:`gptq_hessian`).
    bits : int
        2 to 8.
    group_size : int or None
        Columns per scale (must divide ``in``); None for one scale per output channel.
    act_order : bool
        Process columns by decreasing ``H[i, i]`` (static groups; see the module docstring).
    damp : float
        Fraction of ``mean(diag(H))`` added to the diagonal, in (0, 1).
    block_size : int
        Columns per lazy-update block.
    symmetric : bool
        Symmetric restricted range instead of min/max with a zero point.

    Returns
    -------
    GPTQResult
        ``(weight_hat, codes, scale, zero, loss)``.

    Raises
    ------
    ValueError
        On bad shapes or values, or when ``H`` is not positive definite even after dampening.

    Examples
    --------
    >>> W = torch.tensor([[0.8, -0.35, 1.0]])          # 2-bit symmetric levels {-1, 0, 1}
    >>> H = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> gptq_quantize_weight(W, H, bits=2, group_size=None, act_order=False, symmetric=True).weight_hat.tolist()
    [[1.0, -1.0, 1.0]]
    """
    from kernels_numba.gptq import gptq_block  # Numba loads on first use, not when the registry lists GPTQ

    W = check_matrix(W, "W")
    rows, cols = W.shape
    H = _check_hessian(H, cols)
    bits = check_bits(bits)
    gs = check_group_size(group_size, (rows, cols), allow_tensor=False)
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not 0.0 < damp < 1.0:
        raise ValueError(f"damp must be in (0, 1) (a fraction of the mean Hessian diagonal); got {damp!r}. 0.01 is usual.")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int; got {block_size!r}. 128 is usual.")

    Wk = W.detach().float().cpu().numpy().copy()  # [out, in] working copy
    Hd = H.detach().double().cpu()
    dead = (Hd.diagonal() == 0).numpy()
    Wk[:, dead] = 0.0
    n_groups = cols // gs
    static = act_order or group_size is None
    if static:
        qp = choose_qparams(Wk, granularity_of(group_size), bits, symmetric=bool(symmetric))
        scale = qp.scale.astype(np.float32)  # [out, n_groups]
        zero = qp.zero.astype(np.float32)
    else:
        scale = np.empty((rows, n_groups), np.float32)
        zero = np.empty((rows, n_groups), np.float32)
    if act_order:
        diag = Hd.diagonal().clone()
        diag[torch.from_numpy(dead)] = 1.0  # as after the dead-column fix
        perm = torch.argsort(diag, descending=True, stable=True).numpy()
    else:
        perm = np.arange(cols)
    Wk = np.ascontiguousarray(Wk[:, perm])
    U = _inverse_cholesky_upper(_damped(Hd[perm][:, perm], damp), damp)  # [in, in] float32
    gidx = (perm // gs).astype(np.int64) if static else (np.arange(cols) // gs).astype(np.int64)

    Q = np.empty((rows, cols), np.float32)
    codes = np.empty((rows, cols), np.uint8)
    loss = np.zeros(rows, np.float64)
    Wt, Ut = torch.from_numpy(Wk), torch.from_numpy(U)  # views sharing memory, for in-place BLAS updates
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        err = np.empty((rows, i2 - i1), np.float32)
        gptq_block(Wk, U, i1, i2, gs, not static, bits, bool(symmetric), scale, zero, gidx, Q, codes, err, loss)
        if i2 < cols:  # the lazy batch update of every later column, in place: W[:, i2:] -= err @ U[i1:i2, i2:]
            Wt[:, i2:].addmm_(torch.from_numpy(err), Ut[i1:i2, i2:], alpha=-1.0)
    inv = np.argsort(perm)
    dev = W.device  # the column loop runs on the CPU (numba); the results go back to W's device
    return GPTQResult(
        weight_hat=torch.from_numpy(np.ascontiguousarray(Q[:, inv])).to(dev),
        codes=torch.from_numpy(np.ascontiguousarray(codes[:, inv])).to(dev),
        scale=torch.from_numpy(scale).to(dev),
        zero=torch.from_numpy(zero.astype(np.uint8)).to(dev),
        loss=float(loss.sum()),
    )


# --------------------------------------------------------------------------- method


def layer_input_rows(name: str, module: nn.Module, inputs: Any, cols: int) -> torch.Tensor:
    """The calibration inputs the driver passed, as the ``[tokens, in]`` matrix the weight multiplies."""
    if inputs is None:
        raise ValueError(
            f"{name} needs its calibration inputs (method needs_inputs=True); got None. "
            "Call it through qviz.quantize(model, cfg, calib=batch)."
        )
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"The inputs of {name} must be a tensor [tokens, in]; got {type(inputs).__name__}.")
    if isinstance(module, nn.Conv2d) and inputs.dim() == 4:
        inputs = conv_patches(module, inputs)
    elif inputs.dim() > 2:
        inputs = inputs.reshape(-1, inputs.shape[-1])
    return check_matrix(inputs.float(), f"the calibration inputs of {name}", cols=cols)


@register(GPTQ)
class GPTQMethod(Method):
    """GPTQ as a registered method: sequential (each layer calibrated on the already-quantized earlier layers).

    :func:`qviz.quantize` computes those inputs block by block (:mod:`qviz.quant._blockwise`: one
    stopped pass to the first block, then runs of each block alone, as the reference implementation
    does), or layer by layer with a full pass each for a model without repeated blocks.

    Per-layer ``info``: ``gptq_loss``, ``gptq_rel_loss`` (relative output error on the
    calibration inputs, dampened Hessian), ``rtn_rel_loss`` (the same measure for RTN at the
    same bits and groups), ``n_tokens``. :meth:`finalize` warns about layers whose loss is
    unusually high and returns the per-layer numbers as a Dataset under ``"gptq"``.
    """

    label = "GPTQ"
    menu_position = 6
    controls = ("bits", "group_size", "symmetric")
    needs_inputs = True
    sequential = True
    layer_types = ("linear", "conv2d")

    def config_from_controls(self, c: Controls) -> GPTQ:
        """``GPTQ(bits, group_size, symmetric)`` from the explorer's knobs."""
        if c.group_size == "tensor":
            raise ValueError("GPTQ takes a group size or 'channel', not 'tensor'.")
        return GPTQ(bits=c.bits, group_size=c.group_size, symmetric=bool(c.symmetric))

    def format_bits(self, cfg: GPTQ, row_length: int) -> FormatBits:
        """Packed codes and a float16 scale (and uint8 zero point) per static group."""
        return scale_format_bits(cfg.label, cfg.bits, cfg.group_size, cfg.symmetric, row_length,
                                 " (static groups: no column index is stored)")

    def prepare(self, model: Any, cfg: GPTQ, calib: Any, layers: dict[str, nn.Module]) -> dict[str, Any]:
        return {"layers": {}}

    def quantize_layer(self, name: str, module: nn.Module, cfg: GPTQ, inputs: Any, state: Any) -> LayerQuant:
        W = layer_weight(module, name)  # [out, in]
        X = layer_input_rows(name, module, inputs, W.shape[1])  # [tokens, in]
        H = gptq_hessian(X, name=name)
        res = gptq_quantize_weight(W, H, cfg.bits, cfg.group_size, cfg.act_order, cfg.damp, cfg.block_size, cfg.symmetric)
        energy = hessian_loss(W, H, cfg.damp)
        rtn_hat = fake_quantize_values(W, granularity_of(cfg.group_size), cfg.bits, symmetric=cfg.symmetric)
        rel = res.loss / energy if energy > 0 else 0.0
        rtn_rel = hessian_loss(W - rtn_hat, H, cfg.damp) / energy if energy > 0 else 0.0
        info = {"gptq_loss": res.loss, "gptq_rel_loss": rel, "rtn_rel_loss": rtn_rel, "n_tokens": float(X.shape[0])}
        if state is not None:
            state.setdefault("layers", {})[name] = info
        out, cols = W.shape
        return LayerQuant(
            module=replacement_for(module, res.weight_hat),
            weight_hat=res.weight_hat,
            nbytes=rtn_nbytes((out, cols), cfg.bits, cfg.group_size, cfg.symmetric),
            info=info,
        )

    def finalize(self, model: Any, cfg: GPTQ, calib: Any, state: Any) -> dict[str, Any]:
        layers = (state or {}).get("layers", {})
        if not layers:
            return {}
        ds = gptq_loss_dataset(layers)
        flagged = [str(n) for n in ds.layer.values[ds.flagged.values]]
        if flagged:
            rows = ", ".join(
                f"{n} ({float(ds.gptq_rel_loss.sel(layer=n)):.3g} vs median {float(ds.gptq_rel_loss.median()):.3g}"
                f"{', worse than RTN' if float(ds.gptq_rel_loss.sel(layer=n)) > float(ds.rtn_rel_loss.sel(layer=n)) else ''})"
                for n in flagged[:8]
            )
            warnings.warn(
                f"GPTQ loss is unusually high on {len(flagged)} layer(s): {rows}. The calibration data may not "
                "exercise these layers as real inputs do (too few tokens, or inputs unlike the task): pass more "
                "or more representative calibration data (e.g. qviz.calibration_data(model, n=128) or samples of "
                "your task), or raise damp.",
                UserWarning,
                stacklevel=2,
            )
        return {"gptq": ds}


def gptq_loss_dataset(layers: dict[str, dict[str, float]]) -> xr.Dataset:
    """Per-layer GPTQ losses (``info`` dicts by layer name) as a Dataset with a ``flagged`` variable.

    A layer is flagged when its relative loss exceeds ``FLAG_FACTOR`` times the median over layers
    (and ``FLAG_FLOOR``), or when it is higher than RTN's on the same Hessian.

    Examples
    --------
    >>> ds = gptq_loss_dataset({"a": {"gptq_loss": 1.0, "gptq_rel_loss": 0.01, "rtn_rel_loss": 0.02, "n_tokens": 9.0}})
    >>> bool(ds.flagged.sel(layer="a"))
    False
    """
    names = list(layers)
    get = lambda key: np.array([layers[n][key] for n in names], np.float64)  # noqa: E731
    rel, rtn = get("gptq_rel_loss"), get("rtn_rel_loss")
    med = float(np.median(rel))
    flagged = ((rel > FLAG_FACTOR * med) & (rel > FLAG_FLOOR)) | (rel > rtn * (1 + 1e-6) + 1e-12)
    return xr.Dataset(
        {
            "gptq_loss": ("layer", get("gptq_loss"), {"long_name": "GPTQ loss Σ(w−q)²/[H⁻¹]ⱼⱼ/2", "units": "1"}),
            "gptq_rel_loss": ("layer", rel, {"long_name": "GPTQ relative output error (calibration)", "units": "1"}),
            "rtn_rel_loss": ("layer", rtn, {"long_name": "RTN relative output error (calibration)", "units": "1"}),
            "n_tokens": ("layer", get("n_tokens"), {"long_name": "calibration tokens", "units": "1"}),
            "flagged": ("layer", flagged, {"long_name": "unusually high GPTQ loss", "units": "1"}),
        },
        coords={"layer": names},
        attrs={"flag_rule": f"rel > {FLAG_FACTOR:g} x median and > {FLAG_FLOOR:g}, or rel > RTN's"},
    )
