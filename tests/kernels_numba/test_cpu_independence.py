"""The Numba kernels give the same bits whatever CPU compiled them and however many threads run them.

Numba compiles for the host CPU (AVX2 here, AVX-512 on other CI machines) and
caches per CPU; ``fastmath`` kernels could round differently if the vector
width changed their summation order. These tests compile the kernels again in
a fresh process for the baseline x86-64 CPU (``NUMBA_CPU_NAME=generic``: no
AVX at all) and with one thread, in a separate cache folder, and require the
results to equal this process's bit for bit.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import sys
import numpy as np
import kernels_numba as kn

rng = np.random.default_rng(0)
x = (rng.standard_normal((512, 384)) * rng.gamma(0.5, 2.0, 384)).astype(np.float32)  # [tokens, channels]
w = rng.standard_normal((96, 256)).astype(np.float32)  # [out, in]
out = {}
st = kn.new_channel_stats(384)
kn.update_channel_stats(st, x)
kn.update_channel_stats(st, x[::-1] * 3)
summ = kn.finalize_channel_stats(st)
for name in ("count", "min", "max", "absmax", "mean", "std", "skewness", "kurtosis"):
    out["stats_" + name] = np.asarray(getattr(summ, name))
out["stats_hist"] = np.asarray(st.hist)
for bits, g in ((4, 128), (3, 64), (8, None)):
    codes, qp, es = kn.quantize_with_stats(w, bits=bits, group_size=g)
    out[f"rtn{bits}_codes"], out[f"rtn{bits}_scale"] = codes, np.asarray(qp.scale)
    fq, es2 = kn.fake_quantize(w, bits=bits, group_size=g)
    out[f"rtn{bits}_fq"] = fq
    out[f"rtn{bits}_err"] = np.array([es.sse, es.signal, es.max_abs_err, es2.sse, es2.signal], dtype=np.float64)
codes, absmax = kn.quantize_4bit(w, 64, "nf4")
out["nf4_codes"], out["nf4_absmax"] = codes, absmax
out["nf4_deq"] = kn.dequantize_4bit(codes, absmax, 64, "nf4")
fq4, es4 = kn.fake_quantize_4bit(w, 64, "fp4")
out["fp4_fq"], out["fp4_err"] = fq4, np.array([es4.sse, es4.signal])
codes4, qp4, _ = kn.quantize_with_stats(w, bits=4, group_size=64)
xv = rng.standard_normal(256).astype(np.float32)
out["gemv4"] = kn.gemv_int4(kn.pack(codes4, 4), np.ascontiguousarray(qp4.scale, np.float32),
                            np.ascontiguousarray(qp4.zero), xv, 64)
from kernels_numba.gguf import quantize_gguf
for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):  # the fused kernels, written as LLVM vector code
    out["gguf_" + name] = quantize_gguf(w, name)
np.savez(sys.argv[1], **out)
"""


def _run(tmp_path: pathlib.Path, tag: str, env_extra: dict[str, str]) -> dict[str, np.ndarray]:
    out = tmp_path / f"{tag}.npz"
    script = tmp_path / "kernels_run.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra}
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode:
        raise AssertionError(f"kernel run {tag} failed:\n{proc.stderr[-3000:]}")
    with np.load(out) as data:
        return dict(data)


@pytest.mark.slow
def test_kernels_bit_identical_for_baseline_cpu_codegen_and_one_thread(tmp_path):
    host = _run(tmp_path, "host", {})
    generic = _run(tmp_path, "generic", {"NUMBA_CPU_NAME": "generic", "NUMBA_NUM_THREADS": "1",
                                         "NUMBA_CACHE_DIR": str(tmp_path / "numba-generic")})
    assert host.keys() == generic.keys()
    # Error sums (float64, ``reassoc`` for speed) and the GEMV dot products (float32, a speed
    # kernel like any BLAS) may differ in the last bits with the vector width; everything else,
    # codes, scales, fake-quant values and the channel statistics, must be the same bits.
    loose = {k: 1e-12 for k in host if k.endswith("_err")} | {"gemv4": 1e-5}
    differ = [k for k in host if k not in loose and not np.array_equal(host[k], generic[k], equal_nan=True)]
    assert not differ, f"results depend on the CPU the kernels were compiled for: {differ}"
    for k, rtol in loose.items():  # relative to the size of the result, as float sums are judged
        scale = float(np.abs(host[k]).max())
        np.testing.assert_allclose(generic[k], host[k], rtol=rtol, atol=rtol * scale, err_msg=k)
