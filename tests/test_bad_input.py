"""The bad-input catalogue: every bad input gets a clear error, never a crash from deep inside.

Each case is one line of a table: an id, the failure class it belongs to (the
classes of issue 16), the call, the exceptions it may raise and the fragments
its message must contain (the parameter, the bad value, and the fix). A case
passes only if the call raises one of the allowed types — never
``AssertionError``, ``IndexError``, ``KeyError``, ``ZeroDivisionError``,
``AttributeError`` or a library's internal error — with every fragment in the
message, and (for calls that take a model) leaves the model bit-identical and
without hooks.

The config cases are generated from the registry: every field of every
registered config type (the format modules' configs too, as they land) is
tried with values of the wrong type; a config type whose fields are all
required gets an example instance in :data:`EXAMPLES`.

Run ``pytest tests/test_bad_input.py -q -rA | grep -c PASSED`` to count the cases;
``test_catalogue_covers_every_class`` prints the count by class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pickle
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import qviz
from qviz._checks import _field_types
from qviz.models import as_module
from qviz.quant.registry import known_config_types

CLASSES = {
    "quantized-model": "1: models qviz returns that drift or break (quantized models refused or analysed)",
    "config": "2: silently flipped options (every config field type-checked)",
    "config-range": "2: config values out of range",
    "nonfinite": "2: non-finite data reported where it enters",
    "attack": "2: attack settings and inputs outside clamp",
    "valid-crash": "4: valid-looking input that used to crash",
    "batch": "5: batches checked at the door",
    "message": "6: unclear or wrong-typed messages",
    "cli": "CLI: qviz report",
    "ipython": "IPython: %qviz magics",
    "widget": "widgets: constructor arguments and control values",
}

FORBIDDEN = (AssertionError, IndexError, KeyError, ZeroDivisionError, AttributeError, RuntimeError, OSError,
             NotImplementedError)

VALUE = (ValueError,)
TYPE = (TypeError,)
EITHER = (ValueError, TypeError)


@dataclass(frozen=True)
class Case:
    id: str
    cls: str
    call: Callable[[Any], Any]
    raises: tuple[type, ...]
    fragments: tuple[str, ...]
    model: str | None = None  # the attribute of Ctx that the call touches: checked unchanged and hook-free


# --------------------------------------------------------------------------- the models and files the cases use


class Ctx:
    """Small models and files, built once (digits-cnn and tiny-llama are real qviz models)."""

    def __init__(self, tmp: Path) -> None:
        torch.manual_seed(0)
        self.tmp = tmp
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
        self.wide = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
        self.xw = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
        self.digits = qviz.load("digits-cnn")
        self.images = qviz.calibration_data(self.digits, n=16)
        self.llama = qviz.load("tiny-llama")
        self.texts = ["hello world", "a second sentence"]
        self.q_rtn = qviz.quantize(self.net, qviz.RTN(bits=4, group_size=None), progress=False)
        self.q_int8 = qviz.quantize(self.net, qviz.BnbInt8(), progress=False)
        self.q_nf4 = qviz.quantize(self.net, qviz.BnbNF4(), progress=False)
        self.meta = nn.Sequential(nn.Linear(8, 4)).to("meta")
        # files
        self.not_nc = tmp / "not.nc"
        self.not_nc.write_text("this is not netCDF")
        bad_json = xr.Dataset({"a": ("layer", [1.0])}, attrs={"config": "json:{broken"})
        self.bad_json = tmp / "bad_json.nc"
        bad_json.to_netcdf(self.bad_json, engine="netcdf4")
        self.out_dir = tmp / "a_folder.html"
        self.out_dir.mkdir()
        self.readonly = _read_only_folder(tmp / "readonly")
        self.pickle_folder = _pickle_weight_folder(tmp / "pickled")
        self.cmp = xr.Dataset(
            {"accuracy": ("config", [0.9, 0.8], {"long_name": "accuracy", "units": "1"}),
             "size_bytes": ("config", [100.0, 30.0], {"long_name": "size", "units": "byte"})},
            coords={"config": ["fp32", "w4"]},
        )

    def explorer(self) -> Any:
        return qviz.widgets.QuantExplorer(self.wide, self.xw, group_size=32, debounce=0, background=False)

    def outliers(self) -> Any:
        return qviz.widgets.OutlierExplorer(self.wide, self.xw, debounce=0)


def _read_only_folder(folder: Path) -> Path:
    """A folder this process cannot write to (root ignores permission bits: then a folder under /proc)."""
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o700)
    return Path("/proc/qviz-read-only")


class _Boom:
    """An object whose unpickling would run code (never executed: the loader must refuse it)."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo qviz-must-not-run-this",))


def _pickle_weight_folder(folder: Path) -> Path:
    import transformers

    folder.mkdir()
    config = transformers.GPT2Config(vocab_size=32, n_embd=8, n_layer=1, n_head=2, n_positions=16)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(folder)
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": _Boom()}, f)
    return folder


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    c = Ctx(tmp_path_factory.mktemp("bad_input"))
    yield c
    if c.readonly.is_relative_to(c.tmp):
        c.readonly.chmod(0o700)


# --------------------------------------------------------------------------- config cases, generated from the registry

# Config types whose fields are not all defaulted: one valid instance each (one line per new config type).
EXAMPLES: dict[str, Callable[[], Any]] = {
    "GGUF": lambda: qviz.GGUF("Q4_K_M"),
    "Rotated": lambda: qviz.Rotated(qviz.RTN(bits=4)),
}

_BAD_FOR = {  # a value of the wrong type for a field that accepts only these types
    bool: ["no", 1],
    int: [True, 2.5],
    float: [float("nan"), True],
    str: [3],
}


def _example(cls: type) -> Any:
    if cls.__name__ in EXAMPLES:
        return EXAMPLES[cls.__name__]()
    return cls()


