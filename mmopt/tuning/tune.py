"""Tuning of a model's tasks, measured on this machine or on farm devices.

Two searches (``search``, see :data:`SEARCHES`): **knobs** (the default on CPUs) measures variants
of mmopt's own default schedule of each task -- the register tile, loop order and reduction split
of its main contraction, a few to a few dozen per task -- and records each as a MetaSchedule
tuning record (the schedule's trace), so ``compile --db`` applies the fastest exactly like any
other record; **metaschedule** runs MetaSchedule's evolutionary search over its own design space
(far more candidates, far slower: its space starts from unscheduled loops). ``both`` runs the knob
variants, then MetaSchedule with the remaining trials. Candidates run with as many threads as the
deployed model gets (the physical cores; TVM's own default is half the logical cores on x86).

What a run does, in order:

1. build the Relax module exactly as ``mmopt.compile`` does and extract its tuning tasks (the fused
   TIR functions of :func:`mmopt.codegen.pipeline.tuning_module`);
2. count the records the database already holds for each task (for this target only): a task with
   ``trials_per_task`` records, or whose search space is exhausted, is done. This is what makes a
   second run resume, and what lets models that share tasks share records;
3. knobs: measure each task's default schedule (once: it is the baseline record), then its knob
   variants in two stages (every register tile; then the fastest tile with the other loop order
   and reduction splits), each measured ``KNOB_ROUNDS`` times interleaved;
   metaschedule: tune the remaining tasks in rounds: each round gives every unfinished task one
   batch of trials (MetaSchedule's evolutionary search, warm-started from the task's records), so
   a ``--trials`` or time budget is spread over all tasks rather than spent on the first ones;
4. every measured candidate is appended to the database as soon as its batch returns, so an
   interruption (Ctrl-C, the time budget, a device that disappears) loses nothing measured.
   Candidates whose *run* failed on a farm device are not recorded (the device may be to blame;
   resuming measures them again); candidates that failed to *build* are, as MetaSchedule does;
5. each task's best record is checked in the model (:mod:`mmopt.tuning.confirm`): the model is
   built with the default schedules and with the records, each kernel is timed in place, and a
   record that does not make its kernel faster *there* gives way to the default schedule. This
   runs also when the time budget is reached (it takes a few builds and seconds of runs), not
   after Ctrl-C.

Builds happen on this machine (cross-linked for ARM). Measurements happen in a local runner, or
through TVM's RPC runner on the devices of a key, one candidate per device at a time.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence

from mmopt import targets as _targets
from mmopt.codegen import prefetch
from mmopt.codegen.options import CodegenOptions, differences
from mmopt.errors import MmoptError
from mmopt.passes import DEFAULT_LEVEL
from mmopt.runtime.threads import local_cores
from mmopt.tuning import farm as _farm
from mmopt.tuning.bucket_tasks import bucket_tasks
from mmopt.tuning.confirm import confirm_or_note
from mmopt.tuning.database import (
    EMULATED_SUFFIX,
    FAILED_RUN_SECS,
    TaskInfo,
    TuningDatabase,
    is_database,
    target_slug,
)
from mmopt.tuning.knob_search import (
    KNOB_ROUNDS,
    knob_rounds,
    knob_space_size,
    measure_defaults,
    recheck,
)
from mmopt.tuning.metaschedule_search import metaschedule_rounds
from mmopt.tuning.secure import resolve_secret
from mmopt.tuning.tune_report import (
    DEFAULT_SEARCH,
    SEARCHES,
    Measurement,
    OnUpdate,
    TaskState,
    TuneReport,
)
from mmopt.tuning.tune_run import TuneRun
from mmopt.tuning.workers import (
    device_facts,
    load_tensor_intrinsics,
    make_builder,
    measuring_threads,
    session_function,
    target_for_tuning,
)

logger = logging.getLogger(__name__)

DEFAULT_TRIALS_PER_TASK = 64
#: Trials per task per round (MetaSchedule's ``num_trials_per_iter``).
DEFAULT_BATCH = 32


def parse_duration(text: str | float | int | None) -> float | None:
    """``"30m"``, ``"1h30m"``, ``"90s"``, ``"45"`` (seconds) -> seconds."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", value)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", value).strip():
        raise MmoptError(f"--time-budget {text!r}: expected a duration like 90s, 30m or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def tune(model, target, database, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
         opt_level: int = DEFAULT_LEVEL, trials_per_task: int = DEFAULT_TRIALS_PER_TASK,
         trials: int | None = None, time_budget: float | str | None = None, farm=None,
         key: str | None = None, batch: int | None = None, seed: int | None = None,
         measurement: Measurement | None = None, on_update: OnUpdate | None = None,
         stop: threading.Event | None = None, tasks: Sequence[str] | None = None,
         dry_run: bool = False, search: str = DEFAULT_SEARCH,
         codegen: CodegenOptions | None = None, farm_secret=None, dims=None,
         buckets: Sequence[Mapping[str, Sequence[int]]] = ()) -> TuneReport:
    """Tune every task of ``model`` for ``target`` into the tuning database at ``database``.

    ``trials_per_task``: records wanted per task (counting those already in the database);
    ``trials``: at most this many trials in this run; ``time_budget``: seconds or "30m";
    ``farm``/``key``: measure on the devices of ``key`` registered at the tracker ``farm``
    ("HOST:PORT") instead of this machine; without ``key``, the target's rpc key, or its emulated
    key (``arm64-qemu``) when only emulated devices are there (the report's ``notes`` say so);
    records measured on emulated devices go to the database's emulated part, which compile
    applies only when asked; ``farm_secret``: the farm secret directory (default
    ``$MMOPT_FARM_SECRET``, see :mod:`mmopt.tuning.secure`); ``stop``: set it (e.g. from a
    SIGINT handler) to end the run after the current batch; ``tasks``: tune only the tasks whose
    name contains one of these strings; ``dry_run``: only plan (the report lists the tasks, their
    records and the trials a run would measure); ``search``: one of :data:`SEARCHES`;
    ``codegen``: the code-generation settings (:mod:`mmopt.codegen.options`, default from the
    environment), stored with the records so a compile with other settings says so.
    ``dims``/``buckets``: as for ``mmopt.compile`` (a dynamic model): the buckets' statically
    specialized kernels are tuned (records keyed by their static shapes; ``tasks.json`` names each
    task's buckets, ``mmopt db show`` lists them); the dynamic kernels are not tunable (symbolic
    extents) and are left out, with a note. Never raises for a stop: the report says why it
    stopped, and running again resumes.
    """
    from tvm.s_tir import meta_schedule as ms

    from mmopt.codegen.pipeline import tuning_module
    from mmopt.tuning.measure import model_name, relax_module

    tgt = _targets.get(target)
    _targets.require_toolchain(tgt)
    measurement = measurement or Measurement()
    if trials_per_task < 1:
        raise MmoptError("--trials-per-task must be at least 1")
    if search not in SEARCHES:
        raise MmoptError(f"--search {search!r}: expected one of {', '.join(SEARCHES)}")
    if tgt.device != "cpu":
        search = "metaschedule"  # knobs vary mmopt's CPU schedules; GPUs use dlight's
    budget_s = parse_duration(time_budget)
    deadline = time.monotonic() + budget_s if budget_s is not None else None

    # Where candidates run.
    address = secret = None
    emulated = False
    notes: list[str] = []
    if farm is not None:
        address = _farm.parse_address(farm) if isinstance(farm, str) else tuple(farm)
        secret = resolve_secret(farm_secret)
        explicit = key is not None
        key = key or tgt.rpc_key
        if not key:
            raise MmoptError(f"target {tgt.name} has no rpc key; give --key")
        key, n_devices, note = _farm.choose_key(address, key, fallback_emulated=not explicit,
                                                secret=secret)
        if note:
            logger.warning("%s", note)
            notes.append(note)
        threads, info = device_facts(address, key, measurement.device_wait_s, secret)
        num_cores = threads or local_cores()
        emulated = bool(info.get("emulated")) or _farm.is_emulated_key(key)
        runner_text = (f"{n_devices} {'emulated ' if emulated else ''}device(s) {key!r} at "
                       f"{_farm.format_address(address)}")
    else:
        if not tgt.runs_here():
            raise MmoptError(f"target {tgt.name} cannot run on this machine "
                             f"({tgt.why_not_here()}); measure on farm devices: "
                             f"--farm HOST:PORT --key {tgt.rpc_key or 'KEY'}")
        n_devices = 1
        num_cores = local_cores()
        runner_text = "this machine"

    # Tasks, exactly as compile will look them up.
    resolved: list = []
    mod, _reference = relax_module(model, input_shapes, opt_level, dims=dims, buckets=buckets,
                                   resolved=resolved)
    if dims and not resolved:
        raise MmoptError("tuning a dynamic model tunes its buckets' kernels (the dynamic ones "
                         "have symbolic extents): give the sizes with --buckets INPUT:D1,D2,...")
    tgt = _targets.for_module(tgt, mod)  # as compile builds it: the same database identity
    tuning_target = target_for_tuning(tgt, num_cores)
    codegen = codegen or CodegenOptions.from_env()
    lowered = tuning_module(mod, tgt, codegen)
    extracted = [t for t in ms.relax_integration.extract_tasks(lowered, tuning_target)
                 if not t.mod.attrs.get("tirx.is_scheduled", False)]
    task_buckets: dict[str, list[str]] = {}
    if resolved:
        extracted, task_buckets, n_dynamic = bucket_tasks(lowered, extracted, resolved)
        if n_dynamic:
            notes.append(f"{n_dynamic} dynamic kernel(s) (symbolic extents) are not tunable: "
                         "they keep their default schedules")
    if tasks:
        extracted = [t for t in extracted if any(pattern in t.task_name for pattern in tasks)]
        if not extracted:
            raise MmoptError(f"no task of {model_name(model)} matches {', '.join(tasks)}")
    if dry_run and not is_database(database):
        tdb, counts, infos, best_before = None, {}, {}, {}
    else:
        tdb = TuningDatabase(database, create=True)
        if not dry_run:
            before = tdb.record_codegen(tgt, codegen.resolved(tgt), emulated=emulated)
            changed = differences(before, codegen.resolved(tgt))
            if changed:
                logger.warning("%s: earlier records of %s were tuned with other code-generation "
                               "settings (%s); they apply only to the kernels these settings do "
                               "not change", database, tgt.name,
                               "; ".join(c.replace("tuned with", "earlier").replace(
                                   "compiled with", "now") for c in changed))
        schedules = tdb.schedules(tgt, emulated=emulated)
        counts = {w: len(traces) for w, traces in schedules.items()}
        infos = tdb.tasks(tgt, emulated=emulated)
        best_before = {w: min(traces.values()) for w, traces in schedules.items()
                       if min(traces.values()) < FAILED_RUN_SECS}
    report = TuneReport(model_name(model), tgt.name, str(database),
                        target_slug(tgt) + (EMULATED_SUFFIX if emulated else ""), runner_text,
                        num_cores, search, key=key, emulated=emulated, notes=notes)
    probe = ms.database.MemoryDatabase()
    bucket_of: dict[str, list[str]] = {}
    for task in extracted:
        workload = str(probe.commit_workload(task.dispatched[0]).as_json()[0])
        info = infos.get(workload, TaskInfo(task.task_name))
        info.buckets = sorted(set(info.buckets) | set(task_buckets.get(task.task_name, [])))
        bucket_of[workload] = info.buckets
        # The default schedule's record is a baseline, not a search trial.
        baseline = 1 if info.default_s is not None else 0
        state = TaskState(task.task_name, workload, int(task.weight),
                          trials_before=max(counts.get(workload, 0) - baseline, 0),
                          default_s=info.default_s, best_before_s=best_before.get(workload),
                          exhausted=info.exhausted, persisted_exhausted=info.exhausted)
        state.best_s = state.best_before_s
        if search != "metaschedule":
            state.knob_space = knob_space_size(task.dispatched[0], tuning_target)
        if search == "knobs":
            # the knob space is small: a task is done when every variant has been measured
            state.planned = max(min(trials_per_task, state.knob_space) - state.trials_before, 0)
            state.exhausted = state.planned == 0 and state.trials_before < trials_per_task
        elif not state.exhausted:
            state.planned = max(trials_per_task - state.trials_before, 0)
        report.tasks.append(state)
    _cap(report.tasks, trials)
    report.planned = sum(t.planned for t in report.tasks)
    on = on_update or (lambda _r, _e: None)
    on(report, "start")

    def save_tasks() -> None:
        tdb.update_tasks(tgt, {t.workload: TaskInfo(
            t.name, t.exhausted if search != "knobs" else t.persisted_exhausted, [report.model],
            t.default_s, bucket_of.get(t.workload, [])) for t in report.tasks}, emulated=emulated)

    if dry_run:
        if tdb is not None:
            final = tdb.record_counts(tgt, emulated=emulated)
            report.records = sum(final.get(t.workload, 0) for t in report.tasks)
        return report
    if report.planned or any(t.default_s is None for t in report.tasks):
        run = TuneRun(report, tdb.writer(tgt, emulated=emulated), tuning_target, measurement,
                      address, key, deadline, stop, on_update, secret)
        run.seen = {w: set(traces) for w, traces in schedules.items()}
        run.secs = {w: dict(traces) for w, traces in schedules.items()}
        run.save_tasks = save_tasks
        # the default schedules' weight prefetching is decided for the whole model, as compile
        # decides it (mmopt.codegen.prefetch): a task's candidates are scheduled the same way
        streamed = tgt.device == "cpu" and prefetch.weights_from_memory(lowered,
                                                                        tgt.tvm_target())
        try:
            with prefetch.streaming(streamed):
                _tune_rounds(run, extracted, tgt, n_devices, batch or DEFAULT_BATCH, seed,
                             database, search)
        finally:
            report.current = None
            report.stopped = run.stop_reason
        if report.stopped is None and not run.measured_any and run.first_error:
            report.stopped = f"nothing could be measured on {runner_text}: {run.first_error}"
        if report.stopped in (None, "time budget reached") and not (stop and stop.is_set()):
            why_not = ("measured on farm devices" if address is not None
                       else "a dynamic model" if resolved else None)
            with prefetch.streaming(streamed):  # the default schedules as measured
                confirm_or_note(run, extracted, mod, _reference, tgt, codegen, database,
                                threads=num_cores, why_not=why_not)
    save_tasks()
    final = tdb.record_counts(tgt, emulated=emulated)
    report.records = sum(final.get(t.workload, 0) for t in report.tasks)
    report.elapsed_s = time.monotonic() - report.started
    on(report, "end")
    return report


