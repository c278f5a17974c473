"""HTML reports: what ``compile``, ``profile``, ``tune``, ``quantize``, ``check`` and ``bench``
found, as one self-contained page each, and the optimized graph in Netron
(:mod:`mmopt.report.netron`).

One path for every verb: the verb's report as JSON (the dict its ``--json`` prints) ->
:func:`render` -> HTML. ``--html FILE`` on the verb and ``mmopt report RUN.json -o FILE.html``
both come here, so a page shows exactly what the JSON holds::

    from mmopt.report import write_html
    write_html(mmopt.compile(..., profile=True).to_dict(), "compile.html")

Modules: :mod:`~mmopt.report.data` (kinds, reading, JSON safety), :mod:`~mmopt.report.page` (the
document, tables, values traced to the JSON), :mod:`~mmopt.report.charts` (plotly, inlined), one
module per verb (``compile``, ``profile``, ``tune``, ``quantize``, ``check``, ``bench``) and the
parts two of them share (:mod:`~mmopt.report.kernels`, :mod:`~mmopt.report.layers`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mmopt.report.data import KINDS, kind_of, load, write_text


def render(data: dict) -> str:
    """The HTML page of a report (any of :data:`~mmopt.report.data.KINDS`)."""
    from mmopt.report.page import Page

    kind = kind_of(data)
    page = Page({**data, "kind": kind}, title=f"mmopt {kind}")
    importlib.import_module(f"mmopt.report.{kind}").build(page)
    return page.render()


def write_html(data: dict, path) -> Path:
    """Render ``data`` and write it to ``path`` (atomically: a failure leaves no partial page)."""
    return write_text(path, render(data), "the HTML report")


__all__ = ["KINDS", "kind_of", "load", "render", "write_html"]
