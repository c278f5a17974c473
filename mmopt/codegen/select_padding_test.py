"""The integer depthwise convolution's padding is a select on clamped indices, and exact."""

from __future__ import annotations

import numpy as np
import pytest


def _grouped_module(channels: int, hw: int, stride: int, pad: tuple[int, int, int, int]):
    """Relax: an int16 NHWC depthwise 3x3 convolution with int8 HWIO weights, summed in int32
    (what :mod:`mmopt.codegen.quantized` emits for a QDQ depthwise convolution)."""
    from tvm import relax

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (3, 3, 1, channels)).astype(np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, hw, hw, channels), "int16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(
                x, relax.const(w), strides=[stride, stride], padding=list(pad),
                groups=channels, data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), w


def _reference(x, w, stride, pad):
    """The depthwise convolution in int64 numpy (NHWC, HWIO with one input channel)."""
    top, left, bottom, right = pad
    xp = np.pad(x.astype(np.int64), [(0, 0), (top, bottom), (left, right), (0, 0)])
    oh = (xp.shape[1] - 3) // stride + 1
    ow = (xp.shape[2] - 3) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), np.int64)
    for dy in range(3):
        for dx in range(3):
            out += (xp[:, dy:dy + stride * oh:stride, dx:dx + stride * ow:stride, :]
                    * w[dy, dx, 0].astype(np.int64))
    return out.astype(np.int32)


def _run(mod, x):
    import tvm
    from tvm import relax

    target = tvm.target.Target("llvm")
    exe = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("stride,pad", [(1, (1, 1, 1, 1)), (2, (0, 0, 1, 1)), (2, (1, 1, 1, 1))])
def test_rewritten_depthwise_conv_is_exact(stride, pad):
    """The rewritten convolution is exact, at the borders too: int16 activations of the full
    centered uint8 range, int8 weights, padding on all sides or only the bottom and right."""
    from mmopt.codegen.select_padding import select_padding

    mod, w = _grouped_module(16, 9, stride, pad)
    rewritten = select_padding()(mod)
    text = rewritten.script()
    assert "R.nn.conv2d" not in text and "T.Select" in text and "if_then_else" not in text
    x = np.random.default_rng(1).integers(-255, 256, (1, 9, 9, 16)).astype(np.int16)
    np.testing.assert_array_equal(_run(rewritten, x), _reference(x, w, stride, pad))


def test_float_and_dense_convs_are_left_alone():
    """Only integer grouped convolutions are rewritten (the float depthwise measured no faster)."""
    from tvm import relax

    from mmopt.codegen.select_padding import select_padding

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            dw = bb.emit(relax.op.nn.conv2d(
                x, relax.const(rng.random((3, 3, 1, 16), dtype=np.float32)), padding=[1, 1, 1, 1],
                groups=16, data_layout="NHWC", kernel_layout="HWIO"))
            out = bb.emit_output(dw)
        bb.emit_func_output(out)
    mod = bb.get()
    assert "R.nn.conv2d" in select_padding()(mod).script()


def test_quantized_depthwise_kernel_has_no_padding_branch():
    """In the scheduled kernel of a QDQ depthwise convolution the padding (the 8-bit input's
    zero point) is read through a select: TVM lowers an if-then-else around a load to a branch,
    and the branch between the register tile's multiply-adds made LLVM store every accumulator
    after each one. The explicit pad is folded in: no kernel of its own."""
    import tvm

    from mmopt.codegen import pipeline
    from mmopt.codegen.quantized_test import _depthwise_relu_model
    from mmopt.codegen.relax_import import to_relax
    from mmopt.quantize import quantize
    from mmopt.targets import get

    model = _depthwise_relu_model(32, 14, expand_first=True)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 32, 14, 14), dtype=np.float32)} for _ in range(4)]
    qdq, _ = quantize(model, calib, method="minmax", weight_bits=7)
    target = get("x86-avx2")
    with target.tvm_target():
        mod = tvm.transform.Sequential(
            pipeline._layout(target) + pipeline._legalize(target, pipeline.CodegenOptions())  # noqa: SLF001
            + pipeline._schedule_cpu())(to_relax(qdq))  # noqa: SLF001
    names = [g.name_hint for g in mod.functions if isinstance(mod[g], tvm.tirx.PrimFunc)]
    kernels = [mod[g].script() for g in mod.functions
               if isinstance(mod[g], tvm.tirx.PrimFunc) and "group_conv2d_nhwc" in mod[g].script()]
    assert kernels and not [n for n in names if n.startswith("pad")], names
    for text in kernels:
        assert "T.Select" in text and "if_then_else" not in text
        assert '"int16"' not in text  # reads the 8-bit input, not a centered int16 copy


