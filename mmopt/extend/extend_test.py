"""The extension API: registration forms, which rule a node gets, kernels, references, plugins."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnxscript import opset18 as _op
from onnxscript import script, values

from mmopt import extend
from mmopt.codegen.decompose._testing import compile_and_run, parse, run_decompose
from mmopt.codegen.relax_import import support_report
from mmopt.errors import MmoptError
from mmopt.extend._registry import BUILTIN, attributed_to
from mmopt.extend.reference import run_reference

DOMAIN = "test.ext"
SOURCE = "plugin extend_test"

_test_ops = values.Opset(DOMAIN, 1)


@script(_test_ops)
def _swish(X, beta: float = 1.0):
    return X * _op.Sigmoid(X * beta)


def _swish_numpy(x, beta=1.0):
    return (x / (1.0 + np.exp(-beta * x))).astype(np.float32)


@pytest.fixture
def plugin():
    """Registrations inside ``with plugin():`` belong to a test plugin, dropped afterwards."""
    yield lambda: attributed_to(SOURCE)
    extend.default_registry().unregister(SOURCE)


def _model(body: str, inputs: str = "float[2,8] x", outputs: str = "float[2,8] y",
           version: int = 1, **initializers) -> onnx.ModelProto:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17, "{DOMAIN}" : {version}]>
    g ({inputs}) => ({outputs}) {{ {body} }}"""
    return parse(text, **initializers)


