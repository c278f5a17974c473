"""``mmopt check``: the accuracy gate for CI (candidate vs reference, per output and per layer)."""

from __future__ import annotations

import sys

import click

from mmopt.check.api import DEFAULT_PER_LAYER_SAMPLES
from mmopt.check.config import CONFIG_NAME
from mmopt.check.per_layer import DEFAULT_JUMP_DB
from mmopt.cli.common import err, html_option, import_options, input_shape_option, out, shapes
from mmopt.errors import MmoptError
from mmopt.runtime.ort import DEFAULT_ENGINE, ENGINES


@click.command("check")
@click.option("-r", "--reference", metavar="REF",
              help="The reference: an .onnx model (run on onnxruntime), a compiled artifact "
                   "(NAME, NAME.so or NAME.json) or zoo:NAME.")
@click.option("-c", "--candidate", metavar="CAND", help="The model to gate, same kinds as REF.")
@click.option("-d", "--data", metavar="DATA",
              help="Samples: an .npz (arrays keyed by input name, leading sample axis), an .npy "
                   "(one input), a directory of .npy/.npz files, or random:N.")
@click.option("--labels", metavar="FILE",
              help="True class per sample (.npy/.npz, or text with one integer per line): enables "
                   "top-1 accuracy and --max-drop.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Show only these metrics (repeatable): accuracy, top1, top5, cosine, snr, abs. "
                   "Naming accuracy/top1/top5 treats every float output's last axis as classes.")
@click.option("--max-drop", metavar="X", help="Fail if top-1 accuracy drops by more than X: 1% "
              "is one percentage point; a bare number below 1 is a fraction (0.01 = 1%); a bare "
              "number >= 1 is refused (write 1%). Same reading as `mmopt quantize --max-drop`. "
              "Needs --labels.")
@click.option("--min-top1", metavar="X", help="Fail if top-1 agreement with the reference < X.")
@click.option("--min-top5", metavar="X", help="Fail if top-5 agreement (reference's top-1 in the "
              "candidate's top 5) < X.")
@click.option("--min-cosine", metavar="Y", help="Fail if the mean cosine similarity < Y.")
@click.option("--min-snr", metavar="Z", help="Fail if the SNR over the data set < Z dB.")
@click.option("--atol", metavar="A", help="Fail if any element differs by more than "
              "atol + rtol*|ref|.")
@click.option("--rtol", metavar="R", help="Relative tolerance (with --atol).")
@click.option("--output-name", "output_names", multiple=True, metavar="NAME",
              help="Compare only this output (repeatable). [default: all]")
@click.option("--per-layer/--no-per-layer", default=None,
              help="Also compare every intermediate tensor (two ONNX models, e.g. fp32 vs QDQ) "
                   "and name the first layer where the error jumps.")
@click.option("--per-layer-samples", type=click.IntRange(min=1), metavar="N",
              help=f"Samples for --per-layer. [default: {DEFAULT_PER_LAYER_SAMPLES}]")
@click.option("--jump-db", type=float, metavar="DB",
              help=f"An SNR drop that counts as a jump in --per-layer. [default: {DEFAULT_JUMP_DB:g}]")
@click.option("--eval-engine", type=click.Choice(list(ENGINES)), default=None,
              help="How ONNX models run: reference = onnxruntime with graph optimizations off "
                   "(QDQ as dequantize -> float op -> quantize, the same on every CPU); "
                   "onnxruntime = its default optimizations (fused int8 kernels, CPU-dependent; "
                   f"for models shipped on onnxruntime). [default: {DEFAULT_ENGINE}]")
@input_shape_option
@click.option("--seed", type=int, help="Seed for random:N data. [default: 0]")
@click.option("--report", "report_path", metavar="FILE.json", help="Write the report as JSON.")
@click.option("--junit", "junit_path", metavar="FILE.xml", help="Write a JUnit XML report.")
@click.option("--config", "config_path", metavar="FILE",
              help=f"Settings file. [default: ./{CONFIG_NAME} when present]")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@html_option
