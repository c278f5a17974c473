"""The check report (``mmopt check --json`` / ``--report``): the verdict, every threshold with its
value and limit, the metrics of each output, the worst samples, and where along the network the
error jumps (``--per-layer``)."""

from __future__ import annotations

from mmopt.report.charts import COLORS, figure, hover
from mmopt.report.layers import add_layers
from mmopt.report.page import Page, badge

#: how a threshold's value reads: (spec, scale, unit) by metric name (mmopt.check.thresholds)
_FORMATS = {"top-1 agreement": (".2f", 100.0, "%"), "top-5 agreement": (".2f", 100.0, "%"),
            "top-1 accuracy drop": (".2f", 100.0, " points"), "SNR dB": (".2f", 1.0, " dB"),
            "cosine": (".6f", 1.0, ""), "tolerance": (".3g", 1.0, "x")}


def build(page: Page) -> None:
    d = page.data
    page.title = f"mmopt check: {d.get('candidate', '?')} against {d.get('reference', '?')}"
    page.subtitle = f"{d.get('samples')} sample(s) of {d.get('data')}"
    page.verdict = badge(d.get("passed"))
    _summary(page)
    _checks(page)
    _outputs(page)
    layers = page.section("Accuracy along the network", "layers")
    if d.get("per_layer"):
        add_layers(page, layers, "per_layer")
    else:
        layers.note("Not compared layer by layer: `mmopt check --per-layer` compares every tensor "
                    "of two ONNX models (or an ONNX model and the artifact compiled from it).")


def _summary(page: Page) -> None:
    d = page.data
    s = page.section("Summary", "summary")
    s.kv([("verdict", badge(d.get("passed"))), ("reference", page.value("reference")),
          ("candidate", page.value("candidate")), ("data", page.value("data")),
          ("samples", page.value("samples")), ("labels", page.value("labels")),
          ("eval engine", page.value("eval_engine"))])
    for note in d.get("notes") or []:
        s.note(note, "warn")


def _checks(page: Page) -> None:
    d = page.data
    s = page.section("Thresholds and verdicts", "thresholds")
    checks = d.get("checks") or []
    if not checks:
        s.note("no thresholds given: metrics only, the check always passes")
        return

    def shown(i, key):
        spec, scale, unit = _FORMATS.get(checks[i]["metric"], (".6g", 1.0, ""))
        return page.value("checks", i, key, spec=spec, scale=scale, unit=unit)

    s.table(["output", "check", "value", "required", "limit", "verdict"],
            ([page.value("checks", i, "output"), page.value("checks", i, "title"),
              shown(i, "value"), c["op"], shown(i, "limit"), badge(c["passed"])]
             for i, c in enumerate(checks)), name="checks")


def _outputs(page: Page) -> None:
    d = page.data
    outputs = d.get("outputs") or []
    s = page.section("Outputs", "outputs")

    def pct(i, key):
        return page.value("outputs", i, key, spec=".2f", scale=100.0, unit="%")

    s.table(["output", "shape", "cosine (mean)", "cosine (min)", "SNR dB", "SNR dB (min)",
             "max abs", "mean abs", "top-1 agreement", "top-5 agreement", "accuracy (ref)",
             "accuracy (cand)", "accuracy drop"],
            ([page.value("outputs", i, "name"), page.value("outputs", i, "shape"),
              page.value("outputs", i, "cosine", spec=".6f"),
              page.value("outputs", i, "cosine_min", spec=".6f"),
              page.value("outputs", i, "snr_db", spec=".2f"),
              page.value("outputs", i, "snr_db_min", spec=".2f"),
              page.value("outputs", i, "max_abs", spec=".4g"),
              page.value("outputs", i, "mean_abs", spec=".4g"),
              pct(i, "top1_agreement"), pct(i, "top5_agreement"), pct(i, "accuracy_reference"),
              pct(i, "accuracy_candidate"), pct(i, "accuracy_drop")]
             for i in range(len(outputs))), name="outputs")
    scored = [o for o in outputs if o.get("accuracy_reference") is not None]
    if scored:
        fig = figure(height=300, barmode="group", yaxis_title="top-1 accuracy (%)",
                     title="top-1 accuracy on the labels")
        fig.add_bar(name="reference", x=[o["name"] for o in scored],
                    y=[o["accuracy_reference"] * 100 for o in scored],
                    marker_color=COLORS["default"], hovertemplate=hover("reference %{y:.2f}%"))
        fig.add_bar(name="candidate", x=[o["name"] for o in scored],
                    y=[o["accuracy_candidate"] * 100 for o in scored],
                    marker_color=COLORS["mmopt"], hovertemplate=hover("candidate %{y:.2f}%"))
        s.chart(fig, "accuracy")
    for i, o in enumerate(outputs):
        worst = o.get("worst_samples") or []
        if worst:
            s.heading(f"worst samples of {o['name']}")
            s.table(["#", "sample", "SNR dB", "cosine", "max abs", "top-1 agrees"],
                    ([page.value("outputs", i, "worst_samples", j, "index"),
                      page.value("outputs", i, "worst_samples", j, "id"),
                      page.value("outputs", i, "worst_samples", j, "snr_db", spec=".2f"),
                      page.value("outputs", i, "worst_samples", j, "cosine", spec=".6f"),
                      page.value("outputs", i, "worst_samples", j, "max_abs", spec=".4g"),
                      page.value("outputs", i, "worst_samples", j, "top1_agrees")]
                     for j in range(len(worst))), name=f"worst-{i}")
