"""`import qviz` stays light: heavy libraries load on first use (STYLE rule 7)."""

import subprocess
import sys

HEAVY = ["torch", "numba", "bitsandbytes", "plotly", "ipywidgets", "anywidget", "transformers", "xarray", "sklearn"]


def test_import_qviz_loads_no_heavy_library():
    code = (
        "import sys, qviz; "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import qviz pulled in: {out.stdout.strip()}"


def test_public_names_resolve():
    import qviz

    for name in ["load", "calibration_data", "capture", "hooks", "RTN", "BnbNF4", "GPTQ", "outlier_summary"]:
        assert name in qviz.__all__
        assert getattr(qviz, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    import qviz

    try:
        qviz.not_a_thing  # noqa: B018
    except AttributeError as err:
        assert "not_a_thing" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")
