"""``mmopt bench``: latency of a compiled model next to onnxruntime, same inputs and thread count."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import click
from rich.table import Table

from mmopt.cli.common import (err, html_option, import_options, input_shape_option, model_path,
                              out, shapes, write_html)

logger = logging.getLogger("mmopt")


@click.command("bench")
@click.argument("model")
@click.option("-t", "--target", default="x86", show_default=True,
              help="Target to compile MODEL for (ignored for an artifact).")
@input_shape_option
@click.option("--vs", "versus", type=click.Choice(["onnxruntime", "none"]), default="onnxruntime",
              show_default=True, help="Reference engine timed in the same run.")
@click.option("--ort-isa", type=click.Choice(["auto", "native", "avx2"]), default="auto",
              show_default=True,
              help="The CPU onnxruntime is shown. auto: the artifact's ISA (an x86-avx2 artifact "
                   "on an AVX-512 CPU is timed against onnxruntime's AVX2 kernels, AVX-512 hidden "
                   "from its process by CPUID faulting); native: this CPU's best ISA; avx2: AVX2 "
                   "whatever the artifact.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Threads for both engines.")
@click.option("--warmup", type=click.IntRange(0, 10_000), default=5, show_default=True)
@click.option("--repeat", type=click.IntRange(1, 100_000), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@html_option
@import_options
def bench_cmd(model, target, input_shapes, versus, ort_isa, threads, warmup, repeat, as_json,
              html_path):
    """Benchmark MODEL (compiled here, untuned) or a compiled ARTIFACT against onnxruntime.

    Reports latency min / median / p90, throughput and each engine's memory: the high-water mark
    of its own process's resident set (interpreter included), what stays resident after the runs,
    and for mmopt the storage its VM allocates per call. The ratio is mmopt / onnxruntime median
    latency (below 1: mmopt is faster). The ISA column: the artifact's target for mmopt (it runs
    that code), the best vector ISA its process saw for onnxruntime (it picks its kernels by it).
    """
    import mmopt
    from mmopt import ir as mir
    from mmopt import frontends
    from mmopt.runtime import is_artifact, read_meta
    from mmopt.runtime.bench import bench

    def model_is_artifact(path: str) -> bool:
        return not path.endswith(".onnx") and is_artifact(path)

    with tempfile.TemporaryDirectory(prefix="mmopt-bench-") as tmp:
        reference = None
        feeds = None
        if model_is_artifact(model):
            artifact = model
            meta = read_meta(model)
            source = Path(meta.source_model)
            # a dynamic artifact is timed at the shapes --input-shape gives (checked against its
            # ranges by the first call)
            given = shapes(input_shapes)
            concrete = {s.name: tuple(given.get(s.name, s.shape)) for s in meta.inputs}
            if meta.dynamic:
                from mmopt.runtime.inputs import random_feeds, with_shapes

                feeds = random_feeds(with_shapes(meta.inputs, given), 0)
                mmopt.load(artifact).function_for({k: v.shape for k, v in feeds.items()})
            if versus == "onnxruntime":
                if source.exists() and mir.sha256_of(source) == meta.source_sha256:
                    fixed = mir.prepare(frontends.to_onnx(source), concrete)
                    reference = Path(tmp) / "reference.onnx"
                    mir.save(fixed, reference)
                else:
                    logger.warning("source model %s of the artifact is not available (or changed); "
                                   "timing mmopt only", source)
        else:
            with err.status("compiling") as status:
                result = mmopt.compile(model_path(model), target, Path(tmp) / "model",
                                       input_shapes=shapes(input_shapes), verify=False,
                                       progress=lambda msg: status.update(msg))
            artifact = str(result.library)
            if versus == "onnxruntime":
                fixed = mir.prepare(frontends.to_onnx(model_path(model),
                                                            input_shapes=shapes(input_shapes)),
                                    {s.name: s.shape for s in result.meta.inputs})
                reference = Path(tmp) / "reference.onnx"
                mir.save(fixed, reference)
        # read while the artifact exists (a model given is compiled into ``tmp``)
        artifact_isa = str(read_meta(artifact).target.get("name", "?"))
        with err.status(f"timing ({repeat} runs, {threads} threads)"):
            res = bench(artifact, reference, feeds, threads=threads, warmup=warmup,
                        repeat=repeat, ort_isa=ort_isa)
        res.model = model  # as given (a model is compiled into a directory that is gone now)
    data = res.to_dict()
    if html_path:
        write_html(data, html_path, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(box=None, padding=(0, 2))
    for col in ("engine", "ISA", "threads", "min ms", "median ms", "p90 ms", "inf/s", "peak RSS MB",
                "RSS MB", "workspace MB"):
        table.add_column(col, justify="right" if col != "engine" else "left")
    for t in (res.mmopt, res.onnxruntime):
        if t is not None:
            if t is res.mmopt:
                isa = artifact_isa
            else:
                isa = (t.cpu_isa or "?") + (" (masked)" if t.cpu_mask else "")
            table.add_row(t.engine, isa, str(t.threads), f"{t.min_ms:.3f}", f"{t.median_ms:.3f}",
                          f"{t.p90_ms:.3f}", f"{t.throughput:.1f}", f"{t.peak_rss_mb:.0f}",
                          f"{t.rss_mb:.0f}" if t.rss_mb is not None else "n/a",
                          f"{t.workspace_mb:.1f}" if t.workspace_mb is not None else "n/a")
    out.print(table)
    for note in res.notes:
        out.print(f"note: {note}")
    if res.ratio is not None:
        verdict = "faster" if res.ratio < 1 else "slower"
        out.print(f"ratio mmopt/onnxruntime = {res.ratio:.2f} (mmopt is {verdict})")


command = bench_cmd
