"""Caffe network (``NetParameter``) -> ONNX (opset 17), one converter per layer type.

The conversion walks the layers in file order, as Caffe executes them, keeping for every Caffe blob
the ONNX tensor that currently holds it (in-place layers such as ``ReLU`` with ``top == bottom``
produce a new tensor each time) and the blob's static shape, computed with Caffe's own rules. Each
layer becomes a node named after the layer; layers that need several ONNX nodes name the extra ones
``<layer>/<role>``. Weights are initializers named ``<layer>.weight``, ``<layer>.bias``, ... .

Semantics that differ from ONNX and how they are matched exactly:

* **Pooling output size.** Caffe rounds up by default: ``out = ceil((in + 2p - k) / s) + 1``, then
  drops the last window when padding is present and it would start inside the bottom/right padding
  (``(out - 1) * s >= in + p``). The converter computes that size and writes the ONNX pool with
  ``ceil_mode=0`` and an extra end pad ``e`` that yields it (``floor((in + 2p + e - k) / s) + 1``).
  MAX ignores padded cells, as Caffe does. For AVE, Caffe divides by the window clipped to
  ``[-p, in + p)``: counting the user's padding, not the rounding overflow. So when both are
  present the padding becomes an explicit zero ``Pad`` and the pool counts only real cells
  (``count_include_pad=0``) of that padded tensor.
* **BatchNorm** stores ``mean * f`` and ``var * f`` plus the moving-average factor ``f`` as a third
  blob; the real statistics are ``blob / f`` (0 when ``f == 0``). It has no affine part: a following
  ``Scale`` layer (``y = x * gamma + beta``) carries it.
* **LRN WITHIN_CHANNEL** is ``x / (1 + alpha / n^2 * sum_{n x n} x^2) ^ beta`` (Caffe ignores ``k``
  there), built from Mul/AveragePool/Pow; ACROSS_CHANNELS maps onto ONNX ``LRN`` directly.

A layer type without a converter raises :class:`UnsupportedModelError` naming the layer, its type and
the file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mmopt.errors import ModelLoadError, UnsupportedModelError

logger = logging.getLogger(__name__)

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

Converter = Callable[["_Context", object], None]
CONVERTERS: dict[str, Converter] = {}


def converts(*types: str):
    """Register a converter for the given Caffe layer type names."""

    def register(fn: Converter) -> Converter:
        for t in types:
            CONVERTERS[t] = fn
        return fn

    return register


def supported_layer_types() -> list[str]:
    return sorted(CONVERTERS)


# --------------------------------------------------------------------------------------------------
# conversion state


@dataclass
class _Context:
    where: str
    weights: Mapping[str, list[np.ndarray]] | None
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    #: Caffe blob name -> ONNX tensor holding its current value
    blobs: dict[str, str] = field(default_factory=dict)
    #: ONNX tensor -> static shape
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Caffe blob names in order of first production (candidates for graph outputs)
    blob_order: list[str] = field(default_factory=list)
    #: ONNX tensor -> (Caffe layer that produced it, index of the top among the layer's tops)
    producers: dict[str, tuple[str, int]] = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)
    used_names: set[str] = field(default_factory=set)
    layer: object = None
    #: when set (and weights is None), generated blobs are stored here: {layer: {index: array}}
    record: dict | None = None
    #: how many weight blobs the current layer's parameters give it (1 + the highest index read)
    blob_span: int = 0

    # -- errors ---------------------------------------------------------------------------------

    def fail(self, message: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.where}: layer '{self.layer.name}' (type {self.layer.type}): {message}")

    # -- names, tensors -------------------------------------------------------------------------

    def unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.used_names:
            candidate = f"{name}_{i}"
            i += 1
        self.used_names.add(candidate)
        return candidate

    def bottom(self, i: int = 0) -> str:
        layer = self.layer
        if i >= len(layer.bottom):
            raise self.fail(f"expects at least {i + 1} bottom blob(s), has {len(layer.bottom)}")
        blob = layer.bottom[i]
        if blob not in self.blobs:
            raise ModelLoadError(f"{self.where}: layer '{layer.name}' reads blob '{blob}', which no "
                                 "input or earlier layer produces")
        tensor = self.blobs[blob]
        self.consumed.add(tensor)
        return tensor

    def bottoms(self) -> list[str]:
        return [self.bottom(i) for i in range(len(self.layer.bottom))]

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self.shapes[tensor]

    def top(self, i: int, shape: Sequence[int]) -> str:
        """A new tensor for the layer's ``i``-th top blob (with its static shape)."""
        layer = self.layer
        if i >= len(layer.top):
            raise self.fail(f"expects at least {i + 1} top blob(s), has {len(layer.top)}")
        blob = layer.top[i]
        name = self.unique(blob if blob not in self.used_names else f"{blob}/{layer.name}")
        if blob not in self.blobs:
            self.blob_order.append(blob)
        self.blobs[blob] = name
        self.shapes[name] = tuple(int(d) for d in shape)
        self.producers[name] = (layer.name, i)
        if any(d <= 0 for d in shape):
            raise self.fail(f"output '{blob}' would have shape {list(shape)}; check the input "
                            "shape and the layer's kernel/stride/pad")
        return name

    def temp(self, role: str, shape: Sequence[int]) -> str:
        name = self.unique(f"{self.layer.name}/{role}")
        self.shapes[name] = tuple(int(d) for d in shape)
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], role: str | None = None,
             **attrs) -> None:
        name = self.layer.name if role is None else f"{self.layer.name}/{role}"
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def const(self, role: str, value, dtype=np.float32) -> str:
        name = self.unique(f"{self.layer.name}.{role}")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    # -- weights --------------------------------------------------------------------------------

    def blob(self, index: int, shape: Sequence[int], init: str, *, fan_in: int = 1) -> np.ndarray:
        """The layer's weight blob ``index`` (from the caffemodel, or generated), as ``shape``.

        ``init`` picks the generated values when there is no caffemodel: ``he`` (normal, std
        sqrt(2 / fan_in)), ``bias``, ``gamma`` (around 1), ``mean``, ``var``, ``one``, ``slope``.
        """
        shape = tuple(int(d) for d in shape)
        count = int(np.prod(shape, dtype=np.int64))
        self.blob_span = max(self.blob_span, index + 1)
        if self.weights is None:
            value = _generate(self.rng, init, shape, fan_in)
            if self.record is not None:
                self.record.setdefault(self.layer.name, {})[index] = value
            return value
        blobs = self.weights.get(self.layer.name)
        if blobs is None:
            raise ModelLoadError(f"{self.where}: the caffemodel has no weights for layer "
                                 f"'{self.layer.name}' (type {self.layer.type})")
        if index >= len(blobs):
            raise ModelLoadError(f"{self.where}: layer '{self.layer.name}' needs weight blob "
                                 f"{index}, the caffemodel has {len(blobs)}")
        value = blobs[index]
        if value.size != count:
            raise ModelLoadError(
                f"{self.where}: layer '{self.layer.name}': caffemodel blob {index} has shape "
                f"{list(value.shape)}, the prototxt implies {list(shape)}")
        return value.reshape(shape).astype(np.float32)

    def has_blob(self, index: int) -> bool:
        self.blob_span = max(self.blob_span, index + 1)
        if self.weights is None:
            return True
        return len(self.weights.get(self.layer.name, ())) > index


