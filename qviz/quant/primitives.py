"""The RTN arithmetic of qviz, in one place: every method, widget and size count calls it.

``choose_qparams(x, granularity, bits) -> QParams``, ``quantize(x, qparams) -> codes``
and ``dequantize(codes, qparams) -> x_hat`` sit side by side (STYLE rule 2), with
the fused forms (:func:`fake_quantize_with_stats`, :func:`fake_quantize_values`,
:func:`fake_quantize_codes`), the straight-through fake-quant of training
(:func:`fake_quantize_ste`), the range -> scale/zero rule
(:func:`qparams_from_range`), the byte count (:func:`rtn_nbytes`) and the
argument checks (:func:`check_bits`, :func:`check_group_size`,
:func:`check_tensor`). They follow the conventions of :mod:`kernels_numba.rtn` exactly:

* codes are ``uint8``; ``x_hat = (code - zero) * scale``; ``code =
  clamp(rint(x * (1/scale)) + zero, qmin, qmax)`` in float32 with rounding half
  to even;
* asymmetric: ``lo = min(x, 0)``, ``hi = max(x, 0)``, ``scale = (hi - lo) /
  (2**bits - 1)``, ``zero = clamp(rint(-lo / scale), 0, 2**bits - 1)``;
* symmetric: ``scale = max|x| / (2**(bits-1) - 1)``, ``zero = 2**(bits-1)``,
  codes ``1 .. 2**bits - 1``;
* scales are computed in float64 and rounded once to float16 (2 bytes each),
  an all-zero group gets scale 1, a float16 underflow becomes ``2**-24``.

Where the work runs: numpy arrays and CPU torch tensors go to the Numba
kernels of :mod:`kernels_numba` (one fused pass; the float16 scale rule is
``kernels_numba._common.store_scale``); CUDA tensors go to the fused Triton
kernel of :mod:`qviz.gpu.fakequant` (one pass, bit-identical); a clip search on
CUDA, ``backend="torch"`` and the straight-through fake-quant run the torch
backend below (``_store_scale`` and friends), the same arithmetic on the
tensor's own device, which gives the same codes. Inputs are never written to.

Importing this module loads numpy only (the configs import its checks); torch,
Numba and the GPU kernels load inside the functions that use them.

Examples
--------
>>> import numpy as np
>>> from qviz.quant.granularity import PerChannel
>>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
>>> qp = choose_qparams(x, PerChannel(), bits=4)
>>> quantize(x, qp)
array([[ 0,  5,  8, 15]], dtype=uint8)
>>> dequantize(quantize(x, qp), qp).round(2)
array([[-1. ,  0. ,  0.6,  2. ]], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qviz.quant.granularity import Granularity, PerChannel, PerGroup, PerTensor, granularity_of

if TYPE_CHECKING:  # annotations only: importing kernels_numba loads Numba
    from kernels_numba import ErrorStats

F16_MAX = 65504.0
F16_MIN_SUBNORMAL = 2.0**-24
CLIP_RATIOS = np.linspace(1.0, 0.5, 21)  # [n_ratios], widest first (as kernels_numba)
BACKENDS = ("auto", "numba", "torch")


@dataclass(frozen=True, eq=False)
class QParams:
    """Scales and zero points of an RTN-quantized ``[rows, cols]`` tensor.

    Attributes
    ----------
    scale : np.ndarray or torch.Tensor
        float32 ``[rows, n_groups]`` (``[1, 1]`` per tensor, ``[rows, 1]`` per
        channel); every value is exactly representable in float16.
    zero : np.ndarray or torch.Tensor
        uint8 zero points, same shape as ``scale``.
    bits : int
        Code width, 2 to 8.
    symmetric : bool
        Restricted symmetric range (codes ``1 .. 2**bits-1``) or asymmetric (``0 .. 2**bits-1``).
    granularity : PerTensor, PerChannel or PerGroup
        Which weights share a scale.
    shape : tuple of int
        ``(rows, cols)`` the parameters were chosen for.
    """

    scale: Any  # [rows, n_groups] float32
    zero: Any  # [rows, n_groups] uint8
    bits: int
    symmetric: bool
    granularity: Granularity
    shape: tuple[int, int]

    @property
    def qmin(self) -> int:
        """Smallest code used (1 when symmetric)."""
        return 1 if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest code, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    @property
    def group_size(self) -> int:
        """Consecutive columns that share one scale."""
        return self.shape[1] // int(self.scale.shape[1])

    @property
    def overhead_nbytes(self) -> int:
        """Bytes of the parameters: 2 per float16 scale, 1 per zero point (none when symmetric)."""
        return _param_nbytes(int(np.prod(tuple(self.scale.shape))), self.symmetric)

    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, zero)`` as the numpy arrays the Numba kernels take (copied off the device if needed)."""
        return _to_numpy(self.scale), _to_numpy(self.zero)


