"""bitsandbytes' two CPU kernels for NF4/FP4: qviz chooses which runs, not the processor.

bitsandbytes 0.50's ``Linear4bit`` switches on CPUs with AVX512-BF16 to a
packed bf16 kernel (and refuses layers whose output rows are not a multiple of
32). These tests force each side of that switch, so both are exercised on any
machine: the CPU-feature probe is monkeypatched to claim AVX512-BF16 where the
machine lacks it, and the tests that *run* the packed kernel run only where
the CPU really has it (it executes bf16 instructions).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz
from qviz.quant.bnb import cpu_kernel_for
from qviz.quant.modules import packed_cpu_kernel_available, packed_cpu_refusal

bnb = pytest.importorskip("bitsandbytes")

HAS_PACKED = packed_cpu_kernel_available()
needs_packed_cpu = pytest.mark.skipif(
    not HAS_PACKED, reason="this CPU has no AVX512-BF16, so bitsandbytes' packed kernel cannot execute here "
    "(its selection logic is tested with the probe monkeypatched)")


@pytest.fixture
def claims_avx512bf16(monkeypatch):
    """Make bitsandbytes (and qviz's probe) believe the CPU has AVX512-BF16."""
    import bitsandbytes.functional as bf
    import bitsandbytes.nn.modules as bm

    monkeypatch.setattr(bf, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(bm, "has_avx512bf16", lambda: True)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))  # the second: 10 output rows


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("cfg", [qviz.BnbNF4(), qviz.BnbFP4(blocksize=32, double_quant=True)], ids=lambda c: c.label)
def test_generic_kernel_runs_even_where_bitsandbytes_would_repack(cfg, claims_avx512bf16):
    # With the probe claiming AVX512-BF16, a plain bnb Linear4bit would repack on its first forward
    # (and fail on the 10-row layer). qviz's modules stay on the float32 generic kernel.
    net = _net()
    q = qviz.quantize(net, cfg, progress=False)
    before = _state(q.module)
    x = torch.randn(5, 64)
    with torch.no_grad():
        y1, y2 = q.module(x), q.module(x)
    for name in ("0", "2"):
        layer = q.module.get_submodule(name)
        assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
        assert "generic CPU kernel (float32 compute)" in q.quantization.layers[name].kernel
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    after = _state(q.module)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # float32 tolerance against the dequantized weight
    h = torch.relu(x @ qviz.fake_quantize(net[0].weight, cfg).T + net[0].bias)
    ref = h @ qviz.fake_quantize(net[2].weight, cfg).T + net[2].bias
    torch.testing.assert_close(y1, ref, rtol=1e-5, atol=1e-5)


def test_plain_bitsandbytes_would_take_the_packed_path_under_the_probe(claims_avx512bf16):
    # The premise of the test above: the monkeypatched probe really flips bitsandbytes' own switch.
    layer = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32)
    assert layer.support_avx512bf16_for_cpu is True


def test_auto_picks_packed_per_layer_and_says_why_a_layer_falls_back(claims_avx512bf16):
    net = _net()
    q = qviz.quantize(net, qviz.BnbNF4(cpu_kernel="auto"), progress=False)
    k0, k2 = q.quantization.layers["0"].kernel, q.quantization.layers["2"].kernel
    assert k0 == "real kernel: bitsandbytes NF4, packed AVX512-BF16 CPU kernel (bf16 compute)"
    assert k2.startswith("real kernel: bitsandbytes NF4, generic CPU kernel") and "has 10" in k2
    assert q.module[0].weight.quant_state.packing_format_for_cpu and q.module[0].cpu_kernel == "packed"
    assert q.module[2].cpu_kernel == "generic"
    # the state dict is the canonical layout, identical call after call, and equal to the generic model's
    g = qviz.quantize(net, qviz.BnbNF4(), progress=False)
    s1, s2, sg = _state(q.module), _state(q.module), _state(g.module)
    assert s1.keys() == sg.keys()
    assert all(torch.equal(s1[k], s2[k]) and torch.equal(s1[k], sg[k]) for k in s1)
    torch.testing.assert_close(q.module[0].dequantized_weight(), g.module[0].dequantized_weight(), rtol=0, atol=0)
    # sizes do not depend on the kernel
    assert q.quantization.total_bytes == g.quantization.total_bytes


