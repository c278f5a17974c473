"""The CPUID mask shows a process an AVX2-only CPU, and only that: real faults still crash, TVM and
onnxruntime load and run, and benchmarks record which ISA each engine saw."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mmopt.runtime import cpu_mask


def _needs_mask():
    reason = cpu_mask.unavailable()
    if reason:
        pytest.skip(reason)
    if not cpu_mask.host_has_avx512():
        pytest.skip("this CPU has no AVX-512 to hide")


def _child(code: str, masked: bool, *flags: str) -> subprocess.CompletedProcess:
    env = cpu_mask.environment("avx2") if masked else None
    return subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_a_masked_process_sees_avx2_and_the_parent_keeps_its_isa():
    _needs_mask()
    code = "from mmopt.runtime.cpu_mask import seen_isa; print(seen_isa())"
    assert _child(code, masked=False).stdout.split() == [cpu_mask.seen_isa()]
    assert cpu_mask.seen_isa().startswith("avx512")
    masked = _child(code, masked=True)
    assert masked.returncode == 0, masked.stderr
    assert masked.stdout.split() == ["avx2"]


def test_tvm_and_onnxruntime_load_and_run_under_the_mask():
    """TVM installs a SIGSEGV handler with signal() and onnxruntime reads CPUID when it loads;
    both must keep working (the mask hands CPUID faults to neither)."""
    _needs_mask()
    code = ("import numpy as np, onnx, tvm, onnxruntime as ort\n"
            "from onnx import helper, TensorProto\n"
            "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',\n"
            "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [4])],\n"
            "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [4])])\n"
            "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
            "s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n"
            "print(s.run(None, {'x': np.array([-1, 2, -3, 4], np.float32)})[0].tolist())\n")
    proc = _child(code, masked=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "[0.0, 2.0, 0.0, 4.0]"


def test_a_real_segmentation_fault_still_crashes_with_the_processs_own_handler():
    _needs_mask()
    proc = _child("import ctypes; ctypes.string_at(0)", True, "-X", "faulthandler")
    assert proc.returncode == -11, (proc.returncode, proc.stderr[-500:])
    assert "Segmentation fault" in proc.stderr  # Python's faulthandler still ran


def test_a_sent_segv_still_kills_a_process_without_a_handler():
    """kill(SIGSEGV) is no fault to resume after: with no handler of the process's own it ends the
    process (the fuzz harness's crash self-test sends one)."""
    _needs_mask()
    proc = _child("import os, signal; os.kill(os.getpid(), signal.SIGSEGV); print('alive')", True)
    assert proc.returncode == -11 and "alive" not in proc.stdout, (proc.returncode, proc.stdout)


def test_levels_follow_the_targets_isa():
    assert cpu_mask.level_for("x86") is None  # the CPU's own ISA: nothing to hide
    assert cpu_mask.level_for("arm") is None
    assert cpu_mask.level_for("no-such-target") is None
    expected = "avx2" if cpu_mask.host_has_avx512() else None
    assert cpu_mask.level_for("x86-avx2") == expected


def test_an_unknown_level_or_ort_isa_is_one_clear_error():
    from mmopt.errors import MmoptError
    from mmopt.runtime.bench import ort_mask

    with pytest.raises(MmoptError, match="known levels"):
        cpu_mask.environment("avx9")
    with pytest.raises(MmoptError, match="--ort-isa sse"):
        ort_mask("x86-avx2", "sse")
    assert ort_mask("x86-avx2", "native") == (None, [])
    assert ort_mask("x86", "auto") == (None, [])


def _relu_matmul() -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bench_times_onnxruntime_at_the_artifacts_isa(tmp_path):
    """An x86-avx2 artifact is timed against onnxruntime's AVX2 kernels by default, and the
    result says so; --ort-isa native shows onnxruntime the whole CPU."""
    _needs_mask()
    import mmopt
    from mmopt.runtime.bench import bench

    path = tmp_path / "mm.onnx"
    onnx.save(_relu_matmul(), path)
    art = mmopt.compile(path, "x86-avx2", tmp_path / "mm", verify=False).library
    auto = bench(art, path, threads=1, warmup=1, repeat=2)
    assert (auto.onnxruntime.cpu_isa, auto.onnxruntime.cpu_mask) == ("avx2", "avx2")
    assert auto.notes == []
    native = bench(art, path, threads=1, warmup=1, repeat=2, ort_isa="native")
    assert native.onnxruntime.cpu_isa == cpu_mask.seen_isa()
    assert native.onnxruntime.cpu_mask is None
    assert native.to_dict()["onnxruntime"]["cpu_isa"] == cpu_mask.seen_isa()
