"""``mmopt profile``: where a compiled model's time goes, kernel by kernel, against the FMA peak."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from mmopt.cli.common import (codegen_from, codegen_options, err, html_option, input_shape_option,
                              model_path, out, shapes, write_html)


def _nodes_cell(kernel) -> str:
    from mmopt.runtime.profile import describe_nodes

    return describe_nodes(kernel.mapping, kernel.onnx_nodes, kernel.onnx_ops, kernel.onnx_value)


def _number(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def kernel_table(result, top: int | None = None) -> Table:
    """The profile as a rich table: kernels by time, then the time between kernels and the
    total (rows the JSON's ``kernels``, ``between_ms`` and ``total_median_ms`` hold). One line per
    kernel: every column keeps its width except the ONNX nodes, which are cut to fit."""
    peak = result.peak_gflops
    title = (f"{result.target}, {result.threads} thread(s), median of {result.runs} runs; "
             + (f"FMA peak {peak:.1f} GFLOP/s" if peak else "no FMA peak"))
    kernels = result.sorted_kernels()
    shown = kernels[:top] if top else kernels
    rows = [[str(k.index), k.name, _nodes_cell(k),
             " ".join("x".join(map(str, s)) for s in k.output_shapes),
             f"{k.median_ms:.3f}", f"{k.min_ms:.3f}", f"{k.percent:.1f}",
             _number(k.flops / 1e9 if k.flops else None, ".3f"),
             _number(k.gflops_per_s, ".1f"), _number(k.peak_percent, ".1f")] for k in shown]
    if len(shown) < len(kernels):
        rest = kernels[len(shown):]
        rows.append(["", f"({len(rest)} more kernels)", "", "",
                     f"{sum(k.median_ms for k in rest):.3f}", "",
                     f"{sum(k.percent for k in rest):.1f}", "", "", ""])
    rows.append(["", "(between kernels)", "", "", f"{result.between_ms:.3f}", "",
                 f"{result.between_percent:.1f}", "", "", ""])
    rows.append(["", "total", "", "", f"{result.total_median_ms:.3f}",
                 f"{result.total_min_ms:.3f}", "100.0", "", "", ""])
    headers = ["#", "kernel", "ONNX nodes", "output", "ms", "min ms", "%", "GFLOP", "GFLOP/s",
               "% peak"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fixed = sum(w for i, w in enumerate(widths) if i != 2) + 2 * len(headers)
    table = Table(title=title, box=None, padding=(0, 1), title_justify="left")
    for i, header in enumerate(headers):
        if i == 2:
            room = max(12, (out.width or 140) - fixed)
            table.add_column(header, no_wrap=True, overflow="ellipsis",
                             max_width=min(widths[i], room))
        else:
            table.add_column(header, justify="left" if i in (1, 3) else "right", no_wrap=True,
                             min_width=widths[i])
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def ops_table(result) -> Table:
    """The kernels' time by ONNX op type (:mod:`mmopt.runtime.profile_ops`); with onnxruntime's
    profile, its time per op type beside mmopt's and their ratio (rows the JSON's ``ops`` and
    ``ops_vs_onnxruntime`` hold)."""
    table = Table(box=None, padding=(0, 1))
    paired = result.ops_vs_onnxruntime is not None
    columns = (["op", "kernels", "ms", "%"] if not paired else
               ["op", "mmopt kernels", "mmopt ms", "onnxruntime nodes", "onnxruntime ms",
                "mmopt/onnxruntime"])
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    ort = result.onnxruntime
    if not paired:
        for op in result.ops:
            table.add_row(Text(op.op_type), str(op.calls), f"{op.median_ms:.3f}",
                          f"{op.percent:.1f}")
        table.add_row("(between kernels)", "", f"{result.between_ms:.3f}",
                      f"{result.between_percent:.1f}")
        table.add_row("total", "", f"{result.total_median_ms:.3f}", "100.0")
        return table
    for row in result.ops_vs_onnxruntime:
        names = [n for n in dict.fromkeys(row["mmopt_ops"] + row["onnxruntime_ops"])
                 if n != row["op_type"]]
        table.add_row(Text(row["op_type"] + (f" ({', '.join(names)})" if names else "")),
                      _number(row["mmopt_calls"], "d"), _number(row["mmopt_ms"], ".3f"),
                      _number(row["onnxruntime_nodes"], "d"),
                      _number(row["onnxruntime_ms"], ".3f"), _number(row["ratio"], ".2f"))
    table.add_row("(between kernels / ops)", "", f"{result.between_ms:.3f}", "",
                  f"{ort['between_ms']:.3f}", "")
    total = ort["total_median_ms"]
    table.add_row("total", "", f"{result.total_median_ms:.3f}", "", f"{total:.3f}",
                  _number(result.total_median_ms / total if total else None, ".2f"))
    return table


def _refuse_overwriting_inputs(model: str, json_path) -> None:
    """Bad input, before anything runs: a --json file that is the model itself, a file of the
    artifact being profiled or the artifact's source model (``--json NAME.json`` beside
    ``NAME.so`` would replace the artifact's description with the profile; --html takes only
    ``.html`` files, :func:`mmopt.cli.common.html_file`)."""
    from mmopt.errors import MmoptError
    from mmopt.runtime.artifact import artifact_paths, is_artifact, read_meta

    inputs = {Path(model).resolve()}
    if not model.endswith(".onnx") and is_artifact(model):
        inputs |= {p.resolve() for p in artifact_paths(model)}
        with contextlib.suppress(MmoptError):  # a broken description is reported later
            inputs.add(Path(read_meta(model).source_model).resolve())
    if json_path and Path(json_path).resolve() in inputs:
        raise MmoptError(f"{json_path}: is the model or a file of the artifact being profiled; "
                         "write the profile to another file")


@click.command("profile")
@click.argument("model")
@click.option("-t", "--target", default="x86", show_default=True,
              help="Target to compile MODEL for (an artifact keeps its own); it must run here.")
@input_shape_option
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Threads for mmopt (and onnxruntime with --vs).")
@click.option("--runs", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Timed runs (medians and minimums over them).")
@click.option("--warmup", type=click.IntRange(0, 10_000), default=3, show_default=True)
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=2, show_default=True,
              help="Graph optimization level, as for compile.")
@codegen_options
@click.option("--db", type=click.Path(file_okay=False), default=None,
              help="Tuning database to compile with (as for compile).")
@click.option("--vs", "versus", type=click.Choice(["onnxruntime", "none"]), default="none",
              show_default=True,
              help="Also profile onnxruntime (same inputs, same threads) and show its time "
                   "per op type beside mmopt's.")
@click.option("--top", type=click.IntRange(1, 100_000), default=None,
              help="Show only the slowest N kernels (the JSON has all).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write everything (kernels, machine, peak, onnxruntime) to this JSON file.")
@html_option
def profile_cmd(model, target, input_shapes, threads, runs, warmup, opt_level, winograd,
                pack_weights, layout, db, versus, top, json_path, html_path):
    """Profile MODEL (compiled here) or a compiled ARTIFACT kernel by kernel.

    Per kernel: the ONNX nodes it computes, output shape, median and min ms, % of the total,
    GFLOP (TIR contractions), GFLOP/s and % of this machine's FMA peak for the target's ISA;
    then the time between kernels and the total latency. Sorted by time. Then the time by ONNX
    op type (a fused kernel under the op that carries its work), beside onnxruntime's with --vs
    onnxruntime. An artifact with symbolic dims (--dim) is profiled at the shapes --input-shape
    gives.
    """
    from mmopt.api import profile

    _refuse_overwriting_inputs(model_path(model), json_path)

    def run(status):
        return profile(model_path(model), target, input_shapes=shapes(input_shapes),
                       threads=threads, runs=runs, warmup=warmup, opt_level=opt_level, db=db,
                       codegen=codegen_from(winograd, pack_weights, layout),
                       versus=None if versus == "none" else versus,
                       progress=lambda msg: status.update(msg))

    with err.status("profiling") as status:
        result = run(status)
    data = result.to_dict()
    if json_path:
        path = Path(json_path)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    machine = result.machine
    out.print(f"[bold]profile[/] {result.model} ({result.artifact})")
    out.print(f"  cpu       {machine['cpu_model']}, {machine['cpu_count']} cores, load average "
              f"{machine['load_average']}")
    out.print(kernel_table(result, top))
    out.print(f"  kernels   {len(result.kernels)} calls, {result.kernel_sum_ms:.3f} ms; between "
              f"kernels {result.between_ms:.3f} ms ({result.between_percent:.1f}%)"
              + (f"; VM workspace {result.workspace_bytes / 2**20:.1f} MB"
                 if result.workspace_bytes is not None else "")
              + f"; instrument cost {result.instrument_overhead_us:.1f} us/call (subtracted)")
    out.print(f"  FLOPs     {result.flops_source}")
    out.print(f"  nodes     {result.mapping_source}")
    if result.peak:
        p = result.peak
        out.print(f"  peak      {p['gflops']:.1f} GFLOP/s ({p['instruction']}, {p['chains']} "
                  f"chains x {p['lanes']} lanes, {p['threads']} thread(s), implies "
                  f"{p['implied_ghz']:.2f} GHz per FMA unit"
                  + (f"; threads held {100 * p['cpu_share']:.0f}% of their cores"
                     if p.get("cpu_share", 1) < 0.9 else "") + ")")
    for note in result.notes:
        out.print(f"  [yellow]note[/]      {note}")
    if result.onnxruntime:
        ort = result.onnxruntime
        isa = f"{ort.get('cpu_isa') or '?'} kernels"
        if ort.get("cpu_mask"):
            isa += ", AVX-512 hidden from its process"
        out.print(f"by op type, against onnxruntime ({isa}, {ort['threads']} thread(s), median "
                  f"of {ort['runs']} runs; a fused kernel or node counts under the op that "
                  "carries its work, e.g. Conv+Relu as Conv)")
        out.print(ops_table(result))
        out.print(f"  ratio     mmopt/onnxruntime = "
                  f"{result.total_median_ms / ort['total_median_ms']:.2f} (medians)"
                  if ort["total_median_ms"] else "")
    elif result.ops:
        out.print("by op type (a fused kernel counts under the op that carries its work, e.g. "
                  "Conv+Relu as Conv)")
        out.print(ops_table(result))
    if json_path:
        out.print(f"wrote {json_path}")
    if html_path:
        write_html(data, html_path)


command = profile_cmd