@import_options
def check_cmd(reference, candidate, data, labels, metrics, max_drop, min_top1, min_top5,
              min_cosine, min_snr, atol, rtol, output_names, per_layer, per_layer_samples,
              jump_db, eval_engine, input_shapes, seed, report_path, junit_path, config_path,
              as_json, html_path):
    """Accuracy gate: compare CAND with REF on DATA; exit 0 pass, 1 a threshold failed, 2 error.

    \b
    Metrics per output: top-1 accuracy (with --labels), top-1/top-5 agreement, cosine similarity,
    max/mean abs error, SNR in dB, over the whole data set, naming the worst samples.
    All settings may come from mmopt-check.toml (same names, without --), so CI runs `mmopt check`.

    \b
    Examples:
      mmopt check -r model.onnx -c model.int8.onnx -d val.npz --labels y.npy --max-drop 1%
      mmopt check -r model.onnx -c out/model.x86 -d random:8 --atol 1e-4 --rtol 1e-4
      mmopt check -r model.onnx -c model.int8.onnx -d val.npz --min-cosine 0.99 --per-layer
    """
    from mmopt.check import config as cfg

    given = {"reference": reference, "candidate": candidate, "data": data, "labels": labels,
             "metric": list(metrics) or None, "output_name": list(output_names) or None,
             "per_layer": per_layer, "per_layer_samples": per_layer_samples, "jump_db": jump_db,
             "eval_engine": eval_engine, "input_shape": list(input_shapes) or None, "seed": seed,
             "report": report_path,
             "junit": junit_path, "html": html_path}
    junit = junit_path
    try:
        path = cfg.find_config(config_path)
        config = cfg.load_config(path) if path else cfg.CheckConfig()
        if path:
            err.print(f"mmopt check: settings from {path}", style="dim")
        options = {**config.options, **{k: v for k, v in given.items() if v is not None}}
        junit = options.get("junit")
        thresholds = {"max_drop": max_drop, "min_top1": min_top1, "min_top5": min_top5,
                      "min_cosine": min_cosine, "min_snr": min_snr, "atol": atol, "rtol": rtol}
        _run(options, config, thresholds, as_json)
    except MmoptError as exc:
        if junit:
            from mmopt.check.report import write_junit_error

            write_junit_error(junit, exc.message)
        raise


def _run(options: dict, config, cli_thresholds: dict, as_json: bool) -> None:
    from mmopt.check import Thresholds, check
    from mmopt.check.report import render

    for key in ("reference", "candidate", "data"):
        if not options.get(key):
            raise MmoptError(f"missing --{key} (give it, or set {key} = ... in mmopt-check.toml)")
    given = {k: v for k, v in cli_thresholds.items() if v is not None}
    thresholds = config.thresholds.merged(Thresholds.from_mapping(given, "command line"))
    with err.status("checking") as status:
        report = check(
            options["reference"], options["candidate"], options["data"],
            labels=options.get("labels"), thresholds=thresholds, per_output=config.per_output,
            metrics=options.get("metric"), output_names=options.get("output_name"),
            per_layer=bool(options.get("per_layer")),
            per_layer_samples=options.get("per_layer_samples", DEFAULT_PER_LAYER_SAMPLES),
            jump_db=options.get("jump_db", DEFAULT_JUMP_DB),
            input_shapes=shapes(tuple(options.get("input_shape", ()))),
            seed=options.get("seed", 0), eval_engine=options.get("eval_engine", DEFAULT_ENGINE),
            progress=lambda msg: status.update(msg))
    if options.get("report"):
        report.write_json(options["report"])
    if options.get("junit"):
        report.write_junit(options["junit"])
    if options.get("html"):
        from mmopt.report import write_html

        write_html(report.to_dict(), options["html"])
    if as_json:
        click.echo(report.to_json(), nl=False)  # raw: a console would wrap long strings
    else:
        render(report, out)
        written = [options[k] for k in ("report", "junit", "html") if options.get(k)]
        if written:
            out.print("wrote " + ", ".join(written))
    if not report.passed:
        sys.exit(1)


command = check_cmd
