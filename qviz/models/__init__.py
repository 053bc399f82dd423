"""Models qviz knows how to load, feed and run.

:func:`load` returns a :class:`QvizModel`: the ``torch.nn.Module`` plus the
knowledge of how to turn raw inputs (texts, images, tensors) into model inputs
and how to run a batch. Everything downstream (capture, quantize, compare)
takes a ``QvizModel`` or a plain module, which :func:`load` wraps.

The package, in the order a model is met:

* :mod:`~qviz.models.layers` — layer taxonomy (which layers are hooked and quantized, their weights);
* :mod:`~qviz.models.tokenizer` — the byte tokenizer of the random decoders;
* :mod:`~qviz.models.model` — :class:`QvizModel` and the checks at its door;
* :mod:`~qviz.models.catalogue` — the names :func:`load` knows and the cache;
* :mod:`~qviz.models.digits` — the digits CNN and its training;
* :mod:`~qviz.models.gguf` — models read from GGUF files (SmolLM2, any ``.gguf``);
* :mod:`~qviz.models.zoo` — :func:`load`.

Examples
--------
>>> import qviz
>>> model = qviz.load("digits-cnn")              # doctest: +SKIP
>>> model.run(model.prepare(qviz.calibration_data(model, n=4))).shape  # doctest: +SKIP
torch.Size([4, 10])
"""

from __future__ import annotations

from qviz.models.catalogue import KNOWN_MODELS, cache_dir
from qviz.models.digits import DIGITS_CNN_VERSION, DigitsCNN, load_digits_cnn, train_digits_cnn
from qviz.models.layers import dequantized_weight, is_norm, is_quantizable, layer_type, weight_matrix
from qviz.models.model import (
    KINDS,
    NonFiniteInputWarning,
    QvizModel,
    as_module,
    available_memory,
    check_batch,
    check_finite_inputs,
    check_fits_in_memory,
    check_materialized,
    describe_batch,
    expected_input,
    first_layer,
    layer_names,
    quantizable_layers,
)
from qviz.models.tokenizer import ByteTokenizer
from qviz.models.zoo import load

_load_digits_cnn = load_digits_cnn  # its name before the split (tests/test_reliability.py calls it)

__all__ = [
    "DIGITS_CNN_VERSION",
    "KINDS",
    "KNOWN_MODELS",
    "ByteTokenizer",
    "DigitsCNN",
    "NonFiniteInputWarning",
    "QvizModel",
    "as_module",
    "available_memory",
    "cache_dir",
    "check_batch",
    "check_finite_inputs",
    "check_fits_in_memory",
    "check_materialized",
    "dequantized_weight",
    "describe_batch",
    "expected_input",
    "first_layer",
    "is_norm",
    "is_quantizable",
    "layer_names",
    "layer_type",
    "load",
    "load_digits_cnn",
    "quantizable_layers",
    "train_digits_cnn",
    "weight_matrix",
]
