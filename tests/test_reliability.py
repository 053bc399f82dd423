"""Interrupts, memory, untrusted input, quantized models that stay runnable, widgets under fast input.

* Interrupts: a ``KeyboardInterrupt`` from a timer (``SIGALRM``) in the middle of
  capture, quantize (RTN and GPTQ), layer_error, compare, the report and a
  widget update leaves no hook, an intact model in its own mode, and a next
  call that works. A global forward hook slows every forward so the timer
  always lands inside the call.
* Memory: capture's resident memory does not grow with the tokens streamed
  through it; a model larger than free memory is refused before anything is
  allocated, with the figures.
* Untrusted input: weights load with ``weights_only`` / safetensors, remote
  code is never run unless asked, saved Datasets hold no pickles, and
  model-supplied strings are escaped in the report and the widgets.
* Layers bitsandbytes cannot replace are left in full precision with the reason.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import signal
import time

import numpy as np
import psutil
import pytest
import torch
from torch import nn

import qviz
from qviz.quant.registry import method_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# --------------------------------------------------------------------------- interrupts


@contextlib.contextmanager
def interrupt_after(seconds: float, slow: float = 0.01):
    """Raise KeyboardInterrupt in the main thread after ``seconds``; every module forward sleeps ``slow``."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    hook = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: time.sleep(slow))
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        hook.remove()


def _widget_update(model, calib):
    ex = qviz.widgets.QuantExplorer(model, calib[:8], group_size=None, debounce=0, background=False)
    ex.bits_box.value = 3  # the synchronous update runs the model's layers
    ex.method_select.value = "GPTQ"
    return ex


