"""fp16 verification tolerance: fp16 steps of the values that reach the outputs, found through the
fp32 islands the conversion keeps; a compiled fp16 model passes at it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, parser

from mmopt import ir as mir
from mmopt.quantize import qdq
from mmopt.quantize.fp16 import (
    FP16_TOLERANCE_STEPS,
    convert_fp16,
    fp16_boundaries,
    fp16_step,
    output_tolerance,
)

# x -> MatMul -> Softmax -> y: the MatMul runs in fp16, the Softmax stays fp32
CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 17]>
classifier (float[2,16] x) => (float[2,10] y) {
    logits = MatMul (x, w)
    y = Softmax <axis=-1> (logits)
}
"""


def _classifier(scale: float = 4.0) -> onnx.ModelProto:
    model = parser.parse_model(CLASSIFIER)
    w = (np.random.default_rng(0).standard_normal((16, 10)) * scale).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    onnx.checker.check_model(model)
    return qdq.prepare(model)


@pytest.mark.parametrize("x", [1.0, 1.5, 30.0, 1000.0, 2.0**-14, 1e-6, -7.0])
def test_fp16_step_is_numpys_float16_spacing(x):
    assert fp16_step(x) == float(np.spacing(np.float16(abs(x))))


def test_fp16_step_of_zero():
    assert fp16_step(0.0) == 0.0


def test_boundaries_reach_through_fp32_islands():
    converted, report = convert_fp16(_classifier())
    assert [n.op_type for n in converted.graph.node if n.name in report.kept_fp32] == ["Softmax"]
    boundaries = fp16_boundaries(converted)
    assert list(boundaries) == ["y"]
    producers = {o: n for n in converted.graph.node for o in n.output}
    # the logits the fp32 Softmax reads (cast from fp16), and the fp16 round trip of its output
    assert [producers[producers[t].input[0]].op_type for t in boundaries["y"]] == ["Cast", "MatMul"]


def test_fp32_model_has_no_fp16_tolerance():
    model = _classifier()
    assert fp16_boundaries(model) == {}
    assert output_tolerance(model, {"x": np.ones((2, 16), np.float32)}) is None


def test_tolerance_is_in_steps_of_the_largest_fp16_value_reaching_an_output():
    converted, _ = convert_fp16(_classifier())
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    atol, note = output_tolerance(converted, {"x": x})
    logits = x @ numpy_helper.to_array(next(t for t in _classifier().graph.initializer))
    largest = float(np.abs(logits).max())
    assert largest > 8  # the logits, not the probabilities, set the scale
    assert atol == FP16_TOLERANCE_STEPS * float(np.spacing(np.float16(largest)))
    assert note.startswith(f"fp16 model: {FP16_TOLERANCE_STEPS} fp16 steps of ")


def test_compiled_fp16_classifier_passes_at_its_tolerance(tmp_path):
    """``quantize --dtype fp16`` then compile: the artifact computes in fp16, onnxruntime's CPU
    kernels largely in fp32; fp32's 1e-4 is not the precision of this model (verification failed
    at it: max abs 1.2e-4 here, 0.028 on the softmax output of a larger classifier)."""
    import mmopt
    import models_zoo
    from mmopt.api import front_end
    from mmopt.quantize import quantize
    from mmopt.runtime.verify import compare, run_onnxruntime

    model = models_zoo.build("conv_bn_relu")
    logits = model.graph.output[0]
    model.graph.node.append(helper.make_node("Softmax", [logits.name], ["prob"], axis=-1))
    dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim]
    model.graph.output.remove(logits)
    model.graph.output.append(helper.make_tensor_value_info("prob", onnx.TensorProto.FLOAT, dims))
    fp16, _ = quantize(model, dtype="fp16")
    mmopt.compile(fp16, "x86", tmp_path / "fp16", verify=False)
    reference, _, _ = front_end(fp16)
    artifact = mmopt.load(tmp_path / "fp16")
    for seed in range(3):
        feeds = mir.random_inputs(reference, seed)
        atol, _ = output_tolerance(reference, feeds)
        assert atol < 0.05  # steps of the logits (~1): tight enough to catch a wrong kernel
        report = compare(run_onnxruntime(reference, feeds), artifact(**feeds), atol=atol)
        assert report.passed, report.to_dict()


# an If whose branches keep a Sqrt in fp32 and read an fp32 input of the main graph
IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
branchy (float[2,8] x, bool flag) => (float[2,8] y) {
    y = If (flag) <
        then_branch = yes () => (float[2,8] a) {
            s = Mul (x, x)
            r = Sqrt (s)
            a = Add (r, x)
        },
        else_branch = no () => (float[2,8] b) {
            b = Neg (x)
        }
    >
}
"""


@pytest.mark.parametrize("named", [True, False])
def test_fp16_conversion_of_if_branches_keeps_the_casts_in_the_branches(named):
    """The zoo's vad_lstm_if (its unmutated fuzz seed) did not convert: "the fp16 model is invalid
    (... is not output of any previous nodes.)". For a node kept fp32 inside an If branch (Sqrt,
    ReduceMean), onnxruntime's converter writes the Casts around it into the main graph, where the
    branch's values do not exist; and the main graph's input Cast, read by the branches, was left
    after the If. Unnamed branch nodes (which ``prepare`` does not name) are all kept fp32 by the
    converter, which chains Casts of Casts in the main graph: those move too."""
    model = parser.parse_model(IF_MODEL)
    for graph in [model.graph, *(a.g for a in model.graph.node[0].attribute)] if named else []:
        for node in graph.node:
            node.name = node.op_type.lower()
    model = qdq.prepare(model)
    converted, report = convert_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    (if_node,) = [n for n in converted.graph.node if n.op_type == "If"]
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    if named:
        assert report.kept_fp32 == ["sqrt"]
        assert [n.op_type for n in then.node] == ["Mul", "Cast", "Sqrt", "Cast", "Add"]
    x = np.random.default_rng(0).uniform(0.5, 2, (2, 8)).astype(np.float32)
    from mmopt.runtime.verify import run_onnxruntime

    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        expected = run_onnxruntime(model, feeds)["y"]
        np.testing.assert_allclose(run_onnxruntime(converted, feeds)["y"], expected, rtol=2e-3)


def test_zoo_vad_lstm_if_quantizes_to_fp16(tmp_path):
    from click.testing import CliRunner

    import models_zoo
    from mmopt.cli.main import cli

    path = tmp_path / "vad.onnx"
    onnx.save(models_zoo.build("vad_lstm_if"), path)
    dims = models_zoo.MODELS["vad_lstm_if"].input_shapes
    shapes = [arg for key in ("input", "h", "c")  # as the fuzz harness: the state is [2, N, 64]
              for arg in ("--input-shape", f"{key}:" + ",".join(map(str, dims[key])))]
    result = CliRunner().invoke(cli, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"),
                                      "--dtype", "fp16", *shapes])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"), full_check=True)