def _generate(rng: np.random.Generator, init: str, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    if init == "he":
        v = rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))
    elif init == "bias":
        v = rng.standard_normal(shape) * 0.1
    elif init == "gamma":
        v = rng.uniform(0.5, 1.5, shape)
    elif init == "mean":
        v = rng.standard_normal(shape) * 0.2
    elif init == "var":
        v = rng.uniform(0.5, 2.0, shape)
    elif init == "one":
        v = np.ones(shape)
    elif init == "slope":
        v = rng.uniform(0.05, 0.3, shape)
    else:  # pragma: no cover - programming error
        raise ValueError(init)
    return v.astype(np.float32)


def _axis(ctx: _Context, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ctx.fail(f"{what} {axis} is out of range for a {rank}-D blob")
    return axis % rank


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


# --------------------------------------------------------------------------------------------------
# layer converters


def _spatial(ctx: _Context, values: Sequence[int], h, w, name: str, n: int, default: int,
             has_hw: bool) -> list[int]:
    """Caffe's per-dimension parameter: ``*_h``/``*_w`` (2-D), one value for all dims, or one per dim."""
    if has_hw:
        if n != 2:
            raise ctx.fail(f"{name}_h/{name}_w only apply to 2-D blobs")
        return [int(h), int(w)]
    values = [int(v) for v in values]
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ctx.fail(f"{name} has {len(values)} values for {n} spatial dims")
    return values


def _conv_geometry(ctx: _Context, p, n: int):
    kernel = _spatial(ctx, p.kernel_size, p.kernel_h, p.kernel_w, "kernel", n, 0,
                      p.HasField("kernel_h") or p.HasField("kernel_w"))
    stride = _spatial(ctx, p.stride, p.stride_h, p.stride_w, "stride", n, 1,
                      p.HasField("stride_h") or p.HasField("stride_w"))
    pad = _spatial(ctx, p.pad, p.pad_h, p.pad_w, "pad", n, 0,
                   p.HasField("pad_h") or p.HasField("pad_w"))
    dilation = _spatial(ctx, p.dilation, 1, 1, "dilation", n, 1, False)
    if any(k <= 0 for k in kernel):
        raise ctx.fail("kernel size is missing or zero")
    if any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise ctx.fail("stride and dilation must be positive")
    return kernel, stride, pad, dilation


@converts("Convolution", "Deconvolution")
def _convolution(ctx: _Context, layer) -> None:
    p = layer.convolution_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    if p.axis != 1 or len(shape) < 3:
        raise ctx.fail(f"only channel axis 1 of an N-D (N >= 3) blob is supported, got axis "
                       f"{p.axis} on shape {list(shape)}")
    n = len(shape) - 2
    kernel, stride, pad, dilation = _conv_geometry(ctx, p, n)
    channels, group, num_output = shape[1], int(p.group), int(p.num_output)
    if num_output <= 0:
        raise ctx.fail("num_output is missing")
    if channels % group or num_output % group:
        raise ctx.fail(f"group {group} does not divide {channels} input / {num_output} output "
                       "channels")
    deconv = layer.type == "Deconvolution"
    if deconv:
        w_shape = (channels, num_output // group, *kernel)
        fan_in = channels // group * int(np.prod(kernel))
        spatial_out = [s * (i - 1) + d * (k - 1) + 1 - 2 * q
                       for i, k, s, q, d in zip(shape[2:], kernel, stride, pad, dilation)]
    else:
        w_shape = (num_output, channels // group, *kernel)
        fan_in = channels // group * int(np.prod(kernel))
        spatial_out = [(i + 2 * q - (d * (k - 1) + 1)) // s + 1
                       for i, k, s, q, d in zip(shape[2:], kernel, stride, pad, dilation)]
    inputs = [x, ctx.const("weight", ctx.blob(0, w_shape, "he", fan_in=fan_in))]
    if p.bias_term:
        inputs.append(ctx.const("bias", ctx.blob(1, (num_output,), "bias")))
    y = ctx.top(0, (shape[0], num_output, *spatial_out))
    ctx.node("ConvTranspose" if deconv else "Conv", inputs, [y], kernel_shape=kernel,
             strides=stride, pads=pad + pad, dilations=dilation, group=group)


@converts("InnerProduct")
def _inner_product(ctx: _Context, layer) -> None:
    p = layer.inner_product_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    axis = _axis(ctx, p.axis, len(shape))
    k = int(np.prod(shape[axis:]))
    m = int(np.prod(shape[:axis]))
    n = int(p.num_output)
    if n <= 0:
        raise ctx.fail("num_output is missing")
    weight = ctx.blob(0, (k, n) if p.transpose else (n, k), "he", fan_in=k)
    inputs = [x]
    if len(shape) != 2 or axis != 1:
        flat = ctx.temp("flatten", (m, k))
        ctx.node("Flatten", [x], [flat], role="flatten", axis=axis)
        inputs = [flat]
    inputs.append(ctx.const("weight", weight))
    if p.bias_term:
        inputs.append(ctx.const("bias", ctx.blob(1, (n,), "bias")))
    out_shape = (*shape[:axis], n)
    if axis == 1:
        ctx.node("Gemm", inputs, [ctx.top(0, out_shape)], transB=0 if p.transpose else 1)
    else:
        gemm = ctx.temp("gemm", (m, n))
        ctx.node("Gemm", inputs, [gemm], transB=0 if p.transpose else 1)
        ctx.node("Reshape", [gemm, ctx.const("shape", out_shape, np.int64)],
                 [ctx.top(0, out_shape)], role="reshape")


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True) -> int:
    """Caffe's pooling output size (PoolingLayer::Reshape), rounding and clipping included."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@converts("Pooling")
def _pooling(ctx: _Context, layer) -> None:
    p = layer.pooling_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    if len(shape) != 4:
        raise ctx.fail(f"pooling needs a 4-D blob, got shape {list(shape)}")
    if p.pool == p.STOCHASTIC:
        raise ctx.fail("STOCHASTIC pooling is not supported")
    is_max = p.pool == p.MAX
    if p.global_pooling:
        if p.pad or p.pad_h or p.pad_w or p.stride_h > 1 or p.stride_w > 1 or p.stride > 1:
            raise ctx.fail("global pooling takes no pad or stride")
        ctx.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [x],
                 [ctx.top(0, (*shape[:2], 1, 1))])
        return
    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = [int(p.kernel_h), int(p.kernel_w)]
    else:
        kernel = [int(p.kernel_size)] * 2
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = [int(p.stride_h), int(p.stride_w)]
    else:
        stride = [int(p.stride)] * 2
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = [int(p.pad_h), int(p.pad_w)]
    else:
        pad = [int(p.pad)] * 2
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride):
        raise ctx.fail("kernel size or stride is missing or zero")
    if any(q >= k for q, k in zip(pad, kernel)):
        raise ctx.fail(f"pad {pad} must be smaller than the kernel {kernel}")
    ceil = p.round_mode == p.CEIL
    out = [pooled_size(i, k, s, q, ceil) for i, k, s, q in zip(shape[2:], kernel, stride, pad)]
    # extra end padding so that ONNX's floor rounding gives Caffe's size
    extra = [max(0, (o - 1) * s + k - (i + 2 * q))
             for o, i, k, s, q in zip(out, shape[2:], kernel, stride, pad)]
    if any(q + e >= k for q, e, k in zip(pad, extra, kernel)):
        # only without padding (Caffe clips the last window only then) and with stride > kernel
        raise ctx.fail(f"the last pooling window starts outside the input ({list(shape[2:])}, "
                       f"kernel {kernel}, stride {stride}, ceil rounding): Caffe reads no input "
                       "for it; use round_mode: FLOOR")
    y = ctx.top(0, (*shape[:2], *out))
    if is_max:
        ctx.node("MaxPool", [x], [y], kernel_shape=kernel, strides=stride,
                 pads=pad + [q + e for q, e in zip(pad, extra)])
        return
    if not any(extra):
        attrs = {"count_include_pad": 1} if any(pad) else {}
        ctx.node("AveragePool", [x], [y], kernel_shape=kernel, strides=stride, pads=pad + pad,
                 **attrs)
        return
    if any(pad):
        padded = ctx.temp("pad", (*shape[:2], *(i + 2 * q for i, q in zip(shape[2:], pad))))
        ctx.node("Pad", [x, ctx.const("pads", [0, 0, *pad, 0, 0, *pad], np.int64)], [padded],
                 role="pad", mode="constant")
        x = padded
    ctx.node("AveragePool", [x], [y], kernel_shape=kernel, strides=stride,
             pads=[0, 0, *extra], count_include_pad=0)


@converts("ReLU")
def _relu(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    slope = layer.relu_param.negative_slope
    y = ctx.top(0, ctx.shape(x))
    if slope:
        ctx.node("LeakyRelu", [x], [y], alpha=float(slope))
    else:
        ctx.node("Relu", [x], [y])


@converts("PReLU")
def _prelu(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    if len(shape) < 2:
        raise ctx.fail("PReLU needs a blob with a channel axis")
    shared = layer.prelu_param.channel_shared
    slope = ctx.blob(0, (1,) if shared else (shape[1],), "slope")
    slope = slope.reshape((1,) if shared else (shape[1], *([1] * (len(shape) - 2))))
    ctx.node("PRelu", [x, ctx.const("slope", slope)], [ctx.top(0, shape)])


def _unary(op: str):
    def convert_unary(ctx: _Context, layer) -> None:
        x = ctx.bottom()
        ctx.node(op, [x], [ctx.top(0, ctx.shape(x))])

    return convert_unary


converts("Sigmoid")(_unary("Sigmoid"))
converts("TanH")(_unary("Tanh"))
converts("AbsVal")(_unary("Abs"))
converts("BNLL")(_unary("Softplus"))
converts("Dropout")(_unary("Identity"))


@converts("ELU")
def _elu(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    ctx.node("Elu", [x], [ctx.top(0, ctx.shape(x))], alpha=float(layer.elu_param.alpha))


@converts("BatchNorm")
def _batch_norm(ctx: _Context, layer) -> None:
    p = layer.batch_norm_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    if len(shape) < 2:
        raise ctx.fail("BatchNorm needs a blob with a channel axis")
    if p.HasField("use_global_stats") and not p.use_global_stats:
        logger.warning("%s: layer '%s': use_global_stats is false (batch statistics); converting "
                       "with the stored statistics, as inference does", ctx.where, layer.name)
    if not (np.isfinite(p.eps) and p.eps >= 0):  # as the ONNX front door (mmopt.ir.validate)
        raise ModelLoadError(f"{ctx.where}: layer '{layer.name}' (type BatchNorm): eps is "
                             f"{p.eps:g}; it must be a finite number >= 0")
    c = shape[1]
    mean = ctx.blob(0, (c,), "mean")
    var = ctx.blob(1, (c,), "var")
    factor = float(ctx.blob(2, (1,), "one")[0]) if ctx.has_blob(2) else 1.0
    scale = 0.0 if factor == 0 else 1.0 / factor
    ctx.node("BatchNormalization",
             [x, ctx.const("scale", np.ones(c)), ctx.const("B", np.zeros(c)),
              ctx.const("running_mean", mean * scale), ctx.const("running_var", var * scale)],
             [ctx.top(0, shape)], epsilon=float(p.eps))


def _broadcast_shape(ctx: _Context, x_shape: Sequence[int], axis: int,
                     p_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape that makes a Scale/Bias parameter of ``p_shape`` at ``axis`` broadcast to ``x``."""
    if tuple(x_shape[axis:axis + len(p_shape)]) != tuple(p_shape):
        raise ctx.fail(f"parameter shape {list(p_shape)} does not match the bottom's dims "
                       f"{list(x_shape[axis:axis + len(p_shape)])} at axis {axis}")
    return (*p_shape, *([1] * (len(x_shape) - axis - len(p_shape))))


def _param_shape(ctx: _Context, x_shape: Sequence[int], axis: int, num_axes: int) -> tuple[int, ...]:
    if num_axes < -1:
        raise ctx.fail(f"num_axes must be >= -1, got {num_axes}")
    end = len(x_shape) if num_axes == -1 else axis + num_axes
    if end > len(x_shape):
        raise ctx.fail(f"axis {axis} + num_axes {num_axes} exceed the bottom's {len(x_shape)} dims")
    return tuple(x_shape[axis:end])


@converts("Scale", "Bias")
def _scale(ctx: _Context, layer) -> None:
    """Scale: ``y = x * s (+ b)``, Bias: ``y = x + b``; ``s``/``b`` span dims ``axis..`` of ``x``.

    The operand is the second bottom when there is one, else the layer's first weight blob.
    """
    is_scale = layer.type == "Scale"
    p = layer.scale_param if is_scale else layer.bias_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    axis = _axis(ctx, p.axis, len(shape))
    op = "Mul" if is_scale else "Add"
    steps = []
    if len(layer.bottom) > 1:
        operand = ctx.bottom(1)
        p_shape = ctx.shape(operand)
        target = _broadcast_shape(ctx, shape, axis, p_shape)
        if target != p_shape:
            reshaped = ctx.temp("reshape", target)
            ctx.node("Reshape", [operand, ctx.const("shape", target, np.int64)], [reshaped],
                     role="reshape")
            operand = reshaped
        steps.append((op, operand))
        next_blob = 0
    else:
        p_shape = _param_shape(ctx, shape, axis, p.num_axes)
        target = _broadcast_shape(ctx, shape, axis, p_shape)
        value = ctx.blob(0, p_shape, "gamma" if is_scale else "bias")
        steps.append((op, ctx.const("weight" if is_scale else "bias", value.reshape(target))))
        next_blob = 1
    if is_scale and p.bias_term:
        bias = ctx.blob(next_blob, p_shape, "bias")
        steps.append(("Add", ctx.const("bias", bias.reshape(target))))
    y = ctx.top(0, shape)
    current = x
    for i, (step_op, operand) in enumerate(steps):
        last = i == len(steps) - 1
        out = y if last else ctx.temp(step_op.lower(), shape)
        ctx.node(step_op, [current, operand], [out], role=None if last else step_op.lower())
        current = out


@converts("Eltwise")
def _eltwise(ctx: _Context, layer) -> None:
    p = layer.eltwise_param
    xs = ctx.bottoms()
    shape = ctx.shape(xs[0])
    if any(ctx.shape(t) != shape for t in xs):
        raise ctx.fail("all bottoms must have the same shape: "
                       + ", ".join(str(list(ctx.shape(t))) for t in xs))
    coeffs = list(p.coeff)
    if coeffs and p.operation != p.SUM:
        raise ctx.fail("coeff only applies to the SUM operation")
    if coeffs and len(coeffs) != len(xs):
        raise ctx.fail(f"{len(coeffs)} coeff values for {len(xs)} bottoms")
    y = ctx.top(0, shape)
    if p.operation == p.SUM and any(c != 1 for c in coeffs):
        terms = []
        for i, (t, c) in enumerate(zip(xs, coeffs)):
            if c == 1:
                terms.append(t)
                continue
            scaled = ctx.temp(f"coeff{i}", shape)
            ctx.node("Mul", [t, ctx.const(f"coeff{i}", c)], [scaled], role=f"coeff{i}")
            terms.append(scaled)
        xs = terms
    op = {p.SUM: "Sum", p.PROD: "Mul", p.MAX: "Max"}[p.operation]
    if op == "Mul":
        current = xs[0]
        for i, t in enumerate(xs[1:], start=1):
            out = y if i == len(xs) - 1 else ctx.temp(f"mul{i}", shape)
            ctx.node("Mul", [current, t], [out], role=None if out == y else f"mul{i}")
            current = out
        if len(xs) == 1:
            ctx.node("Identity", [current], [y])
        return
    if op == "Sum" and len(xs) == 2:
        op = "Add"
    ctx.node(op, xs, [y])


@converts("Concat")
def _concat(ctx: _Context, layer) -> None:
    p = layer.concat_param
    xs = ctx.bottoms()
    shapes = [ctx.shape(t) for t in xs]
    rank = len(shapes[0])
    axis = _axis(ctx, int(p.concat_dim) if p.HasField("concat_dim") else p.axis, rank)
    for s in shapes[1:]:
        if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
            raise ctx.fail(f"bottom shapes {[list(s) for s in shapes]} differ outside axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    y = ctx.top(0, out)
    if len(xs) == 1:
        ctx.node("Identity", xs, [y])
    else:
        ctx.node("Concat", xs, [y], axis=axis)


@converts("Softmax")
def _softmax(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    axis = _axis(ctx, layer.softmax_param.axis, len(shape))
    ctx.node("Softmax", [x], [ctx.top(0, shape)], axis=axis)


@converts("LRN")
def _lrn(ctx: _Context, layer) -> None:
    p = layer.lrn_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    size = int(p.local_size)
    if size % 2 == 0:
        raise ctx.fail(f"local_size must be odd, got {size}")
    if p.norm_region == p.ACROSS_CHANNELS:
        ctx.node("LRN", [x], [ctx.top(0, shape)], size=size, alpha=float(p.alpha),
                 beta=float(p.beta), bias=float(p.k))
        return
    if len(shape) != 4:
        raise ctx.fail("WITHIN_CHANNEL LRN needs a 4-D blob")
    pad = (size - 1) // 2
    sq = ctx.temp("square", shape)
    ctx.node("Mul", [x, x], [sq], role="square")
    avg = ctx.temp("pool", shape)
    ctx.node("AveragePool", [sq], [avg], role="pool", kernel_shape=[size, size],
             pads=[pad] * 4, count_include_pad=1)
    scaled = ctx.temp("scale", shape)
    ctx.node("Mul", [avg, ctx.const("alpha", p.alpha)], [scaled], role="scale")
    shifted = ctx.temp("shift", shape)
    ctx.node("Add", [scaled, ctx.const("one", 1.0)], [shifted], role="shift")
    powed = ctx.temp("pow", shape)
    ctx.node("Pow", [shifted, ctx.const("neg_beta", -p.beta)], [powed], role="pow")
    ctx.node("Mul", [x, powed], [ctx.top(0, shape)])


@converts("Flatten")
def _flatten(ctx: _Context, layer) -> None:
    p = layer.flatten_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    start = _axis(ctx, p.axis, len(shape))
    end = _axis(ctx, p.end_axis, len(shape), "end_axis")
    if end < start:
        raise ctx.fail(f"end_axis {p.end_axis} comes before axis {p.axis}")
    out = (*shape[:start], int(np.prod(shape[start:end + 1])), *shape[end + 1:])
    _reshape_to(ctx, x, out)


def _reshape_to(ctx: _Context, x: str, out: Sequence[int]) -> None:
    ctx.node("Reshape", [x, ctx.const("shape", list(out), np.int64)], [ctx.top(0, out)])


@converts("Reshape")
def _reshape(ctx: _Context, layer) -> None:
    """Caffe's Reshape: ``shape`` replaces dims ``[axis, axis + num_axes)``; 0 copies, -1 infers."""
    p = layer.reshape_param
    x = ctx.bottom()
    shape = list(ctx.shape(x))
    rank = len(shape)
    axis = p.axis
    if not -rank - 1 <= axis <= rank:
        raise ctx.fail(f"axis {axis} is out of range for a {rank}-D blob")
    start = axis if axis >= 0 else rank + 1 + axis
    end = rank if p.num_axes == -1 else start + p.num_axes
    if p.num_axes < -1 or end > rank:
        raise ctx.fail(f"num_axes {p.num_axes} is out of range")
    spec = list(p.shape.dim)
    middle = []
    for i, d in enumerate(spec):
        if d == 0:
            if start + i >= rank:
                raise ctx.fail(f"dim {i} is 0 (copy) but the bottom has no dim {start + i}")
            middle.append(shape[start + i])
        else:
            middle.append(int(d))
    out = shape[:start] + middle + shape[end:]
    if out.count(-1) > 1:
        raise ctx.fail("at most one dim may be -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(shape))
        if known == 0 or total % known:
            raise ctx.fail(f"cannot infer the -1 dim of {out} from {total} elements")
        out[out.index(-1)] = total // known
    if int(np.prod(out)) != int(np.prod(shape)):
        raise ctx.fail(f"shape {out} does not hold the bottom's {int(np.prod(shape))} elements")
    _reshape_to(ctx, x, out)


@converts("Permute")
def _permute(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    order = [int(o) for o in layer.permute_param.order]
    if len(set(order)) != len(order) or any(o >= len(shape) for o in order):
        raise ctx.fail(f"order {order} is not a permutation of the blob's {len(shape)} axes")
    order += [a for a in range(len(shape)) if a not in order]
    ctx.node("Transpose", [x], [ctx.top(0, [shape[a] for a in order])], perm=order)


@converts("Power")
def _power(ctx: _Context, layer) -> None:
    """``y = (shift + scale * x) ^ power``."""
    p = layer.power_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    steps = []
    if p.scale != 1:
        steps.append(("Mul", "scale", p.scale))
    if p.shift != 0:
        steps.append(("Add", "shift", p.shift))
    if p.power != 1:
        steps.append(("Pow", "power", p.power))
    y = ctx.top(0, shape)
    if not steps:
        ctx.node("Identity", [x], [y])
        return
    current = x
    for i, (op, role, value) in enumerate(steps):
        last = i == len(steps) - 1
        out = y if last else ctx.temp(role, shape)
        ctx.node(op, [current, ctx.const(role, value)], [out], role=None if last else role)
        current = out


@converts("Exp", "Log")
def _exp_log(ctx: _Context, layer) -> None:
    """Exp: ``y = base ^ (shift + scale * x)``; Log: ``y = log_base(shift + scale * x)``."""
    p = layer.exp_param if layer.type == "Exp" else layer.log_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    if p.base != -1 and p.base <= 0:
        raise ctx.fail(f"base must be positive (or -1 for e), got {p.base}")
    ln_base = 1.0 if p.base == -1 else math.log(p.base)
    y = ctx.top(0, shape)
    current = x
    if layer.type == "Exp":
        scale, shift = p.scale * ln_base, p.shift * ln_base
        steps = [("Mul", "scale", scale)] if scale != 1 else []
        steps += [("Add", "shift", shift)] if shift != 0 else []
        steps += [("Exp", None, None)]
    else:
        steps = [("Mul", "scale", p.scale)] if p.scale != 1 else []
        steps += [("Add", "shift", p.shift)] if p.shift != 0 else []
        steps += [("Log", None, None)]
        steps += [("Mul", "inv_ln_base", 1.0 / ln_base)] if ln_base != 1 else []
    for i, (op, role, value) in enumerate(steps):
        last = i == len(steps) - 1
        out = y if last else ctx.temp((role or op).lower(), shape)
        inputs = [current] if value is None else [current, ctx.const(role, value)]
        ctx.node(op, inputs, [out], role=None if last else (role or op.lower()))
        current = out


@converts("Threshold")
def _threshold(ctx: _Context, layer) -> None:
    """``y = 1 if x > threshold else 0``."""
    x = ctx.bottom()
    shape = ctx.shape(x)
    mask = ctx.temp("greater", shape)
    ctx.node("Greater", [x, ctx.const("threshold", layer.threshold_param.threshold)], [mask],
             role="greater")
    ctx.node("Cast", [mask], [ctx.top(0, shape)], to=TensorProto.FLOAT)


@converts("Slice")
def _slice(ctx: _Context, layer) -> None:
    p = layer.slice_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    axis = _axis(ctx, int(p.slice_dim) if p.HasField("slice_dim") else p.axis, len(shape))
    n_tops = len(layer.top)
    points = [int(v) for v in p.slice_point]
    total = shape[axis]
    if points:
        if len(points) != n_tops - 1:
            raise ctx.fail(f"{len(points)} slice_point values for {n_tops} tops")
        bounds = [0, *points, total]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        if any(s <= 0 for s in sizes):
            raise ctx.fail(f"slice_point {points} is not increasing within 0..{total}")
    else:
        if total % n_tops:
            raise ctx.fail(f"axis {axis} of size {total} does not split evenly into {n_tops} tops")
        sizes = [total // n_tops] * n_tops
    outs = []
    for i, s in enumerate(sizes):
        out = list(shape)
        out[axis] = s
        outs.append(ctx.top(i, out))
    if n_tops == 1:
        ctx.node("Identity", [x], outs)
    else:
        ctx.node("Split", [x, ctx.const("split", sizes, np.int64)], outs, axis=axis)


@converts("Split")
def _split(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    for i in range(len(layer.top)):
        ctx.node("Identity", [x], [ctx.top(i, shape)], role=None if i == 0 else f"copy{i}")


@converts("Silence")
def _silence(ctx: _Context, layer) -> None:
    ctx.bottoms()  # consumes its bottoms; produces nothing


@converts("Crop")
def _crop(ctx: _Context, layer) -> None:
    """Crop bottom 0 to bottom 1's shape from ``axis`` on, starting at ``offset``."""
    p = layer.crop_param
    x, ref = ctx.bottom(0), ctx.bottom(1)
    shape, ref_shape = ctx.shape(x), ctx.shape(ref)
    axis = _axis(ctx, p.axis, len(shape))
    n = len(shape) - axis
    offsets = [int(v) for v in p.offset]
    if not offsets:
        offsets = [0] * n
    elif len(offsets) == 1:
        offsets = offsets * n
    elif len(offsets) != n:
        raise ctx.fail(f"{len(offsets)} offsets for {n} cropped axes")
    out = list(shape[:axis]) + list(ref_shape[axis:])
    for a, o in zip(range(axis, len(shape)), offsets):
        if o + out[a] > shape[a]:
            raise ctx.fail(f"crop of {out[a]} at offset {o} exceeds axis {a} of size {shape[a]}")
    axes = list(range(axis, len(shape)))
    ctx.node("Slice", [x, ctx.const("starts", offsets, np.int64),
                       ctx.const("ends", [o + out[a] for a, o in zip(axes, offsets)], np.int64),
                       ctx.const("axes", axes, np.int64)], [ctx.top(0, out)])
