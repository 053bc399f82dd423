"""Hadamard rotations (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al. 2024) and ``qviz.Rotated(cfg)``.

:func:`rotate` returns a rotated full-precision COPY of a Llama-family decoder
whose output equals the original's up to float rounding, but whose linear
layers see inputs with no outlier channels:

1. every RMSNorm scale ``γ`` is folded into the linear layers that read the
   norm's output (``W ← W diag(γ)``, ``γ ← 1``), the final norm's into ``lm_head``
   (a tied ``lm_head`` is untied first);
2. the residual stream is rotated by a random orthogonal Hadamard matrix
   ``Q = H diag(±1) / sqrt(d)``: the embedding rows become ``E Q``, every layer
   that reads the stream ``W ← W Q``, every layer that writes it (``o_proj``,
   ``down_proj``) ``W ← Qᵀ W`` (and its bias ``b ← b Q``). RMSNorm commutes with ``Q``
   (``||x Q|| = ||x||``) once its scale is 1;
3. each value head is rotated by a Hadamard matrix of the head dimension,
   folded into ``v_proj`` (output side) and ``o_proj`` (input side): exact,
   because attention mixes the value vectors of a head linearly;
4. an online Hadamard ``H`` of the MLP width runs before each ``down_proj``
   (:class:`OnlineHadamard` inside :class:`RotatedMLP`), with ``W_down ← W_down H``.

Hadamard matrices exist for sizes ``2**k`` (Sylvester) and ``2**k (q + 1)``
for a prime ``q ≡ 3 (mod 4)`` (Paley), which covers 64, 576 = 8·72, 1536 = 128·12
and 176 = 4·44; for any other size the rotation is a random orthogonal matrix
(the reason is recorded in ``model.rotation``).

:class:`Rotated` is a config wrapping any weight config: rotate the model copy,
then quantize its layers with the inner method, optionally with activation
quantization on the rotated inputs (QuaRot's W4A4: ``Rotated(GPTQ(bits=4), act_bits=4)``).

Examples
--------
>>> import torch, qviz
>>> model = qviz.load("tiny-llama")
>>> rot = qviz.rotate(model)
>>> ids = torch.tensor([[1, 5, 9, 3]])
>>> bool(torch.allclose(rot.module(ids).logits, model.module(ids).logits, atol=1e-4))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from qviz.models import QvizModel, as_module, load
from qviz.quant.actquant import act_module, calibrate_act_amax
from qviz.quant.config import QuantConfig
from qviz.quant.fp import _ActFields
from qviz.quant.method import FormatBits, LayerQuant, Method, method_for, register

__all__ = ["Rotated", "rotate", "hadamard_matrix", "random_hadamard", "OnlineHadamard", "RotatedMLP",
           "SUPPORTED_ARCHITECTURES"]

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
"""``config.model_type`` values whose decoder layers :func:`rotate` knows how to fold."""


# --------------------------------------------------------------------------- Hadamard matrices


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, int(math.isqrt(n)) + 1))


def _paley(q: int) -> torch.Tensor:
    """Paley's construction I: a Hadamard matrix of order ``q + 1`` for a prime ``q ≡ 3 (mod 4)``."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if i in squares else -1.0 for i in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q).unsqueeze(0) - torch.arange(q).unsqueeze(1)) % q  # [q, q]: j - i mod q
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = chi[idx]
    return s + torch.eye(q + 1, dtype=torch.float64)


def hadamard_matrix(n: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix ``[n, n]`` (float64, ``H Hᵀ = n I``), or None where no construction here reaches ``n``.

    Examples
    --------
    >>> h = hadamard_matrix(12)
    >>> bool(torch.equal(h @ h.T, 12 * torch.eye(12, dtype=torch.float64)))
    True
    >>> hadamard_matrix(36) is None
    True
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}.")
    base, m = None, n
    while True:  # n = m * 2**k: find the smallest Paley order m (or 1) that leaves a power of two
        if m == 1:
            base = torch.ones(1, 1, dtype=torch.float64)
        elif m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            base = _paley(m - 1)
        if base is not None or m % 2:
            break
        m //= 2
    if base is None:
        return None
    h = base
    two = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(h, two)
    return h


