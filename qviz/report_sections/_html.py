"""HTML pieces the report sections share."""

from __future__ import annotations

import html

__all__ = ["html_table"]


def html_table(rows: list[list[str]], header: list[str]) -> str:
    """An HTML table of already-escaped cells under an escaped ``header``.

    Examples
    --------
    >>> html_table([["1"]], ["a<b"])
    '<table class="qv"><tr><th>a&lt;b</th></tr><tr><td>1</td></tr></table>'
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="qv"><tr>{head}</tr>{body}</table>'
