"""Per-channel activation statistics on the GPU (Triton), reduced on the device, no host sync.

:func:`channel_stats` reads one layer's batch ``[rows, channels]`` once (one launch);
:func:`channel_stats_many` folds many layers' batches in one launch per channel count, from a
table of their addresses (what a capture over many batches uses, see
:class:`qviz.activations.moments.DeviceQueue`). Each program owns ``BLOCK_C``
channels and walks the rows in tiles of ``BLOCK_R``: per tile it takes the count, mean, central
moments M2..M4 (float32, about the tile's own mean), min, max and absmax, and folds them into
float64 running values with the pairwise update of Chan et al. / Pébay (2008) — the update
:mod:`kernels_numba.stats` uses on the host; log10|x| histogram counts go in by atomics. Rows
outside ``row_mask`` (padding tokens) and NaN/Inf values are left out, the latter counted on the
device. With ``accumulate=True`` the batch folds straight into the running state (one launch);
otherwise it is written out as a batch summary that :func:`merge_summary` folds into any number
of running states (layers that read one shared input). Nothing leaves the device until the
capture's final summary.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from qviz.gpu._math import log10 as _log10

BLOCK_R = 128
BLOCK_C = 16
MERGE_BLOCK_C = 64
MANY = {"BLOCK_R": 32, "BLOCK_C": 32, "num_warps": 4}  # tile of the grouped launch: the best of 9 on an H200 (benchmarks/gpu.py)


@triton.jit
def _chan_merge(na, ma, m2a, m3a, m4a, nb, mb, m2b, m3b, m4b):
    """Fold (nb, mb, M2b..M4b) into (na, ma, M2a..M4a): Pébay's pairwise update, float64."""
    n = na + nb
    sn = tl.maximum(n, 1.0)
    delta = mb - ma
    d2 = delta * delta
    m4 = (m4a + m4b + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (sn * sn * sn)
          + 6.0 * d2 * (na * na * m2b + nb * nb * m2a) / (sn * sn)
          + 4.0 * delta * (na * m3b - nb * m3a) / sn)
    m3 = m3a + m3b + d2 * delta * na * nb * (na - nb) / (sn * sn) + 3.0 * delta * (na * m2b - nb * m2a) / sn
    m2 = m2a + m2b + d2 * na * nb / sn
    return n, ma + delta * nb / sn, m2, m3, m4


