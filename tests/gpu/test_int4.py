"""The Triton INT4 weight-only kernel: same product as the fake-quant weight, on a CUDA device.

Every test skips cleanly without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qviz

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_pack_layout_round_trips():
    from qviz.gpu.int4 import pack_int4_groups

    codes = torch.randint(0, 16, (8, 256), dtype=torch.uint8)
    words = pack_int4_groups(codes, 128)  # [8, 32] int32
    assert words.shape == (8, 32) and words.dtype == torch.int32
    back = torch.stack([(words >> (4 * t)) & 15 for t in range(8)], dim=-1).reshape(8, 256)
    assert torch.equal(back.to(torch.uint8), codes)
    with pytest.raises(ValueError, match="multiple of 16"):
        pack_int4_groups(codes, 24)


@pytest.mark.parametrize("tokens", [1, 7, 32])
@pytest.mark.parametrize("shape", [(512, 1024), (1536, 576)])
def test_int4_linear_matches_fake_quant_weight(tokens, shape):
    from qviz.evaluate.kernels import int4_layer

    torch.manual_seed(tokens)
    lin = nn.Linear(shape[1], shape[0]).cuda()
    layer = int4_layer(lin, 64 if shape[1] % 128 else 128)
    w_hat = qviz.fake_quantize(lin.weight.detach(), qviz.RTN(bits=4, group_size=layer.group))
    x = torch.randn(tokens, shape[1], device="cuda")
    ref = (x.double() @ w_hat.double().T + lin.bias.double())
    y = layer(x)
    assert y.dtype == x.dtype and y.shape == (tokens, shape[0])
    assert torch.equal(layer(x), y)  # the second call launches the chosen config directly, not the autotuner
    rel = float((y.detach().double() - ref.detach()).norm() / ref.detach().norm())
    assert rel < 2e-3, rel  # float16 activations and outputs
    assert layer.nbytes == shape[0] * shape[1] // 2 + 3 * shape[0] * shape[1] // layer.group
    assert y.requires_grad is False


def test_kernel_model_swaps_int4_on_cuda():
    from qviz.evaluate.cost import kernel_model

    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128)).cuda()
    km = kernel_model(net, qviz.RTN(bits=4, group_size=128))
    assert km.module[0].kernel.startswith("real kernel: qviz Triton INT4")
    x = torch.randn(4, 256, device="cuda")
    q = qviz.quantize(net, qviz.RTN(bits=4, group_size=128), progress=False)
    ref = q.run(x)
    assert float((km.run(x) - ref).norm() / ref.norm()) < 2e-3


def test_tinygemm_pack_matches_when_torch_has_it():
    from qviz.gpu.int4 import tinygemm_pack
    from qviz.quant.granularity import PerGroup
    from qviz.quant.primitives import fake_quantize_codes

    w = torch.randn(256, 512, device="cuda")
    w_hat, codes, qp = fake_quantize_codes(w, PerGroup(128), 4)
    packed, sz = tinygemm_pack(codes, qp.scale, qp.zero, 128)
    x = torch.randn(3, 512, device="cuda", dtype=torch.bfloat16)
    y = torch._weight_int4pack_mm(x, packed, 128, sz)
    ref = x.double() @ w_hat.double().T
    assert float((y.double() - ref).norm() / ref.norm()) < 2e-2  # bf16 scales and activations
