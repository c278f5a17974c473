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
   resuming measures them again); candidates that failed to *build* are, as MetaSchedule does.

Builds happen on this machine (cross-linked for ARM). Measurements happen in a local runner, or
through TVM's RPC runner on the devices of a key, one candidate per device at a time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mmopt import targets as _targets
from mmopt.codegen.options import CodegenOptions, differences
from mmopt.errors import MmoptError, summarize
from mmopt.passes import DEFAULT_LEVEL
from mmopt.tuning import farm as _farm
from mmopt.tuning.database import (
    EMULATED_SUFFIX,
    FAILED_RUN_SECS,
    TaskInfo,
    TuningDatabase,
    is_database,
    target_slug,
)
from mmopt.tuning.secure import resolve_secret

logger = logging.getLogger(__name__)

DEFAULT_TRIALS_PER_TASK = 64
#: How candidates are found. ``knobs``: variants of mmopt's own default schedule (register tile,
#: loop order, reduction split of each task's main contraction; a few to a few dozen per task,
#: see :func:`mmopt.codegen.cpu_schedules.contraction_knob_space`); ``metaschedule``:
#: MetaSchedule's evolutionary search over its own design space; ``both``: the knob variants
#: first, then MetaSchedule with the rest of the trials. CPU targets only for knobs (other
#: devices always use MetaSchedule).
SEARCHES = ("knobs", "metaschedule", "both")
DEFAULT_SEARCH = "knobs"
#: Times each knob variant is measured (interleaved with the others of its batch; the fastest
#: counts): one measurement on a shared machine is easily off by a factor of two.
KNOB_ROUNDS = 2
#: Trials per task per round (MetaSchedule's ``num_trials_per_iter``).
DEFAULT_BATCH = 32
#: Times the best and the default schedule of a task are measured again when tuning ends.
RECHECK_ROUNDS = 3


@dataclass
class Measurement:
    """How candidates are timed (MetaSchedule's EvaluatorConfig) and how long things may take."""

    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 100
    build_timeout_s: float = 60.0
    run_timeout_s: float = 60.0
    #: farm: how long a candidate waits for a free device before it counts as failed
    device_wait_s: float = 120.0
    builder_workers: int | None = None


@dataclass
class TaskState:
    name: str
    workload: str
    weight: int
    #: records in the database before this run, and trials measured by this run
    trials_before: int = 0
    trials: int = 0
    errors: int = 0
    #: the default (untuned) schedule's time, measured once as the task's first record
    default_s: float | None = None
    best_before_s: float | None = None
    best_s: float | None = None
    #: trials this run plans for the task
    planned: int = 0
    exhausted: bool = False
    #: knob variants of the task's default schedule (0: nothing to vary; see SEARCHES)
    knob_space: int = 0
    #: what tasks.json keeps as "exhausted" (MetaSchedule's search space; a knob-only run
    #: leaves it as it was)
    persisted_exhausted: bool = False

    @property
    def done(self) -> bool:
        return self.exhausted or self.trials >= self.planned

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in (
            "name", "workload", "weight", "trials_before", "trials", "errors", "default_s",
            "best_before_s", "best_s", "planned", "exhausted", "knob_space")}


