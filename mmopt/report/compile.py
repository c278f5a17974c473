"""The compile report: what went in and with which settings, what each graph pass did, how the
artifact compares with onnxruntime (and the source framework), where its time goes kernel by
kernel, and what went less well (schedule fallbacks, tuning records that did not apply, warnings).

Reads ``mmopt compile --json`` (an artifact's ``NAME.json`` too: it has the same fields, without
the pass report, timings and profile)."""

from __future__ import annotations

import json

from mmopt.report.charts import COLORS, figure, hover
from mmopt.report.kernels import add_profile
from mmopt.report.page import Page, badge


def build(page: Page) -> None:
    d = page.data
    target = d.get("target") or {}
    page.title = f"mmopt compile: {d.get('source_model', '?')} for {target.get('name', '?')}"
    page.subtitle = (f"artifact {d.get('library') or d.get('name', '')}, "
                     f"made {d.get('created', '?')}")
    verification = d.get("verification")
    passed = d.get("passed", verification.get("passed") if verification else None)
    page.verdict = badge(passed, unknown="not verified")
    _summary(page)
    if d.get("passes"):
        _passes(page)
    _verification(page)
    kernels = page.section("Kernels", "kernels")
    if d.get("profile"):
        add_profile(page, kernels, "profile")
    else:
        kernels.note("Not profiled: `mmopt compile --profile` (or --html, where the target runs on "
                     "this machine) times each kernel; so does `mmopt profile ARTIFACT`.")
    _warnings(page)


def _summary(page: Page) -> None:
    d = page.data
    s = page.section("Summary", "summary")
    rows = [("source model", page.value("source_model")),
            ("sha256", page.value("source_sha256")),
            ("target", page.value("target", "name")),
            ("TVM target", json.dumps(d["target"].get("tvm"))),
            ("optimization level", page.value("opt_level")),
            ("mmopt", page.value("mmopt_version")), ("TVM", page.value("tvm_version")),
            ("created", page.value("created"))]
    if d.get("library"):
        rows.append(("library", page.value("library")))
    if d.get("onnx"):
        rows.append(("optimized ONNX", page.value("onnx")))
    cpu = d["target"].get("cpu")
    if cpu:
        rows.append(("CPU facts", f"{cpu.get('isa')}: {cpu.get('vector_bits')}-bit vectors, "
                                  f"{cpu.get('vector_registers')} registers"))
    for key in sorted(d.get("codegen") or {}):
        rows.append((f"codegen: {key}", page.value("codegen", key)))
    settings = page.scratch().kv(rows)
    io = page.scratch().heading("Inputs and outputs")
    io.table(["kind", "name", "dtype", "shape"],
             [[kind, page.value(kind + "s", i, "name"), page.value(kind + "s", i, "dtype"),
               page.value(kind + "s", i, "shape")]
              for kind in ("input", "output") for i in range(len(d.get(kind + "s") or []))],
             name="io")
    if d.get("timings"):
        io.heading("Time per stage")
        io.table(["stage", "seconds"], [[k, page.value("timings", k, spec=".2f")]
                                        for k in d["timings"]], name="timings")
    s.columns(settings, io)


def _passes(page: Page) -> None:
    d = page.data
    rep = d["passes"]
    s = page.section("Graph passes", "passes")
    applied = [p["name"] for p in rep.get("passes") or [] if p["modified"]]
    s.kv([("level", page.value("passes", "level")),
          ("nodes before", page.value("passes", "nodes_before")),
          ("nodes after", page.value("passes", "nodes_after")),
          ("passes that changed the graph", ", ".join(applied) or "none")])
    passes = rep.get("passes") or []
    if passes:
        labels = ["(imported)"] + [p["name"] for p in passes]
        counts = [passes[0]["nodes_before"]] + [p["nodes_after"] for p in passes]
        fig = figure(height=380, showlegend=False, title="nodes after each pass",
                     yaxis_title="nodes", xaxis={"tickmode": "array",
                                                 "tickvals": list(range(len(labels))),
                                                 "ticktext": labels, "tickangle": -35})
        fig.add_scatter(x=list(range(len(labels))), y=counts, mode="lines+markers",
                        line={"shape": "hv", "color": COLORS["mmopt"]},
                        customdata=labels, hovertemplate=hover("%{customdata}: %{y} nodes"))
        s.chart(fig, "pass-nodes")
        table = page.scratch()
        table.table(["#", "pass", "changed", "nodes before", "nodes after", "seconds",
                     "rules fired"],
                    ([str(i + 1), page.value("passes", "passes", i, "name"),
                      badge(True, "changed") if p["modified"] else badge(None, unknown="no change"),
                      page.value("passes", "passes", i, "nodes_before"),
                      page.value("passes", "passes", i, "nodes_after"),
                      page.value("passes", "passes", i, "seconds", spec=".3f"),
                      ", ".join(f"{k} x{n}" for k, n in (p.get("rules") or {}).items())]
                     for i, p in enumerate(passes)), name="passes")
        s.details(f"each of the {len(passes)} passes: nodes, time, rules fired", table)
    ops = sorted(set(rep.get("ops_before") or {}) | set(rep.get("ops_after") or {}),
                 key=lambda op: -(rep["ops_before"].get(op, 0)))
    if ops:
        fig = figure(height=340, barmode="group", title="operators before and after the passes",
                     yaxis_title="nodes")
        fig.add_bar(name="before", x=ops, y=[rep["ops_before"].get(op, 0) for op in ops],
                    marker_color=COLORS["default"])
        fig.add_bar(name="after", x=ops, y=[rep["ops_after"].get(op, 0) for op in ops],
                    marker_color=COLORS["mmopt"])
        s.chart(fig, "ops")


