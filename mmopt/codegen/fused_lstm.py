"""The common LSTM as one kernel per layer instead of an unrolled graph.

Unrolled (:mod:`mmopt.codegen.decompose.decompose_rnn`), every time step of an LSTM is a handful of
tiny kernels (the recurrent matrix-vector product, the gates, the state update) plus the virtual
machine's allocations between them: on the zoo's 2-layer, 16-step classifier about 130 calls of a
microsecond each, 4x slower than onnxruntime's fused kernel. The plain case -- forward or
reverse direction, time-major layout, default activations (sigmoid, tanh, tanh), no clip, no
peepholes, no ``input_forget``, no ``sequence_lens`` -- is instead rewritten (before import) to one
``mmopt::FusedLSTM`` node that the importer turns into:

* the input projection of all steps, ``XW = X · Wᵀ + Wb + Rb`` (one matmul, Relax ops), and
* one kernel running the recurrence: per step ``g = XW_t + H · Rᵀ`` (``Rᵀ`` laid out
  ``[H, 4H]`` so the inner loop runs along the gates), then ``C = σ(g_f) ⊙ C + σ(g_i) ⊙ tanh(g_c)``
  and ``H = σ(g_o) ⊙ tanh(C)`` (ONNX gate order ``i, o, f, c``). σ and tanh are computed from an
  exponential written as vectorizable arithmetic (:func:`_exp`), accurate to a few float32 ulps.

Other LSTMs (and RNN/GRU) keep the unrolled form.
"""

from __future__ import annotations

import numpy as np

from mmopt.codegen.winograd import OPAQUE

#: the custom op the rule writes and the importer converts
DOMAIN = "mmopt"
OP_TYPE = "FusedLSTM"

_LOG2E = 1.4426950408889634
#: ln 2 split so that ``n * _LN2_HI`` is exact for the ``n`` an exponent can take
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4


def _exp(x):
    """``exp(x)`` as arithmetic LLVM vectorizes (libm's ``expf`` is a scalar call, and dominated
    the kernel): ``2^n * p(r)`` with ``n = round(x / ln 2)``, ``|r| <= ln 2 / 2`` and ``p`` the
    degree-7 Taylor polynomial (truncation below 1e-8 relative); ``x`` clamped to +-87."""
    from tvm import tirx

    f32 = "float32"
    x = tirx.max(tirx.min(x, tirx.const(87.0, f32)), tirx.const(-87.0, f32))
    n = tirx.floor(x * tirx.const(_LOG2E, f32) + tirx.const(0.5, f32))
    r = x - n * tirx.const(_LN2_HI, f32) - n * tirx.const(_LN2_LO, f32)
    p = tirx.const(1.0 / 5040, f32)
    for c in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        p = p * r + tirx.const(c, f32)
    return p * tirx.reinterpret(f32, (tirx.Cast("int32", n) + 127) << 23)


def _sigmoid(x):
    from tvm import tirx

    one = tirx.const(1.0, "float32")
    return one / (one + _exp(-x))


def _tanh(x):
    """``1 - 2 / (e^2x + 1)``: absolute error below 2e-7 (measured over [-100, 100])."""
    from tvm import tirx

    one, two = tirx.const(1.0, "float32"), tirx.const(2.0, "float32")
    return one - two / (_exp(x * two) + one)


def recurrence_kernel(steps: int, batch: int, hidden: int, reverse: bool = False):
    """A scheduled PrimFunc ``(xw [T,B,4H], rt [H,4H], h0 [B,H], c0 [B,H]) -> (y [T,B,H],
    yh [B,H], yc [B,H])`` (time loop sequential; LLVM vectorizes the gate loops)."""
    from tvm.script import tirx as T

    gates = 4 * hidden
    backwards = 1 if reverse else 0  # step s reads and writes time index t = s, or T - 1 - s

    @T.prim_func(private=True)
    def lstm(xw: T.Buffer((steps, batch, gates), "float32"),
             rt: T.Buffer((hidden, gates), "float32"),
             h0: T.Buffer((batch, hidden), "float32"), c0: T.Buffer((batch, hidden), "float32"),
             y: T.Buffer((steps, batch, hidden), "float32"),
             yh: T.Buffer((batch, hidden), "float32"), yc: T.Buffer((batch, hidden), "float32")):
        T.func_attr({"tirx.noalias": True})
        acc = T.alloc_buffer((gates,), "float32")
        for b, j in T.grid(batch, hidden):
            yh[b, j] = h0[b, j]
            yc[b, j] = c0[b, j]
        for s in range(steps):
            for b in range(batch):
                t = s + backwards * (steps - 1 - 2 * s)
                for g in range(gates):
                    acc[g] = xw[t, b, g]
                for k in range(hidden):
                    for g in range(gates):
                        acc[g] = acc[g] + yh[b, k] * rt[k, g]
                for j in range(hidden):
                    c = (_sigmoid(acc[2 * hidden + j]) * yc[b, j]
                         + _sigmoid(acc[j]) * _tanh(acc[3 * hidden + j]))
                    yc[b, j] = c
                    yh[b, j] = _sigmoid(acc[hidden + j]) * _tanh(c)
                    y[t, b, j] = yh[b, j]

    return lstm.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", OPAQUE)


def convert(bb, inputs, attr):
    """The importer side: ``inputs`` = X [T,B,I], W [1,4H,I], R [1,4H,H], B [1,8H] or None,
    h0 [1,B,H] or None, c0 [1,B,H] or None -> (Y [T,1,B,H], Y_h [1,B,H], Y_c [1,B,H])."""
    from tvm import relax

    x, w, r = inputs[0], inputs[1], inputs[2]
    bias = inputs[3] if len(inputs) > 3 else None
    h0 = inputs[4] if len(inputs) > 4 else None
    c0 = inputs[5] if len(inputs) > 5 else None
    steps, batch, _features = (int(d) for d in x.ty.shape)
    hidden = int(r.ty.shape[2])
    gates = 4 * hidden
    op = relax.op
    w2 = op.squeeze(w, [0])  # [4H, I]
    xw = op.matmul(x, op.permute_dims(w2, [1, 0]))  # [T, B, 4H]
    if bias is not None:
        b2 = op.squeeze(bias, [0])
        xw = op.add(xw, op.add(op.strided_slice(b2, [0], [0], [gates]),
                               op.strided_slice(b2, [0], [gates], [2 * gates])))
    xw = bb.emit(xw)
    rt = bb.emit(op.permute_dims(op.squeeze(r, [0]), [1, 0]))  # [H, 4H]
    zeros = relax.const(np.zeros((batch, hidden), "float32"))
    h = bb.emit(op.squeeze(h0, [0])) if h0 is not None else zeros
    c = bb.emit(op.squeeze(c0, [0])) if c0 is not None else zeros
    reverse = attr.get("direction", b"forward")
    reverse = (reverse.decode() if isinstance(reverse, bytes) else reverse) == "reverse"
    gvar = bb.add_func(recurrence_kernel(steps, batch, hidden, reverse), "mmopt_fused_lstm")
    out = bb.emit(relax.call_tir(gvar, [xw, rt, h, c], [
        relax.TensorType([steps, batch, hidden], "float32"),
        relax.TensorType([batch, hidden], "float32"),
        relax.TensorType([batch, hidden], "float32")]))
    y = op.expand_dims(relax.TupleGetItem(out, 0), [1])
    yh = op.expand_dims(relax.TupleGetItem(out, 1), [0])
    yc = op.expand_dims(relax.TupleGetItem(out, 2), [0])
    return relax.Tuple([bb.emit(y), bb.emit(yh), bb.emit(yc)])