@dataclass
class TuneReport:
    """State of a tuning run; updated live (progress callbacks get it) and returned at the end."""

    model: str
    target: str
    database: str
    sub_database: str
    runner: str
    num_cores: int
    search: str = DEFAULT_SEARCH
    tasks: list[TaskState] = field(default_factory=list)
    planned: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float = 0.0
    #: None when tuning ran to completion; otherwise why it stopped (records are kept)
    stopped: str | None = None
    current: int | None = None
    #: the device key measured on (farm runs), and whether those devices are emulated: then the
    #: records go to the database's emulated part (see mmopt.tuning.database)
    key: str | None = None
    emulated: bool = False
    #: things the user should know about this run (e.g. a fallback to emulated devices)
    notes: list[str] = field(default_factory=list)

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    #: records the database holds for these tasks (set at the end of the run)
    records: int = 0

    @property
    def eta_s(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if not self.trials or elapsed <= 0:
            return None
        return max(self.planned - self.trials, 0) * elapsed / self.trials

    def to_dict(self) -> dict:
        return {"model": self.model, "target": self.target, "database": self.database,
                "sub_database": self.sub_database, "runner": self.runner,
                "num_cores": self.num_cores, "search": self.search, "planned": self.planned,
                "trials": self.trials, "key": self.key, "emulated": self.emulated,
                "notes": self.notes,
                "records": self.records, "elapsed_s": self.elapsed_s, "stopped": self.stopped,
                "tasks": [t.to_dict() for t in self.tasks]}


#: progress callback: ``(report, event)`` with event "start", "task" (a task's batch begins),
#: "measured" (a batch was recorded) or "end"
OnUpdate = Callable[[TuneReport, str], None]


class _Stop(Exception):
    """Raised inside MetaSchedule's loop (from a measure callback) to end a batch early."""


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


# --------------------------------------------------------------------------------------------------
# builder and runner (the functions below are sent to worker processes by value)


def _build_and_export(cross_compiler: str | None):
    """The builder's job for one candidate (sent to a worker process by value): lower it and link
    a shared library, so devices need no compiler (the emulated one has none)."""

    def job(mod, target):
        import os as _os
        import tempfile as _tempfile

        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support import cc as _cc

        # MetaSchedule's default build first imports tvm.s_tir.tensor_intrin (20-30 s per worker).
        # Candidates arrive with their intrinsics already applied; lowering does not need it.
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        lib = tvm_build(mod, target=target)
        path = _os.path.join(_tempfile.mkdtemp(prefix="mmopt-tune-"), "candidate.so")
        if cross_compiler:
            lib.export_library(path, fcompile=_cc.cross_compiler(cross_compiler))
        else:
            lib.export_library(path)
        return path

    return job


def _make_builder(max_workers: int, timeout_s: float, cross_compiler: str | None):
    """A MetaSchedule builder whose worker processes live for the whole run.

    MetaSchedule's LocalBuilder starts new workers for every batch; each spends seconds importing
    TVM, which dominates small batches. Workers are recycled after 64 builds (TVM's reason for
    fresh pools is a slow leak in long-lived workers).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    job = _build_and_export(cross_compiler)

    @derived_object
    class PersistentBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_s,
                                          maximum_process_uses=64)

        def build(self, build_inputs):
            results = []
            for item in self.pool.map_with_error_catching(
                    lambda x: job(*x), [(b.mod, b.target) for b in build_inputs]):
                if item.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(item.value, None))
                elif item.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {timeout_s:.0f}s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {item.value}"))
            return results

    return PersistentBuilder()


def _session_function(address: tuple[str, int], key: str, wait_s: float, timeout_s: float,
                      secret: str | None = None):
    """The RPC runner's session factory (sent to its worker processes by value: the farm secret
    travels as its directory)."""

    def create_session(_rpc_config):
        from mmopt.tuning.farm import request_session

        return request_session(address, key, wait_s=wait_s, session_timeout=timeout_s,
                               secret=secret)

    return create_session


def _device_facts(address: tuple[str, int], key: str, wait_s: float,
                  secret) -> tuple[int | None, dict]:
    """``(threads a model gets, mmopt.device.info)`` of a device of ``key`` (asked from one
    device); ``(None, {})`` when it cannot be asked."""
    try:
        session = _farm.request_session(address, key, wait_s=wait_s, session_timeout=60,
                                        secret=secret)
        threads = int(session.get_function("runtime.NumThreads")())
        return threads, _farm.device_info(session)
    except Exception as exc:  # noqa: BLE001 - only a default is lost
        logger.warning("could not ask a %s device for its thread count (%s)", key, summarize(exc))
        return None, {}


def _local_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# the tuning run


class _Run:
    """One tuning run: owns MetaSchedule's builder/runner/cost model and the live report."""

    def __init__(self, report: TuneReport, db, target, measurement: Measurement, farm_address,
                 key, deadline: float | None, stop: threading.Event | None,
                 on_update: OnUpdate | None, secret=None):
        self.report = report
        self.db = db
        self.target = target
        self.measurement = measurement
        self.farm = farm_address
        self.key = key
        #: the farm secret (a FarmSecret, or None for plain RPC)
        self.secret = secret
        self.deadline = deadline
        self.stop_event = stop
        self.on_update = on_update or (lambda _r, _e: None)
        self.stop_reason: str | None = None
        self.batch_measured = 0
        self.batch_errors = 0
        #: schedule traces already recorded, by workload (see :func:`_trace_key`)
        self.seen: dict[str, set[str]] = {}
        #: their best mean run seconds, by workload and trace (knob search resumes from them)
        self.secs: dict[str, dict[str, float]] = {}
        self.save_tasks: Callable[[], None] = lambda: None
        #: the first failure of a build or measurement, for the report when nothing succeeds
        self.first_error: str | None = None
        self.measured_any = False

    def failed(self, message: str | None) -> None:
        text = summarize(RuntimeError(message or "unknown error"))
        logger.debug("candidate failed: %s", text)
        if self.first_error is None:
            self.first_error = text

    # -- stop conditions -------------------------------------------------------------------------

    def check_stop(self, after_errors: bool = False) -> str | None:
        if self.stop_reason:
            return self.stop_reason
        if self.stop_event is not None and self.stop_event.is_set():
            self.stop_reason = "interrupted"
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop_reason = "time budget reached"
        elif self.farm is not None and after_errors:
            try:
                devices = _farm.status(self.farm, secret=self.secret).devices(self.key)
            except MmoptError as exc:
                self.stop_reason = f"the tracker is gone ({exc.message})"
            else:
                if devices == 0:
                    self.stop_reason = (f"no device with key {self.key!r} is left at "
                                        f"{_farm.format_address(self.farm)}")
        return self.stop_reason

    # -- measure callbacks -----------------------------------------------------------------------

    def callbacks(self) -> list:
        from tvm.ir.utils import derived_object
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        run = self

        @derived_object
        class Record(PyMeasureCallback):
            """Append each measured candidate to the database (see the module docstring)."""

            def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
                run.record(task_scheduler, task_id, candidates, builder_results, runner_results)

        @derived_object
        class Control(PyMeasureCallback):
            """Report progress; end the batch loop when asked to stop."""

            def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
                errors = any(r.error_msg is not None for r in runner_results)
                if candidates:
                    run.on_update(run.report, "measured")
                if run.check_stop(after_errors=errors):
                    raise _Stop(run.stop_reason)

        return [Record(), ms.measure_callback.RemoveBuildArtifact(),
                ms.measure_callback.UpdateCostModel(), Control()]

    def record(self, task_scheduler, task_id, candidates, builder_results, runner_results) -> None:
        from tvm.s_tir.meta_schedule.database import TuningRecord
        from tvm.tirx import FloatImm

        state = self.report.tasks[self.report.current]
        ctx = task_scheduler.tasks_[task_id].ctx
        workload = self.db.commit_workload(ctx.mod)
        stopping = self.stop_reason is not None or (
            self.stop_event is not None and self.stop_event.is_set())
        for candidate, built, ran in zip(candidates, builder_results, runner_results):
            if built.error_msg is None and ran.error_msg is None and ran.run_secs:
                run_secs = list(ran.run_secs)
                trace = _trace_key(candidate.sch.trace)
                if trace in self.seen.setdefault(state.workload, set()):
                    continue  # measured before (a fresh search may propose it again): not new
                self.seen[state.workload].add(trace)
                mean = sum(float(s) for s in run_secs) / len(run_secs)
                state.best_s = mean if state.best_s is None else min(state.best_s, mean)
                self.measured_any = True
            elif stopping:
                continue  # workers are being interrupted: the failure says nothing of the candidate
            elif built.error_msg is None and self.farm is not None:
                state.errors += 1
                self.batch_errors += 1
                self.failed(ran.error_msg)  # not recorded: the device may be to blame
                continue
            else:
                state.errors += 1
                self.batch_errors += 1
                self.failed(built.error_msg or ran.error_msg)
                run_secs = [FloatImm("float32", FAILED_RUN_SECS)]
            self.db.commit_tuning_record(TuningRecord(candidate.sch.trace, workload, run_secs,
                                                      ctx.target, candidate.args_info))
            state.trials += 1
            self.batch_measured += 1


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
        threads, info = _device_facts(address, key, measurement.device_wait_s, secret)
        num_cores = threads or _local_cores()
        emulated = bool(info.get("emulated")) or _farm.is_emulated_key(key)
        runner_text = (f"{n_devices} {'emulated ' if emulated else ''}device(s) {key!r} at "
                       f"{_farm.format_address(address)}")
    else:
        if not tgt.runs_here():
            raise MmoptError(f"target {tgt.name} cannot run on this machine "
                             f"({tgt.why_not_here()}); measure on farm devices: "
                             f"--farm HOST:PORT --key {tgt.rpc_key or 'KEY'}")
        n_devices = 1
        num_cores = _local_cores()
        runner_text = "this machine"

    # Tasks, exactly as compile will look them up.
    resolved: list = []
    mod, _reference = relax_module(model, input_shapes, opt_level, dims=dims, buckets=buckets,
                                   resolved=resolved)
    if dims and not resolved:
        raise MmoptError("tuning a dynamic model tunes its buckets' kernels (the dynamic ones "
                         "have symbolic extents): give the sizes with --buckets INPUT:D1,D2,...")
    tuning_target = _tuning_target(tgt, num_cores)
    codegen = codegen or CodegenOptions.from_env()
    lowered = tuning_module(mod, tgt, codegen)
    extracted = [t for t in ms.relax_integration.extract_tasks(lowered, tuning_target)
                 if not t.mod.attrs.get("tirx.is_scheduled", False)]
    task_buckets: dict[str, list[str]] = {}
    if resolved:
        from mmopt.codegen.buckets import kernels_by_function

        calls = kernels_by_function(lowered)
        labels = {b.function: b.input_label() for b in resolved}
        for function, kernels in calls.items():
            for kernel in kernels:
                if function in labels:
                    task_buckets.setdefault(kernel, []).append(labels[function])
        symbolic = [t for t in extracted if not _static_task(t)]
        if symbolic:
            notes.append(f"{len(symbolic)} dynamic kernel(s) (symbolic extents) are not tunable: "
                         "they keep their default schedules")
        extracted = [t for t in extracted if _static_task(t)]
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
            state.knob_space = _knob_space_size(task.dispatched[0], tuning_target)
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
        run = _Run(report, tdb.writer(tgt, emulated=emulated), tuning_target, measurement, address,
                   key, deadline, stop, on_update, secret)
        run.seen = {w: set(traces) for w, traces in schedules.items()}
        run.secs = {w: dict(traces) for w, traces in schedules.items()}
        run.save_tasks = save_tasks
        try:
            _tune_rounds(run, extracted, tgt, n_devices, batch or DEFAULT_BATCH, seed, database,
                         search)
        finally:
            report.current = None
            report.stopped = run.stop_reason
        if report.stopped is None and not run.measured_any and run.first_error:
            report.stopped = f"nothing could be measured on {runner_text}: {run.first_error}"
    save_tasks()
    final = tdb.record_counts(tgt, emulated=emulated)
    report.records = sum(final.get(t.workload, 0) for t in report.tasks)
    report.elapsed_s = time.monotonic() - report.started
    on(report, "end")
    return report