def _rtn_interrupted_in_its_second_layer(model):
    """RTN runs no forward pass (nothing for the timer's slow hook to hold up) and can finish on an idle
    machine before the timer fires: here, while the timer is armed, Ctrl-C lands deterministically in its second layer."""
    method = type(method_for(qviz.RTN()))
    original, calls = method.quantize_layer, []

    def quantize_layer(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    method.quantize_layer = quantize_layer
    try:
        return qviz.quantize(model, qviz.RTN(bits=4, group_size=None), progress=False)
    finally:
        method.quantize_layer = original


def _report(model, calib, tmp_path):
    return qviz.report.build_report(model, tmp_path / "r.html", sections=["outliers"], quiet=True,
                                    progress=False)


TARGETS = {
    "capture": lambda m, x, tmp: qviz.capture(m, x, batch_size=4, progress=False),
    "quantize RTN": lambda m, x, tmp: _rtn_interrupted_in_its_second_layer(m),
    "quantize GPTQ": lambda m, x, tmp: qviz.quantize(m, qviz.GPTQ(bits=4, group_size=None), calib=x, progress=False),
    "layer_error": lambda m, x, tmp: qviz.layer_error(m, [qviz.RTN(bits=4, group_size=None), qviz.AWQ(group_size=None)],
                                                      calib=x),
    "compare": lambda m, x, tmp: qviz.compare(m, [qviz.RTN(bits=4, group_size=None)], metrics=["accuracy"],
                                              progress=False),
    "report": lambda m, x, tmp: _report(m, x, tmp),
    "widget update": lambda m, x, tmp: _widget_update(m, x),
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_interrupt_leaves_the_model_intact_and_the_next_call_works(target, digits, digits_calib, tmp_path):
    module = digits.module
    before = (_digest(module), module.training)
    run = TARGETS[target]
    # A first call imports lazily loaded libraries and compiles Numba kernels; Ctrl-C inside a third-party
    # import or compile can leave that library half-initialised, which is not qviz's state to restore.
    run(digits, digits_calib, tmp_path)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), interrupt_after(0.15, slow=0.02):
        run(digits, digits_calib, tmp_path)
        pytest.fail(f"{target} finished in {time.perf_counter() - start:.2f} s, before the interrupt")
    assert (_digest(module), module.training) == before
    assert _hooks(module) == 0
    assert torch.nn.modules.module._global_forward_hooks == {}
    run(digits, digits_calib, tmp_path)  # the next call works
    assert (_digest(module), module.training) == before and _hooks(module) == 0


# --------------------------------------------------------------------------- memory


def test_capture_memory_does_not_grow_with_tokens():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
    proc = psutil.Process()
    qviz.capture(net, torch.randn(64, 512), progress=False)  # imports and JIT compilation happen before measuring
    peaks = {}
    for n_batches in (4, 32):  # 4 MB and 32 MB of input streamed through (twice that in activations)
        gc.collect()
        base = proc.memory_info().rss
        peak = [0]

        def batches(n=n_batches):
            for i in range(n):
                peak[0] = max(peak[0], proc.memory_info().rss - base)
                yield torch.randn(512, 512, generator=torch.Generator().manual_seed(i))

        stats = qviz.capture(net, batches(), progress=False)
        assert int(stats["count"].sel(layer="0").values[0]) == n_batches * 512
        peaks[n_batches] = peak[0]
    print(f"\ncapture peak RSS growth: {peaks[4] / 1e6:.1f} MB over 2k tokens, {peaks[32] / 1e6:.1f} MB over 16k tokens")
    # 8x the tokens (56 MB more activations) may not cost more than a few MB more memory
    assert peaks[32] < peaks[4] + 12e6, peaks


def test_a_model_larger_than_free_memory_is_refused_before_allocating(monkeypatch, tmp_path):
    import qviz.models as models

    net = nn.Sequential(nn.Linear(256, 256))
    monkeypatch.setattr(models.model, "available_memory", lambda: 100_000)  # 0.1 MB free (read by check_fits_in_memory there)
    rss = psutil.Process().memory_info().rss
    with pytest.raises(MemoryError, match=r"needs about 0\.00 GB, but only 0\.00 GB of memory is free. Nothing was"):
        qviz.quantize(net, qviz.RTN(bits=4, group_size=None), progress=False)
    # a folder whose weights would not fit: refused from the file sizes, before reading them
    folder = tmp_path / "big"
    folder.mkdir()
    models.load("tiny-gpt2").module.save_pretrained(folder)
    with pytest.raises(MemoryError, match="Loading .* weight file.*needs about"):
        qviz.load(folder)
    assert psutil.Process().memory_info().rss - rss < 50e6


def test_the_memory_check_uses_the_real_figures():
    from qviz import models

    free = models.available_memory()
    assert 0 < free <= psutil.virtual_memory().total
    with pytest.raises(MemoryError, match=r"A test needs about [\d.]+ GB, but only [\d.]+ GB") as info:
        models.check_fits_in_memory(free * 10, "A test")
    import re

    need, have = (float(v) * 1e9 for v in re.findall(r"([\d.]+) GB", str(info.value)))
    assert need == pytest.approx(free * 10, rel=0.01) and have == pytest.approx(free, rel=0.3)


# --------------------------------------------------------------------------- untrusted input


def test_weights_load_with_safetensors_and_no_remote_code(tmp_path):
    folder = tmp_path / "m"
    qviz.load("tiny-gpt2").module.save_pretrained(folder)
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    m = qviz.load(folder)
    assert m.kind == "decoder"
    # a config that asks for custom code: never run without trust_remote_code
    marker = tmp_path / "ran.txt"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        qviz.load(folder)
    except ValueError as err:
        assert "trust_remote_code" in str(err) or "custom code" in str(err)
    assert not marker.exists(), "remote code ran"


def test_digits_cache_is_read_weights_only(monkeypatch):
    import qviz.models as models

    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    models._load_digits_cnn()
    assert seen.get("weights_only") is True


def test_saved_datasets_hold_no_pickles(tmp_path, digits, digits_calib):
    stats = qviz.capture(digits, digits_calib[:8], progress=False)
    stats.attrs["extra"] = {"nested": [1, 2, {"a": None}]}
    path = qviz.save(stats, tmp_path / "s.nc")
    raw = path.read_bytes()
    assert b"\x80\x04\x95" not in raw and b"cnumpy" not in raw  # no pickle protocol 4 frames, no pickled numpy
    import netCDF4

    with netCDF4.Dataset(path) as f:
        kinds = {type(f.getncattr(k)).__name__ for k in f.ncattrs()}
        for v in f.variables.values():
            kinds |= {type(v.getncattr(k)).__name__ for k in v.ncattrs()}
    assert kinds <= {"str", "int", "float", "int64", "float64", "int32", "ndarray", "float32"}, kinds
    assert qviz.open_dataset(path).attrs["extra"] == {"nested": [1, 2, {"a": None}]}


EVIL = "<img src=x onerror=alert(1)>"


class _EvilNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.add_module(EVIL, nn.Linear(16, 16))
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(torch.relu(getattr(self, EVIL)(x)))


def test_model_supplied_strings_are_escaped_in_widgets_and_static_html():
    net = _EvilNames()
    x = torch.randn(16, 16)
    ex = qviz.widgets.QuantExplorer(net, x, group_size=None, debounce=0, background=False)
    assert EVIL not in ex.summary.value and "&lt;img" in ex.summary.value
    assert EVIL not in ex.static_html()
    ox = qviz.widgets.OutlierExplorer(net, x, debounce=0)
    assert EVIL not in ox.static_html()


def test_model_supplied_strings_are_escaped_in_the_report(tmp_path):
    net = qviz.load(_EvilNames())
    net.name = EVIL
    net.description = EVIL
    import qviz.data as data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "calibration_data", lambda m, n=64: torch.randn(16, 16))
        mp.setattr(qviz, "calibration_data", lambda m, n=64: torch.randn(16, 16))
        res = qviz.report.build_report(net, tmp_path / "r.html", sections=["outliers"], quiet=True, progress=False)
    text = res.html_path.read_text()
    assert EVIL not in text, "a raw <img onerror> reached the report"


