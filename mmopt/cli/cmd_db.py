"""``mmopt db``: inspect and merge tuning databases."""

from __future__ import annotations

import json

import click
from rich.table import Table

from mmopt.cli.common import out


@click.group("db")
def db_cmd():
    """Tuning databases: records per target, shared by every model with the same tasks."""


def _target_text(identity: dict) -> str:
    fields = [identity.get("kind", "?")]
    for key in ("mtriple", "mcpu", "mattr", "arch"):
        if identity.get(key):
            value = identity[key]
            fields.append(f"{key}={','.join(value) if isinstance(value, list) else value}")
    return " ".join(fields)


@db_cmd.command("show")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show_cmd(directory, as_json):
    """Show the targets of a tuning database and, per task, its records and best time."""
    from mmopt.tuning.database import TuningDatabase

    summary = TuningDatabase(directory).summary()
    if as_json:
        out.print_json(json.dumps({"database": directory,
                                   "targets": [s.to_dict() for s in summary]}))
        return
    if not summary:
        out.print(f"{directory}: no records yet")
        return
    for target in summary:
        out.print(f"[bold]{target.slug}[/]  {_target_text(target.target)}: "
                  f"{len(target.workloads)} task(s), {target.records} record(s)"
                  + ("  [yellow]measured on an emulated device[/] (compile applies them only "
                     "with --allow-emulated-records)" if target.emulated else ""))
        table = Table(box=None, padding=(0, 2))
        bucketed = any(w.buckets for w in target.workloads)
        for col, justify in (("task", "left"), ("workload", "left"), ("records", "right"),
                             ("valid", "right"), ("best (us)", "right"),
                             ("in the model", "left"),
                             *((("bucket", "left"),) if bucketed else ())):
            table.add_column(col, justify=justify)
        for w in target.workloads:
            table.add_row(w.name, w.workload, str(w.records), str(w.valid),
                          "-" if w.best_s is None else f"{w.best_s * 1e6:,.1f}",
                          _verdict_text(w.in_model),
                          *((" ".join(w.buckets) or "-",) if bucketed else ()))
        out.print(table)
        if bucketed:
            buckets = sorted({b for w in target.workloads for b in w.buckets})
            out.print(f"  buckets: {', '.join(buckets)} (records keyed by the specialized shapes)")


def _verdict_text(in_model: dict | None) -> str:
    """The in-model check of a task's best record (mmopt.tuning.confirm), or "-"."""
    from mmopt.tuning.tune_report import in_model_times

    if not in_model:
        return "-"
    return f"{in_model['kept']} kept ({in_model_times(in_model)})"


@db_cmd.command("merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Merged database (may be one of the sources; replaced when complete).")
def merge_cmd(sources, output):
    """Merge tuning databases SOURCES into one; records stay with their target, duplicates once."""
    from mmopt.tuning.database import merge

    counts = merge(sources, output)
    total = sum(counts.values())
    per_target = ", ".join(f"{k} ({v})" for k, v in counts.items())
    out.print(f"merged {len(sources)} database(s) into {output}: {total} record(s) for "
              f"{len(counts)} target(s)" + (f": {per_target}" if counts else ""))


command = db_cmd
