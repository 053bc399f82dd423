"""The scale searches of llama.cpp's reference quantizers, in float32 as ggml does them.

ggml's quantizers (``ggml-quants.c``) pick each block's scale (and minimum) by a
small search, not by plain round-to-nearest: a weighted least-squares fit of the
scale to the rounded codes, tried over a grid of candidate inverse scales. These
JIT helpers redo those searches on a run of values ``x[xo : xo + n]`` with
float32 arithmetic in the same order (every ``int`` converted to float32 where C
converts it), so the codes come out as ggml's:

* :func:`make_qx` -- symmetric codes ``l in [-nmax, nmax)``; least-squares scale,
  19 candidate inverse scales ``-(nmax + 0.1 k) / max`` (``make_qx_quants``).
* :func:`make_q3` -- symmetric 3-bit codes improved one code at a time
  (``make_q3_quants``).
* :func:`make_qkx` -- asymmetric codes ``l in [0, nmax]`` with a minimum, weighted
  least squares for scale and minimum over ``nstep + 1`` candidate ranges
  (``make_qkx2_quants`` / ``make_qkx3_quants``, which agree when weights are given).
* :func:`make_qp` -- non-negative codes for the sub-block scales themselves with
  importance weights (``make_qp_quants``).

``nearest`` is round half to even, as ggml's ``nearest_int`` (a float32 add of 1.5 * 2**23).
Codes go into int32 scratch arrays; callers pack them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

F = np.float32
GROUP_MAX_EPS = np.float32(1e-15)


@njit(cache=True)
def nearest(v):
    """Round a float32 half to even and return an int (ggml's ``nearest_int``)."""
    return int(np.rint(v))


@njit(cache=True)
def clamp(v, lo, hi):
    """``min(max(v, lo), hi)`` for ints."""
    return max(lo, min(hi, v))


@njit(cache=True)
def make_qx(n, nmax, x, xo, L, lo, qw, qo, has_qw):
    """Symmetric codes ``L[lo:lo+n] = l + nmax`` and the best scale (float32) for ``x[xo:xo+n]``.

    Weights are ``qw[qo:qo+n]`` when ``has_qw`` else ``x**2`` (ggml's ``rmse_type`` 1).
    """
    mx = F(0.0)
    amax = F(0.0)
    for i in range(n):
        ax = abs(x[xo + i])
        if ax > amax:
            amax = ax
            mx = x[xo + i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[lo + i] = 0
        return F(0.0)
    iscale = F(-nmax) / mx
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        v = x[xo + i]
        q = clamp(nearest(iscale * v), -nmax, nmax - 1)
        L[lo + i] = q + nmax
        w = qw[qo + i] if has_qw else v * v
        fq = F(q)
        sumlx += w * v * fq
        suml2 += w * fq * fq
    scale = sumlx / suml2 if suml2 != F(0.0) else F(0.0)
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(F(nmax) + F(0.1) * F(k)) / mx
        sumlx = F(0.0)
        suml2 = F(0.0)
        for i in range(n):
            v = x[xo + i]
            fq = F(clamp(nearest(iscale * v), -nmax, nmax - 1))
            w = qw[qo + i] if has_qw else v * v
            sumlx += w * v * fq
            suml2 += w * fq * fq
        if suml2 > F(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[lo + i] = nmax + clamp(nearest(iscale * x[xo + i]), -nmax, nmax - 1)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True)
def make_q3(n, nmax, x, xo, L, lo):
    """Symmetric codes ``L = l + nmax`` refined code by code (weights ``x**2``); returns the scale."""
    mx = F(0.0)
    amax = F(0.0)
    for i in range(n):
        ax = abs(x[xo + i])
        if ax > amax:
            amax = ax
            mx = x[xo + i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[lo + i] = 0
        return F(0.0)
    iscale = F(-nmax) / mx
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        v = x[xo + i]
        q = clamp(nearest(iscale * v), -nmax, nmax - 1)
        L[lo + i] = q
        w = v * v
        sumlx += w * v * F(q)
        suml2 += w * F(q) * F(q)
    for _ in range(5):
        changed = 0
        for i in range(n):
            v = x[xo + i]
            w = v * v
            fl = F(L[lo + i])
            slx = sumlx - w * v * fl
            if slx > F(0.0):
                sl2 = suml2 - w * fl * fl
                new = clamp(nearest(v * sl2 / slx), -nmax, nmax - 1)
                if new != L[lo + i]:
                    fn = F(new)
                    slx += w * v * fn
                    sl2 += w * fn * fn
                    if sl2 > F(0.0) and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[lo + i] = new
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[lo + i] += nmax
    return sumlx / suml2 if suml2 > F(0.0) else F(0.0)


@njit(cache=True)
def make_qkx(n, nmax, x, xo, w, L, lo, aux, rmin, rdelta, nstep, use_mad):
    """Asymmetric codes ``L[lo:lo+n] in [0, nmax]`` for ``x[xo:xo+n]`` with weights ``w[0:n]``.

    Returns ``(scale, the_min)`` with ``x ~ scale * L - the_min`` (``the_min >= 0``).
    """
    mn = x[xo]
    mx = x[xo]
    sum_w = w[0]
    sum_x = sum_w * x[xo]
    for i in range(1, n):
        v = x[xo + i]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
        sum_w += w[i]
        sum_x += w[i] * v
    if mn > F(0.0):
        mn = F(0.0)
    if mx <= mn:
        for i in range(n):
            L[lo + i] = 0
        return F(0.0), -mn
    iscale = F(nmax) / (mx - mn)
    scale = F(1.0) / iscale
    best_error = F(0.0)
    for i in range(n):
        q = clamp(nearest(iscale * (x[xo + i] - mn)), 0, nmax)
        L[lo + i] = q
        diff = scale * F(q) + mn - x[xo + i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += w[i] * diff
    if nstep < 1:
        return scale, -mn
    for k in range(nstep + 1):
        iscale = (rmin + rdelta * F(k) + F(nmax)) / (mx - mn)
        sum_l = F(0.0)
        sum_l2 = F(0.0)
        sum_xl = F(0.0)
        for i in range(n):
            q = clamp(nearest(iscale * (x[xo + i] - mn)), 0, nmax)
            aux[i] = q
            fq = F(q)
            sum_l += w[i] * fq
            sum_l2 += w[i] * fq * fq
            sum_xl += w[i] * fq * x[xo + i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F(0.0):
                this_min = F(0.0)
                this_scale = sum_xl / sum_l2
            cur = F(0.0)
            for i in range(n):
                diff = this_scale * F(aux[i]) + this_min - x[xo + i]
                diff = abs(diff) if use_mad else diff * diff
                cur += w[i] * diff
            if cur < best_error:
                for i in range(n):
                    L[lo + i] = aux[i]
                best_error = cur
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(cache=True)
def make_qp(n, nmax, x, L, qw):
    """Non-negative codes ``L[0:n] in [0, nmax]`` for the values ``x[0:n] >= 0`` with weights ``qw``; returns the scale."""
    mx = F(0.0)
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F(0.0)
    iscale = F(nmax) / mx
    for i in range(n):
        L[i] = nearest(iscale * x[i])
    scale = F(1.0) / iscale
    best_mse = F(0.0)
    for i in range(n):
        diff = x[i] - scale * F(L[i])
        best_mse += qw[i] * diff * diff
    for k in range(-4, 5):
        if k == 0:
            continue
        iscale_k = (F(0.1) * F(k) + F(nmax)) / mx
        scale_k = F(1.0) / iscale_k
        mse = F(0.0)
        for i in range(n):
            q = min(nmax, nearest(iscale_k * x[i]))
            diff = x[i] - scale_k * F(q)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_k
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        q = min(nmax, nearest(iscale * x[i]))
        L[i] = q
        sumlx += qw[i] * x[i] * F(q)
        suml2 += qw[i] * F(q) * F(q)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = qw[i]
            fl = F(L[i])
            slx = sumlx - w * x[i] * fl
            sl2 = suml2 - w * fl * fl
            if slx > F(0.0) and sl2 > F(0.0):
                new = min(nmax, nearest(x[i] * sl2 / slx))
                if new != L[i]:
                    fn = F(new)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > F(0.0) else F(0.0)


@njit(cache=True)
def best_index(values, v):
    """Index of the entry of the sorted int8 table ``values`` (16 entries) nearest to ``v`` (ggml's tie rule)."""
    n = values.shape[0]
    if v <= F(values[0]):
        return 0
    if v >= F(values[n - 1]):
        return n - 1
    ml = 0
    mu = n - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if v < F(values[mav]):
            mu = mav
        else:
            ml = mav
    return mu - 1 if v - F(values[mu - 1]) < F(values[mu]) - v else mu
