"""Every method and analysis with the model on CUDA: it runs, keeps tensors on the device, and agrees with the CPU.

The model is a random-weight Llama (hidden 256, 2 blocks) built twice from one seed, once on
each device. Tolerances: float32 forwards on the two devices differ in summation order, so the
calibration inputs differ in the last bits; methods that round (GPTQ's column loop, AWQ's grid
search) may flip a few codes, so their errors agree to a few percent, RTN's to 1e-4. Every test
skips cleanly without CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qviz

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _llama(device: str, hidden: int = 256, layers: int = 2) -> qviz.QvizModel:
    import transformers

    base = qviz.load("tiny-llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=base.tokenizer.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    module = transformers.LlamaForCausalLM(cfg).eval().to(device)
    return base.with_module(module, name=f"llama-{hidden}")


@pytest.fixture(scope="module")
def llamas():
    return _llama("cpu"), _llama("cuda")


@pytest.fixture(scope="module")
def calib(llamas):
    return qviz.calibration_data(llamas[0], n=16)


def _ids(model: qviz.QvizModel, calib, device: str) -> torch.Tensor:
    return model.prepare(calib)["input_ids"][:, :48].to(device)  # [batch, tokens]


@pytest.mark.parametrize("cfg", [qviz.GPTQ(bits=4, group_size=128), qviz.AWQ(bits=4, group_size=128)],
                         ids=lambda c: c.label)
def test_layer_error_gptq_awq_on_cuda_ids(llamas, calib, cfg):
    """The failure of issue 14: calib ids on cuda raised 'Expected all tensors to be on the same device'."""
    cpu_model, gpu_model = llamas
    cpu = qviz.layer_error(cpu_model, cfg, calib=_ids(cpu_model, calib, "cpu"))
    gpu = qviz.layer_error(gpu_model, cfg, calib=_ids(gpu_model, calib, "cuda"))
    np.testing.assert_allclose(gpu.output_rel_err.values, cpu.output_rel_err.values, rtol=0.05, atol=1e-6)
    np.testing.assert_array_equal(gpu.bits_per_weight.values, cpu.bits_per_weight.values)


@pytest.mark.parametrize("cfg", [qviz.RTN(bits=4, group_size=128), qviz.SmoothQuant(alpha=0.5),
                                 qviz.QAT(bits=4, group_size=128, steps=3), qviz.BnbNF4(), qviz.BnbInt8()],
                         ids=lambda c: c.label)
def test_layer_error_other_methods_on_cuda(llamas, calib, cfg):
    cpu_model, gpu_model = llamas
    cpu = qviz.layer_error(cpu_model, cfg, calib=calib)
    gpu = qviz.layer_error(gpu_model, cfg, calib=calib)
    tight = isinstance(cfg, qviz.RTN)
    np.testing.assert_allclose(gpu.output_rel_err.values, cpu.output_rel_err.values,
                               rtol=1e-4 if tight else 0.1, atol=1e-6)
    if tight:
        np.testing.assert_allclose(gpu.weight_sqnr_db.values, cpu.weight_sqnr_db.values, rtol=1e-9)


@pytest.mark.parametrize("cfg", [qviz.GPTQ(bits=4, group_size=128), qviz.AWQ(bits=4, group_size=128),
                                 qviz.SmoothQuant(alpha=0.5), qviz.QAT(bits=4, group_size=128, steps=3),
                                 qviz.RTN(bits=4, group_size=128)], ids=lambda c: c.label)
def test_quantize_keeps_the_model_on_cuda(llamas, calib, cfg):
    cpu_model, gpu_model = llamas
    q_gpu = qviz.quantize(gpu_model, cfg, calib=calib, progress=False)
    q_cpu = qviz.quantize(cpu_model, cfg, calib=calib, progress=False)
    devices = {p.device.type for p in q_gpu.module.parameters()} | {b.device.type for b in q_gpu.module.buffers()}
    assert devices == {"cuda"}, devices
    ids = _ids(cpu_model, calib, "cpu")
    ref = cpu_model.run(cpu_model.prepare(ids)).float()
    err_cpu = float((q_cpu.run(q_cpu.prepare(ids)).float() - ref).norm() / ref.norm())
    err_gpu = float((q_gpu.run(q_gpu.prepare(ids)).float().cpu() - ref).norm() / ref.norm())
    assert abs(err_gpu - err_cpu) <= 0.1 * err_cpu + 1e-4, (err_cpu, err_gpu)


def test_capture_on_cuda_matches_cpu(llamas, calib):
    cpu_model, gpu_model = llamas
    cpu = qviz.capture(cpu_model, calib, progress=False)
    gpu = qviz.capture(gpu_model, calib, progress=False)
    for var in ("absmax", "min", "max", "mean", "std", "kurtosis", "count"):
        np.testing.assert_allclose(gpu[var].values, cpu[var].values, rtol=2e-3, atol=1e-5, equal_nan=True, err_msg=var)
    # histogram bins may move by one where log10|x| sits on an edge in one float32 rounding and not the other
    moved = np.abs(gpu["hist"].values.astype(np.int64) - cpu["hist"].values).sum() / max(int(cpu["hist"].values.sum()), 1)
    assert moved < 1e-3, moved


def test_capture_over_many_batches_queues_and_matches_cpu(llamas, calib, monkeypatch):
    """From the second batch on, a CUDA capture folds queued layers in grouped launches; same numbers."""
    from qviz.activations import capture as capture_mod

    made = []
    real = capture_mod._StatsHook

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(capture_mod, "_StatsHook", Spy)
    cpu_model, gpu_model = llamas
    cpu = qviz.capture(cpu_model, calib, batch_size=4, progress=False)  # 4 batches
    gpu = qviz.capture(gpu_model, calib, batch_size=4, progress=False)
    hook = made[-1]
    assert hook.queue is not None and 0 < hook.queue.launches < 3 * len(hook.layers)
    for var in ("absmax", "min", "max", "mean", "std", "kurtosis", "count"):
        np.testing.assert_allclose(gpu[var].values, cpu[var].values, rtol=2e-3, atol=1e-5, equal_nan=True, err_msg=var)
    moved = np.abs(gpu["hist"].values.astype(np.int64) - cpu["hist"].values).sum() / max(int(cpu["hist"].values.sum()), 1)
    assert moved < 1e-3, moved


def test_capture_stays_layer_by_layer_when_the_model_writes_in_place():
    """A forward that changes a hooked input in place after its layer ran must not be queued (stats would be wrong)."""
    from torch import nn

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            y = self.a(x)
            x.mul_(2.0)  # the input of self.a, changed after self.a saw it
            return self.b(y) + x

    torch.manual_seed(0)
    net = InPlace()
    data = torch.randn(64, 8)
    cpu = qviz.capture(qviz.load(net), data.clone(), batch_size=16, progress=False)
    gpu = qviz.capture(qviz.load(net.cuda()), data.clone().cuda(), batch_size=16, progress=False)
    np.testing.assert_allclose(gpu["absmax"].values, cpu["absmax"].values, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(gpu["mean"].values, cpu["mean"].values, rtol=1e-4, atol=1e-6, equal_nan=True)


def test_cpu_batches_run_on_a_cuda_model_and_massive_activations_agree(llamas, calib):
    """A batch left on the CPU runs on a CUDA model (moved to its device), and massive_activations agrees with the CPU."""
    cpu_model, gpu_model = llamas
    ids = cpu_model.prepare(calib[:4])
    out = gpu_model.run(ids)  # CPU tensors in
    assert out.is_cuda
    ref = cpu_model.run(ids)
    assert float((out.cpu() - ref).norm() / ref.norm()) < 1e-4
    a = qviz.massive_activations(cpu_model, calib[:8])
    b = qviz.massive_activations(gpu_model, calib[:8])
    np.testing.assert_array_equal(a.channel.values[:, 0], b.channel.values[:, 0])
    np.testing.assert_allclose(a.absmax.values, b.absmax.values, rtol=1e-3)


def test_sensitivity_and_recommend_on_cuda(llamas, calib):
    cpu_model, gpu_model = llamas
    cfgs = [qviz.RTN(bits=4, group_size=128), qviz.RTN(bits=8, group_size=None)]
    sens_cpu = qviz.sensitivity(cpu_model, cfgs, calib=calib)
    sens_gpu = qviz.sensitivity(gpu_model, cfgs, calib=calib)
    for var in sens_cpu.data_vars:
        if np.issubdtype(sens_cpu[var].dtype, np.floating):
            np.testing.assert_allclose(sens_gpu[var].values, sens_cpu[var].values, rtol=0.05, atol=1e-5, err_msg=var)
    rec = qviz.recommend(gpu_model, cfgs, calib=calib, budget_bits_per_weight=6.0, sens=sens_gpu)
    assert rec is not None


def test_compare_on_cuda_runs_real_kernels(llamas, calib):
    _, gpu_model = llamas
    cmp = qviz.compare(gpu_model, [qviz.RTN(bits=4, group_size=128), qviz.BnbNF4()], metrics=["accuracy", "size", "cost"],
                       progress=False)
    assert np.isfinite(cmp.latency_ms.values).all()
    kernels = [str(k) for k in cmp.kernel.values]
    assert any("bitsandbytes" in k for k in kernels), kernels


def test_pgd_on_cuda_matches_cpu():
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    adv_cpu = qviz.robustness.pgd(net, x, y, eps=0.05, alpha=0.01, steps=3)
    adv_gpu = qviz.robustness.pgd(net.cuda(), x.cuda(), y.cuda(), eps=0.05, alpha=0.01, steps=3)
    assert adv_gpu.is_cuda
    assert float((adv_gpu.cpu() - adv_cpu).abs().max()) < 1e-3
