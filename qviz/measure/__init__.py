"""Measurement: what quantization does to each layer, and where the model breaks.

The fourth stage of qviz's flow (models and data -> activations -> quantization ->
**measurement** -> evaluation -> presentation):

- :mod:`~qviz.measure.error`: :func:`qviz.layer_error`, weight and output error per layer;
- :mod:`~qviz.measure.sensitivity`: :func:`qviz.sensitivity` and :func:`qviz.recommend`, one layer at a time end to end;
- :mod:`~qviz.measure.limits`: :func:`qviz.limits`, the lowest bit width each layer holds;
- :mod:`~qviz.measure.lab`: ``LayerLab``, one layer under one config, behind the QuantExplorer.
"""
