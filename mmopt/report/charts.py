"""Charts: plotly figures, drawn in the page by plotly.js, whose bundle the page carries inline
(``plotly.offline.get_plotlyjs()``: no CDN, no network; hover shows every point's details, e.g. the
ONNX nodes of a kernel).

A chart is ``<div class="chart" data-chart=NAME>`` holding the plot ``<div id="chart-NAME">``;
plotly keeps the drawn traces on that element (``.data``), so the numbers a chart shows can be read
back from the page and compared with the report's JSON.
"""

from __future__ import annotations

import functools
import html
import json

#: the look of every chart
TEMPLATE = "plotly_white"
#: plotly.js options: no logo, no "edit in Chart Studio" link (the page works offline)
CONFIG = {"displaylogo": False, "responsive": True, "showLink": False,
          "modeBarButtonsToRemove": ["sendDataToCloud"]}
#: the layout every chart starts from: the title on the left, the legend above the plot on the right
LAYOUT = {"template": TEMPLATE, "margin": {"l": 60, "r": 30, "t": 60, "b": 50},
          "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right",
                     "x": 1},
          "title": {"x": 0.01, "xanchor": "left"}, "hoverlabel": {"align": "left"}}
#: colours with meaning, the same on every page
COLORS = {"mmopt": "#0969da", "onnxruntime": "#bc4c00", "default": "#8c959f", "tuned": "#1a7f37",
          "ok": "#1a7f37", "bad": "#cf222e", "jump": "#cf222e", "range": "#0969da",
          "seen": "#d0d7de", "between": "#8c959f"}


@functools.lru_cache(maxsize=1)
def library_script() -> str:
    """``<script>`` holding plotly.js (minified, ~4.8 MB), once per page."""
    from plotly.offline import get_plotlyjs

    return f"<script>{_safe_script(get_plotlyjs())}</script>"


def _safe_script(text: str) -> str:
    # a script element ends at the first "</script" whatever the JavaScript means there
    return text.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def figure(height: int = 360, **layout):
    """An empty figure with the report's look."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(**LAYOUT)
    if isinstance(layout.get("title"), str):  # keep LAYOUT's placement of the title
        layout["title_text"] = layout.pop("title")
    fig.update_layout(height=height, **layout)
    return fig


def height_for(rows: int, per_row: int = 22, base: int = 120, least: int = 260) -> int:
    """A horizontal bar chart's height for ``rows`` bars."""
    return max(least, base + per_row * rows)


def figure_html(fig, name: str) -> str:
    """The chart's HTML: a container and the plot's div, and the script that draws it. The figure's
    JSON is escaped so that no text in it (a tensor named ``</script>``) ends the script."""
    div_id = f"chart-{name}"
    spec = json.loads(fig.to_json())
    payload = json.dumps({"data": spec.get("data", []), "layout": spec.get("layout", {})},
                         allow_nan=False).replace("<", "\\u003c")
    config = json.dumps(CONFIG)
    return (f'<div class="chart" data-chart="{html.escape(name)}">'
            f'<div id="{html.escape(div_id)}"></div><script>(function () {{'
            f"var spec = {payload};"
            f'Plotly.newPlot("{div_id}", spec.data, spec.layout, {config});'
            "})();</script></div>")


def hover(*lines: str) -> str:
    """A hover template of ``lines`` (plotly's ``%{...}`` fields allowed), without the trace box."""
    return "<br>".join(lines) + "<extra></extra>"


def finite_or_none(value):
    """A number plotly can draw: JSON's "inf"/"nan" strings and None become gaps."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value
