"""Caffe network (``NetParameter``) -> ONNX (opset 17), one converter per layer type.

The conversion walks the layers in file order, as Caffe executes them, keeping for every Caffe blob
the ONNX tensor that currently holds it (in-place layers such as ``ReLU`` with ``top == bottom``
produce a new tensor each time) and the blob's static shape, computed with Caffe's own rules. Each
layer becomes a node named after the layer; layers that need several ONNX nodes name the extra ones
``<layer>/<role>``. Weights are initializers named ``<layer>.weight``, ``<layer>.bias``, ... .

The layer converters, one per layer type, register themselves with :func:`.context.converts` and
live by family: :mod:`.conv_pool` (Convolution, Deconvolution, InnerProduct, Pooling),
:mod:`.normalization` (BatchNorm, Scale, Bias, LRN), :mod:`.activation` (ReLU, PReLU, Sigmoid,
TanH, AbsVal, BNLL, ELU, Dropout, Softmax, Power, Exp, Log, Threshold) and :mod:`.blob_ops`
(Eltwise, Concat, Flatten, Reshape, Permute, Slice, Split, Silence, Crop). Where Caffe's semantics
differ from ONNX, the family's module docstring says how they are matched exactly.

A layer type without a converter raises :class:`UnsupportedModelError` naming the layer, its type and
the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from mmopt.errors import ModelLoadError, UnsupportedModelError

# the layer converters register themselves in CONVERTERS as their modules are imported
from mmopt.frontends.caffe import activation, blob_ops, conv_pool, normalization  # noqa: F401
from mmopt.frontends.caffe.context import CONVERTERS, _Context
from mmopt.frontends.caffe.conv_pool import pooled_size  # noqa: F401 - tests import it from here

OPSET = 17
IR_VERSION = 8
#: model metadata key: JSON ``{graph output: [Caffe layer, top index]}``
OUTPUT_LAYERS_KEY = "caffe.output_layers"

#: Layer types that only exist in training nets; a deploy prototxt has none of them.
TRAINING_ONLY = {
    "Data", "ImageData", "HDF5Data", "HDF5Output", "MemoryData", "WindowData", "DummyData",
    "Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss",
    "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss", "ContrastiveLoss", "Python",
}


def supported_layer_types() -> list[str]:
    return sorted(CONVERTERS)


# --------------------------------------------------------------------------------------------------
# the network


def blobs_by_layer(weights_net) -> dict[str, list[np.ndarray]]:
    """``{layer name: [blob arrays]}`` from a parsed caffemodel (V1 nets are upgraded on parsing)."""
    out: dict[str, list[np.ndarray]] = {}
    for layer in weights_net.layer:
        if layer.blobs:
            out[layer.name] = [_blob_array(b) for b in layer.blobs]
    return out


def _blob_array(blob) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
    data = (np.asarray(blob.double_data, dtype=np.float64) if len(blob.double_data)
            else np.asarray(blob.data, dtype=np.float32))
    if int(np.prod(shape, dtype=np.int64)) == data.size:
        return data.reshape(shape)
    return data


def _included(layer, phase: int = 1, level: int = 0, stages: Sequence[str] = ()) -> bool:
    """Caffe's NetStateRule filtering for the TEST phase (Net::StateMeetsRule)."""

    def meets(rule) -> bool:
        if rule.HasField("phase") and rule.phase != phase:
            return False
        if rule.HasField("min_level") and level < rule.min_level:
            return False
        if rule.HasField("max_level") and level > rule.max_level:
            return False
        if any(s not in stages for s in rule.stage):
            return False
        return not any(s in stages for s in rule.not_stage)

    if layer.include:
        return any(meets(r) for r in layer.include)
    if layer.exclude:
        return not any(meets(r) for r in layer.exclude)
    return True


def check_supported(net, where: str) -> None:
    """Raise the one-line error for the first layer (in the TEST phase) that cannot be converted."""
    for layer in net.layer:
        if not _included(layer) or layer.type == "Input":
            continue
        if layer.type in TRAINING_ONLY:
            raise UnsupportedModelError(
                f"{where}: layer '{layer.name}' has type {layer.type}, which belongs to a training "
                "net; convert the deploy prototxt (with an Input layer or input: header) instead")
        if layer.type not in CONVERTERS:
            raise UnsupportedModelError(
                f"{where}: layer '{layer.name}' has type {layer.type}, which the Caffe frontend "
                "does not support")