def _bad_values(allowed: tuple[type, ...]) -> list[Any]:
    out = []
    for t in allowed:
        for v in _BAD_FOR.get(t, []):
            ok = any(
                (a is bool and isinstance(v, bool))
                or (a is int and isinstance(v, int) and not isinstance(v, bool))
                or (a is float and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                or (a is str and isinstance(v, str))
                for a in allowed
            )
            if not ok and not any(v is w or (isinstance(v, float) and isinstance(w, float) and math.isnan(v) and math.isnan(w)) for w in out):
                out.append(v)
    return out


def _config_cases() -> list[Case]:
    cases = []
    for cls in sorted(known_config_types(), key=lambda t: t.__name__):
        for name, allowed in _field_types(cls).items():
            if allowed is None or not set(allowed) <= {bool, int, float, str, type(None)}:
                continue
            for bad in _bad_values(allowed):
                def call(c: Any, cls: type = cls, name: str = name, bad: Any = bad) -> Any:
                    return dataclasses.replace(_example(cls), **{name: bad})

                shown = "nan" if isinstance(bad, float) and math.isnan(bad) else repr(bad)
                cases.append(Case(f"{cls.__name__}.{name}={shown}", "config", call, EITHER, (name, shown, "must be")))
    return cases


# --------------------------------------------------------------------------- the hand-written table

R, G = qviz.RTN, qviz.GPTQ
NAN = float("nan")


def _nan(x: torch.Tensor, where: tuple = (0, 0), value: float = NAN) -> torch.Tensor:
    x = x.clone()
    x[where] = value
    return x


def _gen(xs: list) -> Any:
    return (x for x in xs)


def _used_generator(c: Ctx) -> Any:
    g = _gen([c.x[:8]])
    qviz.capture(c.net, g, progress=False)
    return g


def _cli(argv: list[str]) -> Callable[[Any], Any]:
    def call(c: Any) -> Any:
        import contextlib
        import io

        from qviz.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                status = main([str(a).format(tmp=c.tmp, out_dir=c.out_dir, readonly=c.readonly) for a in argv])
            except SystemExit as exc:  # argparse's own usage errors exit with 2
                status = exc.code
        if status == 2:
            raise ValueError(f"exit status 2: {err.getvalue()}")
        return status

    return call


def _magic(line: str) -> Callable[[Any], Any]:
    def call(c: Any) -> Any:
        from qviz._ipython import QvizUsageError, run_magic

        ns = {"net": c.wide, "batch": c.xw, "cmp": c.cmp, "x": 3}
        try:
            return run_magic(line.format(tmp=c.tmp, out_dir=c.out_dir), ns)
        except QvizUsageError as err:
            raise ValueError(f"usage error: {err}") from err

    return call


def _widget_message(make: Callable[[Any], Any], control: str, value: Any) -> Callable[[Any], Any]:
    """Set one control of a widget; the widget shows a message instead of raising: raise it for the check."""
    def call(c: Any) -> Any:
        ex = make(c)
        getattr(ex, control).value = value
        ex.flush()
        if ex.last_error:
            raise ValueError(f"widget message: {ex.last_error}")
        return ex

    return call


TABLE: list[Case] = [
    # ---- class 1: already-quantized models are refused by what measures against weights
    Case("layer_error on an LLM.int8 model", "quantized-model",
         lambda c: qviz.layer_error(c.q_int8, R(bits=4, group_size=None), calib=c.x), VALUE,
         ("already quantized", "Bnb8bitLinear", "original model")),
    Case("layer_error on an NF4 model", "quantized-model",
         lambda c: qviz.layer_error(c.q_nf4, R(bits=4, group_size=None), calib=c.x), VALUE,
         ("already quantized", "bnb nf4", "original model")),
    Case("layer_error on an RTN model", "quantized-model",
         lambda c: qviz.layer_error(c.q_rtn, R(bits=4, group_size=None), calib=c.x), VALUE,
         ("already quantized", "RTN w4 ch", "original model")),
    Case("quantize an LLM.int8 model", "quantized-model",
         lambda c: qviz.quantize(c.q_int8, R(bits=4, group_size=None), progress=False), VALUE,
         ("already quantized", "quantizing again", "original model")),
    Case("quantize an NF4 model", "quantized-model",
         lambda c: qviz.quantize(c.q_nf4, qviz.BnbInt8(), progress=False), VALUE, ("already quantized", "original model")),
    Case("quantize an RTN model with GPTQ", "quantized-model",
         lambda c: qviz.quantize(c.q_rtn, G(group_size=None), calib=c.x, progress=False), VALUE,
         ("already quantized", "original model")),
    Case("quantize the bare module of an int8 model", "quantized-model",
         lambda c: qviz.quantize(c.q_int8.module, R(bits=4, group_size=None), progress=False), VALUE,
         ("already quantized", "Bnb8bitLinear", "int8 weights")),
    Case("sensitivity of an int8 model", "quantized-model",
         lambda c: qviz.sensitivity(c.q_int8, [R(bits=4, group_size=None)], calib=c.x), VALUE, ("already quantized",)),
    Case("QuantExplorer on an int8 model", "quantized-model",
         lambda c: qviz.widgets.QuantExplorer(c.q_int8, c.x, debounce=0, background=False), VALUE,
         ("already quantized",)),
    Case("limits of an NF4 model", "quantized-model",
         lambda c: qviz.limits(c.q_nf4), VALUE, ("already quantized",)),

    # ---- class 2: config values out of range (types are generated below)
    # PerLayer's fields hold configs, not plain values, so the generator makes no cases for them: these are its own.
    Case("PerLayer.rules={}", "config", lambda c: qviz.PerLayer({}), VALUE, ("at least one rule",)),
    Case("PerLayer.rules={'0': 4}", "config", lambda c: qviz.PerLayer({"0": 4}), TYPE, ("rule '0'", "must be a quantization config")),
    Case("PerLayer.rules=[(0, RTN)]", "config", lambda c: qviz.PerLayer([(0, R())]), TYPE, ("name patterns",)),
    Case("PerLayer.rules='*.v_proj'", "config", lambda c: qviz.PerLayer("*.v_proj"), EITHER, ("rules", "must be")),
    Case("PerLayer.default=PerLayer", "config", lambda c: qviz.PerLayer({"0": R()}, default=qviz.PerLayer({"1": R()})),
         VALUE, ("itself a PerLayer",)),
    Case("PerLayer.default='RTN'", "config", lambda c: qviz.PerLayer({"0": R()}, default="RTN"), TYPE, ("default", "must be")),
    Case("RTN bits=9", "config-range", lambda c: R(bits=9), VALUE, ("bits", "9", "from 2 to 8")),
    Case("RTN bits=1", "config-range", lambda c: R(bits=1), VALUE, ("bits", "1", "Pick e.g.")),
    Case("RTN group_size=0", "config-range", lambda c: R(group_size=0), VALUE, ("group_size", "0", "positive int")),
    Case("RTN group_size=-32", "config-range", lambda c: R(group_size=-32), VALUE, ("group_size", "-32")),
    Case("RTN group_size='row'", "config-range", lambda c: R(group_size="row"), VALUE, ("group_size", "'row'", "'tensor'")),
    Case("RTN act_bits=1", "config-range", lambda c: R(act_bits=1), VALUE, ("act_bits", "1")),
    Case("RTN act_scheme='token'", "config-range", lambda c: R(act_scheme="token"), VALUE, ("act_scheme", "'token'", "per-token")),
    Case("BnbInt8 threshold=-1", "config-range", lambda c: qviz.BnbInt8(threshold=-1), VALUE, ("threshold", "-1", "6.0")),
    Case("BnbInt8 threshold=inf", "config-range", lambda c: qviz.BnbInt8(threshold=math.inf), VALUE, ("threshold", "inf", "finite")),
    Case("BnbNF4 blocksize=100", "config-range", lambda c: qviz.BnbNF4(blocksize=100), VALUE, ("blocksize", "100", "64")),
    Case("BnbFP4 blocksize=16", "config-range", lambda c: qviz.BnbFP4(blocksize=16), VALUE, ("blocksize", "16")),
    Case("SmoothQuant alpha=1.5", "config-range", lambda c: qviz.SmoothQuant(alpha=1.5), VALUE, ("alpha", "1.5", "[0, 1]")),
    Case("SmoothQuant alpha=-0.1", "config-range", lambda c: qviz.SmoothQuant(alpha=-0.1), VALUE, ("alpha", "-0.1")),
    Case("SmoothQuant fold='yes'", "config-range", lambda c: qviz.SmoothQuant(fold="yes"), VALUE, ("fold", "'yes'", "'auto'")),
    Case("SmoothQuant static per-token", "config-range",
         lambda c: qviz.SmoothQuant(act_static=True, act_scheme="per-token"), VALUE, ("act_static", "per-tensor")),
    Case("SmoothQuant w_bits=16", "config-range", lambda c: qviz.SmoothQuant(w_bits=16), VALUE, ("w_bits", "16")),
    Case("AWQ n_grid=0", "config-range", lambda c: qviz.AWQ(n_grid=0), VALUE, ("n_grid", "0", "20")),
    Case("AWQ bits=0", "config-range", lambda c: qviz.AWQ(bits=0), VALUE, ("bits", "0")),
    Case("GPTQ damp=0", "config-range", lambda c: G(damp=0.0), VALUE, ("damp", "0", "0.01")),
    Case("GPTQ damp=1", "config-range", lambda c: G(damp=1.0), VALUE, ("damp", "1", "0.01")),
    Case("GPTQ block_size=0", "config-range", lambda c: G(block_size=0), VALUE, ("block_size", "0", "128")),
    Case("QAT steps=-1", "config-range", lambda c: qviz.QAT(steps=-1), VALUE, ("steps", "-1", "200")),
    Case("QAT lr=0", "config-range", lambda c: qviz.QAT(lr=0.0), VALUE, ("lr", "0", "1e-3")),
    Case("QAT batch_size=-1", "config-range", lambda c: qviz.QAT(batch_size=-1), VALUE, ("batch_size", "-1", "32")),
    Case("QAT batch_size=0", "config-range", lambda c: qviz.QAT(batch_size=0), VALUE, ("batch_size", "0")),
    Case("config_from_json unknown method", "config-range",
         lambda c: qviz.quant.registry.config_from_json('{"method": "Nope"}'), VALUE, ("'Nope'", "known", "RTN")),
    Case("config_from_json unknown field", "config-range",
         lambda c: qviz.quant.registry.config_from_json('{"method": "RTN", "bitz": 4}'), VALUE, ("bitz", "fields")),
    Case("config_from_json not JSON", "config-range",
         lambda c: qviz.quant.registry.config_from_json("RTN(bits=4)"), VALUE, ("config_from_json", "RTN(bits=4)", "to_json")),
    Case("config_from_json bad field type", "config-range",
         lambda c: qviz.quant.registry.config_from_json('{"method": "RTN", "symmetric": "no"}'), EITHER, ("symmetric", "'no'")),
    Case("quantize with the RTN class", "config-range",
         lambda c: qviz.quantize(c.net, qviz.RTN, progress=False), TYPE, ("not the class", "Known configs")),
    Case("quantize with a dict config", "config-range",
         lambda c: qviz.quantize(c.net, {"*": "rtn"}, progress=False), TYPE, ("str", "Known configs")),
    Case("layer_error with duplicate configs", "config-range",
         lambda c: qviz.layer_error(c.net, [R(), R()], calib=c.x), VALUE, ("distinct", "RTN w4 g128 asym")),
    Case("quantize progress='no'", "config-range",
         lambda c: qviz.quantize(c.net, R(group_size=None), progress="no"), EITHER, ("progress", "'no'", "True or False")),
    Case("quantize packed=1", "config-range",
         lambda c: qviz.quantize(c.net, R(group_size=None), packed=1, progress=False), EITHER, ("packed", "1")),
    Case("group size that does not divide", "config-range",
         lambda c: qviz.quantize(c.net, R(group_size=3), progress=False), VALUE, ("group_size=3", "row length 8", "skip=")),

    # ---- class 2: non-finite data, reported where it enters
    Case("layer_error calib with one NaN", "nonfinite",
         lambda c: qviz.layer_error(c.net, R(group_size=None), calib=_nan(c.x)), VALUE, ("1 NaN/Inf", "(0, 0)", "nan_to_num"), "net"),
    Case("layer_error calib with Inf", "nonfinite",
         lambda c: qviz.layer_error(c.net, R(group_size=None), calib=_nan(c.x, (3, 2), math.inf)), VALUE, ("NaN/Inf", "(3, 2)"), "net"),
    Case("GPTQ calib with NaN", "nonfinite",
         lambda c: qviz.quantize(c.net, G(group_size=None), calib=_nan(c.x), progress=False), VALUE, ("NaN/Inf", "Clean the data"), "net"),
    Case("sensitivity calib with NaN", "nonfinite",
         lambda c: qviz.sensitivity(c.net, [G(group_size=None)], calib=_nan(c.x), eval_data=c.x), VALUE, ("NaN/Inf",), "net"),
    Case("AWQ calib with NaN", "nonfinite",
         lambda c: qviz.quantize(c.net, qviz.AWQ(group_size=None), calib=_nan(c.x), progress=False), VALUE, ("NaN/Inf",), "net"),
    Case("NaN weights", "nonfinite",
         lambda c: qviz.quantize(nn.Sequential(nn.Linear(8, 4)).requires_grad_(False).apply(
             lambda m: m.weight.fill_(NAN) if isinstance(m, nn.Linear) else None), R(group_size=None), progress=False),
         VALUE, ("NaN/Inf weight", "skip=")),
    Case("fake_quantize a NaN tensor", "nonfinite",
         lambda c: qviz.fake_quantize(_nan(torch.randn(4, 8)), R(group_size=None)), VALUE, ("NaN/Inf", "clean them")),
    Case("quantize_tensor an Inf array", "nonfinite",
         lambda c: qviz.quantize_tensor(np.full((4, 8), np.inf, np.float32), qviz.BnbNF4()), VALUE, ("32 NaN/Inf",)),
    Case("pgd on NaN images", "nonfinite",
         lambda c: qviz.robustness.pgd(c.digits, _nan(c.images[:4], (0, 0, 0, 0)), torch.zeros(4, dtype=torch.long),
                                       eps=0.1, clamp=None), VALUE, ("NaN/Inf",), "digits"),
    Case("eps=nan", "nonfinite",
         lambda c: qviz.robustness.fgsm(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=NAN), VALUE,
         ("eps", "finite")),

    # ---- class 2: attacks: inputs outside clamp, bad settings
    Case("pgd on 0..16 pixels with the default clamp", "attack",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4] * 16, torch.zeros(4, dtype=torch.long), eps=0.1), VALUE,
         ("clamp=(0.0, 1.0)", "0 to 16", "clamp=None"), "digits"),
    Case("fgsm on 0..16 pixels with the default clamp", "attack",
         lambda c: qviz.robustness.fgsm(c.digits, c.images[:4] * 16, torch.zeros(4, dtype=torch.long), eps=0.1), VALUE,
         ("clamp", "to 16", "valid range"), "digits"),
    Case("pgd on negative inputs", "attack",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4] - 0.5, torch.zeros(4, dtype=torch.long), eps=0.1), VALUE,
         ("-0.5", "clamp"), "digits"),
    Case("pgd eps=-0.1", "attack",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=-0.1), VALUE,
         ("eps", "-0.1", ">= 0")),
    Case("pgd steps=0", "attack",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=0.1, steps=0), VALUE,
         ("steps", "0", "10 is common")),
    Case("pgd steps=True", "attack",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=0.1, steps=True), VALUE,
         ("steps", "True")),
    Case("pgd norm='l3'", "attack",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=0.1, norm="l3"), VALUE,
         ("norm", "'l3'", "'linf'")),
    Case("pgd clamp=(1, 0)", "attack",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=0.1, clamp=(1, 0)),
         VALUE, ("clamp", "(1, 0)", "low < high")),
    Case("pgd clamp='01'", "attack",
         lambda c: qviz.robustness.fgsm(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=0.1, clamp="0"),
         EITHER, ("clamp", "'0'", "pair")),
    Case("pgd ste='yes'", "attack",
         lambda c: qviz.robustness.fgsm(c.digits, c.images[:4], torch.zeros(4, dtype=torch.long), eps=0.1, ste="yes"),
         TYPE, ("ste", "'yes'", "True or False")),

    # ---- class 4: valid-looking input that used to crash
    Case("capture batch_size=0", "valid-crash", lambda c: qviz.capture(c.net, c.x, batch_size=0, progress=False), VALUE,
         ("batch_size", "0", "batch_size=16"), "net"),
    Case("capture batch_size=-4", "valid-crash", lambda c: qviz.capture(c.net, c.x, batch_size=-4, progress=False), VALUE,
         ("batch_size", "-4"), "net"),
    Case("capture batch_size=2.0", "valid-crash", lambda c: qviz.capture(c.net, c.x, batch_size=2.0, progress=False),
         EITHER, ("batch_size", "2.0", "an int"), "net"),
    Case("capture batch_size=True", "valid-crash", lambda c: qviz.capture(c.net, c.x, batch_size=True, progress=False),
         EITHER, ("batch_size", "True"), "net"),
    Case("capture threshold=nan", "valid-crash", lambda c: qviz.capture(c.net, c.x, threshold=NAN, progress=False),
         VALUE, ("threshold", "nan", "finite"), "net"),
    Case("capture top_k=0", "valid-crash", lambda c: qviz.capture(c.net, c.x, top_k=0, progress=False), VALUE,
         ("top_k", "0"), "net"),
    Case("capture n_bins=1", "valid-crash", lambda c: qviz.capture(c.net, c.x, n_bins=1, progress=False), VALUE,
         ("n_bins", "1", ">= 2"), "net"),
    Case("capture progress='no'", "valid-crash", lambda c: qviz.capture(c.net, c.x, progress="no"), EITHER,
         ("progress", "'no'"), "net"),
    Case("layer_error max_rows=0", "valid-crash",
         lambda c: qviz.quantize(c.net, G(group_size=None), calib=c.x, max_rows=0, progress=False), VALUE,
         ("max_rows", "0")),
    Case("meta-device model: capture", "valid-crash", lambda c: qviz.capture(c.meta, c.x, progress=False), VALUE,
         ("'meta' device", "0.weight", "Load real weights")),
    Case("meta-device model: quantize", "valid-crash",
         lambda c: qviz.quantize(c.meta, R(group_size=None), progress=False), VALUE, ("'meta' device", "Load real weights")),
    Case("meta-device model: layer_error", "valid-crash",
         lambda c: qviz.layer_error(c.meta, R(group_size=None), calib=c.x), VALUE, ("'meta' device",)),
    Case("meta tensor: fake_quantize", "valid-crash",
         lambda c: qviz.fake_quantize(torch.empty(4, 8, device="meta"), R(group_size=None)), VALUE,
         ("meta tensor", "(4, 8)", "real values")),
    Case("meta tensor: quantize_tensor", "valid-crash",
         lambda c: qviz.quantize_tensor(torch.empty(4, 8, device="meta"), qviz.BnbNF4()), VALUE, ("meta tensor",)),
    Case("report --out is a directory", "valid-crash",
         lambda c: qviz.report.build_report(c.digits, c.out_dir, quiet=True), VALUE, ("is a directory", "report.html")),
    Case("report --out in a read-only folder", "valid-crash",
         lambda c: qviz.report.build_report(c.digits, c.readonly / "r.html", quiet=True), VALUE,
         ("cannot be written", "Nothing was run", "--out ./report.html")),
    Case("report --out under a file", "valid-crash",
         lambda c: qviz.report.build_report(c.digits, c.not_nc / "r.html", quiet=True), VALUE, ("cannot be written",)),
    Case("report --out .txt", "valid-crash",
         lambda c: qviz.report.build_report(c.digits, c.tmp / "r.txt", quiet=True), VALUE, (".html", "r.txt")),
    Case("report unknown section", "valid-crash",
         lambda c: qviz.report.build_report(c.digits, c.tmp / "r.html", sections=["outlier"], quiet=True), VALUE,
         ("'outlier'", "known sections")),

    # ---- class 5: batches checked at the door
    Case("capture: wrong feature width", "batch", lambda c: qviz.capture(c.net, torch.randn(4, 9), progress=False), VALUE,
         ("[4, 9]", "should be 8", "[..., 8]"), "net"),
    Case("layer_error: wrong feature width", "batch",
         lambda c: qviz.layer_error(c.net, R(group_size=None), calib=torch.randn(4, 5)), VALUE, ("[4, 5]", "8"), "net"),
    Case("GPTQ: wrong feature width", "batch",
         lambda c: qviz.quantize(c.net, G(group_size=None), calib=torch.randn(4, 12), progress=False), VALUE,
         ("[4, 12]", "8"), "net"),
    Case("capture: integer batch", "batch",
         lambda c: qviz.capture(c.net, torch.ones(4, 8, dtype=torch.long), progress=False), TYPE,
         ("int64", "not floating point", "x.float()"), "net"),
    Case("capture: bool batch", "batch",
         lambda c: qviz.capture(c.net, torch.ones(4, 8, dtype=torch.bool), progress=False), TYPE, ("bool", "x.float()"), "net"),
    Case("capture: complex batch", "batch",
         lambda c: qviz.capture(c.net, torch.ones(4, 8, dtype=torch.complex64), progress=False), TYPE,
         ("complex64", "real inputs"), "net"),
    Case("capture: 0-d tensor", "batch", lambda c: qviz.capture(c.net, torch.tensor(1.0), progress=False), VALUE,
         ("0-d", "shape ()", "x[None]"), "net"),
    Case("layer_error: 0-d array", "batch", lambda c: qviz.layer_error(c.net, R(group_size=None), calib=np.float32(1.0)),
         EITHER, ("float32",), "net"),
    Case("capture: 0-d numpy array", "batch", lambda c: qviz.capture(c.net, np.array(2.0), progress=False), VALUE,
         ("0-d", "ndarray"), "net"),
    Case("capture: 1-D vector", "batch", lambda c: qviz.capture(c.net, torch.randn(8), progress=False), VALUE,
         ("[8]", "[..., 8]"), "net"),
    Case("digits-cnn: 3 channels", "batch",
         lambda c: qviz.capture(c.digits, torch.rand(4, 3, 8, 8), progress=False), VALUE,
         ("[4, 3, 8, 8]", "[batch, 1, 8, 8]"), "digits"),
    Case("digits-cnn: 12x12 images", "batch",
         lambda c: qviz.capture(c.digits, torch.rand(4, 1, 12, 12), progress=False), VALUE,
         ("[4, 1, 12, 12]", "[batch, 1, 8, 8]"), "digits"),
    Case("digits-cnn: flat pixels", "batch",
         lambda c: qviz.layer_error(c.digits, R(group_size=None), calib=torch.rand(4, 64)), VALUE, ("[4, 64]", "8, 8"), "digits"),
    Case("digits-cnn: integer pixels", "batch",
         lambda c: qviz.capture(c.digits, (c.images * 16).long(), progress=False), EITHER, ("int64",), "digits"),
    Case("digits-cnn: texts", "batch",
         lambda c: qviz.capture(c.digits, ["an image?"], progress=False), TYPE, ("no tokenizer", "Pass tensors"), "digits"),
    Case("digits-cnn GPTQ: 3 channels", "batch",
         lambda c: qviz.quantize(c.digits, G(group_size=None), calib=torch.rand(4, 3, 8, 8), progress=False), VALUE,
         ("[4, 3, 8, 8]",), "digits"),
    Case("tiny-llama: ids beyond the vocabulary", "batch",
         lambda c: qviz.capture(c.llama, {"input_ids": torch.full((1, 4), 999), "attention_mask": torch.ones(1, 4, dtype=torch.long)},
                                progress=False), VALUE, ("999", "vocabulary of 259", "tokenizer"), "llama"),
    Case("tiny-llama: negative ids", "batch",
         lambda c: qviz.capture(c.llama, {"input_ids": torch.full((1, 4), -1), "attention_mask": torch.ones(1, 4, dtype=torch.long)},
                                progress=False), VALUE, ("-1", "vocabulary"), "llama"),
    Case("tiny-llama: float ids", "batch",
         lambda c: qviz.capture(c.llama, {"input_ids": torch.ones(1, 4), "attention_mask": torch.ones(1, 4, dtype=torch.long)},
                                progress=False), TYPE, ("input_ids", "float32", "tokenizer"), "llama"),
    Case("pgd: labels of another length", "batch",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4], torch.zeros(3, dtype=torch.long), eps=0.1), VALUE,
         ("y must have shape", "(4,)", "(3,)")),
    Case("pgd: float labels", "batch",
         lambda c: qviz.robustness.pgd(c.digits, c.images[:4], torch.zeros(4), eps=0.1), TYPE, ("y", "integer")),
    Case("pgd: integer images", "batch",
         lambda c: qviz.robustness.pgd(c.digits, (c.images[:4] * 16).long(), torch.zeros(4, dtype=torch.long), eps=0.1),
         TYPE, ("x must be a floating-point", "int64")),
    Case("success_rate: labels of another length", "batch",
         lambda c: qviz.robustness.success_rate(c.digits, c.images[:4], c.images[:4], torch.zeros(5, dtype=torch.long)),
         VALUE, ("(5,)", "(4,)")),
    Case("empty list", "batch", lambda c: qviz.capture(c.llama, [], progress=False), VALUE, ("empty", "calibration_data")),
    Case("empty tensor", "batch", lambda c: qviz.capture(c.net, torch.empty(0, 8), progress=False), VALUE, ("empty", "0 rows")),
    Case("empty dict", "batch",
         lambda c: qviz.capture(c.llama, {"input_ids": torch.empty(0, 3, dtype=torch.long)}, progress=False), VALUE, ("empty",)),
    Case("a set as the batch", "batch", lambda c: qviz.capture(c.llama, {"a", "b"}, progress=False), TYPE,
         ("set", "no order", "list of strings")),
    Case("bytes as the batch", "batch", lambda c: qviz.capture(c.net, b"\x00\x01", progress=False), TYPE, ("bytes",)),
    Case("calib=None for GPTQ", "batch",
         lambda c: qviz.quantize(c.net, G(group_size=None), progress=False), VALUE, ("calibration inputs", "calibration_data")),
    Case("calib=[] for layer_error", "batch", lambda c: qviz.layer_error(c.net, R(), calib=[]), VALUE, ("empty",)),
    Case("an int as the batch", "batch", lambda c: qviz.capture(c.net, 5, progress=False), TYPE, ("int", "DataLoader")),
    Case("a list of ints", "batch", lambda c: qviz.capture(c.net, [1, 2, 3], progress=False), TYPE, ("int",)),

    # ---- class 6: clear messages of the right type
    Case("a used-up generator", "message", lambda c: qviz.capture(c.net, _used_generator(c), progress=False), VALUE,
         ("generator", "read only once", "make a new generator")),
    Case("an empty generator", "message", lambda c: qviz.capture(c.net, _gen([]), progress=False), VALUE,
         ("yielded nothing",)),
    Case("open_dataset on a text file", "message", lambda c: qviz.open_dataset(c.not_nc), VALUE,
         ("not.nc", "not a netCDF file", "qviz.save")),
    Case("open_dataset on a folder", "message", lambda c: qviz.open_dataset(c.tmp), VALUE, ("is a directory", ".nc")),
    Case("open_dataset on a missing file", "message", lambda c: qviz.open_dataset(c.tmp / "nope.nc"), (FileNotFoundError,),
         ("nope.nc",)),
    Case("corrupt JSON attribute", "message", lambda c: qviz.open_dataset(c.bad_json), VALUE,
         ("'config'", "corrupt", "qviz.save")),
    Case("save to .csv", "message", lambda c: qviz.save(c.cmp, c.tmp / "x.csv"), VALUE, ("'.nc'", "x.csv")),
    Case("save a DataArray", "message", lambda c: qviz.save(c.cmp.accuracy, c.tmp / "x.nc"), TYPE, ("Dataset", "DataArray")),
    Case("load a folder of pickled weights", "message", lambda c: qviz.load(c.pickle_folder), VALUE,
         ("Refused", "pickle", "safetensors")),
    Case("load an unknown name", "message", lambda c: qviz.load("minilmm"), VALUE, ("'minilmm'", "Did you mean", "minilm")),
    Case("load a number", "message", lambda c: qviz.load(42), TYPE, ("int", "Known names")),
    Case("unknown layer name", "message", lambda c: qviz.quantize(c.digits, R(group_size=None), layers="fc3", progress=False),
         VALUE, ("'fc3'", "Did you mean", "layer_names")),
    Case("layer glob matching nothing", "message", lambda c: qviz.capture(c.digits, c.images, layers="enc*", progress=False),
         VALUE, ("'enc*'", "matches no layer")),
    Case("layers=[]", "message", lambda c: qviz.layer_error(c.net, R(), calib=c.x, layers=[]), VALUE, ("layers=[]",)),
    Case("layers=5", "message", lambda c: qviz.capture(c.net, c.x, layers=5, progress=False), TYPE, ("layers", "int")),
    Case("sample= an unknown layer", "message", lambda c: qviz.capture(c.net, c.x, sample="9", progress=False), VALUE,
         ("sample=", "'9'")),
    Case("quantize_tensor with GPTQ", "message", lambda c: qviz.quantize_tensor(torch.randn(4, 8), G()), TYPE,
         ("calibration inputs", "qviz.quantize(model, cfg, calib=batch)")),
    Case("fake_quantize a list", "message", lambda c: qviz.fake_quantize([[1.0, 2.0]], R()), TYPE, ("list", "layer.weight")),
    Case("fake_quantize an int tensor", "message", lambda c: qviz.fake_quantize(torch.ones(4, 8, dtype=torch.int32), R()),
         TYPE, ("int32", "floating-point")),
    Case("calibration_data n=0", "message", lambda c: qviz.calibration_data(c.digits, n=0), VALUE, ("n must be", "0")),
    Case("calibration_data n too large", "message", lambda c: qviz.calibration_data(c.digits, n=10**6), VALUE,
         ("1000000", "Pass n <=")),
    Case("calibration_data of a plain module", "message", lambda c: qviz.calibration_data(qviz.load(c.net)), VALUE,
         ("no default calibration data", "Pass your own")),
    Case("hooks with a non-callable", "message", lambda c: qviz.hooks(c.net, "print").__enter__(), TYPE, ("fn", "callable")),
    Case("project_size with a string", "message", lambda c: qviz.project_size("7B", R()), EITHER, ("'7B'",)),

    # ---- the command line (qviz report ...), through cli.main: exit status 2 and the message
    Case("cli --out is a directory", "cli", _cli(["report", "--model", "digits-cnn", "--out", "{out_dir}", "--quiet"]),
         VALUE, ("exit status 2", "is a directory")),
    Case("cli --out read-only", "cli", _cli(["report", "--model", "digits-cnn", "--out", "{readonly}/r.html", "--quiet"]),
         VALUE, ("cannot be written", "Nothing was run")),
    Case("cli --out .txt", "cli", _cli(["report", "--model", "digits-cnn", "--out", "{tmp}/r.txt", "--quiet"]), VALUE,
         (".html", "r.txt")),
    Case("cli unknown model", "cli", _cli(["report", "--model", "resnet9000", "--out", "{tmp}/r.html", "--quiet"]), VALUE,
         ("'resnet9000'", "Known offline models")),
    Case("cli unknown section", "cli",
         _cli(["report", "--model", "digits-cnn", "--out", "{tmp}/r.html", "--sections", "quantt", "--quiet"]), VALUE,
         ("'quantt'", "known sections")),
    Case("cli --n 0", "cli", _cli(["report", "--model", "digits-cnn", "--out", "{tmp}/r.html", "--n", "0", "--quiet"]),
         VALUE, ("n must be", "0")),
    Case("cli --n abc", "cli", _cli(["report", "--n", "abc"]), VALUE, ("exit status 2",)),
    Case("cli unknown command", "cli", _cli(["frobnicate"]), VALUE, ("exit status 2",)),

    # ---- the IPython extension
    Case("%qviz unknown command", "ipython", _magic("outlier --model net"), VALUE, ("'outlier'", "Did you mean", "outliers")),
    Case("%qviz --n 0", "ipython", _magic("explore --model net --n 0"), EITHER, ("--n", "0")),
    Case("%qviz --data missing", "ipython", _magic("outliers --model net --data nowhere"), VALUE,
         ("'nowhere'", "not a variable")),
    Case("%qviz --bits four", "ipython", _magic("explore --model net --data batch --bits four"), VALUE,
         ("--bits", "'four'")),
    Case("%qviz --threshold nan", "ipython", _magic("outliers --model net --data batch --threshold nan"), VALUE,
         ("threshold", "nan")),
    Case("%qviz --threshold -1", "ipython", _magic("outliers --model net --data batch --threshold -1"), VALUE,
         ("threshold", "-1")),
    Case("%qviz --method nope", "ipython", _magic("explore --model net --data batch --method nope"), VALUE,
         ("'nope'", "RTN")),
    Case("%qviz --layer nope", "ipython", _magic("explore --model net --data batch --layer nope"), VALUE,
         ("'nope'", "Pick one")),
    Case("%qviz --model a number variable", "ipython", _magic("outliers --model x --data batch"), TYPE, ("int",)),
    Case("%qviz report --out a directory", "ipython", _magic("report --model net --out {out_dir}"), VALUE,
         ("is a directory",)),
    Case("%qviz compare a missing variable", "ipython", _magic("compare nothing_here"), VALUE, ("'nothing_here'",)),
    Case("%qviz unclosed quote", "ipython", _magic('report --out "oops'), VALUE, ("No closing quotation",)),

    # ---- widgets: constructor arguments and control values
    Case("QuantExplorer method='nope'", "widget",
         lambda c: qviz.widgets.QuantExplorer(c.wide, c.xw, method="nope", debounce=0, background=False), VALUE,
         ("'nope'", "available")),
    Case("QuantExplorer layer='nope'", "widget",
         lambda c: qviz.widgets.QuantExplorer(c.wide, c.xw, layer="nope", debounce=0, background=False), VALUE,
         ("'nope'", "Pick one")),
    Case("QuantExplorer max_rows=0", "widget",
         lambda c: qviz.widgets.QuantExplorer(c.wide, c.xw, max_rows=0, debounce=0, background=False), VALUE,
         ("max_rows", "0")),
    Case("QuantExplorer debounce=-1", "widget",
         lambda c: qviz.widgets.QuantExplorer(c.wide, c.xw, debounce=-1, background=False), VALUE, ("debounce", "-1")),
    Case("QuantExplorer batch of the wrong width", "widget",
         lambda c: qviz.widgets.QuantExplorer(c.wide, torch.randn(4, 7), debounce=0, background=False).lab.inputs("0"),
         VALUE, ("[4, 7]", "64"), "wide"),
    Case("QuantExplorer layer control: unknown value", "widget",
         lambda c: setattr(c.explorer().layer_select, "value", "fc9"), VALUE, ("layer", "'fc9'", "choices")),
    Case("QuantExplorer method control: unknown value", "widget",
         lambda c: setattr(c.explorer().method_select, "value", "GPTQQ"), VALUE, ("method", "'GPTQQ'", "GPTQ")),
    Case("QuantExplorer metric control: unknown value", "widget",
         lambda c: setattr(c.explorer().metric_select, "value", "SQNR"), VALUE, ("bars show", "'SQNR'", "weight SQNR")),
    Case("QuantExplorer layer control: bad index", "widget",
         lambda c: setattr(c.explorer().layer_select, "index", 7), VALUE, ("index 7", "choices")),
    Case("QuantExplorer bits 12 (message)", "widget", _widget_message(lambda c: c.explorer(), "bits_box", 12), VALUE,
         ("bits", "12", "from 2 to 8")),
    Case("QuantExplorer group size 5 (message)", "widget", _widget_message(lambda c: c.explorer(), "group_box", "5"),
         VALUE, ("group size 5", "does not divide")),
    Case("QuantExplorer group size 'abc' (message)", "widget", _widget_message(lambda c: c.explorer(), "group_box", "abc"),
         VALUE, ("'abc'",)),
    Case("QuantExplorer negative threshold (message)", "widget",
         _widget_message(lambda c: _with_method(c.explorer(), "int8"), "threshold_box", -2.0), VALUE, ("threshold", "-2")),
    Case("OutlierExplorer layer control: unknown value", "widget",
         lambda c: setattr(c.outliers().layer_select, "value", "nope"), VALUE, ("layer", "'nope'", "choices")),
    Case("OutlierExplorer statistic control: unknown value", "widget",
         lambda c: setattr(c.outliers().var_select, "value", "median"), VALUE, ("statistic", "'median'", "absmax")),
    Case("OutlierExplorer threshold=-1", "widget",
         lambda c: qviz.widgets.OutlierExplorer(c.wide, c.xw, threshold=-1), VALUE, ("threshold", "-1")),
    Case("OutlierExplorer max_channels=0", "widget",
         lambda c: qviz.widgets.OutlierExplorer(c.wide, c.xw, max_channels=0), VALUE, ("max_channels", "0")),
    Case("OutlierExplorer without a batch", "widget", lambda c: qviz.widgets.OutlierExplorer(c.wide), VALUE,
         ("needs a model and a calibration batch",)),
    Case("OutlierExplorer stats= not a Dataset", "widget", lambda c: qviz.widgets.OutlierExplorer(stats={"a": 1}), EITHER,
         ("stats",)),
    Case("CompareDashboard of a dict", "widget", lambda c: qviz.widgets.CompareDashboard({"accuracy": 1}), EITHER,
         ("Dataset",)),
    Case("CompareDashboard x='nope'", "widget", lambda c: qviz.widgets.CompareDashboard(c.cmp, x="nope"), VALUE,
         ("x='nope'", "Variables")),
    Case("CompareDashboard x control: unknown value", "widget",
         lambda c: setattr(qviz.widgets.CompareDashboard(c.cmp).x_select, "value", "latency"), VALUE,
         ("x (cost)", "'latency'", "choices")),
]


