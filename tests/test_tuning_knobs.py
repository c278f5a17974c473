"""Knob tuning (``mmopt tune --search knobs``, the default): variants of mmopt's own default CPU
schedules are measured and recorded as MetaSchedule records, which ``compile --db`` applies.

Tiny runs (two or three trials per task of the zoo's conv_bn_relu, a few ms per measurement): the
point is the machinery and the numbers staying exact, not speed-ups.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmopt import ir as mir
from mmopt import targets
from mmopt.runtime.verify import run_onnxruntime
from mmopt.tuning import confirm
from mmopt.tuning import database as tdb
from mmopt.tuning.measure import relax_module
from mmopt.tuning.tune import Measurement, tune

FAST = Measurement(min_repeat_ms=5, model_rounds=1)


@pytest.fixture(scope="module")
def model():
    from models_zoo import MODELS, build

    return mir.fix_input_shapes(build("conv_bn_relu"), MODELS["conv_bn_relu"].input_shapes)


@pytest.fixture(scope="module")
def knob_tuned(model, tmp_path_factory):
    db_dir = tmp_path_factory.mktemp("knobs") / "db"
    report = tune(model, "x86", db_dir, trials_per_task=3, measurement=FAST)
    return db_dir, report


def test_knob_tuning_records_variants(knob_tuned):
    db_dir, report = knob_tuned
    assert report.search == "knobs" and report.stopped is None
    assert report.records > 0
    convs = [t for t in report.tasks if "conv2d" in t.name]
    assert convs and all(t.knob_space > 0 for t in convs)
    # every convolution got variants measured (at most the budget), besides its default schedule
    assert all(1 <= t.trials <= 3 for t in convs)
    assert all(t.default_s and t.best_s and t.best_s <= t.default_s * 1.0001 for t in convs)
    schedules = tdb.TuningDatabase(db_dir).schedules("x86")
    for t in convs:
        assert len(schedules[t.workload]) == 1 + t.trials  # the default + distinct variants
    # tasks without a contraction have nothing to vary: done at once, no trial
    assert all(t.trials == 0 and t.exhausted for t in report.tasks if t.knob_space == 0)


def test_compile_with_knob_records_matches_onnxruntime(knob_tuned, model):
    import tvm
    from tvm import relax

    from mmopt.codegen.build import build

    db_dir, report = knob_tuned
    mod, reference = relax_module(model)
    db = tdb.open_database(db_dir, "x86")
    executable = build(mod, targets.get("x86"), database=db)
    assert {t.name for t in report.tasks if "conv2d" in t.name} <= set(db.applied)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    feeds = mir.random_inputs(reference, 0)
    got = vm["main"](tvm.runtime.tensor(feeds["input"])).numpy()
    expected = run_onnxruntime(reference, feeds)
    np.testing.assert_allclose(got, next(iter(expected.values())), rtol=1e-4, atol=1e-4)


def test_rerun_resumes_the_knob_space(knob_tuned, model):
    db_dir, first = knob_tuned
    again = tune(model, "x86", db_dir, trials_per_task=3, measurement=FAST, dry_run=True)
    # what the first run measured counts; only the rest of each task's knob space is planned
    for before, now in zip(first.tasks, again.tasks):
        assert now.trials_before == before.trials_before + before.trials
        assert now.planned <= max(min(3, now.knob_space) - now.trials_before, 0)


def test_search_is_validated(model, tmp_path):
    from mmopt.errors import MmoptError

    with pytest.raises(MmoptError, match="--search"):
        tune(model, "x86", tmp_path / "db", search="random", dry_run=True)


def test_both_searches_knobs_then_metaschedule(model, tmp_path):
    """``search="both"``: the knob variants first, then MetaSchedule with the trials left."""
    task = ["fused_mmopt_conv2d_nhwc_packed_add_relu"]
    plan = tune(model, "x86", tmp_path / "db", trials_per_task=64, search="both", tasks=task,
                dry_run=True)
    (state,) = plan.tasks
    assert 0 < state.knob_space < 64 and state.planned == 64
    knobs = tune(model, "x86", tmp_path / "db", trials_per_task=64, measurement=FAST, tasks=task)
    variants = knobs.tasks[0].trials
    assert variants > 0
    report = tune(model, "x86", tmp_path / "db", trials_per_task=variants + 1, measurement=FAST,
                  tasks=task, search="both")
    (state,) = report.tasks
    assert state.trials_before == variants
    # the knob variants are all measured: the one trial left went to MetaSchedule
    assert state.trials == 1 or state.exhausted
    schedules = tdb.TuningDatabase(tmp_path / "db").schedules("x86")
    assert len(schedules[state.workload]) == 1 + variants + state.trials


# --------------------------------------------------------------------------------------------------
# the in-model check of the best records (mmopt.tuning.confirm)


def _verdicts(db_dir) -> dict:
    return {w: info for w, info in tdb.TuningDatabase(db_dir).tasks("x86").items() if info.kept}


def test_best_records_are_checked_in_the_model(knob_tuned):
    """The fixture's run ended with the in-model check: every task whose best record is not its
    default schedule has a verdict (both kernels timed in the model, one kept), and the kept
    schedule is one of the task's records."""
    db_dir, report = knob_tuned
    assert not any("not checked" in n or "failed" in n for n in report.notes), report.notes
    checked = [t for t in report.tasks if t.in_model is not None]
    verdicts = _verdicts(db_dir)
    assert {t.workload for t in checked} == set(verdicts)
    schedules = tdb.TuningDatabase(db_dir).schedules("x86")
    for t in checked:
        assert t.in_model["default_ms"] > 0 and t.in_model["tuned_ms"] > 0
        assert t.in_model["kept"] == ("tuned" if t.in_model["tuned_ms"] <= t.in_model["default_ms"]
                                      * (1 - confirm.MARGIN) else "default")
        info = verdicts[t.workload]
        assert info.in_model["kept"] == t.in_model["kept"]
        assert info.kept in {tdb.schedule_hash(k) for k in schedules[t.workload]}


