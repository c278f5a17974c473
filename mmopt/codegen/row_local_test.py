"""A softmax scheduled row by row: one parallel loop, one row's stages in it, the same numbers."""

from __future__ import annotations

import numpy as np
import pytest


def _softmax_func(shape, symbolic: bool = False):
    from tvm import te, tirx

    from mmopt.codegen import fast_math

    if symbolic:
        shape = (*shape[:-1], tirx.Var("n", "int64"))
    x = te.placeholder(shape, name="x")
    return te.create_prim_func([x, fast_math._softmax(x, -1)])  # noqa: SLF001 - the TE itself


def _reference(x):
    e = np.exp(x.astype("float64") - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("target_name", ["x86", "x86-avx2"])
@pytest.mark.parametrize("shape", [(1, 3, 197, 197), (4, 64), (2, 5, 33)])
def test_every_stage_runs_in_the_row_loop_and_the_values_hold(target_name, shape):
    """197 (12 vectors and a tail of 5), 64 (whole vectors, no tail), 33 (2 vectors and 1):
    the function runs as one parallel loop over the rows, with no intermediate as large as the
    input left outside it, and equals float64's softmax within float32 rounding."""
    import tvm

    from mmopt import targets
    from mmopt.codegen.cpu_schedules import schedule_prim_func

    target = targets.get(target_name).tvm_target()
    sch = schedule_prim_func(_softmax_func(shape), target)
    script = sch.mod["main"].script()
    assert script.count("T.parallel") == 1
    assert script.count("T.vectorized") >= 4  # max and sum partials (+ inits), exp, output
    root = sch.get(sch.get_sblock("root"))
    # every stage is below the parallel loop: the root holds that one loop
    assert isinstance(root.body, tvm.tirx.For) and root.body.kind == tvm.tirx.ForKind.PARALLEL
    x = (np.random.default_rng(0).standard_normal(shape) * 4).astype("float32")
    out = tvm.runtime.tensor(np.zeros(shape, "float32"))
    tvm.compile(sch.mod, target=target)["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_allclose(out.numpy(), _reference(x), rtol=2e-6, atol=1e-7)


def test_rows_of_symbolic_width_keep_the_stage_by_stage_schedule():
    """A dynamic sequence length: the row-local schedule does not apply (its stages are one
    reduction over partials and tail there), and nothing is reported as degraded."""
    from tvm import s_tir

    from mmopt import targets
    from mmopt.codegen import row_local
    from mmopt.codegen.cpu_schedules import schedule_prim_func
    from mmopt.codegen.schedule_fallbacks import record_fallbacks

    func = _softmax_func((3, 40), symbolic=True)
    assert not row_local.applies(s_tir.Schedule(func))
    with record_fallbacks() as found:
        sch = schedule_prim_func(func, targets.get("x86").tvm_target())
    assert sch.mod["main"].script().count("T.parallel") > 1
    assert not [f for f in found if f["schedule"] == "row_local.schedule_rows"]


def test_a_single_row_keeps_the_stage_by_stage_schedule():
    """A 1-D softmax has no row loop to run in parallel: not applied, not reported as degraded,
    and the values hold."""
    import tvm
    from tvm import s_tir

    from mmopt import targets
    from mmopt.codegen import row_local
    from mmopt.codegen.cpu_schedules import schedule_prim_func
    from mmopt.codegen.schedule_fallbacks import record_fallbacks

    func = _softmax_func((1000,))
    assert not row_local.applies(s_tir.Schedule(func))
    target = targets.get("x86").tvm_target()
    with record_fallbacks() as found:
        sch = schedule_prim_func(func, target)
    assert not [f for f in found if f["schedule"] == "row_local.schedule_rows"]
    x = (np.random.default_rng(2).standard_normal(1000) * 4).astype("float32")
    out = tvm.runtime.tensor(np.zeros(1000, "float32"))
    tvm.compile(sch.mod, target=target)["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_allclose(out.numpy(), _reference(x), rtol=2e-6, atol=1e-7)


def test_a_softmax_compiled_from_onnx_matches_onnxruntime(tmp_path):
    """Through the whole pipeline (the fast-math softmax, the row-local schedule, the artifact):
    a Softmax over rows of 197 with a scale before it, against onnxruntime."""
    import onnx
    from onnx import TensorProto, helper

    import mmopt
    from mmopt.runtime.ort import session

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.125])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["t"]),
         helper.make_node("Softmax", ["t"], ["y"], axis=-1)], "scaled_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 197, 197])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 197, 197])], [scale])
    model = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    result = mmopt.compile(model, "x86", tmp_path / "softmax", verify=False)
    x = (np.random.default_rng(1).standard_normal((1, 3, 197, 197)) * 8).astype("float32")
    got = mmopt.load(result.library)(x=x)["y"]
    want = session(str(model), label="reference").run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
