"""Activations: what flows through the model, seen through forward hooks.

The second stage of qviz's flow (models and data -> **activations** -> quantization ->
measurement -> evaluation -> presentation):

- :mod:`~qviz.activations.hooks`: :func:`qviz.hooks`, the context manager every capture is built on;
- :mod:`~qviz.activations.engine`: the one batch loop, rows from a layer's input, calibration-input capture;
- :mod:`~qviz.activations.moments`: streaming per-channel moments (Numba on the host, Triton on CUDA);
- :mod:`~qviz.activations.capture`: :func:`qviz.capture`, per-channel statistics as an ``xr.Dataset``;
- :mod:`~qviz.activations.outliers`: outlier ratios and recurring channels of those statistics;
- :mod:`~qviz.activations.massive`: :func:`qviz.massive_activations` of a decoder's residual stream.
"""
