"""Winograd F(2x2, 3x3) for float NHWC 3x3 convolutions (stride 1, "same" padding) on CPUs.

A direct 3x3 convolution does 9 multiply-adds per output and input channel; on the 3x3 layers of a
ResNet the default schedule already runs near the machine's FMA peak, so fewer multiplications is
the remaining lever. Winograd's minimal filtering computes each 2x2 output tile from a 4x4 input
tile with 16 element-wise products instead of 36 (2.25x fewer), as three kernels:

1. input transform: ``V[e, p, c] = (B^T d_p B)[e]`` for every 4x4 input tile ``d_p`` (tiles overlap
   by 2; ``e`` = the 16 positions of the transformed tile, ``p`` = the tile);
2. 16 independent matrix products ``M[e] = V[e] @ U[e]`` over the input channels, where
   ``U[e] = (G g G^T)[e]`` is the transformed filter, computed at compile time and pre-packed like
   :mod:`mmopt.codegen.packed_conv`'s weights (``[16, OC/tile, IC, tile]``) -- the default
   contraction schedule (and tuning) handles it as any batched matmul;
3. output transform: ``Y_p = A^T M_p A`` (2x2 per tile), written in NHWC so bias/activation
   epilogues fuse into it.

The transforms are sums with fixed small coefficients (0, +-1, +-1/2), so F(2x2, 3x3) is accurate to
a few float32 ulps of the direct sum. Used only where it pays: output sizes at least
:data:`MIN_PIXELS` pixels and even, both channel counts at least :data:`MIN_CHANNELS` (small layers
are dominated by the transforms) and transformed tensors of at most :data:`MAX_TRANSFORMED_BYTES`.
The compile option ``--no-winograd`` (``CodegenOptions.winograd``) turns it off.

Dynamic shapes: batch, height and width may be symbolic; the tile counts are then expressions of
them (rounded up where a size may be odd), and the choice is made for the middle of the dims'
ranges (:func:`choice_shape`).
"""

from __future__ import annotations

import numpy as np

from mmopt.codegen.register_tiles import pick_lanes
from mmopt.codegen.packed_conv import output_tile
from mmopt.codegen.relax_util import tensor_dtype

#: block names (the GEMM is what the schedules and tuning see as a contraction)
INPUT_BLOCK = "mmopt_winograd_input"
GEMM_BLOCK = "mmopt_winograd_gemm"
OUTPUT_BLOCK = "mmopt_winograd_output"

#: smallest output (H*W) and channel counts transformed (7x7 outputs pay more for their padded
#: tiles and 16x larger transformed weights than they save)
MIN_PIXELS = 14 * 14
MIN_CHANNELS = 16
#: largest transformed tensor (V or M, 4x the input or output) worth writing out: beyond the caches
#: the transforms cost more than the multiplications save (measured: the 160x160x96 -> 24 layer of
#: the PP-OCR detector got slower)
MAX_TRANSFORMED_BYTES = 8 << 20

#: relax's OpPatternKind.kOpaque: FuseOps leaves a function with it alone
OPAQUE = 8

