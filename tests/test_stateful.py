"""The model is never harmed, and what qviz returns is stable, over random sequences of calls.

A hypothesis ``RuleBasedStateMachine`` loads one of digits-cnn, minilm and
tiny-llama, then drives a random sequence of capture, quantize, layer_error,
sensitivity, compare and QuantExplorer control changes. After every step it
checks that the original model is bit-identical (a hash of its state_dict),
carries no hook and keeps its train/eval mode, and that every quantized model
made so far gives identical outputs on repeated calls (against the output it
gave when it was made). The profile is deterministic (tests/conftest.py), the
run bounded (a few sequences of a few steps); the sequences and steps run are
printed.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import qviz

MODELS = ("digits-cnn", "minilm", "tiny-llama")
CONFIGS = (
    qviz.RTN(bits=4, group_size=None),
    qviz.RTN(bits=3, group_size=None, symmetric=True),
    qviz.RTN(bits=8, group_size=None, symmetric=True, act_bits=8),
    qviz.BnbInt8(),
    qviz.GPTQ(bits=4, group_size=None),
)
FIRST_LAYER = {"digits-cnn": "fc*", "minilm": "encoder.layer.0.attention.self.*", "tiny-llama": "model.layers.0.mlp.*"}
_CACHE: dict[str, object] = {}
RUN = {"sequences": 0, "steps": 0, "models": set()}


def _load(name: str):
    if name not in _CACHE:
        m = qviz.load(name)
        held_out, labels = qviz.eval_data(m, n=8)
        _CACHE[name] = (m, qviz.calibration_data(m, n=8), held_out if labels is None else (held_out, labels))
    return _CACHE[name]


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


class NeverHarmed(RuleBasedStateMachine):
    name = "digits-cnn"

    @initialize(training=st.booleans())
    def load(self, training: bool) -> None:
        name = self.name
        self.model, self.calib, self.eval = _load(name)
        self.model.module.train(training)  # the mode the user left it in must survive every call
        self.training = training
        self.digest = _digest(self.model.module)
        self.quantized: list[tuple[object, torch.Tensor]] = []
        self.explorer = None
        RUN["sequences"] += 1
        RUN["models"].add(name)

    def _probe(self, qm) -> torch.Tensor:
        return qm.outputs(self.calib[:4])

    @rule(n=st.integers(2, 8))
    def capture(self, n: int) -> None:
        stats = qviz.capture(self.model, self.calib[:n], progress=False)
        assert stats.sizes["layer"] > 0
        RUN["steps"] += 1

    @rule(cfg=st.sampled_from(CONFIGS))
    def quantize(self, cfg) -> None:
        layers = FIRST_LAYER[self.name] if cfg.method == "gptq" else None
        qm = qviz.quantize(self.model, cfg, calib=self.calib, layers=layers, progress=False)
        self.quantized.append((qm, self._probe(qm)))
        RUN["steps"] += 1

    @rule(cfg=st.sampled_from(CONFIGS[:4]))
    def layer_error(self, cfg) -> None:
        err = qviz.layer_error(self.model, cfg, calib=self.calib, layers=FIRST_LAYER[self.name])
        assert (err.output_rel_err.values >= 0).all()
        RUN["steps"] += 1

    @rule(cfg=st.sampled_from(CONFIGS[:2]))
    def sensitivity(self, cfg) -> None:
        qviz.sensitivity(self.model, [cfg], calib=self.calib, layers=FIRST_LAYER[self.name], eval_data=self.eval)
        RUN["steps"] += 1

    @rule(cfg=st.sampled_from(CONFIGS[:2]))
    def compare(self, cfg) -> None:
        cmp = qviz.compare(self.model, [cfg], metrics=["size"], progress=False)
        assert list(cmp.config.values)[0] == "fp32"
        RUN["steps"] += 1

    @rule(bits=st.integers(2, 8), symmetric=st.booleans())
    def widget(self, bits: int, symmetric: bool) -> None:
        if self.explorer is None:
            self.explorer = qviz.widgets.QuantExplorer(self.model, self.calib[:4], layers=FIRST_LAYER[self.name],
                                                       group_size=None, debounce=0, background=False)
        self.explorer.bits_box.value = bits
        self.explorer.symmetric_box.value = symmetric
        self.explorer.flush()
        assert self.explorer.last_error is None, self.explorer.last_error
        assert self.explorer.current.config.startswith(f"RTN w{bits} ")
        RUN["steps"] += 1

    @invariant()
    def original_is_untouched(self) -> None:
        if not hasattr(self, "model"):
            return
        module = self.model.module
        assert _digest(module) == self.digest, "the original model's weights changed"
        assert _hooks(module) == 0, "a hook was left on the original model"
        assert module.training == self.training, "the original model's train/eval mode changed"

    @invariant()
    def quantized_models_are_stable(self) -> None:
        for qm, first in getattr(self, "quantized", []):
            again = self._probe(qm)
            assert torch.equal(again, first), f"{qm.name} gives different outputs on a repeated call"
            assert _hooks(qm.module) == 0


SETTINGS = settings(max_examples=2, stateful_step_count=5, deadline=None,
                    phases=[Phase.explicit, Phase.generate, Phase.target],  # a failure is reported unshrunk: fast
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", MODELS)
def test_never_harmed(name: str, capsys) -> None:
    machine = type(f"NeverHarmed_{name.replace('-', '_')}", (NeverHarmed,), {"name": name})
    machine.TestCase.settings = SETTINGS
    before = dict(RUN, models=set(RUN["models"]))
    machine.TestCase("runTest").runTest()
    with capsys.disabled():
        print(f"\nstateful {name}: {RUN['sequences'] - before['sequences']} sequences, "
              f"{RUN['steps'] - before['steps']} steps")
    assert RUN["sequences"] - before["sequences"] >= 2 and RUN["steps"] > before["steps"]