def _cap(tasks: list[TaskState], trials: int | None) -> None:
    """Spread a global ``trials`` budget over tasks: round-robin, one trial at a time."""
    if trials is None or trials >= sum(t.planned for t in tasks):
        return
    wanted = {id(t): t.planned for t in tasks}
    for t in tasks:
        t.planned = 0
    left = max(trials, 0)
    while left > 0:
        progressed = False
        for t in tasks:
            if left and t.planned < wanted[id(t)]:
                t.planned += 1
                left -= 1
                progressed = True
        if not progressed:
            break


def _tune_rounds(run: TuneRun, extracted, tgt, n_devices: int, batch: int, seed, database,
                 search: str = "metaschedule") -> None:
    with measuring_threads(run.report.num_cores if run.farm is None else None):
        _tune_rounds_inner(run, extracted, tgt, n_devices, batch, seed, database, search)


def _tune_rounds_inner(run: TuneRun, extracted, tgt, n_devices: int, batch: int, seed, database,
                       search: str) -> None:
    from tvm.s_tir import meta_schedule as ms

    m = run.measurement
    builder = make_builder(m.builder_workers or max(1, min(os.cpu_count() or 1, batch, 4)),
                           m.build_timeout_s, tgt.cross_compiler)
    evaluator = ms.runner.EvaluatorConfig(number=m.number, repeat=m.repeat,
                                          min_repeat_ms=m.min_repeat_ms)
    if run.farm is not None:
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=run.farm[0], tracker_port=run.farm[1],
                                           tracker_key=run.key,
                                           session_timeout_sec=int(m.run_timeout_s)),
            evaluator_config=evaluator, max_workers=n_devices,
            f_create_session=session_function(
                run.farm, run.key, m.device_wait_s, m.run_timeout_s,
                str(run.secret.path) if run.secret is not None else None))
    else:
        runner = ms.runner.LocalRunner(timeout_sec=m.run_timeout_s, evaluator_config=evaluator)
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=run.report.num_cores)
    load_tensor_intrinsics(tgt)
    try:
        if tgt.device == "cpu":
            measure_defaults(run, extracted, builder, runner)
        if search in ("knobs", "both"):
            knob_rounds(run, extracted, builder, runner, batch, final=search == "knobs")
        if search in ("metaschedule", "both"):
            metaschedule_rounds(run, extracted, builder, runner, cost_model, batch, seed,
                                str(TuningDatabase(database).target_dir(
                                    tgt, emulated=run.report.emulated)))
        if tgt.device == "cpu" and run.stop_reason in (None, "time budget reached"):
            recheck(run, extracted, builder, runner)
    finally:
        # Worker processes (builds, local runs, RPC clients) end with the run.
        for pool in (builder.pool, runner.pool):
            pool.shutdown(wait=False)


__all__ = ["DEFAULT_BATCH", "DEFAULT_SEARCH", "DEFAULT_TRIALS_PER_TASK", "KNOB_ROUNDS", "SEARCHES",
           "Measurement", "OnUpdate", "TaskState", "TuneReport", "parse_duration", "tune"]
