"""Caffe frontend: prototxt + caffemodel -> ONNX, checked against OpenCV's independent Caffe importer.

OpenCV (``cv2.dnn.readNetFromCaffe``, opencv-python-headless 4.x) is the reference where it is
installed; where it deviates from Caffe (it ignores LRN's ``k``, has no ``round_mode``) or cannot be
installed, the tests use small numpy implementations of Caffe's own formulas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from mmopt import frontends
from mmopt.errors import ModelLoadError, UnsupportedModelError
from mmopt.frontends import caffe
from mmopt.frontends.caffe import proto
from mmopt.frontends.caffe.converter import pooled_size
from mmopt.runtime.verify import compare, run_onnxruntime
from models_zoo import caffe_models


def _opencv():
    try:
        import cv2
    except ImportError:
        return None
    if int(cv2.__version__.split(".")[0]) >= 5 or not hasattr(cv2.dnn, "readNetFromCaffe"):
        return None
    return cv2


cv2 = _opencv()
needs_opencv = pytest.mark.skipif(
    cv2 is None, reason="needs opencv-python-headless 4.x (cv2.dnn.readNetFromCaffe); "
                        "OpenCV 5 dropped the Caffe importer")

#: the layer before the final Softmax of each zoo net: compared too, since probabilities over 1000
#: classes are tiny and would hide errors
LOGITS = {"lenet": "ip2", "squeezenet1_1": "pool10", "mobilenet_v1": "fc7"}


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
            .astype(np.float32) for i in model.graph.input}


def _with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for name in names:
        if name not in [o.name for o in model.graph.output]:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                    None))
    return model


def _opencv_outputs(prototxt, caffemodel, feeds, layers):
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    for name, value in feeds.items():
        net.setInput(value, name)
    return dict(zip(layers, net.forward(list(layers))))


def _write(tmp_path, name: str, text: str, weights: bool = True, **kw):
    prototxt = tmp_path / f"{name}.prototxt"
    prototxt.write_text(text)
    caffemodel = None
    if weights:
        caffemodel = tmp_path / f"{name}.caffemodel"
        caffemodel.write_bytes(caffe_models.generate_caffemodel(text, **kw))
    return prototxt, caffemodel


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("caffe_zoo")
    for name in caffe_models.names():
        caffe_models.write(name, directory)
    return directory


# --------------------------------------------------------------------------------------------------
# the zoo against OpenCV


@needs_opencv
@pytest.mark.parametrize("name", caffe_models.names())
def test_zoo_model_matches_opencv(zoo_dir, name):
    prototxt, caffemodel = zoo_dir / f"{name}.prototxt", zoo_dir / f"{name}.caffemodel"
    model = caffe.to_onnx(prototxt, weights=caffemodel)
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["prob"]
    feeds = _feeds(model)
    ours = run_onnxruntime(_with_outputs(model, [LOGITS[name]]), feeds)
    ref = _opencv_outputs(prototxt, caffemodel, feeds, ["prob", LOGITS[name]])
    ref = {k: v.reshape(ours[k].shape) for k, v in ref.items()}
    report = compare(ref, ours, atol=1e-4, rtol=1e-4)
    assert report.passed, report.to_dict()
    assert report.max_abs <= 1e-4 or report.max_rel <= 1e-4
    assert np.abs(ref[LOGITS[name]]).max() > 1.0  # the logits are not trivially small


def test_zoo_prototxts_are_deterministic():
    for name in caffe_models.names():
        assert caffe_models.prototxt(name) == caffe_models.prototxt(name)
    assert caffe_models.caffemodel("lenet") == caffe_models.caffemodel("lenet")


def test_zoo_nets_cover_both_input_conventions(zoo_dir):
    lenet = caffe.load_net(zoo_dir / "lenet.prototxt")
    assert list(lenet.input) == ["data"] and len(lenet.input_dim) == 4
    mobilenet = caffe.load_net(zoo_dir / "mobilenet_v1.prototxt")
    assert mobilenet.layer[0].type == "Input"
    # in-place BatchNorm/Scale/ReLU chains
    assert any(l.type == "Scale" and l.top == l.bottom for l in mobilenet.layer)


# --------------------------------------------------------------------------------------------------
# every supported layer type, against OpenCV

LAYER_MIX = """
name: "layer_mix"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 12 dim: 13 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a"
  convolution_param { num_output: 8 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 } }
