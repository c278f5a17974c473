"""The front door (mmopt.ir.validate through mmopt.ir.load): what it refuses, with which line."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from mmopt import ir as mir
from mmopt.errors import ModelLoadError
from models_zoo import build


def _mobilenet() -> onnx.ModelProto:
    return build("mobilenet_v3_style")


def _conv(model: onnx.ModelProto, name: str = "blocks.0.se.fc2") -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set(node: onnx.NodeProto, name: str, value) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _cli(*args):
    from mmopt.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_name_that_is_not_utf8_is_a_one_line_error(tmp_path):
    """Issue #17: a flipped byte inside an operator type reached onnx.checker, whose message then
    could not be decoded: ``internal error: UnicodeDecodeError``."""
    model = _mobilenet()
    data = model.SerializeToString()
    at = data.index(b"HardSigmoid") if b"HardSigmoid" in data else data.index(b"Conv")
    flipped = bytearray(data)
    flipped[at] ^= 0xC0  # 'C' (0x43) -> 0x83: a UTF-8 continuation byte with nothing before it
    path = tmp_path / "flipped.onnx"
    path.write_bytes(bytes(flipped))
    with pytest.raises(ModelLoadError, match=r"flipped.onnx: corrupt model: an operator type "
                                             r"'\\x83onv' is not valid UTF-8"):
        mir.load(path)
    for verb in (["inspect"], ["optimize", "-o", tmp_path / "o.onnx"],
                 ["compile", "--target", "x86", "-o", tmp_path / "out" / "m"]):
        result = _cli(verb[0], path, *verb[1:])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mmopt: error: "), lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.onnx").exists()


def test_checker_message_that_is_not_text_is_a_one_line_error(monkeypatch):
    model = _mobilenet()

    def undecodable(*_args, **_kw):
        raise UnicodeDecodeError("utf-8", b"\xeb", 0, 1, "invalid continuation byte")

    monkeypatch.setattr(onnx.checker, "check_model", undecodable)
    with pytest.raises(ModelLoadError, match="onnx.checker rejects it and its message quotes bytes"):
        mir.load(model)


def test_kernel_shape_that_contradicts_the_weights_is_refused(tmp_path):
    """Issue #17: onnxruntime refuses this net; mmopt compiled it without a word (--no-verify)."""
    model = _mobilenet()
    _set(_conv(model), "kernel_shape", [5, 5])
    onnx.checker.check_model(model)  # the plain checker has nothing against it
    path = tmp_path / "mnv3.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match=r"mnv3.onnx: invalid model, onnxruntime refuses it: "
                                             r"node blocks.0.se.scale \(Mul\): .*Incompatible"):
        mir.load(path)
    result = _cli("compile", path, "--target", "x86", "--no-verify", "-o", tmp_path / "out" / "m")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_refusal_without_a_node_name_is_located():
    # onnxruntime's kernel constructor says only "Unknown AutoPadType String"
    model = _mobilenet()
    _set(_conv(model), "auto_pad", "SAME_UPPRE")
    with pytest.raises(ModelLoadError, match=r"node blocks.0.se.fc2 \(Conv\): Unknown AutoPadType"):
        mir.load(model)


@pytest.mark.parametrize("corrupt, message", [
    (lambda m: _set(_conv(m), "pads", [1, 1, 1]), r"node blocks.0.se.fc2 \(Conv\): .*pads"),
    (lambda m: _set(_conv(m), "strides", [0, 0]), r"node blocks.0.se.fc2 \(Conv\): .*strides"),
    (lambda m: _set(_conv(m), "group", 2.0), r"invalid ONNX model: Mismatched attribute type .*"
                                              r"group"),
])
def test_corrupt_attributes(corrupt, message):
    model = _mobilenet()
    corrupt(model)
    with pytest.raises(ModelLoadError, match=message):
        mir.load(model)


