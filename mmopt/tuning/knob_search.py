"""Measuring mmopt's own schedules directly (CPU targets): each task's default schedule as its
baseline record, the knob variants of its main contraction (``--search knobs``), and a final
side-by-side recheck of the default against the best record.

Candidates are built once and measured in interleaved rounds with the run's builder and runner
(:mod:`mmopt.tuning.workers`), outside MetaSchedule's search loop; every result is committed to the
run's database as a MetaSchedule tuning record.
"""

from __future__ import annotations

import logging
import math
import os

from mmopt.errors import summarize
from mmopt.tuning.database import FAILED_RUN_SECS, trace_key_of
from mmopt.tuning.tune_run import TuneRun

logger = logging.getLogger(__name__)

#: Times each knob variant is measured (interleaved with the others of its batch; the fastest
#: counts): one measurement on a shared machine is easily off by a factor of two.
KNOB_ROUNDS = 2
#: Times the best and the default schedule of a task are measured again when tuning ends.
RECHECK_ROUNDS = 3


def knob_space_size(mod, target) -> int:
    """How many knob variants :func:`knob_rounds` may measure for a task (an upper bound: some
    may turn out to be the same schedule as another)."""
    from mmopt.codegen import cpu_contraction as cc
    from mmopt.codegen import cpu_schedules as cs

    try:
        found = cs.tunable_contraction(mod["main"], target)
    except Exception as exc:  # noqa: BLE001 - nothing to vary
        logger.debug("no knobs: %s", summarize(exc))
        return 0
    if found is None:
        return 0
    _name, shape, registers = found
    first = cc.contraction_knob_space(shape, registers)
    second = cc.contraction_knob_space(shape, registers, cc.default_knobs(shape, registers))
    return len(first) + len(second)


def measure_defaults(run: TuneRun, extracted, builder, runner) -> None:
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
    results = measure_candidates(run, builder, runner, [(mod, sch) for _i, mod, sch in todo])
    run.check_stop(after_errors=run.farm is not None and any(r is None for r in results))
    for (index, mod, sch), run_secs in zip(todo, results):
        state = report.tasks[index]
        if run_secs is None:
            continue
        trace = trace_key_of(sch.trace)
        if trace not in run.seen.setdefault(state.workload, set()):
            commit_record(run, mod, sch, run_secs)
            run.seen[state.workload].add(trace)
        state.default_s = mean_secs(run_secs)
        secs = run.secs.setdefault(state.workload, {})
        secs[trace] = min(secs.get(trace, math.inf), state.default_s)
        if state.best_s is None or state.default_s < state.best_s:
            state.best_s = state.default_s
        state.mark()
    run.save_tasks()
    run.on_update(report, "measured")


