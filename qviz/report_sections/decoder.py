"""The decoder section of ``qviz report``: llama.cpp-style quality per config, answers side by side, massive activations.

Runs for decoders only (other models get no items). Reads the comparison the
compare section put in ``ctx["datasets"]["comparison"]`` (its decoder
variables and, for the prompts in :data:`PROMPTS`, each config's answers) and
measures the residual stream's massive activations on the calibration text.
Writes ``massive_activations`` into ``ctx["datasets"]``.
"""

from __future__ import annotations

import html
from typing import Any

from qviz.activations.massive import massive_activations
from qviz.models.gguf import reference_note
from qviz.report_sections._html import html_table

PROMPTS = ("What is the capital of France?", "Name three primary colours.", "What is 12 plus 7?")
"""Prompts every config answers in the report (greedy)."""

MAX_NEW_TOKENS = 24


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x != x else f"{x:.{digits}g}"


def metrics_html(cmp: Any) -> str:
    """One row per config: ppl ± stderr, ΔPPL %, mean KL, KL p99, KL max, Δp mean / p01, same-top-1, bits/weight, size."""
    def v(name: str, c: Any) -> float:
        return float(cmp[name].sel(config=c)) if name in cmp else float("nan")

    rows = [
        [html.escape(str(c)), f"{_fmt(v('perplexity', c), 5)} ± {_fmt(v('perplexity_stderr', c), 2)}",
         f"{v('delta_perplexity_pct', c):+.2f}", _fmt(v("kl_divergence", c)), _fmt(v("kl_divergence_p99", c)),
         _fmt(v("kl_divergence_max", c)), f"{100 * v('delta_p_mean', c):+.2f}", f"{100 * v('delta_p_p01', c):+.2f}",
         f"{100 * v('agreement', c):.2f}", _fmt(v("bits_per_weight", c), 3), _fmt(v("size_bytes", c) / 1e6, 4)]
        for c in cmp.config.values
    ]
    header = ["config", "perplexity ± stderr", "ΔPPL [%]", "mean KL [nat]", "KL p99", "KL max", "mean Δp [%]",
              "Δp p01 [%]", "same top-1 [%]", "bits/weight", "size [MB]"]
    return html_table(rows, header)


def answers_html(cmp: Any) -> str:
    """Each prompt's answer per config; the token where an answer first leaves full precision's is marked."""
    import json

    rows = []
    for c in cmp.config.values:
        cells = [html.escape(str(c))]
        for p in cmp.prompt.values:
            tokens = json.loads(str(cmp.answer_tokens.sel(config=c, prompt=p).item()))
            div = int(cmp.first_divergence.sel(config=c, prompt=p))
            text = html.escape(str(cmp.answer.sel(config=c, prompt=p).item()))
            if div >= 0 and div < len(tokens):
                text += f'<br><small>first differs at token {div}: <mark>{html.escape(tokens[div])}</mark></small>'
            cells.append(text)
        rows.append(cells)
    return html_table(rows, ["config", *[str(p) for p in cmp.prompt.values]])


def massive_html(ds: Any) -> str:
    """Per block: the largest channel, its |x|, the token it sits on, and the max/median channel ratio."""
    rows = [
        [str(int(b)), str(int(ds.channel.sel(block=b, rank=0))), _fmt(float(ds.absmax.sel(block=b, rank=0)), 5),
         str(int(ds.token_position.sel(block=b, rank=0))), html.escape(str(ds.token.sel(block=b, rank=0).item())),
         _fmt(float(ds.ratio.sel(block=b)), 4)]
        for b in ds.block.values
    ]
    return html_table(rows, ["block input", "top channel", "max |x|", "token position", "token", "max / median channel"])


def section(model: Any, calib: Any, ctx: dict[str, Any]) -> list[tuple[str, Any]]:
    """Items for a decoder; [] for other models.

    Examples
    --------
    >>> import qviz
    >>> m = qviz.load("tiny-llama")
    >>> section(qviz.load("digits-cnn"), None, {"datasets": {}})      # doctest: +SKIP
    []
    """
    if model.kind != "decoder":
        return []
    items: list[tuple[str, Any]] = []
    note = html.escape(reference_note(model), quote=False)
    extra = ""
    if model.gguf_types:
        extra = (" Every number below compares a config with these dequantized weights, not with the original bf16 "
                 "checkpoint: a 4-bit config re-quantizes weights that were already 4-bit, so its error here is the "
                 "error added on top of the GGUF's own, and a format on the GGUF's grid can come out nearly lossless.")
    items.append(("Reference", f"<p><b>{note}</b>.{html.escape(extra, quote=False)}</p>"))
    cmp = ctx["datasets"].get("comparison")
    if cmp is not None and "perplexity" in cmp:
        n = int(cmp.n_scored_tokens.sel(config="fp32")) if "n_scored_tokens" in cmp else 0
        items.append(("Quality per config (llama.cpp perplexity --kl-divergence statistics)",
                      f"<p>{n:,} held-out tokens scored (second half of each chunk). {note}.</p>" + metrics_html(cmp)))
        if "answer" in cmp:
            items.append(("Answers side by side (greedy)", answers_html(cmp)))
    ds = massive_activations(model, calib)
    ctx["datasets"]["massive_activations"] = ds
    items.append(("Massive activations of the residual stream", massive_html(ds)))
    return items