def random_hadamard(n: int, generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """An orthogonal ``[n, n]`` float64 matrix: ``H diag(±1) / sqrt(n)`` with random signs, or a random
    orthogonal matrix (QR of a Gaussian) where no Hadamard matrix of order ``n`` is built here; and what it is.

    Examples
    --------
    >>> q, kind = random_hadamard(8, torch.Generator().manual_seed(0))
    >>> kind, bool(torch.allclose(q @ q.T, torch.eye(8, dtype=torch.float64)))
    ('randomized Hadamard 8', True)
    """
    h = hadamard_matrix(n)
    if h is None:
        g = torch.randn(n, n, generator=generator, dtype=torch.float64)
        qm, r = torch.linalg.qr(g)
        return qm * torch.sign(torch.diagonal(r)).unsqueeze(0), (
            f"random orthogonal {n} (no Hadamard matrix of order {n}: it is not 2^k or 2^k(q+1) with q prime, q = 3 mod 4)")
    signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    return signs.unsqueeze(1) * h / math.sqrt(n), f"randomized Hadamard {n}"


class OnlineHadamard(nn.Module):
    """Multiplies the last dim of its input by an orthogonal matrix ``H [n, n]`` (``x ↦ x H``), in float32 or wider.

    A randomized Hadamard matrix (every entry ``±c``, ``c = 1/sqrt(n)``) is held as
    its ±1 sign matrix (``matrix``) and the scalar ``scale = c``: ``x H = (x S) c``.
    The signs stay exact when the model is cast (``model.half()`` would round ``c``
    itself to float16, a relative error up to 5e-4 against the ``W H`` folded into
    ``down_proj``); the float32 result differs from the exact product by the
    rounding of the ``n``-term sums, about 2.5e-7 relative (n = 176 to 2048,
    measured). Any other orthogonal matrix (the random fallback) is held as is,
    ``scale = 1``. Inputs narrower than float32 are computed in float32; float64 stays float64.

    Examples
    --------
    >>> mod = OnlineHadamard(torch.eye(4))
    >>> mod(torch.ones(2, 4)).tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    >>> h = OnlineHadamard(hadamard_matrix(4) / 2)
    >>> h.scale, h.matrix.unique().tolist()
    (0.5, [-1.0, 1.0])
    """

    def __init__(self, matrix: torch.Tensor) -> None:  # matrix [n, n]
        super().__init__()
        m = matrix.detach().double()
        c = float(m.abs().max())
        uniform = c > 0 and bool((m.abs() == c).all())
        self.scale = c if uniform else 1.0
        self.register_buffer("matrix", (torch.sign(m) if uniform else m).float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., n] -> [..., n]
        dt = torch.promote_types(x.dtype, torch.float32)
        y = x.to(dt) @ self.matrix.to(dt)
        return (y * self.scale if self.scale != 1.0 else y).to(x.dtype)

    def extra_repr(self) -> str:
        return f"n={self.matrix.shape[0]}" + (f", scale={self.scale:.6g}" if self.scale != 1.0 else "")


class RotatedMLP(nn.Module):
    """A gated MLP ``down(H(act(gate(x)) * up(x)))`` with an :class:`OnlineHadamard` before ``down_proj``.

    Holds the original MLP's ``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn`` under their
    own names, so layer names (``...mlp.down_proj``) do not change and a quantized ``down_proj``
    still receives the rotated input.
    """

    def __init__(self, mlp: nn.Module, hadamard: torch.Tensor | OnlineHadamard) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        self.online_hadamard = hadamard if isinstance(hadamard, OnlineHadamard) else OnlineHadamard(hadamard)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., hidden] -> [..., hidden]
        return self.down_proj(self.online_hadamard(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


# --------------------------------------------------------------------------- folding


def _decoder_parts(module: nn.Module) -> tuple[Any, nn.Module, list[nn.Module], nn.Module, nn.Module]:
    """``(config, embed_tokens, layers, final norm, lm_head)``, or a ValueError naming what cannot be folded."""
    config = getattr(module, "config", None)
    arch = getattr(config, "model_type", None)
    name = type(module).__name__
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"qviz.rotate cannot fold {name} (architecture {arch!r}): it rotates Llama-family decoders with "
            f"RMSNorm and gated MLPs ({', '.join(SUPPORTED_ARCHITECTURES)}). "
            + ("LayerNorm subtracts the mean and has a bias, which a rotation of the residual stream does not commute with. "
               if arch in ("gpt2", "bert", "opt") else "")
            + "Quantize this model without rotation, or with qviz.SmoothQuant to tame its outliers."
        )
    inner = getattr(module, "model", None)
    head = getattr(module, "lm_head", None)
    needed = ("embed_tokens", "layers", "norm")
    if inner is None or head is None or any(not hasattr(inner, a) for a in needed):
        raise ValueError(f"qviz.rotate cannot fold {name} ({arch}): expected .model.embed_tokens, .model.layers, "
                         ".model.norm and .lm_head (a *ForCausalLM model).")
    for i, layer in enumerate(inner.layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        ok = attn is not None and mlp is not None and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        ok = ok and all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj", "act_fn"))
        norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
        ok = ok and all(getattr(n, "weight", None) is not None and getattr(n, "bias", None) is None for n in norms)
        if not ok:
            raise ValueError(
                f"qviz.rotate cannot fold layer {i} of {name} ({arch}): expected self_attn.{{q,k,v,o}}_proj, "
                "mlp.{gate,up,down}_proj and bias-free input/post-attention RMSNorms."
            )
    return config, inner.embed_tokens, list(inner.layers), inner.norm, head


def _set(param: nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.data = value.to(dtype=param.dtype, device=param.device).contiguous()


class _Float64Weights:
    """The weights being folded and rotated, held in float64 and cast once to their own dtype.

    Every step (``W diag(γ)``, ``W Q``, ``Qᵀ W``, the value-head and online Hadamards) works on the
    float64 value of the parameter, so a weight touched by four steps is rounded once, by
    :meth:`commit`, not after each step.
    """

    def __init__(self) -> None:
        self._values: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}

    def get(self, param: nn.Parameter) -> torch.Tensor:
        if id(param) not in self._values:
            self._values[id(param)] = (param, param.detach().double())
        return self._values[id(param)][1]

    def put(self, param: nn.Parameter, value: torch.Tensor) -> None:
        self.get(param)
        self._values[id(param)] = (param, value)

    def commit(self) -> None:
        """Cast every staged value to its parameter's dtype (the one rounding) and forget them."""
        for param, value in self._values.values():
            _set(param, value)
        self._values.clear()


def _fold_norm(w: _Float64Weights, norm: nn.Module, readers: list[nn.Linear]) -> None:
    gamma = w.get(norm.weight)  # [d]
    for lin in readers:
        w.put(lin.weight, w.get(lin.weight) * gamma.unsqueeze(0))
    w.put(norm.weight, torch.ones_like(gamma))


def _read(w: _Float64Weights, lin: nn.Module, q: torch.Tensor) -> None:  # the layer reads x Q: W <- W Q
    w.put(lin.weight, w.get(lin.weight) @ q.to(lin.weight.device))


def _write(w: _Float64Weights, lin: nn.Linear, q: torch.Tensor) -> None:  # output becomes y Q: W <- Qᵀ W, b <- b Q
    q = q.to(lin.weight.device)
    w.put(lin.weight, q.T @ w.get(lin.weight))
    if lin.bias is not None:
        w.put(lin.bias, w.get(lin.bias) @ q)


def rotate_(model: QvizModel | nn.Module, *, seed: int = 0, online: bool = True) -> dict[str, Any]:
    """Rotate ``model`` IN PLACE (see :func:`rotate`, which works on a copy); returns what was done.

    Each weight is folded and rotated in float64 and cast to its dtype once (one decoder layer at a
    time, so the float64 copies never exceed one layer plus the embedding and ``lm_head``).
    """
    module = as_module(model)
    config, embed, layers, final_norm, head = _decoder_parts(module)
    gen = torch.Generator().manual_seed(seed)
    d = embed.weight.shape[1]
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(config, "head_dim", None) or d // n_heads)
    info: dict[str, Any] = {"seed": seed, "architecture": config.model_type}

    if head.weight is embed.weight or getattr(config, "tie_word_embeddings", False):
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
        config.tie_word_embeddings = False
        extra = head.weight.numel() * head.weight.element_size()
        info["untied_lm_head"] = (
            f"lm_head untied from the embedding: the final norm's scale folds into lm_head but not into the "
            f"embedding rows, so the two {tuple(head.weight.shape)} matrices differ; +{extra:,} bytes "
            f"({head.weight.dtype}) over the tied model (QuaRot and SpinQuant untie the same way)")
        info["untied_bytes"] = int(extra)
    # the draws, in this order: residual Q, value-head H, down_proj H (a seed gives the same matrices)
    q, info["residual"] = random_hadamard(d, gen)
    h_head, info["value_heads"] = random_hadamard(head_dim, gen)
    h_ff = None
    if online:
        h_ff, info["online_down_proj"] = random_hadamard(int(layers[0].mlp.down_proj.weight.shape[1]), gen)
        h_ff_module = OnlineHadamard(h_ff)  # one matrix, shared by every layer's RotatedMLP
    v_rot = torch.block_diag(*[h_head] * n_kv)  # [n_kv * head_dim]^2: each value head V_h <- V_h H
    o_rot = torch.block_diag(*[h_head] * n_heads)  # o_proj reads the rotated heads

    w = _Float64Weights()
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fold_norm(w, layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        _fold_norm(w, layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _read(w, lin, q)
        _write(w, attn.o_proj, q)
        _write(w, mlp.down_proj, q)
        _write(w, attn.v_proj, v_rot)
        _read(w, attn.o_proj, o_rot)
        if h_ff is not None:
            _read(w, mlp.down_proj, h_ff)
        w.commit()
        if h_ff is not None:
            layer.mlp = RotatedMLP(mlp, h_ff_module)
    _fold_norm(w, final_norm, [head])
    _read(w, head, q)
    w.put(embed.weight, w.get(embed.weight) @ q.to(embed.weight.device))
    w.commit()
    info["attention_output"] = (f"per-head {info['value_heads']} folded into v_proj/o_proj; no online Hadamard "
                                f"across the {n_heads} heads")
    return info


def why_not_rotatable(model: Any) -> str | None:
    """None when :func:`rotate` can fold ``model``, else the reason it cannot.

    Examples
    --------
    >>> import torch
    >>> why_not_rotatable(torch.nn.Linear(2, 2)).startswith("qviz.rotate cannot fold Linear")
    True
    """
    try:
        _decoder_parts(as_module(model))
    except ValueError as err:
        return str(err)
    return None


def rotate(model: Any, *, seed: int = 0, online: bool = True) -> Any:
    """A rotated full-precision COPY of a Llama-family decoder; its output equals the original's.

    Folds every RMSNorm scale into the following linear layers, rotates the
    residual stream with a random orthogonal Hadamard matrix (embeddings,
    ``lm_head`` and every layer that reads or writes the stream updated; a tied
    ``lm_head`` untied), rotates each value head (folded into ``v_proj`` and
    ``o_proj``) and, with ``online``, puts an online Hadamard before each MLP
    ``down_proj``. What was done is in ``result.rotation`` (a dict).

    Parameters
    ----------
    model : QvizModel, nn.Module or model name
        Never changed.
    seed : int
        Seed of the random signs (and of any random orthogonal fallback).
    online : bool
        Add the online Hadamard before ``down_proj``.

    Returns
    -------
    QvizModel or nn.Module
        The same kind as given (a name gives a QvizModel).

    Raises
    ------
    ValueError
        For an architecture it cannot fold (named), e.g. GPT-2's LayerNorm.

    Examples
    --------
    >>> import qviz
    >>> qviz.rotate(qviz.load("tiny-llama")).rotation["residual"]
    'randomized Hadamard 64'
    >>> qviz.rotate("tiny-gpt2")
    Traceback (most recent call last):
    ...
    ValueError: qviz.rotate cannot fold GPT2LMHeadModel (architecture 'gpt2'): ...
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int; got {seed!r}.")
    if not isinstance(online, bool):
        raise ValueError(f"online must be True or False; got {online!r}.")
    qm = model if isinstance(model, (QvizModel, nn.Module)) else load(model)
    _decoder_parts(as_module(qm))  # refuse before copying
    out = qm.copy() if isinstance(qm, QvizModel) else _deepcopy(qm)
    info = rotate_(out, seed=seed, online=online)
    if isinstance(out, QvizModel):
        out.name = f"{qm.name} [rotated]"
    out.rotation = info
    return out


def _deepcopy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


# --------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class Rotated(_ActFields):
    """Rotate the model (:func:`rotate`), then quantize it with ``inner``; optional activation quantization on top.

    Parameters
    ----------
    inner : QuantConfig
        Any registered weight config (RTN, GPTQ, AWQ, HQQ, the FP formats, ...); it may quantize
        activations itself (``RTN(act_bits=4)``), or ``Rotated``'s own ``act_*`` fields do.
    seed, online
        As :func:`rotate`.

    Examples
    --------
    >>> import qviz
    >>> qviz.Rotated(qviz.GPTQ(bits=4), act_bits=4).label
    'Rot+GPTQ w4 g128 act a4/token'
    """

    inner: QuantConfig = field(default_factory=lambda: _default_inner())
    seed: int = 0
    online: bool = True
    method: ClassVar[str] = "rotated"

    def __post_init__(self) -> None:
        if not isinstance(self.inner, QuantConfig) or isinstance(self.inner, Rotated):
            raise TypeError(f"Rotated wraps one weight config such as qviz.GPTQ(bits=4); got {self.inner!r}.")
        method_for(self.inner)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"Rotated seed must be an int; got {self.seed!r}.")
        if not isinstance(self.online, bool):
            raise ValueError(f"Rotated online must be True or False; got {self.online!r}.")
        self._check_act()
        if self.act_bits is not None and getattr(self.inner, "act_bits", None) is not None:
            raise ValueError(f"Both Rotated and its inner config {self.inner.label!r} quantize activations; "
                             "set act_bits on one of them.")

    @property
    def group_size(self) -> Any:
        return getattr(self.inner, "group_size", None)

    @property
    def weight_bits(self) -> int | None:
        return self.inner.weight_bits

    @property
    def label(self) -> str:
        seed = f" seed {self.seed}" if self.seed else ""
        return f"Rot+{self.inner.label}{'' if self.online else ' offline'}{seed}{self._act_label()}"


def _default_inner() -> QuantConfig:
    from qviz.quant.config import RTN

    return RTN(bits=4, group_size=128)


@register(Rotated)
class RotatedMethod(Method):
    """Rotate the copy in ``prepare``, then hand every layer to the inner method.

    ``needs_inputs`` is True for every inner config (GPTQ and AWQ need the rotated
    inputs); layers are calibrated on the full-precision rotated model
    (``sequential = False``).
    """

    needs_inputs = True
    sequential = False
    layer_types = ("linear",)

    def prepare(self, model: Any, cfg: Rotated, calib: Any, layers: dict[str, nn.Module]) -> Any:
        """Rotate the copy in place, then run the inner method's ``prepare`` on the rotated layers."""
        qm = load(model) if not isinstance(model, QvizModel) else model
        qm.rotation = rotate_(qm, seed=cfg.seed, online=cfg.online)
        root = qm.module
        layers = {n: root.get_submodule(n) for n in layers}
        inner_state = method_for(cfg.inner).prepare(qm, cfg.inner, calib, layers)
        amax = calibrate_act_amax(qm, calib, list(layers), cfg.label) if cfg.act_static else None
        return inner_state, amax, qm.rotation

    def quantize_layer(self, name: str, module: nn.Module, cfg: Rotated, inputs: torch.Tensor | None,
                       state: Any) -> LayerQuant:
        """The inner method's layer, with this config's activation quantization when it has one."""
        inner_state, amax, _ = state
        inner = method_for(cfg.inner)
        lq = inner.quantize_layer(name, module, cfg.inner, inputs if inner.needs_inputs else None, inner_state)
        if cfg.activation is None:
            return lq
        new = act_module(module, name, lq.weight_hat, cfg.activation, None if amax is None else amax[name])
        return LayerQuant(new, lq.weight_hat, lq.nbytes, getattr(new, "kernel", lq.kernel), lq.info)

    def finalize(self, model: Any, cfg: Rotated, calib: Any, state: Any) -> dict[str, Any]:
        """The inner method's extra info, plus ``"rotation"``: what :func:`rotate_` did (an untied
        ``lm_head`` and the bytes it adds included)."""
        return {**method_for(cfg.inner).finalize(model, cfg.inner, calib, state[0]), "rotation": state[2]}

    def refuse(self, name: str, shape: tuple[int, int], cfg: Rotated) -> str | None:
        """The inner method's refusal (a rotation keeps every weight's shape)."""
        return method_for(cfg.inner).refuse(name, shape, cfg.inner)

    def changes_model(self, cfg: Rotated) -> bool:
        """True: :meth:`prepare` rotates the copy (norms folded, residual stream rotated)."""
        return True

    def weight_only(self, cfg: Rotated) -> bool:
        """True without activation quantization when the inner method is weight-only."""
        return cfg.activation is None and method_for(cfg.inner).weight_only(cfg.inner)

    def layer_output(self, lq: LayerQuant, x: torch.Tensor) -> torch.Tensor:
        from qviz.quant.rtn import output_without_bias

        with torch.no_grad():
            return output_without_bias(lq.module, x)

    def format_bits(self, cfg: Rotated, row_length: int) -> FormatBits:
        """The inner config's storage (the rotation is folded into the weights)."""
        f = method_for(cfg.inner).format_bits(cfg.inner, row_length)
        return FormatBits(cfg.label, f.code_bits, f.overhead_bits,
                          f.overhead + " (rotation folded into the weights; the one online Hadamard matrix, n² float32 signs "
                          "shared by every down_proj, counts among the model's full-precision bytes)")
