"""Error amplification: per-layer ``‖Δactivation‖ / ‖Δinput‖`` for a perturbation of the input."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from qviz.activations.engine import capture_outputs
from qviz.activations.hooks import select_layers
from qviz.models import QvizModel, is_quantizable, layer_type
from qviz.robustness._checks import as_qviz

__all__ = ["error_amplification"]


def _input_tensor(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, dict) and isinstance(inputs.get("inputs_embeds"), torch.Tensor):
        return inputs["inputs_embeds"]
    raise TypeError(
        "error_amplification needs continuous inputs: an input tensor (images) or prepared text inputs "
        "with 'inputs_embeds' (as robustness.embedding_pgd returns); token ids have no input distance."
    )


def error_amplification(
    model: QvizModel | nn.Module,
    inputs: Any,
    perturbed: Any,
    *,
    layers: Any = None,
) -> xr.Dataset:
    """Per-layer ``‖Δactivation‖ / ‖Δinput‖`` for a perturbation of the input.

    Both inputs run through ``model`` with :func:`qviz.hooks` on the selected
    layers; for each layer the L2 norm of the change of its output (padding
    tokens excluded) is divided by the L2 norm of the input change, per
    example, then averaged. Lin, Gan and Han (2019) show this ratio grows
    layer by layer in a quantized network under adversarial noise
    ("error amplification"), which is why quantized models can be less robust.

    Parameters
    ----------
    model
        Any model; layers as in :func:`qviz.hooks` (default: the quantizable
        layers other than embedding lookups). Layers whose output is not per
        example (no batch dim) are left out.
    inputs, perturbed
        Prepared inputs: image tensors, or text inputs with ``inputs_embeds``.
    layers
        Layer selection as for :func:`qviz.hooks`.

    Returns
    -------
    xr.Dataset
        dim ``layer``; ``amplification`` (mean ratio), ``delta_norm`` (mean
        ‖Δactivation‖), ``activation_norm`` (mean ‖activation‖); attr
        ``input_delta_norm``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = torch.rand(8, 4)
    >>> ds = error_amplification(net, x, x + 0.01)
    >>> list(ds.layer.values)
    ['0', '2']
    """
    qm = as_qviz(model)
    x0, x1 = _input_tensor(inputs), _input_tensor(perturbed)
    if x0.shape != x1.shape:
        raise ValueError(f"perturbed must have the shape of inputs {tuple(x0.shape)}; got {tuple(x1.shape)}.")
    mask = qm.token_mask(inputs)
    d_in = x1.detach().float() - x0.detach().float()
    if mask is not None and d_in.dim() == 3:
        d_in = d_in * mask.unsqueeze(-1).to(d_in.dtype)
    d_in_norm = d_in.flatten(1).norm(dim=1)  # [batch]
    if not (d_in_norm > 0).any():
        raise ValueError("perturbed equals inputs: the input change is zero, so there is nothing to amplify.")
    if is_quantizable(qm.module) and layers is None:
        names = [""]  # a bare layer: hooks() hooks the layer itself
    elif layers is None:  # weight layers the perturbation flows through (embedding lookups take no part)
        names = [n for n, m in select_layers(qm, None, include_norms=False).items() if layer_type(m) != "embedding"]
    else:
        names = list(select_layers(qm, layers))
    a0 = capture_outputs(qm, inputs, names, mask)
    a1 = capture_outputs(qm, perturbed, names, mask)
    used = [n for n in names if n in a0 and n in a1]
    keep = d_in_norm > 0
    amp, dn, an = [], [], []
    for n in used:
        delta = (a1[n] - a0[n]).norm(dim=1)  # [batch]
        amp.append(float((delta[keep] / d_in_norm[keep]).mean()))
        dn.append(float(delta[keep].mean()))
        an.append(float(a0[n].norm(dim=1)[keep].mean()))
    return xr.Dataset(
        {
            "amplification": ("layer", np.array(amp), {"long_name": "‖Δactivation‖ / ‖Δinput‖", "units": "1"}),
            "delta_norm": ("layer", np.array(dn), {"long_name": "‖Δactivation‖ (L2, mean over inputs)", "units": "activation units"}),
            "activation_norm": ("layer", np.array(an), {"long_name": "‖activation‖ (L2, mean over inputs)", "units": "activation units"}),
        },
        coords={"layer": np.array(used, dtype=object)},
        attrs={"input_delta_norm": float(d_in_norm[keep].mean()), "model": qm.name},
    )
