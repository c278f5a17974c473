"""Integer code generation for quantized (QDQ) models.

TVM's importer turns an ONNX QDQ model into ``R.quantize`` / ``R.dequantize`` around float
operators: correct, but every convolution then runs in float on dequantized tensors, and since
neither op has layout inference, ConvertLayout wraps each of them in NHWC<->NCHW transposes.
:func:`lower_qdq` (runs on the imported NCHW graph, before ConvertLayout) rewrites them:

* ``conv2d(dequantize(xq, sx, zx), dequantize(Wq, sw, 0))`` with a per-tensor activation
  quantization and constant per-channel int8 weights becomes an **integer convolution**::

      acc = conv2d(pad(xu8, value=zx), Wq, out_dtype=int32)     # u8 x i8 -> i32, exact
      y   = float32(acc - zx * sum(Wq[oc])) * (sx * sw[oc])     # per-channel, fuses as epilogue

  Padding uses the zero point (the quantized zero), so the correction term is the same for every
  output position. Activations are moved (by 128, zero point with them) to the type the target's
  dot-product instruction reads: uint8 for x86 (VNNI u8 x s8; ``vpmaddwd`` widens u8), int8 for
  AArch64 ``sdot`` (s8 x s8). Grouped (depthwise) convolutions read the 8-bit activation as it
  comes, padded with its zero point too (the pad folds into their kernel,
  :mod:`mmopt.codegen.select_padding`), with the same correction term. ``matmul`` (ONNX
  MatMul/Gemm with constant weights) becomes a 1x1 NHWC integer convolution over the rows of
  ``x``, so it shares the convolution kernels.
* ``max_pool2d`` of a dequantized tensor pools the integers and dequantizes after (exact: the
  maximum commutes with a monotone dequantization);
* ``split``, ``concat`` (inputs of one scale and zero point), ``reshape``, ``permute_dims`` and a
  nearest ``resize2d`` of dequantized tensors move the 8-bit elements and dequantize after (exact:
  every output element is a copy of one input element); a ``quantize`` of such a result, or of a
  ``dequantize``, with the same scale, zero point and type is dropped (``(q - z) * s * (1 / s)``
  rounds back to ``q - z``), so a C2f block's split and concatenation copy bytes;
* activation ``quantize``/``dequantize`` (per-tensor) become element-wise arithmetic
  (``saturate(round(x * (1/s)) + z)``, ``(x - z) * s``), which propagates any layout and fuses
  into the neighbouring kernels: a convolution's output is quantized in its write-back, and uint8
  tensors travel between layers.

:func:`fold_pad_transposes` (after ConvertLayout) moves the zero-point ``pad`` (which has no layout
inference) into NHWC: ``permute(pad(permute(x)))`` -> ``pad(x)``. :func:`pack_dot_convs` then gives
the integer convolutions pre-packed weights that :func:`schedule_dot_conv` tensorizes to the
target's dot-product instruction (:func:`dot_products_for`: x86 ``vpdpbusd``, AArch64 ``sdot``, and
on x86 without VNNI the exact int16 ``vpmaddwd`` of :mod:`mmopt.codegen.int8_x86`).
:func:`record_int8_kernels` reports which of these paths each kernel took.

Numerics: the integer accumulation is exact, so the only rounding is the final float scale and the
requantization — the same as onnxruntime's reference execution of the QDQ graph up to float
rounding (the multiplication by ``1/s`` instead of a division by ``s`` moves the value before
rounding by at most one float32 ulp).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np

from mmopt.codegen.register_tiles import largest_divisor
from mmopt.codegen.relax_util import (
    bindings,
    const_array,
    conv_output_size,
    module_uses,
    op_name,
    pattern_pass,
    rewrite_dense_nhwc_convs,
    tensor_dtype,
)

_UNSIGNED_SHIFT = 128


def _scalar(arr) -> float | None:
    if arr is None or arr.size != 1:
        return None
    return arr.reshape(()).item()


def lower_qdq(data_dtype: str = "uint8", channel_multiple: int = 0):
    """The Relax module pass described in the module docstring. ``data_dtype``: the activation type
    integer convolutions read (``uint8`` for x86 VNNI, ``int8`` for AArch64 ``sdot``);
    ``channel_multiple``: pad the input channels of dense convolutions to a multiple of this (with
    the zero point, and zero weights), so that the dot-product kernels apply to them too."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Lower(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.mod_ = mod
            self.rewritten = 0

        def _bound(self, expr):
            """What an original (pre-rewrite) variable is bound to."""
            while isinstance(expr, relax.Var) and expr in self.original:
                expr = self.original[expr]
            return expr

        # -- activations: quantize / dequantize -> element-wise arithmetic ---------------------
        def _activation_qdq(self, call):
            name = op_name(call)
            data, scale, zero = call.args
            s, z = _scalar(const_array(scale)), _scalar(const_array(zero))
            value = const_array(data)
            if (name == "relax.dequantize" and value is not None and value.size == 1
                    and s is not None and z is not None):
                # a quantized scalar operand (HardSwish's 1/6, ...): a float scalar constant, which
                # any layout accepts (a (1,)-shaped tensor makes ConvertLayout go back to NCHW)
                real = (float(value.reshape(-1)[0]) - z) * s
                return relax.const(np.float32(real), str(call.attrs.out_dtype))
            if s is None or z is None or value is not None:
                return None  # per-channel, symbolic, or a constant (weights: folded later)
            if name == "relax.dequantize":
                out = str(call.attrs.out_dtype)
                x = self.builder_.emit(relax.op.astype(data, out))
                if z != 0:
                    x = self.builder_.emit(relax.op.subtract(x, relax.const(float(z), out)))
                return relax.op.multiply(x, relax.const(float(s), out))
            dtype = str(call.attrs.out_dtype)
            if dtype not in ("uint8", "int8") or tensor_dtype(data) != "float32":
                return None
            lo, hi = (0.0, 255.0) if dtype == "uint8" else (-128.0, 127.0)
            # times the reciprocal: a division per element costs ~1/3 of a small convolution's
            # requantizing write-back on AVX2 (vdivps); the result differs from x / s by at
            # most an ulp before rounding, below the float convolution's own rounding noise
            inverse = np.float32(1.0) / np.float32(s)
            q = self.builder_.emit(relax.op.round(relax.op.multiply(
                data, relax.const(inverse, "float32"))))
            if z != 0:
                q = self.builder_.emit(relax.op.add(q, relax.const(float(z), "float32")))
            q = self.builder_.emit(relax.op.minimum(relax.op.maximum(q, relax.const(lo, "float32")),
                                                    relax.const(hi, "float32")))
            return relax.op.astype(q, dtype)

        # -- conv2d / matmul over dequantized operands -> integer kernels ------------------------
        def _activation(self, expr):
            """``(xq, sx, zx)`` of a per-tensor dequantized activation, else None."""
            deq = self._bound(expr)
            if op_name(deq) != "relax.dequantize":
                return None
            xq, sx, zx = deq.args
            sx, zx = _scalar(const_array(sx)), _scalar(const_array(zx))
            if sx is None or zx is None or tensor_dtype(xq) not in ("uint8", "int8"):
                return None
            return xq, sx, int(zx)

        def _weights(self, expr, axis: int):
            """``(w int8, per-channel scale)`` of a dequantized constant, quantized along ``axis``
            (symmetric), else None."""
            deq = self._bound(expr)
            if op_name(deq) != "relax.dequantize":
                return None
            w, sw, zw = (const_array(a) for a in deq.args)
            if w is None or sw is None or zw is None or w.dtype != np.int8 or np.any(zw != 0):
                return None
            if sw.size != 1 and (int(deq.attrs.axis) % w.ndim != axis % w.ndim
                                 or sw.size != w.shape[axis]):
                return None
            return w, np.broadcast_to(sw.astype(np.float64).reshape(-1), (w.shape[axis],))

        def _data(self, xq, zx):
            """The activation in the type the integer kernels read, and its zero point."""
            x = xq = self.visit_expr(xq)
            if tensor_dtype(xq) != data_dtype:  # move by 128 (and the zero point with it): exact
                shift = _UNSIGNED_SHIFT if data_dtype == "uint8" else -_UNSIGNED_SHIFT
                x = self.builder_.emit(relax.op.astype(
                    relax.op.add(relax.op.astype(xq, "int16"), relax.const(shift, "int16")),
                    data_dtype))
                zx += shift
            return x, zx

        def _rescale(self, acc, correction, scale, shape):
            """``float32(acc - correction) * scale``, both per output channel, broadcast as
            ``shape``."""
            if np.any(correction):
                acc = self.builder_.emit(relax.op.subtract(
                    acc, relax.const(correction.astype(np.int32).reshape(shape))))
            y = self.builder_.emit(relax.op.astype(acc, "float32"))
            self.rewritten += 1
            return relax.op.multiply(y, relax.const(scale.astype(np.float32).reshape(shape)))

        def _integer_conv(self, call):
            attrs = call.attrs
            if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
                    or (attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32"))):
                return None
            act, weights = self._activation(call.args[0]), self._weights(call.args[1], 0)
            if act is None or weights is None:
                return None
            (xq, sx, zx), (w, sw) = act, weights
            oc = w.shape[0]
            pad = [int(p) for p in attrs.padding]  # top, left, bottom, right
            if int(attrs.groups) > 1:
                return self._integer_grouped_conv(call, xq, sx, zx, w, sw)
            x, zx = self._data(xq, zx)
            extra = 0  # input channels added so the dot-product kernels apply (the first conv's 3)
            if channel_multiple and int(attrs.groups) == 1 and w.shape[1] % channel_multiple:
                extra = channel_multiple - w.shape[1] % channel_multiple
                w = np.pad(w, [(0, 0), (0, extra), (0, 0), (0, 0)])  # zero weights: same result
            if any(pad) or extra:
                x = self.builder_.emit(relax.op.nn.pad(
                    x, [0, 0, 0, extra, pad[0], pad[2], pad[1], pad[3]], "constant", float(zx)))
            # output channels likewise (a detector head's 18 or 42): zero weights, and the
            # int32 result cropped before the rescale; the dot-product kernel then applies (4
            # lanes at least), where the plain integer loop was 3-5x slower
            wide = w
            if channel_multiple and oc % channel_multiple and oc > channel_multiple:
                wide = np.pad(w, [(0, channel_multiple - oc % channel_multiple), (0, 0), (0, 0),
                                  (0, 0)])
            acc = self.builder_.emit(relax.op.nn.conv2d(
                x, relax.const(wide), strides=[int(v) for v in attrs.strides],
                padding=[0, 0, 0, 0], dilation=[int(v) for v in attrs.dilation],
                groups=int(attrs.groups), out_dtype="int32"))
            if wide is not w:
                acc = self.builder_.emit(relax.op.strided_slice(acc, axes=[1], begin=[0],
                                                                end=[oc]))
            correction = zx * w.reshape(oc, -1).astype(np.int64).sum(axis=1)
            return self._rescale(acc, correction, sx * sw, (1, oc, 1, 1))

        def _integer_grouped_conv(self, call, xq, sx, zx, w, sw):
            """A grouped (depthwise) convolution on the 8-bit activation as it is:
            ``conv2d(pad(xq, zx), Wq) - zx * sum(Wq)``, the sum per output channel over the
            window. Padding with the zero point makes the correction the same at every position;
            the pad is folded into the convolution's kernel as a select
            (:mod:`mmopt.codegen.select_padding`), so it costs no pass over memory. Reading 8
            bits, not a centered int16 copy, halves the activation traffic, and the products of
            a zero-extended byte and a sign-extended weight become ``vpmaddwd`` on x86 (LLVM
            knows their upper halves), one instruction where ``vpmulld`` is two on Intel AVX2
            CPUs."""
            attrs = call.attrs
            x = self.visit_expr(xq)
            pad = [int(p) for p in attrs.padding]  # top, left, bottom, right
            if any(pad):
                x = self.builder_.emit(relax.op.nn.pad(
                    x, [0, 0, 0, 0, pad[0], pad[2], pad[1], pad[3]], "constant", float(zx)))
            acc = self.builder_.emit(relax.op.nn.conv2d(
                x, relax.const(w), strides=[int(v) for v in attrs.strides],
                padding=[0, 0, 0, 0], dilation=[int(v) for v in attrs.dilation],
                groups=int(attrs.groups), out_dtype="int32"))
            oc = w.shape[0]
            correction = zx * w.reshape(oc, -1).astype(np.int64).sum(axis=1)
            return self._rescale(acc, correction, sx * sw, (1, oc, 1, 1))

        def _integer_matmul(self, call):
            """``x @ W`` (MatMul: W [K, N] quantized along N; Gemm: ``permute_dims`` of W [N, K]
            quantized along N) -> a 1x1 NHWC integer convolution over the rows of ``x``."""
            if call.attrs.out_dtype is not None and str(call.attrs.out_dtype) not in ("", "float32"):
                return None
            act = self._activation(call.args[0])
            rhs = self._bound(call.args[1])
            if op_name(rhs) == "relax.permute_dims" and [int(a) for a in rhs.attrs.axes] == [1, 0]:
                weights = self._weights(rhs.args[0], 0)
                weights = None if weights is None else (weights[0].T, weights[1])
            else:
                weights = self._weights(call.args[1], 1)
            if act is None or weights is None or weights[0].ndim != 2:
                return None
            (xq, sx, zx), (w, sw) = act, weights
            shape = [int(d) for d in xq.ty.shape]
            k, n = w.shape
            if len(shape) < 2 or shape[-1] != k:
                return None
            rows = int(np.prod(shape[:-1]))
            x, zx = self._data(xq, zx)
            x = self.builder_.emit(relax.op.reshape(x, (1, 1, rows, k)))
            acc = self.builder_.emit(relax.op.nn.conv2d(
                x, relax.const(np.ascontiguousarray(w).reshape(1, 1, k, n)), data_layout="NHWC",
                kernel_layout="HWIO", out_dtype="int32"))
            acc = self.builder_.emit(relax.op.reshape(acc, (*shape[:-1], n)))
            correction = zx * w.astype(np.int64).sum(axis=0)
            return self._rescale(acc, correction, sx * sw, (n,))

        def _integer_max_pool(self, call):
            """``max_pool2d(dequantize(xq))`` -> ``dequantize(max_pool2d(xq))``: dequantization
            with a positive per-tensor scale is monotone, so the maximum commutes with it exactly
            (the pool's padding is the type's minimum either way: -inf in float, 0 / -128 in the
            integer type, neither of which can win against a real element). The pool then reads
            the 8-bit tensor instead of its float32 copy (4x less memory traffic), and the
            dequantize fuses into the pool's write-back (with the next quantize: the same
            scale and zero point give back the integers exactly)."""
            act = self._activation(call.args[0])
            if act is None or act[1] <= 0:
                return None
            pooled = self.builder_.emit(relax.Call(call.op, [self.visit_expr(act[0])], call.attrs))
            return self._copied(call, pooled, self._bound(call.args[0]))

        def _integer_resize(self, call):
            """``resize2d(dequantize(xq))`` with nearest-neighbour sampling ->
            ``dequantize(resize2d(xq))``: every output element is a copy of one input element,
            so the resize commutes with any element-wise map, exactly. The resize then copies
            bytes, and the tensor it reads stays 8-bit: its producer's write-back no longer
            dequantizes to a float32 tensor for it, nor does the resize write one for the next
            quantize (a DB detector's FPN up-sampling: 4x less memory traffic in and out)."""
            # (crop-and-resize extrapolates a float constant, which is not a copy)
            if (str(call.attrs.method) != "nearest_neighbor"
                    or str(call.attrs.coordinate_transformation_mode) == "tf_crop_and_resize"
                    or (call.attrs.out_dtype is not None
                        and str(call.attrs.out_dtype) not in ("", "float32"))):
                return None
            act = self._activation(call.args[0])
            if act is None:
                return None
            attrs = call.attrs
            resized = self.builder_.emit(relax.op.image.resize2d(
                self.visit_expr(act[0]), self.visit_expr(call.args[1]), roi=list(attrs.roi),
                layout=str(attrs.layout), method="nearest_neighbor",
                coordinate_transformation_mode=str(attrs.coordinate_transformation_mode),
                rounding_method=str(attrs.rounding_method), cubic_alpha=float(attrs.cubic_alpha),
                cubic_exclude=int(attrs.cubic_exclude),
                extrapolation_value=float(attrs.extrapolation_value)))
            return self._copied(call, resized, self._bound(call.args[0]))

        def _integer_concat(self, call):
            """``concat(dequantize(q1, s, z), dequantize(q2, s, z), ...)`` with one scale and
            zero point for every input -> ``dequantize(concat(q1, q2, ...), s, z)``: the
            concatenation copies elements, so it commutes with the shared dequantization, exactly.
            It then copies bytes; when its output is quantized with the same ``s`` and ``z``
            again (the quantizer's shared concatenation scales,
            :mod:`mmopt.quantize.shared_scales`; TFLite-converted models) nothing is requantized
            at all (:meth:`_requantized`)."""
            fields = self._bound(call.args[0])
            if not isinstance(fields, relax.Tuple) or not fields.fields:
                return None
            acts = [self._activation(f) for f in fields.fields]
            if any(a is None for a in acts) or len(
                    {(a[1], a[2], tensor_dtype(a[0])) for a in acts}) != 1:
                return None
            joined = self.builder_.emit(relax.op.concat(
                [self.visit_expr(a[0]) for a in acts], axis=int(call.attrs.axis)))
            return self._copied(call, joined, self._bound(fields.fields[0]))

        def _integer_rearranged(self, call):
            """``reshape`` / ``permute_dims`` of ``dequantize(q)`` -> the same of ``q``,
            dequantized: both move elements without changing them (a detector head's flatten
            and transpose between two quantizations with the same parameters then copy bytes)."""
            act = self._activation(call.args[0])
            if act is None:
                return None
            moved = self.builder_.emit(relax.Call(
                call.op, [self.visit_expr(act[0]), *(self.visit_expr(a) for a in call.args[1:])],
                call.attrs))
            return self._copied(call, moved, self._bound(call.args[0]))

        def _integer_split(self, call):
            """``split(dequantize(q, s, z))`` -> the parts of ``split(q)``, each dequantized: a
            split copies elements too. Its parts keep ``s`` and ``z`` (onnxruntime's QDQ writer
            quantizes a Split's outputs with its input's parameters), so their quantizations
            give back the split bytes (:meth:`_requantized`)."""
            act = self._activation(call.args[0])
            if act is None:
                return None
            attrs = call.attrs
            sections = attrs.indices_or_sections
            sections = (int(sections) if isinstance(sections, (int, tvm.tirx.IntImm))
                        else [int(i) for i in sections])
            parts = self.builder_.emit(relax.op.split(self.visit_expr(act[0]), sections,
                                                      axis=int(attrs.axis)))
            deq = self._bound(call.args[0])
            self.integer[call] = self._form(parts, deq)
            return relax.Tuple([
                self.builder_.emit(self._dequantized(
                    self.builder_.emit(relax.TupleGetItem(parts, i)), deq))
                for i in range(len(parts.ty.fields))])

        def _copied(self, call, integers, deq):
            """The float value of ``call`` (an operator that copies elements) computed as
            ``integers`` (the same operator on the 8-bit input that ``deq`` dequantizes),
            dequantized as ``deq`` does; the integer form is kept for a quantization of the
            result with the same parameters (:meth:`_requantized`)."""
            self.integer[call] = self._form(integers, deq)
            return self._dequantized(integers, deq)

        @staticmethod
        def _form(integers, deq):
            """``(integers, s, z, type)``: integers of ``deq``'s input type that ``deq``'s
            parameters dequantize."""
            return (integers, _scalar(const_array(deq.args[1])),
                    int(_scalar(const_array(deq.args[2]))), tensor_dtype(deq.args[0]))

        def _dequantized(self, integers, deq):
            """``integers`` dequantized with ``deq``'s parameters, as arithmetic."""
            return self._activation_qdq(relax.op.dequantize(
                integers, deq.args[1], deq.args[2], int(deq.attrs.axis), str(deq.attrs.out_dtype)))

        def _integer_form(self, expr):
            """``(q, s, z, dtype)``: ``expr`` is ``dequantize(q, s, z)`` (per tensor, 8 bits), or a
            copying operator's result whose integer form :meth:`_copied` kept; else None."""
            value = self._bound(expr)
            if isinstance(value, relax.TupleGetItem):
                form = self.integer.get(self._bound(value.tuple_value))
                if form is None:
                    return None
                # not emitted here: only a match uses it
                return (relax.TupleGetItem(form[0], int(value.index)), *form[1:])
            if value in self.integer:
                return self.integer[value]
            act = self._activation(expr)
            if act is None:
                return None
            return self.visit_expr(act[0]), act[1], act[2], tensor_dtype(act[0])

        def _requantized(self, call):
            """``quantize(x, s, z)`` of an ``x`` whose integer form (:meth:`_integer_form`) has the
            same ``s``, ``z`` and type -> those integers. Exact: ``(q - z) * s * (1 / s)`` is
            within a few float32 ulps of the integer ``q - z`` (``|q - z| <= 255``), so it rounds
            back to it, and ``q`` is inside the type's range."""
            s, z = _scalar(const_array(call.args[1])), _scalar(const_array(call.args[2]))
            if s is None or z is None:
                return None
            form = self._integer_form(call.args[0])
            if form is None or form[1:] != (s, int(z), str(call.attrs.out_dtype)):
                return None
            return form[0]

        def visit_call_(self, call):
            # the integer conv looks at the original operands (their dequantize calls), before
            # those are rewritten to arithmetic
            rewrites = {"relax.nn.max_pool2d": self._integer_max_pool,
                        "relax.image.resize2d": self._integer_resize,
                        "relax.concat": self._integer_concat,
                        "relax.split": self._integer_split,
                        "relax.reshape": self._integer_rearranged,
                        "relax.permute_dims": self._integer_rearranged,
                        "relax.quantize": self._requantized}
            if op_name(call) in rewrites:
                new = rewrites[op_name(call)](call)
                if new is not None:
                    return new
            if op_name(call) in ("relax.nn.conv2d", "relax.matmul"):
                rewrite = (self._integer_conv if op_name(call) == "relax.nn.conv2d"
                           else self._integer_matmul)
                new = rewrite(call)
                if new is not None:
                    return new
            call = self.visit_expr_post_order(call)
            if op_name(call) in ("relax.quantize", "relax.dequantize"):
                new = self._activation_qdq(call)
                if new is not None:
                    return new
            return call

        def transform(self):
            for gvar, func in self.mod_.functions.items():
                if isinstance(func, relax.Function):
                    self.original = bindings(func)
                    #: original call of an element-copying operator -> (its result computed on
                    #: the integers, scale, zero point, integer type)
                    self.integer = {}
                    self.builder_.update_func(gvar, self.visit_expr(func))
            return self.builder_.get()

    @tvm.transform.module_pass(opt_level=0, name="mmopt_lower_qdq")
    def _pass(mod, _ctx):
        if not module_uses(mod, ("relax.quantize", "relax.dequantize")):
            return mod
        return relax.transform.DeadCodeElimination()(_Lower(mod).transform())

    return _pass


def fold_pad_transposes():
    """``permute_dims(pad(permute_dims(x, to NCHW), w), to NHWC)`` -> ``pad(x, w in NHWC)``."""
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    inner = is_op("relax.permute_dims")(wildcard())
    padded = is_op("relax.nn.pad")(inner)
    pattern = is_op("relax.permute_dims")(padded)

    def rewrite(expr, matches):
        pad_call = matches[padded]
        src = matches[inner]
        to_nchw = [int(a) for a in src.attrs.axes]
        to_nhwc = [int(a) for a in expr.attrs.axes]
        if to_nchw != [0, 3, 1, 2] or to_nhwc != [0, 2, 3, 1]:
            return expr
        width = [int(v) for v in pad_call.attrs.pad_width]  # (before, after) per NCHW axis
        pairs = [width[2 * i:2 * i + 2] for i in range(4)]
        nhwc = [v for axis in to_nhwc for v in pairs[axis]]
        return relax.op.nn.pad(src.args[0], nhwc, str(pad_call.attrs.pad_mode),
                               float(pad_call.attrs.pad_value))

    return pattern_pass("mmopt_fold_pad_transposes", pattern, rewrite)


# --------------------------------------------------------------------------------------------------
# integer dot-product instructions: convolutions on pre-packed weights, tensorized


@dataclass(frozen=True)
class DotProduct:
    """One integer dot-product instruction: ``acc[lanes] (s32) += sum_k a[k] * b[lane, k]`` for
    ``k < block``, with the ``block`` activation values broadcast to every lane.

    ``data_dtype`` is what the integer convolutions read (what :func:`lower_qdq` produces);
    ``operand_dtype`` what the instruction multiplies: when they differ, the kernel widens its
    input once (:data:`WIDEN_BLOCK`) before the register-tiled loops. Weights are packed at compile
    time as ``weight_dtype``."""

    name: str
    lanes: int  #: int32 lanes = output channels per instruction
    data_dtype: str  #: activation type the integer convolutions read
    llvm_intrinsic: str
    accumulators: int  #: at most this many accumulators in a register tile
    block: int = 4  #: activation values one lane sums per instruction (the reduction block k)
    operand_dtype: str = ""  #: activation type the instruction reads ("": ``data_dtype``)
    weight_dtype: str = "int8"
    registers: int = 32  #: architectural vector registers
    #: registers one reduction step needs besides the accumulators and the weight vectors (the
    #: broadcast activations; a product that is added separately)
    temporaries: int = 1
    mnemonic: str = ""  #: the instruction's assembly name (``objdump`` shows it)
    tiles: str = "rows"  #: register tile policy (:meth:`register_tile`)
    #: largest weight magnitude the instruction multiplies exactly (None: any int8)
    weight_limit: int | None = None

    def accepts(self, weights: np.ndarray) -> bool:
        """Whether the instruction computes a convolution with these int8 ``weights`` exactly."""
        return self.weight_limit is None or (
            weights.size == 0 or int(np.abs(weights.astype(np.int16)).max()) <= self.weight_limit)

    def packs(self, lanes: int, block: int, weight_dtype: str) -> bool:
        """Whether packed weights ``[..., lanes, block]`` of ``weight_dtype`` are this
        instruction's layout."""
        return (self.lanes, self.block, self.weight_dtype) == (lanes, block, weight_dtype)

    @property
    def operand(self) -> str:
        return self.operand_dtype or self.data_dtype

    @property
    def intrinsic(self) -> str:
        return f"mmopt_{self.name}_{self.lanes}x{self.block}_local"

    def register_tile(self, blocks: int, width: int, rows_limit: int = 8, window: int = 1,
                      steps: int = 0) -> tuple[int, int]:
        """``(rows, nv)``: ``rows`` output pixels along the width (dividing ``width``, at most
        ``rows_limit``) x ``nv`` vectors of output channels (dividing ``blocks``), at most
        :attr:`accumulators` of them, and fitting the registers with the weight vectors and
        :attr:`temporaries`. ``window``: the kernel's taps (KH * KW); ``steps``: the reduction
        steps (instructions) per output vector, ``window * IC / block``.

        ``tiles == "rows"`` (the byte dot products): ``nv`` up to ``accumulators // rows_limit``,
        then as many rows as fit. ``tiles == "square"`` (``vpmaddwd``; measured on AVX2, Zen 4):
        a 1x1 convolution whose weights for 4..8 vectors fit :data:`ONE_ROW_WEIGHT_BYTES` takes
        one output pixel x those vectors (the weights stay in L1 and are read as memory
        operands: 1x8 and 1x6 tiles beat 8x1 by 1.2-1.45x; with larger weights 2x4 wins);
        otherwise the most accumulators, then the fewest loads per reduction step (``rows``
        broadcasts + ``nv`` weight vectors), then the most vectors across (2x4 beats 8x1 on 3x3
        layers)."""
        if self.tiles == "rows":
            nv = largest_divisor(blocks, max(1, self.accumulators // rows_limit))
            limit = min(rows_limit, self.accumulators // nv,
                        (self.registers - self.temporaries) // nv - 1)
            return largest_divisor(width, max(1, limit)), nv
        if window == 1:
            nv = largest_divisor(blocks, min(8, self.accumulators))
            vector_bytes = steps * self.lanes * self.block * np.dtype(self.weight_dtype).itemsize
            if nv >= 4 and nv * vector_bytes <= ONE_ROW_WEIGHT_BYTES:
                return 1, nv
        best, best_key = (1, 1), None
        for nv in range(1, min(blocks, self.accumulators) + 1):
            if blocks % nv:
                continue
            for rows in range(1, min(width, rows_limit) + 1):
                acc = rows * nv
                if (width % rows or acc > self.accumulators
                        or acc + nv + self.temporaries > self.registers):
                    continue
                key = (acc, -(rows + nv), nv)
                if best_key is None or key > best_key:
                    best, best_key = (rows, nv), key
        return best

    def implementation(self):
        """The TIR implementation of one instruction over ``a[block]``, ``b[lanes, block]`` and
        the ``local`` accumulator ``acc[lanes]`` (byte operands, one instruction)."""
        from tvm.script import tirx as T
        from tvm.target import codegen

        lanes, data_dtype, nbytes = self.lanes, self.data_dtype, self.block * self.lanes
        # LLVM 22 (TVM 0.27's) types the byte operands as <N x i8>; x86 VNNI took <16 x i32> in
        # LLVM releases before 20
        byte_type = (f"int8x{nbytes}" if self is not VNNI or int(codegen.llvm_version_major()) >= 20
                     else f"int32x{lanes}")
        acc_type = f"int32x{lanes}"
        intrinsic = self.llvm_intrinsic

        @T.prim_func(s_tir=True)
        def impl(a: T.Buffer((4,), data_dtype, offset_factor=1),
                 b: T.Buffer((lanes, 4), "int8", offset_factor=1),
                 acc: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(acc[0:lanes], a[0:4], b[0:lanes, 0:4])
                T.writes(acc[0:lanes])
                # the 4 activation bytes as one int32, broadcast to every lane
                quad = T.reinterpret(a.vload([0], f"{data_dtype}x4"), dtype="int32")
                acc[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(intrinsic),
                    acc.vload([0], dtype=acc_type),
                    T.reinterpret(T.broadcast(quad, lanes), dtype=byte_type),
                    T.reinterpret(b.vload([0, 0], dtype=f"int8x{nbytes}"), dtype=byte_type),
                    dtype=acc_type)

        return impl


#: x86 AVX-512 VNNI: vpdpbusd, u8 x s8, 16 lanes
VNNI = DotProduct("vnni", 16, "uint8", "llvm.x86.avx512.vpdpbusd.512", 16, mnemonic="vpdpbusd")
#: the same on 256-bit registers (AVX-512VL), for output channel counts such as 24 or 40
VNNI_256 = DotProduct("vnni256", 8, "uint8", "llvm.x86.avx512.vpdpbusd.256", 16,
                      mnemonic="vpdpbusd")
#: and on 128-bit registers, for output channel counts that are multiples of 4 only (12, 20, 44)
VNNI_128 = DotProduct("vnni128", 4, "uint8", "llvm.x86.avx512.vpdpbusd.128", 16,
                      mnemonic="vpdpbusd")
#: AArch64 dot product (ARMv8.2 +dotprod): sdot, s8 x s8, 4 lanes
SDOT = DotProduct("sdot", 4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8", 24, mnemonic="sdot")

#: weights a one-row register tile streams per output pixel at most (a third of the smallest L1
#: data cache of the targeted CPUs, 32 KiB): measured on 1x1 layers, 1x8 tiles over 20 KiB of
#: weights beat 2x4 ones by 1.2x, over 32 KiB they lose
ONE_ROW_WEIGHT_BYTES = 24 << 10

#: block name of the packed integer convolution (the schedule rule looks for it)
DOT_BLOCK = "mmopt_qconv_dot"
#: block name of the kernel's widening of its input to the instruction's operand type
WIDEN_BLOCK = "mmopt_qconv_widen"


def dot_products_for(tvm_target) -> list[DotProduct]:
    """The integer dot-product instructions ``tvm_target`` has, widest first (all read the same
    activation type): a byte dot product where the CPU has one (x86 VNNI, AArch64 ``dotprod``),
    else on x86 the int16 multiply-add ``vpmaddwd`` (:mod:`mmopt.codegen.int8_x86`)."""
    from tvm.target import codegen

    from mmopt.codegen.int8_x86 import pmaddwd_products

    triple = str(tvm_target.attrs.get("mtriple", ""))
    try:
        if "x86_64" in triple and codegen.target_has_features(["avx512vnni"], tvm_target):
            narrow = codegen.target_has_features(["avx512vl"], tvm_target)
            return [VNNI, VNNI_256, VNNI_128] if narrow else [VNNI]
        if "aarch64" in triple and codegen.target_has_features(["dotprod"], tvm_target):
            return [SDOT]
        if "x86_64" in triple:
            return pmaddwd_products(tvm_target)
    except Exception:  # noqa: BLE001 - LLVM without that backend: no instruction
        return []
    return []


def dot_product_for(tvm_target) -> DotProduct | None:
    """The widest integer dot-product instruction ``tvm_target`` has, if any."""
    found = dot_products_for(tvm_target)
    return found[0] if found else None


def _dot_conv_te(data, packed, strides, dilation, out_channels, lanes, operand_dtype):
    """NHWC int8/uint8 data x packed weights ``[OC/lanes, KH, KW, IC/k, lanes, k]`` -> NHWC int32.
    Data of another type than ``operand_dtype`` is widened first (:data:`WIDEN_BLOCK`)."""
    from tvm import te

    n, h, w = data.shape[:3]  # batch, height, width may be symbolic (a dynamic model)
    _, kh, kw, icb, _, k = (int(d) for d in packed.shape)
    if str(data.dtype) != operand_dtype:
        source = data
        data = te.compute(source.shape, lambda *i: source(*i).astype(operand_dtype),
                          name=WIDEN_BLOCK)
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = conv_output_size(h, kh, sh, dh), conv_output_size(w, kw, sw, dw)
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, icb), "rc")
    ri = te.reduce_axis((0, k), "ri")
    return te.compute(
        (n, oh, ow, out_channels),
        lambda b, y, x, c: te.sum(
            data[b, y * sh + rh * dh, x * sw + rw * dw, rc * k + ri].astype("int32")
            * packed[c // lanes, rh, rw, rc, c % lanes, ri].astype("int32"),
            axis=[rh, rw, rc, ri]),
        name=DOT_BLOCK)


def pack_dot_convs():
    """Integer NHWC conv2d (data of the instruction's type, constant s8 HWIO weights, int32 out,
    groups 1, IC % k == 0, OC % lanes == 0) -> a packed-weight convolution that
    :func:`schedule_dot_conv` tensorizes. Runs only for targets with a :class:`DotProduct`.

    Weights are re-laid out here, at compile time, to ``[OC/lanes, KH, KW, IC/k, lanes, k]`` of
    the instruction's weight type: the values one instruction multiplies are contiguous."""
    import tvm
    from tvm import relax

    def pack(call, w, builder, dots):
        attrs = call.attrs
        if (str(attrs.out_dtype) != "int32" or tensor_dtype(call.args[0]) != dots[0].data_dtype
                or any(int(p) for p in attrs.padding) or w.dtype != np.int8):
            return None
        kh, kw, ic, oc = w.shape
        fitting = [d for d in dots if oc % d.lanes == 0 and ic % d.block == 0 and d.accepts(w)]
        if not fitting:
            return None
        dot = fitting[0]
        lanes, k = dot.lanes, dot.block
        packed = (w.reshape(kh, kw, ic // k, k, oc // lanes, lanes)
                  .transpose(4, 0, 1, 2, 5, 3).astype(dot.weight_dtype))
        return builder.call_te(_dot_conv_te, call.args[0], relax.const(packed),
                               [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation],
                               oc, lanes, dot.operand, primfunc_name_hint=DOT_BLOCK)

    @tvm.transform.module_pass(opt_level=0, name="mmopt_pack_dot_convs")
    def _pass(mod, _ctx):
        target = tvm.target.Target.current(allow_none=True)
        dots = dot_products_for(target) if target is not None else []
        if not dots:
            return mod
        return rewrite_dense_nhwc_convs(mod, lambda call, w, bb: pack(call, w, bb, dots))

    return _pass


def _register_intrinsic(dot: DotProduct) -> str:
    """Register ``dot.intrinsic`` once. (TVM ships VNNI's dot product with a global-scope
    accumulator; the accumulators here live in a ``local`` register tile.)"""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(dot.intrinsic)
        return dot.intrinsic
    except Exception:  # noqa: BLE001 - not registered yet
        pass
    lanes, k, operand, weight = dot.lanes, dot.block, dot.operand, dot.weight_dtype

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((k,), operand, offset_factor=1),
             b: T.Buffer((lanes, k), weight, offset_factor=1),
             acc: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(acc[0:lanes], a[0:k], b[0:lanes, 0:k])
            T.writes(acc[0:lanes])
            for i in T.serial(0, lanes):
                for j in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        acc[vi] = acc[vi] + T.cast(a[vj], "int32") * T.cast(b[vi, vj], "int32")

    TensorIntrin.register(dot.intrinsic, desc, dot.implementation())
    return dot.intrinsic


def schedule_dot_conv(sch, block_rv, dot: DotProduct, rows_limit: int = 8,
                      tensorize: bool = True, target=None):
    """Register-tiled, tensorized schedule of a :data:`DOT_BLOCK` block (inside a fused PrimFunc).

    Tile: ``rows`` output pixels along the width x ``nv`` blocks of ``lanes`` output channels,
    accumulated in registers (:meth:`DotProduct.register_tile`); loop order
    ``parallel(oc block, n, h) . w_o . kh . kw . ic/k . w_i . oc_v . [lanes x k instruction]``, so
    a block of weights stays in cache while the image streams by. The element-wise epilogue
    (zero-point correction, scale, bias, requantization) is inlined into the write-back. An input
    widening stage (:data:`WIDEN_BLOCK`) runs once per call, with the zero-point padding inlined
    into it.

    ``tensorize=False`` leaves the instruction loop untensorized and returns it, for
    ``sch.tensorize(loop, dot.intrinsic)`` after the other blocks of the function are scheduled
    (TVM 0.27 cannot copy some tensorized schedules: ``Schedule.copy`` fails on them).
    """
    from mmopt.codegen.byte_lookup import table_read_lanes
    from mmopt.codegen.cpu_schedules import (_extent, _inline_injective_chains,
                                             _inline_plain_copies, inline_epilogue,
                                             schedule_injective)

    n, h, w, c, rh, rw, rc, ri = sch.get_loops(block_rv)
    window = _extent(sch, rh) * _extent(sch, rw)
    rows, nv = dot.register_tile(_extent(sch, c) // dot.lanes, _extent(sch, w), rows_limit,
                                 window, window * _extent(sch, rc))
    co, cv, ci = sch.split(c, factors=[None, nv, dot.lanes])
    wo, wi = sch.split(w, factors=[None, rows])
    sch.reorder(co, n, h, wo, rh, rw, rc, wi, cv, ci, ri)
    outer = sch.fuse(co, n, h)
    widen = [p for p in sch.get_producers(block_rv)
             if sch.get(p).name_hint.startswith(WIDEN_BLOCK)]
    if widen:
        _inline_plain_copies(sch, widen[0], padding=True)
    else:
        _inline_plain_copies(sch, block_rv)
    writeback = sch.cache_write(block_rv, 0, "local")
    sch.reverse_compute_at(writeback, wo, preserve_unit_loops=True)
    sch.parallel(outer)
    sch.unroll(wi)
    sch.unroll(cv)
    init = sch.decompose_reduction(block_rv, rh)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    for loop in init_loops[-3:-1]:
        sch.unroll(loop)
    # element-wise producers of the epilogue's other inputs (a residual's dequantization) inline
    # into it first: materialized, they cost full passes over memory and keep the epilogue from
    # fusing into the write-back (the int32 result then makes a round trip through memory too)
    _inline_injective_chains(sch, [DOT_BLOCK])
    inline_epilogue(sch, writeback)
    try:
        loops = sch.get_loops(writeback)
        # a byte-table read in the epilogue pays in wider vectors on some CPUs (AVX2 shuffles)
        width = table_read_lanes(sch.get(writeback), target) or dot.lanes
        if (_extent(sch, loops[-1]) or 1) % width:
            width = dot.lanes
        across, vec = sch.split(loops[-1], factors=[None, width])
        sch.vectorize(vec)
        # straight-line vector code for the whole tile: left as loops, LLVM re-vectorizes the
        # write-back across the vectors (element gathers instead of vector loads on AVX2)
        sch.unroll(across)
        sch.unroll(loops[-2])
    except Exception:  # noqa: BLE001 - an unusual epilogue: leave the write-back as is
        pass
    if widen:
        schedule_injective(sch, sch.get(widen[0]).name_hint, 2 * dot.lanes)
    if not tensorize:
        return ci
    sch.tensorize(ci, _register_intrinsic(dot))
    return None


def _packed_layout(block) -> tuple[int, int, str] | None:
    """``(lanes, block, weight dtype)`` of a packed convolution block's weights
    ``[OC/lanes, KH, KW, IC/block, lanes, block]``: which :class:`DotProduct` packed them."""
    from mmopt.codegen.cpu_schedules import region_buffer

    for region in block.reads:
        buf = region_buffer(region)
        if len(buf.shape) == 6:
            return int(buf.shape[4]), int(buf.shape[5]), str(buf.dtype)
    return None


def _has_dot_block(func) -> bool:
    # cheap filter first (a 6-D integer parameter: the packed weights), then the block names
    params = [p for p in func.params if hasattr(p, "shape")]  # TVM 0.27: parameters are buffers
    if not any(len(p.shape) == 6 and str(p.dtype) in ("int8", "int16") for p in params):
        return False
    return DOT_BLOCK in func.script(show_meta=False)


def dot_schedule_pass():
    """Schedules the fused PrimFuncs that contain a :data:`DOT_BLOCK` (others are left to the
    default CPU schedules, which run after this pass), then notes which path every quantized
    kernel takes (:func:`record_int8_kernels`)."""
    import tvm
    from tvm.s_tir import dlight as dl

    from mmopt.codegen import cpu_schedules as cs

    class _Rule(dl.ScheduleRule):
        def apply(self, func, target, tunable):  # noqa: ARG002 - dlight's signature
            from tvm import s_tir

            dots = dot_products_for(target)
            if not dots or not _has_dot_block(func):
                return None
            sch = s_tir.Schedule(func)
            what = "dot-product schedule"
            try:
                root = sch.get_sblock("root")
                blocks = [b for b in sch.get_child_blocks(root)
                          if sch.get(b).name_hint.startswith(DOT_BLOCK)]
                if len(blocks) != 1:
                    return None
                block_name = sch.get(blocks[0]).name_hint
                layout = _packed_layout(sch.get(blocks[0]))
                dot = next(d for d in dots if layout is not None and d.packs(*layout))
                what = f"{dot.name} dot-product schedule"
                instruction_loop = schedule_dot_conv(sch, blocks[0], dot, tensorize=False,
                                                     target=target)
            except Exception as exc:  # noqa: BLE001 - leave it to the default schedules
                _note_integer_loop(func, what, exc)
                return None
            lanes = max(4, cs._vector_bits(target) // 32)  # noqa: SLF001
            for block_rv in sch.get_child_blocks(sch.get_sblock("root")):
                block = sch.get(block_rv)
                if block.name_hint == block_name or block.name_hint.startswith(block_name + "_"):
                    continue
                kind = (cs.schedule_reduction if "R" in cs._iter_kinds(block)  # noqa: SLF001
                        else cs.schedule_injective)
                extra = () if kind is cs.schedule_reduction else (target,)
                sch = cs._try(sch, kind, block.name_hint, lanes, *extra)  # noqa: SLF001
            try:
                sch.tensorize(instruction_loop, _register_intrinsic(dot))
            except Exception as exc:  # noqa: BLE001 - leave it to the default schedules
                _note_integer_loop(func, f"{dot.name} tensorization", exc)
                return None
            return sch

    return tvm.transform.Sequential([dl.ApplyDefaultSchedule(_Rule()), _log_int8_kernels()],
                                    name="mmopt_dot_schedule")


def _note_integer_loop(func, what: str, exc: BaseException) -> None:
    """The packed integer convolution ``func``, whose instruction schedule failed, runs the default
    schedule's integer loop instead (correct, several times slower): reported as degraded, with
    the reason, and named by its packed weights' shape."""
    from mmopt.codegen import cpu_schedules as cs

    weights = next(("x".join(str(d) for d in p.shape) for p in func.params
                    if hasattr(p, "shape") and len(p.shape) == 6), "?")
    cs.note_skip(f"{DOT_BLOCK} (weights {weights})", what,
                 cs.exception_reason(exc)[:200] + "; the integer loop runs instead",
                 kind="degraded")


# --------------------------------------------------------------------------------------------------
# which path each quantized kernel took

#: where :func:`_log_int8_kernels` reports (see :func:`record_int8_kernels`)
_INT8_KERNELS: contextvars.ContextVar[list | None] = contextvars.ContextVar("mmopt_int8_kernels",
                                                                             default=None)


@contextlib.contextmanager
def record_int8_kernels():
    """Collect, while the block runs, the arithmetic of every convolution/matmul kernel of a
    compiled quantized model: a list of ``{"kernel", "path"}`` (plus ``"lanes"`` for an
    instruction path) where ``path`` is the :class:`DotProduct`'s name (``"vnni"``,
    ``"vnni256"``, ``"pmaddwd"``, ``"sdot"``), ``"integer-loop"`` (integer arithmetic with ordinary
    vector instructions: depthwise convolutions, channel counts no instruction fits) or
    ``"float"`` (a contraction left in float: not quantized, or activation x activation). Stays
    empty for a model without integer kernels. ``kernel`` is the fused function's name, as
    profilers show it."""
    outer = _INT8_KERNELS.get()
    found: list[dict] = []
    token = _INT8_KERNELS.set(found)
    try:
        yield found
    finally:
        _INT8_KERNELS.reset(token)
        if outer is not None:  # nested (a caller records around mmopt.compile): it sees them too
            outer.extend(found)


def kernel_path(func, dots) -> dict | None:
    """``{"path", ["lanes"]}`` of a PrimFunc after :func:`dot_schedule_pass` scheduled it: the
    dot-product instruction it calls, else integer or float arithmetic when it has a
    contraction (a product summed into its output), else None."""
    from tvm import s_tir
    from tvm.ir import IRModule

    integer = {"int8", "uint8", "int16"}
    params = [p for p in func.params if hasattr(p, "shape")]  # TVM 0.27: parameters are buffers
    if any(len(p.shape) == 6 and str(p.dtype) in integer for p in params):  # packed weights
        text = func.script(show_meta=False)
        for dot in dots:
            if dot.llvm_intrinsic in text:
                return {"path": dot.name, "lanes": dot.lanes}
        return {"path": "integer-loop"}
    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
        # scheduled from a tuning database: its anchor block is gone; integer by its operands
        if any(len(p.shape) >= 2 and str(p.dtype) in integer for p in params):
            return {"path": "integer-loop"} if '"int32"' in func.script(show_meta=False) else None
        return None
    try:
        anchor = s_tir.analysis.find_anchor_sblock(IRModule({"main": func}))
    except Exception:  # noqa: BLE001 - several anchor candidates: not one contraction
        return None
    if anchor is None or not _is_product_sum(anchor) or len(anchor.writes) != 1:
        return None
    from mmopt.codegen.cpu_schedules import region_buffer

    out = str(region_buffer(anchor.writes[0]).dtype)
    reads = {str(region_buffer(r).dtype) for r in anchor.reads}
    if out == "int32" and reads & integer:
        return {"path": "integer-loop"}
    return {"path": "float"} if out.startswith(("float", "bfloat")) else None


def _is_product_sum(block) -> bool:
    """``out = out + a * b`` of two tensor values (a contraction's update; pooling and means sum
    without a product, or with a constant one: the mean of a dequantized tensor sums
    ``(q - z) * s``)."""
    body = block.body
    if type(body).__name__ != "BufferStore":
        return False
    value = body.value
    if type(value).__name__ != "Add":
        return False
    products = [v for v in (value.a, value.b) if type(v).__name__ == "Mul"]
    return any(type(p.a).__name__ not in _CONSTANTS and type(p.b).__name__ not in _CONSTANTS
               for p in products)


_CONSTANTS = ("FloatImm", "IntImm")


def _log_int8_kernels():
    """Module pass: report the path of every kernel (:func:`kernel_path`) to an active
    :func:`record_int8_kernels`, when the module has integer kernels at all."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="mmopt_log_int8_kernels")
    def _pass(mod, _ctx):
        log = _INT8_KERNELS.get()
        target = tvm.target.Target.current(allow_none=True)
        if log is None or target is None:
            return mod
        dots = dot_products_for(target)
        entries = []
        for gvar, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc):
                path = kernel_path(func, dots)
                if path is not None:
                    entries.append({"kernel": gvar.name_hint, **path})
        if any(e["path"] != "float" for e in entries):
            log.extend(sorted(entries, key=lambda e: e["kernel"]))
        return mod

    return _pass
