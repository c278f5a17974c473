"""``mmopt import``: convert a model from another framework (Caffe, PyTorch, TF...) to ONNX."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mmopt.cli.common import input_shape_option, out, shapes


@click.command("import")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the ONNX model. [default: MODEL's stem + .onnx]")
@click.option("--framework", help="Skip detection: onnx, caffe, torch, tensorflow or tflite.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="Caffe: the .caffemodel. [default: the one beside the prototxt]")
@click.option("--random-weights", is_flag=True,
              help="Caffe: use seeded random weights (without it, a prototxt with no .caffemodel "
                   "is an error); recorded in the model's metadata.")
@click.option("--inputs", "tf_inputs", metavar="NAME[,NAME...]",
              help="Frozen TensorFlow GraphDef: the input tensors. [default: the Placeholders]")
@click.option("--outputs", "tf_outputs", metavar="NAME[,NAME...]",
              help="Frozen TensorFlow GraphDef: the output tensors. [default: the ops nothing "
                   "consumes]")
@input_shape_option
@click.option("--dynamic-batch", is_flag=True, help="TorchScript: make dim 0 of inputs symbolic.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the source framework (PyTorch, TensorFlow, the TFLite interpreter; OpenCV "
                   "for Caffe) and onnxruntime on the same random inputs and compare.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Verification abs tolerance.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Verification rel tolerance.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the verification inputs (and of Caffe random weights).")
def import_cmd(model, output, framework, weights, random_weights, tf_inputs, tf_outputs, input_shapes,
               dynamic_batch, verify, atol, rtol, seed):
    """Convert MODEL to ONNX, detecting its framework by extension and content.

    \b
    Caffe:   deploy.prototxt (+ .caffemodel beside it or --weights)
    PyTorch: .pt2 (torch.export.save) or a TorchScript archive (torch.jit.save)
    TensorFlow: a SavedModel directory, Keras .keras/.h5, a frozen GraphDef .pb
    TFLite:  .tflite
    Pickled PyTorch files (torch.save) are refused: mmopt never unpickles; Keras
    files are loaded with safe_mode.
    """
    from mmopt import frontends
    from mmopt import ir as mir

    kind = framework or frontends.detect(model)
    options = {"input_shapes": shapes(input_shapes) or None, "weights": weights,
               "random_weights": random_weights or None, "dynamic_batch": dynamic_batch or None,
               "inputs": tf_inputs, "outputs": tf_outputs,
               "seed": seed if kind == "caffe" else None}
    proto = frontends.to_onnx(model, framework=kind, **options)
    path = Path(output or Path(model).with_suffix(".onnx").name)  # a SavedModel dir: DIR.onnx
    if path.resolve() == Path(model).resolve():
        path = path.with_name(path.stem + ".imported.onnx")
    mir.save(proto, path)
    out.print(f"[bold]imported[/] {escape(str(model))} ({kind}) -> {escape(str(path))}: "
              f"{len(proto.graph.node)} nodes, "
              f"opset {mir.opset_of(proto)}")
    if frontends.has_random_weights(proto):
        out.print(f"  [yellow]weights[/] random (--random-weights, seed {seed}): the outputs are "
                  "meaningless")
    for kind_, values in (("input", mir.graph_inputs(proto)), ("output", proto.graph.output)):
        for v in values:
            dims = ",".join("?" if d is None else str(d) for d in mir.dims_of(v))
            out.print(f"  {kind_:<7} {escape(v.name)}  {mir.dtype_of(v)}" + escape(f"[{dims}]"))
    if not verify or kind == "onnx":
        return
    report = frontends.verify(model, proto, seed=seed, input_shapes=shapes(input_shapes),
                              atol=atol, rtol=rtol,
                              **{k: v for k, v in options.items() if k not in ("input_shapes", "seed")})
    if report is None:
        out.print("  verify   [yellow]skipped[/] (see the warning above)")
        return
    table = Table(box=None, padding=(0, 2))
    for col in ("output", "shape", "max abs err", "max rel err", "status"):
        table.add_column(col)
    for o in report.outputs:
        table.add_row(o.name, str(o.shape), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}",
                      "[green]ok[/]" if o.passed else "[red]MISMATCH[/]")
    reference = {"caffe": "OpenCV", "tflite": "the TFLite interpreter"}.get(kind, kind)
    verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
    out.print(f"  verify   {verdict} onnxruntime vs {reference} (atol {atol:g}, rtol {rtol:g}, "
              f"seed {seed})")
    out.print(table)
    if not report.passed:
        sys.exit(1)


command = import_cmd
