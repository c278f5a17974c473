"""The ``mmopt`` command line: thin commands that parse options, call :mod:`mmopt`'s API and print.

Errors a user can cause end as one line on stderr (``mmopt: error: ...``) with exit code 2; a failed
verification exits 1. ``--debug`` shows tracebacks and third-party warnings.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import numpy as np
from rich.table import Table
from rich.text import Text

from mmopt import __version__
from mmopt._logging import configure as configure_logging
from mmopt.cli.cmd_farm import secret_option
from mmopt.cli.common import (buckets as parse_buckets, codegen_from, codegen_options,
                              dims as parse_dims, dynamic_options, err, html_option,
                              import_options, input_shape_option, model_path, out, shapes,
                              shown_path, write_html)
from mmopt.errors import MmoptError

logger = logging.getLogger("mmopt")


class MmoptGroup(click.Group):
    """Turns MmoptError and unexpected exceptions into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MmoptError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"mmopt: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("mmopt: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - last line of defence: no tracebacks by default
            if ctx.obj and ctx.obj.get("debug"):
                raise
            text = str(exc).strip().splitlines()
            click.echo(f"mmopt: internal error: {type(exc).__name__}: "
                       f"{text[-1] if text else ''} (rerun with --debug for the traceback)", err=True)
            sys.exit(3)


