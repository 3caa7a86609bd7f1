"""Small formatting helpers shared by the HTML report, the model cards and the task kinds' sections."""

from __future__ import annotations

import html
import math
from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` decimals for a float, ``–`` for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table (every cell escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_figure(b64: str, alt: str) -> str:
    """A base64 PNG as an inline figure with ``alt`` as its caption."""
    caption = html.escape(alt)
    return f'<figure><img alt="{caption}" src="data:image/png;base64,{b64}"><figcaption>{caption}</figcaption></figure>'
