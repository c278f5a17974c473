"""Register tiles stay stack allocations (mmopt.codegen.stack_tiles)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

_LOCAL_BUFFERS = '''
# from tvm.script import tirx as T
@T.prim_func(s_tir=True)
def main(x: T.Buffer((4096,), "float32"), y: T.Buffer((4096,), "float32")):
    for i in T.parallel(2):
        tile = T.sblock_alloc_buffer((TILE,), "float32", scope="local")
        big = T.sblock_alloc_buffer((BIG,), "float32", scope="local")
        for j in range(TILE):
            with T.sblock("tile"):
                tile[j] = x[i * 2048 + j] * T.float32(2.0)
        for j in range(BIG):
            with T.sblock("big"):
                big[j] = x[i * 2048 + j]
        for j in range(TILE):
            with T.sblock("out"):
                y[i * 2048 + j] = tile[j] + big[j]
'''


def _local_buffer_kernel(tile: int, big: int):
    from tvm.script import from_source

    return from_source(_LOCAL_BUFFERS.replace("BIG", str(big)).replace("TILE", str(tile)))


#: compiled only, never run: an AVX-512 CPU and an AVX2 one
_AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512", "mtriple": "x86_64-linux-gnu"}
_AVX2 = {"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"}


def _lowered(mod, pipeline: str, target=_AVX512):
    """``mod`` through the TIR pipeline ``pipeline`` and its host finalization (which turns
    allocations into workspace calls), as ``tvm.tirx.build`` runs them."""
    import tvm
    from tvm.tirx import compilation_pipeline

    target = tvm.target.Target(target)
    target = target.with_host(target)
    lower, host, _device = compilation_pipeline.get_tir_pipeline(pipeline)
    return host()(lower(tvm.tirx.transform.BindTarget(target)(mod)))


@pytest.mark.parametrize("target", [_AVX512, _AVX2], ids=["avx512", "avx2"])
def test_register_tiles_stay_on_the_stack_and_large_buffers_do_not(target):
    """A 1344-byte local tile (an AVX-512 7 x 3 tile of accumulators) is annotated to stay a
    stack allocation; a local buffer over STACK_TILE_BYTES keeps TVM's workspace call. TVM's
    default pipeline: a workspace call for both."""
    import tvm

    from mmopt.codegen.stack_tiles import STACK_TILE_BYTES
    from mmopt.codegen.tir_pipeline import CPU, register

    big = STACK_TILE_BYTES // 4 + 16
    mod = tvm.IRModule({"main": _local_buffer_kernel(336, big)})
    default = _lowered(mod, "default", target).script()
    ours = _lowered(mod, register(CPU), target).script()
    assert default.count("TVMBackendAllocWorkspace") == 2
    assert "disable_lower_builtin" not in default
    assert ours.count("TVMBackendAllocWorkspace") == 1
    assert ours.count("disable_lower_builtin") == 1


def test_kernel_with_a_stack_tile_computes_the_same_values():
    import tvm

    from mmopt.codegen.tir_pipeline import CPU, register
    from mmopt.targets import get

    target = get("x86").tvm_target()
    mod = tvm.IRModule({"main": _local_buffer_kernel(336, 4096)})
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    expected = np.zeros(4096, np.float32)
    for i in range(2):
        expected[i * 2048:i * 2048 + 336] = x[i * 2048:i * 2048 + 336] * np.float32(3)
    lib = tvm.tirx.build(mod, target=target, pipeline=register(CPU))
    y = tvm.runtime.tensor(np.zeros(4096, np.float32))
    lib["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_array_equal(y.numpy(), expected)


def test_avx512_depthwise_kernel_keeps_its_accumulators_out_of_memory(tmp_path):
    """A 7x7x96 depthwise convolution for AVX-512 (a 7 x 3 register tile): no workspace call in
    the compiled library, so no per-task heap tile whose every accumulator is stored back after
    each multiply-add (2.2x slower on MobileNetV2's 7x7x960 layer). Verified against onnxruntime
    where the CPU runs AVX-512."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import mmopt
    from mmopt.targets import get

    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((96, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=96, pads=[1, 1, 1, 1])], "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 96, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 96, 7, 7])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = mmopt.compile(model, "x86-avx512", tmp_path / "dw",
                           verify=get("x86-avx512").runs_here())
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(result.library)],
                         capture_output=True, text=True, check=True).stdout
    assert "TVMBackendAllocWorkspace" not in asm
