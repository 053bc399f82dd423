"""qviz.fake_quantize / quantize_tensor / quantize: peers, byte accounting, the untouched input, errors."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.config import QuantConfig
from qviz.quant.modules import FakeQuantLinear, PackedLinear
from qviz.quant.registry import LayerQuant, Method, register


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 64)
        self.conv = nn.Conv1d(64, 64, 3, padding=1)
        self.bn = nn.BatchNorm1d(64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 8)

    def forward(self, x):  # [batch, tokens] int -> [batch, 8]
        h = self.bn(self.conv(self.emb(x).transpose(1, 2))).transpose(1, 2)  # [batch, tokens, 64]
        return self.fc2(torch.relu(self.fc1(h))).mean(1)


@pytest.fixture
def net():
    torch.manual_seed(0)
    n = Net()
    n.bn.running_mean.uniform_()  # non-trivial buffers
    return n.eval()


# --------------------------------------------------------------------------- one tensor


@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quantize_equals_torch_per_channel_affine(symmetric):
    w = torch.randn(96, 200, generator=torch.Generator().manual_seed(3)) * 0.02
    cfg = qviz.RTN(bits=8, group_size=None, symmetric=symmetric)
    qt = qviz.quantize_tensor(w, cfg)
    ref = torch.fake_quantize_per_channel_affine(
        w, qt.scale.reshape(-1), qt.zero.reshape(-1).to(torch.int32), 0, 1 if symmetric else 0, 255
    )
    assert torch.equal(qviz.fake_quantize(w, cfg), ref)
    assert torch.equal(qt.dequantize(), ref)


def test_fake_quantize_keeps_type_dtype_shape():
    w = torch.randn(8, 4, 3, 3)  # a conv kernel: rows are output channels
    out = qviz.fake_quantize(w, qviz.RTN(bits=4, group_size=None))
    assert out.shape == w.shape and out.dtype == w.dtype
    half = qviz.fake_quantize(w.half(), qviz.RTN(bits=8, group_size=None))
    assert half.dtype == torch.float16
    a = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float64)
    out_np = qviz.fake_quantize(a, qviz.RTN(bits=4, group_size=32))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float64 and out_np.shape == a.shape
    vec = qviz.fake_quantize(torch.linspace(-1, 1, 17), qviz.RTN(bits=8, group_size=None))
    assert vec.shape == (17,)


def test_quantize_tensor_rtn_bytes():
    w = torch.randn(16, 256)
    qt = qviz.quantize_tensor(w, qviz.RTN(bits=4, group_size=128))
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == (16, 256) and qt.scale.shape == (16, 2)
    assert qt.nbytes == 16 * 128 + 16 * 2 * 2 + 16 * 2  # packed codes + float16 scales + uint8 zeros
    assert qt.bits_per_weight == pytest.approx(8 * qt.nbytes / w.numel())
    qt3 = qviz.quantize_tensor(w.numpy(), qviz.RTN(bits=3, group_size=None, symmetric=True))
    assert isinstance(qt3.codes, np.ndarray) and qt3.zero is not None
    assert qt3.nbytes == 16 * 96 + 16 * 2  # 3-bit rows packed 8 codes per 3 bytes; symmetric: no zero points


@pytest.mark.parametrize("cls", [qviz.BnbNF4, qviz.BnbFP4])
@pytest.mark.parametrize("blocksize", [64, 128])
def test_nf4_fp4_codes_equal_bitsandbytes(cls, blocksize):
    import bitsandbytes.functional as bf
    import kernels_numba as kn

    w = torch.randn(48, 120, generator=torch.Generator().manual_seed(blocksize)) * 0.05
    cfg = cls(blocksize=blocksize)
    qt = qviz.quantize_tensor(w, cfg)
    packed, state = bf.quantize_4bit(w, blocksize=blocksize, quant_type=cfg.quant_type)
    ref_hat = bf.dequantize_4bit(packed, state)
    codes_kn, absmax_kn = kn.quantize_4bit(w.numpy(), blocksize, cfg.quant_type)
    np.testing.assert_array_equal(qt.codes.numpy(), codes_kn)  # bitsandbytes' codes == the Numba kernel's
    np.testing.assert_array_equal(qt.scale.numpy(), absmax_kn)
    assert torch.equal(qt.dequantize(), ref_hat)
    assert torch.equal(qviz.fake_quantize(w, cfg), ref_hat)  # Numba fake-quant path
    # every byte: packed codes + float32 absmax per block + the 16-entry float32 code table
    assert qt.nbytes == w.numel() // 2 + 4 * -(-w.numel() // blocksize) + 64


def test_double_quant_bytes_and_values():
    import bitsandbytes.functional as bf

    w = torch.randn(64, 256) * 0.05
    qt = qviz.quantize_tensor(w, qviz.BnbNF4(double_quant=True))
    packed, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    n_blocks = w.numel() // 64
    assert qt.nbytes == w.numel() // 2 + n_blocks + 4 * -(-n_blocks // 256) + 256 * 4 + 4 + 64
    assert torch.equal(qviz.fake_quantize(w, qviz.BnbNF4(double_quant=True)), bf.dequantize_4bit(packed, state))


def test_int8_codes_equal_bitsandbytes():
    import bitsandbytes.functional as bf

    w = torch.randn(32, 100)
    qt = qviz.quantize_tensor(w, qviz.BnbInt8())
    cb, scb, _ = bf.int8_vectorwise_quant(w.half())
    assert torch.equal(qt.codes, cb)
    assert qt.nbytes == 32 * 100 + 4 * 32
    torch.testing.assert_close(qt.dequantize(), cb.float() * scb.unsqueeze(1) / 127)


def test_tensor_bad_input():
    cfg = qviz.RTN(bits=4, group_size=None)
    with pytest.raises(TypeError, match="floating-point"):
        qviz.fake_quantize(torch.ones(4, 4, dtype=torch.int32), cfg)
    with pytest.raises(TypeError, match="floating-point"):
        qviz.quantize_tensor(np.ones((4, 4), bool), cfg)
    with pytest.raises(ValueError, match="empty"):
        qviz.fake_quantize(torch.ones(0, 4), cfg)
    bad = torch.ones(4, 4)
    bad[1, 1] = float("nan")
    bad[2, 2] = float("inf")
    with pytest.raises(ValueError, match="2 NaN/Inf"):
        qviz.fake_quantize(bad, cfg)
    with pytest.raises(ValueError, match="does not divide the row length 100"):
        qviz.fake_quantize(torch.ones(2, 100), qviz.RTN(bits=4, group_size=64))
    with pytest.raises(ValueError, match="bits must be an int from 2 to 8"):
        qviz.RTN(bits=1)
    with pytest.raises(TypeError, match="Known configs:.*RTN"):
        qviz.fake_quantize(torch.ones(2, 2), "int4")
    with pytest.raises(TypeError, match="not the class"):
        qviz.quantize_tensor(torch.ones(2, 2), qviz.RTN)
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        qviz.fake_quantize([[1.0, 2.0]], cfg)


def test_bnb_that_cannot_run_gets_a_clear_error(monkeypatch):
    for name in [m for m in sys.modules if m == "bitsandbytes" or m.startswith("bitsandbytes.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match="bitsandbytes, which cannot run here.*pip install"):
        qviz.quantize_tensor(torch.randn(8, 64), qviz.BnbInt8())
    with pytest.raises(RuntimeError, match="cannot run here"):
        qviz.quantize(nn.Sequential(nn.Linear(64, 8)), qviz.BnbNF4(), progress=False)


def test_bnb_on_an_unsupported_device():
    from qviz.quant.bnb import require_bitsandbytes

    with pytest.raises(RuntimeError, match="no kernels for 'mps'"):
        require_bitsandbytes(qviz.BnbNF4(), "mps")


# --------------------------------------------------------------------------- the driver


def test_quantize_leaves_the_input_bit_for_bit(net):
    before = digest(net)
    for cfg in (qviz.RTN(bits=3, group_size=32), qviz.BnbInt8(), qviz.BnbNF4(), qviz.ActQuant(8)):
        q = qviz.quantize(net, cfg, progress=False)
        assert q.module is not net
    assert digest(net) == before
    assert not net._forward_hooks and not net.fc1._forward_hooks


def test_record_skips_and_bytes(net):
    q = qviz.quantize(net, qviz.BnbInt8(), progress=False)
    rec = q.quantization
    assert list(rec.layers) == ["fc1", "fc2"]
    assert "embedding" in rec.skipped["emb"] and "only linear" in rec.skipped["conv"]
    assert rec.layers["fc1"].nbytes == 128 * 64 + 4 * 128
    assert rec.layers["fc1"].kernel.startswith("real kernel: bitsandbytes Linear8bitLt")
    full = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    assert rec.original_bytes == full
    quantized_weights = 4 * (128 * 64 + 8 * 128)
    assert rec.total_bytes == full - quantized_weights + rec.layers["fc1"].nbytes + rec.layers["fc2"].nbytes
    assert "2 layers quantized, 2 left in full precision" in rec.summary()


def test_rtn_quantizes_conv_and_linear(net):
    q = qviz.quantize(net, qviz.RTN(bits=4, group_size=None), progress=False)
    assert set(q.quantization.layers) == {"conv", "fc1", "fc2"}
    assert type(q.module.conv).__name__ == "FakeQuantConv1d" and isinstance(q.module.fc1, FakeQuantLinear)
    x = torch.randint(0, 20, (4, 7))
    w_hat = qviz.fake_quantize(net.conv.weight, qviz.RTN(bits=4, group_size=None))
    assert torch.equal(q.module.conv.weight, w_hat)
    assert torch.allclose(q.module(x), net(x), atol=0.05)


def test_group_size_error_names_layer_before_changing_anything(net):
    before = digest(net)
    with pytest.raises(ValueError, match=r"group_size=128 does not divide the row length 64 of layer 'fc1'.*\[32, 64\]"):
        qviz.quantize(net, qviz.RTN(bits=4, group_size=128), layers=["fc1", "fc2"], progress=False)
    assert digest(net) == before


def test_nan_weights_name_the_layer(net):
    with torch.no_grad():
        net.fc2.weight[0, :3] = float("nan")
    with pytest.raises(ValueError, match=r"Layer 'fc2' has 3 NaN/Inf weight"):
        qviz.quantize(net, qviz.RTN(bits=8, group_size=None), progress=False)
    q = qviz.quantize(net, qviz.RTN(bits=8, group_size=None), skip="fc2", progress=False)
    assert q.quantization.skipped["fc2"] == "excluded by skip="


def test_unknown_layer_and_config(net):
    with pytest.raises(ValueError, match="Did you mean 'fc1'"):
        qviz.quantize(net, qviz.RTN(), layers="fc_1", progress=False)
    with pytest.raises(TypeError, match="Known configs"):
        qviz.quantize(net, object(), progress=False)


def test_mixed_config_mapping(net):
    mapping = {"fc1": qviz.RTN(bits=2, group_size=None), "fc2": None, "conv": qviz.RTN(bits=8, group_size=None)}
    q = qviz.quantize(net, mapping, progress=False)
    rec = q.quantization
    assert rec.layers["fc1"].config == "RTN w2 ch asym" and rec.layers["conv"].config == "RTN w8 ch asym"
    assert "kept in full precision" in rec.skipped["fc2"] and isinstance(q.module.fc2, nn.Linear)
    q2 = qviz.quantize(net, {"fc*": qviz.RTN(bits=4, group_size=32)}, progress=False)
    assert set(q2.quantization.layers) == {"fc1", "fc2"} and q2.quantization.skipped["conv"] == "not named in the config mapping"


def test_packed_layers_match_fake_quant(net):
    cfg = qviz.RTN(bits=4, group_size=32)
    fake = qviz.quantize(net, cfg, progress=False)
    packed = qviz.quantize(net, cfg, progress=False, packed=True)
    assert isinstance(packed.module.fc1, PackedLinear) and "GEMV" in packed.quantization.layers["fc1"].kernel
    assert packed.module.fc1.nbytes == packed.quantization.layers["fc1"].nbytes
    assert torch.equal(packed.module.fc1.weight_hat(), fake.module.fc1.weight)
    x = torch.randint(0, 20, (3, 5))
    torch.testing.assert_close(packed.module(x), fake.module(x), rtol=1e-5, atol=1e-6)
    one = torch.randn(64)
    torch.testing.assert_close(packed.module.fc1(one), fake.module.fc1(one), rtol=1e-5, atol=1e-5)  # the GEMV kernel


# --------------------------------------------------------------------------- methods that need inputs


@dataclass(frozen=True)
class Recorded(QuantConfig):
    """Test-only config: a method that needs calibration inputs and records them."""

    sequential: bool = False
    method: ClassVar[str] = "recorded"

    @property
    def label(self) -> str:
        return f"recorded seq={self.sequential}"


SEEN: dict[str, torch.Tensor] = {}


@register(Recorded)
class RecordedMethod(Method):
    needs_inputs = True
    sequential = False

    def quantize_layer(self, name, module, cfg, inputs, state):
        SEEN[f"{cfg.sequential}:{name}"] = inputs.clone()
        zero = torch.zeros_like(qviz.models.weight_matrix(module))
        return LayerQuant(FakeQuantLinear.from_float(module, zero), zero, 0, "test", {})


@dataclass(frozen=True)
class RecordedSeq(Recorded):
    sequential: bool = True


@register(RecordedSeq)
class RecordedSeqMethod(RecordedMethod):
    sequential = True


def test_calib_required():
    with pytest.raises(ValueError, match="needs calibration inputs.*calibration_data"):
        qviz.quantize(nn.Sequential(nn.Linear(4, 4)), Recorded(), progress=False)
    with pytest.raises(ValueError, match="empty calibration batch"):
        qviz.quantize(nn.Sequential(nn.Linear(4, 4)), Recorded(), calib=[], progress=False)


def test_inputs_drop_padding_and_are_capped():
    model = qviz.load("tiny-llama")
    texts = ["a", "a much longer sentence than the first", "mid length"]
    enc = model.prepare(texts)
    real = int(enc["attention_mask"].sum())
    assert real < enc["input_ids"].numel()  # there is padding to drop
    layer = "model.layers.0.self_attn.q_proj"
    qviz.quantize(model, Recorded(), calib=texts, layers=layer, progress=False)
    assert SEEN[f"False:{layer}"].shape == (real, 64)
    qviz.quantize(model, Recorded(), calib=texts, layers=layer, progress=False, max_rows=10)
    assert SEEN[f"False:{layer}"].shape == (10, 64)


def test_sequential_inputs_come_from_the_quantized_prefix():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    x = torch.randn(16, 4)
    qviz.quantize(net, Recorded(), calib=x, progress=False)
    qviz.quantize(net, RecordedSeq(), calib=x, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(SEEN["False:1"], net[0](x))
        # layer 0 was replaced by zero weights first, so layer 1 saw only layer 0's bias
        torch.testing.assert_close(SEEN["True:1"], net[0].bias.expand(16, 4))


@pytest.mark.slow
def test_minilm_quantize_untouched_and_close(minilm, minilm_calib):
    before = digest(minilm.module)
    texts = minilm_calib[:4]
    q = qviz.quantize(minilm, qviz.BnbInt8(), progress=False)
    cos = (q.outputs(texts) * minilm.outputs(texts)).sum(-1).mean()
    assert cos > 0.998
    assert len(q.quantization.skipped) == 3  # the three embedding tables, with reasons
    assert q.quantization.total_bytes < 0.7 * q.quantization.original_bytes
    assert digest(minilm.module) == before
