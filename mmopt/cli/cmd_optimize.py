"""``mmopt optimize``: graph-level optimization of an ONNX model, written back as ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from mmopt.cli.common import import_options, input_shape_option, model_path, out, shapes


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


@click.command("optimize")
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the optimized ONNX model (required).")
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=None,
              help="Optimization level: 0 import only, 1 simplify, 2 + fusions and eliminations, "
                   "3 + layout.  [default: 2; 3 with --layout]")
@click.option("--passes", "passes", metavar="A,B,...",
              help="Run exactly these passes, in this order, instead of a level's list.")
@click.option("--disable", "disable", multiple=True, metavar="NAME[,NAME]",
              help="Skip these passes (repeatable).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"], case_sensitive=False),
              help="nhwc: 4-D image inputs/outputs become NHWC, one Transpose at each boundary (-O3).")
@click.option("--list-passes", is_flag=True, help="List the passes of each level and exit.")
@input_shape_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Also write the report (per-pass rule counts, op histograms) as JSON.")
@import_options
def optimize_cmd(model, output, opt_level, passes, disable, layout, list_passes, input_shapes,
                 report_path):
    """Optimize MODEL at the graph level and write the result as ONNX."""
    from mmopt import ir as mir
    from mmopt.passes import pipeline

    if list_passes:
        for level, names in pipeline.LEVELS.items():
            out.print(f"-O{level}: {', '.join(names) or '(none)'}")
        layouts = ", ".join(f"{k} ({v or 'no pass'})" for k, v in pipeline.LAYOUT_PASSES.items())
        out.print(f"layouts: {layouts}")
        return
    if model is None or output is None:
        raise click.UsageError("MODEL and -o/--output are required")
    if opt_level is None:
        opt_level = 3 if layout and layout.lower() != "nchw" else pipeline.DEFAULT_LEVEL
    disabled = [n for text in disable for n in _names(text)]
    # Validate the pass selection before loading the model.
    pipeline.resolve(opt_level, _names(passes), disabled, layout)
    import mmopt

    optimized, report = mmopt.optimize(model_path(model), None, input_shapes=shapes(input_shapes),
                                       opt_level=opt_level, passes=_names(passes), disable=disabled,
                                       layout=layout)
    mir.save(optimized, output)
    if report_path:
        Path(report_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    _print_report(report)
    out.print(f"nodes {report.nodes_before} -> {report.nodes_after}; wrote {output}")


def _print_report(report) -> None:
    table = Table(box=None, padding=(0, 2))
    for col in ("pass", "modified", "nodes", "seconds", "rules fired"):
        table.add_column(col)
    for p in report.passes:
        rules = ", ".join(f"{name} x{count}" for name, count in p.rules.items())
        table.add_row(p.name, "yes" if p.modified else "-", f"{p.nodes_before} -> {p.nodes_after}",
                      f"{p.seconds:.3f}", rules)
    out.print(table)
    ops = Table(box=None, padding=(0, 2))
    for col in ("op", "before", "after"):
        ops.add_column(col, justify="left" if col == "op" else "right")
    names = list(report.ops_before) + [k for k in report.ops_after if k not in report.ops_before]
    for name in names:
        before, after = report.ops_before.get(name, 0), report.ops_after.get(name, 0)
        ops.add_row(name, str(before), str(after) if after != before else "=")
    out.print(ops)


command = optimize_cmd
