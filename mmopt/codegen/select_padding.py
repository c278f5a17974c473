"""Integer grouped (depthwise) NHWC convolutions whose zero padding is a select, not a branch.

A quantized depthwise convolution reads its 8-bit activation padded with the zero point, an
explicit ``pad`` before it (:mod:`mmopt.codegen.quantized`) that this pass folds into the
convolution, and its schedule inlines that padding into the micro-kernel
(:func:`mmopt.codegen.cpu_inline._inline_plain_copies`). TVM's padding is
``if_then_else(inside, x[y - top, x - left], 0)``, which LLVM code generation lowers to a branch
around the load, since the load must not run when it would read outside the tensor. With a
branch between every multiply-add of the register tile, LLVM stores the accumulators to memory
after each one (they live across basic blocks): MobileNetV2's int8 depthwise kernels ran a store
per ``vpmulld``.

Here the padded copy reads the input at indices clamped into the tensor and selects zero where
the position lies in the padding::

    pad[b, y, x, c] = inside(y, x) ? data[b, clamp(y - top, 0, H - 1), clamp(x - left, 0, W - 1), c] : v

which equals the original where ``inside`` holds (the clamp is then the identity) and is the pad
value ``v`` (the zero point; 0 for a convolution's own padding) elsewhere, as before. Every load
is in bounds, so LLVM emits a straight line of loads (masked loads on AVX-512) and keeps the
accumulators in registers. ``inside`` is written as ``clamp(y) == y``: TVM's simplifier rewrites
a select's true value under its condition, and from plain bounds on ``y`` it proves the clamps
redundant and drops them (the AVX2 kernel then read outside the tensor). The extra compares
cost MobileNetV2's depthwise kernels ~5% on ``x86-vnni`` (0.60 -> 0.64 ms summed).

Measured (MobileNetV2-style int8, sum of the 17 depthwise kernels' minimums over 100 runs,
``mmopt profile``, Zen 4, 2 threads): ``x86-vnni`` 0.678 -> 0.605 ms, where the padding becomes
masked loads; ``x86-avx2`` unchanged within the noise (0.92-0.95 ms both), where it becomes a
blend. The float depthwise convolutions keep TVM's padding: the same rewrite measured no faster
there (LLVM already keeps their accumulators in registers).
"""

from __future__ import annotations

import numpy as np

from mmopt.codegen.relax_util import conv_output_size, rewrite_nhwc_convs, tensor_dtype

#: activation dtypes whose grouped convolutions are rewritten: the 8-bit activation of a quantized
#: depthwise convolution (:mod:`mmopt.codegen.quantized`), padded with its zero point by an
#: explicit ``pad`` this pass folds in, and int16 activations (padded with zeros by the
#: convolution itself)
_INTEGER_INPUTS = ("uint8", "int8", "int16")


def _grouped_conv_te(data, weight, strides, padding, dilation, groups: int, out_dtype: str,
                     pad_value: int = 0):
    """NHWC grouped convolution of ``data`` with HWIO ``weight`` (``IC / groups`` input channels
    per output channel), summed in ``out_dtype``, padding (with ``pad_value``) as described in the
    module docstring."""
    from tvm import te, tirx

    n, h, w, _ic = data.shape
    kh, kw, icg, oc = (int(d) for d in weight.shape)
    ocg = oc // groups
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    if any(padding):
        source = data

        def pad(b, y, x, c):
            yy = tirx.max(tirx.min(y - top, h - 1), 0)
            xx = tirx.max(tirx.min(x - left, w - 1), 0)
            # "inside" stated through the clamped indices: TVM's simplifier rewrites a select's
            # true value under its condition, and with the condition written as bounds on y and
            # x it proved the clamps redundant and removed them -- a plain (unmasked) load then
            # read outside the tensor at the borders (AVX2 blends; segfault at a page edge)
            inside = tirx.all(yy == y - top, xx == x - left)
            return tirx.Select(inside, source[b, yy, xx, c], tirx.const(pad_value, data.dtype))

        data = te.compute((n, h + top + bottom, w + left + right, data.shape[3]), pad,
                          name="pad_temp")
    oh = conv_output_size(data.shape[1], kh, sh, dh)
    ow = conv_output_size(data.shape[2], kw, sw, dw)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rc = te.reduce_axis((0, icg), "rc")
    return te.compute(
        (n, oh, ow, oc),
        lambda b, y, x, c: te.sum(
            data[b, y * sh + ry * dh, x * sw + rx * dw, c // ocg * icg + rc].astype(out_dtype)
            * weight[ry, rx, rc, c].astype(out_dtype), axis=[ry, rx, rc]),
        name="group_conv2d_nhwc")


def select_padding():
    """The Relax pass described in the module docstring: every NHWC grouped convolution of an
    integer activation (:data:`_INTEGER_INPUTS`) with constant weights becomes the TE above."""
    import tvm
    from tvm import relax

    def rewrite(call, w, builder, lookup):
        attrs = call.attrs
        out_dtype = str(attrs.out_dtype) if attrs.out_dtype is not None else ""
        if tensor_dtype(call.args[0]) not in _INTEGER_INPUTS or out_dtype != "int32":
            return None
        data, padding = call.args[0], [int(v) for v in attrs.padding]
        pad_value = 0
        folded = _spatial_pad(lookup(data)) if not any(padding) else None
        if folded is not None:
            data, padding, pad_value = folded
        return builder.call_te(
            _grouped_conv_te, data, relax.const(np.ascontiguousarray(w)),
            [int(v) for v in attrs.strides], padding, [int(v) for v in attrs.dilation],
            int(attrs.groups), out_dtype, pad_value, primfunc_name_hint="group_conv2d_nhwc")

    @tvm.transform.module_pass(opt_level=0, name="mmopt_select_padding")
    def _pass(mod, _ctx):
        return rewrite_nhwc_convs(mod, rewrite, grouped=True, with_lookup=True)

    return _pass


def _spatial_pad(expr):
    """``(data, [top, left, bottom, right], value)`` when ``expr`` is a constant-mode NHWC
    ``pad`` of an integer tensor on height and width only (the quantized depthwise convolution's
    input padded with its zero point), else None."""
    from mmopt.codegen.relax_util import op_name

    if expr is None or op_name(expr) != "relax.nn.pad" or str(expr.attrs.pad_mode) != "constant":
        return None
    width = [int(v) for v in expr.attrs.pad_width]  # (before, after) per NHWC axis
    value = float(expr.attrs.pad_value)
    if len(width) != 8 or any(width[:2]) or any(width[6:]) or value != int(value):
        return None
    data = expr.args[0]
    if tensor_dtype(data) not in _INTEGER_INPUTS:
        return None
    return data, [width[2], width[4], width[3], width[5]], int(value)
