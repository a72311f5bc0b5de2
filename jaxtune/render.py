"""Markdown and HTML from one list of blocks: the report is written once, rendered twice.

A block is a tuple:

* ``("h", level, text)``: a heading;
* ``("p", text)`` and ``("note", text)``: a paragraph, a side remark;
* ``("warnings", [text, ...])``: a highlighted list;
* ``("table", header, rows)``: a table (cells are formatted strings);
* ``("figure", figure)``: a figure with ``key``, ``title``, ``caption`` and ``png`` (bytes);
* ``("code", text)``: a shell command.

Text may hold `code` spans. Markdown links figures as files
(``<fig_dir>/<key>.png``); HTML embeds them as base64 ``data:`` URIs, so the
page stands alone.

Example:
    >>> blocks = [("h", 2, "Study `a`"), ("table", ["k", "v"], [["lr", "0.1"]])]
    >>> print(markdown(blocks, "figures"))
    ## Study `a`
    <BLANKLINE>
    | k | v |
    | --- | --- |
    | lr | 0.1 |
    <BLANKLINE>
    >>> html(blocks[:1])
    '<h2>Study <code>a</code></h2>'
"""

from __future__ import annotations

import base64
import html as _html
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["CSS", "html", "markdown", "page"]

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #4c72b0; padding-bottom: .2em;
     margin-top: 2em; } h3 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; word-break: break-all; background: #f4f4f4; padding: .5em; }
code { background: #f4f4f4; padding: 0 .25em; border-radius: 3px; font-size: 12.5px;
       word-break: break-all; }
ul.warnings { background: #fff4e5; border-left: 4px solid #dd8452; padding: .6em 1.6em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } p.note { color: #777; font-size: 13px; }
"""


def markdown(blocks: Sequence[tuple], fig_dir: str) -> str:
    """The blocks as Markdown; figures link to ``<fig_dir>/<key>.png``."""
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind in ("p", "note"):
            out.append(b[1] if kind == "p" else f"*{b[1]}*")
        elif kind == "warnings":
            out.append("\n".join(f"- ⚠ {w}" for w in b[1]))
        elif kind == "table":
            out.append("\n".join(["| " + " | ".join(map(str, b[1])) + " |",
                                  "|" + " --- |" * len(b[1])] +
                                 ["| " + " | ".join(str(c).replace("|", "\\|") for c in row)
                                  + " |" for row in b[2]]))
        elif kind == "figure":
            out.append(f"![{b[1].title}]({fig_dir}/{b[1].key}.png)\n\n"
                       f"*{b[1].title}: {b[1].caption}.*")
        elif kind == "code":
            out.append(f"```bash\n{b[1]}\n```")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escapes text for HTML, turning `code` spans into <code>."""
    parts = str(text).split("`")
    return "".join(f"<code>{_html.escape(p)}</code>" if i % 2 else _html.escape(p)
                   for i, p in enumerate(parts))


def html(blocks: Sequence[tuple]) -> str:
    """The blocks as an HTML fragment; figures embedded as base64 PNG."""
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif kind in ("p", "note"):
            out.append(f'<p class="{kind}">{_inline(b[1])}</p>')
        elif kind == "warnings":
            out.append('<ul class="warnings">' + "".join(f"<li>⚠ {_inline(w)}</li>"
                                                          for w in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(b[1].png).decode("ascii")
            out.append(f'<figure id="{b[1].key}"><img src="data:image/png;base64,{data}" '
                       f'alt="{_html.escape(b[1].title)}"><figcaption><b>'
                       f"{_html.escape(b[1].title)}</b>: {_inline(b[1].caption)}."
                       "</figcaption></figure>")
        elif kind == "code":
            out.append(f"<pre><code>{_html.escape(b[1])}</code></pre>")
    return "\n".join(out)


def _cell(value: Any) -> str:
    text = str(value)
    numeric = re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?%?", text) is not None
    return f'<td class="num">{_inline(text)}</td>' if numeric else f"<td>{_inline(text)}</td>"


def page(title: str, header: str, body: str) -> str:
    """A complete, self-contained HTML page."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{_html.escape(title)}</h1><p>{_html.escape(header)}</p>\n{body}\n"
            "</body></html>\n")