def test_a_verdict_decides_the_record_compile_applies(knob_tuned, tmp_path):
    """With a verdict, only the kept schedule's records of the task are applied, even when another
    record was faster alone; a verdict naming no record (a database edited by hand) is ignored."""
    import shutil

    db_dir = tmp_path / "db"
    shutil.copytree(knob_tuned[0], db_dir)
    schedules = tdb.TuningDatabase(db_dir).schedules("x86")
    workload, traces = max(schedules.items(), key=lambda kv: len(kv[1]))
    assert len(traces) >= 2
    slowest = max(traces, key=traces.get)
    fastest = min(traces, key=traces.get)

    def applied() -> set[str]:
        reader = tdb.TuningDatabase(db_dir).reader(targets.get("x86"))
        return {tdb.trace_key_of(r.trace) for r in reader.get_all_tuning_records()
                if str(r.workload.as_json()[0]) == workload}

    database = tdb.TuningDatabase(db_dir)
    database.set_verdicts("x86", {workload: (tdb.schedule_hash(slowest), {"name": "t"})})
    assert applied() == {slowest}
    database.set_verdicts("x86", {workload: ("0" * 16, {"name": "t"})})
    assert fastest in applied() and len(applied()) == len(traces)
    database.set_verdicts("x86", {workload: (None, None)})
    assert workload not in _verdicts(db_dir) and len(applied()) == len(traces)
    # a later tuning run's task bookkeeping keeps the verdict
    database.set_verdicts("x86", {workload: (tdb.schedule_hash(slowest), {"name": "t"})})
    info = database.tasks("x86")[workload]
    database.update_tasks("x86", {workload: tdb.TaskInfo(info.name, models=["other.onnx"])})
    assert _verdicts(db_dir)[workload].kept == tdb.schedule_hash(slowest)


@pytest.mark.parametrize("factor,kept", [(0.9, "tuned"), (0.99, "default")])
def test_a_record_is_kept_only_if_faster_in_the_model(model, tmp_path, monkeypatch, factor, kept):
    """The verdict rule, with the in-model times given: a record that made its kernel faster by
    more than MARGIN in the model is kept; one within MARGIN (or slower) gives way to the default
    schedule, which then is the only record of the task that compile applies."""
    from mmopt.codegen.cpu_schedules import schedule_prim_func

    chosen = []

    def some_record(run, extracted):
        # a candidate whatever the timings were: the first task with a record besides its default
        schedules = tdb.TuningDatabase(tmp_path / "db").schedules("x86")
        for index, state in enumerate(run.report.tasks):
            mod = extracted[index].dispatched[0]
            default = tdb.trace_key_of(schedule_prim_func(mod["main"], run.target).trace)
            others = [k for k in schedules.get(state.workload, {}) if k != default]
            if state.default_s is not None and others:
                chosen.append(confirm.Candidate(index, state.name, state.workload, default,
                                                others[0]))
                return chosen
        return []

    def in_model(builds, _tgt, _reference, _threads, rounds, _runs):
        assert set(builds) == {"default", "tuned"} and rounds == 1
        return {"default": {c.name: 1e-3 for c in chosen},
                "tuned": {c.name: factor * 1e-3 for c in chosen}}

    monkeypatch.setattr(confirm, "candidates", some_record)
    monkeypatch.setattr(confirm, "_kernel_times_in_model", in_model)
    report = tune(model, "x86", tmp_path / "db", trials_per_task=3, measurement=FAST)
    (c,) = chosen
    (state,) = [t for t in report.tasks if t.name == c.name]
    assert state.in_model == {"name": c.name, "default_ms": pytest.approx(1.0),
                              "tuned_ms": pytest.approx(factor), "kept": kept}
    key = c.best_key if kept == "tuned" else c.default_key
    assert _verdicts(tmp_path / "db")[c.workload].kept == tdb.schedule_hash(key)
    reader = tdb.TuningDatabase(tmp_path / "db").reader(targets.get("x86"))
    assert {tdb.trace_key_of(r.trace) for r in reader.get_all_tuning_records()
            if str(r.workload.as_json()[0]) == c.workload} == {key}
