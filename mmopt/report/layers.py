"""Accuracy along the network: a per-layer comparison (``mmopt check --per-layer``, or ``mmopt
quantize --per-layer``) as SNR and cosine against the layer's depth, the first jump marked, and
the layers that lost the most in a table."""

from __future__ import annotations

from mmopt.report.charts import COLORS, finite_or_none, hover
from mmopt.report.page import Page, Section, badge

#: layers listed in the table (the largest drops)
TABLE_LAYERS = 25


def add_layers(page: Page, section: Section, *prefix) -> None:
    per = page.get(*prefix)
    layers = per.get("layers") or []
    culprit = per.get("culprit")
    section.kv([("samples compared", page.value(*prefix, "samples")),
                ("a jump is a drop of at least", page.value(*prefix, "jump_db", spec=".1f",
                                                           unit=" dB")),
                ("layers compared", str(len(layers))),
                ("first jump", page.value(*prefix, "culprit", "node") if culprit
                 else badge(None, unknown="none"))])
    if culprit:
        section.note(f"The error first jumps at {culprit['node']} ({culprit['op_type']}, tensor "
                     f"{culprit['tensor']}): SNR {_db(culprit['input_snr_db'])} dB at its inputs, "
                     f"{_db(culprit['snr_db'])} dB at its output. Exclude it from quantization "
                     "(--exclude) or calibrate it again.", "bad")
    if not layers:
        section.note("no float tensor of the reference has a counterpart in the candidate")
        return
    section.chart(layer_chart(per), "layers")
    worst = sorted(range(len(layers)),
                   key=lambda i: -(finite_or_none(layers[i]["drop_db"]) or 0.0))[:TABLE_LAYERS]
    rows = page.scratch()
    rows.table(["#", "node", "op", "tensor", "SNR dB", "input SNR dB", "drop dB", "cosine",
                "max abs err"],
               ([page.value(*prefix, "layers", i, "index"),
                 page.value(*prefix, "layers", i, "node"),
                 page.value(*prefix, "layers", i, "op_type"),
                 page.value(*prefix, "layers", i, "tensor"),
                 page.value(*prefix, "layers", i, "snr_db", spec=".2f"),
                 page.value(*prefix, "layers", i, "input_snr_db", spec=".2f"),
                 page.value(*prefix, "layers", i, "drop_db", spec=".2f"),
                 page.value(*prefix, "layers", i, "cosine", spec=".6f"),
                 page.value(*prefix, "layers", i, "max_abs", spec=".3g")]
                for i in sorted(worst)), name="layers")
    section.details(f"the {len(worst)} layers that lost the most, in graph order", rows)
    if per.get("unmatched"):
        section.note(f"{len(per['unmatched'])} float tensor(s) of the reference have no "
                     "counterpart in the candidate: " + ", ".join(per["unmatched"][:20])
                     + (" ..." if len(per["unmatched"]) > 20 else ""))


def _db(value) -> str:
    return value if isinstance(value, str) else f"{value:.1f}"


def layer_chart(per: dict):
    """SNR (left axis) and cosine (right axis) of every compared tensor, in graph order; the first
    jump as a red line. An exact tensor has an infinite SNR: no point is drawn for it."""
    from plotly.subplots import make_subplots

    from mmopt.report.charts import LAYOUT

    layers = per["layers"]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.update_layout(**LAYOUT)
    fig.update_layout(height=420, margin={"r": 60},
                      title_text="accuracy along the network (graph order)")
    x = [layer["index"] for layer in layers]
    custom = [[layer["node"], layer["op_type"], layer["tensor"], str(layer["drop_db"])]
              for layer in layers]
    fig.add_scatter(name="SNR (dB)", x=x, y=[finite_or_none(layer["snr_db"]) for layer in layers],
                    mode="lines+markers", line={"color": COLORS["mmopt"]}, customdata=custom,
                    hovertemplate=hover("<b>%{customdata[0]}</b> (%{customdata[1]})",
                                        "tensor %{customdata[2]}", "SNR %{y:.2f} dB",
                                        "drop %{customdata[3]} dB"), secondary_y=False)
    fig.add_scatter(name="cosine", x=x, y=[finite_or_none(layer["cosine"]) for layer in layers],
                    mode="lines", line={"color": COLORS["onnxruntime"], "dash": "dot"},
                    customdata=custom,
                    hovertemplate=hover("<b>%{customdata[0]}</b>", "cosine %{y:.6f}"),
                    secondary_y=True)
    fig.update_xaxes(title_text="layer (graph order)")
    fig.update_yaxes(title_text="SNR (dB)", secondary_y=False)
    fig.update_yaxes(title_text="cosine", secondary_y=True)
    culprit = per.get("culprit")
    if culprit:
        fig.add_vline(x=culprit["index"],
                      line={"color": COLORS["jump"], "width": 2, "dash": "dash"})
        fig.add_annotation(x=culprit["index"], yref="paper", y=1.0, showarrow=False,
                           text=f"first jump: {culprit['node']}", xanchor="left",
                           font={"color": COLORS["jump"]})
    return fig