def _verification(page: Page) -> None:
    d = page.data
    s = page.section("Verification", "verification")
    v = d.get("verification")
    if not v:
        s.note("Not verified: the target does not run on this machine (or --no-verify).", "warn")
    else:
        s.kv([("against", "onnxruntime on the source model, seeded random inputs"),
              ("verdict", badge(v["passed"])), ("atol", page.value("verification", "atol")),
              ("rtol", page.value("verification", "rtol")),
              ("seed", page.value("verification", "seed"))]
             + ([("note", page.value("verification", "note"))] if v.get("note") else []))
        _outputs_table(page, s, "verification")
    src = (d.get("extra") or {}).get("source_verification")
    if src:
        s.heading("Against the source framework")
        if "skipped" in src:
            s.note(f"not checked: {src['skipped']}", "warn")
        else:
            s.kv([("verdict", badge(src["passed"])),
                  ("reference", page.value("extra", "source_verification", "note")),
                  ("atol", page.value("extra", "source_verification", "atol")),
                  ("rtol", page.value("extra", "source_verification", "rtol"))])
            _outputs_table(page, s, "extra", "source_verification")


def _outputs_table(page: Page, s, *prefix) -> None:
    outputs = page.get(*prefix, "outputs") or []
    s.table(["output", "shape", "max abs err", "max rel err", "worst / tolerance", "status"],
            ([page.value(*prefix, "outputs", i, "name"), page.value(*prefix, "outputs", i, "shape"),
              page.value(*prefix, "outputs", i, "max_abs", spec=".3g"),
              page.value(*prefix, "outputs", i, "max_rel", spec=".3g"),
              page.value(*prefix, "outputs", i, "worst_ratio", spec=".3g"),
              badge(o["passed"], "ok", "MISMATCH")]
             for i, o in enumerate(outputs)), name="-".join(map(str, prefix)))


def _warnings(page: Page) -> None:
    d = page.data
    extra = d.get("extra") or {}
    s = page.section("Fallbacks and warnings", "warnings")
    count = 0
    fallbacks = extra.get("schedule_fallbacks") or []
    if fallbacks:
        count += len(fallbacks)
        s.note(f"{len(fallbacks)} block(s) left without a schedule (plain loops, slower)", "warn")
        s.table(["block", "reason"],
                ([page.value("extra", "schedule_fallbacks", i, "block"),
                  page.value("extra", "schedule_fallbacks", i, "reason")]
                 for i in range(len(fallbacks))), name="fallbacks")
    tuning = extra.get("tuning")
    if tuning:
        s.kv([("tuning database", page.value("extra", "tuning", "database")),
              ("kernels tuned", page.value("extra", "tuning", "kernels_tuned")),
              ("kernels looked up", page.value("extra", "tuning", "kernels_looked_up"))])
        for change in tuning.get("codegen_differences") or []:
            count += 1
            s.note(f"the records were tuned with other code-generation settings ({change}): "
                   "kernels they change have no records", "warn")
        if tuning.get("kernels_from_emulated"):
            count += 1
            s.note(f"{len(tuning['kernels_from_emulated'])} kernel(s) use records measured on an "
                   "emulated device: not hardware timings", "warn")
    if extra.get("random_weights"):
        count += 1
        s.note("random weights (--random-weights): the outputs are meaningless; verification "
               "only compares compilers", "warn")
    for message in d.get("warnings") or []:
        count += 1
        s.note(message, "warn")
    if not count:
        s.note("none: every block has a schedule and nothing was logged as a warning", "ok")
