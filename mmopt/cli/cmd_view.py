"""``mmopt view``: the optimized graph in Netron, each node with its fused kernel and time."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from mmopt.cli.common import err, input_shape_option, model_path, out, shapes, shown_path


@click.command("view")
@click.argument("source", metavar="MODEL|ARTIFACT|REPORT.json")
@click.option("-t", "--target", default="x86", show_default=True,
              help="Target to compile MODEL for when profiling it (an artifact keeps its own).")
@input_shape_option
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=None,
              help="Graph optimization level for MODEL, as for compile. [default: 2]")
@click.option("--profile/--no-profile", default=None,
              help="Time the kernels now to annotate the nodes (a MODEL is compiled for --target "
                   "first). [default: when the target runs here; a report uses its own profile]")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Threads for the profile.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port on 127.0.0.1. [default: a free one]")
@click.option("--no-browser", is_flag=True,
              help="Only serve and print the URL (CI, remote shells); do not open a browser.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE.onnx",
              help="Also keep the annotated graph in this ONNX file.")
def view_cmd(source, target, input_shapes, opt_level, profile, threads, port, no_browser, output):
    """Open the optimized graph of SOURCE in Netron, served on a loopback port until Ctrl-C.

    Each node a kernel computes carries that kernel's name, its time and share of the inference
    and the other ONNX nodes fused into it (node properties mmopt.kernel, mmopt.kernel_ms,
    mmopt.kernel_percent, mmopt.fused_with; also in its description). SOURCE: a model file or
    zoo:NAME, a compiled artifact, or a saved compile/profile report (its profile is used, nothing
    runs).
    """
    from mmopt.report.netron import annotated_model, served, view_of

    with err.status("preparing the graph") as status:
        view = view_of(model_path(source), target=target, input_shapes=shapes(input_shapes),
                       opt_level=opt_level, profile=profile, threads=threads,
                       progress=lambda msg: status.update(msg))
    model, annotated = annotated_model(view)
    name = Path(source).stem or "model"
    # SIGTERM (a CI job ending, `kill`) stops the server as Ctrl-C does. Ctrl-C itself is armed
    # explicitly: a process started with SIGINT ignored (a background job of a script, a test
    # runner's worker) inherits that, and Python then never raises KeyboardInterrupt: the server
    # ran on after Ctrl-C (the view test hung in full test runs, its stack in this loop).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with served(model, name, port=port, browse=not no_browser, keep=output) as url:
        # one line, however long the path (scripts and tests read it)
        out.print(f"graph: {shown_path(view.source)}, {len(model.graph.node)} nodes"
                  + (f", {annotated} annotated with their kernel and time" if view.profile
                     else f"; no kernel times ({view.no_profile})"), soft_wrap=True)
        if output:
            out.print(f"wrote {output}")
        out.print(f"Netron: {url}  (Ctrl-C stops)", soft_wrap=True)
        sys.stdout.flush()
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    out.print("stopped")
    # Nothing is left to do, and the interpreter's teardown can wait on what third-party
    # libraries left running (a request thread on a browser's idle connection): end the
    # process here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


command = view_cmd
