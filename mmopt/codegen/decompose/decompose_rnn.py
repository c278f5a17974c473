"""decompose_rnn: RNN, GRU and LSTM unrolled over their (static) sequence length.

For each direction ``d`` (forward; reverse; both for ``bidirectional``), with ``W[d]``, ``R[d]`` the
stacked gate weights and ``Wb[d]``, ``Rb[d]`` the two bias halves, the input projection of all time
steps is one MatMul, ``XW = X · W[d]ᵀ + Wb[d]`` (``[T, B, G·H]``), and each step ``t`` then needs
only the recurrent product ``H_{t-1} · R[d]ᵀ``:

* RNN:  ``H_t = f(XW_t + H_{t-1}·Rᵀ + Rb)``
* GRU:  ``z = f(XW_z + H·R_zᵀ + Rb_z)``, ``r = f(XW_r + H·R_rᵀ + Rb_r)``,
  ``h = g(XW_h + (r ⊙ H)·R_hᵀ + Rb_h)`` (``linear_before_reset=0``) or
  ``h = g(XW_h + r ⊙ (H·R_hᵀ + Rb_h))`` (``linear_before_reset=1``), ``H_t = (1 − z) ⊙ h + z ⊙ H``
* LSTM: ``i = f(XW_i + H·R_iᵀ + Rb_i + P_i ⊙ C)``, ``f = f(XW_f + H·R_fᵀ + Rb_f + P_f ⊙ C)``
  (``f = 1 − i`` with ``input_forget``), ``c = g(XW_c + H·R_cᵀ + Rb_c)``, ``C_t = f ⊙ C + i ⊙ c``,
  ``o = f(XW_o + H·R_oᵀ + Rb_o + P_o ⊙ C_t)``, ``H_t = o ⊙ h(C_t)``

(gate order in the weights: GRU ``z, r, h``; LSTM ``i, o, f, c``; peepholes ``P = [P_i, P_o, P_f]``).
``clip`` clamps every gate's pre-activation to ``[-clip, clip]``. The reverse direction runs the
same recurrence over the time-reversed sequence and writes its outputs back in original order.

With ``sequence_lens``, batch entry ``b`` only has ``len[b]`` steps: its state stops changing after
them (``Y_h``/``Y_c`` are the last valid state) and its ``Y`` rows past them are 0; the reverse
direction reverses each entry within its own length. Masks and the reversal index are computed with
graph ops, so ``sequence_lens`` may be a runtime input.

``layout=1`` (batch-major ``X``, ``Y``, states) is transposed to and from the time-major form.
Weights may be runtime inputs too: everything is expressed with graph ops, and TVM folds the weight
slicing when the weights are constants. The sequence length must be static: that is what unrolling
needs, and the rule says so when it is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from mmopt.errors import ModelLoadError
from mmopt.extend.rules import (
    Context,
    Decomposition,
    attr,
    constant,
    dtype_of,
    ints,
    present,
    static_shape,
)

#: the most time steps a node is unrolled to (the graph grows linearly with it)
MAX_STEPS = 4096

#: activation name -> (ONNX op or None for a composite, default alpha, default beta)
_ACTIVATIONS = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "leakyrelu": ("LeakyRelu", 0.01, None),
    "thresholdedrelu": ("ThresholdedRelu", 1.0, None),
    "elu": ("Elu", 1.0, None),
    "hardsigmoid": ("HardSigmoid", 0.2, 0.5),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "scaledtanh": (None, 1.0, 1.0),
    "affine": (None, 1.0, 0.0),
}

#: op -> (gates, default activations per direction)
_CELLS = {"RNN": (1, ["Tanh"]), "GRU": (3, ["Sigmoid", "Tanh"]), "LSTM": (4, ["Sigmoid", "Tanh", "Tanh"])}


def check_states(node: ir.Node, op_type: str) -> None:
    """Raise :class:`ModelLoadError` when a static ``initial_h``/``initial_c`` (inputs 5, 6) does
    not have the state shape ``[directions, batch, hidden]`` (``[batch, directions, hidden]`` with
    ``layout=1``). Nothing reads that shape before the recurrence does: onnxruntime only fails when
    the node runs (an If branch it did not take), and the fused kernel squeezed such a state into
    a TVM error at code generation (fuzzing: a Gather's axis 0 -> -1 in front of initial_c)."""
    if node.domain not in ("", "ai.onnx"):  # a variant's weights are laid out otherwise
        return
    x_shape, r_shape = static_shape(node.inputs[0]), static_shape(present(node, 2))
    if x_shape is None or len(x_shape) != 3 or r_shape is None or len(r_shape) != 3:
        return
    layout = attr(node, "layout", 0)
    batch = x_shape[0] if layout else x_shape[1]
    hidden = attr(node, "hidden_size", None) or r_shape[2]  # R: [directions, gates·hidden, hidden]
    directions = 2 if attr(node, "direction", "forward") == "bidirectional" else 1
    expected = (batch, directions, hidden) if layout else (directions, batch, hidden)
    names = ("initial_h", "initial_c") if op_type == "LSTM" else ("initial_h",)
    for index, name in enumerate(names, start=5):
        shape = static_shape(present(node, index))
        if shape is not None and shape != expected:
            order = "batch, directions, hidden" if layout else "directions, batch, hidden"
            raise ModelLoadError(
                f"invalid model: node {node.name or '(unnamed)'} ({node.op_type}): {name} has shape "
                f"{list(shape)}, expected {list(expected)} ([{order}])")


class _Builder:
    """Small helpers over a tape for one node's unrolling (dtype-aware constants)."""

    def __init__(self, tape: ir.tape.Tape, dtype: ir.DataType):
        self.tape = tape
        self.np_dtype = dtype.numpy()

    def op(self, op_type: str, *inputs, **attributes) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attributes or None)

    def scalar(self, value: float) -> ir.Value:
        return constant(self.tape, np.asarray(value, dtype=self.np_dtype))

    def take(self, x: ir.Value, index: int, axis: int = 0) -> ir.Value:
        """``x[index]`` along ``axis`` (the axis removed)."""
        return self.op("Gather", x, ints(self.tape, index), axis=axis)

    def cols(self, x: ir.Value, start: int, stop: int, axis: int = -1) -> ir.Value:
        return self.op("Slice", x, ints(self.tape, [start]), ints(self.tape, [stop]),
                       ints(self.tape, [axis]))

    def activation(self, name: str, x: ir.Value, alpha: float | None, beta: float | None
                   ) -> ir.Value:
        op_type, default_alpha, default_beta = _ACTIVATIONS[name.lower()]
        alpha = default_alpha if alpha is None else alpha
        beta = default_beta if beta is None else beta
        if name.lower() == "scaledtanh":
            return self.op("Mul", self.scalar(alpha),
                           self.op("Tanh", self.op("Mul", self.scalar(beta), x)))
        if name.lower() == "affine":
            return self.op("Add", self.op("Mul", self.scalar(alpha), x), self.scalar(beta))
        attributes = {}
        if alpha is not None:
            attributes["alpha"] = float(alpha)
        if beta is not None:
            attributes["beta"] = float(beta)
        return self.op(op_type, x, **attributes)


