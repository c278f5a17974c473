"""Where the time goes, kernel by kernel: a profile (``mmopt profile``'s JSON, or the ``profile`` of
a compile report) as a chart of the slowest kernels, each with the ONNX nodes it computes, and a
table of all of them."""

from __future__ import annotations

import functools

from mmopt.report.charts import COLORS, figure, height_for, hover
from mmopt.report.page import Page, Section, esc
from mmopt.runtime.profile import describe_nodes

#: kernels drawn in the chart (the slowest; the table lists every one)
CHART_KERNELS = 40


def kernel_label(kernel: dict) -> str:
    """A kernel call's name on the chart's axis (a kernel may be called at several places)."""
    return f"#{kernel['index']} {kernel['name']}"


def nodes_text(kernel: dict) -> str:
    return describe_nodes(kernel.get("mapping", "unknown"), kernel.get("onnx_nodes") or [],
                          kernel.get("onnx_ops") or [], kernel.get("onnx_value"))


def add_profile(page: Page, section: Section, *prefix) -> None:
    """The profile at ``prefix`` in the page's JSON: summary, the kernel chart, the kernel table,
    the notes; onnxruntime's per-op profile when there is one."""
    profile = page.get(*prefix)
    v = functools.partial(page.value, *prefix)
    peak = profile.get("peak")
    rows = [("total latency (median)", v("total_median_ms", spec=".4f", unit=" ms")),
            ("total latency (min)", v("total_min_ms", spec=".4f", unit=" ms")),
            ("kernel calls", str(len(profile["kernels"]))),
            ("between kernels", v("between_ms", spec=".4f", unit=" ms")),
            ("threads", v("threads")), ("runs (after warm-up)", v("runs")),
            ("target", v("target"))]
    if peak:
        rows.append(("FMA peak", v("peak", "gflops", spec=".1f", unit=" GFLOP/s")))
    if profile.get("workspace_bytes") is not None:
        rows.append(("VM workspace per call", v("workspace_bytes", spec=".3f", scale=2 ** -20,
                                                unit=" MiB")))
    machine = profile.get("machine") or {}
    if machine:
        rows.append(("CPU", v("machine", "cpu_model")))
        rows.append(("load average", v("machine", "load_average")))
    section.kv(rows)
    section.chart(kernel_chart(profile), "kernels" if not prefix else f"{prefix[-1]}-kernels")
    section.note(f"ONNX nodes: {profile.get('mapping_source', '')}. FLOPs: "
                 f"{profile.get('flops_source', '')}.")
    table = page.scratch()
    table.table(
        ["#", "kernel", "ONNX nodes", "ops", "output", "median ms", "min ms", "%", "GFLOP/s",
         "% peak"],
        ([v("kernels", i, "index"), v("kernels", i, "name"),
          _nodes_cell(k), "+".join(dict.fromkeys(k.get("onnx_ops") or [])),
          " ".join("x".join(map(str, s)) for s in k.get("output_shapes") or []),
          v("kernels", i, "median_ms", spec=".4f"), v("kernels", i, "min_ms", spec=".4f"),
          v("kernels", i, "percent", spec=".1f"), v("kernels", i, "gflops_per_s", spec=".1f"),
          v("kernels", i, "peak_percent", spec=".1f")]
         for i, k in enumerate(profile["kernels"])),
        name="kernels")
    section.details(f"all {len(profile['kernels'])} kernel calls, slowest first", table)
    for note in profile.get("notes") or []:
        section.note(note, "warn")
    if profile.get("unattributed_nodes"):
        section.note("ONNX nodes no kernel accounts for: "
                     + ", ".join(profile["unattributed_nodes"]), "warn")
    if profile.get("onnxruntime"):
        add_onnxruntime(page, section, *prefix)
    elif profile.get("ops"):
        add_ops(page, section, *prefix)


def add_ops(page: Page, section: Section, *prefix) -> None:
    """The kernels' time by ONNX op type (:mod:`mmopt.runtime.profile_ops`)."""
    ops = page.get(*prefix, "ops")
    section.heading("by op type")
    section.table(["op", "kernel calls", "median ms", "%"],
                  ([page.value(*prefix, "ops", i, "op_type"),
                    page.value(*prefix, "ops", i, "calls"),
                    page.value(*prefix, "ops", i, "median_ms", spec=".4f"),
                    page.value(*prefix, "ops", i, "percent", spec=".1f")]
                   for i in range(len(ops))), name="ops")
    section.note("A fused kernel counts under the op that carries its work (Conv+Relu as Conv).")


def _nodes_cell(kernel: dict):
    from mmopt.report.page import Cell

    full = ", ".join(kernel.get("onnx_nodes") or [])
    return Cell(f'<span class="mono" title="{esc(full)}">{esc(nodes_text(kernel))}</span>')