@click.group(cls=MmoptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mmopt")
@click.option("--debug", is_flag=True, help="Show tracebacks and third-party warnings.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """mmopt: optimize models and compile them for ARM, x86 and NVIDIA GPUs.

    \b
    Typical use:
      mmopt inspect model.onnx
      mmopt compile model.onnx --target x86 -o out/model
      mmopt run out/model --input x=x.npy -o outputs.npz

    MODEL may be an .onnx file or zoo:NAME for a built-in example (see `mmopt zoo list`).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    configure_logging(verbose, debug)


# --------------------------------------------------------------------------------------------------
# compile


@cli.command("compile")
@click.argument("model")
@click.option("-t", "--target", default="x86", show_default=True,
              help="Target name (see `mmopt targets`).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Artifact prefix: writes OUTPUT.so and OUTPUT.json. [default: MODEL.TARGET]")
@input_shape_option
@dynamic_options
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=2, show_default=True,
              help="Graph optimization level (0: none, 1: simplify, 2: + eliminations; 3: as 2 "
                   "here: the kernels' layout is --layout, the model's inputs keep theirs).")
@codegen_options
@click.option("--verify/--no-verify", default=None,
              help="Run the artifact and onnxruntime on the same random inputs and compare. "
                   "[default: on when the target runs on this machine]")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Verification abs tolerance.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Verification rel tolerance.")
@click.option("--save-onnx", is_flag=True, help="Also write the optimized model as OUTPUT.onnx.")
@click.option("--db", type=click.Path(file_okay=False), default=None,
              help="Tuning database (from `mmopt tune`): apply its records for this target; "
                   "other kernels get default schedules.")
@click.option("--allow-emulated-records", is_flag=True,
              help="With --db: also apply records measured on an emulated device (`mmopt farm "
                   "emulate`; not hardware timings) to kernels without a real record.")
@click.option("--profile/--no-profile", "profile", default=None,
              help="Also time the artifact kernel by kernel, each kernel with its ONNX nodes "
                   "(as `mmopt profile`; in the JSON and HTML reports). [default: with --html, "
                   "when the target runs here]")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@html_option
@import_options
def compile_cmd(model, target, output, input_shapes, dims, buckets, opt_level, winograd,
                pack_weights, layout, verify, atol, rtol, save_onnx, db, allow_emulated_records,
                profile, as_json, html_path):
    """Compile MODEL into a deployable library for TARGET, verified against onnxruntime."""
    import mmopt
    from mmopt import targets

    model = model_path(model)
    if profile is None:  # not for symbolic dims: profiled at one size by `mmopt profile`
        profile = bool(html_path) and targets.get(target).runs_here() and not dims
    with err.status("compiling") as status:
        result = mmopt.compile(
            model, target, output, input_shapes=shapes(input_shapes), opt_level=opt_level,
            verify=verify, atol=atol, rtol=rtol, save_onnx=save_onnx, db=db,
            allow_emulated_records=allow_emulated_records,
            codegen=codegen_from(winograd, pack_weights, layout), profile=profile,
            progress=lambda msg: status.update(msg),
            dims=parse_dims(dims), buckets=parse_buckets(buckets),
        )
    data = result.to_dict()
    if as_json:
        out.print_json(json.dumps(data))
    else:
        _print_compile_report(result, verify_asked=verify)
    if html_path:
        write_html(data, html_path, quiet=as_json)
    if not result.passed:
        sys.exit(1)


def _bucket_label(bucket: dict) -> str:
    return ";".join(f"{k}:{','.join(map(str, v))}" for k, v in bucket["inputs"].items())


def _print_compile_report(result, verify_asked: bool | None = None) -> None:
    meta = result.meta
    out.print(f"[bold]compiled[/] {shown_path(meta.source_model)} -> {result.library} + "
              f"{result.meta_path.name}")
    out.print(f"  target    {meta.target['name']}  ({json.dumps(meta.target['tvm'])})")
    cpu = meta.target.get("cpu")
    out.print("  codegen   " + ", ".join(f"{k} {v}" for k, v in meta.codegen.items())
              + (f"; {cpu['isa']}: {cpu['vector_bits']}-bit vectors, {cpu['vector_registers']} "
                 "registers" if cpu else ""))
    for kind, specs in (("input", meta.inputs), ("output", meta.outputs)):
        for s in specs:
            out.print(f"  {kind:<9} {s.name}  {s.dtype}{s.shape}")
    rep = result.passes
    out.print(f"  passes    -O{meta.opt_level}: nodes {rep.nodes_before} -> {rep.nodes_after}"
              + (f" ({', '.join(rep.applied)})" if rep.applied else ""))
    tuning = meta.extra.get("tuning")
    if tuning:
        out.print(f"  tuning    {tuning['kernels_tuned']} of {tuning['kernels_looked_up']} kernels "
                  f"from {tuning['database']}; the rest use default schedules")
        for change in tuning.get("codegen_differences", []):
            out.print(f"  [yellow]warning[/]   the records were tuned with other code-generation "
                      f"settings ({change}): kernels they change have no records")
        used, skipped = tuning.get("kernels_from_emulated"), tuning.get("kernels_emulated_skipped")
        if used:
            out.print(f"  [yellow]warning[/]   {len(used)} kernel(s) use records measured on an "
                      "emulated device (--allow-emulated-records): not hardware timings")
        if skipped:
            out.print(f"  [yellow]note[/]      {len(skipped)} kernel(s) have records measured "
                      "only on an emulated device: skipped, default schedules used "
                      "(--allow-emulated-records applies them)")
    if meta.extra.get("random_weights"):
        seed = meta.extra.get("random_weights_seed")
        out.print("  [yellow]weights[/]   random (--random-weights"
                  + (f", seed {seed}" if seed is not None else "")
                  + "): the outputs are meaningless; verification only compares compilers")
    if meta.dims:
        out.print("  dynamic   " + ", ".join(
            f"{n}={r['min']}..{r['max']}" + (f":{r['multiple']}" if r["multiple"] > 1 else "")
            for n, r in meta.dims.items())
            + (f"; buckets {', '.join(_bucket_label(b) for b in meta.buckets)}"
               if meta.buckets else ""))
        for d in (meta.extra.get("dynamic_kernels") or {}).get("degradations", []):
            out.print(f"  [yellow]note[/]      dynamic kernels: {d['what']} ({d['count']})")
    for d in (meta.extra.get("degraded_kernels") or {}).get("degradations", []):
        out.print(f"  [yellow]warning[/]   degraded kernels: {d['what']} ({d['count']})")
    int8_kernels = meta.extra.get("int8_kernels") or []
    if int8_kernels:
        from collections import Counter

        paths = Counter(k["path"] for k in int8_kernels)
        out.print("  int8      " + ", ".join(f"{n} {p}" for p, n in paths.most_common())
                  + " (kernels by arithmetic; the JSON lists each under extra.int8_kernels)")
        if paths.get("float"):
            out.print(f"  [yellow]note[/]      {paths['float']} matmul/conv kernel(s) run in float "
                      "(not quantized, or activation x activation)")
        if paths.get("pmaddwd"):
            out.print(f"  [yellow]note[/]      {paths['pmaddwd']} int8 conv kernel(s) widen to int16 "
                      "(vpmaddwd, exact): their weights exceed [-64, 64]; `mmopt quantize "
                      "--weight-bits 7` lets them use vpmaddubsw, about 2x faster on CPUs "
                      "without VNNI")
    fallbacks = meta.extra.get("schedule_fallbacks") or []
    if fallbacks:
        shown = ", ".join(f"{f['block']} ({f['reason']})" for f in fallbacks[:3])
        out.print(f"  [yellow]warning[/]   {len(fallbacks)} block(s) left unscheduled (plain loops, "
                  f"slower): {shown}{' ...' if len(fallbacks) > 3 else ''}")
    out.print("  time      " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    if result.onnx_path:
        out.print(f"  onnx      {result.onnx_path}")
    if result.profile is not None:
        p = result.profile
        slowest = p.sorted_kernels()[0] if p.kernels else None
        out.print(f"  profile   {p.total_median_ms:.3f} ms per inference ({p.threads} thread(s)), "
                  f"{len(p.kernels)} kernel calls"
                  + (f"; slowest {slowest.name} {slowest.median_ms:.3f} ms "
                     f"({slowest.percent:.0f}%)" if slowest else ""))
    v = result.verification
    if v is None:
        why = "--no-verify" if verify_asked is False else "target does not run here"
        out.print(f"  verify    [yellow]skipped[/] ({why})")
    else:
        table = Table(title=None, box=None, padding=(0, 2))
        for col in ("output", "shape", "max abs err", "max rel err", "status"):
            table.add_column(col)
        for o in v.outputs:
            status = "[green]ok[/]" if o.passed else "[red]MISMATCH[/]"
            if o.passed and o.beyond:
                status += f" ({o.beyond} beyond atol)"
            table.add_row(o.name, str(o.shape), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", status)
        verdict = "[green]PASS[/]" if v.passed else "[red]FAIL[/]"
        out.print(Text.from_markup(f"  verify    {verdict} vs ") + Text(v.engine)
                  + Text(f" (atol {v.atol:g}, rtol {v.rtol:g}, seed {v.seed})"
                         + (f"; {v.note}" if v.note else "")
                         + (f"; {len(v.runs)} sizes, worst per output shown" if v.runs else "")))
        out.print(table)
        for r in v.runs:
            sizes = ",".join(f"{k}={x}" for k, x in r["sizes"].items())
            out.print(f"    {'[green]ok[/]' if r['passed'] else '[red]MISMATCH[/]'}  {sizes}  "
                      f"({r['function']}) max abs err {r['max_abs']:.3g}")
    src = result.source_verification
    if src is not None:
        verdict = "[green]PASS[/]" if src.passed else "[red]FAIL[/]"
        worst = max(src.outputs, key=lambda o: o.worst_ratio, default=None)
        out.print(f"  verify    {verdict} vs the source framework ({src.note.split(': ')[-1]}; "
                  f"max abs err {src.max_abs:.3g}, atol {src.atol:g}, rtol {src.rtol:g})"
                  + (f"; worst output {worst.name}" if worst is not None and not src.passed else ""))
    elif result.source_skipped:
        out.print(f"  verify    [yellow]not checked against the source framework[/]: "
                  f"{result.source_skipped}")


# --------------------------------------------------------------------------------------------------
# run


def _parse_inputs(values: tuple[str, ...]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise MmoptError(f"--input {value!r}: expected NAME=FILE.npy (or FILE.npz to take every "
                             "array in it by name)")
        feeds.update(_load_array(name, Path(path)))
    return feeds


def _load_array(name: str, path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise MmoptError(f"--input {name}={path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)  # never unpickle user files
    except (ValueError, OSError) as exc:
        raise MmoptError(f"--input {name}={path}: not a .npy/.npz array file ({exc})") from exc
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if name in data.files:
                return {name: data[name]}
            if name == "*":
                return {k: data[k] for k in data.files}
            raise MmoptError(f"--input {name}={path}: the archive has no array {name!r} "
                             f"(it has {', '.join(data.files)}); use *={path} to take all")
    return {name: data}


@cli.command("run")
@click.argument("artifact")
@click.option("-i", "--input", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="An input array (repeatable). Without inputs, seeded random data is used.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write outputs to this .npz file (arrays by output name).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@click.option("--device", "device_key", metavar="KEY",
              help="Run on a farm device with this RPC key (e.g. arm64-qemu) instead of locally.")
@click.option("--farm", metavar="HOST:PORT", envvar="MMOPT_FARM", default="127.0.0.1:9190",
              show_default=True, help="The device farm's tracker (with --device).")
@secret_option
@click.option("--native", is_flag=True,
              help="Run through the artifact's native bundle (`mmopt package`, cached): its "
                   "mmopt-run binary, no Python; aarch64 bundles under qemu-aarch64 on x86.")
@input_shape_option
def run_cmd(artifact, inputs, output, seed, device_key, farm, farm_secret, native, input_shapes):
    """Run a compiled ARTIFACT (NAME, NAME.so or NAME.json) here, or on a farm device."""
    from mmopt.runtime import read_meta

    if native and device_key:
        raise MmoptError("--native runs the bundle on this machine; it excludes --device")
    meta = read_meta(artifact)
    feeds = _parse_inputs(inputs)
    if not feeds:
        from mmopt.runtime.inputs import random_feeds, with_shapes

        given = shapes(input_shapes)
        unknown = [n for n in given if n not in {s.name for s in meta.inputs}]
        if unknown:
            raise MmoptError(f"--input-shape names unknown input(s) {', '.join(unknown)}; the "
                             f"artifact's inputs are: {', '.join(s.name for s in meta.inputs)}")
        feeds = random_feeds(with_shapes(meta.inputs, given), seed)
        logger.warning("no --input given: running on seeded random inputs (seed %d)", seed)
    elif input_shapes:
        raise MmoptError("--input-shape gives the shapes of random inputs; with --input the "
                         "arrays' own shapes are used")
    if device_key:
        from mmopt.tuning.remote import run_remote

        with err.status(f"running on device {device_key} via {farm}"):
            outputs = run_remote(artifact, feeds, device_key, farm, secret=farm_secret)
    elif native:
        from mmopt.deploy import run_native

        with err.status("running the native bundle") as status:
            outputs = run_native(artifact, feeds, progress=lambda msg: status.update(msg))
    else:
        from mmopt.runtime import load

        outputs = load(artifact)(**feeds)
    if output:
        tmp = Path(output).with_name(Path(output).name + ".partial.npz")
        np.savez(tmp, **outputs)
        tmp.replace(output)
    table = Table(box=None, padding=(0, 2))
    for col in ("output", "dtype", "shape", "min", "max", "mean"):
        table.add_column(col)
    for name, value in outputs.items():
        numeric = value.size and value.dtype.kind in "fiub"
        table.add_row(name, str(value.dtype), str(list(value.shape)),
                      *( [f"{value.min():.4g}", f"{value.max():.4g}", f"{value.mean():.4g}"]
                         if numeric else ["", "", ""]))
    out.print(table)
    if output:
        out.print(f"wrote {output}")


# --------------------------------------------------------------------------------------------------
# targets, inspect, zoo


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def targets_cmd(as_json):
    """List the known targets and whether each runs on this machine."""
    from mmopt import targets

    entries = list(targets.registry().values())
    if as_json:
        out.print_json(json.dumps([{**t.to_dict(), "description": t.description,
                                    "runs_here": t.runs_here()} for t in entries]))
        return
    table = Table(box=None, padding=(0, 2))
    for col in ("target", "device", "arch", "layout", "runs here", "description"):
        table.add_column(col)
    for t in entries:
        table.add_row(t.name, t.device, t.arch, t.preferred_layout,
                      "[green]yes[/]" if t.runs_here() else "no", t.description)
    out.print(table)


@cli.command("inspect")
@click.argument("model")
@input_shape_option
@click.option("--support", is_flag=True,
              help="List each op of MODEL and whether it compiles for --target (natively, through "
                   "a decomposition, or not, with the reason); exits 1 if something does not.")
@click.option("-t", "--target", default="x86", show_default=True,
              help="Target for --support (see `mmopt targets`).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@import_options
def inspect_cmd(model, input_shapes, support, target, as_json):
    """Show MODEL's inputs/outputs, op histogram, parameter count and MACs/FLOPs (with --support:
    which of its ops compile for TARGET)."""
    from mmopt import frontends
    from mmopt import ir as mir
    from mmopt.ir.inspect import inspect_model, render

    proto = mir.load(frontends.to_onnx(model_path(model)))  # any framework, checked
    if support:
        proto = mir.normalize_opset(proto)  # as compile sees it
    try:  # MACs need static shapes: fix what the user gave (and a symbolic batch to 1)
        proto = mir.fix_input_shapes(proto, shapes(input_shapes))
    except MmoptError as exc:
        if input_shapes:
            raise
        logger.info("shapes stay symbolic (%s)", exc.message)
    if support:
        from mmopt.codegen.relax_import import support_report

        with err.status("checking operator support"):
            result = support_report(mir.infer_shapes(proto), target)
        if as_json:
            out.print_json(json.dumps(result.to_dict()))
        else:
            colors = {"native": "green", "decomposed": "cyan", "kernel": "cyan", "folded": "cyan",
                      "partly": "yellow", "unsupported": "red"}
            table = Table(title=f"Operator support for target {result.target}", box=None,
                          padding=(0, 2))
            for col in ("op", "count", "status", "how / why not"):
                table.add_column(col)
            for o in result.ops:
                table.add_row(Text(o.op), str(o.count),
                              Text(o.status, style=colors.get(o.status, "")), Text(o.detail))
            out.print(table)
            if result.import_error:
                out.print(Text(f"TVM's import fails: {result.import_error}", style="red"))
            verdict = ("[green]every op is supported[/]" if result.supported
                       else "[red]not everything is supported[/]")
            out.print(verdict)
        if not result.supported:
            sys.exit(1)
        return
    report = inspect_model(proto)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        render(report, out)


@cli.group("zoo")
def zoo_cmd():
    """Built-in example models (built deterministically, no download)."""


@zoo_cmd.command("list")
def zoo_list():
    """List the built-in models."""
    from models_zoo import MODELS

    table = Table(box=None, padding=(0, 2))
    table.add_column("name")
    table.add_column("inputs")
    table.add_column("description")
    for name, entry in sorted(MODELS.items()):
        shapes = ", ".join(f"{k}:{','.join(map(str, v))}" for k, v in entry.input_shapes.items())
        table.add_row(name, shapes, entry.description)
    out.print(table)


@zoo_cmd.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="[default: NAME.onnx]")
def zoo_export(name, output):
    """Write the built-in model NAME as an ONNX file."""
    from mmopt import ir as mir
    from mmopt.zoo import build

    path = Path(output or f"{name}.onnx")
    mir.save(build(name), path)
    out.print(f"wrote {path}")


def _register_command_modules() -> None:
    """Add the commands defined in ``mmopt/cli/cmd_*.py`` (each module exposes ``command``).

    One module per verb keeps this file small and lets each feature own its command.
    """
    import importlib
    import pkgutil

    import mmopt.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"mmopt.cli.{info.name}")
            cli.add_command(module.command)


_register_command_modules()


def main() -> None:
    cli(prog_name="mmopt")


if __name__ == "__main__":
    main()
