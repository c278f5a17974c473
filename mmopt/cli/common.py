"""Pieces shared by the CLI's commands: consoles, the --input-shape option, model arguments."""

from __future__ import annotations

import sys

import click
from rich.console import Console

# Piped output (CI logs, files) would otherwise wrap at 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False)


def shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from mmopt.ir import parse_shape_option

    return dict(parse_shape_option(v) for v in values)


def shown_path(path) -> str:
    """``path`` relative to the working directory when it lies under it, else as given (artifacts
    record their source model by absolute path)."""
    from pathlib import Path

    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def model_path(path: str) -> str:
    """Accept ``zoo:NAME`` for a built-in example model; otherwise a file path."""
    if path.startswith("zoo:"):
        from mmopt.zoo import zoo_model

        return zoo_model(path[4:])
    return path


def html_file(_ctx, param, value):
    """An option naming the HTML page to write must name an ``.html``/``.htm`` file: bad input
    (exit 2, before the verb runs) otherwise, since the page replaces whatever the file held --
    ``--html model.onnx`` would have overwritten the model."""
    from mmopt.errors import MmoptError

    if value is not None and not value.lower().endswith((".html", ".htm")):
        raise MmoptError(f"{param.opts[-1]} {value}: the page is written to this file; give a "
                         "name ending in .html")
    return value


html_option = click.option(
    "--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE.html", callback=html_file,
    help="Also write the report as one self-contained HTML page (tables and charts, no network "
         "needed to view it; `mmopt report` renders a saved JSON report the same way).")


def write_html(data: dict, path, *, quiet: bool = False) -> None:
    """``--html``: the verb's JSON report as a page (:func:`mmopt.report.write_html`); says so on
    stdout, or on stderr when stdout carries JSON (``quiet``)."""
    from mmopt.report import write_html as _write

    _write(data, path)
    (err if quiet else out).print(f"wrote {path}")


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
    help="Fix an input's shape (repeatable), e.g. --input-shape x:1,3,224,224. A symbolic leading "
         "(batch) dim defaults to 1. A dim given as a name (x:1,3,48,width) stays symbolic under "
         "that name (its range: --dim).")


def dims(values: tuple[str, ...]):
    """``--dim`` values as :class:`mmopt.ir.dims.DimRange` objects, by name."""
    from mmopt.ir.dims import dim_ranges, parse_dim_option

    return dim_ranges(parse_dim_option(v) for v in values)


def dynamic_options(func):
    """``--dim NAME=MIN..MAX[:MULTIPLE]`` and ``--buckets INPUT:D1,...``: what stays symbolic and
    which sizes get specialized kernels (docs/dynamic-shapes.md); the same on every verb that
    compiles."""
    func = click.option(
        "--buckets", "buckets", multiple=True, metavar="INPUT:D1,D2,...",
        help="Also compile statically specialized kernels for these input sizes (repeatable; "
             "several inputs: a:1,16;b:1,16); calls of exactly those sizes run them.")(func)
    func = click.option(
        "--dim", "dims", multiple=True, metavar="NAME=MIN..MAX[:MULTIPLE]",
        help="Keep the symbolic dim NAME dynamic over MIN..MAX (sizes multiples of MULTIPLE), "
             "e.g. --dim height=320..1280:32 (repeatable). Sizes outside are refused at run "
             "time.")(func)
    return func


def buckets(values: tuple[str, ...]) -> list[dict]:
    from mmopt.codegen.buckets import parse_bucket_option

    return [parse_bucket_option(v) for v in values]


def _remember(ctx, param, value):
    ctx.meta[f"mmopt.{param.name}"] = value
    return value


def codegen_options(func):
    """``--winograd/--no-winograd``, ``--pack-weights/--no-pack-weights``, ``--layout``,
    ``--fast-math/--no-fast-math`` and ``--lookup-tables/--no-lookup-tables``: the code-generation
    settings of :mod:`mmopt.codegen.options`, the same on every verb that generates code. Unset
    flags fall back to the ``MMOPT_*`` environment, then to on. (The last two reach
    :func:`codegen_from` through the click context, so the verbs' signatures carry only the older
    three.)"""
    func = click.option("--lookup-tables/--no-lookup-tables", "lookup_tables", default=None,
                        expose_value=False, callback=_remember,
                        help="Quantized models: long element-wise chains on 8-bit tensors (a "
                             "QDQ hard-swish) read a 256-entry table computed at compile time "
                             "[default: on].")(func)
    func = click.option("--fast-math/--no-fast-math", "fast_math", default=None,
                        expose_value=False, callback=_remember,
                        help="Vectorizable exp/erf/tanh/sigmoid/softmax on CPUs, a few float32 "
                             "ulps from the C library's [default: on].")(func)
    func = click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                        help="Data layout convolutions run in [default: the target's].")(func)
    func = click.option("--pack-weights/--no-pack-weights", "pack_weights", default=None,
                        help="Re-lay float conv weights out for the CPU kernels [default: on].")(func)
    func = click.option("--winograd/--no-winograd", "winograd", default=None,
                        help="Winograd F(4x4,3x3) or F(2x2,3x3) for the 3x3 float convs where "
                             "it pays [default: on].")(func)
    return func


def codegen_from(winograd, pack_weights, layout):
    """The :class:`~mmopt.codegen.options.CodegenOptions` of :func:`codegen_options`' flags."""
    from mmopt.codegen.options import CodegenOptions

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return CodegenOptions.from_env(winograd=winograd, pack_weights=pack_weights, layout=layout,
                                   fast_math=meta.get("mmopt.fast_math"),
                                   lookup_tables=meta.get("mmopt.lookup_tables"))


def import_options(func):
    """``--random-weights`` and ``--plugin``: options of every verb that imports models.
    ``--random-weights`` reaches every import the verb makes (through
    :func:`mmopt.frontends.import_options`), however deep; ``--plugin FILE.py`` loads an extension
    plugin (:func:`mmopt.extend.load_plugin`) before the verb runs."""
    import functools

    @click.option("--plugin", "plugins", multiple=True, metavar="FILE.py",
                  help="Load an extension plugin: a Python file that registers ops through "
                       "mmopt.extend (repeatable). Installed plugins (entry points "
                       "'mmopt.extensions') load without it.")
    @click.option("--random-weights", "random_weights", is_flag=True, default=False,
                  help="Caffe: build a prototxt that has no .caffemodel with seeded random weights "
                       "(without it, a missing .caffemodel is an error); recorded in the output.")
    @functools.wraps(func)
    def wrapper(*args, random_weights: bool = False, plugins: tuple[str, ...] = (), **kwargs):
        from mmopt import frontends

        if plugins:
            from mmopt.extend import load_plugin

            for plugin in plugins:
                load_plugin(plugin)
        with frontends.import_options(random_weights=random_weights or None):
            return func(*args, **kwargs)

    return wrapper