layer { name: "relu_a" type: "ReLU" bottom: "conv_a" top: "conv_a" relu_param { negative_slope: 0.1 } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b"
  convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 group: 2 bias_term: false } }
layer { name: "prelu_b" type: "PReLU" bottom: "conv_b" top: "prelu_b" }
layer { name: "elt_sum" type: "Eltwise" bottom: "conv_a" bottom: "prelu_b" top: "elt_sum"
  eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 } }
layer { name: "elt_prod" type: "Eltwise" bottom: "conv_a" bottom: "prelu_b" top: "elt_prod"
  eltwise_param { operation: PROD } }
layer { name: "elt_max" type: "Eltwise" bottom: "conv_a" bottom: "prelu_b" bottom: "elt_sum"
  top: "elt_max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "elt_sum" bottom: "elt_prod" bottom: "elt_max" top: "cat" }
layer { name: "bn" type: "BatchNorm" bottom: "cat" top: "cat" }
layer { name: "scale" type: "Scale" bottom: "cat" top: "cat" scale_param { bias_term: true } }
layer { name: "lrn_across" type: "LRN" bottom: "cat" top: "lrn_across"
  lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 } }
layer { name: "pool_ave" type: "Pooling" bottom: "lrn_across" top: "pool_ave"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_max" type: "Pooling" bottom: "lrn_across" top: "pool_max"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool_ave2" type: "Pooling" bottom: "cat" top: "pool_ave2"
  pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 } }