@triton.jit
def _fold_rows(x_ptr, mask_ptr, rows, loop_rows, chans, stride, lo_edge, bins_per_unit, bad_ptr, hist_ptr, st_ptr, sts, c,
               N_BINS: tl.constexpr, HAS_MASK: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_C: tl.constexpr):
    """Fold rows ``[rows, chans]`` of channels ``c`` into the state at ``st_ptr`` (or write a fresh summary there).

    x [rows, chans] (row stride ``stride``), any float dtype; mask [rows] bool/int8; bad [1] int32;
    st [8, chans] float64 (row stride ``sts``): count, min, max, absmax, mean, m2, m3, m4;
    hist [chans * N_BINS] int32.
    """
    cm = c < chans
    count_ptr, min_ptr, max_ptr, amax_ptr = st_ptr, st_ptr + sts, st_ptr + 2 * sts, st_ptr + 3 * sts
    mean_ptr, m2_ptr, m3_ptr, m4_ptr = st_ptr + 4 * sts, st_ptr + 5 * sts, st_ptr + 6 * sts, st_ptr + 7 * sts
    if ACCUMULATE:
        na = tl.load(count_ptr + c, mask=cm, other=0.0)
        ma = tl.load(mean_ptr + c, mask=cm, other=0.0)
        m2a = tl.load(m2_ptr + c, mask=cm, other=0.0)
        m3a = tl.load(m3_ptr + c, mask=cm, other=0.0)
        m4a = tl.load(m4_ptr + c, mask=cm, other=0.0)
        lo = tl.load(min_ptr + c, mask=cm, other=0.0)
        hi = tl.load(max_ptr + c, mask=cm, other=0.0)
        am = tl.load(amax_ptr + c, mask=cm, other=0.0)
    else:
        na = tl.zeros((BLOCK_C,), tl.float64)
        ma = tl.zeros((BLOCK_C,), tl.float64)
        m2a = tl.zeros((BLOCK_C,), tl.float64)
        m3a = tl.zeros((BLOCK_C,), tl.float64)
        m4a = tl.zeros((BLOCK_C,), tl.float64)
        lo = tl.full((BLOCK_C,), float("inf"), tl.float64)
        hi = tl.full((BLOCK_C,), float("-inf"), tl.float64)
        am = tl.zeros((BLOCK_C,), tl.float64)
    n_bad = tl.sum(tl.zeros((BLOCK_C,), tl.int32), axis=0)  # a scalar carried through the loop
    for r0 in range(0, loop_rows, BLOCK_R):  # loop_rows >= rows: one trip count for a whole launch
        r = r0 + tl.arange(0, BLOCK_R)
        inside = (r < rows)[:, None] & cm[None, :]
        if HAS_MASK:
            inside = inside & (tl.load(mask_ptr + r, mask=r < rows, other=0) != 0)[:, None]
        x = tl.load(x_ptr + r.to(tl.int64)[:, None] * stride + c[None, :], mask=inside, other=0.0).to(tl.float32)
        ax = tl.abs(x)
        valid = inside & (ax < float("inf"))
        n_bad += tl.sum(tl.sum((inside & ~valid).to(tl.int32), axis=1), axis=0)
        x = tl.where(valid, x, 0.0)
        nb = tl.sum(valid.to(tl.float32), axis=0)  # [BLOCK_C]
        mb = tl.sum(x, axis=0) / tl.maximum(nb, 1.0)
        d = tl.where(valid, x - mb[None, :], 0.0)
        d2 = d * d
        na, ma, m2a, m3a, m4a = _chan_merge(na, ma, m2a, m3a, m4a, nb.to(tl.float64), mb.to(tl.float64),
                                            tl.sum(d2, axis=0).to(tl.float64), tl.sum(d2 * d, axis=0).to(tl.float64),
                                            tl.sum(d2 * d2, axis=0).to(tl.float64))
        lo = tl.minimum(lo, tl.min(tl.where(valid, x, float("inf")), axis=0).to(tl.float64))
        hi = tl.maximum(hi, tl.max(tl.where(valid, x, float("-inf")), axis=0).to(tl.float64))
        am = tl.maximum(am, tl.max(tl.where(valid, ax, 0.0), axis=0).to(tl.float64))
        mag = _log10(tl.maximum(ax, 1e-30))
        idx = tl.minimum(tl.maximum((mag - lo_edge) * bins_per_unit, 0.0), N_BINS - 1.0).to(tl.int32)
        tl.atomic_add(hist_ptr + c[None, :] * N_BINS + idx, tl.full((BLOCK_R, BLOCK_C), 1, tl.int32), mask=valid)
    if n_bad != 0:
        tl.atomic_add(bad_ptr, n_bad)
    tl.store(count_ptr + c, na, mask=cm)
    tl.store(mean_ptr + c, ma, mask=cm)
    tl.store(m2_ptr + c, m2a, mask=cm)
    tl.store(m3_ptr + c, m3a, mask=cm)
    tl.store(m4_ptr + c, m4a, mask=cm)
    tl.store(min_ptr + c, lo, mask=cm)
    tl.store(max_ptr + c, hi, mask=cm)
    tl.store(amax_ptr + c, am, mask=cm)


