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


# --------------------------------------------------------------------------- decoder token batches


def test_decoder_text_is_disjoint_and_deterministic():
    from qviz import data

    calib, held_out = data._decoder_text("calib"), data._decoder_text("eval")
    assert not set(calib) & set(held_out)
    assert data._decoder_text("eval") == held_out and len(held_out) > len(calib) // 2


def test_token_batches_cut_one_stream(tiny_text_decoder):
    from qviz.data import token_batches

    b = token_batches(tiny_text_decoder, ["abcdefghij", "klmnop"], seq_len=5)
    ids = b["input_ids"]
    assert ids.shape == (4, 5) and bool(b["attention_mask"].all())
    assert (ids[:, 0] == 256).all()  # BOS first
    assert bytes(ids[:, 1:].flatten().tolist()) == b"abcdefghij klmnop"[:16]
    assert token_batches(tiny_text_decoder, "hi", seq_len=64)["input_ids"].shape == (1, 3)  # shorter than one chunk


@pytest.mark.parametrize(
    ("texts", "seq_len", "n", "err", "match"),
    [
        ([], 8, None, TypeError, "non-empty list of strings"),
        ([1, 2], 8, None, TypeError, "non-empty list of strings"),
        (["some text"], 1, None, ValueError, "seq_len must be an int >= 2"),
        (["some text"], 4, 99, ValueError, "more than the"),
        ([""], 4, None, ValueError, "pass more text"),
    ],
)
def test_token_batches_bad_input(tiny_text_decoder, texts, seq_len, n, err, match):
    from qviz.data import token_batches

    with pytest.raises(err, match=match):
        token_batches(tiny_text_decoder, texts, seq_len=seq_len, n=n)


def test_pretrained_decoders_get_token_batches(tiny_text_decoder):
    calib = qviz.calibration_data(tiny_text_decoder, n=3, seq_len=16)
    held_out, labels = qviz.eval_data(tiny_text_decoder, n=2, seq_len=16)
    assert calib["input_ids"].shape == (3, 16) and held_out["input_ids"].shape == (2, 16) and labels is None
    mine = qviz.calibration_data(tiny_text_decoder, n=1, texts=["my own words " * 5], seq_len=8)
    assert bytes(mine["input_ids"][0, 1:].tolist()) == b"my own "
    with pytest.raises(ValueError, match="texts= is for pretrained decoders"):
        qviz.calibration_data(qviz.load("tiny-llama"), n=2, texts=["x"])


@pytest.fixture(scope="module")
def tiny_text_decoder():
    """tiny-llama's module and byte tokenizer, presented as a pretrained decoder (the token-batch path)."""
    tiny = qviz.load("tiny-llama")
    return qviz.QvizModel(tiny.module, "tiny-as-pretrained", "decoder", tiny.tokenizer)