def _static_task(task) -> bool:
    """Whether a tuning task's kernel has static buffer shapes (symbolic ones cannot be measured:
    MetaSchedule makes its arguments from the shapes)."""
    func = task.dispatched[0]["main"] if "main" in task.dispatched[0] else None
    if func is None:
        return True
    from tvm import tirx

    for param in func.params:
        if isinstance(param, tirx.Buffer):
            if not all(hasattr(d, "value") for d in param.shape):
                return False
        elif str(param.dtype).startswith("int"):
            return False  # a symbolic extent passed as a scalar argument
    return True


def _trace_key(trace) -> str:
    """A trace as the database stores it (decisions included), for duplicate detection."""
    from mmopt.tuning.database import trace_key

    def plain(value):
        if isinstance(value, (bool, int, float)) or value is None:
            return value
        if isinstance(value, str):
            return str(value)
        if hasattr(value, "items"):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "value"):  # IntImm / FloatImm
            return value.value
        return [plain(v) for v in value]

    return trace_key(plain(trace.as_json()))


def _load_tensor_intrinsics(tgt) -> None:
    """Register the tensor intrinsics MetaSchedule's rules use for ``tgt``, and only those.

    MetaSchedule's TuneContext runs ``import tvm.s_tir.tensor_intrin``, whose ``__init__``
    registers the intrinsics of every backend by parsing TVMScript: 27 s of CPU here, 17 s of it
    for CUDA's tensor-core intrinsics. For a CPU target the x86 and ARM modules (2 s) are all its
    rules look up, so the package is entered into ``sys.modules`` without running its
    ``__init__`` and just those submodules are imported; the TuneContext's import then finds it
    loaded. Other targets import the whole package as TVM does. Importing a submodule later (e.g.
    ``tvm.s_tir.tensor_intrin.cuda``) still works: the package has its normal ``__path__``.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if tgt.device != "cpu":
        if name in sys.modules and getattr(sys.modules[name], "_mmopt_partial", False):
            for sub in ("cuda", "rocm", "x86", "arm_cpu", "hexagon", "riscv_cpu"):
                importlib.import_module(f"{name}.{sub}")
        else:
            importlib.import_module(name)
        return
    if name not in sys.modules:
        import tvm.s_tir

        package = importlib.util.module_from_spec(importlib.util.find_spec(name))
        package._mmopt_partial = True
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package
    for sub in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{sub}")


def _tuning_target(tgt, num_cores: int):
    """The compile target plus what MetaSchedule needs to tune CPU code (the core count)."""
    import tvm

    tvm_dict = dict(tgt.tvm)
    if tvm_dict.get("kind") == "llvm":
        tvm_dict["num-cores"] = int(num_cores)
    if tgt.host is not None:
        return tvm.target.Target(tvm_dict, host=tgt.host)
    return tvm.target.Target(tvm_dict)


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


def _knob_space_size(mod, target) -> int:
    """How many knob variants :func:`_knob_rounds` may measure for a task (an upper bound: some
    may turn out to be the same schedule as another)."""
    from mmopt.codegen import cpu_schedules as cs

    try:
        found = cs.tunable_contraction(mod["main"], target)
    except Exception as exc:  # noqa: BLE001 - nothing to vary
        logger.debug("no knobs: %s", summarize(exc))
        return 0
    if found is None:
        return 0
    _name, shape, registers = found
    first = cs.contraction_knob_space(shape, registers)
    second = cs.contraction_knob_space(shape, registers, cs.default_knobs(shape, registers))
    return len(first) + len(second)


@contextlib.contextmanager
def _threads(count: int | None):
    """Measure with ``count`` threads: candidates run in worker processes started from here, and
    TVM's default (half the logical cores on x86, for hyper-threading) is not what a deployed
    model gets (``mmopt bench --threads``, the speed suite: the physical cores)."""
    if count is None:
        yield
        return
    # Unpinned worker threads, as mmopt.runtime runs models: a pinned one cannot move off a core
    # that other work keeps busy, and every parallel kernel then waits for it.
    settings = {"TVM_NUM_THREADS": str(count),
                "TVM_BIND_THREADS": os.environ.get("TVM_BIND_THREADS", "0")}
    previous = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tune_rounds(run: _Run, extracted, tgt, n_devices: int, batch: int, seed, database,
                 search: str = "metaschedule") -> None:
    with _threads(run.report.num_cores if run.farm is None else None):
        _tune_rounds_inner(run, extracted, tgt, n_devices, batch, seed, database, search)


def _tune_rounds_inner(run: _Run, extracted, tgt, n_devices: int, batch: int, seed, database,
                       search: str) -> None:
    from tvm.s_tir import meta_schedule as ms

    m = run.measurement
    builder = _make_builder(m.builder_workers or max(1, min(os.cpu_count() or 1, batch, 4)),
                            m.build_timeout_s, tgt.cross_compiler)
    evaluator = ms.runner.EvaluatorConfig(number=m.number, repeat=m.repeat,
                                          min_repeat_ms=m.min_repeat_ms)
    if run.farm is not None:
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=run.farm[0], tracker_port=run.farm[1],
                                           tracker_key=run.key,
                                           session_timeout_sec=int(m.run_timeout_s)),
            evaluator_config=evaluator, max_workers=n_devices,
            f_create_session=_session_function(
                run.farm, run.key, m.device_wait_s, m.run_timeout_s,
                str(run.secret.path) if run.secret is not None else None))
    else:
        runner = ms.runner.LocalRunner(timeout_sec=m.run_timeout_s, evaluator_config=evaluator)
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=run.report.num_cores)
    _load_tensor_intrinsics(tgt)
    try:
        if tgt.device == "cpu":
            _measure_defaults(run, extracted, builder, runner)
        if search in ("knobs", "both"):
            _knob_rounds(run, extracted, builder, runner, batch, final=search == "knobs")
        if search in ("metaschedule", "both"):
            _rounds(run, extracted, builder, runner, cost_model, batch, seed,
                    str(TuningDatabase(database).target_dir(tgt,
                                                            emulated=run.report.emulated)))
        if tgt.device == "cpu" and run.stop_reason in (None, "time budget reached"):
            _recheck(run, extracted, builder, runner)
    finally:
        # Worker processes (builds, local runs, RPC clients) end with the run.
        for pool in (builder.pool, runner.pool):
            pool.shutdown(wait=False)


def _measure_defaults(run: _Run, extracted, builder, runner) -> None:
    """Measure mmopt's default schedule of every task not measured before, and record it.

    Its trace is a valid record: with it in the database, compiling with the records is never
    slower than compiling without them (the default wins where the search found nothing better),
    the search starts from it, and the report can show each task's untuned time.
    """
    from mmopt.codegen.cpu_schedules import schedule_prim_func

    report = run.report
    todo = []
    for index, state in enumerate(report.tasks):
        if state.default_s is not None:
            continue
        mod = extracted[index].dispatched[0]
        try:
            sch = schedule_prim_func(mod["main"], run.target)
        except Exception as exc:  # noqa: BLE001 - no baseline for this task, tuning goes on
            logger.debug("%s: no default schedule (%s)", state.name, summarize(exc))
            continue
        if sch is not None:
            todo.append((index, mod, sch))
    if not todo or run.check_stop():
        return
    run.on_update(report, "defaults")
    results = _measure(run, builder, runner, [(mod, sch) for _i, mod, sch in todo])
    run.check_stop(after_errors=run.farm is not None and any(r is None for r in results))
    for (index, mod, sch), run_secs in zip(todo, results):
        state = report.tasks[index]
        if run_secs is None:
            continue
        trace = _trace_key(sch.trace)
        if trace not in run.seen.setdefault(state.workload, set()):
            _commit(run, mod, sch, run_secs)
            run.seen[state.workload].add(trace)
        state.default_s = _mean(run_secs)
        secs = run.secs.setdefault(state.workload, {})
        secs[trace] = min(secs.get(trace, math.inf), state.default_s)
        if state.best_s is None or state.default_s < state.best_s:
            state.best_s = state.default_s
    run.save_tasks()
    run.on_update(report, "measured")


def _knob_rounds(run: _Run, extracted, builder, runner, batch: int, final: bool) -> None:
    """Measure variants of each task's default schedule (see SEARCHES) and record them.

    Per task, two stages: every register tile of the task's main contraction (with the default
    loop order), then the fastest tile so far (the default included) with the other loop order
    and with reduction splits. Variants measured before (same trace in the database) are not
    measured again, but their times count. ``final``: no other search follows, so a task whose
    variants are all measured is done ("exhausted") even if trials are left.

    On a farm, a variant whose run failed is not recorded and is no trial (the device may be to
    blame): it is measured once more at the end of its stage, and if it fails again it is left
    for a later run (the task is then not exhausted). When the failures come from losing the
    devices -- none of the key left at the tracker, or the tracker gone (see
    :meth:`_Run.check_stop`) -- the search stops at once, keeping every record measured so far,
    and the report says why.
    """
    from tvm.tirx import FloatImm

    from mmopt.codegen import cpu_schedules as cs

    report = run.report
    for index, state in enumerate(report.tasks):
        if run.check_stop():
            return
        if state.done or not state.knob_space:
            continue
        mod = extracted[index].dispatched[0]
        found = cs.tunable_contraction(mod["main"], run.target)
        if found is None:
            continue
        name, shape, registers = found
        seen = run.seen.setdefault(state.workload, set())
        secs = run.secs.setdefault(state.workload, {})
        default = cs.default_knobs(shape, registers)
        try:
            default_trace = _trace_key(cs.schedule_prim_func(mod["main"], run.target).trace)
        except Exception:  # noqa: BLE001
            default_trace = None
        best = (secs.get(default_trace, state.default_s or math.inf), default)
        unmeasured = 0  # variants whose runs failed on a farm: left for a later run
        for stage_best in (None, True):
            space = cs.contraction_knob_space(shape, registers,
                                              best[1] if stage_best else None)
            items = []
            for knobs in space:
                try:
                    sch = cs.schedule_prim_func(mod["main"], run.target, {name: knobs},
                                                strict=True)
                except Exception as exc:  # noqa: BLE001 - a variant that does not apply
                    logger.debug("%s: knobs %s do not apply (%s)", state.name, knobs,
                                 summarize(exc))
                    continue
                key = _trace_key(sch.trace)
                if key in seen or any(key == k for _kn, _s, k in items):
                    if secs.get(key, math.inf) < best[0]:
                        best = (secs[key], knobs)
                    continue
                items.append((knobs, sch, key))
            retried: set[str] = set()
            while items and not state.done:
                if run.check_stop():
                    return
                n = max(1, min(batch, state.planned - state.trials))
                chunk, items = items[:n], items[n:]
                report.current = index
                run.on_update(report, "task")
                results = _measure(run, builder, runner, [(mod, sch) for _k, sch, _key in chunk],
                                   rounds=KNOB_ROUNDS)
                # Failed runs on a farm: are the devices gone? Then stop, and the failures say
                # nothing of the variants.
                stopping = (run.farm is not None and any(r is None for r in results)
                            and run.check_stop(after_errors=True))
                for (knobs, sch, key), run_secs in zip(chunk, results):
                    if run_secs is None:
                        if stopping:
                            continue
                        state.errors += 1
                        if run.farm is None:
                            seen.add(key)
                            _commit(run, mod, sch, [FloatImm("float32", FAILED_RUN_SECS)])
                            state.trials += 1
                        elif key not in retried:  # the device may be to blame: once more
                            retried.add(key)
                            items.append((knobs, sch, key))
                        else:
                            unmeasured += 1
                        continue
                    seen.add(key)
                    _commit(run, mod, sch, run_secs)
                    mean = _mean(run_secs)
                    secs[key] = min(secs.get(key, math.inf), mean)
                    state.best_s = mean if state.best_s is None else min(state.best_s, mean)
                    if mean < best[0]:
                        best = (mean, knobs)
                    state.trials += 1
                run.on_update(report, "measured")
                if stopping:
                    return
        if final and not state.done and not unmeasured:
            state.exhausted = True
            state.planned = state.trials
        logger.debug("%s: best knobs %s (%.1f us)", state.name, best[1], best[0] * 1e6)


def _measure(run: _Run, builder, runner, items: list, rounds: int = 1) -> list:
    """Build ``[(mod, schedule), ...]`` once each and run them ``rounds`` times, interleaved;
    returns each item's fastest ``run_secs`` (or None where it failed)."""
    import shutil

    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    built = builder.build([BuilderInput(sch.mod, run.target) for _mod, sch in items])
    device_type = "cpu" if run.target.kind.name == "llvm" else str(run.target.kind.name)
    ok = [i for i, b in enumerate(built) if b.error_msg is None]
    for b in built:
        if b.error_msg is not None:
            run.failed(b.error_msg)
    results: list = [None] * len(items)
    try:
        for _ in range(rounds):
            futures = runner.run([RunnerInput(built[i].artifact_path, device_type,
                                              ArgInfo.from_prim_func(items[i][1].mod["main"]))
                                  for i in ok])
            failed = False
            for i, future in zip(ok, futures):
                result = future.result()
                if result.error_msg is not None or not result.run_secs:
                    run.failed(result.error_msg)
                    failed = True
                elif results[i] is None or _mean(result.run_secs) < _mean(results[i]):
                    results[i] = list(result.run_secs)
                    run.measured_any = True
            if failed and run.farm is not None and run.check_stop(after_errors=True) not in (
                    None, "time budget reached"):
                break  # the devices are gone (or the run was interrupted): no further rounds
    finally:
        for i in ok:
            shutil.rmtree(os.path.dirname(built[i].artifact_path), ignore_errors=True)
    return results