# --------------------------------------------------------------------------- what quantize returns can run


class _WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.attn(x, x, x)[0])


@pytest.mark.parametrize("cfg", [qviz.BnbNF4(), qviz.BnbFP4(), qviz.BnbInt8(),
                                 qviz.RTN(bits=8, group_size=None, act_bits=8)], ids=lambda c: c.label)
def test_multihead_attention_out_proj_is_left_in_full_precision(cfg):
    net = _WithAttention()
    q = qviz.quantize(net, cfg, progress=False)
    assert "attn.out_proj" in q.quantization.skipped
    assert "MultiheadAttention, which reads out_proj.weight directly" in q.quantization.skipped["attn.out_proj"]
    assert "head" in q.quantization.layers
    x = torch.randn(2, 3, 16)
    assert q.module(x).shape == (2, 3, 4)


def test_weight_only_rtn_keeps_quantizing_multihead_attention():
    q = qviz.quantize(_WithAttention(), qviz.RTN(bits=8, group_size=None), progress=False)
    assert "attn.out_proj" in q.quantization.layers


def test_a_replacement_that_cannot_run_is_left_in_full_precision(monkeypatch):
    from qviz.quant.rtn import RTNMethod

    real = RTNMethod.quantize_layer

    def broken(self, name, module, cfg, inputs, state):
        lq = real(self, name, module, cfg, inputs, state)
        if name == "1":
            lq.module.forward = lambda x: (_ for _ in ()).throw(RuntimeError("kernel missing"))
        return lq

    monkeypatch.setattr(RTNMethod, "quantize_layer", broken)
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    q = qviz.quantize(net, qviz.RTN(bits=4, group_size=None), progress=False)
    assert list(q.quantization.layers) == ["0"]
    assert "cannot run on this layer (RuntimeError: kernel missing)" in q.quantization.skipped["1"]
    q.module(torch.randn(2, 8))


def test_odd_sized_layers_quantized_by_bitsandbytes_run():
    net = nn.Sequential(nn.Linear(7, 3))
    q = qviz.quantize(net, qviz.BnbNF4(), progress=False)
    x = torch.randn(2, 7)
    first = q.module(x)
    assert first.shape == (2, 3) and torch.isfinite(first).all()


def test_grouped_convolutions_are_left_out_of_gptq_with_the_reason():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    q = qviz.quantize(net, qviz.GPTQ(group_size=None), calib=torch.randn(16, 4, 8, 8), progress=False)
    assert "groups=4" in q.quantization.skipped["0"] and "2" in q.quantization.layers
    err = qviz.layer_error(net, qviz.GPTQ(group_size=None), calib=torch.randn(16, 4, 8, 8))
    assert np.isnan(err.output_rel_err.sel(layer="0").item()) if "0" in err.layer.values else True


