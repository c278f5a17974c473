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
inference) into NHWC: ``permute(pad(permute(x)))`` -> ``pad(x)``. :mod:`mmopt.codegen.int8_dot` then
gives the integer convolutions pre-packed weights and tensorizes them to the target's dot-product
instruction; :mod:`mmopt.codegen.int8_paths` reports which path each kernel took.

Numerics: the integer accumulation is exact, so the only rounding is the final float scale and the
requantization — the same as onnxruntime's reference execution of the QDQ graph up to float
rounding (the multiplication by ``1/s`` instead of a division by ``s`` moves the value before
rounding by at most one float32 ulp).
"""

from __future__ import annotations

import numpy as np

from mmopt.codegen.relax_util import (bindings, const_array, module_uses, op_name, pattern_pass,
                                      tensor_dtype)

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