layer { name: "pool_max2" type: "Pooling" bottom: "cat" top: "pool_max2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad_h: 1 pad_w: 2 } }
layer { name: "gpool" type: "Pooling" bottom: "cat" top: "gpool" pooling_param { pool: MAX global_pooling: true } }
layer { name: "sig" type: "Sigmoid" bottom: "pool_ave" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "pool_max" top: "tanh" }
layer { name: "lrn_within" type: "LRN" bottom: "cat" top: "lrn_within"
  lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "deconv" type: "Deconvolution" bottom: "lrn_within" top: "deconv"
  convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "power" type: "Power" bottom: "deconv" top: "power" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "drop" type: "Dropout" bottom: "tanh" top: "tanh" dropout_param { dropout_ratio: 0.3 } }
layer { name: "slice" type: "Slice" bottom: "tanh" top: "slice_a" top: "slice_b"
  slice_param { axis: 1 slice_point: 10 } }
layer { name: "split" type: "Split" bottom: "sig" top: "sig_1" top: "sig_2" }
layer { name: "mul2" type: "Eltwise" bottom: "sig_1" bottom: "sig_2" top: "mul2" eltwise_param { operation: PROD } }
layer { name: "flat" type: "Flatten" bottom: "slice_b" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 12 } }
layer { name: "reshape" type: "Reshape" bottom: "ip" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "permute" type: "Permute" bottom: "reshape" top: "permute" permute_param { order: 0 order: 2 order: 1 } }
layer { name: "softmax" type: "Softmax" bottom: "slice_a" top: "softmax" }
layer { name: "ip_axis2" type: "InnerProduct" bottom: "mul2" top: "ip_axis2" inner_product_param { num_output: 5 axis: 2 } }
layer { name: "gpool_flat" type: "Flatten" bottom: "gpool" top: "gpool_flat" }
layer { name: "gpool_ip" type: "InnerProduct" bottom: "gpool_flat" top: "gpool_ip" inner_product_param { num_output: 4 } }
layer { name: "gpool_sig" type: "Sigmoid" bottom: "gpool_ip" top: "gpool_ip" }
"""

REQUIRED_TYPES = {"Input", "Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU",
                  "PReLU", "Sigmoid", "TanH", "BatchNorm", "Scale", "Eltwise", "Concat", "Softmax",
                  "Dropout", "LRN", "Flatten", "Reshape", "Permute", "Power", "Slice", "Split"}


def test_layer_mix_covers_the_required_layer_types():
    net = proto.parse_prototxt(LAYER_MIX, "layer_mix")
    assert REQUIRED_TYPES <= {layer.type for layer in net.layer}
    assert REQUIRED_TYPES <= set(caffe.supported_layer_types()) | {"Input"}


@needs_opencv
def test_layer_mix_matches_opencv(tmp_path):
    prototxt, caffemodel = _write(tmp_path, "layer_mix", LAYER_MIX, seed=1, bn_factor=7.0)
    model = caffe.to_onnx(prototxt, weights=caffemodel)
    outputs = [o.name for o in model.graph.output]
    # blobs nothing reads are outputs; the last one was produced in place (gpool_sig on gpool_ip)
    # and keeps its Caffe name
    assert outputs == ["pool_ave2", "pool_max2", "power", "permute", "softmax", "ip_axis2",
                       "gpool_ip"]
    feeds = _feeds(model)
    ours = run_onnxruntime(model, feeds)
    producers = {"gpool_ip": "gpool_sig"}  # OpenCV addresses outputs by layer name
    ref = _opencv_outputs(prototxt, caffemodel, feeds, [producers.get(n, n) for n in outputs])
    ref = {n: ref[producers.get(n, n)].reshape(ours[n].shape) for n in outputs}
    report = compare(ref, ours, atol=1e-4, rtol=1e-4)
    assert report.passed, report.to_dict()
    # the frontend's own OpenCV verification agrees
    verified = frontends.verify(prototxt, model, weights=caffemodel)
    assert verified is not None and verified.passed


#: the other converted layer types, the input_shape header, two inputs, and parameter variants
#: (Scale with a second bottom, axis-0 broadcasting, Concat/Softmax/Reshape/Flatten axes, even Slice)
EXTRAS = """
name: "extras"
input: "data"
input_shape { dim: 2 dim: 6 dim: 8 dim: 9 }
input: "ref"
input_shape { dim: 2 dim: 6 dim: 5 dim: 6 }
layer { name: "elu" type: "ELU" bottom: "data" top: "elu" elu_param { alpha: 0.7 } }
layer { name: "abs" type: "AbsVal" bottom: "data" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "data" top: "bnll" }
layer { name: "exp" type: "Exp" bottom: "data" top: "exp" exp_param { base: 2 scale: 0.5 shift: 0.1 } }
layer { name: "log" type: "Log" bottom: "abs" top: "log" }
layer { name: "sum3" type: "Eltwise" bottom: "elu" bottom: "bnll" bottom: "exp" top: "sum3" }
layer { name: "scale2" type: "Scale" bottom: "sum3" bottom: "log" top: "scale2" scale_param { axis: 0 } }
layer { name: "crop" type: "Crop" bottom: "scale2" bottom: "ref" top: "crop" crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "thirds" type: "Slice" bottom: "crop" top: "third_a" top: "third_b" top: "third_c" slice_param { axis: 1 } }
layer { name: "cat_w" type: "Concat" bottom: "third_a" bottom: "third_c" top: "cat_w" concat_param { axis: 3 } }
layer { name: "sm2" type: "Softmax" bottom: "cat_w" top: "sm2" softmax_param { axis: 2 } }
layer { name: "rs" type: "Reshape" bottom: "sm2" top: "rs" reshape_param { shape { dim: 5 dim: -1 } axis: 2 } }
layer { name: "fl" type: "Flatten" bottom: "rs" top: "fl" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "pw" type: "Power" bottom: "third_b" top: "pw" power_param { scale: 3 } }
"""


@needs_opencv
def test_more_layer_types_match_opencv(tmp_path):
    prototxt, caffemodel = _write(tmp_path, "extras", EXTRAS, seed=2)
    model = caffe.to_onnx(prototxt, weights=caffemodel)
    assert [i.name for i in model.graph.input] == ["data", "ref"]
    feeds = _feeds(model)
    ours = run_onnxruntime(model, feeds)
    ref = _opencv_outputs(prototxt, caffemodel, feeds, ["fl", "pw"])
    ref = {n: v.reshape(ours[n].shape) for n, v in ref.items()}
    assert ours["fl"].shape == (2, 10, 12) and ours["pw"].shape == (2, 2, 5, 6)
    report = compare(ref, ours, atol=1e-4, rtol=1e-4)
    assert report.passed, report.to_dict()


def test_parameters_opencv_ignores(tmp_path):
    """Log's base/scale/shift, Threshold and Bias: OpenCV lacks them, Caffe's formulas decide."""
    text = """
    input: "data" input_dim: 1 input_dim: 3 input_dim: 2 input_dim: 4
    layer { name: "abs" type: "AbsVal" bottom: "data" top: "abs" }
    layer { name: "log" type: "Log" bottom: "abs" top: "log" log_param { base: 10 scale: 2 shift: 1 } }
    layer { name: "thr" type: "Threshold" bottom: "data" top: "thr" threshold_param { threshold: 0.2 } }
    layer { name: "bias" type: "Bias" bottom: "data" top: "bias" }
    layer { name: "exp" type: "Exp" bottom: "data" top: "exp" }
    """
    bias = np.array([0.5, -1.0, 2.0])
    model = caffe.convert(proto.parse_prototxt(text, "t"), where="t", weights={"bias": [bias]})
    x = np.random.default_rng(4).standard_normal((1, 3, 2, 4)).astype(np.float32)
    out = run_onnxruntime(model, {"data": x})
    np.testing.assert_allclose(out["log"], np.log10(1 + 2 * np.abs(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["thr"], (x > 0.2).astype(np.float32))
    np.testing.assert_allclose(out["bias"], x + bias[None, :, None, None], rtol=1e-6)
    np.testing.assert_allclose(out["exp"], np.exp(x), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Caffe semantics checked with numpy (where OpenCV is no reference)


def _caffe_pool(x, kernel, stride, pad, method, ceil=True):
    """Caffe's PoolingLayer::Forward_cpu for MAX/AVE, written out with numpy."""
    n, c, h, w = x.shape
    oh, ow = (pooled_size(h, kernel[0], stride[0], pad[0], ceil),
              pooled_size(w, kernel[1], stride[1], pad[1], ceil))
    out = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            out[:, :, i, j] = window.max(axis=(2, 3)) if method == "MAX" else (
                window.sum(axis=(2, 3)) / size)
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad,ceil", [
    ((12, 13), (3, 3), (2, 2), (1, 1), True),   # ceil adds a row that the clip rule keeps
    ((13, 13), (3, 3), (2, 2), (1, 1), True),   # ... and a case it must drop
    ((11, 10), (2, 3), (2, 3), (0, 0), True),   # overflow with no padding (count only real cells)
    ((7, 9), (3, 2), (2, 1), (1, 1), False),    # round_mode: FLOOR
    ((113, 113), (3, 3), (2, 2), (0, 0), True),  # SqueezeNet's pool1
])
def test_pooling_matches_caffe(size, kernel, stride, pad, ceil, method):
    text = f"""
    input: "data" input_dim: 1 input_dim: 2 input_dim: {size[0]} input_dim: {size[1]}
    layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
      pooling_param {{ pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]}
        stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]}
        round_mode: {"CEIL" if ceil else "FLOOR"} }} }}"""
    model = caffe.convert(proto.parse_prototxt(text, "pool"), where="pool")
    x = np.random.default_rng(0).standard_normal((1, 2, *size)).astype(np.float32)
    got = run_onnxruntime(model, {"data": x})["pool"]
    want = _caffe_pool(x.astype(np.float64), kernel, stride, pad, method, ceil)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pooled_size_follows_caffe():
    assert pooled_size(113, 3, 2, 0) == 56          # ceil((113-3)/2)+1; floor would give 55
    assert pooled_size(55, 3, 2, 0) == 27
    assert pooled_size(12, 3, 2, 1) == 7            # kept: the last window starts inside
    assert pooled_size(13, 3, 2, 1) == 7            # ceil gives 8, clipped back to 7
    assert pooled_size(12, 3, 2, 1, ceil=False) == 6


