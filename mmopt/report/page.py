"""One self-contained HTML page: styles, the charting library and the report's JSON inlined, so the
file opens from ``file://``, from a CI system's artifacts or in a mail, with no network.

A page is built from sections of tables, notes and charts. Every number or value a table shows
comes from the report's JSON through :meth:`Page.value`, which writes the JSON path and the exact
JSON value beside the formatted text (``data-key`` / ``data-value``): the page can be checked
against the JSON it was made from, and a reader can copy the exact number.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Iterable, Sequence

from mmopt import __version__

#: the data island holding the report's JSON (``document.getElementById(DATA_ID)``)
DATA_ID = "mmopt-report-data"

_STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg2: #f6f8fa; --ok: #1a7f37;
        --bad: #cf222e; --warn: #9a6700; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial,
       sans-serif; color: var(--fg); background: #fff; }
header { padding: 18px 28px 10px; border-bottom: 1px solid var(--line); background: var(--bg2); }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .sub { color: var(--muted); }
nav { margin-top: 8px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1280px; }
section { margin-top: 26px; }
h2 { font-size: 18px; font-weight: 600; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; font-weight: 600; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: var(--bg2); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { text-align: left; background: none; color: var(--muted); font-weight: normal; }
table.kv td.num { text-align: left; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              font-size: 12.5px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600;
         font-size: 12px; color: #fff; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); }
.badge.warn { background: var(--warn); } .badge.info { background: var(--muted); }
.note { margin: 6px 0; padding: 6px 10px; border-left: 3px solid var(--muted);
        background: var(--bg2); }
.note.warn { border-color: var(--warn); } .note.bad { border-color: var(--bad); }
.note.ok { border-color: var(--ok); }
.cols { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
.chart { margin: 8px 0 14px; border: 1px solid var(--line); border-radius: 6px; padding: 4px; }
details > summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
pre { background: var(--bg2); padding: 10px; overflow: auto; max-height: 480px; }
footer { color: var(--muted); padding: 12px 28px; border-top: 1px solid var(--line); }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def lookup(data, path: Sequence):
    """The value at ``path`` (keys and list indices) in ``data``; KeyError/IndexError if absent."""
    for step in path:
        data = data[step]
    return data


def fmt_number(value, spec: str = ".4g", scale: float = 1.0) -> str:
    """``value`` x ``scale`` formatted by ``spec``; JSON's "inf"/"nan" strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf", "-inf", "nan" (see mmopt.report.data.finite)
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    number = value * scale
    if isinstance(number, float) and not math.isfinite(number):
        return str(number)
    return format(number, spec)


class Cell:
    """A table cell: already-escaped HTML plus its attributes."""

    def __init__(self, inner: str, cls: str = "", attrs: str = ""):
        self.inner, self.cls, self.attrs = inner, cls, attrs

    def html(self, tag: str = "td") -> str:
        cls = f' class="{self.cls}"' if self.cls else ""
        return f"<{tag}{cls}{self.attrs}>{self.inner}</{tag}>"


def cell(content) -> Cell:
    """A cell of plain text (escaped), or ``content`` itself when it already is a :class:`Cell`."""
    return content if isinstance(content, Cell) else Cell(esc("" if content is None else content))


def badge(passed: bool | None, yes: str = "PASS", no: str = "FAIL", unknown: str = "n/a") -> Cell:
    if passed is None:
        return Cell(f'<span class="badge info">{esc(unknown)}</span>')
    kind = "ok" if passed else "bad"
    return Cell(f'<span class="badge {kind}">{esc(yes if passed else no)}</span>')


