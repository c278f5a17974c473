"""The quantize report (``mmopt quantize --json`` / ``--report``): the settings, the accuracy
against the float model, the accuracy-aware search step by step against its budget, the layers
``--prefer speed`` measured and kept in float, where along the
network the error jumps (``--per-layer``), and the range calibration chose for each tensor (and
which concatenations share one)."""

from __future__ import annotations

from mmopt.report.charts import COLORS, figure, height_for, hover
from mmopt.report.layers import add_layers
from mmopt.report.page import Page, badge

#: tensors drawn in the calibration chart (the table in the JSON has all)
CHART_TENSORS = 60


def build(page: Page) -> None:
    d = page.data
    page.title = f"mmopt quantize: {d.get('dtype', '?')}" + (f" -> {d['output']}"
                                                            if d.get("output") else "")
    page.subtitle = _kind(d)
    aa = d.get("accuracy_aware")
    if aa:
        page.verdict = badge(aa["met"], "budget met", "budget NOT met")
    _summary(page)
    _evaluation(page)
    if aa:
        _search(page)
    if d.get("latency"):
        _speed(page)
    layers = page.section("Accuracy along the network", "layers")
    if d.get("per_layer"):
        add_layers(page, layers, "per_layer")
    else:
        layers.note("Not compared layer by layer: `mmopt quantize --per-layer` (on with --html) "
                    "compares every tensor of the float and the quantized model.")
    if d.get("calibration_ranges"):
        _ranges(page)


def _kind(d: dict) -> str:
    if d.get("dtype") == "fp16":
        return "fp16 with fp32 islands"
    if d.get("weight_only"):
        return "int8 weight-only"
    return (f"int8 QDQ: {d.get('method')} calibration, "
            f"{'per-channel' if d.get('per_channel') else 'per-tensor'} weights, "
            f"{d.get('activations')} activations")