def _float_copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_in_layer_error_and_the_explorer(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).to(dtype)
    x = torch.randn(32, 32)
    err = qviz.layer_error(net, qviz.RTN(bits=4, group_size=None), calib=x)
    assert np.isfinite(err.output_rel_err.values).all() and err.attrs["model_dtype"] == str(dtype).split(".")[1]
    ref = qviz.layer_error(_float_copy(net), qviz.RTN(bits=4, group_size=None), calib=x)
    np.testing.assert_allclose(err.weight_mse.values, ref.weight_mse.values, rtol=1e-6)  # measured in float32
    assert net[0].weight.dtype == dtype  # the model itself was not upcast
    ex = qviz.widgets.QuantExplorer(net, x, group_size=None, debounce=0, background=True)
    ex.flush()
    assert ex.last_error is None and np.isfinite(ex.current.output_rel_err)


def test_capture_of_quantized_models_reports_the_real_channels():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 8)
    ref = qviz.capture(net, x, progress=False)
    for cfg in (qviz.BnbNF4(), qviz.BnbInt8(), qviz.RTN(bits=4, group_size=None)):
        stats = qviz.capture(qviz.quantize(net, cfg, progress=False), x, progress=False)
        assert stats.n_channels.values.tolist() == ref.n_channels.values.tolist() == [8, 16], cfg.label
        assert np.isfinite(stats.absmax.sel(layer="2").values).all()
        np.testing.assert_allclose(stats.weight_absmax_in.sel(layer="0").values[:8],
                                   ref.weight_absmax_in.sel(layer="0").values[:8], rtol=0.2)


def test_tiny_weights_warn_that_they_quantize_to_zero():
    w = torch.full((4, 8), 1e-40)
    with pytest.warns(UserWarning, match=r"largest \|w\| = 1e-40\) quantizes to zero"):
        qviz.fake_quantize(w, qviz.RTN(bits=4, group_size=None))
    net = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        net[0].weight.fill_(1e-40)
    with pytest.warns(UserWarning, match="layer '0'.*quantizes to zero"):
        qviz.quantize(net, qviz.RTN(bits=4, group_size=None), progress=False)


def test_pgd_takes_the_data_range_when_told(digits):
    x, y = qviz.eval_data(digits, n=32)
    x16 = x * 16
    x_adv = qviz.robustness.pgd(digits, x16, y, eps=1.0, steps=2, clamp=(0, 16))
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 16
    assert float((x_adv - x16).abs().max()) <= 1.0 + 1e-5


def test_a_dataloader_and_a_generator_work_as_calib():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8)
    ref = qviz.quantize(net, qviz.GPTQ(group_size=None), calib=x, progress=False)
    for calib in (loader, (x[i:i + 8] for i in range(0, 32, 8))):
        q = qviz.quantize(net, qviz.GPTQ(group_size=None), calib=calib, progress=False)  # GPTQ reads calib per layer
        assert list(q.quantization.layers) == list(ref.quantization.layers)
    err = qviz.layer_error(net, [qviz.RTN(group_size=None), qviz.AWQ(group_size=None)], calib=(x[i:i + 8] for i in range(4)))
    assert np.isfinite(err.output_rel_err.values).all()


# --------------------------------------------------------------------------- widgets under fast input


def test_fast_control_changes_resolve_last_one_wins():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    ex = qviz.widgets.QuantExplorer(net, torch.randn(32, 64), group_size=None, debounce=0.02, background=True)
    for bits in (2, 8, 3, 7, 4, 6, 5):  # faster than the debounce and the background work
        ex.bits_box.value = bits
    ex.symmetric_box.value = True
    ex.flush()
    assert ex.current.config == "RTN w5 ch sym"
    assert ex.config.label == "RTN w5 ch sym"
    assert "RTN w5 ch sym" in ex.summary.value
    # every layer's bar is from the final config, none from an earlier one
    assert {label for (label, _layer) in ex.results if _layer != ex.layer_select.value} >= {"RTN w5 ch sym"}
    final_bars = [ex.results[("RTN w5 ch sym", n)] for n in ex.lab.names]
    assert all(np.isfinite(r.weight_sqnr_db) for r in final_bars)