def _activations(node: ir.Node, directions: int, op_type: str | None = None
                 ) -> list[tuple[str, float | None, float | None]]:
    """Per activation slot (all directions), its name and the alpha/beta it consumes.

    ``activation_alpha``/``activation_beta`` are consumed in order by the activations that take the
    parameter (as onnxruntime reads them); others use the operator's default.
    """
    defaults = _CELLS[op_type or node.op_type][1]
    names = list(attr(node, "activations", None) or defaults * directions)
    if len(names) == len(defaults) and directions == 2:
        names = names * 2
    alphas = list(attr(node, "activation_alpha", None) or [])
    betas = list(attr(node, "activation_beta", None) or [])
    out = []
    for name in names:
        _, default_alpha, default_beta = _ACTIVATIONS[name.lower()]
        alpha = alphas.pop(0) if default_alpha is not None and alphas else None
        beta = betas.pop(0) if default_beta is not None and betas else None
        out.append((name, alpha, beta))
    return out


class UnrollRecurrence(Decomposition):
    """RNN / GRU / LSTM -> per-time-step MatMul and elementwise ops (see the module docstring)."""

    name = "unroll_recurrence"
    op_types = ("RNN", "GRU", "LSTM")

    # The two products are hooks, so a variant with other weights (onnxruntime's
    # DynamicQuantizeLSTM, :mod:`mmopt.ops.microsoft.quantized`) reuses the recurrence.

    def cell(self, node: ir.Node) -> str:
        """The recurrence the node computes: "RNN", "GRU" or "LSTM"."""
        return node.op_type

    def input_projection(self, b: _Builder, node: ir.Node, xs: ir.Value, d: int) -> ir.Value:
        """``X · W[d]ᵀ`` for all steps at once: ``[T, B, I]`` -> ``[T, B, G·H]``."""
        return b.op("MatMul", xs, b.op("Transpose", b.take(node.inputs[1], d), perm=[1, 0]))

    def recurrent_weights(self, b: _Builder, node: ir.Node, d: int):
        """What :meth:`recurrent_product` needs for direction ``d``: here ``R[d]ᵀ`` ([H, G·H])."""
        return b.op("Transpose", b.take(node.inputs[2], d), perm=[1, 0])

    def recurrent_product(self, b: _Builder, node: ir.Node, h: ir.Value, weights) -> ir.Value:
        """``H · R[d]ᵀ`` ([B, G·H]) for the LSTM and RNN cells."""
        return b.op("MatMul", h, weights)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if ctx.opset < 13:
            return f"opset {ctx.opset} < 13 (Slice/Squeeze with tensor inputs are needed)"
        x_shape = static_shape(node.inputs[0])
        w_shape = static_shape(node.inputs[1])
        if x_shape is None or len(x_shape) != 3:
            return "the input X has no static 3-D shape (the sequence length must be known)"
        if w_shape is None or len(w_shape) != 3:
            return "the weights W have no static shape"
        if dtype_of(node.inputs[0]) is None:
            return "the input type is unknown"
        steps = x_shape[1] if attr(node, "layout", 0) else x_shape[0]
        if steps > MAX_STEPS:
            return f"{steps} time steps; unrolled up to {MAX_STEPS}"
        directions = 2 if attr(node, "direction", "forward") == "bidirectional" else 1
        try:
            acts = _activations(node, directions, self.cell(node))
        except KeyError as exc:
            return f"activation {exc.args[0]} is not supported"
        per_direction = len(_CELLS[self.cell(node)][1])
        if len(acts) != per_direction * directions:
            return f"expected {per_direction * directions} activations, got {len(acts)}"
        check_states(node, self.cell(node))
        return None

    def rewrite(self, node: ir.Node, tape: ir.tape.Tape, ctx: Context) -> Sequence[ir.Value | None]:
        op_type = self.cell(node)
        gates = _CELLS[op_type][0]
        b = _Builder(tape, dtype_of(node.inputs[0]))
        x, w = node.inputs[0], node.inputs[1]
        bias, lens = present(node, 3), present(node, 4)
        h0 = present(node, 5)
        c0 = present(node, 6) if op_type == "LSTM" else None
        peep = present(node, 7) if op_type == "LSTM" else None
        layout = attr(node, "layout", 0)
        direction = attr(node, "direction", "forward")
        hidden = attr(node, "hidden_size", None) or static_shape(w)[1] // gates
        clip = attr(node, "clip", None)
        directions = 2 if direction == "bidirectional" else 1
        acts = _activations(node, directions, op_type)
        per_direction = len(_CELLS[op_type][1])
        x_shape = static_shape(x)
        steps, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])

        if layout:  # batch-major -> time-major
            x = b.op("Transpose", x, perm=[1, 0, 2])
            h0 = b.op("Transpose", h0, perm=[1, 0, 2]) if h0 is not None else None
            c0 = b.op("Transpose", c0, perm=[1, 0, 2]) if c0 is not None else None

        valid = reverse_index = None
        if lens is not None:
            # valid[t, b] = t < len[b]; reverse_index[t, b] = len[b]-1-t if valid else t
            t_col = constant(tape, np.arange(steps, dtype=np.int64).reshape(steps, 1))
            lens64 = b.op("Unsqueeze", b.op("Cast", lens, to=ir.DataType.INT64), ints(tape, [0]))
            valid = b.op("Less", t_col, lens64)
            reverse_index = b.op("Where", valid,
                                 b.op("Sub", b.op("Sub", lens64, ints(tape, 1)), t_col),
                                 b.op("Expand", t_col, ints(tape, [steps, batch])))

        ys, hs, cs = [], [], []
        for d in range(directions):
            backward = direction == "reverse" or d == 1
            f_act, g_act, h_act = (acts[d * per_direction:(d + 1) * per_direction] + [None] * 3)[:3]
            xs = x
            if backward:
                xs = self._reverse(b, x, reverse_index, steps)
            # input projection of every step at once: [T, B, G*H]
            xw = self.input_projection(b, node, xs, d)
            wb = rb = None
            if bias is not None:
                bias_d = b.take(bias, d)
                wb, rb = b.cols(bias_d, 0, gates * hidden), b.cols(bias_d, gates * hidden,
                                                                    2 * gates * hidden)
            if op_type == "GRU":
                if wb is not None:
                    # z and r take both bias halves up front; h adds Wb_h here, Rb_h in the cell
                    xw = b.op("Add", xw, b.op("Concat", b.op("Add", b.cols(wb, 0, 2 * hidden),
                                                             b.cols(rb, 0, 2 * hidden)),
                                              b.cols(wb, 2 * hidden, 3 * hidden), axis=0))
            elif wb is not None:
                xw = b.op("Add", xw, b.op("Add", wb, rb))
            zeros = constant(tape, np.zeros((batch, hidden), dtype=b.np_dtype))
            h = b.take(h0, d) if h0 is not None else zeros
            c = (b.take(c0, d) if c0 is not None else zeros) if op_type == "LSTM" else None
            r_t = self.recurrent_weights(b, node, d)  # [H, G*H]
            p = b.take(peep, d) if peep is not None else None
            outs = []
            for t in range(steps):
                step_valid = b.op("Unsqueeze", b.take(valid, t), ints(tape, [1])) \
                    if valid is not None else None
                x_t = b.take(xw, t)  # [B, G*H]
                if op_type == "RNN":
                    new_h = b.activation(*f_act[:1], self._clip(b, b.op(
                        "Add", x_t, self.recurrent_product(b, node, h, r_t)), clip), *f_act[1:])
                    new_c = None
                elif op_type == "GRU":
                    new_h = self._gru(b, node, x_t, h, r_t, rb, hidden, clip, f_act, g_act)
                    new_c = None
                else:
                    new_h, new_c = self._lstm(b, node, x_t, h, c, r_t, p, hidden, clip, f_act,
                                              g_act, h_act)
                if step_valid is not None:
                    y_t = b.op("Where", step_valid, new_h, zeros)
                    h = b.op("Where", step_valid, new_h, h)
                    c = b.op("Where", step_valid, new_c, c) if new_c is not None else c
                else:
                    y_t, h = new_h, new_h
                    c = new_c if new_c is not None else c
                outs.append(b.op("Unsqueeze", y_t, ints(tape, [0])))
            y_d = b.op("Concat", *outs, axis=0) if len(outs) > 1 else outs[0]  # [T, B, H]
            if backward:
                y_d = self._reverse(b, y_d, reverse_index, steps)
            ys.append(b.op("Unsqueeze", y_d, ints(tape, [1])))  # [T, 1, B, H]
            hs.append(b.op("Unsqueeze", h, ints(tape, [0])))
            if c is not None:
                cs.append(b.op("Unsqueeze", c, ints(tape, [0])))

        y = b.op("Concat", *ys, axis=1) if directions > 1 else ys[0]
        y_h = b.op("Concat", *hs, axis=0) if directions > 1 else hs[0]
        y_c = (b.op("Concat", *cs, axis=0) if directions > 1 else cs[0]) if cs else None
        if layout:
            y = b.op("Transpose", y, perm=[2, 0, 1, 3])
            y_h = b.op("Transpose", y_h, perm=[1, 0, 2])
            y_c = b.op("Transpose", y_c, perm=[1, 0, 2]) if y_c is not None else None
        return [y, y_h, y_c][:len(node.outputs)]

    @staticmethod
    def _clip(b: _Builder, x: ir.Value, clip) -> ir.Value:
        if clip is None:
            return x
        return b.op("Clip", x, b.scalar(-clip), b.scalar(clip))

    @staticmethod
    def _reverse(b: _Builder, x: ir.Value, reverse_index: ir.Value | None, steps: int) -> ir.Value:
        """Reverse ``x`` ([T, B, ...]) in time: entirely, or per batch entry within its length."""
        if reverse_index is None:
            return b.op("Gather", x, ints(b.tape, list(range(steps - 1, -1, -1))), axis=0)
        index = b.op("Unsqueeze", reverse_index, ints(b.tape, [2]))
        index = b.op("Expand", index, b.op("Shape", x))
        return b.op("GatherElements", x, index, axis=0)

    def _gru(self, b, node, x_t, h, r_t, rb, hidden, clip, f_act, g_act):
        linear_before_reset = attr(node, "linear_before_reset", 0)
        hr_zr = b.op("MatMul", h, b.cols(r_t, 0, 2 * hidden))  # [B, 2H]
        zr = b.op("Add", b.cols(x_t, 0, 2 * hidden), hr_zr)
        z = b.activation(f_act[0], self._clip(b, b.cols(zr, 0, hidden), clip), *f_act[1:])
        r = b.activation(f_act[0], self._clip(b, b.cols(zr, hidden, 2 * hidden), clip), *f_act[1:])
        r_h = b.cols(r_t, 2 * hidden, 3 * hidden)  # [H, H]
        rb_h = b.cols(rb, 2 * hidden, 3 * hidden) if rb is not None else None
        if linear_before_reset:
            hh = b.op("MatMul", h, r_h)
            if rb_h is not None:
                hh = b.op("Add", hh, rb_h)
            pre = b.op("Add", b.cols(x_t, 2 * hidden, 3 * hidden), b.op("Mul", r, hh))
        else:
            hh = b.op("MatMul", b.op("Mul", r, h), r_h)
            if rb_h is not None:
                hh = b.op("Add", hh, rb_h)
            pre = b.op("Add", b.cols(x_t, 2 * hidden, 3 * hidden), hh)
        cand = b.activation(g_act[0], self._clip(b, pre, clip), *g_act[1:])
        # H_t = (1 - z) * h + z * H  =  h + z * (H - h)
        return b.op("Add", cand, b.op("Mul", z, b.op("Sub", h, cand)))

    def _lstm(self, b, node, x_t, h, c, r_t, p, hidden, clip, f_act, g_act, h_act):
        pre = b.op("Add", x_t, self.recurrent_product(b, node, h, r_t))  # [B, 4H]: i, o, f, c

        def gate(k):
            return b.cols(pre, k * hidden, (k + 1) * hidden)

        pre_i, pre_o, pre_f, pre_c = gate(0), gate(1), gate(2), gate(3)
        if p is not None:
            pre_i = b.op("Add", pre_i, b.op("Mul", b.cols(p, 0, hidden), c))
            pre_f = b.op("Add", pre_f, b.op("Mul", b.cols(p, 2 * hidden, 3 * hidden), c))
        i = b.activation(f_act[0], self._clip(b, pre_i, clip), *f_act[1:])
        if attr(node, "input_forget", 0):
            f = b.op("Sub", b.scalar(1.0), i)
        else:
            f = b.activation(f_act[0], self._clip(b, pre_f, clip), *f_act[1:])
        cand = b.activation(g_act[0], self._clip(b, pre_c, clip), *g_act[1:])
        new_c = b.op("Add", b.op("Mul", f, c), b.op("Mul", i, cand))
        if p is not None:
            pre_o = b.op("Add", pre_o, b.op("Mul", b.cols(p, hidden, 2 * hidden), new_c))
        o = b.activation(f_act[0], self._clip(b, pre_o, clip), *f_act[1:])
        new_h = b.op("Mul", o, b.activation(h_act[0], new_c, *h_act[1:]))
        return new_h, new_c


