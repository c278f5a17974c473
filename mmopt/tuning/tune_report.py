"""What a tuning run is asked and what it reports: the measuring settings, each task's progress,
and the live report that progress callbacks receive and :func:`mmopt.tuning.tune.tune` returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: How candidates are found. ``knobs``: variants of mmopt's own default schedule (register tile,
#: loop order, reduction split of each task's main contraction; a few to a few dozen per task,
#: see :func:`mmopt.codegen.cpu_contraction.contraction_knob_space`); ``metaschedule``:
#: MetaSchedule's evolutionary search over its own design space; ``both``: the knob variants
#: first, then MetaSchedule with the rest of the trials. CPU targets only for knobs (other
#: devices always use MetaSchedule).
SEARCHES = ("knobs", "metaschedule", "both")
DEFAULT_SEARCH = "knobs"


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
    #: the in-model check of the best records (:mod:`mmopt.tuning.confirm`): alternating rounds
    #: of the model built with and without them (0: no check)
    model_rounds: int = 3


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
    #: ``[trials, best seconds]`` as this run went: the baseline (at the trials recorded before),
    #: then after every trial (trials counted as in ``trials_before + trials``)
    history: list[list] = field(default_factory=list)
    #: the in-model check of the best record (:mod:`mmopt.tuning.confirm`): ``{"default_ms",
    #: "tuned_ms", "kept"}``; None: not checked (its best record is the default schedule, or
    #: the check did not run: see the report's notes)
    in_model: dict | None = None

    def mark(self) -> None:
        """Add the task's trials and best time so far to :attr:`history`."""
        if self.best_s is not None:
            self.history.append([self.trials_before + self.trials, self.best_s])

    @property
    def done(self) -> bool:
        return self.exhausted or self.trials >= self.planned

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in (
            "name", "workload", "weight", "trials_before", "trials", "errors", "default_s",
            "best_before_s", "best_s", "planned", "exhausted", "knob_space", "history",
            "in_model")}


def in_model_times(in_model: dict | None) -> str:
    """``"<default> -> <tuned> us"`` of an in-model verdict (a TaskState's ``in_model``, or the
    database's, :mod:`mmopt.tuning.confirm`); "" for none."""
    if not in_model:
        return ""
    return f"{in_model['default_ms'] * 1e3:,.1f} -> {in_model['tuned_ms'] * 1e3:,.1f} us"


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
    #: the whole model as this run went, after every measured batch: ``{"trials", "elapsed_s",
    #: "latency_s", "tasks"}``; ``latency_s`` is the sum over the ``tasks`` that have a time of
    #: weight x best time (the kernels' share of the model's latency, as tuning sees it)
    history: list[dict] = field(default_factory=list)

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

    def mark(self) -> None:
        """Add the model's estimated latency now to :attr:`history`."""
        timed = [t for t in self.tasks if t.best_s is not None]
        self.history.append({"trials": self.trials,
                             "elapsed_s": time.monotonic() - self.started,
                             "latency_s": sum(t.weight * t.best_s for t in timed),
                             "tasks": len(timed)})

    def to_dict(self) -> dict:
        return {"kind": "tune", "model": self.model, "target": self.target, "database": self.database,
                "sub_database": self.sub_database, "runner": self.runner,
                "num_cores": self.num_cores, "search": self.search, "planned": self.planned,
                "trials": self.trials, "key": self.key, "emulated": self.emulated,
                "notes": self.notes,
                "records": self.records, "elapsed_s": self.elapsed_s, "stopped": self.stopped,
                "tasks": [t.to_dict() for t in self.tasks], "history": self.history}


#: progress callback: ``(report, event)`` with event "start", "task" (a task's batch begins),
#: "measured" (a batch was recorded) or "end"
OnUpdate = Callable[[TuneReport, str], None]

