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
from mmopt.tuning import database as tdb
from mmopt.tuning.measure import relax_module
from mmopt.tuning.tune import Measurement, tune

FAST = Measurement(min_repeat_ms=5)


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