_GUARDED_RUN = r'''
import ctypes, mmap, re, sys
import numpy as np
import tvm

lib = tvm.runtime.load_module(sys.argv[1])
head = open(sys.argv[2]).read()
page = mmap.PAGESIZE
args = []
for i, (dims, dtype) in enumerate(re.findall(r'T\.Buffer\(\(([^"]*?)\), "(\w+)"\)', head)):
    shape = [int(d) for d in re.findall(r"T\.int64\((\d+)\)", dims)]
    if i == 0:  # the 8-bit activation, filling whole pages between two inaccessible ones
        count = int(np.prod(shape))
        size = count * np.dtype(dtype).itemsize
        assert size % page == 0, size
        region = mmap.mmap(-1, size + 2 * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(region))
        libc = ctypes.CDLL(None)
        for start in (base, base + page + size):
            assert libc.mprotect(ctypes.c_void_p(start), page, 0) == 0  # PROT_NONE
        data = np.frombuffer(region, dtype, count, page).reshape(shape)
        data[...] = np.random.default_rng(0).integers(0, 256, shape)
        args.append(tvm.runtime.from_dlpack(data))
    else:
        args.append(tvm.runtime.tensor(np.zeros(shape, dtype)))
lib["main"](*args)
print("ok")
'''


def test_padded_reads_stay_inside_the_tensor(tmp_path):
    """Regression: TVM's simplifier used the select's condition to drop the index clamps, and
    the AVX2 kernel (a blend, no masked load) then read a row before and after the activation:
    the PP-OCR detector's int8 x86-avx2 artifact segfaulted. The scheduled kernel now runs with
    its input between two inaccessible pages (in a child process: a fault fails the test)."""
    import subprocess
    import sys

    import tvm

    from mmopt.codegen import pipeline
    from mmopt.codegen.quantized_test import _depthwise_relu_model
    from mmopt.codegen.relax_import import to_relax
    from mmopt.quantize import quantize
    from mmopt.targets import get

    target = get("x86-avx2")
    if not target.runs_here():
        pytest.skip("x86-avx2 cannot run here")
    model = _depthwise_relu_model(64, 16, expand_first=True)  # 16x16x64 bytes: four 4 KiB pages
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 64, 16, 16), dtype=np.float32)} for _ in range(4)]
    qdq, _ = quantize(model, calib, method="minmax", weight_bits=7)
    with target.tvm_target():
        mod = tvm.transform.Sequential(
            pipeline._layout(target) + pipeline._legalize(target, pipeline.CodegenOptions())  # noqa: SLF001
            + pipeline._schedule_cpu())(to_relax(qdq))  # noqa: SLF001
    (kernel,) = [mod[g] for g in mod.functions if isinstance(mod[g], tvm.tirx.PrimFunc)
                 and "group_conv2d_nhwc" in mod[g].script()]
    kernel = kernel.with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": kernel}), target=target.tvm_target())
    lib.export_library(str(tmp_path / "kernel.so"))
    (tmp_path / "head.txt").write_text(kernel.script().split("def main(")[1].split(":\n")[0])
    (tmp_path / "run.py").write_text(_GUARDED_RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "kernel.so"),
                           str(tmp_path / "head.txt")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
