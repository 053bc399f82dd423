"""The registry: lookups, registration, what every built-in method declares, and the import direction."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import qviz
from qviz.quant.method import CONTROL_NAMES, Controls, FormatBits, Method, menu
from qviz.quant.registry import config_from_json, known_config_types, method_for, register, unregister

ROOT = Path(qviz.__file__).parent

EXAMPLES = [
    qviz.RTN(bits=4, group_size=64), qviz.RTN(bits=8, group_size=None, symmetric=True, act_bits=8),
    qviz.BnbInt8(), qviz.BnbNF4(blocksize=64), qviz.BnbFP4(double_quant=True), qviz.SmoothQuant(), qviz.AWQ(),
    qviz.GPTQ(bits=3, group_size=64), qviz.QAT(bits=4), qviz.GGUF("Q4_K"), qviz.GGUF("Q8_0"), qviz.FP8(),
    qviz.MXFP4(), qviz.MXFP6(), qviz.MXFP8(), qviz.NVFP4(), qviz.HQQ(bits=4, group_size=64),
    qviz.Rotated(qviz.GPTQ(bits=4)), qviz.PerLayer({"*.0": qviz.RTN(bits=8)}, default=qviz.RTN(bits=4, group_size=64)),
]


def built_in_types() -> set[type]:
    """The registered config types qviz ships (other tests register their own)."""
    return {t for t in known_config_types() if t.__module__.startswith("qviz.")}


def test_every_built_in_config_type_has_an_example():
    assert {type(c) for c in EXAMPLES} == built_in_types()


def test_method_for_unknown_lists_the_known_ones():
    with pytest.raises(TypeError, match=r"Known configs: .*RTN") as err:
        method_for("rtn4")
    assert "str" in str(err.value)
    with pytest.raises(TypeError, match="not the class"):
        method_for(qviz.RTN)


def test_register_and_unregister_check_their_arguments():
    with pytest.raises(TypeError, match="QuantConfig subclass"):
        register(int)

    @dataclass(frozen=True)
    class Tmp(qviz.QuantConfig):
        label = "tmp"

    with pytest.raises(TypeError, match="Method subclass"):
        register(Tmp)(object)
    with pytest.raises(KeyError, match="'Tmp' has no registered method"):
        unregister(Tmp)
    register(Tmp)(Method)
    try:
        assert type(method_for(Tmp())) is Method and Tmp in known_config_types()
    finally:
        unregister(Tmp)
    assert Tmp not in known_config_types()


@pytest.mark.parametrize("cfg", EXAMPLES, ids=lambda c: c.label)
def test_format_bits_and_json(cfg):
    assert config_from_json(cfg.to_json()) == cfg
    if isinstance(cfg, qviz.PerLayer):  # a mix of formats has no one storage format
        with pytest.raises(TypeError, match="storage format of PerLayer"):
            qviz.evaluate.size.format_bits(cfg)
        return
    f = qviz.evaluate.size.format_bits(cfg, row_length=4096)
    assert isinstance(f, FormatBits) and f.label == cfg.label and f.code_bits > 0 and f.overhead_bits >= 0


@pytest.mark.parametrize("cfg", [c for c in EXAMPLES if method_for(c).data_free or method_for(c).storage_nbytes(
    (64, 256), c) is not None], ids=lambda c: c.label)  # every data-free method declares its storage
def test_storage_nbytes_is_what_quantize_tensor_stores(cfg):
    w = torch.randn(64, 256)
    assert method_for(cfg).storage_nbytes((64, 256), cfg) == qviz.quantize_tensor(w, cfg).nbytes


def test_what_the_methods_declare_about_the_model():
    changes = {c.label: method_for(c).changes_model(c) for c in EXAMPLES}
    assert {k for k, v in changes.items() if v} == {"SmoothQuant a0.5 w8a8/tensor", "AWQ w4 g128",
                                                    "Rot+GPTQ w4 g128 act"}
    weight_only = {c.label for c in EXAMPLES if method_for(c).weight_only(c)}
    assert "RTN w4 g64 asym" in weight_only and "GPTQ w3 g64 act" in weight_only
    assert not {"RTN w8 ch sym a8/token", "bnb int8 t6.0", "SmoothQuant a0.5 w8a8/tensor"} & weight_only
    assert [c.label for c in EXAMPLES if method_for(c).packs(c)] == ["RTN w4 g64 asym"]
    assert not method_for(qviz.RTN()).has_prepare and method_for(qviz.GPTQ()).has_prepare
    assert method_for(qviz.QAT()).has_finalize and not method_for(qviz.BnbNF4()).has_finalize


def test_menu_methods_build_their_configs_from_controls():
    methods = menu()
    assert list(methods)[:7] == ["RTN", "NF4", "FP4", "Int8", "SmoothQuant", "AWQ", "GPTQ"]
    for name, method in methods.items():
        assert set(method.controls) <= set(CONTROL_NAMES), name
        cfg = method.config_from_controls(Controls(bits=4, group_size=64))
        assert type(cfg) is method.config_type, name
    assert methods["NF4"].config_from_controls(Controls(group_size=None)) == qviz.BnbNF4(blocksize=64)
    with pytest.raises(ValueError, match="not 'tensor'"):
        methods["GPTQ"].config_from_controls(Controls(group_size="tensor"))
    with pytest.raises(TypeError, match="no explorer controls"):
        method_for(qviz.QAT()).config_from_controls(Controls())


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


METHOD_MODULES = ["quant/rtn.py", "quant/bnb.py", "quant/fp.py", "quant/gguf.py", "quant/hqq.py",
                  "quant/per_layer.py", "quant/rotate.py", "quant/methods/gptq.py",
                  "quant/methods/awq.py", "quant/methods/smoothquant.py", "quant/methods/qat.py"]


def test_configs_at_the_bottom_then_the_method_table_then_the_methods():
    assert not {m for m in _imports(ROOT / "quant/config.py") if m.startswith("qviz.quant.") and
                m not in ("qviz.quant.granularity", "qviz.quant.primitives")}
    assert {m for m in _imports(ROOT / "quant/method.py") if m.startswith("qviz")} == {"qviz.quant.config"}
    for rel in METHOD_MODULES:
        got = _imports(ROOT / rel)
        assert "qviz.quant.registry" not in got, rel
        assert not {m for m in got if m.startswith(("qviz.evaluate", "qviz.widgets", "qviz.measure.error"))}, rel


def test_no_isinstance_on_a_config_type_outside_its_method_module():
    names = {t.__name__: t for t in built_in_types()} | {"_Bnb4bit": qviz.quant.config._Bnb4bit}
    own = {n: {t.__module__, type(method_for(t.__new__(t))).__module__} if n != "_Bnb4bit" else {"qviz.quant.bnb"}
           for n, t in names.items()}
    # still to move onto the methods (their files are being restructured by others in this round):
    # limits' fused RTN error pass (one kernel gives codes, scales and the error together)
    pending = {("qviz.measure.limits", "RTN")}
    bad = []
    for path in ROOT.rglob("*.py"):
        module = "qviz." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for m in re.finditer(r"isinstance\([^,]+,\s*\(?([\w., ]+)\)?\)", path.read_text()):
            for name in (n.strip().split(".")[-1] for n in m.group(1).split(",")):
                if name in names and module not in own[name] and (module, name) not in pending:
                    bad.append(f"{module}: isinstance(..., {name})")
    assert not bad, bad