@triton.jit
def _channel_kernel(x_ptr, mask_ptr, rows, chans, stride, lo_edge, bins_per_unit, bad_ptr, hist_ptr, st_ptr, sts,
                    N_BINS: tl.constexpr, HAS_MASK: tl.constexpr, ACCUMULATE: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # one layer's batch: program p owns channels p*BLOCK_C .. p*BLOCK_C+BLOCK_C-1
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    _fold_rows(x_ptr, mask_ptr, rows, rows, chans, stride, lo_edge, bins_per_unit, bad_ptr, hist_ptr, st_ptr, sts, c,
               N_BINS, HAS_MASK, ACCUMULATE, BLOCK_R, BLOCK_C)


@triton.jit
def _many_kernel(table_ptr, n_items, max_rows, chans, lo_edge, bins_per_unit, X_DTYPE: tl.constexpr, N_BINS: tl.constexpr,
                 HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # many layers' batches with one channel count, one launch: program (i, p) folds item i's channels
    # p*BLOCK_C.. into item i's running state. table [8, n_items] int64: data address, rows, row stride,
    # mask address, state address, histogram address, NaN/Inf counter address, state row stride
    i = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    x_ptr = tl.load(table_ptr + i).to(tl.pointer_type(X_DTYPE))
    rows = tl.load(table_ptr + n_items + i)
    stride = tl.load(table_ptr + 2 * n_items + i)
    mask_ptr = tl.load(table_ptr + 3 * n_items + i).to(tl.pointer_type(tl.int8))
    st_ptr = tl.load(table_ptr + 4 * n_items + i).to(tl.pointer_type(tl.float64))
    hist_ptr = tl.load(table_ptr + 5 * n_items + i).to(tl.pointer_type(tl.int32))
    bad_ptr = tl.load(table_ptr + 6 * n_items + i).to(tl.pointer_type(tl.int32))
    sts = tl.load(table_ptr + 7 * n_items + i)
    _fold_rows(x_ptr, mask_ptr, rows, max_rows, chans, stride, lo_edge, bins_per_unit, bad_ptr, hist_ptr, st_ptr,
               sts, c, N_BINS, HAS_MASK, True, BLOCK_R, BLOCK_C)


@triton.jit
def _merge_kernel(s_ptr, bhist_ptr, st_ptr, hist_ptr, chans, sts, N_BINS: tl.constexpr, BINS_P2: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    # s [8, chans] float64 batch summary (row stride chans) -> st [8, chans] running state (row stride sts),
    # in place; rows as in _fold_rows
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < chans
    na, ma, m2a, m3a, m4a = _chan_merge(
        tl.load(st_ptr + c, mask=cm, other=0.0), tl.load(st_ptr + 4 * sts + c, mask=cm, other=0.0),
        tl.load(st_ptr + 5 * sts + c, mask=cm, other=0.0), tl.load(st_ptr + 6 * sts + c, mask=cm, other=0.0),
        tl.load(st_ptr + 7 * sts + c, mask=cm, other=0.0),
        tl.load(s_ptr + c, mask=cm, other=0.0), tl.load(s_ptr + 4 * chans + c, mask=cm, other=0.0),
        tl.load(s_ptr + 5 * chans + c, mask=cm, other=0.0), tl.load(s_ptr + 6 * chans + c, mask=cm, other=0.0),
        tl.load(s_ptr + 7 * chans + c, mask=cm, other=0.0))
    lo = tl.minimum(tl.load(st_ptr + sts + c, mask=cm, other=0.0), tl.load(s_ptr + chans + c, mask=cm, other=0.0))
    hi = tl.maximum(tl.load(st_ptr + 2 * sts + c, mask=cm, other=0.0),
                    tl.load(s_ptr + 2 * chans + c, mask=cm, other=0.0))
    am = tl.maximum(tl.load(st_ptr + 3 * sts + c, mask=cm, other=0.0),
                    tl.load(s_ptr + 3 * chans + c, mask=cm, other=0.0))
    tl.store(st_ptr + c, na, mask=cm)
    tl.store(st_ptr + sts + c, lo, mask=cm)
    tl.store(st_ptr + 2 * sts + c, hi, mask=cm)
    tl.store(st_ptr + 3 * sts + c, am, mask=cm)
    tl.store(st_ptr + 4 * sts + c, ma, mask=cm)
    tl.store(st_ptr + 5 * sts + c, m2a, mask=cm)
    tl.store(st_ptr + 6 * sts + c, m3a, mask=cm)
    tl.store(st_ptr + 7 * sts + c, m4a, mask=cm)
    b = tl.arange(0, BINS_P2)
    hoff = c[:, None] * N_BINS + b[None, :]
    hm = cm[:, None] & (b[None, :] < N_BINS)
    tl.store(hist_ptr + hoff, tl.load(hist_ptr + hoff, mask=hm, other=0) + tl.load(bhist_ptr + hoff, mask=hm, other=0),
             mask=hm)


def _launch(rows: torch.Tensor, row_mask: torch.Tensor | None, state: Any, hist: torch.Tensor, st: torch.Tensor,
            accumulate: bool) -> None:
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n_rows, chans = rows.shape
    mask = row_mask.reshape(-1) if row_mask is not None else rows
    _channel_kernel[(triton.cdiv(chans, BLOCK_C),)](
        rows, mask, n_rows, chans, rows.stride(0), state.lo, state.n_bins / (state.hi - state.lo), state._bad, hist,
        st, st.stride(0), N_BINS=state.n_bins, HAS_MASK=row_mask is not None, ACCUMULATE=accumulate, BLOCK_R=BLOCK_R,
        BLOCK_C=BLOCK_C, num_warps=4)


def channel_stats(rows: torch.Tensor, row_mask: torch.Tensor | None, state: Any, *, accumulate: bool) -> Any:
    """Statistics of one batch ``rows`` ``[rows, channels]`` (CUDA; rows where ``row_mask`` is False left out).

    ``state`` holds ``_state``, float64 ``[8, channels]`` rows count, min, max, absmax, mean, M2,
    M3, M4; an int32 ``hist`` ``[channels * n_bins]``; an int32 ``_bad`` ``[1]`` counter; and
    ``n_bins``, ``lo``, ``hi`` (the log10 histogram range). ``accumulate=True`` folds the batch
    into ``state`` and returns None; otherwise the batch summary (``[8, channels]`` and its
    histogram) is returned for :func:`merge_summary`.
    """
    if accumulate:
        _launch(rows, row_mask, state, state.hist, state._state, True)
        return None
    chans = rows.shape[1]
    summary = torch.empty((8, chans), dtype=torch.float64, device=rows.device)
    hist = torch.zeros(chans * state.n_bins, dtype=torch.int32, device=rows.device)
    _launch(rows, row_mask, state, hist, summary, False)
    return summary, hist


def merge_summary(batch: Any, state: Any) -> None:
    """Fold a :func:`channel_stats` batch summary into ``state`` (in place, on the device)."""
    summary, hist = batch
    chans = summary.shape[1]
    _merge_kernel[(triton.cdiv(chans, MERGE_BLOCK_C),)](
        summary, hist, state._state, state.hist, chans, state._state.stride(0), N_BINS=state.n_bins,
        BINS_P2=triton.next_power_of_2(state.n_bins), BLOCK_C=MERGE_BLOCK_C, num_warps=4)


_X_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
             torch.float64: tl.float64}


def channel_stats_many(items: list[tuple[torch.Tensor, torch.Tensor | None, Any]]) -> int:
    """Fold many layers' batches into their running states: one launch per (channel count, dtype, masked).

    Returns the number of launches. A state with several queued batches gets one per launch
    (rounds in queue order), since the programs of one launch run concurrently.

    ``items`` are ``(rows [rows, channels], row_mask [rows] or None, state)`` with every tensor on one
    CUDA device; ``state`` as for :func:`channel_stats`. Each group's addresses, row counts and
    strides go to the device in one table (a pinned, non-blocking copy), so the host neither waits
    nor launches per layer.
    """
    groups: dict[tuple, list] = {}
    seen: dict[int, int] = {}  # accumulator -> how many of its batches are queued before this one
    for rows, row_mask, state in items:
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        # a state may appear once per launch: programs of one launch run concurrently, and two folding
        # into one running state would race. Its k-th queued batch goes in the k-th round.
        rnd = seen[id(state)] = seen.get(id(state), -1) + 1
        key = (rnd, rows.shape[1], rows.dtype, row_mask is not None, state.n_bins, state.lo, state.hi)
        groups.setdefault(key, []).append((rows, row_mask, state))
    for (_, chans, dtype, masked, n_bins, lo, hi), group in sorted(groups.items(), key=lambda kv: kv[0][0]):
        n = len(group)
        device = group[0][0].device
        table = torch.empty((8, n), dtype=torch.int64, pin_memory=device.type == "cuda")
        t = table.numpy()
        for j, (rows, row_mask, state) in enumerate(group):
            t[:, j] = (rows.data_ptr(), rows.shape[0], rows.stride(0),
                       row_mask.data_ptr() if masked else 0, state._state.data_ptr(), state.hist.data_ptr(),
                       state._bad.data_ptr(), state._state.stride(0))
        dev_table = table.to(device, non_blocking=True)
        _many_kernel[(n, triton.cdiv(chans, MANY["BLOCK_C"]))](
            dev_table, n, max(int(r.shape[0]) for r, _, _ in group), chans, lo, n_bins / (hi - lo),
            X_DTYPE=_X_DTYPES[dtype], N_BINS=n_bins, HAS_MASK=masked, **MANY)
    return len(groups)


__all__ = ["BLOCK_C", "BLOCK_R", "channel_stats", "channel_stats_many", "merge_summary"]