def test_lrn_uses_k_and_batchnorm_undoes_the_moving_average_factor(tmp_path):
    text = """
    input: "data" input_dim: 1 input_dim: 6 input_dim: 4 input_dim: 5
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0.001 } }
    layer { name: "lrn" type: "LRN" bottom: "bn" top: "lrn" lrn_param { local_size: 3 alpha: 0.3 beta: 0.6 k: 2 } }
    """
    net = proto.parse_prototxt(text, "t")
    rng = np.random.default_rng(3)
    mean, var, factor = rng.standard_normal(6), rng.uniform(0.5, 2, 6), 123.0
    weights = {"bn": [mean * factor, var * factor, np.array([factor])]}
    model = caffe.convert(net, where="t", weights=weights)
    x = rng.standard_normal((1, 6, 4, 5)).astype(np.float32)
    got = run_onnxruntime(model, {"data": x})["lrn"]
    bn = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-3)
    sq = np.pad(bn**2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    window = sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:]
    want = bn / (2 + 0.3 / 3 * window) ** 0.6
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# formats and options


def test_v1_caffemodel_and_prototxt_are_upgraded(tmp_path, zoo_dir):
    v2 = proto.parse_caffemodel((zoo_dir / "lenet.caffemodel").read_bytes(), "lenet")
    v1 = proto.new_net()
    enum = v1.DESCRIPTOR.fields_by_name["layers"].message_type.fields_by_name["type"].enum_type
    names = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT"}
    for layer in v2.layer:
        if not layer.blobs:
            continue
        old = v1.layers.add(name=layer.name, type=enum.values_by_name[names[layer.type]].number)
        old.blobs.extend(layer.blobs)
    v1_path = tmp_path / "lenet_v1.caffemodel"
    v1_path.write_bytes(v1.SerializeToString())
    a = caffe.to_onnx(zoo_dir / "lenet.prototxt", weights=zoo_dir / "lenet.caffemodel")
    b = caffe.to_onnx(zoo_dir / "lenet.prototxt", weights=v1_path)
    assert a.graph.initializer == b.graph.initializer

    v1_text = """
    name: "old" input: "data" input_dim: 1 input_dim: 8 input_dim: 1 input_dim: 1
    layers { name: "fc" type: INNER_PRODUCT bottom: "data" top: "fc"
      inner_product_param { num_output: 3 } blobs_lr: 1 }
    layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
    """
    model = caffe.convert(proto.parse_prototxt(v1_text, "old"), where="old")
    assert [n.op_type for n in model.graph.node] == ["Flatten", "Gemm", "Softmax"]


