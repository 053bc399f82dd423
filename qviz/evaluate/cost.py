"""What a quantized model costs to run: measured here, estimated elsewhere.

* **Measured** (:func:`measure_latency`): batch-1 latency and batched
  throughput of a model on this machine, labelled with what ran. A
  fake-quant model does float arithmetic on dequantized weights, so it is no
  faster than full precision: its timings are labelled ``simulated``. Real
  low-bit kernels are labelled ``real kernel``: bitsandbytes ``Linear8bitLt`` /
  ``Linear4bit``, the packed INT4/INT8 matrix-vector kernels of
  :mod:`kernels_numba` (:func:`kernel_model` swaps them in for weight-only RTN
  layers) and torch's dynamic int8 ``Linear`` (fbgemm). :func:`gemv_benchmark`
  times one matrix-vector product (one token at batch 1) per kernel and shape.
* **Estimated** (:func:`roofline`): batch-1 decoding reads every weight once
  per token, so tokens/s is at most ``bandwidth / bytes per token`` (and
  ``FLOP/s / 2·params`` when compute is the limit). The hardware is an
  editable table (:func:`hardware_table`): memory, bandwidth, price per
  hour. From it: dollars per million tokens and per thousand queries, and
  whether the model fits (:func:`fits_on`).

The default rows are public list figures, rounded, for orientation; edit
them (``hardware_table([...])``) for your own prices.

This module gathers the public names of the modules that do each job:
:mod:`~qviz.evaluate.hardware` (the table), :mod:`~qviz.evaluate.roofline`
(estimates and prices), :mod:`~qviz.evaluate.kernels` (which kernel runs,
real-kernel views), :mod:`~qviz.evaluate.timing` (measured latency) and
:mod:`~qviz.evaluate.gemv` (the GEMV benchmark).

Examples
--------
>>> hw = hardware_table()
>>> list(hw.hardware.values)[1:]
['consumer GPU (RTX 4090)', 'data-centre GPU (H100 SXM)', 'phone (LPDDR5X)']
>>> float(roofline(35e9, hw).tokens_per_s.sel(hardware="data-centre GPU (H100 SXM)")) > 90
True
"""

from __future__ import annotations

from qviz.evaluate.gemv import gemv_benchmark
from qviz.evaluate.hardware import (
    DEFAULT_HARDWARE,
    Hardware,
    as_hardware_table,
    asdict_hardware,
    gpu_row_name,
    hardware_table,
    measure_memory_bandwidth,
)
from qviz.evaluate.kernels import kernel_class, kernel_model, model_kernel
from qviz.evaluate.roofline import cost_table, fits_on, offload_roofline, roofline, usd_per_1k_queries, usd_per_1m_tokens
from qviz.evaluate.timing import Threads, measure_latency

__all__ = [
    "DEFAULT_HARDWARE",
    "Hardware",
    "Threads",
    "as_hardware_table",
    "asdict_hardware",
    "cost_table",
    "fits_on",
    "gemv_benchmark",
    "gpu_row_name",
    "hardware_table",
    "kernel_class",
    "kernel_model",
    "measure_latency",
    "measure_memory_bandwidth",
    "model_kernel",
    "offload_roofline",
    "roofline",
    "usd_per_1k_queries",
    "usd_per_1m_tokens",
]
