"""Measured latency and throughput of a model on this machine, with what ran."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numba
import torch


from qviz.evaluate.accuracy import _as_model
from qviz.evaluate.kernels import kernel_class, model_kernel

__all__ = ["Threads", "measure_latency", "timeit"]


def timeit(fn: Any, repeats: int, min_time: float = 0.0, sync: Any = None) -> list[float]:
    """Wall times of ``fn()`` after a warm-up; ``sync()`` (a device synchronisation) closes each timed call."""
    done = sync or (lambda: None)
    fn()  # warm-up (JIT, caches, autotuning)
    done()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        done()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    return times


class Threads:
    """Set torch's and Numba's thread counts inside a ``with`` block and restore them after (None: leave as is)."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be None or a positive int; got {threads!r}.")
        self.threads = threads

    def __enter__(self) -> None:
        self.saved = (torch.get_num_threads(), numba.get_num_threads())
        if self.threads is not None:
            torch.set_num_threads(self.threads)
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.saved[0])
        numba.set_num_threads(self.saved[1])


def measure_latency(
    model: Any, inputs: Any, *, batch_size: int = 32, repeats: int = 5, item: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Batch-1 latency and batched throughput of ``model`` on this machine, with what ran.

    Parameters
    ----------
    model
        A :class:`~qviz.QvizModel` (quantized or not, or from :func:`kernel_model`).
    inputs
        Raw inputs (texts or a tensor); the first one is the batch-1 input, the
        first ``batch_size`` the throughput batch.
    batch_size, repeats
        Throughput batch and the number of timed runs (the median is reported).
    item
        What one input is called in the units (default by model kind).
    threads
        torch and Numba threads while timing (restored after); None keeps the current setting.

    Returns
    -------
    dict
        ``latency_ms`` (median, batch 1), ``throughput`` (items/s at ``batch_size``),
        ``tokens_per_item`` (text: real tokens in the batch-1 input), ``kernel``
        (what ran), ``kernel_class`` (``real kernel`` / ``simulated`` / ``full precision``), ``item``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> r = measure_latency(nn.Linear(8, 8), torch.randn(4, 8), batch_size=4, repeats=2)
    >>> sorted(r)
    ['item', 'kernel', 'kernel_class', 'latency_ms', 'throughput', 'tokens_per_item']
    """
    qm = _as_model(model)
    if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"batch_size and repeats must be positive ints; got {batch_size!r}, {repeats!r}.")
    one = qm.prepare(inputs[:1])
    many = qm.prepare(inputs[:batch_size])
    n_many = len(inputs[:batch_size])
    mask = qm.token_mask(one)
    tokens = int(mask.sum()) if mask is not None else 1
    sync = torch.cuda.synchronize if qm.device.type == "cuda" else None  # CUDA runs asynchronously
    with Threads(threads):
        lat = statistics.median(timeit(lambda: qm.run(one), repeats, min_time=0.2, sync=sync))
        thr = statistics.median(timeit(lambda: qm.run(many), max(1, repeats // 2), sync=sync))
    kernel = model_kernel(qm)
    default_item = {"text-encoder": "sentence", "decoder": "sequence", "image-classifier": "image"}.get(qm.kind, "input")
    return {
        "latency_ms": 1e3 * lat,
        "throughput": n_many / thr,
        "tokens_per_item": tokens,
        "kernel": kernel,
        "kernel_class": kernel_class(kernel),
        "item": item or default_item,
    }