def knob_rounds(run: TuneRun, extracted, builder, runner, batch: int, final: bool) -> None:
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
    :meth:`TuneRun.check_stop`) -- the search stops at once, keeping every record measured so far,
    and the report says why.
    """
    from tvm.tirx import FloatImm

    from mmopt.codegen import cpu_contraction as cc
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
        default = cc.default_knobs(shape, registers)
        try:
            default_trace = trace_key_of(cs.schedule_prim_func(mod["main"], run.target).trace)
        except Exception:  # noqa: BLE001
            default_trace = None
        best = (secs.get(default_trace, state.default_s or math.inf), default)
        unmeasured = 0  # variants whose runs failed on a farm: left for a later run
        for stage_best in (None, True):
            space = cc.contraction_knob_space(shape, registers,
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
                key = trace_key_of(sch.trace)
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
                results = measure_candidates(run, builder, runner,
                                             [(mod, sch) for _k, sch, _key in chunk],
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
                            commit_record(run, mod, sch, [FloatImm("float32", FAILED_RUN_SECS)])
                            state.trials += 1
                            state.mark()
                        elif key not in retried:  # the device may be to blame: once more
                            retried.add(key)
                            items.append((knobs, sch, key))
                        else:
                            unmeasured += 1
                        continue
                    seen.add(key)
                    commit_record(run, mod, sch, run_secs)
                    mean = mean_secs(run_secs)
                    secs[key] = min(secs.get(key, math.inf), mean)
                    state.best_s = mean if state.best_s is None else min(state.best_s, mean)
                    if mean < best[0]:
                        best = (mean, knobs)
                    state.trials += 1
                    state.mark()
                run.on_update(report, "measured")
                if stopping:
                    return
        if final and not state.done and not unmeasured:
            state.exhausted = True
            state.planned = state.trials
        logger.debug("%s: best knobs %s (%.1f us)", state.name, best[1], best[0] * 1e6)


def recheck(run: TuneRun, extracted, builder, runner) -> None:
    """Measure again, side by side and with no search or build running, the default schedule and
    the best record of every task searched in this run (``RECHECK_ROUNDS`` times, interleaved);
    the fastest measurement of each becomes a record.

    Candidates are timed while other work competes for the machine (other batches building, other
    devices measuring, other users), so a schedule can win on a lucky draw. The database applies
    each task's fastest record; measuring the two contenders again under the same conditions keeps
    a noisy win from replacing a better default schedule.
    """
    report = run.report
    items, owners = [], []
    for index, state in enumerate(report.tasks):
        if state.trials == 0 or state.default_s is None:
            continue
        mod = extracted[index].dispatched[0]
        try:
            best, default = best_and_default(run, mod, state.name)
        except Exception as exc:  # noqa: BLE001 - a task without a recheck keeps its records
            logger.debug("%s: no recheck (%s)", state.name, summarize(exc))
            continue
        if (best is None or default is None
                or trace_key_of(best.trace) == trace_key_of(default.trace)):
            continue
        items += [(mod, default), (mod, best)]
        owners.append(index)
    if not items:
        return
    report.current = None
    run.on_update(report, "recheck")
    results = measure_candidates(run, builder, runner, items, rounds=RECHECK_ROUNDS)
    run.check_stop(after_errors=run.farm is not None and any(r is None for r in results))
    for k, index in enumerate(owners):
        state = report.tasks[index]
        for (mod, sch), run_secs, is_default in ((items[2 * k], results[2 * k], True),
                                                  (items[2 * k + 1], results[2 * k + 1], False)):
            if run_secs is None:
                continue
            commit_record(run, mod, sch, run_secs)
            if is_default:
                state.default_s = mean_secs(run_secs)
            state.best_s = min(state.best_s or math.inf, mean_secs(run_secs))
        state.mark()
    run.save_tasks()
    run.on_update(report, "measured")


def best_and_default(run: TuneRun, mod, name: str):
    """``(schedule of the task's fastest record in run.db, its default schedule)``; either may
    be None (no record; no default schedule). Raises when a schedule cannot be made."""
    from mmopt.codegen.cpu_schedules import schedule_prim_func

    return run.db.query_schedule(mod, run.target, name), schedule_prim_func(mod["main"],
                                                                             run.target)


def measure_candidates(run: TuneRun, builder, runner, items: list, rounds: int = 1) -> list:
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
                elif results[i] is None or mean_secs(result.run_secs) < mean_secs(results[i]):
                    results[i] = list(result.run_secs)
                    run.measured_any = True
            if failed and run.farm is not None and run.check_stop(after_errors=True) not in (
                    None, "time budget reached"):
                break  # the devices are gone (or the run was interrupted): no further rounds
    finally:
        for i in ok:
            shutil.rmtree(os.path.dirname(built[i].artifact_path), ignore_errors=True)
    return results


def commit_record(run: TuneRun, mod, sch, run_secs) -> None:
    """Record ``sch`` for ``mod`` -- unless the same schedule is already recorded at least as fast
    (a resumed run measures its defaults again: no duplicate lines)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    workload = run.db.commit_workload(mod)
    key, trace, mean = str(workload.as_json()[0]), trace_key_of(sch.trace), mean_secs(run_secs)
    known = run.secs.setdefault(key, {})
    if trace in known and known[trace] <= mean:
        return
    known[trace] = mean
    run.seen.setdefault(key, set()).add(trace)
    run.db.commit_tuning_record(TuningRecord(sch.trace, workload, run_secs, run.target,
                                             ArgInfo.from_prim_func(sch.mod["main"])))


def mean_secs(run_secs) -> float:
    return sum(float(s) for s in run_secs) / len(run_secs)