def test_packed_request_on_a_cpu_without_it_is_refused_clearly(monkeypatch):
    import bitsandbytes.functional as bf

    monkeypatch.setattr(bf, "has_avx512bf16", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CPU with AVX512-BF16.*cpu_kernel='generic'"):
        qviz.quantize(_net(), qviz.BnbNF4(cpu_kernel="packed"), progress=False)
    q = qviz.quantize(_net(), qviz.BnbNF4(cpu_kernel="auto"), progress=False)
    assert all("no AVX512-BF16" in r.kernel for r in q.quantization.layers.values())


@pytest.mark.parametrize("shape,blocksize,why", [
    ((10, 64), 64, "tiles output rows by 32"), ((32, 63), 32, "odd 63"), ((32, 96), 64, "whole blocks of 64"),
])
def test_packed_refusal_reasons(shape, blocksize, why):
    assert why in packed_cpu_refusal(shape, blocksize)
    assert packed_cpu_refusal((64, 128), 64) is None


def test_cpu_kernel_choice_off_the_cpu_and_bad_values():
    assert cpu_kernel_for(qviz.BnbNF4(cpu_kernel="packed"), (64, 64), "meta") == ("generic", "")
    with pytest.raises(ValueError, match="cpu_kernel must be one of .*got 'bf16'"):
        qviz.BnbNF4(cpu_kernel="bf16")
    assert qviz.BnbNF4(cpu_kernel="auto").label == "bnb nf4 b64 cpu-auto"
    assert qviz.BnbNF4().label == "bnb nf4 b64"


def test_layer_error_measures_the_module_that_runs_when_packed_may_run(claims_avx512bf16):
    from qviz.quant.registry import method_for

    assert method_for(qviz.BnbNF4()).weight_only(qviz.BnbNF4())
    assert not method_for(qviz.BnbNF4(cpu_kernel="auto")).weight_only(qviz.BnbNF4(cpu_kernel="auto"))


# ----------------------------------------------------------------- the packed kernel itself (AVX512-BF16 CPUs)


@needs_packed_cpu
@pytest.mark.parametrize("cfg", [qviz.BnbNF4(cpu_kernel="packed"), qviz.BnbFP4(cpu_kernel="packed", double_quant=True)],
                         ids=lambda c: c.label)
def test_packed_kernel_output_at_bf16_tolerance(cfg):
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    q = qviz.quantize(nn.Sequential(lin), cfg, progress=False)
    assert "packed AVX512-BF16" in q.quantization.layers["0"].kernel
    x = torch.randn(7, 256)
    before = _state(q.module)
    with torch.no_grad():
        y, y2 = q.module(x), q.module(x)
    ref = x @ qviz.fake_quantize(lin.weight, cfg.replace(cpu_kernel="generic")).T + lin.bias
    # bf16 keeps 8 significant bits: inputs and absmax rounded to bf16, sums of 256 products
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    after = _state(q.module)
    assert all(torch.equal(before[k], after[k]) for k in before)


@needs_packed_cpu
def test_digits_cnn_compare_on_the_packed_path():
    model = qviz.load("digits-cnn")
    cmp = qviz.compare(model, [qviz.BnbNF4(cpu_kernel="auto")], metrics=["accuracy", "cost"], progress=False)
    kernel = str(cmp.kernel.sel(config="bnb nf4 b64 cpu-auto").item())
    assert "packed AVX512-BF16" in kernel and "generic CPU kernel" in kernel


# ----------------------------------------------------------------- LLM.int8: the int8 matmul on either CPU path


def test_int8_matmul_paths_agree_on_a_real_layer():
    # bitsandbytes multiplies int8 codes with torch._int_mm (exact int32) on AVX-512 CPUs and in float32
    # elsewhere; both are run here on MiniLM-sized codes (K = 1536) and must give the same integers,
    # so LLM.int8 results do not depend on which CPU path ran.
    from bitsandbytes.backends.default.ops import _int8_linear_matmul_impl

    torch.manual_seed(0)
    w = torch.randn(384, 1536) * 0.05
    x = torch.randn(33, 1536)
    x[:, 7] *= 40  # an outlier column, as LLM.int8 sees in real activations
    a, _, _ = bnb.functional.int8_vectorwise_quant(x.half())
    b, _, _ = bnb.functional.int8_vectorwise_quant(w.half())
    exact = torch._int_mm(a, b.t())  # the AVX-512 path
    generic = _int8_linear_matmul_impl(a, b)  # the float32 path
    exact64 = a.long() @ b.long().t()
    assert torch.equal(exact.long(), exact64) and torch.equal(generic.long(), exact64)
