"""Streaming per-channel moments of a layer's activations, for :func:`qviz.capture`.

One rule with two backends: the Numba kernels of :mod:`kernels_numba.stats`
(count, min, max, absmax, mean, M2..M4 merged with the Chan/Pébay formulas,
log10|x| histogram) on the host, and their Triton counterpart
:mod:`qviz.gpu.stats` on a CUDA device, which keeps the state on the device
until the end. Activations on any other device (or CUDA without Triton) are
copied to the host batch by batch and go through Numba. Both backends end in
:func:`kernels_numba.finalize_channel_stats`, so std, skewness and kurtosis
have one definition.

Examples
--------
>>> import torch
>>> acc = accumulator(2, 8, -6.0, 4.0, torch.device("cpu"))
>>> acc.update(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
>>> acc.finalize()["mean"].tolist()
[2.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import kernels_numba as kn

HIST_LOG10_RANGE = (-6.0, 4.0)  # |x| from 1e-6 to 1e4; the end bins also hold what falls outside

__all__ = ["HIST_LOG10_RANGE", "DeviceQueue", "HostMoments", "TritonMoments", "accumulator", "fetch_all"]


def _summary(state: kn.ChannelStats) -> dict[str, np.ndarray]:
    """The per-channel summary of a running state: float64 ``[channels]`` each, and ``hist``."""
    summary = kn.finalize_channel_stats(state)
    out = {k: getattr(summary, k) for k in ("count", "min", "max", "absmax", "mean", "std", "skewness", "kurtosis")}
    out["count"] = out["count"].astype(np.float64)
    out["hist"] = state.hist  # [channels, n_bins]
    return out


class HostMoments:
    """The host accumulator: one fused Numba pass per batch (:mod:`kernels_numba.stats`)."""

    takes_row_mask = False

    def __init__(self, n_channels: int, n_bins: int, lo: float, hi: float) -> None:
        self.n_channels, self.n_bins, self.lo, self.hi = n_channels, n_bins, lo, hi
        self.state = kn.new_channel_stats(n_channels, n_bins, lo, hi)

    @property
    def n_nonfinite(self) -> int:
        """NaN/Inf values skipped."""
        return int(self.state.nonfinite.sum())

    @staticmethod
    def _host_rows(x: torch.Tensor) -> np.ndarray:
        return x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()  # [rows, channels]

    @torch.no_grad()
    def batch_stats(self, x: torch.Tensor) -> kn.ChannelStats:
        """Statistics of one batch ``x`` ``[rows, channels]``, ready for :meth:`merge`."""
        batch = kn.new_channel_stats(self.n_channels, self.n_bins, self.lo, self.hi)
        return kn.update_channel_stats(batch, self._host_rows(x))

    def merge(self, batch: kn.ChannelStats) -> None:
        """Fold one batch's statistics into the running ones."""
        kn.merge_channel_stats(self.state, batch)

    def update(self, x: torch.Tensor) -> None:  # x: [rows, channels]
        """Fold the batch ``x`` into the running statistics."""
        if x.shape[0]:
            kn.update_channel_stats(self.state, self._host_rows(x))

    def finalize(self) -> dict[str, np.ndarray]:
        """Per-channel summary (see :func:`kernels_numba.finalize_channel_stats`)."""
        return _summary(self.state)