def test_random_weights_only_when_asked(tmp_path, caplog):
    prototxt, _ = _write(tmp_path, "mix", LAYER_MIX, weights=False)
    # no caffemodel beside it: an error naming the file looked for (issue #17)
    with pytest.raises(ModelLoadError, match=r"mix.prototxt: no weights: .*mix.caffemodel does "
                                             r"not exist.*--random-weights"):
        caffe.to_onnx(prototxt)
    with caplog.at_level("WARNING"):
        a = caffe.to_onnx(prototxt, random_weights=True)
    assert "random weights" in caplog.text
    assert frontends.has_random_weights(a)
    again = caffe.to_onnx(prototxt, random_weights=True)
    assert a.SerializeToString() == again.SerializeToString()
    assert a.SerializeToString() != caffe.to_onnx(prototxt, random_weights=True,
                                                  seed=1).SerializeToString()
    out = run_onnxruntime(a, _feeds(a))
    assert all(np.isfinite(v).all() for v in out.values())
    # the same through import_options, the way every verb's --random-weights reaches the frontend
    with frontends.import_options(random_weights=True):
        assert frontends.to_onnx(prototxt).SerializeToString() == a.SerializeToString()


def test_several_caffemodels_and_none_matching_is_an_error(tmp_path):
    prototxt, _ = _write(tmp_path, "deploy", LAYER_MIX, weights=False)
    for name in ("a.caffemodel", "b.caffemodel"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"deploy.caffemodel does not exist; the folder has 2 "
                                             r"others \(a.caffemodel, b.caffemodel\)"):
        caffe.to_onnx(prototxt)


