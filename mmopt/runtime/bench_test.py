"""Each benchmarked engine's memory is its own: a parent holding a huge array leaks into neither,
and a big weight shows up once in each engine's memory."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

#: the big weight: 1024 x 16384 float32
WEIGHT_MB = 64.0


def _matmul(k: int, n: int) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def timings(tmp_path_factory):
    import mmopt
    from mmopt.runtime.bench import random_feeds, time_engines

    tmp = tmp_path_factory.mktemp("memory")
    engines = []
    for name, n in (("small", 16), ("big", 16384)):
        path = tmp / f"{name}.onnx"
        onnx.save(_matmul(1024, n), path)
        result = mmopt.compile(path, "x86", tmp / name, verify=False)
        engines += [("mmopt", str(result.library)), ("onnxruntime", str(path))]
    # the parent holds (and has touched) 1 GiB while the engines run
    hog = np.ones(2**27)
    feeds = random_feeds(result.meta.inputs)
    timed = time_engines(engines, feeds, threads=1, warmup=1, repeat=2, rounds=1)
    assert hog[-1] == 1.0
    return dict(zip(["mmopt small", "onnxruntime small", "mmopt big", "onnxruntime big"], timed))


def test_the_parents_memory_is_not_counted(timings):
    for name, t in timings.items():
        assert t.memory_source == "VmHWM", name
        assert t.peak_rss_mb < 900, (name, t)  # the parent's 1024 MB array is not in it
        assert t.baseline_rss_mb < 200, (name, t)


def test_a_big_weight_is_held_once_by_each_engine(timings):
    for engine in ("mmopt", "onnxruntime"):
        small, big = timings[f"{engine} small"], timings[f"{engine} big"]
        held = big.anon_rss_mb - small.anon_rss_mb
        assert 0.8 * WEIGHT_MB < held < 1.6 * WEIGHT_MB, (engine, held)
        assert big.peak_rss_mb - small.peak_rss_mb > 0.9 * WEIGHT_MB, (engine, small, big)
    # the engines differ: mmopt's process carries TVM (compiler library included) and maps the
    # artifact's .so, which holds the weights once more as file pages
    assert timings["mmopt small"].peak_rss_mb != timings["onnxruntime small"].peak_rss_mb
    def file_pages(t):
        return t.rss_mb - t.anon_rss_mb

    assert file_pages(timings["mmopt big"]) - file_pages(timings["mmopt small"]) > 0.8 * WEIGHT_MB


def test_the_vm_workspace_is_reported_for_mmopt_only(timings):
    # the big model's output is 1 x 16384 float32 = 64 KiB: the VM's storage for it
    assert timings["mmopt big"].workspace_mb == pytest.approx(16384 * 4 / 2**20)
    assert timings["onnxruntime big"].workspace_mb is None


def _dying_worker(engine, target, inputs_path, threads, warmup, conn):  # noqa: ARG001
    """A benchmark worker whose engine crashes while loading (what a segfaulting artifact does)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_crashing_engine_fails_the_benchmark_instead_of_hanging(monkeypatch):
    """The parent waited forever on a worker that had died (its own copy of the worker's pipe end
    kept the pipe open); now it reports the signal."""
    import threading

    from mmopt.errors import MmoptError
    from mmopt.runtime import bench

    monkeypatch.setattr(bench, "_worker", _dying_worker)  # spawn pickles it by reference
    outcome = {}

    def run():
        try:
            bench.time_engines([("mmopt", "unused.so")], {"x": np.zeros(1, np.float32)},
                               threads=1, warmup=0, repeat=1)
        except MmoptError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "time_engines still waiting on a dead worker"
    assert "died" in outcome.get("error", "") and "-11" in outcome["error"], outcome


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_the_next_block_waits_until_the_other_engines_stop_spinning():
    """An engine's thread pool keeps running after its call returns (TVM's workers ~125 ms);
    timing the other engine meanwhile measured the contention. The harness waits until the other
    processes use no CPU -- and only as long as they do."""
    import subprocess
    import sys
    import time

    from mmopt.runtime import bench

    busy_s, head_start_s = 0.6, 0.3
    spinner = subprocess.Popen([sys.executable, "-c",
                                "import time\nend = time.perf_counter() + %r\n"
                                "while time.perf_counter() < end: pass\ntime.sleep(30)" % busy_s])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(head_start_s)  # both started (the interpreter's start-up is CPU time too)
        waited = bench._settle([spinner.pid, idle.pid])  # noqa: SLF001
        # it waited for the spinner's remaining busy time (less a 0.1 s margin), which the fixed
        # pause alone (0.1 s) is not, and not for the cap
        assert waited >= busy_s - head_start_s - 0.1, waited
        assert waited < bench._IDLE_WAIT_S, waited  # noqa: SLF001
        # both idle now: the fixed pause and two polls
        assert bench._settle([spinner.pid, idle.pid]) < 0.5  # noqa: SLF001
    finally:
        spinner.kill()
        idle.kill()
        spinner.wait()
        idle.wait()
    assert bench._cpu_seconds(spinner.pid) is None  # noqa: SLF001 - gone: nothing to wait for