def kernel_chart(profile: dict):
    """Horizontal bars: the slowest kernels' median ms, the rest together, the time between
    kernels; hover shows each kernel's ONNX nodes, ops, share and speed."""
    kernels = sorted(profile["kernels"], key=lambda k: (-k["median_ms"], k["index"]))
    shown, rest = kernels[:CHART_KERNELS], kernels[CHART_KERNELS:]
    fig = figure(height=height_for(len(shown) + 2), xaxis_title="median ms per inference",
                 yaxis={"autorange": "reversed", "automargin": True}, showlegend=False,
                 title=f"kernels by time: {profile['total_median_ms']:.4f} ms per inference")
    fig.add_bar(
        name="kernels", orientation="h", x=[k["median_ms"] for k in shown],
        y=[kernel_label(k) for k in shown], text=[nodes_text(k) for k in shown],
        textposition="auto", marker_color=COLORS["mmopt"],
        customdata=[[", ".join(k.get("onnx_nodes") or []) or "?",
                     "+".join(dict.fromkeys(k.get("onnx_ops") or [])) or "?",
                     k["percent"], k.get("gflops_per_s") or 0.0,
                     " ".join("x".join(map(str, s)) for s in k.get("output_shapes") or [])]
                    for k in shown],
        hovertemplate=hover("<b>%{y}</b>", "%{x:.4f} ms (%{customdata[2]:.1f}%)",
                            "ONNX nodes: %{customdata[0]}", "ops: %{customdata[1]}",
                            "output: %{customdata[4]}", "%{customdata[3]:.1f} GFLOP/s"))
    extra_y, extra_x = [], []
    if rest:
        extra_y.append(f"({len(rest)} more kernels)")
        extra_x.append(sum(k["median_ms"] for k in rest))
    extra_y.append("(between kernels)")
    extra_x.append(max(profile["between_ms"], 0.0))
    fig.add_bar(name="other", orientation="h", x=extra_x, y=extra_y,
                marker_color=COLORS["between"], hovertemplate=hover("%{y}: %{x:.4f} ms"))
    return fig


def add_onnxruntime(page: Page, section: Section, *prefix) -> None:
    """onnxruntime's time per op type beside mmopt's (``--vs onnxruntime``); a profile from before
    mmopt counted its kernels by op type shows onnxruntime's side alone."""
    ort = page.get(*prefix, "onnxruntime")
    paired = page.get(*prefix, "ops_vs_onnxruntime")
    total = page.get(*prefix, "total_median_ms")
    name = "onnxruntime-ops" if not prefix else f"{prefix[-1]}-onnxruntime-ops"
    if paired is None:
        section.heading("onnxruntime, by op type")
        fig = figure(height=height_for(len(ort["ops"]) + 1), showlegend=False,
                     xaxis_title="median ms per inference", yaxis={"autorange": "reversed"},
                     title=f"onnxruntime {ort['total_median_ms']:.4f} ms vs mmopt {total:.4f} ms")
        fig.add_bar(orientation="h", x=[op["median_ms"] for op in ort["ops"]],
                    y=[op["op_type"] for op in ort["ops"]], marker_color=COLORS["onnxruntime"],
                    customdata=[[op["nodes"], op["percent"]] for op in ort["ops"]],
                    hovertemplate=hover("<b>%{y}</b> (%{customdata[0]} nodes)",
                                        "%{x:.4f} ms (%{customdata[1]:.1f}%)"))
        section.chart(fig, name)
        section.table(["op", "nodes", "median ms", "%"],
                      ([page.value(*prefix, "onnxruntime", "ops", i, "op_type"),
                        page.value(*prefix, "onnxruntime", "ops", i, "nodes"),
                        page.value(*prefix, "onnxruntime", "ops", i, "median_ms", spec=".4f"),
                        page.value(*prefix, "onnxruntime", "ops", i, "percent", spec=".1f")]
                       for i in range(len(ort["ops"]))), name="onnxruntime-ops")
    else:
        section.heading("by op type, against onnxruntime")
        fig = figure(height=height_for(2 * len(paired) + 1), barmode="group",
                     xaxis_title="median ms per inference", yaxis={"autorange": "reversed"},
                     title=f"mmopt {total:.4f} ms vs onnxruntime {ort['total_median_ms']:.4f} ms")
        for engine, key in (("mmopt", "mmopt_ms"), ("onnxruntime", "onnxruntime_ms")):
            fig.add_bar(name=engine, orientation="h", x=[r[key] or 0.0 for r in paired],
                        y=[r["op_type"] for r in paired], marker_color=COLORS[engine],
                        hovertemplate=hover(f"<b>%{{y}}</b>: {engine} %{{x:.4f}} ms"))
        section.chart(fig, name)
        section.table(
            ["op", "mmopt ops", "mmopt kernels", "mmopt ms", "onnxruntime ops",
             "onnxruntime nodes", "onnxruntime ms", "mmopt / onnxruntime"],
            ([page.value(*prefix, "ops_vs_onnxruntime", i, "op_type"),
              ", ".join(r.get("mmopt_ops") or []),
              page.value(*prefix, "ops_vs_onnxruntime", i, "mmopt_calls"),
              page.value(*prefix, "ops_vs_onnxruntime", i, "mmopt_ms", spec=".4f"),
              ", ".join(r["onnxruntime_ops"]),
              page.value(*prefix, "ops_vs_onnxruntime", i, "onnxruntime_nodes"),
              page.value(*prefix, "ops_vs_onnxruntime", i, "onnxruntime_ms", spec=".4f"),
              page.value(*prefix, "ops_vs_onnxruntime", i, "ratio", spec=".2f")]
             for i, r in enumerate(paired)), name="onnxruntime-ops")
        section.note("A fused kernel or node counts under the op that carries its work (Conv+Relu "
                     "as Conv); onnxruntime's FusedConv pairs with Conv, matrix products of any "
                     "name (MatMul, Gemm, FusedMatMul) with each other. Rows with one engine's "
                     "time only are work the other fuses into a neighbour or names differently "
                     "(layout copies, QLinearConv, a SiLU as QuickGelu): read a row's ratio with "
                     "its neighbours.")
    section.kv([("onnxruntime total (median)",
                 page.value(*prefix, "onnxruntime", "total_median_ms", spec=".4f", unit=" ms"))])
