"""Stateful models with control flow: the shape of a streaming voice-activity detector.

* ``vad_lstm_if``: a Silero-VAD-like model, opset 15, as a scripted PyTorch export writes it.
  Inputs: an audio chunk ``input`` ``[N, 512]``, the LSTM state ``h``/``c`` ``[2, N, 64]`` and the
  sample rate ``sr`` (int64 scalar). Outputs: the speech probability ``output`` ``[N, 1]`` and the
  new state ``hn``/``cn``.

  * A rank check ``If(Size(Shape(input)) == 1)`` (``x.unsqueeze(0)`` for a 1-D chunk): its
    condition is constant once shapes are known, so folding takes the branch.
  * ``If(sr == 16000)`` chooses between two branches, each a whole network with its own weights
    (``Constant`` nodes inside the branch, as the exporter writes them) and its own STFT-like
    front end (a strided Conv over the padded chunk: window 256 / hop 128 at 16 kHz, 128 / 64 at
    8 kHz), magnitude, two Conv + BatchNorm + ReLU encoder layers, a 2-layer LSTM whose initial state is the
    outer ``h``/``c`` (read from the enclosing scope), and a Conv + Sigmoid decoder averaged over
    time. The branch outputs are declared with a type but no shape, as exporters write them.

Weights are drawn from one seeded generator in construction order, so builds are byte-identical.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 15
IR_VERSION = 8
CHUNK = 512
HIDDEN = 64
FEATURES = 64


class _Branch:
    """Nodes of one subgraph; weights become ``Constant`` nodes inside it."""

    def __init__(self, prefix: str, rng: np.random.Generator):
        self.prefix = prefix
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, array) -> str:
        name = f"{self.prefix}.{name}"
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(np.asarray(array), name)))
        return name

    def uniform(self, name: str, shape, bound: float) -> str:
        return self.const(name, self.rng.uniform(-bound, bound, size=shape).astype(np.float32))

    def node(self, op: str, inputs, name: str, outputs: int = 1, **attrs) -> list[str]:
        name = f"{self.prefix}.{name}"
        outs = [name] if outputs == 1 else [f"{name}.{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs

    def one(self, op: str, inputs, name: str, **attrs) -> str:
        return self.node(op, inputs, name, **attrs)[0]


def _stft_basis(window: int) -> np.ndarray:
    """Real and imaginary DFT rows of a Hann-windowed frame: ``[2 * (window // 2 + 1), 1, window]``."""
    bins = window // 2 + 1
    n = np.arange(window)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / window)
    k = np.arange(bins)[:, None]
    real = np.cos(2 * np.pi * k * n / window) * hann
    imag = -np.sin(2 * np.pi * k * n / window) * hann
    return np.concatenate([real, imag])[:, None, :].astype(np.float32) / math.sqrt(window)


def _vad_branch(prefix: str, rng: np.random.Generator, x: str, window: int) -> onnx.GraphProto:
    b = _Branch(prefix, rng)
    hop = window // 2
    bins = window // 2 + 1
    x3 = b.one("Unsqueeze", [x, b.const("axes1", np.array([1], np.int64))], "frame")  # [N, 1, 512]
    pad = b.const("pads", np.array([0, 0, hop, 0, 0, hop], np.int64))
    padded = b.one("Pad", [x3, pad], "pad", mode="reflect")
    spec = b.one("Conv", [padded, b.const("stft.basis", _stft_basis(window))], "stft",
                 strides=[hop])  # [N, 2*bins, T]
    starts, ends = b.const("re.start", np.array([0], np.int64)), b.const("re.end", np.array([bins], np.int64))
    axis = b.const("axis1", np.array([1], np.int64))
    real = b.one("Slice", [spec, starts, ends, axis], "real")
    imag = b.one("Slice", [spec, ends, b.const("im.end", np.array([2 * bins], np.int64)), axis], "imag")
    power = b.one("Add", [b.one("Mul", [real, real], "real2"), b.one("Mul", [imag, imag], "imag2")],
                  "power")
    mag = b.one("Sqrt", [b.one("Add", [power, b.const("eps", np.array(1e-6, np.float32))], "power.eps")],
                "magnitude")  # [N, bins, T]
    y, cin = mag, bins
    for i, stride in enumerate((1, 2)):
        bound = 1.0 / math.sqrt(cin * 3)
        w = b.uniform(f"enc{i}.weight", (FEATURES, cin, 3), bound * math.sqrt(3))
        bias = b.uniform(f"enc{i}.bias", (FEATURES,), bound)
        y = b.one("Conv", [y, w, bias], f"enc{i}.conv", pads=[1, 1], strides=[stride])
        bn = [b.const(f"enc{i}.bn.{k}", b.rng.uniform(lo, hi, FEATURES).astype(np.float32))
              for k, lo, hi in (("scale", 0.5, 1.5), ("bias", -0.2, 0.2), ("mean", -0.1, 0.1),
                                ("var", 0.02, 0.1))]
        y = b.one("Relu", [b.one("BatchNormalization", [y, *bn], f"enc{i}.bn")], f"enc{i}.relu")
        cin = FEATURES
    seq = b.one("Transpose", [y], "to_time_major", perm=[2, 0, 1])  # [T, N, 64]
    bound = 1.0 / math.sqrt(HIDDEN)
    hs, cs = [], []
    for layer in range(2):
        index = b.const(f"lstm{layer}.index", np.array([layer], np.int64))
        h0 = b.one("Gather", ["h", index], f"lstm{layer}.h0", axis=0)  # outer-scope state
        c0 = b.one("Gather", ["c", index], f"lstm{layer}.c0", axis=0)
        w = b.uniform(f"lstm{layer}.W", (1, 4 * HIDDEN, FEATURES if layer == 0 else HIDDEN), bound)
        r = b.uniform(f"lstm{layer}.R", (1, 4 * HIDDEN, HIDDEN), bound)
        bias = b.uniform(f"lstm{layer}.B", (1, 8 * HIDDEN), bound)
        y_all, y_h, y_c = b.node("LSTM", [seq, w, r, bias, "", h0, c0], f"lstm{layer}", outputs=3,
                                 hidden_size=HIDDEN)
        seq = b.one("Squeeze", [y_all, axis], f"lstm{layer}.squeeze")  # [T, N, 64]
        hs.append(y_h)
        cs.append(y_c)
    hn = b.one("Concat", hs, "hn", axis=0)
    cn = b.one("Concat", cs, "cn", axis=0)
    feat = b.one("Relu", [b.one("Transpose", [seq], "to_channels", perm=[1, 2, 0])], "dec.relu")
    w = b.uniform("dec.weight", (1, HIDDEN, 1), 4 * bound)
    logit = b.one("Conv", [feat, w, b.const("dec.bias", np.zeros(1, np.float32))], "dec.conv")
    prob = b.one("Sigmoid", [logit], "dec.sigmoid")  # [N, 1, T]
    prob = b.one("Squeeze", [prob, axis], "dec.squeeze")  # [N, T]
    mean = b.one("ReduceMean", [prob], "dec.mean", axes=[1], keepdims=0)  # [N]
    out = b.one("Unsqueeze", [mean, axis], "dec.unsqueeze")  # [N, 1]
    outputs = [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in (out, hn, cn)]
    return helper.make_graph(b.nodes, prefix, [], outputs)


def _antialias_branches(rng: np.random.Generator) -> tuple[onnx.GraphProto, onnx.GraphProto]:
    """``if sr != 16000: if sr % 16000 == 0: x = lowpass(x)`` as a scripted export writes it:
    nested ``If`` nodes, and ``Identity`` of the enclosing scope's ``x`` in each branch that leaves
    it unchanged (the inner else and the outer else pass the same outer value through)."""
    def passthrough(tag: str) -> onnx.GraphProto:
        node = helper.make_node("Identity", ["x"], [f"x.{tag}"], name=f"antialias.{tag}")
        return helper.make_graph([node], f"antialias_{tag}", [], [
            helper.make_tensor_value_info(f"x.{tag}", TensorProto.FLOAT, None)])

    def const(name, array):
        return helper.make_node("Constant", [], [name], name=name,
                                value=numpy_helper.from_array(np.asarray(array), name))

    taps = np.hanning(7)[1:-1]
    taps = (taps / taps.sum() * rng.uniform(0.9, 1.1, taps.shape)).astype(np.float32)
    lowpass = helper.make_graph([
        const("antialias.axis1", np.array([1], np.int64)),
        const("antialias.taps", taps.reshape(1, 1, -1)),
        helper.make_node("Unsqueeze", ["x", "antialias.axis1"], ["antialias.x3"],
                         name="antialias.unsqueeze"),
        helper.make_node("Conv", ["antialias.x3", "antialias.taps"], ["antialias.conv"],
                         name="antialias.conv", pads=[2, 2]),
        helper.make_node("Squeeze", ["antialias.conv", "antialias.axis1"], ["x.filtered"],
                         name="antialias.squeeze"),
    ], "antialias_lowpass", [], [helper.make_tensor_value_info("x.filtered", TensorProto.FLOAT, None)])
    inner = helper.make_graph([
        const("antialias.zero", np.array(0, np.int64)),
        const("antialias.k16000", np.array(16000, np.int64)),
        helper.make_node("Mod", ["sr", "antialias.k16000"], ["antialias.rem"], name="antialias.rem"),
        helper.make_node("Equal", ["antialias.rem", "antialias.zero"], ["antialias.is_multiple"],
                         name="antialias.is_multiple"),
        helper.make_node("If", ["antialias.is_multiple"], ["x.inner"], name="antialias.if_multiple",
                         then_branch=lowpass, else_branch=passthrough("not_multiple")),
    ], "antialias_other_rate", [], [helper.make_tensor_value_info("x.inner", TensorProto.FLOAT, None)])
    return inner, passthrough("at_16k")


def build_vad_lstm_if(seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, CHUNK]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, batch, HIDDEN]),
        helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, batch, HIDDEN]),
    ]
    nodes = [
        helper.make_node("Shape", ["input"], ["input.shape"], name="rank.shape"),
        helper.make_node("Size", ["input.shape"], ["input.rank"], name="rank.size"),
        helper.make_node("Equal", ["input.rank", "one"], ["is_1d"], name="rank.is_1d"),
    ]
    unsqueeze = helper.make_graph(
        [helper.make_node("Unsqueeze", ["input", "zero_axis"], ["x.batched"], name="rank.unsqueeze")],
        "rank_then", [], [helper.make_tensor_value_info("x.batched", TensorProto.FLOAT, None)])
    keep = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["x.as_is"], name="rank.identity")],
        "rank_else", [], [helper.make_tensor_value_info("x.as_is", TensorProto.FLOAT, None)])
    nodes.append(helper.make_node("If", ["is_1d"], ["x.ranked"], name="rank.if",
                                  then_branch=unsqueeze, else_branch=keep))
    # samples are clamped to [-1, 1] before anything else
    nodes.append(helper.make_node("Clip", ["x.ranked", "minus_one_f", "one_f"], ["x"], name="clamp"))
    other_rate, at_16k = _antialias_branches(rng)
    nodes.append(helper.make_node("Equal", ["sr", "sr16k"], ["is_16k"], name="sr.is_16k"))
    nodes.append(helper.make_node("Not", ["is_16k"], ["sr.other"], name="antialias.other_rate"))
    nodes.append(helper.make_node("If", ["sr.other"], ["x.rate"], name="antialias.if",
                                  then_branch=other_rate, else_branch=at_16k))
    then16 = _vad_branch("sr16k_branch", rng, "x.rate", window=256)
    else8 = _vad_branch("sr8k_branch", rng, "x.rate", window=128)
    nodes.append(helper.make_node("If", ["is_16k"], ["output", "hn", "cn"], name="sr.if",
                                  then_branch=then16, else_branch=else8))
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 1]),
        helper.make_tensor_value_info("hn", TensorProto.FLOAT, [2, batch, HIDDEN]),
        helper.make_tensor_value_info("cn", TensorProto.FLOAT, [2, batch, HIDDEN]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        numpy_helper.from_array(np.array(16000, np.int64), "sr16k"),
        numpy_helper.from_array(np.array(-1, np.float32), "minus_one_f"),
        numpy_helper.from_array(np.array(1, np.float32), "one_f"),
    ]
    graph = helper.make_graph(nodes, "vad_lstm_if", inputs, outputs, initializer=initializers,
                              doc_string="Silero-VAD-like: If on sr between two LSTM networks")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="mmopt.models_zoo",
                              producer_version="1")
    onnx.checker.check_model(model, full_check=True)
    return model


__all__ = ["build_vad_lstm_if"]
