"""MetaSchedule's evolutionary search (``--search metaschedule`` and ``both``, and every non-CPU
target), driven in rounds so that a trial or time budget is spread over all tasks."""

from __future__ import annotations

from mmopt.errors import MmoptError, summarize
from mmopt.tuning.tune_run import TuneRun


def metaschedule_rounds(run: TuneRun, extracted, builder, runner, cost_model, batch: int, seed,
                        sub_dir: str) -> None:
    """Give every unfinished task one batch of MetaSchedule trials per round (warm-started from
    the task's records in ``sub_dir``) until all are done or the run stops; a task whose search
    proposes nothing new is exhausted."""
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
            except Exception as exc:  # noqa: BLE001 - our StopTuning arrives wrapped by TVM's FFI
                if run.stop_reason is None:
                    raise MmoptError(f"tuning task {state.name} failed: {summarize(exc)}") from exc
                return
            if run.batch_measured == 0 and run.batch_errors == 0 and not run.check_stop():
                # The search had no new candidate left to measure: the space is exhausted.
                state.exhausted = True
            elif run.batch_measured == 0 and run.batch_errors:
                # Every candidate failed: don't loop on it in this run.
                state.planned = state.trials