# --------------------------------------------------------------------------- checks


def _is_torch(x: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(x, torch.Tensor)


def _to_numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if _is_torch(a) else np.asarray(a)


def check_tensor(x: Any, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a non-empty 2-D floating tensor/array of finite values.

    Examples
    --------
    >>> check_tensor(np.zeros((2, 0), np.float32))
    Traceback (most recent call last):
    ...
    ValueError: x is empty (shape (2, 0)); expected at least one row and one column to quantize.
    """
    if _is_torch(x):
        floating = x.is_floating_point()
        dtype = str(x.dtype).replace("torch.", "")
    elif isinstance(x, np.ndarray):
        floating = np.issubdtype(x.dtype, np.floating)
        dtype = x.dtype.name
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of floats; got {type(x).__name__}. "
            f"Convert it first, e.g. np.asarray({name}, dtype=np.float32)."
        )
    if not floating:
        raise TypeError(
            f"{name} has dtype {dtype}; expected a floating-point tensor (float32, float16, bfloat16, float64). "
            f"Integer and bool tensors are already discrete: cast with {name}.float() if you mean to quantize them."
        )
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, cols]; got shape {tuple(x.shape)}. Reshape it to [out, -1].")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(x.shape)}); expected at least one row and one column to quantize."
        )
    bad = count_nonfinite(x)
    if bad:
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s) out of {int(np.prod(tuple(x.shape)))}; expected finite "
            "values. Find where they come from (a diverged training run, an overflow) or clean them first."
        )


def count_nonfinite(x: Any) -> int:
    """Number of NaN/Inf values in ``x`` (one reduction when there are none).

    Examples
    --------
    >>> count_nonfinite(np.array([1.0, np.nan, np.inf]))
    2
    """
    if _is_torch(x):
        import torch

        if bool(torch.isfinite(x.sum())):  # any NaN/Inf makes the sum non-finite; an overflow only costs the slow path
            return 0
        return int((~torch.isfinite(x)).sum())
    with np.errstate(all="ignore"):
        if np.isfinite(np.sum(x)):
            return 0
    return int((~np.isfinite(x)).sum())


def check_bits(bits: Any, name: str = "bits", *, owner: str = "", lo: int = 2, hi: int = 8,
               allow_none: bool = False) -> int | None:
    """Return ``bits`` as an int after checking it lies in ``[lo, hi]``; the one bit-width check.

    ``owner`` (a config or function name) and ``name`` (the field) go into the message;
    ``allow_none`` lets ``None`` through (e.g. ``act_bits=None``: no activation quantization).

    Examples
    --------
    >>> check_bits(4)
    4
    >>> check_bits(9, owner="RTN")
    Traceback (most recent call last):
    ...
    ValueError: RTN bits must be an int from 2 to 8; got 9. Pick e.g. bits=8, 4 or 3.
    """
    if bits is None and allow_none:
        return None
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not lo <= int(bits) <= hi:
        who = f"{owner} {name}" if owner else name
        raise ValueError(f"{who} must be an int from {lo} to {hi}; got {bits!r}. Pick e.g. {name}=8, 4 or 3.")
    return int(bits)


def check_group_size(group_size: Any, shape: tuple[int, int] | None = None, *, owner: str = "",
                     allow_tensor: bool = True) -> Any:
    """Check a ``group_size`` (None, a positive int, or ``"tensor"``); the one group-size check.

    Without ``shape`` it returns ``group_size`` unchanged. With the ``[rows, cols]`` shape of a
    weight it also checks that a group divides the row (:meth:`PerGroup.scale_shape`'s message)
    and returns the number of consecutive columns that share a scale (``cols`` for None).
    ``allow_tensor=False`` rejects ``"tensor"`` (methods whose arithmetic works row by row).

    Examples
    --------
    >>> check_group_size(32, (8, 64))
    32
    >>> check_group_size(None, (8, 64))
    64
    >>> check_group_size(0, owner="GPTQ")
    Traceback (most recent call last):
    ...
    ValueError: GPTQ group_size must be None (one scale per output channel), 'tensor' (one scale) or a positive int (groups along the input dim, e.g. 32, 64, 128); got 0.
    """
    who = f"{owner} group_size" if owner else "group_size"
    if group_size == "tensor" and not isinstance(group_size, bool):
        if not allow_tensor:
            raise ValueError(
                f"{who}='tensor' is not supported here: expected None (one scale per output channel) "
                "or a positive int (groups along the input dim, e.g. 32, 64, 128)."
            )
    elif group_size is not None and (
        isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1
    ):
        tensor = ", 'tensor' (one scale)" if allow_tensor else ""
        raise ValueError(
            f"{who} must be None (one scale per output channel){tensor} or a positive int "
            f"(groups along the input dim, e.g. 32, 64, 128); got {group_size!r}."
        )
    if shape is None:
        return group_size
    rows, cols = (int(n) for n in shape)
    if group_size is None or group_size == "tensor":
        return cols
    PerGroup(int(group_size)).scale_shape((rows, cols))  # raises, naming divisors of cols
    return int(group_size)


def check_granularity(granularity: Any, shape: tuple[int, int]) -> Granularity:
    """Validate a granularity against a ``[rows, cols]`` shape (a group size must divide ``cols``)."""
    if not isinstance(granularity, (PerTensor, PerChannel, PerGroup)):
        raise TypeError(
            f"granularity must be PerTensor(), PerChannel() or PerGroup(size); got {granularity!r}."
        )
    granularity.scale_shape(shape)  # raises ValueError naming the valid sizes
    return granularity


def _kernel_group(g: Granularity) -> int | str | None:
    if isinstance(g, PerTensor):
        return "tensor"
    if isinstance(g, PerGroup):
        return g.size
    return None


def _use_torch(x: Any, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if backend == "torch":
        if not _is_torch(x):
            raise TypeError("backend='torch' needs a torch.Tensor; pass torch.from_numpy(x).")
        return True
    if backend == "numba":
        return False
    return _is_torch(x) and x.device.type != "cpu"


def _as_f32_numpy(x: Any) -> np.ndarray:
    return np.ascontiguousarray(_to_numpy(x), dtype=np.float32)  # [rows, cols]


# --------------------------------------------------------------------------- the trio


def choose_qparams(
    x: Any,
    granularity: Granularity = PerChannel(),
    bits: int = 4,
    *,
    symmetric: bool = False,
    clip_search: bool = False,
    backend: str = "auto",
) -> QParams:
    """Choose RTN scales and zero points for a 2-D tensor.

    Parameters
    ----------
    x : np.ndarray or torch.Tensor
        Floating ``[rows, cols]`` (rows = output channels), finite. Not modified.
    granularity : PerTensor, PerChannel or PerGroup
        Scale shape ``[1, 1]``, ``[rows, 1]`` or ``[rows, cols // size]``.
    bits : int
        2 to 8.
    symmetric : bool
        Symmetric restricted range, or asymmetric with a zero point.
    clip_search : bool
        Per group, try shrinking the range by each of 21 ratios from 1.0 to 0.5
        and keep the one with the least squared error.
    backend : {"auto", "numba", "torch"}
        ``"auto"``: Numba on CPU, torch on CUDA.

    Returns
    -------
    QParams
        ``scale``/``zero`` of the same array type as ``x`` (on its device).

    Examples
    --------
    >>> import numpy as np
    >>> from qviz.quant.granularity import PerGroup
    >>> qp = choose_qparams(np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32), PerGroup(32), 4)
    >>> qp.scale.shape, qp.zero.dtype
    ((4, 2), dtype('uint8'))
    """
    check_tensor(x)
    bits = check_bits(bits)
    shape = (int(x.shape[0]), int(x.shape[1]))
    granularity = check_granularity(granularity, shape)
    if _use_gpu_kernel(x, backend, clip_search):
        res = _gpu_rtn(x, granularity, bits, bool(symmetric), write_xhat=False)
        return QParams(res.scale, res.zero, bits, bool(symmetric), granularity, shape)
    if _use_torch(x, backend):
        scale, zero = _torch_qparams(x, granularity, bits, bool(symmetric), bool(clip_search))
        return QParams(scale, zero, bits, bool(symmetric), granularity, shape)
    import kernels_numba as kn

    kq = kn.choose_qparams(
        _as_f32_numpy(x), bits, _kernel_group(granularity), symmetric=bool(symmetric), clip_search=bool(clip_search)
    )
    scale, zero = kq.scale, kq.zero
    if _is_torch(x):
        import torch

        scale, zero = torch.from_numpy(scale).to(x.device), torch.from_numpy(zero).to(x.device)
    return QParams(scale, zero, bits, bool(symmetric), granularity, shape)


def quantize(x: Any, qparams: QParams, *, backend: str = "auto") -> Any:
    """Codes of ``x`` under ``qparams``: uint8 ``[rows, cols]``, same array type as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> quantize(x, choose_qparams(x, bits=4, symmetric=True))
    array([[ 4,  8, 10, 15]], dtype=uint8)
    """
    _check_qparams(qparams)
    check_tensor(x)
    if (int(x.shape[0]), int(x.shape[1])) != qparams.shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but the qparams were chosen for {qparams.shape}. "
            "Call choose_qparams on a tensor of this shape."
        )
    if _use_gpu_kernel(x, backend, False):
        return _gpu_rtn(x, qparams.granularity, qparams.bits, qparams.symmetric, params=qparams,
                        write_xhat=False, write_codes=True).codes
    if _use_torch(x, backend):
        return _torch_codes(x, qparams)
    import kernels_numba as kn

    codes = kn.quantize(_as_f32_numpy(x), *qparams.kernel_arrays(), qparams.bits, qparams.symmetric)  # [rows, cols] uint8
    if _is_torch(x):
        import torch

        return torch.from_numpy(codes).to(x.device)
    return codes


def dequantize(codes: Any, qparams: QParams, *, backend: str = "auto") -> Any:
    """``x_hat = (code - zero) * scale`` as float32 ``[rows, cols]``, same array type as ``codes``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> qp = choose_qparams(x, bits=8)
    >>> float(np.abs(dequantize(quantize(x, qp), qp) - x).max()) <= float(qp.scale.max()) / 2
    True
    """
    _check_qparams(qparams)
    if _is_torch(codes):
        import torch

        ok = codes.dtype == torch.uint8
    elif isinstance(codes, np.ndarray):
        ok = codes.dtype == np.uint8
    else:
        raise TypeError(f"codes must be a uint8 torch.Tensor or numpy.ndarray; got {type(codes).__name__}.")
    if not ok:
        raise TypeError(f"codes have dtype {codes.dtype}; expected uint8 codes from quantize().")
    if tuple(int(s) for s in codes.shape) != qparams.shape:
        raise ValueError(f"codes have shape {tuple(codes.shape)}; the qparams are for {qparams.shape}.")
    if _use_torch(codes, backend):
        return _torch_dequant(codes, qparams)
    import kernels_numba as kn

    out = kn.dequantize(np.ascontiguousarray(_to_numpy(codes)), *qparams.kernel_arrays(), qparams.bits,
                        qparams.symmetric)  # [rows, cols] float32
    if _is_torch(codes):
        import torch

        return torch.from_numpy(out).to(codes.device)
    return out


def _check_qparams(qparams: Any) -> None:
    if not isinstance(qparams, QParams):
        raise TypeError(f"qparams must be a QParams from choose_qparams(); got {type(qparams).__name__}.")


# --------------------------------------------------------------------------- fused


def fake_quantize_with_stats(
    x: Any,
    granularity: Granularity,
    bits: int,
    *,
    symmetric: bool = False,
    clip_search: bool = False,
    backend: str = "auto",
) -> tuple[Any, ErrorStats]:
    """``dequantize(quantize(x))`` and its error in one pass; returns ``(x_hat float32, ErrorStats)``.

    ``ErrorStats`` (``sse``, ``signal``, ``max_abs_err``, ``n``; ``.mse``, ``.sqnr_db``) is the one
    definition of a tensor's reconstruction error, shared with the Numba kernels.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    >>> x_hat, st = fake_quantize_with_stats(x, PerChannel(), 4)
    >>> round(st.sqnr_db, 1)
    27.2
    """
    from kernels_numba import ErrorStats  # Numba loads on first use (import of this module stays light)

    check_tensor(x)
    bits = check_bits(bits)
    shape = (int(x.shape[0]), int(x.shape[1]))
    granularity = check_granularity(granularity, shape)
    if _use_gpu_kernel(x, backend, clip_search):
        res = _gpu_rtn(x, granularity, bits, bool(symmetric), write_stats=True)
        return res.x_hat, ErrorStats(*res.stats, x.numel())
    if _use_torch(x, backend):
        qp = choose_qparams(x, granularity, bits, symmetric=symmetric, clip_search=clip_search, backend="torch")
        x_hat = _torch_dequant(_torch_codes(x, qp), qp)
        d = x_hat.double() - x.double()
        stats = ErrorStats(float((d * d).sum()), float((x.double() ** 2).sum()), float(d.abs().max()), x.numel())
        return x_hat, stats
    import kernels_numba as kn

    x_hat, st = kn.fake_quantize(
        _as_f32_numpy(x), bits, _kernel_group(granularity), symmetric=bool(symmetric), clip_search=bool(clip_search)
    )
    stats = ErrorStats(st.sse, st.signal, st.max_abs_err, st.n)
    if _is_torch(x):
        import torch

        x_hat = torch.from_numpy(x_hat).to(x.device)
    return x_hat, stats


def fake_quantize_values(
    x: Any,
    granularity: Granularity,
    bits: int,
    *,
    symmetric: bool = False,
    clip_search: bool = False,
    backend: str = "auto",
    check_finite: bool = True,
) -> Any:
    """``dequantize(quantize(x))`` alone (float32 ``[rows, cols]``, same array type as ``x``): no error sums.

    On CUDA this is one read and one write of ``x`` (the fused kernel). ``check_finite=False``
    skips the separate NaN/Inf pass where the kernel checks for itself (CUDA), the caller having
    checked everything else.

    Examples
    --------
    >>> import numpy as np
    >>> fake_quantize_values(np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32), PerChannel(), 4).round(2)
    array([[-1. ,  0. ,  0.6,  2. ]], dtype=float32)
    """
    if _use_gpu_kernel(x, backend, clip_search):
        if check_finite:
            check_tensor(x)
        return _checked_gpu_rtn(x, granularity, bits, symmetric).x_hat
    return fake_quantize_with_stats(x, granularity, bits, symmetric=symmetric, clip_search=clip_search,
                                    backend=backend)[0]


def fake_quantize_fused(x: Any, granularity: Granularity, bits: int, *, symmetric: bool = False,
                        clip_search: bool = False) -> tuple[Any, bool | None] | None:
    """``(x_hat, zeroed)`` from the fused CUDA kernel, which checks NaN/Inf in the same pass; None off CUDA.

    ``zeroed`` says, from the kernel's own flag word, whether ``x`` had nonzero values and ``x_hat``
    has none, so a caller's all-zero warning needs no second pass over either tensor.

    Examples
    --------
    >>> import numpy as np
    >>> fake_quantize_fused(np.zeros((1, 4), np.float32), PerChannel(), 4) is None  # not a CUDA tensor
    True
    """
    if not _use_gpu_kernel(x, "auto", clip_search):
        return None
    res = _checked_gpu_rtn(x, granularity, bits, symmetric)
    return res.x_hat, res.zeroed


def _checked_gpu_rtn(x: Any, granularity: Granularity, bits: int, symmetric: bool) -> Any:
    """The fused CUDA kernel's result for ``x`` ``[rows, cols]``, after checking ``bits`` and ``granularity``."""
    bits = check_bits(bits)
    granularity = check_granularity(granularity, (int(x.shape[0]), int(x.shape[1])))
    return _gpu_rtn(x, granularity, bits, bool(symmetric))


def fake_quantize_codes(
    x: Any,
    granularity: Granularity,
    bits: int,
    *,
    symmetric: bool = False,
    clip_search: bool = False,
    backend: str = "auto",
) -> tuple[Any, Any, QParams]:
    """``(x_hat, codes, qparams)`` of ``x`` in one pass where a fused kernel can (CUDA), else the trio.

    Examples
    --------
    >>> import numpy as np
    >>> x_hat, codes, qp = fake_quantize_codes(np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32), PerChannel(), 4)
    >>> codes
    array([[ 0,  5,  8, 15]], dtype=uint8)
    """
    check_tensor(x)
    bits = check_bits(bits)
    shape = (int(x.shape[0]), int(x.shape[1]))
    granularity = check_granularity(granularity, shape)
    if _use_gpu_kernel(x, backend, clip_search):
        res = _gpu_rtn(x, granularity, bits, bool(symmetric), write_codes=True)
        qp = QParams(res.scale, res.zero, bits, bool(symmetric), granularity, shape)
        return res.x_hat, res.codes, qp
    if _use_torch(x, backend):
        qp = choose_qparams(x, granularity, bits, symmetric=symmetric, clip_search=clip_search, backend="torch")
        codes = _torch_codes(x, qp)
        return _torch_dequant(codes, qp), codes, qp
    import kernels_numba as kn

    codes, (scale, zero), _ = kn.quantize_with_stats(  # one fused pass: parameters and codes
        _as_f32_numpy(x), bits, _kernel_group(granularity), symmetric=bool(symmetric), clip_search=bool(clip_search)
    )
    x_hat = kn.dequantize(codes, scale, zero, bits, bool(symmetric))  # [rows, cols] float32
    if _is_torch(x):
        import torch

        x_hat, codes = torch.from_numpy(x_hat).to(x.device), torch.from_numpy(codes).to(x.device)
        scale, zero = torch.from_numpy(scale).to(x.device), torch.from_numpy(zero).to(x.device)
    return x_hat, codes, QParams(scale, zero, bits, bool(symmetric), granularity, shape)


def fake_quantize_ste(x: Any, granularity: Granularity, bits: int, *, symmetric: bool = False) -> Any:
    """Fake-quantize a torch tensor with a straight-through gradient, on its own device.

    Forward: ``dequantize(quantize(x))`` with min/max parameters per tensor, row or group (the
    torch backend, bit-identical to the Numba kernels). Backward: ``d out / d x = 1``. The work
    stays on ``x``'s device: a CUDA tensor never round-trips through the host (QAT calls this
    on every training step).

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]], requires_grad=True)
    >>> y = fake_quantize_ste(w, PerChannel(), 4)
    >>> [round(v, 3) for v in y.detach()[0].tolist()]
    [-1.0, 0.0, 0.6, 2.0]
    >>> (y * torch.arange(4.0)).sum().backward()
    >>> w.grad.tolist()
    [[0.0, 1.0, 2.0, 3.0]]
    """
    if not _is_torch(x) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D torch.Tensor [rows, cols]; got {getattr(x, 'shape', type(x).__name__)}.")
    bits = check_bits(bits)
    xd = x.detach().float()  # [rows, cols]
    check_tensor(xd)
    granularity = check_granularity(granularity, (int(x.shape[0]), int(x.shape[1])))
    qp = QParams(*_torch_qparams(xd, granularity, bits, bool(symmetric), False), bits, bool(symmetric),
                 granularity, (int(x.shape[0]), int(x.shape[1])))
    x_hat = _torch_dequant(_torch_codes(xd, qp), qp)  # [rows, cols] float32
    return x + (x_hat.to(x.dtype) - x).detach()


# --------------------------------------------------------------------------- bytes


def _param_nbytes(n_scales: int, symmetric: bool) -> int:
    """Bytes of ``n_scales`` float16 scales and (asymmetric) as many uint8 zero points."""
    return 2 * n_scales + (0 if symmetric else n_scales)


def packed_nbytes(rows: int, cols: int, bits: int) -> int:
    """Bytes of a ``[rows, cols]`` code matrix packed row by row: ``rows * ceil(cols * bits / 8)``.

    Examples
    --------
    >>> packed_nbytes(384, 384, 4), packed_nbytes(2, 10, 3)
    (73728, 8)
    """
    return int(rows) * ((int(cols) * int(bits) + 7) // 8)


def rtn_nbytes(shape: tuple[int, int], bits: int, group_size: Any = None, symmetric: bool = False) -> int:
    """True bytes of an RTN-quantized ``[out, in]`` weight: packed codes + float16 scales + uint8 zeros.

    Codes are packed row by row (``out * ceil(in * bits / 8)``, as
    :class:`~qviz.quant.modules.PackedLinear` stores them); one float16 scale per group and,
    asymmetric only, one uint8 zero point. ``group_size`` as in the configs: None (per output
    channel), an int dividing ``in``, or ``"tensor"``. GPTQ, AWQ, QAT and SmoothQuant's weights
    are stored this way too.

    Examples
    --------
    >>> rtn_nbytes((384, 384), 4, 128)  # codes 73728 + 1152 scales * 2 + 1152 zeros
    77184
    >>> rtn_nbytes((10, 10), 3, None, symmetric=True)  # rows of ceil(30 / 8) bytes + a scale per row
    60
    """
    rows, cols = (int(n) for n in shape)
    bits = check_bits(bits)
    check_group_size(group_size, (rows, cols))
    n_scales = int(np.prod(granularity_of(group_size).scale_shape((rows, cols))))
    return packed_nbytes(rows, cols, bits) + _param_nbytes(n_scales, bool(symmetric))


# --------------------------------------------------------------------------- GPU kernel path


def _use_gpu_kernel(x: Any, backend: str, clip_search: bool) -> bool:
    """The fused Triton kernel serves CUDA tensors under ``backend="auto"`` (the clip search stays in torch)."""
    if backend != "auto" or clip_search or not _is_torch(x):
        return False
    from qviz.gpu import available

    return available(x)


def _gpu_rtn(x: Any, g: Granularity, bits: int, symmetric: bool, *, params: QParams | None = None,
             write_xhat: bool = True, write_codes: bool = False, write_stats: bool = False) -> Any:
    """Run :func:`qviz.gpu.fakequant.rtn_groups` on ``x`` ``[rows, cols]``; scale/zero come back ``[rows, n_groups]``."""
    import torch

    from qviz.gpu.fakequant import MAX_GROUP, GroupResult, rtn_groups

    rows, cols = (int(s) for s in x.shape)
    xf = x.detach().float().contiguous()
    scale = zero = None
    if params is not None:
        scale, zero = params.scale, params.zero
    elif isinstance(g, PerTensor):  # one scale from the whole tensor's range (torch), then the kernel applies it
        check_tensor(xf)
        zero_t = torch.zeros((), dtype=xf.dtype, device=xf.device)
        lo = torch.minimum(xf.amin(), zero_t).reshape(1, 1)
        hi = torch.maximum(xf.amax(), zero_t).reshape(1, 1)
        s64, z64 = _params_from_range(lo, hi, 1.0, bits, symmetric)
        scale, zero = s64.float(), z64.to(torch.uint8)
    group = cols if isinstance(g, (PerChannel, PerTensor)) else g.size
    if group > MAX_GROUP:  # wider rows than one program holds: the torch twin of the arithmetic
        qp = params or QParams(*_torch_qparams(xf, g, bits, symmetric, False), bits, symmetric, g, (rows, cols))
        codes = _torch_codes(xf, qp)
        x_hat = _torch_dequant(codes, qp)
        stats = None
        if write_stats:
            d = x_hat.double() - xf.double()
            stats = (float((d * d).sum()), float((xf.double() ** 2).sum()), float(d.abs().max()))
        return GroupResult(x_hat, codes, qp.scale, qp.zero, stats)
    res = rtn_groups(xf, group, bits, symmetric, scale=scale, zero=zero, write_xhat=write_xhat,
                     write_codes=write_codes, write_stats=write_stats)
    if scale is not None:  # given (or per-tensor) parameters come back as they went in
        return res._replace(scale=scale, zero=zero)
    return res._replace(scale=res.scale.reshape(rows, cols // group), zero=res.zero.reshape(rows, cols // group))


# --------------------------------------------------------------------------- torch path


def _round_f16(v: Any) -> Any:
    """Round non-negative float64 values to the nearest float16 value (ties to even), exactly."""
    import torch

    m, e = torch.frexp(v)  # v = m * 2**e, 0.5 <= m < 1
    s = torch.clamp(e - 11, min=-24).to(torch.float64)
    r = torch.round(v * torch.pow(2.0, -s)) * torch.pow(2.0, s)
    return torch.where(v == 0, torch.zeros_like(v), r)


def _store_scale(scale64: Any, steps: int) -> Any:
    """float64 scales rounded to float16 values as :func:`kernels_numba._common.store_scale` does
    (nearest, but up where nearest would leave the grid of ``steps`` steps short of its range by
    more than half a step)."""
    import torch

    r = _round_f16(scale64)
    r = torch.where(r == 0, torch.full_like(r, F16_MIN_SUBNORMAL), r)
    _, e = torch.frexp(r)
    spacing = torch.where(r < 2.0**-14, torch.full_like(r, F16_MIN_SUBNORMAL), torch.ldexp(torch.ones_like(r), e - 11))
    r = torch.where((scale64 - r) * steps > 0.5 * r, r + spacing, r)
    r = torch.where(scale64 == 0, torch.ones_like(r), r)
    if bool((r > F16_MAX).any()):
        raise ValueError(
            f"The tensor has values up to |x| = {float(scale64.max()):.3g} x 2**bits, which need a scale above "
            f"float16's maximum {F16_MAX:g}. Rescale the tensor before quantizing."
        )
    return r


def _groups(x: Any, g: Granularity) -> Any:
    """View ``x [rows, cols]`` as ``[rows', n_groups, group]`` for the granularity."""
    rows, cols = x.shape
    if isinstance(g, PerTensor):
        return x.reshape(1, 1, rows * cols)
    size = cols if isinstance(g, PerChannel) else g.size
    return x.reshape(rows, cols // size, size)


def _params_from_range(lo: Any, hi: Any, ratio: float, bits: int, symmetric: bool) -> tuple[Any, Any]:
    """float64 scale (float16-exact) and zero for ranges ``[lo * ratio, hi * ratio]`` with ``lo <= 0 <= hi``."""
    import torch

    lo64, hi64 = lo.double() * ratio, hi.double() * ratio
    if symmetric:
        half = 1 << (bits - 1)
        scale = _store_scale(torch.maximum(-lo64, hi64) / (half - 1), half - 1)
        return scale, torch.full_like(scale, float(half))
    qmax = (1 << bits) - 1
    scale = _store_scale((hi64 - lo64) / qmax, qmax)
    zero = torch.clamp(torch.round(-lo64 / scale), 0, qmax)
    return scale, zero


def qparams_from_range(lo: Any, hi: Any, bits: int, *, symmetric: bool = False) -> tuple[Any, Any]:
    """Scale and zero point for torch ranges ``[lo, hi]`` (any shape, widened to include 0), on their device.

    Returns ``(scale, zero)``: float32 float16-exact scales and uint8 zero points of
    ``lo``'s shape, by the project's rule (symmetric: ``max(|lo|, hi) / (2**(bits-1) - 1)``,
    zero ``2**(bits-1)``; asymmetric: ``(hi - lo) / (2**bits - 1)``, ``zero = rint(-lo / scale)``).

    Examples
    --------
    >>> import torch
    >>> scale, zero = qparams_from_range(torch.tensor([-1.0]), torch.tensor([2.0]), 4)
    >>> float(scale[0]), int(zero[0])
    (0.199951171875, 5)
    """
    import torch

    bits = check_bits(bits)
    zero_t = torch.zeros((), dtype=lo.dtype, device=lo.device)
    lo, hi = torch.minimum(lo.detach(), zero_t), torch.maximum(hi.detach(), zero_t)
    scale, zero = _params_from_range(lo, hi, 1.0, bits, bool(symmetric))
    return scale.float(), zero.to(torch.uint8)


def _codes_grouped(xg: Any, scale: Any, zero: Any, qmin: int, qmax: int) -> Any:
    import torch

    s32 = scale.float().unsqueeze(-1)
    inv = 1.0 / s32
    z32 = zero.float().unsqueeze(-1)
    return torch.clamp(torch.round(xg * inv) + z32, qmin, qmax)  # float32 codes


def _torch_qparams(x: Any, g: Granularity, bits: int, symmetric: bool, clip_search: bool) -> tuple[Any, Any]:
    import torch

    xg = _groups(x.float(), g)  # [rows', n_groups, group]
    zero_t = torch.zeros((), dtype=xg.dtype, device=xg.device)
    lo = torch.minimum(xg.amin(-1), zero_t)
    hi = torch.maximum(xg.amax(-1), zero_t)
    qmin, qmax = (1 if symmetric else 0), (1 << bits) - 1
    scale, zero = _params_from_range(lo, hi, 1.0, bits, symmetric)
    if clip_search:
        best = None
        for ratio in CLIP_RATIOS:
            s_k, z_k = _params_from_range(lo, hi, float(ratio), bits, symmetric)
            q = _codes_grouped(xg, s_k, z_k, qmin, qmax)
            d = ((q - z_k.float().unsqueeze(-1)) * s_k.float().unsqueeze(-1)).double() - xg.double()
            err = (d * d).sum(-1)  # [rows', n_groups]
            if isinstance(g, PerTensor):
                err = err.sum().reshape(1, 1)
            if best is None:
                best, scale, zero = err, s_k, z_k
            else:
                better = err < best
                best = torch.where(better, err, best)
                scale = torch.where(better, s_k, scale)
                zero = torch.where(better, z_k, zero)
    return scale.float(), zero.to(torch.uint8)


def _torch_codes(x: Any, qp: QParams) -> Any:
    import torch

    xg = _groups(x.float(), qp.granularity)
    q = _codes_grouped(xg, qp.scale, qp.zero, qp.qmin, qp.qmax)
    return q.reshape(qp.shape).to(torch.uint8)


def _torch_dequant(codes: Any, qp: QParams) -> Any:
    cg = _groups(codes.float(), qp.granularity)
    x_hat = (cg - qp.zero.float().unsqueeze(-1)) * qp.scale.float().unsqueeze(-1)
    return x_hat.reshape(qp.shape)
