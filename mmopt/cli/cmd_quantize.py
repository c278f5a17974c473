"""``mmopt quantize``: int8 QDQ (calibrated, optionally accuracy-aware), fp16, or weight-only int8."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmopt.cli.common import (err, html_option, import_options, input_shape_option, model_path,
                              out, shapes, write_html)
from mmopt.errors import MmoptError
from mmopt.quantize.calibrate import DEFAULT_PERCENTILE, METHODS
from mmopt.quantize.evaluate import METRICS
from mmopt.quantize.pipeline import DEFAULT_ACTIVATIONS, DEFAULT_METHOD, DTYPES, PREFER
from mmopt.quantize.qdq import ACTIVATION_TYPES
from mmopt.quantize.evaluate import ENGINES, describe_engine
from mmopt.runtime.ort import DEFAULT_ENGINE

_STAGES = {"calibrate": "calibrating", "sensitivity": "ranking layers",
           "fallback": "keeping layers in float",
           "latency": "profiling float, int8, mixed"}


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise MmoptError(f"{option} {text!r}: expected numbers separated by commas") from None


def _dims(text: str | None, option: str):
    if text is None:
        return None
    try:
        values = [int(v) for v in text.lower().replace("x", ",").split(",") if v]
    except ValueError:
        raise MmoptError(f"{option} {text!r}: expected N or HxW") from None
    if not values or len(values) > 2 or min(values) <= 0:
        raise MmoptError(f"{option} {text!r}: expected N or HxW with positive sizes")
    return values[0] if len(values) == 1 else tuple(values)


@click.command("quantize")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the quantized ONNX model.")
@click.option("--calib", "calib", metavar="DATA",
              help="Calibration data: .npz/.npy (keyed by input name), or a directory of images "
                   "(with the preprocessing options) or of .npy/.npz files.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="Activation range calibration.")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Percentile of |x| for --method percentile.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Weight scales per output channel or one per tensor.")
@click.option("--activations", type=click.Choice(list(ACTIVATION_TYPES)),
              default=DEFAULT_ACTIVATIONS, show_default=True,
              help="uint8 asymmetric or int8 symmetric activations.")
@click.option("--weight-bits", type=click.Choice(["8", "7"]), default="8", show_default=True,
              help="Weight grid: 8 = [-127, 127]; 7 = [-64, 64] (onnxruntime's reduce_range): "
                   "exact, about 2x faster int8 convolutions on x86 CPUs without VNNI "
                   "(x86-avx2), for one bit of weight precision.")
@click.option("--exclude", multiple=True, metavar="NAME|OPTYPE",
              help="Keep a node (by name) or every node of an op type in float (repeatable).")
@click.option("--samples", type=click.IntRange(min=1), help="Use at most N calibration samples.")
@click.option("--dtype", type=click.Choice(DTYPES), default=DTYPES[0], show_default=True,
              help="int8 QDQ, or fp16 with sensitive ops (Softmax, reductions, ...) kept in fp32.")
@click.option("--weight-only", is_flag=True,
              help="int8 MatMul/Gemm weights only, float activations; needs no calibration data.")
@click.option("--preprocess", "preprocess_file", type=click.Path(dir_okay=False),
              help="TOML file with image preprocessing (resize, crop, mean, std, scale, "
                   "channel_order, layout).")
@click.option("--resize", help="Images: shorter side N, or HxW.")
@click.option("--crop", help="Images: centre crop N or HxW.")
@click.option("--mean", help="Images: per-channel mean after scaling, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Images: per-channel std, e.g. 0.229,0.224,0.225.")
@click.option("--scale", type=float, help="Images: multiply pixels by this first [default: 1/255].")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"], case_sensitive=False))
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False))
@click.option("--eval", "eval_data", metavar="DATA",
              help="Evaluation data (same formats; .npz 'labels' or image class folders give "
                   "labels): report the drop against the float model.")
@click.option("--eval-samples", type=click.IntRange(min=1), help="Use at most N eval samples.")
@click.option("--metric", type=click.Choice(METRICS),
              help="Drop measured as: top1 accuracy points (agreement without labels); cosine "
                   "100*(1-cos); snr noise energy in % of signal. [default: top1 with labels, "
                   "else cosine]")
@click.option("--max-drop", metavar="X",
              help="Accuracy-aware mode: keep the fewest layers in float until the drop (see "
                   "--metric) is at most X: 0.5% is half a percentage point; a bare number below "
                   "1 is a fraction (0.005 = 0.5%); a bare number >= 1 is refused (write 1%). "
                   "Same reading as `mmopt check --max-drop`. Needs --eval.")
@click.option("--eval-engine", type=click.Choice(list(ENGINES)), default=DEFAULT_ENGINE,
              show_default=True,
              help="How --eval runs the models: reference = onnxruntime with graph optimizations "
                   "off (QDQ as dequantize -> float op -> quantize, the same on every CPU, what "
                   "mmopt's int8 kernels compute); onnxruntime = its default optimizations (fused "
                   "int8 kernels, CPU-dependent; for models shipped on onnxruntime); artifact = "
                   "each candidate compiled with mmopt for --target and run here (what is "
                   "deployed; one compile per candidate).")
@click.option("--prefer", type=click.Choice(list(PREFER)), default=PREFER[0], show_default=True,
              help="accuracy = every quantizable layer int8 (unless --max-drop needs it float); "
                   "speed = also compile the float and the int8 model for --target, profile "
                   "them here kernel by kernel, and keep in float the convolutions/matmuls whose "
                   "int8 kernel measured over 10% slower, when that makes the whole model faster "
                   "(the report lists every layer's two times).")
@click.option("--share-concat-scales/--own-concat-scales", default=True, show_default=True,
              help="int8: give a concatenation and its inputs one range (their union) where no "
                   "input's quantization step grows over 4x, so the compiled concatenation "
                   "copies bytes instead of requantizing (as TFLite's int8 format requires).")
@click.option("-t", "--target", default="x86", show_default=True,
              help="Target --eval-engine artifact and --prefer speed compile for (it must run on "
                   "this machine).")
@input_shape_option
@click.option("--per-layer/--no-per-layer", "per_layer", default=None,
              help="Compare every tensor of the float and the quantized model on the first "
                   "samples of --eval (else --calib) and name the first layer where the error "
                   "jumps (as `mmopt check --per-layer`). [default: on with --html]")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Also write the report as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@html_option
@import_options
def quantize_cmd(model, output, calib, method, percentile, per_channel, activations, weight_bits,
                 exclude,
                 samples, dtype, weight_only, preprocess_file, resize, crop, mean, std, scale,
                 channel_order, layout, eval_data, eval_samples, metric, max_drop, eval_engine,
                 prefer, share_concat_scales, target, input_shapes, per_layer, report_path,
                 as_json, html_path):
    """Quantize MODEL and write the result as ONNX (QDQ int8 by default).

    \b
    Examples:
      mmopt quantize model.onnx -o model.int8.onnx --calib calib.npz
      mmopt quantize model.onnx -o q.onnx --calib images/ --resize 256 --crop 224 \\
          --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --method entropy
      mmopt quantize model.onnx -o q.onnx --calib calib.npz --eval val.npz --max-drop 0.5%
      mmopt quantize model.onnx -o model.fp16.onnx --dtype fp16
    """
    from mmopt import ir as mir
    from mmopt.quantize import Preprocess, quantize

    preprocess = Preprocess.from_toml(preprocess_file) if preprocess_file else Preprocess()
    preprocess = preprocess.updated(
        where="image options", resize=_dims(resize, "--resize"), crop=_dims(crop, "--crop"),
        mean=_floats(mean, "--mean"), std=_floats(std, "--std"), scale=scale,
        channel_order=channel_order, layout=layout)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=as_json) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total):
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        qmodel, report = quantize(
            model_path(model), calib, method=method, per_channel=per_channel,
            activations=activations, weight_bits=int(weight_bits), exclude=exclude,
            samples=samples, percentile=percentile,
            dtype=dtype, weight_only=weight_only, preprocess=preprocess,
            input_shapes=shapes(input_shapes), eval_data=eval_data, eval_samples=eval_samples,
            metric=metric, max_drop=max_drop, eval_engine=eval_engine, target=target,
            prefer=prefer, share_concat_scales=share_concat_scales,
            per_layer=bool(html_path) if per_layer is None else per_layer, progress=progress)
    mir.save(qmodel, output)
    data = {"output": str(output), **report.to_dict()}
    if report_path:
        Path(report_path).write_text(json.dumps(data, indent=2) + "\n")
    if html_path:
        write_html(data, html_path, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(data))
    else:
        _print(report, output)
    aa = report.accuracy_aware
    if aa is not None and not aa.met:
        raise SystemExit(1)


def _print(report, output) -> None:
    if report.dtype == "fp16":
        kind = "fp16"
    elif report.weight_only:
        kind = "int8 weight-only"
    else:
        kind = (f"int8 QDQ ({report.method}, {'per-channel' if report.per_channel else 'per-tensor'}"
                f" {report.weight_bits or 8}-bit weights, {report.activations} activations)")
    out.print(f"[bold]quantized[/] -> {output}: {kind}")
    if report.samples:
        out.print(f"  calibration  {report.samples} samples in {report.batches} batches, "
                  f"{report.tensors_calibrated} tensors, summaries "
                  f"{report.calibration_bytes / 1024:.0f} KiB")
    if report.excluded:
        out.print(f"  excluded     {', '.join(report.excluded)}")
    if report.details.get("float_concats"):
        out.print(f"  concat float {', '.join(report.details['float_concats'])} (inputs' ranges "
                  "differ over 4x and only float nodes read the output: quantizing it would lose "
                  "the narrow inputs' precision)", markup=False)
    shared = report.shared_scales
    if shared and (shared["groups"] or shared["kept"]):
        joined = sum(len(g["concats"]) for g in shared["groups"])
        kept = ", ".join(f"{k['node']} ({k['factor']:g}x)" for k in shared["kept"])
        out.print(f"  concat       {joined} share one range with their inputs (byte copies)"
                  + (f"; own ranges kept (step growth over {shared['limit']:g}x): {kept}"
                     if kept else ""), markup=False)
    if "weight_only" in report.details:
        wo = report.details["weight_only"]
        out.print(f"  weights      {len(wo['weights'])} int8, {wo['bytes_before'] / 1e6:.2f} MB -> "
                  f"{wo['bytes_after'] / 1e6:.2f} MB")
    if "fp16" in report.details:
        f = report.details["fp16"]
        out.print(f"  fp32 kept    {len(f['kept_fp32'])} node(s)"
                  + (f"; fp16 overflow risk: {', '.join(f['overflow_tensors'])}"
                     if f["overflow_tensors"] else ""))
    q = sum(report.ops_after.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear"))
    out.print(f"  nodes        {sum(report.ops_before.values())} -> {sum(report.ops_after.values())}"
              + (f" ({q} Q/DQ)" if q else ""))
    ev = report.evaluation
    if ev is not None:
        top = ""
        if ev.top1 is not None:
            top = (f", top-1 {ev.top1_float:.2f}% -> {ev.top1:.2f}%" if ev.top1_float is not None
                   else f", top-1 agreement {ev.top1:.2f}%")
        out.print(f"  evaluation   drop {ev.drop:.3f} ({ev.metric}); cosine {ev.cosine:.5f}, "
                  f"SNR {ev.snr_db:.1f} dB{top}")
        out.print(f"  eval engine  {report.eval_engine} "
                  f"({describe_engine(report.eval_engine, report.eval_target)})", markup=False)
    aa = report.accuracy_aware
    if aa is not None:
        verdict = "[green]met[/]" if aa.met else "[red]NOT met[/]"
        out.print(f"  budget       max drop {aa.max_drop:g}% ({aa.metric}): {verdict}; kept in "
                  f"float: {', '.join(aa.kept_float) or 'none'}")
        if len(aa.steps) > 1:
            table = Table(box=None, padding=(0, 2))
            for col in ("step", "float nodes", "drop", "cosine", "top-1", "ok"):
                table.add_column(col)
            for s in aa.steps:
                table.add_row(s.action, str(len(s.kept_float)), f"{s.score.drop:.3f}",
                              f"{s.score.cosine:.5f}",
                              "" if s.score.top1 is None else f"{s.score.top1:.2f}",
                              "yes" if s.within_budget else "-")
            out.print(table)
    lat = report.latency
    if lat is not None:
        out.print(f"  speed        {lat.summary()}", markup=False)
        if lat.kept_float:
            out.print(f"  kept float   {', '.join(lat.kept_float)}", markup=False)
        for note in lat.notes:
            out.print(f"  note         {note}", markup=False)


command = quantize_cmd
