"""Recurrent models: ONNX LSTM and GRU as PyTorch's exporter writes them, deterministic weights.

* ``lstm_classifier``: batch-first ``[N, 16, 32]`` sequence -> Transpose -> 2-layer LSTM (hidden 64)
  -> last layer's final hidden state -> Gemm -> 10 logits.
* ``gru_tagger``: batch-first ``[N, 16, 24]`` -> Transpose -> bidirectional GRU (hidden 32,
  ``linear_before_reset=1`` as PyTorch's GRU computes) -> both directions' outputs per step ->
  MatMul + Add -> ``[N, 16, 12]`` per-step tag scores.

Weights are drawn like PyTorch's default init, ``U(-1/sqrt(H), 1/sqrt(H))``, so activations stay in
the gates' working range. The gate order and layouts are ONNX's (LSTM ``iofc``, GRU ``zrh``; ``W``
``[dirs, G*H, I]``, ``R`` ``[dirs, G*H, H]``, ``B`` ``[dirs, 2*G*H]``).
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from ._graph import Dim, GraphBuilder, gemm


def _recurrent(g: GraphBuilder, op: str, x: str, name: str, input_size: int, hidden: int,
               directions: int = 1, **attrs) -> tuple[str, str]:
    """One LSTM/GRU node with PyTorch-style weights; returns (Y, Y_h) names."""
    gates = {"LSTM": 4, "GRU": 3}[op]
    bound = 1.0 / math.sqrt(hidden)
    w = g.param(f"{name}.W", g.uniform((directions, gates * hidden, input_size), -bound, bound))
    r = g.param(f"{name}.R", g.uniform((directions, gates * hidden, hidden), -bound, bound))
    b = g.param(f"{name}.B", g.uniform((directions, 2 * gates * hidden), -bound, bound))
    outputs = [g._claim(f"{name}.Y"), g._claim(f"{name}.Y_h")]  # noqa: SLF001 - multi-output node
    if op == "LSTM":
        outputs.append(g._claim(f"{name}.Y_c"))  # noqa: SLF001
    direction = "bidirectional" if directions == 2 else "forward"
    g.nodes.append(helper.make_node(op, [x, w, r, b], outputs, name=name, hidden_size=hidden,
                                    direction=direction, **attrs))
    return outputs[0], outputs[1]


def build_lstm_classifier(seed: int = 0, batch: Dim = "N", steps: int = 16, features: int = 32,
                          hidden: int = 64, num_classes: int = 10) -> onnx.ModelProto:
    g = GraphBuilder("lstm_classifier", seed)
    x = g.input("input", [batch, steps, features])
    x = g.node("Transpose", [x], "to_time_major", perm=[1, 0, 2])  # [T, N, F]
    y, _ = _recurrent(g, "LSTM", x, "lstm0", features, hidden)
    y = g.node("Squeeze", [y, g.const([1], "int64")], "lstm0.squeeze")  # [T, N, H]
    _, h = _recurrent(g, "LSTM", y, "lstm1", hidden, hidden)
    h = g.node("Squeeze", [h, g.const([0], "int64")], "lstm1.last")  # [N, H]
    logits = gemm(g, h, "head", hidden, num_classes)
    g.output(logits, [batch, num_classes])
    return g.model("2-layer LSTM sequence classifier, batch-first [N,16,32] -> 10 logits")


def build_gru_tagger(seed: int = 0, batch: Dim = "N", steps: int = 16, features: int = 24,
                     hidden: int = 32, num_tags: int = 12) -> onnx.ModelProto:
    g = GraphBuilder("gru_tagger", seed)
    x = g.input("input", [batch, steps, features])
    x = g.node("Transpose", [x], "to_time_major", perm=[1, 0, 2])  # [T, N, F]
    y, _ = _recurrent(g, "GRU", x, "gru", features, hidden, directions=2, linear_before_reset=1)
    y = g.node("Transpose", [y], "gru.steps", perm=[0, 2, 1, 3])  # [T, N, 2, H]
    y = g.node("Reshape", [y, g.const([0, 0, 2 * hidden], "int64")], "gru.concat")  # [T, N, 2H]
    w = g.param("tags.weight", g.uniform((2 * hidden, num_tags), -0.2, 0.2))
    b = g.param("tags.bias", g.uniform((num_tags,), -0.1, 0.1))
    y = g.node("MatMul", [y, w], "tags.matmul")
    y = g.node("Add", [y, b], "tags")
    y = g.node("Transpose", [y], "to_batch_major", perm=[1, 0, 2])  # [N, T, tags]
    g.output(y, [batch, steps, num_tags])
    return g.model("bidirectional GRU tagger, batch-first [N,16,24] -> [N,16,12] tag scores")


__all__ = ["build_gru_tagger", "build_lstm_classifier"]
