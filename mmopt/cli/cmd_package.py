"""``mmopt package``: a self-contained folder that runs an artifact without Python."""

from __future__ import annotations

import json

import click
from rich.table import Table

from mmopt.cli.common import err, out


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


@click.command("package")
@click.argument("artifact")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Bundle folder (created; an earlier bundle there is replaced).")
@click.option("--force", is_flag=True, help="Replace OUTPUT even when it is not a bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle's manifest as JSON.")
def command(artifact, output, force, as_json):
    """Bundle ARTIFACT (NAME, NAME.so or NAME.json) with TVM's runtime for its architecture, a C API
    (include/mmopt_model.h), a prebuilt mmopt-run and an example program: runs without Python.

    \b
    x86_64 bundles take the runtime from the installed wheels; aarch64 bundles from the aarch64
    wheels of the emulated-device set-up (scripts/setup-arm-emulation.sh), cross-building the C
    API with aarch64-linux-gnu-g++. CUDA artifacts are refused. See docs/deploy.md.
    """
    import mmopt

    with err.status("packaging") as status:
        bundle = mmopt.package(artifact, output, force=force,
                               progress=lambda msg: status.update(msg))
    if as_json:
        out.print_json(json.dumps({"path": str(bundle.path), **bundle.manifest}))
        return
    manifest = bundle.manifest
    out.print(f"[bold]packaged[/] {manifest['model']['library'].split('/')[-1]} "
              f"(target {bundle.target}, {bundle.arch}) -> {bundle.path}")
    table = Table(box=None, padding=(0, 2))
    table.add_column("file")
    table.add_column("size", justify="right")
    for name, size in bundle.files.items():
        table.add_row(name, _mb(size) if size >= 100_000 else f"{size / 1e3:.1f} kB")
    out.print(table)
    runtime = manifest["runtime"]
    libs = ", ".join(f"{name.removeprefix('lib/')} {_mb(size)}"
                     for name, size in bundle.files.items() if name.startswith("lib/"))
    out.print(f"  runtime   {_mb(bundle.runtime_bytes)}"
              f"{' stripped' if runtime['stripped'] else ' (not stripped: no strip tool)'} "
              f"({libs}); TVM {runtime['apache-tvm']}")
    dims = manifest["model"].get("dims") or {}
    if dims:
        ranges = ", ".join(f"{n}={r['min']}..{r['max']}"
                           + (f":{r['multiple']}" if r.get("multiple", 1) > 1 else "")
                           for n, r in dims.items())
        buckets = len(manifest["model"].get("buckets") or [])
        out.print(f"  dims      {ranges}; {buckets} bucket(s) (mmopt-run --info)")
    req = manifest["requires"]
    needs = ", ".join(f"{k} >= {v}" for k, v in req["libraries"].items() if k != "CXXABI")
    out.print(f"  needs     {needs} on the device (mmopt-run: glibc >= "
              f"{req['mmopt-run'].get('GLIBC', '?')})")
    prefix = " ".join(bundle.command([])[:-1])
    out.print(f"  run       {prefix + ' ' if prefix else ''}{bundle.runner} --bench 100")
