"""qviz.generate: greedy answers, validation, first divergence."""

from __future__ import annotations

import pytest

import qviz
from qviz.generation import Answer, first_divergence


@pytest.fixture(scope="module")
def tiny():
    return qviz.load("tiny-llama")


def test_greedy_is_deterministic(tiny):
    a = qviz.generate(tiny, ["Hello", "Another prompt"], max_new_tokens=5)
    b = qviz.generate(tiny, ["Hello", "Another prompt"], max_new_tokens=5)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert all(isinstance(x, Answer) and 1 <= len(x.token_ids) <= 5 for x in a)
    assert a[0].prompt == "Hello" and len(a[0].tokens) == len(a[0].token_ids)


def test_answers_match_argmax_of_a_full_forward(tiny):
    """Token by token, the answer is the argmax of the whole-sequence forward (no cache shortcut changes it)."""
    import torch

    ans = qviz.generate(tiny, ["Hi"], max_new_tokens=4)[0]
    ids = [tiny.tokenizer.bos_id, *b"Hi"]
    for t in ans.token_ids:
        logits = tiny.run({"input_ids": torch.tensor([ids])})
        assert int(logits[0, -1].argmax()) == t
        ids.append(t)


@pytest.mark.parametrize(
    ("prompts", "n", "err", "match"),
    [
        ([], 4, ValueError, "prompts is empty"),
        ("one string", 4, TypeError, "not one string"),
        (["ok", 3], 4, TypeError, r"prompts\[1\] is a int"),
        (None, 4, TypeError, "must be a list of strings"),
        (["ok"], 0, ValueError, "max_new_tokens must be a positive int"),
        (["ok"], -2, ValueError, "max_new_tokens must be a positive int"),
        (["ok"], 2.5, ValueError, "max_new_tokens must be a positive int"),
    ],
)
def test_bad_input(tiny, prompts, n, err, match):
    with pytest.raises(err, match=match):
        qviz.generate(tiny, prompts, max_new_tokens=n)


def test_not_a_decoder():
    import torch

    with pytest.raises(ValueError, match="needs a decoder"):
        qviz.generate(qviz.load(torch.nn.Linear(2, 2)), ["hi"])


def test_chat_without_template(tiny):
    with pytest.raises(ValueError, match="no chat template"):
        qviz.generate(tiny, ["hi"], chat=True)


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == -1
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence([], [4]) == 0
