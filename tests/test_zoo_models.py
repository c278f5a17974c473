"""The published architectures of the zoo: YOLOv8n, YOLOX-Tiny, MobileNetV3-Large, EfficientNet-B0
and ViT-Tiny (real layer tables, random seeded weights).

tests/test_zoo.py checks every registered model for determinism, validity and sane onnxruntime
outputs at its default shape. Here: each recipe against its reference implementation (parameter
counts, characteristic operators), strict shape inference down to the outputs, other resolutions
and batch sizes on onnxruntime, the YOLOv8 DFL + box decode against numpy, and compiled artifacts
against onnxruntime.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import mmopt
from mmopt.cli.main import cli
from models_zoo import MODELS, build, count_params
from test_zoo import _model as _zoo_model

#: name -> (input name, default input shape, output shape with the batch as "N")
NEW = {
    "yolov8n_style": ("images", (1, 3, 640, 640), ("N", 84, 8400)),
    "yolox_style": ("images", (1, 3, 416, 416), ("N", 3549, 85)),
    "mobilenet_v3_large": ("input", (1, 3, 224, 224), ("N", 1000)),
    "efficientnet_b0_style": ("input", (1, 3, 224, 224), ("N", 1000)),
    "vit_tiny_style": ("input", (1, 3, 224, 224), ("N", 1000)),
}

#: trainable parameters of the reference implementations: Ultralytics' YOLOv8n summary (3,157,200,
#: the DFL's 16 fixed bin weights included), torchvision's mobilenet_v3_large and efficientnet_b0,
#: timm's vit_tiny_patch16_224 / deit_tiny_patch16_224; YOLOX-Tiny is published as 5.06M
REFERENCE_PARAMS = {
    "yolov8n_style": 3_157_200,
    "yolox_style": 5_055_855,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0_style": 5_288_548,
    "vit_tiny_style": 5_717_416,
}

#: initializers of the box decoders: constants of the resolution, not weights
DECODE_CONSTANTS = {"model.22.anchors", "model.22.strides", "head.grids", "head.strides"}


@functools.cache
def _model(name: str, **kwargs) -> onnx.ModelProto:
    # default builds come from test_zoo's cache: one build per model for the whole session
    return _zoo_model(name) if not kwargs else build(name, **kwargs)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _attr(node: onnx.NodeProto, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs=None) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names``."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in inferred.graph.value_info}
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    extended.graph.output.extend(infos[n] for n in names)
    return extended


# ---------------------------------------------------------------- registry
def test_registered_with_default_shapes():
    listing = CliRunner().invoke(cli, ["zoo", "list"], terminal_width=200).output
    for name, (input_name, shape, _out) in NEW.items():
        assert MODELS[name].input_shapes == {input_name: shape}
        assert name in listing


# -------------------------------------------------------------- per model
@pytest.mark.parametrize("name", sorted(NEW))
def test_strict_shape_inference_reaches_the_outputs(name):
    model = onnx.ModelProto()
    model.CopyFrom(_model(name))
    onnx.checker.check_model(model, full_check=True)
    model.graph.output[0].type.tensor_type.ClearField("shape")  # infer it instead of declaring it
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    expected = NEW[name][2]
    assert len(dims) == len(expected)
    assert not dims[0].HasField("dim_value")  # the batch stays symbolic
    assert tuple(d.dim_value for d in dims[1:]) == expected[1:]
    # every intermediate tensor has a known rank and at most one symbolic dim (the batch)
    for info in inferred.graph.value_info:
        assert info.type.tensor_type.HasField("shape"), info.name
        symbolic = [d for d in info.type.tensor_type.shape.dim if not d.HasField("dim_value")]
        assert len(symbolic) <= 1, info.name


@pytest.mark.parametrize("name", sorted(NEW))
def test_parameter_count_matches_the_reference(name):
    model = _model(name)
    inits = _inits(model)
    bn_stats = sum(inits[n.input[3]].size + inits[n.input[4]].size
                   for n in model.graph.node if n.op_type == "BatchNormalization")
    decode = sum(a.size for k, a in inits.items() if k in DECODE_CONSTANTS)
    assert count_params(model) - bn_stats - decode == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(NEW))
def test_batch_of_two_on_onnxruntime(name):
    input_name, shape, out_shape = NEW[name]
    x = np.random.default_rng(3).standard_normal((2, *shape[1:])).astype(np.float32)
    (y,) = _run(_model(name), {input_name: x})
    assert y.shape == (2, *out_shape[1:])
    assert np.all(np.isfinite(y))
    # the two images give different results, and each its own: batch items do not mix
    (y0,) = _run(_model(name), {input_name: x[:1]})
    np.testing.assert_allclose(y[:1], y0, rtol=1e-4, atol=1e-4)
    assert not np.allclose(y[0], y[1])


# ------------------------------------------------------------ structure
def test_yolov8n_structure():
    model = _model("yolov8n_style")
    ops = _ops(model)
    assert ops["Conv"] == 64  # 57 Conv-BN-SiLU, 6 head predictions, the DFL conv
    assert ops["BatchNormalization"] == 57 and ops["Sigmoid"] == 57 + 1  # SiLU = x*Sigmoid(x); classes
    assert ops["Split"] == 8 + 2  # one per C2f; box/class parts; l,t / r,b distances
    assert ops["MaxPool"] == 3 and ops["Resize"] == 2 and ops["Softmax"] == 1
    by_name = {n.name: n for n in model.graph.node}
    assert not {"HardSwish", "Silu", "Swish"} & set(ops)
    sppf = [by_name[f"model.9.m.{i}"] for i in range(3)]  # chained 5x5 stride-1 pools
    assert [n.input[0] for n in sppf] == ["model.9.cv1.silu.mul", "model.9.m.0", "model.9.m.1"]
    assert all(_attr(n, "kernel_shape") == [5, 5] and _attr(n, "strides") == [1, 1] for n in sppf)
    assert _attr(by_name["model.22.dfl.softmax"], "axis") == 1
    bins = _inits(model)["model.22.dfl.conv.weight"]
    np.testing.assert_array_equal(bins.reshape(-1), np.arange(16, dtype=np.float32))


def test_yolox_structure():
    model = _model("yolox_style")
    ops = _ops(model)
    assert ops["Slice"] == 4  # Focus
    assert ops["Conv"] == 83 and ops["BatchNormalization"] == 74
    assert ops["Sigmoid"] == 74 + 6  # SiLU; objectness and classes on three levels
    assert ops["Exp"] == 1 and ops["Resize"] == 2
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert sorted(_attr(n, "kernel_shape")[0] for n in pools) == [5, 9, 13]
    assert len({n.input[0] for n in pools}) == 1  # SPP: parallel pools of one tensor


def test_mobilenet_v3_large_structure():
    model = _model("mobilenet_v3_large")
    ops = _ops(model)
    assert not {"HardSwish", "HardSigmoid"} & set(ops)
    assert ops["GlobalAveragePool"] == 8 + 1  # squeeze-excite in 8 blocks, then the head
    depthwise = [n for n in model.graph.node if n.op_type == "Conv" and _attr(n, "group") > 1]
    assert [_attr(n, "kernel_shape")[0] for n in depthwise] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [_attr(n, "strides")[0] for n in depthwise] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    residual = [n for n in model.graph.node if re.fullmatch(r"blocks\.\d+\.add", n.name)]
    assert [int(n.name.split(".")[1]) for n in residual] == [0, 2, 4, 5, 7, 8, 9, 11, 13, 14]
    assert ops["Relu"] == 11 + 8 and ops["Clip"] == 21 + 8  # ReLU / hard-swish blocks; SE gates


def test_efficientnet_b0_structure():
    model = _model("efficientnet_b0_style")
    ops = _ops(model)
    assert ops["GlobalAveragePool"] == 16 + 1  # squeeze-excite in every MBConv, then the head
    assert ops["Sigmoid"] == 49 + 16  # SiLU = x*Sigmoid(x) after 33 convs and 16 SE squeezes; SE gates
    depthwise = [n for n in model.graph.node if n.op_type == "Conv" and _attr(n, "group") > 1]
    kernels = [_attr(n, "kernel_shape")[0] for n in depthwise]
    assert kernels == [3] + [3] * 2 + [5] * 2 + [3] * 3 + [5] * 3 + [5] * 4 + [3]
    assert [_attr(n, "group") for n in depthwise][-1] == 1152  # 192 * 6
    assert sum(1 for n in model.graph.node if n.op_type == "Add") == 9  # residual MBConvs


def test_vit_tiny_structure():
    model = _model("vit_tiny_style")
    ops = _ops(model)
    assert ops["LayerNormalization"] == 2 * 12 + 1
    assert ops["Erf"] == 12 and ops["Softmax"] == 12 and ops["MatMul"] == 6 * 12
    assert "BatchNormalization" not in ops
    inits = _inits(model)
    assert inits["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    assert inits["cls_token"].shape == (1, 1, 192) and inits["pos_embed"].shape == (1, 197, 192)
    assert inits["blocks.0.attn.qkv.weight"].shape == (192, 576)
    assert inits["blocks.11.mlp.fc1.weight"].shape == (192, 768)


# ----------------------------------------------------- other resolutions
def test_yolo_at_another_resolution_is_the_same_network():
    big, small = _inits(_model("yolov8n_style")), _inits(_model("yolov8n_style", imgsz=320))
    assert big.keys() == small.keys()
    assert all(np.array_equal(big[k], small[k]) for k in big if k not in DECODE_CONSTANTS)
    x = np.random.default_rng(0).standard_normal((1, 3, 320, 320)).astype(np.float32)
    (y,) = _run(_model("yolov8n_style", imgsz=320), {"images": x})
    assert y.shape == (1, 84, 40 * 40 + 20 * 20 + 10 * 10)
    (y,) = _run(_model("yolox_style", imgsz=320), {"images": x})
    assert y.shape == (1, 2100, 85)
    with pytest.raises(ValueError, match="multiple of 32"):
        build("yolov8n_style", imgsz=300)


def test_yolov8_dfl_and_box_decode_match_numpy():
    """Boxes are the DFL expectations over 16 bins, decoded around the grid cell centres."""
    model = _with_outputs(_model("yolov8n_style", imgsz=320), ["model.22.split.0"])
    x = np.random.default_rng(1).standard_normal((1, 3, 320, 320)).astype(np.float32)
    y, box_logits = _run(model, {"images": x})
    logits = box_logits.reshape(1, 4, 16, -1)
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    dist = (p / p.sum(axis=2, keepdims=True) * np.arange(16, dtype=np.float32)[:, None]).sum(axis=2)
    cx, cy, stride = [], [], []
    for s in (8, 16, 32):
        n = 320 // s
        cy.append(np.repeat(np.arange(n), n) + 0.5)
        cx.append(np.tile(np.arange(n), n) + 0.5)
        stride.append(np.full(n * n, s))
    cx, cy, stride = (np.concatenate(v) for v in (cx, cy, stride))
    left, top, right, bottom = dist[0]
    x1, y1, x2, y2 = cx - left, cy - top, cx + right, cy + bottom
    boxes = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) * stride
    np.testing.assert_allclose(y[0, :4], boxes, rtol=1e-5, atol=1e-3)
    assert np.all((y[0, 4:] > 0) & (y[0, 4:] < 1))  # class probabilities


# ----------------------------------------------------- compile + verify
def test_vit_tiny_compiles_and_verifies(tmp_path):
    """ViT-Tiny cut to 2 of its 12 blocks (every operator of the full model, under half the compile
    time): the compile's verification against onnxruntime passes at the default tolerances."""
    result = mmopt.compile(_model("vit_tiny_style", depth=2), "x86", tmp_path / "vit",
                           input_shapes=MODELS["vit_tiny_style"].input_shapes)
    v = result.verification
    assert v is not None and v.passed, v.to_dict()


@pytest.mark.slow
def test_yolov8n_320_compiles_and_verifies(tmp_path):
    """YOLOv8n at 320x320 (about a minute to compile on 2 cores): the compile's verification
    against onnxruntime passes at the default tolerances, boxes (pixels) and class scores alike."""
    shapes = {"images": (1, 3, 320, 320)}
    result = mmopt.compile(_model("yolov8n_style", imgsz=320), "x86", tmp_path / "yolo", input_shapes=shapes)
    v = result.verification
    assert v is not None and v.passed, v.to_dict()
    assert result.meta.outputs[0].shape == [1, 84, 2100]
