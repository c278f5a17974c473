"""IR: loading (and every way it can fail), opset normalization, shape fixing, external data, save."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mmopt import ir as mir
from mmopt.errors import ModelLoadError, MmoptError
from mmopt.runtime.verify import run_onnxruntime


def test_load_from_path_bytes_and_proto(tmp_path, conv_relu_model):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model, path)
    assert mir.load(path).graph.node[0].op_type == "Conv"
    assert mir.load(path.read_bytes()).graph.node[0].op_type == "Conv"
    assert mir.load(conv_relu_model) is conv_relu_model


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "file is empty"),
        (b"this is a text file, not a model\n", "not a valid ONNX file"),
    ],
)
def test_load_errors(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as info:
        mir.load(path)
    assert str(path) in info.value.message
    assert "\n" not in info.value.message


def test_load_truncated_model(tmp_path, conv_relu_model):
    data = conv_relu_model.SerializeToString()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="truncated"):
            mir.load(path)


def test_load_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is a directory"):
        mir.load(tmp_path)


def test_normalize_opset_converts_and_keeps_results(conv_relu_model):
    assert mir.opset_of(conv_relu_model) == 13
    converted = mir.normalize_opset(conv_relu_model, 17)
    assert mir.opset_of(converted) == 17
    onnx.checker.check_model(converted)
    x = {"x": np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)}
    np.testing.assert_allclose(run_onnxruntime(converted, x)["y"], run_onnxruntime(conv_relu_model, x)["y"])
    # never lowers the opset
    assert mir.opset_of(mir.normalize_opset(converted, 13)) == 17


def test_fix_input_shapes_default_batch_and_explicit(conv_relu_model):
    fixed = mir.fix_input_shapes(conv_relu_model)
    assert mir.dims_of(fixed.graph.input[0]) == [1, 3, 8, 8]
    # the stale symbolic output shape is dropped (ONNX inference cannot see through the Reshape's
    # shape computation; simplify folds it and infers [1, 128], see the passes tests)
    assert "N" not in mir.dims_of(fixed.graph.output[0])
    fixed4 = mir.fix_input_shapes(conv_relu_model, {"x": (4, 3, 8, 8)})
    assert mir.dims_of(fixed4.graph.input[0]) == [4, 3, 8, 8]
    # the original is untouched
    assert mir.dims_of(conv_relu_model.graph.input[0]) == ["N", 3, 8, 8]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"y": (1, 2)}, "unknown input"),
        ({"x": (1, 3, 8)}, "rank 3 given"),
        ({"x": (1, 4, 8, 8)}, "dim 1 is fixed to 3"),
    ],
)
def test_fix_input_shapes_errors(conv_relu_model, shapes, message):
    with pytest.raises(MmoptError, match=message):
        mir.fix_input_shapes(conv_relu_model, shapes)


def test_dynamic_non_batch_dims_need_a_shape():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,H,W] x) => (float[N,3,H,W] y) { y = Relu(x) }""")
    with pytest.raises(MmoptError, match=r"--input-shape x:1,3,N,N"):
        mir.fix_input_shapes(model)
    assert mir.dims_of(mir.fix_input_shapes(model, {"x": (2, 3, 5, 7)}).graph.output[0]) == [2, 3, 5, 7]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("x:1,3,224,224", ("x", (1, 3, 224, 224))), ("images=1x3x64x64", ("images", (1, 3, 64, 64))),
     ("images:1,3,640,640", ("images", (1, 3, 640, 640)))],
)
def test_parse_shape_option(text, expected):
    assert mir.parse_shape_option(text) == expected


def test_parse_shape_option_keeps_a_named_dim_symbolic():
    """A dim given by name stays symbolic under that name (``--dim width=MIN..MAX`` ranges it)."""
    assert mir.parse_shape_option("x:1,3,48,width") == ("x", (1, 3, 48, "width"))


@pytest.mark.parametrize("text", ["x", "x:", "x:1,2.5", "x:1,a-b", "x:0,3", ":1,2"])
def test_parse_shape_option_errors(text):
    with pytest.raises(MmoptError):
        mir.parse_shape_option(text)


def test_external_data_round_trip(tmp_path, conv_relu_model):
    path = tmp_path / "ext.onnx"
    mir.save(conv_relu_model, path, external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    on_disk = onnx.load(path, load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in on_disk.graph.initializer)
    loaded = mir.load(path)
    x = {"x": np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)}
    np.testing.assert_array_equal(run_onnxruntime(loaded, x)["y"], run_onnxruntime(conv_relu_model, x)["y"])


def test_external_data_missing_file(tmp_path, conv_relu_model):
    path = tmp_path / "ext.onnx"
    mir.save(conv_relu_model, path, external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external tensor data"):
        mir.load(path)


def test_random_inputs_are_seeded(conv_relu_model):
    fixed = mir.fix_input_shapes(conv_relu_model)
    a, b = mir.random_inputs(fixed, 3), mir.random_inputs(fixed, 3)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (1, 3, 8, 8) and a["x"].dtype == np.float32
    assert not np.array_equal(a["x"], mir.random_inputs(fixed, 4)["x"])


def test_sha256_is_stable(tmp_path, conv_relu_model):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model, path)
    assert mir.sha256_of(path) == mir.sha256_of(path.read_bytes())
    assert len(mir.sha256_of(conv_relu_model)) == 64


def test_fix_input_shapes_keeps_the_rank_of_outputs_inference_cannot_tell():
    """Issue #17: the output's declared shape was cleared and inference could not give it back,
    leaving a main-graph output without a shape: onnx.checker, and onnxsim with it ("Field 'shape'
    of 'type' is required but missing"), refused the model, and simplify fell back."""
    from onnx import parser

    from mmopt.passes.simplify import _onnxsim

    model = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N,3,1] x, int64[1] axes) => (float[N,3] y) {
        r = Relu(x)
        y = Squeeze(r, axes)
    }""")
    fixed = mir.fix_input_shapes(model, {})
    out = fixed.graph.output[0].type.tensor_type
    assert out.HasField("shape") and len(out.shape.dim) == 2
    assert not any(d.HasField("dim_value") or d.HasField("dim_param") for d in out.shape.dim)
    onnx.checker.check_model(fixed, full_check=True)
    _onnxsim(fixed)  # raised before
    # what inference can tell it still tells
    relu = mir.fix_input_shapes(parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[N,3] x) => (float[N,3] y) { y = Relu(x) }"""), {})
    assert mir.dims_of(relu.graph.output[0]) == [1, 3]
