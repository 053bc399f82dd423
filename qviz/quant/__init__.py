"""Quantizers: configs, the method registry, tensor- and model-level quantization, errors."""