def test_a_layer_with_more_caffemodel_blobs_than_its_parameters_take_is_refused(tmp_path):
    """Fuzzing (caffe/mobilenet_v1/delete_line/592): a Scale layer's ``bias_term: true`` deleted,
    its bias blob still in the caffemodel. Caffe refuses such a net; mmopt dropped the blob and
    compiled, and OpenCV, the verification reference, failed an assertion: an internal error."""
    text = caffe_models.prototxt("mobilenet_v1")
    assert text.count("bias_term: true") > 1
    (tmp_path / "deploy.prototxt").write_text(text.replace("bias_term: true", "", 1))
    (tmp_path / "deploy.caffemodel").write_bytes(caffe_models.caffemodel("mobilenet_v1"))
    with pytest.raises(ModelLoadError, match=r"deploy.prototxt: layer '[^']+' \(type Scale\) has 2 "
                                             r"weight blobs in the caffemodel, but its prototxt "
                                             r"parameters take 1"):
        caffe.to_onnx(tmp_path / "deploy.prototxt")


@pytest.mark.parametrize("eps", ["-1", "nan"])
def test_a_batchnorm_eps_that_is_not_finite_and_non_negative_is_refused_with_its_layer(tmp_path,
                                                                                       eps):
    """As an ONNX BatchNormalization's epsilon (fuzzing: conv_bn_relu/bad_attribute_value/134);
    the converted model's check named only ``<ModelProto>``."""
    text = caffe_models.prototxt("mobilenet_v1")
    (tmp_path / "deploy.prototxt").write_text(text.replace("eps: 1e-05", f"eps: {eps}", 1))
    (tmp_path / "deploy.caffemodel").write_bytes(caffe_models.caffemodel("mobilenet_v1"))
    with pytest.raises(ModelLoadError, match=rf"deploy.prototxt: layer '[^']+' \(type BatchNorm\): "
                                             rf"eps is {eps}; it must be a finite number >= 0"):
        caffe.to_onnx(tmp_path / "deploy.prototxt")


def test_weights_from_a_caffemodel_are_not_marked_random(zoo_dir):
    assert not frontends.has_random_weights(caffe.to_onnx(zoo_dir / "lenet.prototxt"))


def test_weights_found_beside_prototxt_and_input_shape_override(zoo_dir):
    model = frontends.to_onnx(zoo_dir / "lenet.prototxt", input_shapes={"data": (4, 1, 28, 28)})
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 1, 28, 28]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [4, 10]
    assert len(model.graph.initializer) == 8  # the caffemodel beside it was used
    # the caffemodel itself as MODEL: its prototxt is beside it
    assert frontends.to_onnx(zoo_dir / "lenet.caffemodel").graph.initializer == \
        frontends.to_onnx(zoo_dir / "lenet.prototxt").graph.initializer


def test_nodes_and_weights_are_named_after_layers(zoo_dir):
    model = caffe.to_onnx(zoo_dir / "mobilenet_v1.prototxt")
    names = {n.name for n in model.graph.node}
    assert {"conv1", "conv1/bn", "conv1/scale", "conv2_1/dw", "conv6/sep/relu", "fc7",
            "prob"} <= names
    assert "conv2_1/dw.weight" in {t.name for t in model.graph.initializer}
    dw = next(n for n in model.graph.node if n.name == "conv2_1/dw")
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 32


def test_detect_by_suffix_and_content(tmp_path, zoo_dir):
    assert frontends.detect(zoo_dir / "lenet.prototxt") == "caffe"
    assert frontends.detect(zoo_dir / "lenet.caffemodel") == "caffe"
    text = tmp_path / "deploy.txt"
    text.write_text(caffe_models.prototxt("squeezenet1_1"))
    assert frontends.detect(text) == "caffe"
    model = frontends.to_onnx(text, random_weights=True)  # no caffemodel beside it
    assert model.graph.output[0].name == "prob"