def _with_method(ex: Any, label: str) -> Any:
    ex.method_select.value = next(m for m in ex.method_select.options if label.lower() in m.lower())
    ex.flush()
    return ex


CASES = _config_cases() + TABLE


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = t.detach().cpu().contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def _n_hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _check(case: Case, ctx: Any) -> None:
    model = getattr(ctx, case.model) if case.model else None
    module = as_module(model) if model is not None else None
    before = (_digest(module), module.training) if module is not None else None
    with pytest.raises(Exception) as info:
        case.call(ctx)
    err = info.value
    assert not isinstance(err, FORBIDDEN) or isinstance(err, case.raises), (
        f"{type(err).__name__} is not a clear error: {err}")
    assert isinstance(err, case.raises), f"expected {[t.__name__ for t in case.raises]}, got {type(err).__name__}: {err}"
    text = str(err)
    missing = [f for f in case.fragments if f.lower() not in text.lower()]
    assert not missing, f"the message lacks {missing}: {text}"
    if module is not None:
        assert (_digest(module), module.training) == before, "the model changed"
        assert _n_hooks(module) == 0, "a hook was left behind"


CONFIG_CASES = [c for c in CASES if c.cls == "config"]
OTHER_CASES = [c for c in CASES if c.cls != "config"]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_config_field(case: Case) -> None:
    _check(case, None)