def _summary(page: Page) -> None:
    d = page.data
    s = page.section("Summary", "summary")
    q = sum((d.get("ops_after") or {}).get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear"))
    rows = [("kind", _kind(d)), ("output", page.value("output")) if d.get("output") else None,
            ("calibration samples", page.value("samples")),
            ("calibration batches", page.value("batches")),
            ("tensors calibrated", page.value("tensors_calibrated")),
            ("nodes", f"{sum((d.get('ops_before') or {}).values())} -> "
                      f"{sum((d.get('ops_after') or {}).values())} ({q} Q/DQ)"),
            ("excluded (asked)", page.value("excluded")),
            ("kept in float", page.value("kept_float"))]
    s.kv([r for r in rows if r is not None])
    if d.get("timings"):
        s.table(["stage", "seconds"], [[k, page.value("timings", k, spec=".2f")]
                                       for k in d["timings"]], name="timings")


def _evaluation(page: Page) -> None:
    d = page.data
    s = page.section("Accuracy", "accuracy")
    ev = d.get("evaluation")
    if not ev:
        s.note("Not evaluated: `mmopt quantize --eval DATA` scores the result against the float "
               "model.")
        return
    rows = [("metric", page.value("evaluation", "metric")),
            ("drop", page.value("evaluation", "drop", spec=".3f", unit=" points")),
            ("cosine", page.value("evaluation", "cosine", spec=".6f")),
            ("SNR", page.value("evaluation", "snr_db", spec=".2f", unit=" dB")),
            ("eval engine", page.value("eval_engine"))]
    if ev.get("top1_float") is not None:
        rows += [("top-1, float model", page.value("evaluation", "top1_float", spec=".2f",
                                                   unit="%")),
                 ("top-1, quantized", page.value("evaluation", "top1", spec=".2f", unit="%"))]
    elif ev.get("top1") is not None:
        rows.append(("top-1 agreement", page.value("evaluation", "top1", spec=".2f", unit="%")))
    aa = d.get("accuracy_aware")
    if aa:
        rows += [("budget (max drop)", page.value("accuracy_aware", "max_drop", spec="g",
                                                  unit=" points")),
                 ("verdict", badge(aa["met"], "met", "NOT met"))]
    s.kv(rows)


def _speed(page: Page) -> None:
    """``--prefer speed``: the whole-model minimums, the decision, and every layer's float and
    int8 kernel time."""
    lat = page.data["latency"]
    s = page.section("Speed: layers kept in float where int8 measured slower", "speed")
    s.text(f"Profiled here for {lat['target']} ({lat['threads']} threads, minimum of "
           f"{lat['runs']} runs per kernel); a layer whose int8 time is over "
           f"{100 * lat['margin']:.0f}% above its float time is a candidate for float, and the "
           "mixed model is kept only when it is faster as a whole.")
    s.kv([("float model (profile, min)", page.value("latency", "float_ms", spec=".3f",
                                                     unit=" ms")),
          ("all-int8 model (profile, min)", page.value("latency", "int8_ms", spec=".3f",
                                                        unit=" ms")),
          ("all-int8, interleaved (min / median)", _pair(page, "int8")),
          ("mixed, interleaved (min / median)", _pair(page, "mixed")),
          ("refined (slower-in-place layers int8 again), interleaved", _pair(page, "refined")),
          ("back to int8 after the mixed model's profile (ms in it)",
           page.value("latency", "reverted")),
          ("chosen", page.value("latency", "chosen")),
          ("kept in float for speed", page.value("latency", "kept_float"))])
    for note in lat.get("notes") or []:
        s.note(note)
    layers = lat.get("layers") or []
    if not layers:
        return
    fig = figure(height=height_for(len(layers)), barmode="group",
                 xaxis_title="kernel time (ms, minimum)",
                 yaxis={"autorange": "reversed", "automargin": True},
                 title="each layer's kernel time, float and int8")
    names = [f"{x['node']} ({x['op_type']})" for x in layers]
    fig.add_bar(orientation="h", y=names, x=[x["float_ms"] for x in layers], name="float",
                marker_color=COLORS["default"])
    fig.add_bar(orientation="h", y=names, x=[x["int8_ms"] for x in layers], name="int8",
                marker_color=[COLORS["bad"] if x["int8_slower"] else COLORS["mmopt"]
                              for x in layers])
    s.chart(fig, "speed-layers")
    s.table(["layer", "op", "float ms", "int8 ms", "int8 slower"],
            ([page.value("latency", "layers", i, "node"),
              page.value("latency", "layers", i, "op_type"),
              page.value("latency", "layers", i, "float_ms", spec=".4f"),
              page.value("latency", "layers", i, "int8_ms", spec=".4f"),
              badge(not x["int8_slower"], "no", "yes")]
             for i, x in enumerate(layers)), name="speed-layers")


def _pair(page: Page, model: str) -> str:
    timing = (page.data["latency"].get("interleaved") or {}).get(model)
    if not timing:
        return "-"
    return f"{timing['min']:.3f} / {timing['median']:.3f} ms"


def _search(page: Page) -> None:
    d = page.data
    aa = d["accuracy_aware"]
    s = page.section("Accuracy-aware search", "search")
    steps = aa.get("steps") or []
    s.text(f"Keep the fewest layers in float until the {aa['metric']} drop is at most "
           f"{aa['max_drop']:g} points; {len(steps)} step(s) in {aa.get('seconds', 0):.1f} s.")
    if steps:
        labels = [f"{i + 1}. {st['action']}" for i, st in enumerate(steps)]
        fig = figure(height=360, showlegend=False, yaxis_title=f"drop ({aa['metric']}, points)",
                     xaxis={"tickangle": -25}, title="drop at each step against the budget")
        fig.add_bar(x=labels, y=[st["drop"] for st in steps],
                    marker_color=[COLORS["ok"] if st["within_budget"] else COLORS["bad"]
                                  for st in steps],
                    customdata=[[len(st["kept_float"]), ", ".join(st["kept_float"]) or "none"]
                                for st in steps],
                    hovertemplate=hover("<b>%{x}</b>", "drop %{y:.3f}",
                                        "%{customdata[0]} node(s) in float: %{customdata[1]}"))
        fig.add_hline(y=aa["max_drop"], line={"color": COLORS["bad"], "dash": "dash"},
                      annotation_text=f"budget {aa['max_drop']:g}")
        s.chart(fig, "search-steps")
        s.table(["step", "action", "nodes in float", "drop", "cosine", "top-1", "within budget"],
                ([str(i + 1), page.value("accuracy_aware", "steps", i, "action"),
                  page.value("accuracy_aware", "steps", i, "kept_float"),
                  page.value("accuracy_aware", "steps", i, "drop", spec=".3f"),
                  page.value("accuracy_aware", "steps", i, "cosine", spec=".6f"),
                  page.value("accuracy_aware", "steps", i, "top1", spec=".2f"),
                  badge(st["within_budget"], "yes", "no")]
                 for i, st in enumerate(steps)), name="steps")
    sens = aa.get("sensitivities") or []
    if sens:
        top = sens[:30]
        fig = figure(height=height_for(len(top)), showlegend=False,
                     xaxis_title="output noise with only this node quantized (% of signal)",
                     yaxis={"autorange": "reversed", "automargin": True},
                     title="the most sensitive layers (the order the search tries them)")
        fig.add_bar(orientation="h", y=[f"{x['node']} ({x['op_type']})" for x in top],
                    x=[x["noise"] for x in top], marker_color=COLORS["onnxruntime"],
                    customdata=[x["drop"] for x in top],
                    hovertemplate=hover("<b>%{y}</b>", "noise %{x:.4g}%", "drop %{customdata:.3f}"))
        s.chart(fig, "sensitivities")


def _ranges(page: Page) -> None:
    d = page.data
    ranges = d["calibration_ranges"]
    s = page.section("Calibration ranges", "ranges")
    s.text(f"{len(ranges)} tensor(s), in graph order: the values seen over the calibration data "
           f"(light) and the range {d.get('method')} calibration chose (dark); values outside it "
           "are clipped.")
    shown = ranges[:CHART_TENSORS]
    fig = figure(height=height_for(len(shown)), barmode="overlay", xaxis_title="value",
                 yaxis={"autorange": "reversed", "automargin": True},
                 title="calibration range per tensor")
    names = [r["tensor"] for r in shown]
    fig.add_bar(name="seen (min..max)", orientation="h", y=names,
                x=[r["max"] - r["min"] for r in shown], base=[r["min"] for r in shown],
                marker_color=COLORS["seen"],
                customdata=[[r["min"], r["max"]] for r in shown],
                hovertemplate=hover("<b>%{y}</b>", "seen %{customdata[0]:.4g} .. "
                                    "%{customdata[1]:.4g}"))
    fig.add_bar(name="range (lo..hi)", orientation="h", y=names, width=0.45,
                x=[r["hi"] - r["lo"] for r in shown], base=[r["lo"] for r in shown],
                marker_color=COLORS["range"],
                customdata=[[r["lo"], r["hi"]] for r in shown],
                hovertemplate=hover("<b>%{y}</b>", "range %{customdata[0]:.4g} .. "
                                    "%{customdata[1]:.4g}"))
    s.chart(fig, "ranges")
    if len(ranges) > len(shown):
        s.note(f"the chart shows the first {len(shown)}; the table lists all {len(ranges)}")
    table = page.scratch()
    table.table(["tensor", "min seen", "max seen", "range lo", "range hi"],
                ([page.value("calibration_ranges", i, "tensor"),
                  page.value("calibration_ranges", i, "min", spec=".5g"),
                  page.value("calibration_ranges", i, "max", spec=".5g"),
                  page.value("calibration_ranges", i, "lo", spec=".5g"),
                  page.value("calibration_ranges", i, "hi", spec=".5g")]
                 for i in range(len(ranges))), name="ranges")
    s.details(f"all {len(ranges)} ranges", table)
    shared = d.get("shared_scales")
    if shared and (shared.get("groups") or shared.get("kept")):
        s.text("Concatenations that share one range with their inputs (the union of their "
               "ranges: the compiled concatenation copies bytes), and those that keep their own "
               f"because joining would make some tensor's step more than {shared['limit']:g}x "
               "coarser.")
        rows = [[", ".join(g["concats"]),
                 page.value("shared_scales", "groups", i, "lo", spec=".5g"),
                 page.value("shared_scales", "groups", i, "hi", spec=".5g"), len(g["tensors"])]
                for i, g in enumerate(shared["groups"])]
        rows += [[k["node"], "own ranges", f"{k['factor']:g}x coarser if shared", ""]
                 for k in shared["kept"]]
        s.table(["concatenations", "range lo", "range hi", "tensors"], rows, name="shared_scales")
