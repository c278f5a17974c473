"""Caffe's Convolution, Deconvolution, InnerProduct and Pooling layers -> ONNX Conv, ConvTranspose,
Gemm and the pools, with Caffe's per-dimension kernel/stride/pad parameters.

* **Pooling output size.** Caffe rounds up by default: ``out = ceil((in + 2p - k) / s) + 1``, then
  drops the last window when padding is present and it would start inside the bottom/right padding
  (``(out - 1) * s >= in + p``). The converter computes that size and writes the ONNX pool with
  ``ceil_mode=0`` and an extra end pad ``e`` that yields it (``floor((in + 2p + e - k) / s) + 1``).
  MAX ignores padded cells, as Caffe does. For AVE, Caffe divides by the window clipped to
  ``[-p, in + p)``: counting the user's padding, not the rounding overflow. So when both are
  present the padding becomes an explicit zero ``Pad`` and the pool counts only real cells
  (``count_include_pad=0``) of that padded tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmopt.frontends.caffe.context import _Context, _axis, converts


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
