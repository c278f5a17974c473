"""Tuning on this machine, tuning databases (target-aware, resumable, mergeable) and their use by
the code generator.

The tuning runs are tiny (one or two trials per task of the zoo's conv_bn_relu) and shared by the
tests of this module: the point is the machinery (records, resume, stop, target identity), not
speed-ups. They use MetaSchedule's search; the knob search (the default) is tested in
test_tuning_knobs.py.
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from mmopt import ir as mir
from mmopt import targets
from mmopt.cli.main import cli
from mmopt.errors import MmoptError
from mmopt.runtime.verify import run_onnxruntime
from mmopt.tuning import database as tdb
from mmopt.tuning.measure import compare_latency, relax_module
from mmopt.tuning.tune import Measurement, parse_duration, tune

#: measurements kept short: a few ms per candidate
FAST = Measurement(min_repeat_ms=5, model_rounds=1)


@pytest.fixture(scope="module")
def model():
    from models_zoo import MODELS, build

    return mir.fix_input_shapes(build("conv_bn_relu"), MODELS["conv_bn_relu"].input_shapes)


def _record_lines(db_dir) -> list[str]:
    return [line for p in sorted(db_dir.glob("*/database_tuning_record.json"))
            for line in p.read_text().splitlines() if line.strip()]


#: the tasks the shared tuning run tunes (the convolutions and the classifier's matmul); the
#: others (pooling, transposes) stay untuned and must fall back to default schedules
TUNED_TASKS = ["conv2d", "matmul"]


@pytest.fixture(scope="module")
def tuned(model, tmp_path_factory):
    """Tune the TUNED_TASKS for x86 with one trial each; the first run is stopped after its first
    batch (as Ctrl-C does), the second resumes and completes.

    Returns (db dir, first report, second report, record lines after the first run).
    """
    db_dir = tmp_path_factory.mktemp("tuning") / "db"
    stop = threading.Event()

    def stop_after_first_batch(report, event):
        if event == "measured" and report.trials:
            stop.set()

    first = tune(model, "x86", db_dir, trials_per_task=1, batch=1, measurement=FAST,
                 on_update=stop_after_first_batch, stop=stop, tasks=TUNED_TASKS,
                 search="metaschedule")
    kept = _record_lines(db_dir)
    second = tune(model, "x86", db_dir, trials_per_task=1, batch=1, measurement=FAST,
                  tasks=TUNED_TASKS, search="metaschedule")
    return db_dir, first, second, kept


# --------------------------------------------------------------------------------------------------
# target identity (no tuning)


def test_target_identity_ignores_core_count_and_separates_targets():
    import tvm

    x86 = targets.get("x86")
    with_cores = tvm.target.Target({**x86.tvm, "num-cores": 7})
    assert tdb.identity_key(with_cores) == tdb.identity_key(x86)
    keys = {name: tdb.identity_key(name) for name in ("x86", "x86-generic", "arm", "arm-a76",
                                                        "cuda-sm80")}
    assert len(set(keys.values())) == len(keys)
    slug = tdb.target_slug("arm-a76")
    assert slug.startswith("llvm-aarch64-cortex_a76-") and slug.endswith(keys["arm-a76"])


def test_parse_duration():
    assert parse_duration("90s") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    assert parse_duration(None) is None
    with pytest.raises(MmoptError, match="--time-budget"):
        parse_duration("soon")


def test_open_database_errors(tmp_path):
    with pytest.raises(MmoptError, match="no such tuning database"):
        tdb.open_database(tmp_path / "missing", "x86")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(MmoptError, match="not an mmopt tuning database"):
        tdb.open_database(tmp_path / "junk", "x86")


# --------------------------------------------------------------------------------------------------
# tuning, stop, resume


def test_stop_keeps_records_and_rerun_resumes(tuned):
    db_dir, first, second, kept = tuned
    assert first.stopped == "interrupted"
    assert first.trials >= 1 and first.trials < len(first.tasks)
    # the stop lost nothing: every record of the first run is still there, in the same order
    assert _record_lines(db_dir)[:len(kept)] == kept
    # the second run measured only what was missing (a task whose search space holds nothing but
    # its default schedule ends "exhausted"), and no default twice
    assert second.stopped is None
    before = {t.workload: t.trials for t in first.tasks}
    for t in second.tasks:
        assert t.trials_before == before[t.workload]
        assert t.trials_before + t.trials == 1 or (t.exhausted and t.trials == 0)
    assert all(t.default_s is not None and t.default_s > 0 for t in second.tasks)
    assert second.records == len(_record_lines(db_dir))
    # distinct schedules per task: its default, and one searched (re-measurements of the best and
    # the default at the end of a run add records, not schedules)
    schedules = tdb.TuningDatabase(db_dir).schedules("x86")
    for t in second.tasks:
        assert len(schedules[t.workload]) == 1 + t.trials_before + t.trials


def test_third_run_has_nothing_to_do(tuned, model):
    db_dir, _first, second, _kept = tuned
    again = tune(model, "x86", db_dir, trials_per_task=1, measurement=FAST, tasks=TUNED_TASKS)
    assert again.planned == 0 and again.trials == 0 and again.stopped is None
    assert again.records == second.records


def test_database_layout_and_show(tuned):
    db_dir, _first, second, _kept = tuned
    subs = [p for p in db_dir.iterdir() if p.is_dir()]
    assert [p.name for p in subs] == [tdb.target_slug("x86")]
    meta = json.loads((subs[0] / "target.json").read_text())
    assert meta["key"] == tdb.identity_key("x86")
    result = CliRunner().invoke(cli, ["db", "show", str(db_dir), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["targets"]
    assert len(shown) == 1 and shown[0]["records"] == second.records
    assert {w["name"] for w in shown[0]["workloads"]} == {t.name for t in second.tasks}


# --------------------------------------------------------------------------------------------------
# applying records


def test_compile_applies_records_for_its_target_and_stays_correct(tuned, model, tmp_path):
    import tvm
    from tvm import relax

    from mmopt.codegen.build import build

    db_dir, _first, second, _kept = tuned
    mod, reference = relax_module(model)
    db = tdb.open_database(db_dir, "x86")
    executable = build(mod, targets.get("x86"), database=db)
    # tuned tasks get their records; the others (pooling, transposes) default schedules
    assert sorted(set(db.applied)) == sorted(t.name for t in second.tasks)
    assert set(db.queried) > set(db.applied)
    assert db.other_target == 0
    # tuned code computes the same thing as onnxruntime
    vm = relax.VirtualMachine(executable, tvm.cpu())
    feeds = mir.random_inputs(reference, 0)
    got = vm["main"](tvm.runtime.tensor(feeds["input"])).numpy()
    expected = run_onnxruntime(reference, feeds)
    np.testing.assert_allclose(got, next(iter(expected.values())), rtol=1e-4, atol=1e-4)


def test_records_are_never_applied_to_another_target(tuned, model):
    from mmopt.codegen.build import build

    db_dir, *_ = tuned
    mod, _reference = relax_module(model)
    arm = targets.get("arm")
    # opened for arm: the x86 records are not even loaded
    db = tdb.open_database(db_dir, arm)
    assert len(db) == 0
    build(mod, arm, database=db)
    assert db.applied == [] and db.queried
    # the x86 records handed to an arm build by mistake: every lookup is refused
    x86_db = tdb.open_database(db_dir, "x86")
    assert len(x86_db) > 0
    build(mod, arm, database=x86_db)
    assert x86_db.applied == [] and x86_db.other_target == len(x86_db.queried) > 0


def _distinct_schedules(db_dir, target) -> int:
    return sum(len(traces) for traces in tdb.TuningDatabase(db_dir).schedules(target).values())


def _applied_schedules(db_dir, target) -> int:
    """The distinct schedules a compile loads: of a task with an in-model verdict
    (mmopt.tuning.confirm) only the kept one, of the others all."""
    database = tdb.TuningDatabase(db_dir)
    kept = {w: info.kept for w, info in database.tasks(target).items() if info.kept}
    count = 0
    for workload, traces in database.schedules(target).items():
        hashes = {tdb.schedule_hash(t) for t in traces}
        count += 1 if kept.get(workload) in hashes else len(traces)
    return count


def test_a_record_with_a_foreign_target_is_dropped_on_load_and_merge(tuned, tmp_path):
    db_dir, *_ = tuned
    copy = tmp_path / "copy"
    shutil.copytree(db_dir, copy)
    records = next(copy.glob("*/database_tuning_record.json"))
    lines = records.read_text().splitlines()
    forged = json.loads(lines[0])
    forged[1][2] = {**forged[1][2], "mcpu": "x86-64"}  # claims another x86 CPU
    loaded = len(tdb.open_database(db_dir, "x86"))
    records.write_text("\n".join(lines + [json.dumps(forged)]) + "\n")
    assert len(tdb.open_database(copy, "x86")) == loaded
    counts = tdb.merge([copy], tmp_path / "merged")
    assert sum(counts.values()) == _distinct_schedules(db_dir, "x86")


def test_merge_deduplicates_and_keeps_targets_apart(tuned, tmp_path):
    db_dir, _first, second, _kept = tuned
    # a second database with the same records filed under another target (as if tuned elsewhere)
    other = tmp_path / "other"
    shutil.copytree(db_dir, other)
    sub = next(p for p in other.iterdir() if p.is_dir())
    generic = targets.get("x86-generic")
    records = []
    for line in (sub / "database_tuning_record.json").read_text().splitlines():
        entry = json.loads(line)
        entry[1][2] = {**entry[1][2], "mcpu": generic.tvm["mcpu"]}
        records.append(json.dumps(entry))
    slower = json.loads(records[0])  # the same schedule measured again, slower: kept once
    slower[1][1] = [float(s) * 2 for s in slower[1][1]]
    records.append(json.dumps(slower))
    (sub / "database_tuning_record.json").write_text("\n".join(records) + "\n")
    (sub / "target.json").write_text(json.dumps({"identity": tdb.target_identity(generic),
                                                 "key": tdb.identity_key(generic)}))
    sub.rename(other / tdb.target_slug(generic))
    out = tmp_path / "merged"
    result = CliRunner().invoke(cli, ["db", "merge", str(db_dir), str(db_dir), str(other),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    # a schedule measured twice (the end-of-run re-measurement) is kept once, with its best time
    distinct = _distinct_schedules(db_dir, "x86")
    assert distinct <= second.records
    counts = {p.name: len(_record_lines_of(p)) for p in out.iterdir() if p.is_dir()}
    assert counts == {tdb.target_slug("x86"): distinct, tdb.target_slug(generic): distinct}
    # what a compile loads: every distinct schedule, but of a task with an in-model verdict only
    # the kept one (the merged database keeps the verdicts)
    applied = _applied_schedules(db_dir, "x86")
    assert applied <= distinct
    assert len(tdb.open_database(out, "x86")) == _applied_schedules(out, "x86") == applied
    assert len(tdb.open_database(out, generic)) == _applied_schedules(out, generic) == applied
    # merging into one of the sources replaces it atomically
    tdb.merge([out, db_dir], out)
    assert len(tdb.open_database(out, "x86")) == applied


def _record_lines_of(sub):
    return [line for line in (sub / "database_tuning_record.json").read_text().splitlines() if line]


def test_compare_latency_reports_both_builds(tuned, model):
    db_dir, _first, second, _kept = tuned
    comparison = compare_latency(model, "x86", db_dir, number=2, repeat=2, min_repeat_ms=0)
    assert comparison.default_s > 0 and comparison.tuned_s > 0
    assert comparison.tasks_tuned == len(second.tasks) < comparison.tasks_total


# --------------------------------------------------------------------------------------------------
# planning, budgets and errors


def test_models_sharing_tasks_share_records(tuned):
    """Another model with the same convolutions but a different head: only its new tasks are
    planned, the shared ones are already tuned."""
    from models_zoo.onnx_models import build_conv_bn_relu

    db_dir, _first, second, _kept = tuned
    other = mir.fix_input_shapes(build_conv_bn_relu(num_classes=7), {"input": (1, 3, 32, 32)})
    plan = tune(other, "x86", db_dir, trials_per_task=1, dry_run=True, tasks=TUNED_TASKS,
                search="metaschedule")
    tuned_workloads = {t.workload for t in second.tasks}
    shared = [t for t in plan.tasks if t.workload in tuned_workloads]
    new = [t for t in plan.tasks if t.workload not in tuned_workloads]
    assert sorted(t.name for t in shared) == sorted(t.name for t in second.tasks
                                                    if "conv2d" in t.name)
    assert all(t.planned == 0 for t in shared)
    assert len(new) == 1 and "matmul" in new[0].name and new[0].planned == 1


def test_trials_budget_is_spread_over_tasks(tuned, model):
    db_dir, *_ = tuned
    # (one of the model's 3x3 convolutions runs as Winograd: its GEMM is the fourth task)
    plan = tune(model, "x86", db_dir, trials_per_task=3, trials=4, dry_run=True,
                tasks=[*TUNED_TASKS, "winograd_gemm"], search="metaschedule")
    assert len(plan.tasks) >= 4
    assert plan.planned == 4
    assert max(t.planned for t in plan.tasks) == 1


def test_time_budget_stops_before_searching(model, tmp_path):
    report = tune(model, "x86", tmp_path / "db", trials_per_task=1, time_budget=0.001,
                  measurement=FAST, tasks=["matmul"])
    assert report.stopped == "time budget reached" and report.trials == 0


def test_tune_errors_are_one_line(model, tmp_path):
    with pytest.raises(MmoptError, match="cannot run on this machine.*--farm"):
        tune(model, "arm", tmp_path / "db")
    with pytest.raises(MmoptError, match="no task"):
        tune(model, "x86", tmp_path / "db", tasks=["no-such-task"], dry_run=True)
    result = CliRunner().invoke(cli, ["tune", "zoo:conv_bn_relu", "--db", str(tmp_path / "db"),
                                      "--time-budget", "soon"])
    assert result.exit_code == 2 and "--time-budget" in result.output


def test_tune_cli_dry_run(tmp_path):
    result = CliRunner().invoke(cli, ["tune", "zoo:conv_bn_relu", "--db", str(tmp_path / "db"),
                                      "--trials-per-task", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: " in result.output and "conv2d" in result.output
    assert not (tmp_path / "db").exists()  # a dry run writes nothing


def test_tune_cli_resumes_into_an_existing_database(tuned, tmp_path):
    db_dir, *_ = tuned
    copy = tmp_path / "db"
    shutil.copytree(db_dir, copy)
    result = CliRunner().invoke(cli, ["tune", "zoo:conv_bn_relu", "--db", str(copy), "--task",
                                      "matmul", "--trials-per-task", "2", "--no-compare"])
    assert result.exit_code == 0, result.output
    assert "1 trial(s) measured" in result.output or "space exhausted" in result.output
    assert "fused_matmul" in result.output