# F(2x2, 3x3) matrices (Lavin & Gray, 2015)
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def transform_weights(hwio: np.ndarray, tile: int) -> np.ndarray:
    """``U = G g G^T`` for every (input, output) channel pair, packed ``[16, OC/tile, IC, tile]``."""
    u = np.einsum("ak,bl,klio->abio", _G, _G, hwio.astype(np.float64))  # [4, 4, IC, OC]
    ic, oc = hwio.shape[2], hwio.shape[3]
    u = u.reshape(16, ic, oc // tile, tile).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(u.astype(np.float32))


def applies(x_shape, w_shape, strides, padding, dilation) -> bool:
    """Whether F(2x2, 3x3) pays for a convolution of input ``x_shape`` (NHWC, integers: for a
    symbolic input, the sizes of :func:`choice_shape`)."""
    n, h, w, ic = x_shape
    kh, kw, _, oc = w_shape
    transformed = 16 * n * (h // 2) * (w // 2) * 4  # bytes per channel of V (input) and M (output)
    return ((kh, kw) == (3, 3) and list(strides) == [1, 1] and list(dilation) == [1, 1]
            and list(padding) == [1, 1, 1, 1] and h % 2 == 0 and w % 2 == 0
            and h * w >= MIN_PIXELS and ic >= MIN_CHANNELS and oc >= MIN_CHANNELS
            and transformed * max(ic, oc) <= MAX_TRANSFORMED_BYTES)


def choice_shape(shape, bounds) -> list[int] | None:
    """The integer NHWC shape that Winograd is chosen for when ``shape`` has symbolic dims (None:
    a dim has no known range).

    A symbolic height or width that is not known to be even (a ``width=80..1600`` input, or a
    ``height=320..1280:32`` one after stride 32) gets its tile count rounded up: the last tile's
    extra row or column is computed and dropped. Whether Winograd *pays* depends on the size
    (:data:`MIN_PIXELS`, :data:`MAX_TRANSFORMED_BYTES`): one kernel serves the whole range, so it
    is chosen for the typical size, each dim at the middle of its range on a log scale
    (:func:`mmopt.codegen.symbolic_dims.typical_value`: 640 for 320..1280, batch 2 for 1..4).
    Sizes that matter more get buckets, which are static and choose exactly."""
    from mmopt.codegen.symbolic_dims import typical_value

    values = [typical_value(d, bounds) for d in shape]
    if None in values:
        return None
    # judged as the even size whose tiles it computes
    values[1:3] = [v + v % 2 for v in values[1:3]]
    return values


def _select(index, values):
    """``values[index]`` for a small loop variable ``index`` (a chain of selects)."""
    from tvm import tirx

    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = tirx.Select(index == k, values[k], out)
    return out


def _tile_count(size):
    """2x2 output tiles along an axis of ``size`` outputs: ``size / 2`` when it is known even, else
    rounded up (the last tile's second row or column is computed and dropped)."""
    from mmopt.codegen.cpu_schedules import static_extent
    from mmopt.codegen.register_tiles import known_multiple

    static = static_extent(size)
    even = static % 2 == 0 if static is not None else known_multiple(size) % 2 == 0
    return size // 2 if even else (size + 1) // 2


def _input_te(data, rows=1):
    """``V[e, p, c]``, ``e = 4a + b``: ``(B^T d B)[a, b]`` of the tile ``p``; each ``B^T`` row has
    two non-zeros, so every element is a signed sum of 4 input values. ``rows``: the tile count
    is rounded up to a multiple of it (symbolic counts: whole register tiles in the GEMM, see
    :func:`winograd_conv`); the extra tiles are zeros."""
    from tvm import te, tirx

    n, h, w = (data.shape[i] for i in range(3))  # batch, height, width may be symbolic
    c = data.shape[3]
    nh, nw = _tile_count(h), _tile_count(w)
    count = n * nh * nw
    padded = (count + rows - 1) // rows * rows if rows > 1 else count
    dtype = data.dtype
    # row a of B^T: +-d[first(a)] +- d[second(a)]
    first, second = [0, 1, 1, 1], [2, 2, 2, 3]
    s_first, s_second = [1.0, 1.0, -1.0, 1.0], [-1.0, 1.0, 1.0, -1.0]

    def value(b, y, x, ch):
        # the conv's zero padding of 1: tile (ty, tx) starts at (2ty - 1, 2tx - 1); the tiles of
        # a rounded-up count (b >= n) read zeros
        inside = tirx.all(y >= 0, y < h, x >= 0, x < w, *([b < n] if rows > 1 else []))
        at = data[tirx.min(b, n - 1) if rows > 1 else b, tirx.min(tirx.max(y, 0), h - 1),
                  tirx.min(tirx.max(x, 0), w - 1), ch]
        return tirx.if_then_else(inside, at, tirx.const(0.0, dtype))

    def compute(e, p, ch):
        a, bb = e // 4, e % 4
        b, rest = p // (nh * nw), p % (nh * nw)
        y0, x0 = (rest // nw) * 2 - 1, (rest % nw) * 2 - 1
        total = None
        for ri, rs in ((first, s_first), (second, s_second)):
            for ci, cs in ((first, s_first), (second, s_second)):
                sign = _select(a, [tirx.const(v, dtype) for v in rs]) * _select(
                    bb, [tirx.const(v, dtype) for v in cs])
                term = sign * value(b, y0 + _select(a, ri), x0 + _select(bb, ci), ch)
                total = term if total is None else total + term
        return total

    return te.compute((16, padded, c), compute, name=INPUT_BLOCK)


def _schedule_input(func, lanes: int):
    """The input transform's PrimFunc scheduled: per tile and vector of channels, the 16 outputs
    unrolled (their coefficients fold to constants and the 4x4 input tile is loaded once), tiles
    in parallel."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock(INPUT_BLOCK)
    e, p, ch = sch.get_loops(block)
    vec = pick_lanes(int(sch.get(ch).extent), lanes)
    c_o, c_i = sch.split(ch, factors=[None, vec])
    sch.reorder(p, c_o, e, c_i)
    sch.parallel(p)
    sch.unroll(e)
    if vec > 1:
        sch.vectorize(c_i)
    # opaque to FuseOps: fusing a producer in would drop this schedule (and FuseTIR cannot merge
    # a scheduled function)
    return (sch.mod["main"].with_attr("tirx.is_scheduled", True)
            .with_attr("op_pattern", OPAQUE))


def _input_transform(builder, x, lanes: int, rows: int):
    """``call_tir`` of the scheduled input transform of ``x`` (BlockBuilder.call_te makes the
    PrimFunc, with its own copies of the symbolic variables and, where a shape is an expression
    of them, passes them along; it is scheduled in place)."""
    call = builder.call_te(_input_te, x, rows, primfunc_name_hint=INPUT_BLOCK)
    gvar = call.args[0]
    func = builder.get()[gvar]
    if func.attrs is None or "tirx.is_scheduled" not in func.attrs:  # not a shared copy
        builder.update_func(gvar, _schedule_input(func, lanes))
    return call


def _gemm_te(v, u):
    from tvm import te

    p, ic = v.shape[1], int(v.shape[2])  # tiles: symbolic where the input is
    _e, blocks, _ic, tile = (int(d) for d in u.shape)
    rc = te.reduce_axis((0, ic), "rc")
    return te.compute(
        (16, p, blocks * tile),
        lambda e, q, co: te.sum(v[e, q, rc] * u[e, co // tile, rc, co % tile], axis=[rc]),
        name=GEMM_BLOCK)


def _output_te(m, n, h, w):
    """``Y[b, y, x, co] = (A^T M A)[y % 2, x % 2]`` of tile ``(y // 2, x // 2)``: row ``i`` of
    ``A^T`` is ``[1, 1, 1, 0]`` (i = 0) or ``[0, 1, -1, -1]`` (i = 1), i.e. ``M[k + i]`` for
    ``k = 0..2`` with sign ``+1`` for ``k = 0`` and ``1 - 2i`` otherwise."""
    from tvm import te, tirx

    nh, nw = _tile_count(h), _tile_count(w)  # may be symbolic
    dtype = m.dtype
    oc = int(m.shape[2])

    def compute(b, y, x, co):
        i, j = y % 2, x % 2
        p = b * nh * nw + (y // 2) * nw + x // 2
        si = tirx.Cast(dtype, 1 - 2 * i)
        sj = tirx.Cast(dtype, 1 - 2 * j)
        total = None
        for k in range(3):
            for l in range(3):  # noqa: E741 - the usual name of the second tile index
                term = m[(k + i) * 4 + (l + j), p, co]
                if k:
                    term = term * si
                if l:
                    term = term * sj
                total = term if total is None else total + term
        return total

    return te.compute((n, h, w, oc), compute, name=OUTPUT_BLOCK)


def winograd_conv(builder, x, hwio: np.ndarray, lanes: int, registers: int):
    """Emit the three kernels for ``conv2d(x, hwio)`` (3x3, stride 1, padding 1) with ``builder``;
    returns the NHWC output expression. Batch, height and width may be symbolic (of any parity:
    :func:`choice_shape`)."""
    from tvm import relax

    from mmopt.codegen.cpu_schedules import static_extent, symbolic_tile
    from mmopt.codegen.register_tiles import known_multiple, round_up, rounded_rows

    n, h, w = (x.ty.shape[i] for i in range(3))
    oc = hwio.shape[3]
    # the GEMM's rows are the input tiles: the weights are packed for the output-channel tile the
    # contraction schedule gives them (for a symbolic count, the one it takes for symbolic rows)
    tiles = n * _tile_count(h) * _tile_count(w)
    count, pad_rows = static_extent(tiles), 1
    if count is None:
        multiple = known_multiple(tiles)
        vec, rows, nv = symbolic_tile(oc, None, lanes, registers, multiple)
        tile = nv * vec if vec > 1 else 1
        if multiple % rows:
            # a symbolic count the register tile's rows do not divide: the input transform writes
            # it rounded up (zero tiles), so every GEMM tile is whole (the contraction schedule
            # cannot pad this GEMM itself: its packed weights are not read as an einsum)
            pad_rows = rows
    else:
        # a count without a good register tile (ResNet-50's stage 3 at 224: 7 x 7 = 49 tiles,
        # 7 x 1 on AVX2) is rounded up the way a convolution's width is (50: 5 x 2 tiles)
        rows = rounded_rows(oc, count, lanes, registers)
        if rows is not None:
            pad_rows, count = rows, round_up(count, rows)
        tile = output_tile(oc, count, lanes, registers)
    v = builder.emit(_input_transform(builder, x, lanes, pad_rows))
    u = relax.const(transform_weights(hwio, tile))
    m = builder.emit(builder.call_te(_gemm_te, v, u, primfunc_name_hint=GEMM_BLOCK))
    return builder.call_te(_output_te, m, n, h, w, primfunc_name_hint=OUTPUT_BLOCK)


def rewrite(call, w: np.ndarray, builder, lanes: int, registers: int, bounds=None):
    """For :func:`mmopt.codegen.relax_util.rewrite_dense_nhwc_convs`: the Winograd form of ``call``,
    or None where it does not apply (see the module docstring). ``bounds``: the ranges of the
    module's symbolic variables (:func:`mmopt.codegen.symbolic_dims.symbolic_bounds`)."""
    attrs = call.attrs
    if (tensor_dtype(call.args[0]) != "float32" or w.dtype != np.float32
            or (attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32"))):
        return None
    shape = list(call.args[0].ty.shape)
    if all(hasattr(d, "value") for d in shape):
        x_shape = [int(d) for d in shape]
    else:
        x_shape = choice_shape(shape, bounds or {})
        if x_shape is None:
            if w.shape[:2] == (3, 3) and all(int(v) == 1 for v in attrs.strides):
                from mmopt.codegen.cpu_schedules import note_skip

                note_skip(f"conv2d {'x'.join(str(d) for d in w.shape)} (HWIO)", "winograd",
                          "symbolic shape without a range: the direct convolution runs instead")
            return None
    if not applies(x_shape, w.shape, [int(v) for v in attrs.strides],
                   [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation]):
        return None
    if pick_lanes(w.shape[3], lanes) == 1:
        return None
    return winograd_conv(builder, call.args[0], w, lanes, registers)
