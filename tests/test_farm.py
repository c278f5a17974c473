"""The device farm on loopback: a tracker, x86 device servers and an emulated arm64 device, all
started as subprocesses by these tests and stopped (process groups killed) at the end.

Shows: ``mmopt farm status`` lists the devices; tuning measures on farm devices, keeps every record
when a device disappears mid-run (and goes on with the others, or stops with a clear message when
none is left), in both searches, and resumes; an ARM artifact runs on the emulated arm64 device and
matches onnxruntime; tuning for ARM finds the emulated device when it is the only one, and records
measured on emulated devices are kept apart and applied only when asked.

The farm secret (TLS) is tested in test_farm_secure.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

import mmopt
from mmopt import ir as mir
from mmopt.cli.main import cli
from mmopt.errors import MmoptError
from mmopt.runtime.verify import run_onnxruntime
from mmopt.tuning import database as tdb
from mmopt.tuning import emulate, farm
from mmopt.tuning.remote import RemoteModel, run_remote
from mmopt.tuning.tune import Measurement, tune

FAST = Measurement(min_repeat_ms=5, device_wait_s=30)
ARM_KEY = "arm64-qemu"


@pytest.fixture(autouse=True)
def _plain_farm(monkeypatch):
    """These farms run without a secret: none may come from the environment."""
    monkeypatch.delenv("MMOPT_FARM_SECRET", raising=False)


def _group_gone(process: farm.FarmProcess) -> bool:
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def model():
    from models_zoo import MODELS, build

    return mir.fix_input_shapes(build("conv_bn_relu"), MODELS["conv_bn_relu"].input_shapes)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    process = farm.start_tracker(tmp_path_factory.mktemp("farm-logs"))
    yield process
    process.stop()
    assert _group_gone(process)


@pytest.fixture(scope="module")
def x86_devices(tracker, tmp_path_factory):
    logs = tmp_path_factory.mktemp("x86-logs")
    devices = []
    try:
        for i in range(2):
            devices.append(farm.start_device(logs, tracker.address, "x86", f"x86-{i}", threads=1))
        yield devices
    finally:
        for device in devices:
            device.stop()
        assert all(_group_gone(d) for d in devices)


@pytest.fixture(scope="module")
def arm_device(tracker, tmp_path_factory):
    """The emulated arm64 device (prepares its cached environment first if needed)."""
    try:
        emulate.qemu_binary()
    except MmoptError as exc:
        pytest.skip(str(exc))
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64 cross compiler missing (scripts/setup.sh installs it)")
    emulate.prepare()
    device = farm.start_emulated_device(tmp_path_factory.mktemp("arm-logs"), tracker.address,
                                        ARM_KEY)
    yield device
    device.stop()
    assert _group_gone(device)


def _record_lines(db_dir) -> list[str]:
    return [line for p in sorted(db_dir.glob("*/database_tuning_record.json"))
            for line in p.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------


def test_addresses_and_missing_tracker():
    assert farm.parse_address("127.0.0.1:9190") == ("127.0.0.1", 9190)
    for bad in ("9190", "host:", "host:port", "host:70000"):
        with pytest.raises(MmoptError, match="HOST:PORT"):
            farm.parse_address(bad)
    with pytest.raises(MmoptError, match="no tracker answers"):
        farm.status(("127.0.0.1", 1))


def test_farm_status_lists_devices(tracker, x86_devices, request):
    try:  # the emulated device joins when this machine can emulate arm64
        arm = [request.getfixturevalue("arm_device")]
    except pytest.skip.Exception:
        arm = []
    assert tracker.address[0] == "127.0.0.1"
    assert all(d.address[0] == "127.0.0.1" for d in [*x86_devices, *arm])
    result = CliRunner().invoke(cli, ["farm", "status", "--tracker",
                                      farm.format_address(tracker.address), "--json"])
    assert result.exit_code == 0, result.output
    keys = {k["key"]: k for k in json.loads(result.output)["keys"]}
    assert keys["x86"]["devices"] == 2
    assert keys["x86"]["free"] + keys["x86"]["busy"] == 2 and keys["x86"]["pending"] == 0
    if arm:
        assert keys[ARM_KEY]["devices"] == 1
    table = CliRunner().invoke(cli, ["farm", "status", "--tracker",
                                     farm.format_address(tracker.address)])
    assert "x86" in table.output and all(ARM_KEY in table.output for _ in arm)


def test_a_missing_key_fails_fast(tracker, x86_devices):
    started = time.monotonic()
    with pytest.raises(MmoptError, match="no device with key 'nope'"):
        farm.request_session(tracker.address, "nope", wait_s=30)
    assert time.monotonic() - started < 15
    with pytest.raises(MmoptError, match="keys there: .*x86"):
        farm.require_devices(tracker.address, "nope")


def test_tuning_on_two_devices_survives_losing_one(model, tracker, tmp_path):
    """Two devices of a key; one is killed while a measurement on it is in flight. Nothing stored
    is lost, tuning finishes on the other device, and a second run finds nothing left to do."""
    key = "x86-loss"
    devices = [farm.start_device(tmp_path, tracker.address, key, f"loss-{i}", threads=1)
               for i in range(2)]
    db_dir = tmp_path / "db"
    seen: dict = {}

    def kill_first_device_mid_batch():
        # Freeze both devices so the batch's sessions wait on them, then kill one for good.
        for device in devices:
            os.killpg(device.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while farm.status(tracker.address).keys[key].free > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        seen["before"] = _record_lines(db_dir)
        devices[0].kill(signal.SIGKILL)
        os.killpg(devices[1].pid, signal.SIGCONT)

    def on_update(report, event):
        if event == "task" and report.trials >= 2 and "thread" not in seen:
            seen["thread"] = threading.Thread(target=kill_first_device_mid_batch)
            seen["thread"].start()

    try:
        report = tune(model, "x86", db_dir, trials_per_task=2, batch=2, farm=tracker.address,
                      key=key, measurement=FAST, on_update=on_update, tasks=["conv2d"],
                      search="metaschedule")
        seen["thread"].join()
        assert report.runner.startswith(f"2 device(s) '{key}'")
        assert report.stopped is None
        assert set(seen["before"]) <= set(_record_lines(db_dir))  # no stored record lost
        assert len(seen["before"]) < report.records == len(_record_lines(db_dir))
        assert all(t.trials_before + t.trials == 2 or t.exhausted for t in report.tasks)
        assert farm.status(tracker.address).devices(key) == 1
        again = tune(model, "x86", db_dir, trials_per_task=2, farm=tracker.address, key=key,
                     measurement=FAST, tasks=["conv2d"], search="metaschedule")
        assert again.planned == 0 and again.trials == 0
    finally:
        for device in devices:
            device.stop()


def test_tuning_stops_cleanly_when_no_device_is_left(model, tracker, tmp_path):
    key = "x86-gone"
    devices = [farm.start_device(tmp_path, tracker.address, key, "gone-0", threads=1)]
    db_dir = tmp_path / "db"

    def on_update(report, event):
        if event == "task" and report.trials >= 1 and devices[0].alive():
            devices[0].kill(signal.SIGKILL)

    try:
        report = tune(model, "x86", db_dir, trials_per_task=2, batch=1, farm=tracker.address,
                      key=key, measurement=FAST, on_update=on_update, tasks=["matmul"],
                      search="metaschedule")
        assert report.stopped == f"no device with key {key!r} is left at " \
                                 f"{farm.format_address(tracker.address)}"
        assert report.trials == 1 and report.records == len(_record_lines(db_dir)) == 2
        with pytest.raises(MmoptError, match=f"no device with key '{key}'"):
            tune(model, "x86", db_dir, farm=tracker.address, key=key, tasks=["matmul"],
                 search="metaschedule")
        devices.append(farm.start_device(tmp_path, tracker.address, key, "gone-1", threads=1))
        resumed = tune(model, "x86", db_dir, trials_per_task=2, batch=1, farm=tracker.address,
                       key=key, measurement=FAST, tasks=["matmul"], search="metaschedule")
        assert resumed.stopped is None and resumed.tasks[0].trials_before == 1
        assert resumed.tasks[0].trials == 1 or resumed.tasks[0].exhausted
        assert resumed.records == len(_record_lines(db_dir))
    finally:
        for device in devices:
            device.stop()


def test_arm_artifact_runs_on_the_emulated_device(model, tracker, arm_device, tmp_path):
    result = mmopt.compile(model, "arm", tmp_path / "net", verify=False)
    reference = mir.prepare(model)
    feeds = mir.random_inputs(reference, 0)
    expected = run_onnxruntime(reference, feeds)
    got = run_remote(result.library, feeds, ARM_KEY, farm.format_address(tracker.address))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4)
    with RemoteModel(tmp_path / "net", ARM_KEY, tracker.address) as remote:
        timing = remote.benchmark(feeds, number=1, repeat=2)
    assert len(timing.samples) == 2 and timing.best > 0


def test_an_x86_artifact_is_refused_by_the_arm_device(model, tracker, arm_device, tmp_path):
    mmopt.compile(model, "x86-generic", tmp_path / "net", verify=False)
    feeds = mir.random_inputs(mir.prepare(model), 0)
    with pytest.raises(MmoptError, match="cannot load it"):
        run_remote(tmp_path / "net", feeds, ARM_KEY, tracker.address)


# --------------------------------------------------------------------------------------------------
# device loss in the knob search, emulated keys and records


def test_knob_search_stops_when_the_device_is_lost(model, tracker, tmp_path):
    """The default search (knobs): the only device is killed after the first variant. The run
    stops saying why, keeps what it measured, counts no failed run as a trial or a task as
    exhausted, and a second run on a new device resumes."""
    key = "x86-knobs-gone"
    devices = [farm.start_device(tmp_path, tracker.address, key, "knobs-gone-0", threads=1)]
    db_dir = tmp_path / "db"

    def on_update(report, event):
        if event == "task" and report.trials >= 1 and devices[0].alive():
            devices[0].kill(signal.SIGKILL)

    try:
        report = tune(model, "x86", db_dir, trials_per_task=3, batch=1, farm=tracker.address,
                      key=key, measurement=FAST, on_update=on_update, tasks=["conv2d"])
        assert report.search == "knobs"
        assert report.stopped == f"no device with key {key!r} is left at " \
                                 f"{farm.format_address(tracker.address)}"
        assert report.trials >= 1
        assert not any(t.exhausted for t in report.tasks if t.knob_space)
        schedules = tdb.TuningDatabase(db_dir).schedules("x86")
        for t in report.tasks:  # each trial is a recorded variant, besides the default schedule
            assert len(schedules.get(t.workload, {})) == (t.default_s is not None) + t.trials
        assert report.records == len(_record_lines(db_dir))
        result = CliRunner().invoke(cli, ["tune", "zoo:conv_bn_relu", "--db", str(db_dir),
                                          "--farm", farm.format_address(tracker.address),
                                          "--key", key, "--task", "conv2d"])
        assert result.exit_code == 2 and f"no device with key '{key}'" in result.output
        devices.append(farm.start_device(tmp_path, tracker.address, key, "knobs-gone-1",
                                         threads=1))
        resumed = tune(model, "x86", db_dir, trials_per_task=3, batch=1, farm=tracker.address,
                       key=key, measurement=FAST, tasks=["conv2d"])
        assert resumed.stopped is None
        assert sum(t.trials_before for t in resumed.tasks) == report.trials
        assert all(t.done for t in resumed.tasks)
    finally:
        for device in devices:
            device.stop()


def test_the_emulated_key_is_the_arm_key_plus_qemu():
    from mmopt import targets

    assert emulate.DEFAULT_KEY == farm.emulated_key(targets.get("arm").rpc_key) == "arm64-qemu"
    assert farm.is_emulated_key(emulate.DEFAULT_KEY) and not farm.is_emulated_key("arm64")


def test_emulated_records_are_kept_apart(model, tracker, tmp_path):
    """Only an emulated device of the target's key is at the tracker (here: an x86 device
    registered as ``x86-generic-qemu``): tuning without --key finds it and says so; its records go
    to the database's emulated part; compile skips them unless asked, and its report says which."""
    key = farm.emulated_key("x86-generic")
    device = farm.start_device(tmp_path, tracker.address, key, "emulated-x86", threads=1)
    db_dir = tmp_path / "db"
    try:
        with pytest.raises(MmoptError, match="x86-generic-qemu' is an emulated one"):
            farm.require_devices(tracker.address, "x86-generic")
        report = tune(model, "x86-generic", db_dir, trials_per_task=1, farm=tracker.address,
                      measurement=FAST, tasks=["conv2d"])
    finally:
        device.stop()
    assert report.stopped is None and report.key == key and report.emulated
    assert any("emulated" in note for note in report.notes)
    database = tdb.TuningDatabase(db_dir)
    (summary,) = database.summary()
    assert summary.emulated and summary.slug.endswith(tdb.EMULATED_SUFFIX)
    assert summary.records == report.records > 0
    assert not database.schedules("x86-generic")  # nothing among the real measurements
    shown = CliRunner().invoke(cli, ["db", "show", str(db_dir)])
    assert "emulated device" in shown.output

    skipped = mmopt.compile(model, "x86-generic", tmp_path / "default", db=db_dir)
    tuning = skipped.meta.extra["tuning"]
    assert skipped.passed and tuning["kernels_tuned"] == 0
    assert tuning["kernels_emulated_skipped"] and not tuning["kernels_from_emulated"]
    used = mmopt.compile(model, "x86-generic", tmp_path / "emulated", db=db_dir,
                         allow_emulated_records=True)
    tuning = used.meta.extra["tuning"]
    assert used.passed and tuning["kernels_tuned"] == len(tuning["kernels_from_emulated"]) > 0
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    for extra, expected in (([], "skipped"), (["--allow-emulated-records"], "use records")):
        result = CliRunner().invoke(cli, ["compile", str(onnx_path), "--target", "x86-generic",
                                          "--db", str(db_dir), "-o", str(tmp_path / "cli"),
                                          *extra])
        assert result.exit_code == 0, result.output
        assert "emulated device" in result.output and expected in result.output


def test_tuning_for_arm_finds_the_emulated_device(model, tracker, arm_device, tmp_path):
    """`tune --target arm --farm ...` (no --key) with only the emulated arm64 device there."""
    if farm.status(tracker.address).devices("arm64"):
        pytest.skip("a real arm64 device is registered at this tracker")
    report = tune(model, "arm", tmp_path / "db", trials_per_task=1, farm=tracker.address,
                  measurement=FAST, tasks=["matmul"])
    assert report.key == ARM_KEY and report.emulated and report.stopped is None
    assert any("emulated" in note for note in report.notes)
    assert report.runner.startswith(f"1 emulated device(s) '{ARM_KEY}'")
    (summary,) = tdb.TuningDatabase(tmp_path / "db").summary()
    assert summary.emulated and summary.records == report.records > 0
