"""A small deterministic ONNX graph builder plus the layer helpers the zoo uses.

Everything here is plain ``onnx.helper`` / ``onnx.numpy_helper``; no weights are
stored on disk. A :class:`GraphBuilder` owns one ``numpy`` generator seeded at
construction, and every weight is drawn from it in graph-construction order, so
building the same model with the same seed always yields byte-identical output.

Naming convention (chosen so later passes and their diagnostics read well):

* a node is named after its role, e.g. ``stage1.block0.conv1``;
* a node's output tensor has the same name as the node;
* its parameters are ``<node>.weight`` / ``<node>.bias`` (and
  ``<node>.running_mean`` / ``<node>.running_var`` for BatchNormalization),
  mirroring the PyTorch state-dict names exporters usually produce;
* shared constants are initializers named ``const.<value>``.

BatchNorm statistics
--------------------
Random running statistics would not normalize anything, and deep residual
stacks then drift far from unit scale. Instead the builder runs a small numpy
"calibration" forward pass alongside graph construction: every helper that
feeds a BatchNormalization also computes its output on a fixed batch of random
unit-Gaussian inputs (the kind of input the tests feed). Each BN then takes its
running mean/var from the per-channel statistics of the data actually reaching
it, perturbed slightly, like a trained network's BN, while gamma/beta are
random: folding them is a real test, yet activations stay O(1) at any depth.
Nodes after which no BN follows (dense layers, GELU, LayerNorm, ...) are not
evaluated.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is the version paired with opset 17; onnx 1.23 would otherwise stamp the
# newest IR version, which older onnxruntime / TVM frontends reject.
IR_VERSION = 8

Dim = int | str

class GraphBuilder:
    """Accumulates nodes and initializers for one graph.

    Names are checked for uniqueness so a copy/paste slip in a model definition
    fails loudly instead of producing a graph with aliased tensors.
    """

    def __init__(self, graph_name: str, seed: int) -> None:
        self.graph_name = graph_name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._consts: dict[str, np.ndarray] = {}
        # Calibration activations (see module docstring), keyed by tensor name.
        self._calib_rng = np.random.default_rng([seed, 1])
        self._values: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ basics
    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate tensor/node name {name!r} in {self.graph_name}")
        self._names.add(name)
        return name

    def input(
        self,
        name: str,
        shape: Sequence[Dim],
        calibration_shape: Sequence[int] | None = None,
        elem_type: int = TensorProto.FLOAT,
        image_like: bool = False,
    ) -> str:
        """Declare a graph input; with ``calibration_shape`` it also gets a calibration sample.

        The sample is unit-Gaussian. With ``image_like`` the second half of its batch is uniform in
        [0, 1) instead (the image-like inputs ``mmopt`` verifies and benchmarks with), so the BN
        statistics cover both kinds of input: networks with non-homogeneous activations (SiLU,
        sigmoid gates) calibrated on one kind otherwise grow their activations layer after layer
        on the other (EfficientNet-B0's logits reach ~100 on uniform inputs).
        """
        self.inputs.append(helper.make_tensor_value_info(self._claim(name), elem_type, list(shape)))
        if calibration_shape is not None:
            sample = self._calib_rng.standard_normal(tuple(calibration_shape), dtype=np.float32)
            if image_like:
                if sample.shape[0] < 2:
                    raise ValueError("image_like calibration needs a calibration batch of at least 2")
                half = sample.shape[0] // 2
                sample[half:] = self._calib_rng.random(sample[half:].shape, dtype=np.float32)
            self._values[name] = sample
        return name

    def output(self, name: str, shape: Sequence[Dim], elem_type: int = TensorProto.FLOAT) -> str:
        # The tensor already exists (it is some node's output); only declare it.
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def param(self, name: str, array: np.ndarray) -> str:
        """Register a weight tensor as an initializer and return its name."""
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), self._claim(name)))
        return name

    def const(self, value: float | Sequence[int], dtype: str = "float32") -> str:
        """A shared constant initializer (scalars for arithmetic, int64 vectors for shapes).

        Scalars are 0-d tensors so they broadcast anywhere and are valid as
        Clip's ``min``/``max`` inputs.
        """
        array = np.asarray(value, dtype=dtype)
        if array.ndim == 0:
            label = f"{float(array):g}" if array.dtype.kind == "f" else str(int(array))
        else:
            label = "_".join(str(v) for v in array.reshape(-1).tolist())
        kind = "" if array.dtype == np.float32 else f".{array.dtype.name}"
        name = f"const{kind}.{label}"
        cached = self._consts.get(name)
        if cached is None:
            self._consts[name] = array
            self.param(name, array)
        elif not np.array_equal(cached, array):
            raise ValueError(f"constant name collision for {name!r}")
        return name

    def node(self, op_type: str, inputs: Sequence[str], name: str, **attrs) -> str:
        """Append a single-output node; its output tensor is named after the node."""
        self.nodes.append(helper.make_node(op_type, list(inputs), [self._claim(name)], name=name, **attrs))
        return name

    def multi_node(self, op_type: str, inputs: Sequence[str], name: str, n_outputs: int, **attrs) -> list[str]:
        """Append a node with several outputs (Split, ...), named ``<name>.0``, ``<name>.1``, ..."""
        self._claim(name)
        outputs = [self._claim(f"{name}.{i}") for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs

    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.graph_name, self.inputs, self.outputs, initializer=self.initializers, doc_string=doc
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="mmopt.models_zoo",
            producer_version="1",
        )
        onnx.checker.check_model(model, full_check=True)
        self._values.clear()  # release the calibration activations
        return model

    # ---------------------------------------------------- calibration values
    def value(self, tensor: str) -> np.ndarray | None:
        """Calibration activation of ``tensor``, or None when it is not tracked."""
        return self._values.get(tensor)

    def evaluate(self, out: str, fn: Callable[..., np.ndarray], *inputs: str) -> str:
        """Record ``fn(*input values)`` as the calibration value of ``out`` when all inputs have one."""
        args = [self._values.get(t) for t in inputs]
        if all(a is not None for a in args):
            self._values[out] = np.asarray(fn(*args), dtype=np.float32)
        return out

    # ------------------------------------------------------------ weight init
    def normal(self, shape: Sequence[int], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def he_normal(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        """Kaiming-normal init for layers followed by ReLU-like activations."""
        return self.normal(shape, math.sqrt(2.0 / fan_in))

    def lecun_normal(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        """Variance-preserving init for linear (un-activated) layers such as classifiers."""
        return self.normal(shape, math.sqrt(1.0 / fan_in))

    def uniform(self, shape: Sequence[int], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, size=shape).astype(np.float32)


# ===================================================== numpy reference ops
# Used only for the calibration pass; NCHW float32 like the ONNX graph.
def _np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int, group: int) -> np.ndarray:
    n, cin = x.shape[:2]
    cout, cin_g, k, _ = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (x.shape[2] - k) // stride + 1
    ow = (x.shape[3] - k) // stride + 1
    if group == 1:
        # im2col + one GEMM
        win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # [n, c, oh, ow, k, k]
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, cin * k * k)
        y = (cols @ w.reshape(cout, -1).T).reshape(n, oh, ow, cout).transpose(0, 3, 1, 2)
    elif group == cin == cout:
        # depthwise: accumulate the k*k shifted, per-channel-scaled views
        y = np.zeros((n, cout, oh, ow), np.float32)
        for i in range(k):
            for j in range(k):
                y += x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] * w[:, 0, i, j, None, None]
    else:
        raise NotImplementedError("calibration supports group=1 and depthwise convolutions only")
    if b is not None:
        y = y + b[:, None, None]
    return y


def _np_maxpool(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride].max(axis=(4, 5))


def _np_hardsigmoid(v: np.ndarray) -> np.ndarray:
    return np.clip(v + 3.0, 0.0, 6.0) / 6.0


# ============================================================== conv layers
def conv(
    g: GraphBuilder,
    x: str,
    name: str,
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    group: int = 1,
    bias: bool = False,
) -> str:
    """Conv with symmetric "same"-style padding (kernel // 2) given as explicit pads."""
    fan_in = (cin // group) * kernel * kernel
    weight = g.he_normal((cout, cin // group, kernel, kernel), fan_in)
    inputs = [x, g.param(f"{name}.weight", weight)]
    b = None
    if bias:
        b = g.normal((cout,), 0.05)
        inputs.append(g.param(f"{name}.bias", b))
    pad = kernel // 2
    y = g.node(
        "Conv",
        inputs,
        name,
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
        dilations=[1, 1],
        group=group,
    )
    return g.evaluate(y, lambda v: _np_conv(v, weight, b, stride, pad, group), x)


def batchnorm(
    g: GraphBuilder, x: str, name: str, channels: int, gamma_scale: float = 1.0, eps: float = 1e-5
) -> str:
    """Inference-mode BatchNormalization with deliberately non-trivial parameters.

    Running mean/var are the calibration statistics of ``x`` perturbed at
    random (mean by ~0.1 std, var by a factor in [0.7, 1.4]); without a
    calibration value they fall back to N(0, 0.2) / U(0.5, 2). gamma and beta
    are random too, so folding BN into the preceding conv is never close to an
    identity. ``gamma_scale`` < 1 is used on the last BN of residual branches
    (the usual small-last-gamma trick) so residual streams grow slowly.
    """
    c = (channels,)
    gamma = g.uniform(c, 0.6, 1.4) * np.float32(gamma_scale)
    beta = g.normal(c, 0.1)
    jitter_mean = g.normal(c, 1.0)
    jitter_var = g.uniform(c, 0.7, 1.4)
    data = g.value(x)
    if data is not None:
        data_mean = data.mean(axis=(0, 2, 3), dtype=np.float64)
        data_var = np.maximum(data.var(axis=(0, 2, 3), dtype=np.float64), 1e-4)
        mean = (data_mean + 0.1 * np.sqrt(data_var) * jitter_mean).astype(np.float32)
        var = (data_var * jitter_var).astype(np.float32)
    else:
        mean = 0.2 * jitter_mean
        var = 2.0 / 1.4 * jitter_var  # U(0.5, 2.0)
    y = g.node(
        "BatchNormalization",
        [
            x,
            g.param(f"{name}.weight", gamma),
            g.param(f"{name}.bias", beta),
            g.param(f"{name}.running_mean", mean),
            g.param(f"{name}.running_var", var),
        ],
        name,
        epsilon=eps,
    )
    scale = (gamma / np.sqrt(var + np.float32(eps)))[:, None, None]
    return g.evaluate(y, lambda v: (v - mean[:, None, None]) * scale + beta[:, None, None], x)


# ============================================================ activations
def relu(g: GraphBuilder, x: str, name: str) -> str:
    return g.evaluate(g.node("Relu", [x], name), lambda v: np.maximum(v, 0.0), x)


def relu6(g: GraphBuilder, x: str, name: str) -> str:
    """ReLU6 as exporters emit it: Clip(x, 0, 6) with constant min/max inputs."""
    y = g.node("Clip", [x, g.const(0.0), g.const(6.0)], name)
    return g.evaluate(y, lambda v: np.clip(v, 0.0, 6.0), x)


def hardsigmoid(g: GraphBuilder, x: str, name: str) -> str:
    """Decomposed hard-sigmoid: Clip(x + 3, 0, 6) / 6."""
    shifted = g.node("Add", [x, g.const(3.0)], f"{name}.add")
    clipped = g.node("Clip", [shifted, g.const(0.0), g.const(6.0)], f"{name}.clip")
    y = g.node("Div", [clipped, g.const(6.0)], f"{name}.div")
    return g.evaluate(y, _np_hardsigmoid, x)


def hardswish(g: GraphBuilder, x: str, name: str) -> str:
    """Decomposed hard-swish: x * Clip(x + 3, 0, 6) / 6  (Add, Clip, Mul, Div)."""
    shifted = g.node("Add", [x, g.const(3.0)], f"{name}.add")
    clipped = g.node("Clip", [shifted, g.const(0.0), g.const(6.0)], f"{name}.clip")
    gated = g.node("Mul", [x, clipped], f"{name}.mul")
    y = g.node("Div", [gated, g.const(6.0)], f"{name}.div")
    return g.evaluate(y, lambda v: v * _np_hardsigmoid(v), x)


def gelu_erf(g: GraphBuilder, x: str, name: str) -> str:
    """Exact GELU, decomposed as exporters write it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    scaled = g.node("Div", [x, g.const(math.sqrt(2.0))], f"{name}.div")
    erf = g.node("Erf", [scaled], f"{name}.erf")
    shifted = g.node("Add", [erf, g.const(1.0)], f"{name}.add")
    gated = g.node("Mul", [x, shifted], f"{name}.mul")
    return g.node("Mul", [gated, g.const(0.5)], f"{name}.mul_half")


def gelu_tanh(g: GraphBuilder, x: str, name: str) -> str:
    """Tanh-approximate GELU: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
    cube = g.node("Pow", [x, g.const(3.0)], f"{name}.pow")
    cube_scaled = g.node("Mul", [cube, g.const(0.044715)], f"{name}.mul_coef")
    inner = g.node("Add", [x, cube_scaled], f"{name}.add_inner")
    inner_scaled = g.node("Mul", [inner, g.const(math.sqrt(2.0 / math.pi))], f"{name}.mul_sqrt_2_over_pi")
    tanh = g.node("Tanh", [inner_scaled], f"{name}.tanh")
    shifted = g.node("Add", [tanh, g.const(1.0)], f"{name}.add_one")
    gated = g.node("Mul", [x, shifted], f"{name}.mul")
    return g.node("Mul", [gated, g.const(0.5)], f"{name}.mul_half")


_ACTIVATIONS = {"relu": relu, "relu6": relu6, "hardswish": hardswish}


def conv_bn_act(
    g: GraphBuilder,
    x: str,
    prefix: str,
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    group: int = 1,
    act: str | None = "relu",
    gamma_scale: float = 1.0,
    conv_bias: bool = False,
    suffix: str = "",
) -> str:
    """The ubiquitous Conv -> BatchNormalization -> activation triple.

    Nodes are named ``<prefix>.conv<suffix>``, ``<prefix>.bn<suffix>`` and
    ``<prefix>.<act><suffix>`` (e.g. ``stage1.block0.conv1`` / ``.bn1`` / ``.relu1``).
    """
    y = conv(g, x, f"{prefix}.conv{suffix}", cin, cout, kernel, stride, group, bias=conv_bias)
    y = batchnorm(g, y, f"{prefix}.bn{suffix}", cout, gamma_scale)
    if act is not None:
        y = _ACTIVATIONS[act](g, y, f"{prefix}.{act}{suffix}")
    return y


# ====================================================== structural ops
def add(g: GraphBuilder, a: str, b: str, name: str) -> str:
    """Elementwise (residual) Add."""
    return g.evaluate(g.node("Add", [a, b], name), np.add, a, b)


def maxpool(g: GraphBuilder, x: str, name: str, kernel: int, stride: int, pad: int) -> str:
    y = g.node(
        "MaxPool", [x], name, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad, pad, pad, pad]
    )
    return g.evaluate(y, lambda v: _np_maxpool(v, kernel, stride, pad), x)


def global_avg_pool(g: GraphBuilder, x: str, name: str) -> str:
    y = g.node("GlobalAveragePool", [x], name)
    return g.evaluate(y, lambda v: v.mean(axis=(2, 3), keepdims=True), x)


def channel_scale(g: GraphBuilder, x: str, gate: str, name: str) -> str:
    """x * gate with a per-channel gate of shape [N,C,1,1] (squeeze-excite)."""
    return g.evaluate(g.node("Mul", [x, gate], name), np.multiply, x, gate)


# ================================================================== heads
def classifier_head(g: GraphBuilder, x: str, channels: int, num_classes: int, name: str = "head") -> str:
    """GlobalAveragePool -> Flatten -> Gemm (weight stored [out, in], transB=1 as torch exports)."""
    pooled = global_avg_pool(g, x, f"{name}.avgpool")
    flat = g.node("Flatten", [pooled], f"{name}.flatten", axis=1)
    return gemm(g, flat, f"{name}.fc", channels, num_classes)


# ======================================================= dense layers
def gemm(g: GraphBuilder, x: str, name: str, fin: int, fout: int, init: str = "lecun") -> str:
    """Fully-connected layer as a single Gemm(x, W^T, b); x must be 2-D."""
    weight = g.he_normal((fout, fin), fin) if init == "he" else g.lecun_normal((fout, fin), fin)
    return g.node(
        "Gemm",
        [x, g.param(f"{name}.weight", weight), g.param(f"{name}.bias", g.normal((fout,), 0.02))],
        name,
        alpha=1.0,
        beta=1.0,
        transB=1,
    )


def linear(g: GraphBuilder, x: str, name: str, fin: int, fout: int, init: str = "lecun") -> str:
    """Fully-connected layer as MatMul(x, W) + b (weight stored [in, out]); works for any rank."""
    weight = g.he_normal((fin, fout), fin) if init == "he" else g.lecun_normal((fin, fout), fin)
    y = g.node("MatMul", [x, g.param(f"{name}.weight", weight)], f"{name}.matmul")
    return g.node("Add", [y, g.param(f"{name}.bias", g.normal((fout,), 0.02))], f"{name}.add")


def layernorm(g: GraphBuilder, x: str, name: str, hidden: int, eps: float = 1e-5) -> str:
    """LayerNorm over the last axis, decomposed the way opset<17 exporters emit it.

    ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul(gamma) -> Add(beta).
    (Opset 17 ReduceMean still takes ``axes`` as an attribute.)
    """
    mean = g.node("ReduceMean", [x], f"{name}.mean", axes=[-1], keepdims=1)
    centered = g.node("Sub", [x, mean], f"{name}.sub")
    sq = g.node("Pow", [centered, g.const(2.0)], f"{name}.pow")
    var = g.node("ReduceMean", [sq], f"{name}.var", axes=[-1], keepdims=1)
    var_eps = g.node("Add", [var, g.const(eps)], f"{name}.add_eps")
    std = g.node("Sqrt", [var_eps], f"{name}.sqrt")
    normed = g.node("Div", [centered, std], f"{name}.div")
    scaled = g.node("Mul", [normed, g.param(f"{name}.weight", g.uniform((hidden,), 0.8, 1.2))], f"{name}.mul_gamma")
    return g.node("Add", [scaled, g.param(f"{name}.bias", g.normal((hidden,), 0.05))], f"{name}.add_beta")