@pytest.mark.parametrize("case", OTHER_CASES, ids=[f"{c.cls}:{c.id}" for c in OTHER_CASES])
def test_bad_input(case: Case, ctx: Ctx) -> None:
    _check(case, ctx)


def test_catalogue_covers_every_class_and_config_type(capsys) -> None:
    by_class = Counter(c.cls for c in CASES)
    with capsys.disabled():
        print("\nbad-input catalogue:", len(CASES), "cases;",
              ", ".join(f"{k} {by_class[k]}" for k in CLASSES))
    assert set(by_class) == set(CLASSES)
    assert len(CASES) >= 150
    assert len({(c.cls, c.id) for c in CASES}) == len(CASES), "case ids must be distinct"
    covered = {c.id.split(".")[0] for c in CASES if c.cls == "config"}
    assert covered == {t.__name__ for t in known_config_types()}, "every registered config type has generated cases"


def test_type_annotations_of_every_config_are_checkable() -> None:
    """A config field whose annotation cannot be read is not type-checked: none may be silently unchecked."""
    unchecked = [f"{t.__name__}.{name}" for t in known_config_types() for name, allowed in _field_types(t).items()
                 if allowed is None and typing.get_type_hints(t).get(name) is not Any]
    assert not unchecked, f"fields left unchecked (annotate them with plain types): {unchecked}"
