"""Offline calibration and evaluation data."""

import pytest
import torch

import qviz
from qviz import _corpus


def test_corpus_is_real_prose_and_split_is_disjoint():
    sentences = _corpus.sentences()
    assert len(sentences) > 1000
    assert len(set(sentences)) == len(sentences)
    calib, held = set(_corpus.split("calib")), set(_corpus.split("eval"))
    assert calib.isdisjoint(held) and len(held) > 300
    assert all(s[0].isupper() and s.endswith((".", "!", "?")) for s in sentences)
    assert _corpus.split("calib") == _corpus.split("calib")  # stable order


def test_corpus_does_not_depend_on_what_the_process_imported_before():
    """transformers and others patch standard-library objects; the corpus must not see it."""
    import subprocess
    import sys

    probe = ("import sys; [__import__(m) for m in sys.argv[1:]]; from qviz import _corpus; "
             "import hashlib; print(hashlib.sha256('\\n'.join(_corpus.sentences()).encode()).hexdigest())")
    fresh = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = subprocess.run([sys.executable, "-c", probe, "transformers", "torch", "email.message", "unittest.mock"],
                            capture_output=True, text=True, check=True).stdout
    assert fresh == loaded and fresh.strip()
    import hashlib

    here = hashlib.sha256("\n".join(_corpus.sentences()).encode()).hexdigest()
    assert here == fresh.strip()  # and equal to this (pytest-patched) process's


def test_calibration_data_text_and_images(minilm, digits):
    text = qviz.calibration_data(minilm, n=10)
    assert len(text) == 10 and all(isinstance(t, str) for t in text)
    held, labels = qviz.eval_data(minilm, n=5)
    assert labels is None and not set(held) & set(qviz.calibration_data(minilm, n=1000))
    images = qviz.calibration_data(digits, n=16)
    assert images.shape == (16, 1, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1
    x, y = qviz.eval_data(digits)
    assert len(x) == len(y) > 300


def test_digits_split_is_disjoint():
    from qviz.data import digits_split

    xtr, _ = digits_split("train")
    xte, _ = digits_split("test")
    flat_tr = {tuple(r.tolist()) for r in xtr.flatten(1)}
    overlap = sum(tuple(r.tolist()) in flat_tr for r in xte.flatten(1))
    assert overlap < 0.05 * len(xte)  # the digits set has a few duplicate images, nothing more
    with pytest.raises(ValueError, match="'train' or 'test'"):
        digits_split("validation")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_n(minilm, bad):
    with pytest.raises(ValueError, match="n must be a positive int"):
        qviz.calibration_data(minilm, n=bad)


def test_too_many(digits):
    with pytest.raises(ValueError, match="more than the"):
        qviz.calibration_data(digits, n=10**6)


def test_user_module_has_no_default_data():
    with pytest.raises(ValueError, match="Pass your own inputs"):
        qviz.calibration_data(qviz.load(torch.nn.Linear(2, 2)))
