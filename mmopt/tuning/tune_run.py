"""One tuning run: the database it writes, where it measures, when it stops, and MetaSchedule's
measure callbacks that record each candidate as soon as its batch returns."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mmopt.errors import MmoptError, summarize
from mmopt.tuning import farm as _farm
from mmopt.tuning.database import FAILED_RUN_SECS, trace_key_of
from mmopt.tuning.tune_report import Measurement, OnUpdate, TuneReport

logger = logging.getLogger(__name__)


class StopTuning(Exception):
    """Raised inside MetaSchedule's loop (from a measure callback) to end a batch early."""


class TuneRun:
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
        user_update = on_update or (lambda _r, _e: None)

        def update(report, event: str) -> None:
            if event == "measured":
                report.mark()
            user_update(report, event)

        self.on_update = update
        self.stop_reason: str | None = None
        self.batch_measured = 0
        self.batch_errors = 0
        #: schedule traces already recorded, by workload (see :func:`trace_key_of`)
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
                    raise StopTuning(run.stop_reason)

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
                trace = trace_key_of(candidate.sch.trace)
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
            state.mark()
            self.batch_measured += 1