class Section:
    """A titled part of the page; its parts are HTML strings, added in order."""

    def __init__(self, page: Page, title: str, anchor: str):
        self.page, self.title, self.anchor = page, title, anchor
        self.parts: list[str] = []

    def html(self, text: str) -> Section:
        self.parts.append(text)
        return self

    def heading(self, text: str) -> Section:
        return self.html(f"<h3>{esc(text)}</h3>")

    def text(self, text: str) -> Section:
        return self.html(f"<p>{esc(text)}</p>")

    def note(self, text: str, level: str = "") -> Section:
        return self.html(f'<div class="note {esc(level)}">{esc(text)}</div>')

    def kv(self, rows: Iterable[tuple[str, object]]) -> Section:
        """A two-column table: label, value (a :class:`Cell` or text)."""
        body = "".join(f"<tr><th>{esc(label)}</th>{cell(value).html()}</tr>"
                       for label, value in rows)
        return self.html(f'<table class="kv">{body}</table>')

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]],
              name: str = "") -> Section:
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(cell(c).html() for c in row) + "</tr>" for row in rows)
        attr = f' data-table="{esc(name)}"' if name else ""
        return self.html(f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                         "</table>")

    def details(self, summary: str, inner: Section) -> Section:
        """``inner``'s parts folded under ``summary`` (long tables)."""
        return self.html(f"<details><summary>{esc(summary)}</summary>{''.join(inner.parts)}"
                         "</details>")

    def columns(self, *parts: Section) -> Section:
        """``parts`` (sections from :meth:`Page.scratch`) side by side, wrapping on narrow pages."""
        inner = "".join(f"<div>{''.join(p.parts)}</div>" for p in parts)
        return self.html(f'<div class="cols">{inner}</div>')

    def chart(self, figure, name: str) -> Section:
        """A plotly figure (see :mod:`mmopt.report.charts`), named for tests and links."""
        from mmopt.report.charts import figure_html

        return self.html(figure_html(figure, name))


class Page:
    """The page of one report: ``data`` is the report's JSON (a dict)."""

    def __init__(self, data: dict, title: str, subtitle: str = ""):
        from mmopt.report.data import finite

        self.data = finite(data)
        self.title, self.subtitle = title, subtitle
        self.sections: list[Section] = []
        self.verdict: Cell | None = None

    def section(self, title: str, anchor: str) -> Section:
        section = Section(self, title, anchor)
        self.sections.append(section)
        return section

    def scratch(self) -> Section:
        """A section that is not on the page (to fold into another with :meth:`Section.details`)."""
        return Section(self, "", "")

    # -- values from the JSON ----------------------------------------------------------------------

    def get(self, *path, default=None):
        try:
            return lookup(self.data, path)
        except (KeyError, IndexError, TypeError):
            return default

    def value(self, *path, spec: str = ".4g", scale: float = 1.0, unit: str = "") -> Cell:
        """The JSON value at ``path``, formatted (numbers by ``spec`` after x ``scale``, then
        ``unit``), carrying its path and exact value for anyone who checks the page. A path the
        JSON does not have (a report from an older mmopt) shows as "-"."""
        try:
            value = lookup(self.data, path)
        except (KeyError, IndexError, TypeError):
            return Cell("-")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric or value in ("inf", "-inf", "nan"):
            text = fmt_number(value, spec, scale) + unit
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif value is None:
            text = "-"
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        attrs = (f" data-key='{esc(json.dumps(list(path)))}'"
                 f" data-value='{esc(json.dumps(value))}'"
                 + (f' data-scale="{scale!r}"' if numeric and scale != 1.0 else ""))
        return Cell(esc(text), "num" if numeric else "", attrs)

    # -- the document ------------------------------------------------------------------------------

    def render(self) -> str:
        from mmopt.report.charts import library_script

        nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in self.sections)
        sections = "".join(
            f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{"".join(s.parts)}</section>'
            for s in self.sections)
        raw = json.dumps(self.data, indent=2, allow_nan=False)
        island = json.dumps(self.data, allow_nan=False).replace("<", "\\u003c")
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        verdict = f" {self.verdict.inner}" if self.verdict is not None else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"generator\" content=\"mmopt {esc(__version__)}\">"
            f"<meta name=\"mmopt-report\" content=\"{esc(self.data.get('kind', ''))}\">"
            f"<title>{esc(self.title)}</title><style>{_STYLE}</style>"
            f"{library_script()}</head><body>"
            f"<header><h1>{esc(self.title)}{verdict}</h1>"
            f"<div class=\"sub\">{esc(self.subtitle)}</div><nav>{nav}"
            "<a href=\"#json\">JSON</a></nav></header>"
            f"<main>{sections}"
            "<section id=\"json\"><h2>JSON</h2><p>The report this page shows, as the command wrote "
            "it (<code>mmopt report FILE.json -o FILE.html</code> renders such a file).</p>"
            f"<details><summary>show</summary><pre>{esc(raw)}</pre></details></section></main>"
            f"<footer>mmopt {esc(__version__)}, page made {esc(created)}</footer>"
            f"<script type=\"application/json\" id=\"{DATA_ID}\">{island}</script>"
            "</body></html>\n")
