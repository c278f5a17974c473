"""Confirming tuning records in the model: a task keeps its best record only if the kernel is
faster with it *in the model*, timed in place, than with mmopt's default schedule.

Why. Tuning times each candidate alone, hundreds of calls in a row on the same buffers: its
weights and inputs stay in the caches. In the model they do not: a ResNet-50's 100 MB of weights
stream from memory, each kernel's input was just written by the kernel before, its residual
operand long before. Schedules rank differently there. Measured on ResNet-50 (Zen 5, `x86`, 32
knob trials per task): the records that won alone made 12 of its convolutions 10-37 % slower in
the model, the whole model 14.0 -> 14.8 ms. A database that makes a model slower is worse than
none, so tuning ends with this check.

What it does (:func:`confirm`, run by :func:`mmopt.tuning.tune.tune` after the search, on this
machine):

1. the *candidates*: the tasks whose fastest record is not their default schedule; their earlier
   verdicts are cleared (the other tasks' verdicts stand);
2. the model is built twice -- default schedules, and the records applied -- exactly as compile
   builds it;
3. both are run alternately in fresh processes (``Measurement.model_rounds``, default 3; each
   ``RUNS`` runs, then about ``ROUND_S`` seconds of runs), with the VM's
   instrument timing every kernel call in place (:func:`mmopt.runtime.profile.kernel_timing_worker`,
   as ``mmopt profile`` does); a kernel's time is the sum of its calls in one run, its minimum over
   the runs;
4. a candidate keeps its record when its kernel ran at least ``MARGIN`` faster in the model;
   otherwise the default schedule is kept. Each verdict, with both times, goes to the database's
   ``tasks.json`` (:meth:`mmopt.tuning.database.TuningDatabase.set_verdicts`), and compile applies
   only the kept schedule's records from then on.

Not done for records measured on farm devices (the model is not run there kernel by kernel yet)
or for dynamic models (their bucket kernels are checked alone): the report says so.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmopt.errors import MmoptError, summarize

logger = logging.getLogger(__name__)

#: A record must make its kernel at least this much faster in the model to be kept (below it, the
#: difference is within what two builds of the same schedule show).
MARGIN = 0.02
#: Timed runs of the first round (a fresh process per artifact per round; the rounds:
#: ``Measurement.model_rounds``); the later rounds run about ``ROUND_S`` seconds of the model, at
#: most ``MAX_RUNS`` runs.
RUNS = 10
ROUND_S = 0.5
MAX_RUNS = 100


@dataclass
class Verdict:
    """One task's in-model check: its kernel's time with the default schedule and with the
    best record, in the model, and which of the two is kept."""

    name: str
    default_ms: float
    tuned_ms: float
    kept: str  # "tuned" or "default"

    def to_dict(self) -> dict:
        return {"name": self.name, "default_ms": self.default_ms, "tuned_ms": self.tuned_ms,
                "kept": self.kept}


@dataclass
class Candidate:
    index: int
    name: str
    workload: str
    default_key: str
    best_key: str


def candidates(run, extracted) -> list[Candidate]:
    """The tasks of ``run`` whose fastest record (in ``run.db``, verdicts aside) is not their
    default schedule, and whose default schedule has a measured record."""
    from mmopt.tuning.database import trace_key_of
    from mmopt.tuning.knob_search import best_and_default

    found = []
    for index, state in enumerate(run.report.tasks):
        if state.default_s is None:
            continue
        mod = extracted[index].dispatched[0]
        try:
            best, default = best_and_default(run, mod, state.name)
        except Exception as exc:  # noqa: BLE001 - such a task keeps its records as they are
            logger.debug("%s: not checked in the model (%s)", state.name, summarize(exc))
            continue
        if best is None or default is None:
            continue
        best_key, default_key = trace_key_of(best.trace), trace_key_of(default.trace)
        if best_key != default_key:
            found.append(Candidate(index, state.name, state.workload, default_key, best_key))
    return found


def confirm(run, extracted, mod, reference, tgt, codegen, database, *, threads: int,
            rounds: int = 3, runs: int = RUNS) -> list[Verdict]:
    """Check the best records of ``run``'s tasks in the model ``mod`` (the Relax module tuning
    extracted its tasks from; ``reference`` its ONNX model, for the inputs) built for the compile
    target ``tgt`` with ``codegen``; store and return the verdicts (see the module docstring).
    Raises :class:`MmoptError` when the model cannot be built or run; the verdicts of the
    candidates are then left cleared (their fastest records apply)."""
    from mmopt.codegen.build import build
    from mmopt.tuning.database import TuningDatabase, schedule_hash

    found = candidates(run, extracted)
    tdb = TuningDatabase(database)
    emulated = run.report.emulated
    tdb.set_verdicts(tgt, {c.workload: (None, None) for c in found}, emulated=emulated)
    if not found:
        return []
    times = _kernel_times_in_model(
        {"default": lambda: build(mod, tgt, None, codegen),
         "tuned": lambda: build(mod, tgt, tdb.reader(tgt), codegen)},
        tgt, reference, threads, rounds, runs)
    verdicts, stored = [], {}
    for c in found:
        default_s, tuned_s = times["default"].get(c.name), times["tuned"].get(c.name)
        if default_s is None or tuned_s is None:
            logger.debug("%s: no kernel of that name ran in the model", c.name)
            continue
        keep_tuned = tuned_s <= default_s * (1 - MARGIN)
        verdict = Verdict(c.name, default_s * 1e3, tuned_s * 1e3,
                          "tuned" if keep_tuned else "default")
        verdicts.append(verdict)
        stored[c.workload] = (schedule_hash(c.best_key if keep_tuned else c.default_key),
                              {**verdict.to_dict(), "model": run.report.model})
    tdb.set_verdicts(tgt, stored, emulated=emulated)
    return verdicts


def _kernel_times_in_model(builds: dict, tgt, reference, threads: int, rounds: int,
                           runs: int) -> dict[str, dict[str, float]]:
    """``{label: {kernel symbol: seconds}}``: each build of ``builds`` (``{label: () ->
    Executable}``) exported and run alternately, ``rounds`` fresh processes each: the first of
    ``runs`` runs, the others of as many as take about ``ROUND_S`` (``runs`` to ``MAX_RUNS``); a
    kernel's time is the sum of its calls in one run, the minimum over all runs. (Ten runs of a
    2 ms model left its 20-100 us kernels 10-15 % apart between two builds of the same schedule;
    a hundred, 2-5 %.)"""
    import math

    from mmopt.runtime.bench import call_in_child
    from mmopt.runtime.inputs import random_inputs
    from mmopt.runtime.profile import kernel_timing_worker
    from mmopt.tuning.measure import export_artifact

    with tempfile.TemporaryDirectory(prefix="mmopt-confirm-") as tmp:
        paths = {label: export_artifact(make(), tgt, reference, Path(tmp) / label)
                 for label, make in builds.items()}
        inputs_path = os.path.join(tmp, "inputs.npz")
        np.savez(inputs_path, **random_inputs(reference, 0))
        best: dict[str, dict[str, float]] = {label: {} for label in paths}
        order = list(paths)
        fastest = math.inf
        for r in range(rounds):
            if r == 1:
                runs = max(runs, min(MAX_RUNS, math.ceil(ROUND_S / fastest)))
            for label in order if r % 2 == 0 else order[::-1]:
                raw = call_in_child(kernel_timing_worker, str(paths[label]), inputs_path, 2, runs,
                                    False, None, threads, threads=threads,
                                    what="timing the model's kernels")
                fastest = min([fastest, *raw["totals"]])
                for calls in raw["runs"]:
                    per_run: dict[str, float] = {}
                    for symbol, seconds in calls:
                        per_run[symbol] = per_run.get(symbol, 0.0) + seconds
                    for symbol, seconds in per_run.items():
                        best[label][symbol] = min(best[label].get(symbol, seconds), seconds)
    return best


def confirm_or_note(run, extracted, mod, reference, tgt, codegen, database, *, threads: int,
                    why_not: str | None) -> None:
    """:func:`confirm` for :func:`mmopt.tuning.tune.tune`: the verdicts go to the report's tasks;
    when the check cannot run (``why_not``, or it fails), the report's notes say so and the
    records apply by their own times."""
    report = run.report
    if why_not is None and run.measurement.model_rounds < 1:
        why_not = "turned off: Measurement.model_rounds = 0"
    if why_not is not None:
        # earlier verdicts were about the records known then: the tasks searched now apply
        # their fastest record again
        from mmopt.tuning.database import TuningDatabase

        TuningDatabase(database).set_verdicts(
            tgt, {t.workload: (None, None) for t in report.tasks if t.trials},
            emulated=report.emulated)
        report.notes.append(f"the records were not checked in the model ({why_not}): each task "
                            "applies its fastest record as measured alone")
        return
    report.current = None
    run.on_update(report, "confirm")
    try:
        verdicts = confirm(run, extracted, mod, reference, tgt, codegen, database,
                           threads=threads, rounds=run.measurement.model_rounds)
    except (MmoptError, RuntimeError, OSError) as exc:
        report.notes.append(f"the in-model check of the records failed ({summarize(exc)}): each "
                            "task applies its fastest record as measured alone")
        return
    by_name = {v.name: v for v in verdicts}
    for state in report.tasks:
        verdict = by_name.get(state.name)
        if verdict is not None:
            state.in_model = verdict.to_dict()
    run.on_update(report, "confirmed")