class FuseLSTM(Decomposition):
    """The plain float32 LSTM -> one ``mmopt::FusedLSTM`` node, imported as one recurrence kernel
    (:mod:`mmopt.codegen.fused_lstm`); anything else is left to :class:`UnrollRecurrence`."""

    name = "fuse_lstm"
    op_types = ("LSTM",)

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        from mmopt.codegen.fused_lstm import OP_TYPE

        return super().wanted(node, ctx) and OP_TYPE in ctx.supported  # the importer takes it

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        x_shape = static_shape(node.inputs[0])
        w_shape = static_shape(node.inputs[1])
        if x_shape is None or len(x_shape) != 3 or w_shape is None or len(w_shape) != 3:
            return "no static shapes"
        check_states(node, "LSTM")
        if dtype_of(node.inputs[0]) != ir.DataType.FLOAT:
            return "not float32"
        if attr(node, "direction", "forward") not in ("forward", "reverse"):
            return "bidirectional (unrolled instead)"
        if attr(node, "layout", 0) or attr(node, "input_forget", 0) or attr(node, "clip", None):
            return "layout, input_forget or clip set (unrolled instead)"
        acts = [a.lower() for a in (attr(node, "activations", None) or [])]
        if acts and acts != ["sigmoid", "tanh", "tanh"]:
            return "non-default activations (unrolled instead)"
        if present(node, 4) is not None or present(node, 7) is not None:
            return "sequence_lens or peepholes (unrolled instead)"
        return None

    def rewrite(self, node: ir.Node, tape: ir.tape.Tape, ctx: Context) -> Sequence[ir.Value | None]:
        from mmopt.codegen.fused_lstm import DOMAIN, OP_TYPE

        ctx.model.opset_imports.setdefault(DOMAIN, 1)
        inputs = [present(node, i) for i in range(min(len(node.inputs), 7))]
        # drop sequence_lens (index 4, absent here): the custom op takes X, W, R, B, h0, c0
        args = inputs[:4] + [None] * (4 - len(inputs[:4])) + inputs[5:7]
        while args and args[-1] is None:
            args.pop()
        return tape.op_multi_out(OP_TYPE, args, {"direction": attr(node, "direction", "forward")},
                                 num_outputs=3, domain=DOMAIN)


RULES = (FuseLSTM(), UnrollRecurrence())