class TritonMoments:
    """The CUDA accumulator: one Triton launch per layer and batch (:mod:`qviz.gpu.stats`), no host sync.

    Padding rows are masked out in the kernel instead of being gathered away (a boolean index
    would wait for the device); the NaN/Inf count stays on the device until :meth:`finalize`.
    """

    takes_row_mask = True

    def __init__(self, n_channels: int, n_bins: int, lo: float, hi: float, device: torch.device,
                 storage: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        self.n_channels, self.n_bins, self.lo, self.hi = n_channels, n_bins, lo, hi
        if storage is None:
            storage = _device_storage([n_channels], n_bins, device)[0]
        # [8, channels] float64 (count, min, max, absmax, mean, m2, m3, m4), a column slice of a shared block
        self._state, self.hist, self._bad = storage
        self._host: tuple[np.ndarray, np.ndarray, int] | None = None

    @classmethod
    def many(cls, channels: list[int], n_bins: int, lo: float, hi: float,
             device: torch.device) -> list[TritonMoments]:
        """One accumulator per channel count, all carved out of three device allocations (not five per layer)."""
        return [cls(c, n_bins, lo, hi, device, storage=st)
                for c, st in zip(channels, _device_storage(channels, n_bins, device))]

    @property
    def n_nonfinite(self) -> int:
        """NaN/Inf values skipped (read from the device unless :func:`fetch_all` brought it over)."""
        return self._host[2] if self._host is not None else int(self._bad.item())

    @torch.no_grad()
    def batch_stats(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> Any:
        """Summary of one batch ``x`` ``[rows, channels]`` (rows where ``row_mask`` is False left out)."""
        from qviz.gpu.stats import channel_stats  # lazy: Triton loads only on a CUDA capture

        return channel_stats(x.detach(), row_mask, self, accumulate=False)

    def merge(self, batch: Any) -> None:
        """Fold a batch summary into the running statistics."""
        from qviz.gpu.stats import merge_summary  # lazy: Triton loads only on a CUDA capture

        merge_summary(batch, self)

    @torch.no_grad()
    def update(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> None:
        """Fold the batch ``x`` into the running statistics (one launch)."""
        from qviz.gpu.stats import channel_stats  # lazy: Triton loads only on a CUDA capture

        if x.shape[0]:
            channel_stats(x.detach(), row_mask, self, accumulate=True)

    def finalize(self) -> dict[str, np.ndarray]:
        """Per-channel summary, from the host copy :func:`fetch_all` made (or one made now)."""
        if self._host is None:
            fetch_all([self])
        state, hist, bad = self._host
        c = self.n_channels
        host = kn.ChannelStats(
            count=state[0].astype(np.int64), min=state[1], max=state[2], absmax=state[3], mean=state[4],
            m2=state[5], m3=state[6], m4=state[7], hist=hist.reshape(c, self.n_bins),
            nonfinite=np.zeros(c, np.int64), lo=self.lo, hi=self.hi,
        )
        return _summary(host)


def _device_storage(channels: list[int], n_bins: int,
                    device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fresh running states for layers of ``channels`` channels: ``(state [8, c], hist [c * n_bins], bad [1])``.

    All layers share one ``[8, sum(channels)]`` block (each state is a column slice of it, row stride
    ``sum(channels)``), so making them is five device writes however many layers there are.
    """
    total = sum(channels)
    state = torch.zeros((8, total), dtype=torch.float64, device=device)
    state[1] = float("inf")  # min
    state[2] = float("-inf")  # max
    hist = torch.zeros(total * n_bins, dtype=torch.int32, device=device)
    bad = torch.zeros(len(channels), dtype=torch.int32, device=device)
    out, c0 = [], 0
    for i, c in enumerate(channels):
        out.append((state[:, c0: c0 + c], hist[c0 * n_bins: (c0 + c) * n_bins], bad[i: i + 1]))
        c0 += c
    return out


class DeviceQueue:
    """Layer activations on a CUDA device waiting to be folded into their statistics in grouped launches.

    The capture hook adds ``(rows, row_mask, accumulator)`` and keeps going; :meth:`flush` (after each
    batch, or once the distinct tensors held pass ``budget_bytes``) folds them with
    :func:`qviz.gpu.stats.channel_stats_many`, one launch per channel count instead of one per layer.
    Holding a tensor past its hook is only right if nothing writes to it in place afterwards, so every
    item keeps the tensor's version counter and :meth:`flush` refuses a tensor that changed.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.items: list[tuple[torch.Tensor, torch.Tensor | None, TritonMoments, torch.Tensor, int]] = []
        self._held: set[int] = set()  # data addresses of the distinct tensors held
        self._held_bytes = 0
        self.launches = 0

    def add(self, rows: torch.Tensor, row_mask: torch.Tensor | None, acc: TritonMoments, base: torch.Tensor) -> None:
        """Queue one layer's batch ``rows`` ``[rows, channels]`` (a view of ``base``, the hooked tensor)."""
        self.items.append((rows, row_mask, acc, base, base._version))
        if base.data_ptr() not in self._held:
            self._held.add(base.data_ptr())
            self._held_bytes += base.numel() * base.element_size()
        if self._held_bytes > self.budget_bytes:  # bounded memory: fold what is held so far
            self.flush()

    def flush(self) -> None:
        """Fold everything queued into its accumulator (grouped launches, no host sync)."""
        if not self.items:
            return
        from qviz.gpu.stats import channel_stats_many  # lazy: Triton loads only on a CUDA capture

        if any(base._version != version for _, _, _, base, version in self.items):  # inference tensors never queue
            raise RuntimeError(
                "A captured activation was modified in place after its layer ran (an in-place op in the "
                "model's forward), so its statistics cannot be read later. This should have been caught "
                "by the first batch's check; please report it with the model's name."
            )
        items = [(rows, mask, acc) for rows, mask, acc, _, _ in self.items]
        self.items, self._held, self._held_bytes = [], set(), 0
        self.launches += channel_stats_many(items)


def fetch_all(accs: list[Any]) -> None:
    """Copy the state of every GPU accumulator to the host in three transfers (not three per layer)."""
    gpu = [a for a in accs if isinstance(a, TritonMoments) and a._host is None]
    if not gpu:
        return
    states = torch.cat([a._state for a in gpu], dim=1).cpu().numpy()  # [8, sum of channels]
    hists = torch.cat([a.hist for a in gpu]).cpu().numpy()
    bad = torch.cat([a._bad for a in gpu]).cpu().numpy()
    c0 = h0 = 0
    for i, a in enumerate(gpu):
        c1, h1 = c0 + a.n_channels, h0 + a.n_channels * a.n_bins
        a._host = (states[:, c0:c1], hists[h0:h1], int(bad[i]))
        c0, h0 = c1, h1


def accumulator(n_channels: int, n_bins: int, lo: float, hi: float, device: torch.device) -> HostMoments | TritonMoments:
    """Triton on CUDA (when Triton is installed), else Numba on the host.

    Examples
    --------
    >>> type(accumulator(4, 8, -6.0, 4.0, torch.device("cpu"))).__name__
    'HostMoments'
    """
    if device.type == "cuda":
        from qviz.gpu import _has_triton  # lazy: the GPU package is only looked at for CUDA activations

        if _has_triton():
            return TritonMoments(n_channels, n_bins, lo, hi, device)
    return HostMoments(n_channels, n_bins, lo, hi)
