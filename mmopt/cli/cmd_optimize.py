"""``mmopt optimize``: graph-level optimization of an ONNX model, written back as ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from mmopt.cli.common import input_shape_option, model_path, out, shapes


@click.command("optimize")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the optimized ONNX model.")
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=2, show_default=True,
              help="Optimization level.")
@input_shape_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Also write the per-pass report as JSON.")
def optimize_cmd(model, output, opt_level, input_shapes, report_path):
    """Optimize MODEL at the graph level and write the result as ONNX."""
    import mmopt

    optimized, report = mmopt.optimize(model_path(model), None, input_shapes=shapes(input_shapes),
                                       opt_level=opt_level)
    from mmopt import ir as mir

    mir.save(optimized, output)
    if report_path:
        Path(report_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    table = Table(box=None, padding=(0, 2))
    for col in ("pass", "modified", "nodes", "seconds"):
        table.add_column(col)
    for p in report.passes:
        table.add_row(p.name, "yes" if p.modified else "-", f"{p.nodes_before} -> {p.nodes_after}",
                      f"{p.seconds:.3f}")
    out.print(table)
    out.print(f"nodes {report.nodes_before} -> {report.nodes_after}; wrote {output}")


command = optimize_cmd
