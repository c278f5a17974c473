"""Tests for models_zoo: determinism, validity, and numerically sane outputs."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models_zoo import MODELS, ZooEntry, build, count_params, names

ALL = names()
#: zoo models built at another opset than 17 (as their exporters write them)
OPSETS = {"vad_lstm_if": 15}


@functools.cache
def _model(name: str) -> onnx.ModelProto:
    """One build per model for the whole module (resnet50 is ~100 MB)."""
    return build(name)


def _feeds(entry: ZooEntry, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
              for i in _model(entry.name).graph.input}
    feeds = {}
    for name, shape in entry.input_shapes.items():
        if batch is not None:
            shape = (batch, *shape[1:])
        if np.dtype(dtypes[name]).kind in "iu":  # e.g. vad_lstm_if's sample rate
            feeds[name] = rng.integers(0, 4, shape).astype(dtypes[name])
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _expected_shape(value_info: onnx.ValueInfoProto, bindings: dict[str, int]) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    # a symbolic output dim no input binds (yolov8n_dynamic's anchor count) is not checked: -1
    return tuple(d.dim_value if d.HasField("dim_value") else bindings.get(d.dim_param, -1)
                 for d in dims)


def _symbol_bindings(model: onnx.ModelProto, entry: ZooEntry) -> dict[str, int]:
    """Map each symbolic input dim (e.g. "N") to its size in entry.input_shapes."""
    bindings = {}
    for inp in model.graph.input:
        for d, size in zip(inp.type.tensor_type.shape.dim, entry.input_shapes[inp.name]):
            if d.HasField("dim_param"):
                bindings[d.dim_param] = size
            else:
                assert d.dim_value == size, f"{inp.name}: input_shapes disagrees with the graph"
    return bindings


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ---------------------------------------------------------------- registry
def test_registry_api():
    assert ALL == sorted(MODELS) == sorted(ALL)
    assert set(ALL) == {
        "conv_bn_relu",
        "mobilenet_v3_style",
        "mobilenet_v2_style",
        "resnet50_style",
        "resnet18_style",
        "mlp_gelu",
        "digits_cnn",
        "lstm_classifier",
        "gru_tagger",
        "transformer_block",
        "transformer_block_dynamic",
        "vad_lstm_if",
        "yolov8n_style",
        "yolov8n_dynamic",
        "yolox_style",
        "mobilenet_v3_large",
        "efficientnet_b0_style",
        "vit_tiny_style",
    }
    for name, entry in MODELS.items():
        assert entry.name == name
        assert callable(entry.builder)
        assert entry.description
        assert entry.input_shapes and all(isinstance(s, tuple) for s in entry.input_shapes.values())


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError) as excinfo:
        build("nope")
    message = str(excinfo.value)
    assert "nope" in message
    for name in ALL:
        assert name in message


# -------------------------------------------------------------- per model
@pytest.mark.parametrize("name", ALL)
def test_build_is_deterministic(name):
    assert build(name).SerializeToString() == _model(name).SerializeToString()


@pytest.mark.parametrize("name", ALL)
def test_model_is_valid(name):
    model = _model(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version in (8, 9)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSETS.get(name, 17))]
    # every node is named, uniquely
    node_names = [n.name for n in model.graph.node]
    assert all(node_names) and len(set(node_names)) == len(node_names)
    # input_shapes covers exactly the graph inputs
    assert {i.name for i in model.graph.input} == set(MODELS[name].input_shapes)


@pytest.mark.parametrize("name", ALL)
def test_onnxruntime_output_is_sane(name):
    entry, model = MODELS[name], _model(name)
    outputs = _run(model, _feeds(entry))
    bindings = _symbol_bindings(model, entry)
    assert len(outputs) == len(model.graph.output)
    for out, info in zip(outputs, model.graph.output):
        expected = _expected_shape(info, bindings)
        assert len(out.shape) == len(expected)
        assert all(e in (-1, d) for d, e in zip(out.shape, expected)), (out.shape, expected)
        assert np.all(np.isfinite(out))
        assert np.any(out != 0)
        # neither collapsed to a constant nor blown up
        assert 1e-3 < float(out.std()) < 1e3, f"{name}: output std {out.std()}"


@pytest.mark.parametrize("name", ALL)
def test_output_depends_on_input(name):
    entry, model = MODELS[name], _model(name)
    a = _run(model, _feeds(entry, seed=1))[0]
    b = _run(model, _feeds(entry, seed=2))[0]
    assert float(np.std(a - b)) > 1e-2 * float(a.std())


# ----------------------------------------------------------- structure
def _op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize(
    "name, convs, adds",
    [("resnet50_style", 53, 16), ("resnet18_style", 20, 8)],
)
def test_resnet_structure(name, convs, adds):
    ops = _op_counts(_model(name))
    assert ops["Conv"] == ops["BatchNormalization"] == convs  # BN after every conv
    assert ops["Add"] == adds  # one residual add per block
    assert ops["Gemm"] == 1


def test_param_counts_match_reference_architectures():
    # torchvision parameter counts plus BN running mean/var (counted here as weights)
    assert count_params(_model("resnet50_style")) == 25_557_032 + 2 * 26_560
    assert count_params(_model("resnet18_style")) == 11_689_512 + 2 * 4_800
    assert count_params(_model("mobilenet_v2_style")) == 3_504_872 + 2 * 17_056


def test_mobilenets_use_decomposed_activations_and_depthwise_convs():
    for name in ("mobilenet_v3_style", "mobilenet_v2_style"):
        model = _model(name)
        ops = _op_counts(model)
        assert not {"HardSwish", "HardSigmoid", "Relu6"} & set(ops)
        inits = _initializers(model)
        clips = [n for n in model.graph.node if n.op_type == "Clip"]
        assert clips
        for clip in clips:  # min/max given as constant inputs 0 and 6
            assert len(clip.input) == 3
            assert float(inits[clip.input[1]]) == 0.0 and float(inits[clip.input[2]]) == 6.0
        groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert any(gr > 1 for gr in groups), "expected depthwise convolutions"

    v3 = _model("mobilenet_v3_style")
    names_ = {n.name for n in v3.graph.node}
    assert "stem.hardswish.div" in names_ and "blocks.0.se.hardsigmoid.div" in names_
    # hard-swish is exactly Add -> Clip -> Mul(x, .) -> Div
    by_name = {n.name: n for n in v3.graph.node}
    chain = [by_name[f"stem.hardswish.{s}"] for s in ("add", "clip", "mul", "div")]
    assert [n.op_type for n in chain] == ["Add", "Clip", "Mul", "Div"]
    assert chain[2].input[0] == chain[0].input[0] == "stem.bn"


def test_transformer_and_mlp_use_decomposed_norm_and_gelu():
    t_ops = _op_counts(_model("transformer_block"))
    assert not {"LayerNormalization", "Gelu", "Attention"} & set(t_ops)
    assert t_ops["ReduceMean"] == 4  # two decomposed LayerNorms
    assert t_ops["Softmax"] == 1 and t_ops["Erf"] == 1 and t_ops["Sqrt"] == 2
    m_ops = _op_counts(_model("mlp_gelu"))
    assert m_ops["Erf"] == 2 and m_ops["Tanh"] == 1
    assert m_ops["MatMul"] == 2 and m_ops["Gemm"] == 2


@pytest.mark.parametrize(
    "name",
    [
        "conv_bn_relu",
        "mobilenet_v3_style",
        "mobilenet_v2_style",
        "resnet50_style",
        "resnet18_style",
        "yolov8n_style",
        "yolox_style",
        "mobilenet_v3_large",
        "efficientnet_b0_style",
    ],
)
def test_batchnorm_parameters_are_nontrivial(name):
    model = _model(name)
    inits = _initializers(model)
    for node in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        gamma, beta, mean, var = (inits[i] for i in node.input[1:])
        assert np.all(var > 0)
        for arr, trivial in ((gamma, 1.0), (beta, 0.0), (mean, 0.0), (var, 1.0)):
            assert not np.allclose(arr, trivial), f"{node.name}: trivial BN parameter"


# ----------------------------------------------------------------- kwargs
def test_symbolic_batch_accepts_other_batch_sizes():
    entry, model = MODELS["conv_bn_relu"], _model("conv_bn_relu")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    (out,) = _run(model, _feeds(entry, batch=3))
    assert out.shape == (3, 10)


def test_seed_and_kwargs_change_the_model():
    assert build("mlp_gelu", seed=1).SerializeToString() != _model("mlp_gelu").SerializeToString()
    fixed = build("conv_bn_relu", batch=2, num_classes=7)
    assert _expected_shape(fixed.graph.output[0], {}) == (2, 7)
    # pinning the batch leaves every weight unchanged
    pinned, symbolic = _initializers(build("conv_bn_relu", batch=1)), _initializers(_model("conv_bn_relu"))
    assert pinned.keys() == symbolic.keys()
    assert all(np.array_equal(pinned[k], symbolic[k]) for k in pinned)
