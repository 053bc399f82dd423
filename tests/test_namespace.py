"""Public names stay functions even after every submodule has been imported.

Importing a submodule binds its name on the parent package, so a module named
like a public function (``qviz/capture.py`` next to ``qviz.capture``) would
silently replace the function. This test imports everything, then checks.
"""

import importlib
import pkgutil
import types

import qviz


def _import_everything():
    for info in pkgutil.walk_packages(qviz.__path__, "qviz."):
        if info.name.startswith("qviz.widgets") or info.name == "qviz._ipython":
            continue  # UI modules import ipywidgets; they are checked in tests/widgets
        if info.name.startswith("qviz.gpu."):
            continue  # the Triton kernels import triton (CUDA machines); they are checked in tests/gpu
        importlib.import_module(info.name)


def test_public_functions_are_not_shadowed_by_modules():
    _import_everything()
    for name, module_name in qviz._LAZY.items():
        value = getattr(qviz, name)
        assert not isinstance(value, types.ModuleType), f"qviz.{name} is the module {value.__name__}"
        assert value is getattr(importlib.import_module(module_name), name)


def test_plot_figures_are_functions():
    _import_everything()
    names = dir(qviz.plot)
    assert {"outliers", "heatmap", "channel_profile", "token_map"} <= set(names)
    for name in names:
        assert callable(getattr(qviz.plot, name)) and not isinstance(getattr(qviz.plot, name), types.ModuleType), name
