"""The decoder section of the report, on the random-weight tiny-llama (fast)."""

from __future__ import annotations

import qviz
from qviz.evaluate.accuracy import PerplexityTask
from qviz.report_sections import decoder


def test_decoder_section_items():
    m = qviz.load("tiny-llama")
    cmp = qviz.compare(m, [qviz.RTN(bits=2, group_size=16)], task=PerplexityTask(texts=["Some words to score, " * 8], seq_len=32),
                       metrics=["accuracy", "size"], prompts=["Hi", "Why?"], max_new_tokens=4, progress=False)
    ctx = {"datasets": {"comparison": cmp}}
    items = dict(decoder.section(m, ["A sentence to read for the outliers."], ctx))
    assert "reference: the model's own float32 weights" in items["Reference"]
    table = items["Quality per config (llama.cpp perplexity --kl-divergence statistics)"]
    assert "RTN w2 g16 asym" in table and "same top-1" in table
    answers = items["Answers side by side (greedy)"]
    assert "Why?" in answers and answers.count("<tr>") == 3
    assert "top channel" in items["Massive activations of the residual stream"]
    assert set(ctx["datasets"]["massive_activations"].block.values) == {0, 1, 2}


def test_decoder_section_skips_other_models():
    assert decoder.section(qviz.load(__import__("torch").nn.Linear(2, 2)), None, {"datasets": {}}) == []