def _x(shape=(2, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_onnxscript_function_is_inlined_with_attributes_and_defaults(plugin):
    with plugin():
        extend.decomposition(DOMAIN, "Swish")(_swish)
    model = _model("a = test.ext.Swish <beta = 2.0> (x)\n y = test.ext.Swish (a)")
    out, report = run_decompose(model)
    assert report.counts == {"inline__swish": 2}
    assert {n.domain for n in out.graph.node} <= {"", "ai.onnx"}
    assert [h.source for h in report.handled if h.op == "test.ext::Swish"] == [SOURCE, SOURCE]
    x = _x()
    # the decomposed model runs on onnxruntime: the node's beta and the default were substituted
    got = run_reference(out, {"x": x})["y"]
    np.testing.assert_allclose(got, _swish_numpy(_swish_numpy(x, 2.0)), rtol=1e-5, atol=1e-6)


def test_builder_function_and_check_reason(plugin):
    def check(node):
        return None if "alpha" in node.attributes else "alpha must be given"

    with plugin():
        @extend.decomposition(DOMAIN, "Scale", check=check)
        def scale(node, op):
            alpha = node.attributes["alpha"].value
            return op.Mul(node.inputs[0], op.const(alpha, like=node.inputs[0]))

    model = _model("y = test.ext.Scale <alpha = 3.0> (x)")
    out, report = run_decompose(model)
    assert report.counts == {"scale": 1}
    np.testing.assert_allclose(run_reference(out, {"x": _x()})["y"], 3 * _x(), rtol=1e-6)
    # no numpy reference: verification decomposes the op (its definition) and runs onnxruntime
    reference = run_reference(model, {"x": _x()})
    np.testing.assert_allclose(reference["y"], 3 * _x(), rtol=1e-6)
    assert reference.engine == ("onnxruntime (test.ext::Scale through its extension's "
                                "decomposition)")
    assert run_reference(out, {"x": _x()}).engine == "onnxruntime"

    unsupported = support_report(_model("y = test.ext.Scale (x)"), "x86", try_import=False)
    (row,) = unsupported.ops
    assert row.status == "unsupported" and "alpha must be given" in row.detail


def test_since_version_and_plugin_precedence(plugin):
    class Double(extend.Decomposition):
        name, domain, op_types = "double", DOMAIN, ("Twice",)

        def rewrite(self, node, tape, ctx):
            return [tape.op("Add", [node.inputs[0], node.inputs[0]])]

    class DoubleV3(Double):
        name, since_version = "double_v3", 3

    with plugin():
        extend.register(Double())
        extend.register(DoubleV3())
    node = ir.Node(DOMAIN, "Twice", [])
    reg = extend.registry()
    assert [e.rule.name for e in reg.candidates(node, 1)] == ["double"]
    assert [e.rule.name for e in reg.candidates(node, 2)] == ["double"]
    assert [e.rule.name for e in reg.candidates(node, 3)] == ["double_v3"]

    # a plugin's rule for an op mmopt handles is tried first; mmopt's keep their order after it
    lstm = ir.Node("", "LSTM", [])
    builtin = [e.rule.name for e in reg.candidates(lstm, 17)]
    assert builtin == ["expand_function", "fuse_lstm", "unroll_recurrence"]  # FAMILIES' order
    assert all(e.source == BUILTIN for e in reg.candidates(lstm, 17))
    with plugin():
        class MyLSTM(Double):
            name, domain, op_types = "my_lstm", "", ("LSTM",)

        extend.register(MyLSTM())
    assert [e.rule.name for e in reg.candidates(lstm, 17)] == ["my_lstm", *builtin]


def _rows_te(x, factor=2.0):
    from tvm import te, tirx

    k = te.reduce_axis((0, x.shape[1]), name="k")
    total = te.compute((x.shape[0],), lambda i: te.sum(x[i, k], axis=k), name="row_sum")
    return te.compute(x.shape, lambda i, j: x[i, j] * tirx.const(factor, "float32") + total[i],
                      name="rows")


def _rows_numpy(x, factor=2.0):
    return (x * factor + x.sum(axis=1, keepdims=True)).astype(np.float32)


def _rows_schedule(sch):
    block = sch.get_sblock("rows")
    i, j = sch.get_loops(block)
    sch.parallel(i)
    sch.compute_at(sch.get_sblock("row_sum"), i)
    sch.vectorize(j)


@pytest.mark.parametrize("scheduled", [True, False])
def test_te_kernel_compiles_with_and_without_its_schedule(plugin, scheduled):
    with plugin():
        extend.kernel(DOMAIN, "Rows", te=True, schedule=_rows_schedule if scheduled else None,
                      reference=_rows_numpy)(_rows_te)
    model = _model("y = test.ext.Rows <factor = 0.5> (x)", "float[4,16] x", "float[4,16] y")
    report = support_report(model, "x86")
    assert [(o.op, o.status, o.extension) for o in report.ops] == [
        ("test.ext::Rows", "kernel", SOURCE)]
    assert report.nodes[0]["kind"] == "kernel" and report.supported
    x = _x((4, 16))
    got = compile_and_run(model, {"x": x})["y"]
    np.testing.assert_allclose(got, _rows_numpy(x, 0.5), rtol=1e-5, atol=1e-5)
    # verification's reference: onnxruntime cannot run the op; the registered numpy reference runs
    reference = run_reference(model, {"x": x})
    np.testing.assert_allclose(reference["y"], _rows_numpy(x, 0.5), rtol=1e-6)
    assert reference.engine == ("onnx's reference evaluator with numpy references of "
                                "test.ext::Rows")


def test_relax_kernel(plugin):
    with plugin():
        @extend.kernel(DOMAIN, "Cube")
        def cube(bb, inputs, attrs):
            from tvm import relax

            x = inputs[0]
            return relax.op.multiply(relax.op.multiply(x, x), x)

    model = _model("y = test.ext.Cube (x)")
    x = _x()
    np.testing.assert_allclose(compile_and_run(model, {"x": x})["y"], x ** 3, rtol=1e-6)
    # a kernel without a reference cannot be verified: the message says what to do
    with pytest.raises(MmoptError, match=r"no reference implementation for test.ext::Cube.*"
                                         r"--no-verify"):
        run_reference(model, {"x": x})


def test_plugin_files(tmp_path):
    good = tmp_path / "good_plugin.py"
    good.write_text(
        "from mmopt import extend\n"
        "@extend.decomposition('test.ext', 'Neg2')\n"
        "def neg2(node, op):\n"
        "    return op.Neg(node.inputs[0])\n")
    reg = extend.default_registry()
    try:
        name = extend.load_plugin(good)
        assert name == "plugin good_plugin.py"
        assert extend.load_plugin(good) == name  # once per process
        assert [e.rule.name for e in reg.entries() if e.source == name] == ["neg2"]
    finally:
        reg.unregister("plugin good_plugin.py")

    broken = tmp_path / "broken.py"
    broken.write_text(
        "from mmopt import extend\n"
        "@extend.decomposition('test.ext', 'Half')\n"
        "def half(node, op):\n"
        "    return node.inputs[0]\n"
        "1 / 0\n")
    with pytest.raises(extend.PluginError) as info:
        extend.load_plugin(broken)
    assert info.value.message == ("plugin broken.py: failed to load: ZeroDivisionError: division "
                                  "by zero") and info.value.exit_code == 2
    assert not [e for e in reg.entries() if e.source == "plugin broken.py"]  # nothing half-loaded

    syntax = tmp_path / "syntax.py"
    syntax.write_text("def (:\n")
    with pytest.raises(extend.PluginError, match=r"^plugin syntax.py: failed to load: SyntaxError"):
        extend.load_plugin(syntax)
    with pytest.raises(extend.PluginError, match=r"^plugin missing.py: no such file"):
        extend.load_plugin(tmp_path / "missing.py")
    with pytest.raises(extend.PluginError, match=r"a plugin is a Python file"):
        extend.load_plugin(tmp_path)


def test_a_plugin_rule_that_raises_names_the_plugin(plugin):
    with plugin():
        @extend.decomposition(DOMAIN, "Boom")
        def boom(node, op):
            raise KeyError("no such thing")

    with pytest.raises(extend.PluginError) as info:
        run_decompose(_model("y = test.ext.Boom (x)"))
    assert info.value.message.startswith(f"{SOURCE}: rule boom failed to rewrite node ")
    assert "(test.ext::Boom): KeyError" in info.value.message


def test_registration_errors():
    with pytest.raises(TypeError, match="Decomposition instance"):
        extend.register(lambda node, op: None)
    with pytest.raises(ValueError, match="exactly one of relax= or te="):
        extend.KernelRule(DOMAIN, "X")
    with pytest.raises(ValueError, match="schedule= needs a te= compute"):
        extend.KernelRule(DOMAIN, "X", relax=lambda *a: None, schedule=lambda sch: None)
