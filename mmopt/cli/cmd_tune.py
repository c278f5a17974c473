"""``mmopt tune``: tuning of a model's tasks (knob variants of the default schedules and/or
MetaSchedule) into a tuning database."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time

import click
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmopt.cli.cmd_farm import secret_option
from mmopt.cli.common import (buckets as parse_buckets, codegen_from, codegen_options,
                              dims as parse_dims, dynamic_options, err, html_option,
                              import_options, input_shape_option, model_path, out, shapes,
                              write_html)


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.1f}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -"
    seconds = int(seconds)
    return f"ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _task_table(report) -> Table:
    from mmopt.tuning.tune_report import in_model_times

    table = Table(box=None, padding=(0, 2))
    for col, justify in (("task", "left"), ("weight", "right"), ("trials", "right"),
                         ("default (us)", "right"), ("best before (us)", "right"),
                         ("best (us)", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    for i, t in enumerate(report.tasks):
        if i == report.current:
            note = "[cyan]tuning[/]"
        elif t.exhausted:
            note = "space exhausted"
        elif t.planned == 0:
            note = "done before" if t.trials_before else "not in this run"
        elif t.done:
            note = "[green]done[/]"
        else:
            note = ""
        if t.in_model is not None:
            verdict = f"in the model {in_model_times(t.in_model)}"
            note = (f"{note}; {verdict}" if t.in_model["kept"] == "tuned"
                    else f"{note}; [yellow]default kept[/] ({verdict})").lstrip("; ")
        reference = t.best_before_s if t.best_before_s is not None else t.default_s
        improved = t.best_s is not None and reference is not None and t.best_s < reference * 0.98
        table.add_row(t.name, str(t.weight), f"{t.trials_before + t.trials}"
                      + (f" (+{t.trials})" if t.trials else ""), _us(t.default_s),
                      _us(t.best_before_s), ("[green]" if improved else "") + _us(t.best_s), note)
    return table


class _Display:
    """Live task table + overall bar with ETA on a terminal; one line per batch otherwise."""

    def __init__(self):
        self.tty = err.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("trials"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[eta]}"), console=err)
        self.bar = None
        self.live = None

    def __call__(self, report, event: str) -> None:
        if event == "start":
            err.print(f"tuning {report.model} for {report.target} on {report.runner}: "
                      f"{len(report.tasks)} tasks, {report.planned} trials planned "
                      f"(database {report.database}, {report.sub_database})")
            for note in report.notes:
                err.print(f"[yellow]note:[/] {note}")
            if self.tty and report.planned:
                self.bar = self.progress.add_task("tuning", total=report.planned, eta=_eta(None))
                self.live = Live(self._render(report), console=err, refresh_per_second=4,
                                 transient=True)
                self.live.start()
            return
        if event == "end":
            self.close()
            return
        current = report.tasks[report.current] if report.current is not None else None
        if self.live is not None:
            label = {"defaults": "default schedules", "recheck": "checking the best",
                     "confirm": "checking in the model"}.get(
                event, current.name if current else "tuning")
            self.progress.update(self.bar, completed=report.trials, eta=_eta(report.eta_s),
                                 description=label)
            self.live.update(self._render(report))
        elif event == "defaults":
            err.print("  measuring the default schedule of each task (the baseline)")
        elif event == "recheck":
            err.print("  measuring each task's best and default schedules again, side by side")
        elif event == "confirm":
            err.print("  checking the best records in the model: building it with and without "
                      "them, timing each kernel in place")
        elif event == "measured" and current is not None:
            err.print(f"  {current.name}: {current.trials_before + current.trials} trials, best "
                      f"{_us(current.best_s)} us; {report.trials}/{report.planned} trials, "
                      f"{_eta(report.eta_s)}")

    def _render(self, report):
        return Group(_task_table(report), self.progress)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


@contextlib.contextmanager
def _ctrl_c_stops(stop: threading.Event):
    """First Ctrl-C: stop after the current batch (keeping every record); second: abort."""

    def handler(_signum, _frame):
        if stop.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()
        err.print("[yellow]stopping after the current batch; measured records are kept "
                  "(Ctrl-C again to abort)[/]")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@click.command("tune")
@click.argument("model")
@click.option("-t", "--target", default="x86", show_default=True, help="Target to tune for.")
@click.option("--db", "database", required=True, type=click.Path(file_okay=False),
              help="Tuning database directory (created if missing; records are added to it).")
@click.option("--trials", type=click.IntRange(1), help="At most this many trials in this run, "
              "spread over the tasks. [default: until every task has --trials-per-task records]")
@click.option("--trials-per-task", type=click.IntRange(1), default=64, show_default=True,
              help="Records wanted per task, counting those already in the database.")
@click.option("--time-budget", metavar="DURATION", help="Stop after this long (90s, 30m, 1h30m); "
              "what was measured is kept.")
@click.option("--farm", metavar="HOST:PORT", help="Measure on devices of a tracker instead of "
              "this machine.")
@click.option("--key", help="Device key at the tracker. [default: the target's rpc key; if no "
              "device has it, its emulated key (arm64-qemu for ARM targets)]")
@secret_option
@input_shape_option
@dynamic_options
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=2, show_default=True,
              help="Graph optimization level: must match the one you compile with.")
@codegen_options
@click.option("--task", "task_filter", multiple=True, metavar="NAME",
              help="Tune only tasks whose name contains NAME (repeatable).")
@click.option("--search", type=click.Choice(["knobs", "metaschedule", "both"]), default="knobs",
              show_default=True, help="knobs: variants of mmopt's default schedules (tile sizes, "
              "loop order, reduction split; a few dozen per task at most, fast); metaschedule: "
              "MetaSchedule's evolutionary search (slow); both: knobs, then MetaSchedule with the "
              "remaining trials.")
@click.option("--dry-run", is_flag=True, help="Only list the tasks and the trials a run would do.")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="After tuning, time the model with default schedules and with the records.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@html_option
@import_options
def tune_cmd(model, target, database, trials, trials_per_task, time_budget, farm, key,
             farm_secret, input_shapes, dims, buckets, opt_level, winograd, pack_weights, layout,
             task_filter, search, dry_run, compare, as_json, html_path):
    """Tune every task of MODEL for TARGET; records go to the --db directory.

    \b
    Ctrl-C stops after the current batch and keeps every measured record; running the same
    command again resumes where it stopped. Records apply only to the target they were tuned
    for: `mmopt compile MODEL --target TARGET --db DIR`.
    """
    from mmopt.tuning.tune import parse_duration, tune

    budget = parse_duration(time_budget)
    codegen = codegen_from(winograd, pack_weights, layout)
    stop = threading.Event()
    display = _Display() if not as_json else (lambda _r, _e: None)
    started = time.monotonic()
    try:
        with _ctrl_c_stops(stop):
            report = tune(model_path(model), target, database,
                          input_shapes=shapes(input_shapes), opt_level=opt_level,
                          trials_per_task=trials_per_task, trials=trials, time_budget=budget,
                          farm=farm, key=key, on_update=display, stop=stop,
                          tasks=task_filter or None, dry_run=dry_run, search=search,
                          codegen=codegen, farm_secret=farm_secret,
                          dims=parse_dims(dims), buckets=parse_buckets(buckets))
    finally:
        if isinstance(display, _Display):
            display.close()
    comparison = None
    if compare and not dry_run and report.stopped in (None, "time budget reached") \
            and not stop.is_set():
        from mmopt.tuning.measure import compare_latency

        with err.status("timing the model with default schedules and with the records"):
            comparison = compare_latency(model_path(model), target, database,
                                         input_shapes=shapes(input_shapes), opt_level=opt_level,
                                         farm=farm, key=report.key or key, codegen=codegen,
                                         farm_secret=farm_secret,
                                         allow_emulated_records=report.emulated,
                                         dims=parse_dims(dims), buckets=parse_buckets(buckets))
    data = report.to_dict()
    data["latency"] = comparison.to_dict() if comparison else None
    if html_path:
        write_html(data, html_path, quiet=as_json)
    if dry_run and not as_json:
        out.print(_task_table(report))
        out.print(f"dry run: {report.planned} trial(s) would be measured; {report.records} "
                  f"record(s) for these tasks in {report.database}")
        return
    if as_json:
        out.print_json(json.dumps(data))
    else:
        out.print(_task_table(report))
        out.print(f"{report.trials} trial(s) measured in {time.monotonic() - started:.0f}s; "
                  f"{report.records} record(s) for these tasks in {report.database} "
                  f"({report.sub_database})")
        if comparison is not None:
            out.print(f"model latency on {comparison.where}: {comparison.default_s * 1e3:.3f} ms "
                      f"with default schedules -> {comparison.tuned_s * 1e3:.3f} ms tuned "
                      f"({comparison.speedup:.2f}x; {comparison.tasks_tuned}/"
                      f"{comparison.tasks_total} tasks tuned)"
                      + (" [emulated: not hardware timings]" if report.emulated else ""))
        if report.emulated:
            out.print(f"[yellow]note:[/] measured on an emulated device: the records are in "
                      f"{report.sub_database}, which `mmopt compile --db` applies only with "
                      "--allow-emulated-records")
    if report.stopped and report.stopped.startswith("nothing could be measured"):
        err.print(f"[red]{report.stopped}[/]")
        sys.exit(1)
    if report.stopped:
        err.print(f"[yellow]stopped: {report.stopped}[/]; every measured record is kept; run the "
                  "same command again to resume")
        if report.stopped == "interrupted":
            sys.exit(130)
        if report.stopped != "time budget reached":
            sys.exit(1)


command = tune_cmd
