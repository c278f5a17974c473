"""Exact integer Winograd F(2x2, 3x3) for int8 3x3 convolutions on x86 CPUs without VNNI.

Without a byte dot product (AVX2: AMD Zen 2/3, Intel Haswell..Skylake client) a direct int8
convolution multiplies with ``vpmaddubsw`` + ``vpmaddwd`` (:mod:`mmopt.codegen.int8_x86`): 32
multiply-adds per 2 multiplier instructions, about twice the float FMA rate. Float 3x3 layers
then run as Winograd F(4x4, 3x3) with 4x fewer multiplications (:mod:`mmopt.codegen.winograd`),
so on large maps the int8 convolution lost to the float one it replaces (YOLOv8n's 80x80 head
convolutions on Zen 5, ``x86-avx2``: 1.44 ms int8 against ~1 ms float).

F(2x2, 3x3) over the points (0, 1, -1) has integer transforms once its filter matrix is doubled:
``B^T`` and ``A^T`` have entries 0 and +-1, ``2G`` entries 0, +-1 and 2. So, with ``d`` a 4x4
tile of the (zero-point padded) uint8 input and ``g`` a 3x3 int8 filter::

    V = B^T d B                 int16: |V| <= 4 * 255 = 1020
    U = (2G) g (2G)^T           int16: |U| <= 9 * 128 = 1152, computed at compile time
    M = sum over input channels of V * U        (int32, vpmaddwd: int16 pairs summed into int32)
    y = (A^T M A) / 4           exactly the direct convolution's int32 sum

Every step is integer arithmetic: ``A^T M A`` is 4 times the direct sum, so the shift by 2 is
exact and the result is bit-identical to the direct kernel's (and to onnxruntime's QDQ reference).
int32 sums wrap modulo 2^32, so only the final ``4 y`` has to fit: ``|4 y| <= 36 * IC * 255 *
max|w|`` is checked per layer (:func:`fits_int32`). The zero-point correction and the requantizing
epilogue stay as they are, fused into the output transform.

Cost per output against the direct kernel: the GEMM does 16 products per 4 outputs instead of 36
(2.25x fewer), at 16 multiply-adds per ``vpmaddwd`` + ``vpaddd`` (the direct kernel: 32 per
``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd``); the transforms write V (int16, 4x the input) and M
(int32, 4x the output) through the caches. It is taken where that pays (:func:`applies`: the
float path's transformed-size limit, even maps of at least :data:`MIN_PIXELS`), only on targets
whose widest dot product is not a byte dot product (VNNI and ``sdot`` multiply 4 bytes per lane
per instruction: 2.25x fewer products do not beat that). ``--no-winograd`` turns it off with the
float one.

The GEMM is scheduled here (:func:`schedule_gemm`), as the direct dot-product convolution is
(:func:`mmopt.codegen.int8_dot.schedule_dot_conv`): a register tile of ``rows`` tiles x ``nv``
vectors of output channels, tensorized with the ``vpmaddwd`` instruction
(:class:`mmopt.codegen.int8_x86.WideningDotProduct`); the transformed weights are packed
``[n, n, OC/lanes, IC/2, lanes, 2]`` so that one instruction's weights are contiguous.
"""

from __future__ import annotations

import numpy as np

from mmopt.codegen import winograd as wino

#: block name of the integer Winograd GEMM
GEMM_BLOCK = "mmopt_winograd_igemm"
#: output tile size (F(2x2, 3x3): the one with integer transforms)
M = 2
#: the filter matrix is doubled on both sides: the output transform shifts right by 2
SHIFT = 2
#: least ``IC * OC / (IC + OC)`` (half the harmonic mean of the channel counts) worth it: the
#: GEMM saves work in proportion to ``IC * OC``, the transforms cost in proportion to ``IC`` (V)
#: and ``OC`` (M), and narrow GEMMs run below the instruction's rate. Measured per layer on Zen 5,
#: ``x86-avx2``, int8 conv + SiLU (transforms + GEMM against the direct kernel): 16 -> 16 at
#: 160x160 (8) 0.59 vs 0.31 ms, 32 -> 32 at 80x80 (16) 0.275 vs 0.262, 96 -> 24 at 80x80 (19.2)
#: 0.58 vs 0.53; 64 -> 64 at 80x80 (32) 0.63 vs 0.90, 64 -> 64 at 40x40 0.15 vs 0.24, 64 -> 80 at
#: 80x80 (35.6) 0.82 vs 1.13, 128 -> 128 at 20x20 0.13 vs 0.22, 256 -> 256 at 14x14 0.24 vs 0.43
MIN_CHANNEL_MEAN = 32
#: smallest output (H*W) transformed: the float path's former limit (the float path now goes down
#: to 7 x 7, :data:`mmopt.codegen.winograd.MIN_PIXELS`); the integer transforms (int16 V, int32 M)
#: were not measured below 14 x 14, and odd maps are not taken here
MIN_PIXELS = 14 * 14