# --------------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_layer_and_file(tmp_path, zoo_dir):
    data_layer = 'layer { name: "mnist" type: "Data" top: "data" data_param { source: "x" } }'
    path, _ = _write(tmp_path, "train", data_layer, weights=False)
    with pytest.raises(UnsupportedModelError, match=r"train.prototxt: layer 'mnist' has type "
                                                    r"Data, .*deploy prototxt"):
        caffe.to_onnx(path)

    wrong = caffe_models.prototxt("lenet").replace("num_output: 500", "num_output: 400")
    path, _ = _write(tmp_path, "wrong", wrong, weights=False)
    with pytest.raises(ModelLoadError, match=r"layer 'ip1': caffemodel blob 0 has shape "):
        caffe.to_onnx(path, weights=zoo_dir / "lenet.caffemodel")

    extra = caffe_models.prototxt("lenet").replace('layer {\n  name: "prob"', '''layer {
  name: "ip3"
  type: "InnerProduct"
  bottom: "ip2"
  top: "ip3"
  inner_product_param {
    num_output: 3
  }
}
layer {
  name: "prob"''')
    path, _ = _write(tmp_path, "extra", extra, weights=False)
    with pytest.raises(ModelLoadError, match="caffemodel has no weights for layer 'ip3'"):
        caffe.to_onnx(path, weights=zoo_dir / "lenet.caffemodel")

    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: ")
    with pytest.raises(ModelLoadError, match="bad.prototxt: not a valid Caffe prototxt"):
        caffe.to_onnx(bad)
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelLoadError, match="junk.caffemodel"):
        caffe.to_onnx(zoo_dir / "lenet.prototxt", weights=junk)


def _cli(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "mmopt.cli.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_unsupported_layer_is_one_line_exit_2(tmp_path):
    text = """name: "ssd_head"
    input: "data" input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "priors" type: "PriorBox" bottom: "conv" bottom: "data" top: "priors"
      prior_box_param { min_size: 30 aspect_ratio: 2 } }"""
    path, _ = _write(tmp_path, "ssd", text, weights=False)
    proc = _cli("import", path, "-o", tmp_path / "out.onnx")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"mmopt: error: {path}: layer 'priors' has type PriorBox, which the Caffe "
                     "frontend does not support"]
    assert not (tmp_path / "out.onnx").exists()


@needs_opencv
def test_cli_import_writes_onnx_and_verifies_against_opencv(tmp_path, zoo_dir):
    out = tmp_path / "squeezenet.onnx"
    proc = _cli("import", zoo_dir / "squeezenet1_1.prototxt", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "verify   PASS onnxruntime vs OpenCV" in proc.stdout
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17


def test_cli_compile_without_caffemodel_names_it_and_leaves_nothing(tmp_path):
    """Issue #17: a prototxt with no .caffemodel beside it used to compile with random weights and
    pass verification; now it is a one-line error naming the file looked for."""
    path = tmp_path / "deploy.prototxt"
    path.write_text(caffe_models.prototxt("lenet"))
    proc = _cli("compile", path, "--target", "x86", "-o", tmp_path / "out" / "lenet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmopt: error: {path}: no weights: "), lines
    assert str(tmp_path / "deploy.caffemodel") in lines[0] and "--random-weights" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_compile_with_random_weights_records_them(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(caffe_models.prototxt("lenet"))
    prefix = tmp_path / "lenet"
    proc = _cli("compile", path, "--target", "x86", "-o", prefix, "--random-weights")
    assert proc.returncode == 0, proc.stderr
    assert "weights   random (--random-weights, seed 0)" in proc.stdout
    meta = json.loads(prefix.with_suffix(".json").read_text())
    assert meta["extra"]["random_weights"] is True and meta["extra"]["random_weights_seed"] == 0
    assert meta["verification"]["passed"]
    # an ONNX model imported with random weights carries it into what is compiled from it
    onnx_path = tmp_path / "lenet.onnx"
    proc = _cli("import", path, "-o", onnx_path, "--random-weights", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    proc = _cli("inspect", onnx_path)
    assert proc.returncode == 0, proc.stderr
    import mmopt

    result = mmopt.compile(onnx_path, "x86", tmp_path / "again")
    assert result.meta.extra["random_weights"] is True


def test_names_from_the_prototxt_cannot_break_the_one_line_error(tmp_path):
    # a layer name with an escaped newline (fuzzing: damaged prototxts); every MmoptError keeps
    # its message on one printable line
    text = 'input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n' \
           'layer { name: "odd\\nname" type: "FuzzLayer" bottom: "data" top: "out" }\n'
    path, _ = _write(tmp_path, "odd", text, weights=False)
    with pytest.raises(UnsupportedModelError) as info:
        caffe.to_onnx(path, random_weights=True)
    assert "\n" not in info.value.message and "layer 'odd\\nname'" in info.value.message
