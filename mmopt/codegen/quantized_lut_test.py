"""Long element-wise chains on 8-bit tensors become table reads, with the QDQ definition's results."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _model(activation: str) -> onnx.ModelProto:
    """Conv -> ACTIVATION -> Conv (3x3, 16 channels): ``HardSwish`` (a chain of ~50 operators once
    quantized) or ``Relu`` (a plain requantization, too short for a table)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node(activation, ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["y"], kernel_shape=[3, 3], pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes, "lut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(model, activations):
    from mmopt.quantize import quantize

    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 8, 10, 10)).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(model, calib, method="minmax", activations=activations)
    return qdq


def _layout_module(qdq, lookup_tables: bool):
    import tvm

    from mmopt.codegen import pipeline
    from mmopt.codegen.options import CodegenOptions
    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    target = get("x86-avx2")
    with target.tvm_target():
        passes = pipeline._layout(target, CodegenOptions(lookup_tables=lookup_tables))
        return tvm.transform.Sequential(passes)(to_relax(qdq))


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_quantized_hard_swish_reads_a_table_and_keeps_the_qdq_results(activations, tmp_path):
    import mmopt
    from mmopt.codegen.options import CodegenOptions
    from mmopt.codegen.quantized_lut import TABLE_READ
    from mmopt.runtime.verify import quantized_output_step
    from mmopt.targets import get

    qdq = _quantized(_model("HardSwish"), activations)
    text = _layout_module(qdq, True).script(show_meta=False)
    assert text.count(f"cls.{TABLE_READ}") == 1, text  # the whole chain, one table
    assert f"cls.{TABLE_READ}" not in _layout_module(qdq, False).script(show_meta=False)

    if not get("x86-avx2").runs_here():
        pytest.skip("x86-avx2 cannot run here")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(qdq.SerializeToString(), options,
                                     providers=["CPUExecutionProvider"])
    with_tables = mmopt.compile(qdq, "x86-avx2", tmp_path / "on", verify=False)
    without = mmopt.compile(qdq, "x86-avx2", tmp_path / "off", verify=False,
                            codegen=CodegenOptions(lookup_tables=False))
    assert with_tables.meta.codegen["lookup_tables"] is True
    step = quantized_output_step(qdq)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32) * 1.5
        want = reference.run(None, {"x": x})[0]
        on = mmopt.load(with_tables.library)(x=x)["y"]
        off = mmopt.load(without.library)(x=x)["y"]
        # the tables hold what the QDQ definition computes; the arithmetic chain may round one
        # requantization differently where LLVM contracted a multiply-add
        assert np.abs(on - want).max() <= 2 * step + 1e-6
        assert np.abs(on - off).max() <= 2 * step + 1e-6


def test_short_chains_stay_arithmetic():
    from mmopt.codegen.quantized_lut import TABLE_READ

    qdq = _quantized(_model("Relu"), "uint8")
    assert f"cls.{TABLE_READ}" not in _layout_module(qdq, True).script(show_meta=False)


def test_table_values_are_the_chain_on_every_byte():
    """A chain built by hand: the table is its value at each of the 256 inputs, rounding and
    saturation included."""
    from tvm import relax

    from mmopt.codegen.quantized_lut import MIN_OPS, TABLE_READ, lookup_tables
    from mmopt.codegen.relax_util import const_array

    q = relax.Var("q", relax.TensorType((2, 3), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [q]):
        with bb.dataflow():
            x = bb.emit(relax.op.astype(q, "float32"))
            for i in range(MIN_OPS // 2):
                x = bb.emit(relax.op.multiply(x, relax.const(0.75 + 0.1 * i, "float32")))
                x = bb.emit(relax.op.round(x))
            x = bb.emit(relax.op.minimum(x, relax.const(200.0, "float32")))
            y = bb.emit(relax.op.astype(x, "uint8"))
            out = bb.emit_output(relax.op.permute_dims(y))  # not element-wise: the chain ends
        bb.emit_func_output(out)
    mod = lookup_tables()(bb.get())
    tables = [f for gv, f in mod.functions.items() if gv.name_hint.startswith(TABLE_READ)]
    assert len(tables) == 1
    want = np.arange(256, dtype=np.float32)
    for i in range(MIN_OPS // 2):
        want = np.round(want * np.float32(0.75 + 0.1 * i))
    want = np.minimum(want, 200).astype(np.uint8)
    calls = [b.value for b in mod["main"].body.blocks[0].bindings
             if getattr(b.value.op, "name", "") == "relax.call_tir"]
    assert len(calls) == 1
    table = const_array(calls[0].args[1].fields[0])
    np.testing.assert_array_equal(table.astype(np.uint8), want)