def transform_weights(hwio: np.ndarray, lanes: int) -> np.ndarray:
    """``U = (2G) g (2G)^T`` of int8 HWIO weights, exactly, packed as int16
    ``[n, n, OC/lanes, IC/2, lanes, 2]`` (n = 4)."""
    g2 = 2 * wino.matrices(M)[1]
    if not np.array_equal(g2, np.round(g2)):
        raise ValueError("F(2, 3)'s doubled filter matrix is not integer")
    g2 = np.round(g2).astype(np.int64)
    u = np.einsum("ak,bl,klio->abio", g2, g2, hwio.astype(np.int64))  # [4, 4, IC, OC]
    n, ic, oc = M + 2, hwio.shape[2], hwio.shape[3]
    u = u.reshape(n, n, ic // 2, 2, oc // lanes, lanes).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(u.astype(np.int16))


def fits_int32(hwio: np.ndarray) -> bool:
    """Whether 4x the direct sum of this layer fits int32 for any uint8 input (module
    docstring)."""
    ic = hwio.shape[2]
    largest = int(np.abs(hwio.astype(np.int64)).max()) if hwio.size else 0
    return 4 * 9 * ic * 255 * largest < 2 ** 31


def applies(data_shape, hwio: np.ndarray, strides, dilation, lanes: int) -> bool:
    """Whether F(2x2, 3x3) replaces the direct int8 convolution of pre-padded NHWC ``data_shape``
    (static) by HWIO int8 weights: 3x3, stride 1, an even output of at least
    :data:`MIN_PIXELS` pixels, enough channels
    (:data:`MIN_CHANNEL_MEAN`; an even input count, an output count of whole vectors), V and M
    within :data:`~mmopt.codegen.winograd.MAX_TRANSFORMED_BYTES`, and :func:`fits_int32`."""
    if any(d is None for d in data_shape):
        return False
    n, hp, wp, ic = data_shape
    kh, kw, _, oc = hwio.shape
    h, w = hp - 2, wp - 2
    if not ((kh, kw) == (3, 3) and list(strides) == [1, 1] and list(dilation) == [1, 1]
            and h > 0 and w > 0 and h % 2 == 0 and w % 2 == 0 and h * w >= MIN_PIXELS
            and ic * oc >= MIN_CHANNEL_MEAN * (ic + oc) and ic % 2 == 0 and oc % lanes == 0):
        return False
    tiles = n * (h // 2) * (w // 2)
    v_bytes, m_bytes = 16 * tiles * ic * 2, 16 * tiles * oc * 4
    return max(v_bytes, m_bytes) <= wino.MAX_TRANSFORMED_BYTES and fits_int32(hwio)


def _gemm_te(v, u):
    """``M[p, e, co] = sum_c V[e, p, c] * U[e, c, co]`` (int16 x int16 -> int32) over the packed
    ``U`` of :func:`transform_weights`. M is tile-major: the output transform reads each tile's
    16 products from one place (``output_te(..., tile_major=True)``)."""
    from tvm import te

    positions, tiles, ic = (int(d) for d in v.shape)
    n, _, blocks, _pairs, lanes, k = (int(d) for d in u.shape)
    rc = te.reduce_axis((0, ic // k), "rc")
    ri = te.reduce_axis((0, k), "ri")
    return te.compute(
        (tiles, positions, blocks * lanes),
        lambda p, e, co: te.sum(
            v[e, p, rc * k + ri].astype("int32")
            * u[e // n, e % n, co // lanes, rc, co % lanes, ri].astype("int32"),
            axis=[rc, ri]),
        name=GEMM_BLOCK)


def schedule_gemm(func, dot):
    """The GEMM's PrimFunc scheduled for ``dot`` (a ``vpmaddwd``
    :class:`~mmopt.codegen.int8_x86.WideningDotProduct`): per transformed position ``e`` and
    block of ``nv`` output vectors (in parallel), ``rows`` tiles at a time accumulate in
    registers over the input channel pairs (:meth:`DotProduct.register_tile`, as a 1x1
    convolution's); marked scheduled and opaque (FuseOps would drop the schedule)."""
    from tvm import s_tir

    from mmopt.codegen.int8_dot import accumulate_in_registers, register_intrinsic

    sch = s_tir.Schedule(func)
    block = sch.get_sblock(GEMM_BLOCK)
    p, e, co, rc, ri = sch.get_loops(block)
    tiles, channels = (int(sch.get(x).extent) for x in (p, co))
    rows, nv = dot.register_tile(channels // dot.lanes, tiles, 8, 1, int(sch.get(rc).extent))
    co_o, cv, ci = sch.split(co, factors=[None, nv, dot.lanes])
    p_o, p_i = sch.split(p, factors=[None, rows])
    sch.reorder(e, co_o, p_o, rc, p_i, cv, ci, ri)
    sch.parallel(sch.fuse(e, co_o))
    writeback = accumulate_in_registers(sch, block, p_o, rc, [p_i, cv])
    loops = sch.get_loops(writeback)
    across, vec = sch.split(loops[-1], factors=[None, dot.lanes])
    sch.vectorize(vec)
    sch.unroll(across)
    sch.unroll(loops[-2])
    sch.tensorize(ci, register_intrinsic(dot))
    return (sch.mod["main"].with_attr("tirx.is_scheduled", True)
            .with_attr("op_pattern", wino.OPAQUE))


def _same_padding(expr, lookup) -> tuple[object, int] | None:
    """``(x, value)`` when ``expr`` is ``pad(x)`` by one row and column of a constant byte
    ``value`` on each side of the height and width of NHWC data (the zero-point padding of a
    "same" int8 3x3 convolution), else None."""
    from mmopt.codegen.relax_util import op_name

    bound = lookup(expr) if lookup is not None else None
    if bound is None or op_name(bound) != "relax.nn.pad":
        return None
    attrs = bound.attrs
    value = float(attrs.pad_value)
    if (str(attrs.pad_mode) != "constant" or [int(v) for v in attrs.pad_width]
            != [0, 0, 1, 1, 1, 1, 0, 0] or value != int(value) or not 0 <= value <= 255):
        return None
    return bound.args[0], int(value)


def winograd_conv(builder, x, hwio: np.ndarray, dot, lookup=None):
    """Emit the three kernels of integer F(2x2, 3x3) for the int32 ``conv2d(x, hwio)`` (3x3,
    stride 1, ``x`` pre-padded uint8 NHWC, int8 HWIO weights) with ``builder``; returns the NHWC
    int32 output expression (the direct convolution's, exactly). Where ``x`` is the zero-point
    padding of another tensor (``lookup`` finds its binding), the input transform reads that
    tensor and supplies the padding itself: the output transform's consumers then write the
    output's own shape, which its tiled schedule needs
    (:func:`mmopt.codegen.winograd.schedule_output`; a pad after it was fused into it)."""
    from tvm import relax

    n, hp, wp, ic = (int(d) for d in x.ty.shape)
    lanes = dot.lanes
    source, padding, value = x, 0, 0
    padded = _same_padding(x, lookup)
    if padded is not None:
        (source, value), padding = padded, 1
    # the input transform: int16 vectors (twice the int32 lanes)
    v = builder.emit(wino.input_transform(builder, source, 2 * lanes, 1, M, padding=padding,
                                          dtype="int16", pad_value=value))
    u = relax.const(transform_weights(hwio, lanes))
    call = builder.call_te(_gemm_te, v, u, primfunc_name_hint=GEMM_BLOCK)
    gvar = call.args[0]
    builder.update_func(gvar, schedule_gemm(builder.get()[gvar], dot))
    products = builder.emit(call)
    return builder.call_te(wino.output_te, products, n, hp - 2, wp - 2, M, SHIFT, True,
                           primfunc_name_hint=wino.OUTPUT_BLOCK)


def rewrite(call, w: np.ndarray, builder, dots, lookup=None):
    """For :func:`mmopt.codegen.int8_dot.pack_dot_convs`: the Winograd form of the integer
    convolution ``call`` (pre-padded uint8 data, int8 HWIO weights ``w``, int32 out), or None
    where it does not apply: a target with a byte dot product, or :func:`applies` says no.
    ``lookup``: the binding of a variable (to find the input's padding)."""
    from mmopt.codegen.int8_x86 import PairSumDotProduct, WideningDotProduct

    if not dots or not isinstance(dots[0], (PairSumDotProduct, WideningDotProduct)):
        return None  # a byte dot product (VNNI, sdot) multiplies faster than 2.25x fewer pairs
    widening = [d for d in dots if isinstance(d, WideningDotProduct)]
    attrs = call.attrs
    shape = [getattr(d, "value", None) for d in call.args[0].ty.shape]
    for dot in widening:  # widest first
        if applies(shape, w, [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation],
                   dot.lanes):
            return winograd_conv(builder, call.args[0], w, dot, lookup)
    return None
