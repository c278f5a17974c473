"""The bench report (``mmopt bench --json``): mmopt's latency next to onnxruntime's, as the whole
distribution of the timed calls (and in call order, where a busy machine or a warm-up shows), with
each engine's memory."""

from __future__ import annotations

from mmopt.report.charts import COLORS, figure, hover
from mmopt.report.page import Page, badge

ENGINES = ("mmopt", "onnxruntime")


def build(page: Page) -> None:
    d = page.data
    engines = [e for e in ENGINES if d.get(e)]
    page.title = f"mmopt bench: {d.get('model', '?')}"
    first = d[engines[0]]
    page.subtitle = f"{first['runs']} timed calls per engine, {first['threads']} thread(s)"
    ratio = d.get("ratio")
    if isinstance(ratio, (int, float)):
        page.verdict = badge(ratio < 1, f"mmopt {1 / ratio:.2f}x faster" if ratio < 1 else "",
                             f"mmopt {ratio:.2f}x slower")
    s = page.section("Latency", "latency")
    if ratio is not None:
        s.kv([("ratio mmopt / onnxruntime (medians)", page.value("ratio", spec=".3f")),
              ("verdict", "mmopt is faster" if ratio < 1 else "mmopt is slower")])
    s.table(["engine", "threads", "calls", "min ms", "median ms", "p90 ms", "mean ms",
             "inferences/s"],
            ([page.value(e, "engine"), page.value(e, "threads"), page.value(e, "runs"),
              page.value(e, "min_ms", spec=".4f"), page.value(e, "median_ms", spec=".4f"),
              page.value(e, "p90_ms", spec=".4f"), page.value(e, "mean_ms", spec=".4f"),
              page.value(e, "throughput", spec=".1f")] for e in engines), name="latency")
    with_samples = [e for e in engines if d[e].get("samples_ms")]
    if with_samples:
        fig = figure(height=200 + 90 * len(with_samples), showlegend=False,
                     xaxis_title="ms per call", title="latency distribution of the timed calls")
        for e in with_samples:
            fig.add_box(name=e, x=d[e]["samples_ms"], boxpoints="all", jitter=0.4, pointpos=0,
                        orientation="h", marker={"color": COLORS[e], "size": 4},
                        line={"color": COLORS[e]}, boxmean=True,
                        hovertemplate=hover(f"{e}: %{{x:.4f}} ms"))
        s.chart(fig, "latency-distribution")
        fig = figure(height=320, xaxis_title="call (in order)", yaxis_title="ms",
                     title="latency of each call, in order")
        for e in with_samples:
            fig.add_scatter(name=e, y=d[e]["samples_ms"], x=list(range(1, d[e]["runs"] + 1)),
                            mode="lines+markers", marker={"size": 4, "color": COLORS[e]},
                            line={"width": 1, "color": COLORS[e]},
                            hovertemplate=hover(f"{e}, call %{{x}}: %{{y:.4f}} ms"))
        s.chart(fig, "latency-calls")
        s.note("The engines ran in their own processes, their calls interleaved in blocks, so a "
               "slow phase of the machine hits both alike.")
    else:
        s.note("This report has no per-call latencies (written before mmopt kept them).")
    m = page.section("Memory", "memory")
    m.table(["engine", "peak RSS MB", "RSS after MB", "anonymous MB", "before loading MB",
             "workspace MB", "measured by"],
            ([page.value(e, "engine"), page.value(e, "peak_rss_mb", spec=".1f"),
              page.value(e, "rss_mb", spec=".1f"), page.value(e, "anon_rss_mb", spec=".1f"),
              page.value(e, "baseline_rss_mb", spec=".1f"),
              page.value(e, "workspace_mb", spec=".3f"), page.value(e, "memory_source")]
             for e in engines), name="memory")
    fig = figure(height=300, barmode="group", yaxis_title="MB", title="memory of each engine")
    for e in engines:
        fig.add_bar(name=e, x=["peak RSS", "RSS after the runs", "anonymous"],
                    y=[d[e].get("peak_rss_mb"), d[e].get("rss_mb"), d[e].get("anon_rss_mb")],
                    marker_color=COLORS[e], hovertemplate=hover(f"{e}, %{{x}}: %{{y:.1f}} MB"))
    m.chart(fig, "memory")
