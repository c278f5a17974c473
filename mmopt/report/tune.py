"""The tune report (``mmopt tune --json``): whether tuning is still improving -- each task's best
time against its trials, the model's estimated latency against all trials -- what it gained per
kernel (default schedule vs best record), the model timed both ways, and where it was measured."""

from __future__ import annotations

from mmopt.report.charts import COLORS, figure, height_for, hover
from mmopt.report.page import Page, badge


def build(page: Page) -> None:
    d = page.data
    page.title = f"mmopt tune: {d.get('model', '?')} for {d.get('target', '?')}"
    page.subtitle = (f"database {d.get('database')} ({d.get('sub_database')}), "
                     f"search {d.get('search')}")
    stopped = d.get("stopped")
    page.verdict = badge(stopped is None or stopped == "time budget reached",
                         "complete" if stopped is None else "stopped: " + str(stopped),
                         "stopped: " + str(stopped))
    _summary(page)
    _model(page)
    _tasks(page)


def _summary(page: Page) -> None:
    d = page.data
    s = page.section("Run and devices", "summary")
    s.kv([("model", page.value("model")), ("target", page.value("target")),
          ("measured on", page.value("runner")), ("device key", page.value("key")),
          ("emulated devices", page.value("emulated")),
          ("threads per measurement", page.value("num_cores")),
          ("search", page.value("search")), ("tasks", str(len(d.get("tasks") or []))),
          ("trials planned", page.value("planned")), ("trials measured", page.value("trials")),
          ("records for these tasks", page.value("records")),
          ("elapsed", page.value("elapsed_s", spec=".1f", unit=" s")),
          ("stopped", page.value("stopped")), ("database", page.value("database")),
          ("database part", page.value("sub_database"))])
    for note in d.get("notes") or []:
        s.note(note, "warn")
    if d.get("emulated"):
        s.note("measured on an emulated device: not hardware timings; `mmopt compile --db` applies "
               "these records only with --allow-emulated-records", "warn")


def _model(page: Page) -> None:
    d = page.data
    s = page.section("Whole model", "model")
    latency = d.get("latency")
    if latency:
        s.kv([("default schedules", page.value("latency", "default_ms", spec=".4f", unit=" ms")),
              ("with the records", page.value("latency", "tuned_ms", spec=".4f", unit=" ms")),
              ("speed-up", page.value("latency", "speedup", spec=".3f", unit="x")),
              ("tasks tuned", f"{latency['tasks_tuned']} of {latency['tasks_total']}"),
              ("timed on", page.value("latency", "where"))])
        fig = figure(height=220, showlegend=False, xaxis_title="ms per inference",
                     title="the model timed with default schedules and with the records")
        fig.add_bar(orientation="h", y=["default schedules", "tuned"],
                    x=[latency["default_ms"], latency["tuned_ms"]],
                    marker_color=[COLORS["default"], COLORS["tuned"]],
                    hovertemplate=hover("%{y}: %{x:.4f} ms"))
        s.chart(fig, "model-latency")
    else:
        s.note("The model was not timed both ways (--no-compare, a dry run, or the run stopped).")
    history = d.get("history") or []
    if history:
        total = len(d.get("tasks") or [])
        fig = figure(height=340, showlegend=False, xaxis_title="trials in this run",
                     yaxis={"title": "sum of weight x best kernel time (ms)",
                            "rangemode": "tozero"},
                     title="estimated model latency as tuning went")
        fig.add_scatter(x=[h["trials"] for h in history], y=[h["latency_s"] * 1e3 for h in history],
                        mode="lines+markers", line={"shape": "hv", "color": COLORS["tuned"]},
                        customdata=[[h["tasks"], total, h["elapsed_s"]] for h in history],
                        hovertemplate=hover("%{x} trials, %{customdata[2]:.0f} s",
                                            "%{y:.4f} ms (%{customdata[0]} of %{customdata[1]} "
                                            "tasks timed)"))
        s.chart(fig, "model-history")
        if any(h["tasks"] < total for h in history):
            s.note("Points where not every task had a time yet sum fewer kernels (see the hover).")


def _tasks(page: Page) -> None:
    d = page.data
    tasks = d.get("tasks") or []
    s = page.section("Tasks (kernels)", "tasks")
    if not tasks:
        s.note("no tasks")
        return
    searched = [t for t in tasks if len(t.get("history") or []) > 1]
    if searched:
        fig = figure(height=420, xaxis_title="trials (records of the task)",
                     yaxis={"title": "best time (us)", "type": "log"},
                     title="best time against trials, per task")
        for t in searched:
            fig.add_scatter(name=t["name"], x=[p[0] for p in t["history"]],
                            y=[p[1] * 1e6 for p in t["history"]], mode="lines+markers",
                            line={"shape": "hv"},
                            hovertemplate=hover(f"<b>{t['name']}</b>", "%{x} trials: %{y:.2f} us"))
        s.chart(fig, "task-history")
    else:
        s.note("No task was searched in this run (every task already had its records, or only "
               "the baselines were measured).")
    timed = [t for t in tasks if t.get("default_s") is not None and t.get("best_s") is not None]
    order = sorted(timed, key=lambda t: -t["weight"] * t["default_s"])
    if order:
        names = [t["name"] for t in order]
        fig = figure(height=height_for(2 * len(order)), barmode="group",
                     xaxis_title="us per call", yaxis={"autorange": "reversed",
                                                       "automargin": True},
                     title="default schedule vs best record, per kernel (slowest first)")
        fig.add_bar(name="default", orientation="h", y=names,
                    x=[t["default_s"] * 1e6 for t in order], marker_color=COLORS["default"],
                    hovertemplate=hover("<b>%{y}</b>", "default %{x:.2f} us"))
        fig.add_bar(name="tuned", orientation="h", y=names, x=[t["best_s"] * 1e6 for t in order],
                    marker_color=COLORS["tuned"],
                    hovertemplate=hover("<b>%{y}</b>", "best %{x:.2f} us"))
        s.chart(fig, "task-default-vs-tuned")
    s.table(["task", "weight", "trials before", "trials now", "errors", "default us", "best us",
             "speed-up", "state"],
            ([page.value("tasks", i, "name"), page.value("tasks", i, "weight"),
              page.value("tasks", i, "trials_before"), page.value("tasks", i, "trials"),
              page.value("tasks", i, "errors"),
              page.value("tasks", i, "default_s", spec=".2f", scale=1e6),
              page.value("tasks", i, "best_s", spec=".2f", scale=1e6),
              (f"{t['default_s'] / t['best_s']:.2f}x" if t.get("default_s") and t.get("best_s")
               else "-"),
              "space exhausted" if t.get("exhausted") else
              ("planned " + str(t.get("planned")) if t.get("planned") else "done before")]
             for i, t in enumerate(tasks)), name="tasks")