def convert(net, *, where: str, weights: Mapping[str, list[np.ndarray]] | None = None,
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            seed: int = 0, record: dict | None = None) -> onnx.ModelProto:
    """Convert a parsed deploy ``NetParameter`` into an ONNX model.

    ``weights`` maps layer names to their blobs (see :func:`blobs_by_layer`); ``None`` generates
    seeded random weights; ``record`` (a dict) then receives them in Caffe's blob layout,
    ``{layer: {blob index: array}}``, which is how ``models_zoo`` writes caffemodels.
    ``input_shapes`` overrides the shapes the prototxt declares.
    """
    ctx = _Context(where=where, weights=weights, rng=np.random.default_rng(seed), record=record)
    overrides = dict(input_shapes or {})
    for name, shape in _legacy_inputs(net, where):
        _add_input(ctx, name, overrides.pop(name, shape))
    layers = [layer for layer in net.layer if _included(layer)]
    input_layers = [layer for layer in layers if layer.type == "Input"]
    for layer in input_layers:
        ctx.layer = layer
        shapes = list(layer.input_param.shape)
        for i, top in enumerate(layer.top):
            declared = (tuple(shapes[i].dim) if i < len(shapes)
                        else tuple(shapes[0].dim) if len(shapes) == 1 else None)
            shape = overrides.pop(top, declared)
            if shape is None:
                raise ModelLoadError(f"{where}: input '{top}' (layer '{layer.name}') declares no "
                                     f"shape; give it with --input-shape {top}:1,3,224,224")
            _add_input(ctx, top, shape)
    if overrides:
        raise ModelLoadError(f"{where}: --input-shape names unknown input(s) "
                             f"{', '.join(overrides)}; the net's inputs are "
                             f"{', '.join(i.name for i in ctx.inputs)}")
    if not ctx.inputs:
        raise ModelLoadError(f"{where}: the network declares no inputs (no Input layer and no "
                             "input:/input_dim: header)")
    check_supported(net, where)
    for layer in layers:
        if layer.type == "Input":
            continue
        ctx.layer = layer
        ctx.blob_span = 0
        CONVERTERS[layer.type](ctx, layer)
        _check_blob_count(ctx, layer)
    return _finish(ctx, net)


def _check_blob_count(ctx: _Context, layer) -> None:
    """A caffemodel layer with more weight blobs than the prototxt's layer takes: Caffe refuses
    the net ("Incompatible number of blobs"), and so did OpenCV, the verification reference, with
    an assertion (fuzzing: caffe/mobilenet_v1/delete_line/592 deleted a Scale's ``bias_term: true``;
    mmopt dropped the bias blob and compiled)."""
    if ctx.weights is None:
        return
    count = len(ctx.weights.get(layer.name, ()))
    if count > ctx.blob_span:
        raise ModelLoadError(
            f"{ctx.where}: layer '{layer.name}' (type {layer.type}) has {count} weight blobs in the "
            f"caffemodel, but its prototxt parameters take {ctx.blob_span} (a bias_term that does "
            "not match the weights?)")


def _legacy_inputs(net, where: str) -> list[tuple[str, tuple[int, ...]]]:
    """Inputs declared in the NetParameter header (``input:`` with ``input_dim:`` or ``input_shape``)."""
    names = list(net.input)
    if not names:
        return []
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise ModelLoadError(f"{where}: {len(names)} input: entries but "
                                 f"{len(net.input_shape)} input_shape entries")
        return [(n, tuple(s.dim)) for n, s in zip(names, net.input_shape)]
    dims = list(net.input_dim)
    if len(dims) != 4 * len(names):
        raise ModelLoadError(f"{where}: {len(names)} input: entries need {4 * len(names)} "
                             f"input_dim: values (N, C, H, W each), found {len(dims)}")
    return [(n, tuple(dims[4 * i:4 * i + 4])) for i, n in enumerate(names)]


def _add_input(ctx: _Context, name: str, shape: Sequence[int]) -> None:
    shape = tuple(int(d) for d in shape)
    if not shape or any(d <= 0 for d in shape):
        raise ModelLoadError(f"{ctx.where}: input '{name}' has shape {list(shape)}; every dim must "
                             "be positive (give it with --input-shape)")
    ctx.used_names.add(name)
    ctx.blobs[name] = name
    ctx.shapes[name] = shape
    ctx.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))


def _finish(ctx: _Context, net) -> onnx.ModelProto:
    outputs = [b for b in ctx.blob_order if ctx.blobs[b] not in ctx.consumed]
    if not outputs:
        raise ModelLoadError(f"{ctx.where}: the network has no output blob")
    # In-place layers leave an output under a derived name (``prob/relu``): give the graph output the
    # Caffe blob's name, and the earlier tensor that held that name a derived one.
    renames: dict[str, str] = {}
    renames_back: dict[str, str] = {}
    for blob in outputs:
        tensor = ctx.blobs[blob]
        if tensor != blob and blob not in {i.name for i in ctx.inputs}:
            renames[blob] = ctx.unique(f"{blob}/{ctx.producers[blob][0]}")
            renames[tensor] = blob
            renames_back[blob] = tensor
    if renames:
        for node in ctx.nodes:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        ctx.shapes = {renames.get(k, k): v for k, v in ctx.shapes.items()}
        ctx.blobs = {k: renames.get(v, v) for k, v in ctx.blobs.items()}
    graph = helper.make_graph(
        ctx.nodes, net.name or "caffe_net", ctx.inputs,
        [helper.make_tensor_value_info(ctx.blobs[b], TensorProto.FLOAT,
                                       list(ctx.shapes[ctx.blobs[b]])) for b in outputs],
        initializer=ctx.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mmopt-caffe")
    model.ir_version = IR_VERSION
    # which Caffe layer (and which of its tops) produced each output: what OpenCV's forward() takes
    tops = {}
    for blob in outputs:
        name = ctx.blobs[blob]
        tops[name] = list(ctx.producers[renames_back.get(name, name)])
    helper.set_model_props(model, {OUTPUT_LAYERS_KEY: json.dumps(tops)})
    onnx.checker.check_model(model)
    return model