def _commit(run: _Run, mod, sch, run_secs) -> None:
    """Record ``sch`` for ``mod`` -- unless the same schedule is already recorded at least as fast
    (a resumed run measures its defaults again: no duplicate lines)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    workload = run.db.commit_workload(mod)
    key, trace, mean = str(workload.as_json()[0]), _trace_key(sch.trace), _mean(run_secs)
    known = run.secs.setdefault(key, {})
    if trace in known and known[trace] <= mean:
        return
    known[trace] = mean
    run.seen.setdefault(key, set()).add(trace)
    run.db.commit_tuning_record(TuningRecord(sch.trace, workload, run_secs, run.target,
                                             ArgInfo.from_prim_func(sch.mod["main"])))


def _mean(run_secs) -> float:
    return sum(float(s) for s in run_secs) / len(run_secs)


def _recheck(run: _Run, extracted, builder, runner) -> None:
    """Measure again, side by side and with no search or build running, the default schedule and
    the best record of every task searched in this run (``RECHECK_ROUNDS`` times, interleaved);
    the fastest measurement of each becomes a record.

    Candidates are timed while other work competes for the machine (other batches building, other
    devices measuring, other users), so a schedule can win on a lucky draw. The database applies
    each task's fastest record; measuring the two contenders again under the same conditions keeps
    a noisy win from replacing a better default schedule.
    """
    from mmopt.codegen.cpu_schedules import schedule_prim_func

    report = run.report
    items, owners = [], []
    for index, state in enumerate(report.tasks):
        if state.trials == 0 or state.default_s is None:
            continue
        mod = extracted[index].dispatched[0]
        try:
            best = run.db.query_schedule(mod, run.target, state.name)
            default = schedule_prim_func(mod["main"], run.target)
        except Exception as exc:  # noqa: BLE001 - a task without a recheck keeps its records
            logger.debug("%s: no recheck (%s)", state.name, summarize(exc))
            continue
        if best is None or default is None or _trace_key(best.trace) == _trace_key(default.trace):
            continue
        items += [(mod, default), (mod, best)]
        owners.append(index)
    if not items:
        return
    report.current = None
    run.on_update(report, "recheck")
    results = _measure(run, builder, runner, items, rounds=RECHECK_ROUNDS)
    run.check_stop(after_errors=run.farm is not None and any(r is None for r in results))
    for k, index in enumerate(owners):
        state = report.tasks[index]
        for (mod, sch), run_secs, is_default in ((items[2 * k], results[2 * k], True),
                                                  (items[2 * k + 1], results[2 * k + 1], False)):
            if run_secs is None:
                continue
            _commit(run, mod, sch, run_secs)
            if is_default:
                state.default_s = _mean(run_secs)
            state.best_s = min(state.best_s or math.inf, _mean(run_secs))
    run.save_tasks()
    run.on_update(report, "measured")


def _rounds(run: _Run, extracted, builder, runner, cost_model, batch: int, seed,
            sub_dir: str) -> None:
    from tvm.s_tir import meta_schedule as ms

    callbacks = run.callbacks()
    report = run.report
    while not run.check_stop():
        todo = [i for i, t in enumerate(report.tasks) if not t.done]
        if not todo:
            return
        for index in todo:
            state = report.tasks[index]
            if run.check_stop():
                return
            n = min(batch, state.planned - state.trials)
            if n <= 0:
                continue
            report.current = index
            run.on_update(report, "task")
            run.batch_measured = run.batch_errors = 0
            population = int(min(512, max(32, 16 * n)))
            context = ms.TuneContext(
                mod=extracted[index].dispatched[0], target=run.target,
                space_generator="post-order-apply",
                search_strategy=ms.search_strategy.EvolutionarySearch(
                    population_size=population, init_min_unmeasured=min(50, population // 2)),
                task_name=state.name, rand_state=-1 if seed is None else seed + index,
                num_threads="physical",
            ).clone()
            try:
                ms.tune.tune_tasks(tasks=[context], task_weights=[float(state.weight)],
                                   work_dir=sub_dir, max_trials_global=n, max_trials_per_task=n,
                                   num_trials_per_iter=n, builder=builder, runner=runner,
                                   database=run.db, cost_model=cost_model,
                                   measure_callbacks=callbacks)
            except Exception as exc:  # noqa: BLE001 - our _Stop arrives wrapped by TVM's FFI
                if run.stop_reason is None:
                    raise MmoptError(f"tuning task {state.name} failed: {summarize(exc)}") from exc
                return
            if run.batch_measured == 0 and run.batch_errors == 0 and not run.check_stop():
                # The search had no new candidate left to measure: the space is exhausted.
                state.exhausted = True
            elif run.batch_measured == 0 and run.batch_errors:
                # Every candidate failed: don't loop on it in this run.
                state.planned = state.trials