def _small(nodes, inputs=("x",), outputs=("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, [2]) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2]) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("model, message", [
    (_small([helper.make_node("Add", ["x", "gone"], ["y"], name="add")]),
     r"node add \(Add\) in the graph reads 'gone', which no node, graph input or initializer"),
    (_small([helper.make_node("Relu", ["b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Relu", ["x"], ["y"], name="out")]),
     r"node first \(Relu\) in the graph reads 'b' before node second writes it"),
    (_small([helper.make_node("Relu", ["x"], ["y"], name="one"),
             helper.make_node("Neg", ["x"], ["y"], name="two")]),
     r"node two \(Neg\) in the graph writes 'y', which is already written by node one"),
    (_small([helper.make_node("Relu", ["x"], ["x"], name="self")]),
     r"node self \(Relu\) in the graph writes 'x', which is already a graph input"),
    (_small([], outputs=("y",)), r"output 'y' of the graph is not defined"),
    (_small([helper.make_node("Relu", ["x"], ["y"])], outputs=()), r"the graph has no outputs"),
])
def test_malformed_graphs(model, message):
    with pytest.raises(ModelLoadError, match=message):
        mir.load(model)


def test_subgraph_reads_are_checked_with_their_scope():
    then = helper.make_graph([helper.make_node("Relu", ["missing"], ["t"], name="inner")], "then",
                             [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="neg")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    model = _small([helper.make_node("If", ["c"], ["y"], name="if", then_branch=then,
                                     else_branch=other)], inputs=("x",))
    model.graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    with pytest.raises(ModelLoadError, match=r"node inner \(Relu\) in the then_branch of node if "
                                             r"reads 'missing'"):
        mir.load(model)


def test_a_kernel_onnxruntime_lacks_is_not_a_defect():
    # Relu on int16 is valid ONNX; onnxruntime's CPU provider has no kernel for it
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT16, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT16, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert mir.load(model) is model


def test_valid_models_pass_unchanged():
    model = _mobilenet()
    before = model.SerializeToString()
    assert mir.load(copy.deepcopy(model)).SerializeToString() == before


def test_names_with_control_characters_stay_on_one_line():
    # fuzzing: a flipped byte turned a value name's character into a newline
    model = _small([helper.make_node("Add", ["x", "gone\nhere\x1b[31m"], ["y"], name="add")])
    with pytest.raises(ModelLoadError) as info:
        mir.load(model)
    assert "\n" not in info.value.message and "\x1b" not in info.value.message
    assert "reads 'gone\\nhere\\x1b[31m'" in info.value.message


def test_what_onnxruntime_says_it_does_not_support_is_not_a_defect():
    """A batch-major LSTM (layout=1) is valid ONNX and mmopt unrolls it; onnxruntime's CPU kernel
    refuses it ("Batchwise recurrent operations (layout == 1) are not supported"). The front door
    must not turn onnxruntime's limitation into a refusal (onnx's full check judges instead)."""
    from mmopt.errors import MmoptError
    from mmopt.runtime import ort

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="lstm", hidden_size=3, layout=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 1, 3])],
        initializer=[onnx.numpy_helper.from_array(rng.standard_normal((1, 12, 4), np.float32), "w"),
                     onnx.numpy_helper.from_array(rng.standard_normal((1, 12, 3), np.float32), "r")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(MmoptError, match="not supported"):
        ort.session(model, label="x")  # onnxruntime's own verdict
    assert mir.load(model) is model


def test_an_op_of_onnx_domain_that_only_onnxruntime_defines_is_accepted():
    """onnxruntime's transformers optimizer writes SimplifiedLayerNormalization (RMSNorm) in ONNX's
    own domain: onnx's checker has no schema for it, onnxruntime has. An op nobody defines there
    stays refused with the checker's line."""
    def model(op_type):
        graph = helper.make_graph(
            [helper.make_node(op_type, ["x", "s"], ["y"], name="n", epsilon=1e-5)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
            initializer=[onnx.numpy_helper.from_array(np.ones(4, np.float32), "s")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    rms = model("SimplifiedLayerNormalization")
    assert mir.load(rms) is rms
    with pytest.raises(ModelLoadError, match="No Op registered for NoSuchNorm"):
        mir.load(model("NoSuchNorm"))


@pytest.mark.parametrize("epsilon", [-1.0, float("nan"), -1e30, float("inf")])
def test_a_normalization_epsilon_that_is_not_finite_and_non_negative_is_refused(tmp_path, epsilon):
    """Fuzzing (conv_bn_relu/bad_attribute_value/134, 446): onnxruntime accepts a BatchNormalization
    with epsilon -1 or NaN and computes NaN; the compiled model, whose ReLU turns NaN into 0, gave
    finite outputs and failed verification. Such an epsilon is refused up front, with the node."""
    model = build("conv_bn_relu")
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    _set(bn, "epsilon", epsilon)
    with pytest.raises(ModelLoadError, match=rf"node {bn.name} \(BatchNormalization\): epsilon is "):
        mir.load(model)
    onnx.save(model, tmp_path / "model.onnx")
    result = _cli("compile", tmp_path / "model.onnx", "--target", "x86", "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    expected = (f"mmopt: error: {tmp_path / 'model.onnx'}: invalid model: node {bn.name} "
                f"(BatchNormalization): epsilon is {epsilon:g}; it must be a finite number >= 0 "
                "(it is added to the variance to keep the divisor positive)")
    assert result.stderr.strip().splitlines() == [expected]


def test_a_zero_epsilon_is_still_accepted():
    model = build("conv_bn_relu")
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            _set(node, "epsilon", 0.0)
    assert mir.load(model) is model
