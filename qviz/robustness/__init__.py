"""Adversarial robustness of full-precision and quantized models.

White-box attacks need the gradient of the loss with respect to the input.
A quantized layer has none worth following: rounding is flat almost
everywhere, and real low-bit kernels (bitsandbytes, torch's dynamic int8)
are not differentiable at all. :func:`straight_through` therefore wraps each
quantized layer so that its forward value is the quantized layer's own
output while its backward is that of a float layer holding the
*dequantized* weight (the straight-through estimator). Every attack here
uses it by default (``ste=True``); a transfer attack instead crafts the
perturbation on the full-precision model and applies it to the quantized one.

What is here (one module per job)
---------------------------------
* :mod:`~qviz.robustness.straight_through` — the straight-through view of a quantized model;
* :mod:`~qviz.robustness.attack` — the gradient loop the attacks share (:mod:`._checks`: their input checks);
* :mod:`~qviz.robustness.images`, :mod:`~qviz.robustness.text` — image and text attacks;
* :mod:`~qviz.robustness.amplification` — error amplification.

* :func:`fgsm`, :func:`pgd`: L∞ and L2 attacks on image classifiers
  (``digits-cnn``); inputs stay in ``clamp`` (``[0, 1]`` by default).
* :func:`success_rate`: among inputs the model gets right, the share whose
  prediction flips under attack.
* :func:`embedding_pgd`: an L2 attack in the input-embedding space of a text
  encoder (``minilm``) against nearest-neighbour retrieval; success means the
  retrieved item changes from the right one.
* :func:`token_substitution`: a discrete, gradient-guided attack (HotFlip,
  Ebrahimi et al. 2018) that swaps whole tokens of the query.
* :func:`error_amplification`: per-layer ``‖Δactivation‖ / ‖Δinput‖``, the
  quantity Lin, Gan and Han ("Defensive Quantization", ICLR 2019) show grows
  through a quantized network.

Examples
--------
>>> import qviz
>>> from qviz import robustness
>>> model = qviz.load("digits-cnn")                                   # doctest: +SKIP
>>> x, y = qviz.eval_data(model, n=64)                                # doctest: +SKIP
>>> x_adv = robustness.pgd(model, x, y, eps=0.1, alpha=0.02, steps=10)  # doctest: +SKIP
>>> robustness.success_rate(model, x, x_adv, y)                       # doctest: +SKIP
0.53...
"""

from __future__ import annotations

from qviz.models.layers import dequantized_weight
from qviz.robustness._checks import NORMS
from qviz.robustness.amplification import error_amplification
from qviz.robustness.images import fgsm, pgd, success_counts, success_rate
from qviz.robustness.straight_through import straight_through
from qviz.robustness.text import embed_inputs, embedding_pgd, retrieval_success_counts, retrieval_success_rate, token_substitution

__all__ = [
    "embed_inputs",
    "NORMS",
    "dequantized_weight",
    "embedding_pgd",
    "error_amplification",
    "fgsm",
    "pgd",
    "retrieval_success_counts",
    "retrieval_success_rate",
    "straight_through",
    "success_counts",
    "success_rate",
    "token_substitution",
]
