"""Winograd F(m x m, 3x3) (m = 2 or 4) for float NHWC 3x3 convolutions (stride 1, "same"
padding) on CPUs.

A direct 3x3 convolution does 9 multiply-adds per output and input channel; on the 3x3 layers of a
ResNet the default schedule already runs near the machine's FMA peak, so fewer multiplications is
the remaining lever. Winograd's minimal filtering computes each m x m output tile from an n x n
input tile (n = m + 2) with n*n element-wise products: F(2x2, 3x3) 16 per 4 outputs instead of 36
(2.25x fewer), F(4x4, 3x3) 36 per 16 outputs instead of 144 (4x fewer). Three kernels:

1. input transform: ``V[e, p, c] = (B^T d_p B)[e]`` for every n x n input tile ``d_p`` (tiles
   overlap by 2; ``e`` = the n*n positions of the transformed tile, ``p`` = the tile);
2. n*n independent matrix products ``M[e] = V[e] @ U[e]`` over the input channels, where
   ``U[e] = (G g G^T)[e]`` is the transformed filter, computed at compile time and pre-packed like
   :mod:`mmopt.codegen.packed_conv`'s weights (``[n*n, OC/tile, IC, tile]``) -- the default
   contraction schedule (and tuning) handles it as any batched matmul;
3. output transform: ``Y_p = A^T M_p A`` (m x m per tile), written in NHWC so bias/activation
   epilogues fuse into it, and scheduled tile by tile (:func:`schedule_output`).

The matrices come from the Toom-Cook construction (:func:`matrices`). F(2x2, 3x3)'s transforms
are sums with coefficients 0, +-1, +-1/2: accurate to a few float32 ulps of the direct sum.
F(4x4, 3x3) has larger coefficients and 2-3x the direct sum's rounding error (:data:`POINTS`),
and its weights are 36/9 = 4x the direct ones: it is taken where it saves enough products after
rounding the map up to whole 4x4 tiles and its weights stay small (:func:`tile_size`; measured on
ResNet-50's 14 x 14 x 256 layers, 9.4 MB of transformed weights made its GEMM bandwidth-bound: no
gain). Winograd is used only where it pays: output sizes at least :data:`MIN_PIXELS` pixels,
both channel counts at least :data:`MIN_CHANNELS` (small layers are dominated by the
transforms), at most :data:`MAX_WORK` of the direct convolution's multiplications once an odd
side is rounded up to whole tiles (the last tile's extra row or column is computed and dropped),
and transformed tensors of at most :data:`MAX_TRANSFORMED_BYTES`. The compile option
``--no-winograd`` (``CodegenOptions.winograd``) turns it off.

Dynamic shapes: batch, height and width may be symbolic; the tile counts are then expressions of
them (rounded up where m may not divide a size), and the choice is made for the middle of the
dims' ranges (:func:`choice_shape`).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

from mmopt.codegen.register_tiles import pick_lanes
from mmopt.codegen.packed_conv import output_tile
from mmopt.codegen.relax_util import tensor_dtype

#: block names (the GEMM is what the schedules and tuning see as a contraction)
INPUT_BLOCK = "mmopt_winograd_input"
ROWS_BLOCK = "mmopt_winograd_input_rows"
GEMM_BLOCK = "mmopt_winograd_gemm"
OUTPUT_BLOCK = "mmopt_winograd_output"
#: the output transform's block annotation: its tile size m (read by :func:`schedule_output`)
TILE_ATTR = "mmopt.winograd_m"

#: smallest output (H*W) and channel counts transformed. 7 x 7 maps pay: ResNet-50's stage-4 3x3
#: convolutions (7 x 7 x 512) run F(2x2, 3x3) on 4 x 4 tiles (an 8 x 8 map, 0.58x the direct
#: products, 1.8x the weight bytes) in 0.40 ms against 0.54 ms direct (Zen 5, 2 threads, x86;
#: ResNet-50 14.2 -> 13.9 ms, ResNet-18 5.1-5.3 -> 4.6-4.8, the YOLOv8n-style detector at 320
#: with its 10 x 10 maps 2% faster, YOLOX's 13 x 13 and the PP-OCR detector's 10 x 10 level;
#: x86-avx2 ResNet-50 29.4 -> 28.3 ms)
MIN_PIXELS = 7 * 7
#: the limit for a map with symbolic sides (judged at :func:`choice_shape`), kept at the former
#: 14 x 14: a dynamic kernel's legalized element-wise functions take their symbolic parameters in
#: an order TVM does not keep from one process to the next, and the extra Winograd epilogue of a
#: smaller dynamic map made ``mmopt profile``'s re-derived kernel names differ from the artifact's
#: (FLOPs missing for some kernels); the 7 x 7 gain above was measured on static maps
MIN_PIXELS_SYMBOLIC = 14 * 14
MIN_CHANNELS = 16
#: most multiplications, after rounding odd sides up to whole tiles, relative to the direct 3x3
#: convolution's 9 per output (F(2x2) on an even map: 16/36 = 0.44; on 7 x 7: 0.58; a 1 x 49 strip
#: would do 0.91 and pay for its transforms)
MAX_WORK = 0.6
#: largest transformed tensor (V or M: 4x the input or output for F(2, 3), 2.25x for F(4, 3)) worth
#: writing out: beyond the caches the transforms cost more than the multiplications save
#: (measured: the 160x160x96 -> 24 layer of the PP-OCR detector got slower)
MAX_TRANSFORMED_BYTES = 8 << 20

#: relax's OpPatternKind.kOpaque: FuseOps leaves a function with it alone
OPAQUE = 8

#: interpolation points of F(m x m, 3 x 3) by output tile size m (the point at infinity is implied).
#: F(2, 3) takes Lavin & Gray's (0, 1, -1); F(4, 3) takes (0, 1, -1, 1/2, -2) rather than their
#: (0, +-1, +-2): the transforms' float32 rounding error grows with the points' spread, and this set
#: keeps a 256-channel layer within ~4e-6 of the exact sum, relative to its largest output (a
#: direct float32 sum: ~1.5e-6; with (0, +-1, +-2): ~1.2e-5), as error analyses of Toom-Cook
#: filtering recommend
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, Fraction(1, 2), -2)}
#: F(4, 3) replaces F(2, 3) where its tiles (6x6 per 4x4 outputs, 2.25 products per output instead
#: of 4) leave at least this share of the multiplications -- after rounding the map up to whole
#: tiles -- and its transformed weights (36 x IC x OC floats) stay under the limit below
F4_MAX_WORK = 0.8
F4_MAX_WEIGHT_BYTES = 4 << 20


@functools.lru_cache(maxsize=None)
def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of F(m, 3) by the Toom-Cook construction over :data:`POINTS` ``[m]`` and
    the point at infinity (n = m + 2 points): with ``y = A^T [(G g) * (B^T d)]`` the correlation
    ``y_i = sum_k g_k d_{i+k}`` of an n-element input ``d`` and a 3-tap filter ``g``:

    * ``A^T[i, j] = p_j^i`` (the product evaluated back: a Vandermonde matrix; column n-1, the
      point at infinity, is 1 in the last row only);
    * ``G[j, k] = p_j^k / prod_{l != j} (p_j - p_l)`` (the filter polynomial at p_j, with the
      Lagrange denominator folded in at compile time); row n-1 picks the leading coefficient;
    * ``B^T[j]`` = the coefficients of ``prod_{l != j} (x - p_l)`` over the finite points, and row
      n-1 those of ``prod_l (x - p_l)``.

    Computed exactly (fractions), returned as float64."""
    points = [Fraction(v) for v in POINTS[m]]
    n = m + 2

    def poly(roots):  # coefficients of prod (x - r), lowest power first
        c = [Fraction(1)]
        for r in roots:
            c = [Fraction(0)] + c
            for k in range(len(c) - 1):
                c[k] -= r * c[k + 1]
        return c + [Fraction(0)] * (n - len(c))

    at = [[p ** i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(points):
        denominator = Fraction(1)
        for q in points[:j] + points[j + 1:]:
            denominator *= p - q
        g.append([p ** k / denominator for k in range(3)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    bt = [poly(points[:j] + points[j + 1:]) for j in range(n - 1)] + [poly(points)]
    return tuple(np.array([[float(v) for v in row] for row in a]) for a in (at, g, bt))


def transform_weights(hwio: np.ndarray, tile: int, m: int) -> np.ndarray:
    """``U = G g G^T`` for every (input, output) channel pair, packed ``[n*n, OC/tile, IC, tile]``
    (n = m + 2)."""
    g_mat = matrices(m)[1]
    n = m + 2
    u = np.einsum("ak,bl,klio->abio", g_mat, g_mat, hwio.astype(np.float64))  # [n, n, IC, OC]
    ic, oc = hwio.shape[2], hwio.shape[3]
    u = u.reshape(n * n, ic, oc // tile, tile).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(u.astype(np.float32))


def _products(h: int, w: int, m: int) -> int:
    """Element-wise products per (input, output) channel pair of F(m, 3) on an h x w map (also
    the floats per channel of its transformed input V and product M)."""
    return (m + 2) ** 2 * -(-h // m) * -(-w // m)


def tile_size(x_shape, w_shape, strides, padding, dilation,
              min_pixels: int = MIN_PIXELS) -> int | None:
    """The output tile size m of the F(m x m, 3 x 3) that pays for a convolution of input
    ``x_shape`` (NHWC, integers: for a symbolic input, the sizes of :func:`choice_shape`), or None
    where Winograd does not pay (see the module docstring; an odd side is rounded up to whole
    tiles; maps of fewer than ``min_pixels`` outputs are left direct): F(4, 3) where it leaves at
    most :data:`F4_MAX_WORK` of F(2, 3)'s products and its weights fit
    :data:`F4_MAX_WEIGHT_BYTES`, else F(2, 3); either only while its transformed tensors fit
    :data:`MAX_TRANSFORMED_BYTES`."""
    n, h, w, ic = x_shape
    kh, kw, _, oc = w_shape
    if not ((kh, kw) == (3, 3) and list(strides) == [1, 1] and list(dilation) == [1, 1]
            and list(padding) == [1, 1, 1, 1] and h * w >= min_pixels
            and ic >= MIN_CHANNELS and oc >= MIN_CHANNELS
            and _products(h, w, 2) <= MAX_WORK * 9 * h * w):
        return None

    def fits(m):  # V and M, per channel, times the wider side
        return n * _products(h, w, m) * 4 * max(ic, oc) <= MAX_TRANSFORMED_BYTES

    if (_products(h, w, 4) <= F4_MAX_WORK * _products(h, w, 2)
            and 36 * ic * oc * 4 <= F4_MAX_WEIGHT_BYTES and fits(4)):
        return 4
    return 2 if fits(2) else None


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


def _tile_count(size, m: int):
    """m x m output tiles along an axis of ``size`` outputs: ``size / m`` when m is known to
    divide it, else rounded up (the last tile's extra rows or columns are computed and dropped)."""
    from mmopt.codegen.register_tiles import known_multiple
    from mmopt.codegen.tir_util import static_extent

    static = static_extent(size)
    whole = static % m == 0 if static is not None else known_multiple(size) % m == 0
    return size // m if whole else (size + m - 1) // m


def _const(value, dtype: str):
    """A TIR constant of ``dtype`` (float or integer) for a float64 matrix entry (integer types:
    only the integer matrices of F(2, 3) come here, :mod:`mmopt.codegen.int8_winograd`)."""
    from tvm import tirx

    if str(dtype).startswith(("int", "uint")):
        if value != int(value):
            raise ValueError(f"{value} is not an integer ({dtype} transform)")
        return tirx.const(int(value), dtype)
    return tirx.const(float(value), dtype)


def _weighted_sum(terms, dtype):
    """``sum c * x`` over ``(c, x)`` with constant coefficients: zeros dropped, +-1 as an add or a
    subtract, others multiplied."""
    total = None
    for c, x in terms:
        if c == 0:
            continue
        if abs(c) != 1:
            x = _const(abs(c), dtype) * x
        if total is None:
            total = x if c > 0 else _const(0, dtype) - x
        else:
            total = total + x if c > 0 else total - x
    return total if total is not None else _const(0, dtype)


def _input_te(data, rows: int, m: int, padding: int = 1, dtype: str | None = None,
              pad_value: int = 0):
    """``V[e, p, c]``, ``e = n a + b``: ``(B^T d B)[a, b]`` of the n x n input tile ``p`` (n = m
    + 2; tiles overlap by 2), in two steps with the matrix's zeros left out: ``T[a, j, p, c] =
    sum_i B^T[a, i] d[i, j]`` (:data:`ROWS_BLOCK`), then ``V = sum_j B^T[b, j] T[a, j]``; the
    coefficients are selects on ``a`` and ``b`` that fold once the schedule unrolls them
    (:func:`_schedule_input`). ``rows``: the tile count is rounded up to a multiple of it (whole
    register tiles in the GEMM, see :func:`winograd_conv`); the extra tiles are zeros.
    ``padding``: the convolution's (1: "same", zeros outside ``data``; 0: ``data`` is padded
    already, the output is 2 smaller); ``dtype``: V's type (default ``data``'s; the integer
    transform widens bytes to int16); ``pad_value``: what the padding reads (an int8 model's
    zero point)."""
    from tvm import te, tirx

    n_batch, h, w = (data.shape[i] for i in range(3))  # batch, height, width may be symbolic
    if not padding:
        if rows > 1:  # the rounded-up tiles would read past the data
            raise ValueError("pre-padded input: the tile count cannot be rounded up")
        h, w = h - 2, w - 2  # the output's size
    c = data.shape[3]
    nh, nw = _tile_count(h, m), _tile_count(w, m)
    count = n_batch * nh * nw
    padded = (count + rows - 1) // rows * rows if rows > 1 else count
    dtype = dtype or data.dtype
    bt = matrices(m)[2]
    n = m + 2

    def value(b, y, x, ch):
        if not padding:  # tiles inside the padded data (an even output size)
            return data[b, y, x, ch].astype(dtype)
        # the conv's zero padding of 1: tile (ty, tx) starts at (m ty - 1, m tx - 1); the tiles
        # of a rounded-up count (b >= n_batch) read zeros
        inside = tirx.all(y >= 0, y < h, x >= 0, x < w, *([b < n_batch] if rows > 1 else []))
        at = data[tirx.min(b, n_batch - 1) if rows > 1 else b, tirx.min(tirx.max(y, 0), h - 1),
                  tirx.min(tirx.max(x, 0), w - 1), ch]
        return tirx.if_then_else(inside, at.astype(dtype), _const(pad_value, dtype))

    def row_sums(a, j, p, ch):
        b, rest = p // (nh * nw), p % (nh * nw)
        y0, x0 = (rest // nw) * m - padding, (rest % nw) * m - padding
        d = [value(b, y0 + i, x0 + j, ch) for i in range(n)]
        return _select(a, [_weighted_sum([(bt[r, i], d[i]) for i in range(n)], dtype)
                           for r in range(n)])

    t = te.compute((n, n, padded, c), row_sums, name=ROWS_BLOCK)

    def compute(e, p, ch):
        a, b = e // n, e % n
        return _select(b, [_weighted_sum([(bt[r, j], t[a, j, p, ch]) for j in range(n)], dtype)
                           for r in range(n)])

    return te.compute((n * n, padded, c), compute, name=INPUT_BLOCK)


def _schedule_input(func, lanes: int):
    """The input transform's PrimFunc scheduled: per tile and vector of channels, the n*n outputs
    unrolled row by row (``a``), each row's n partial sums ``T[a, :]`` computed just before it
    into a local tile (n vectors, registers), so every coefficient folds to a constant; tiles in
    parallel."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock(INPUT_BLOCK)
    e, p, ch = sch.get_loops(block)
    n = int(round(int(sch.get(e).extent) ** 0.5))
    vec = pick_lanes(int(sch.get(ch).extent), lanes)
    a, b = sch.split(e, factors=[n, n])
    c_o, c_i = sch.split(ch, factors=[None, vec])
    sch.reorder(p, c_o, a, b, c_i)
    sch.parallel(p)
    sch.unroll(a)
    sch.unroll(b)
    if vec > 1:
        sch.vectorize(c_i)
    rows = sch.get_sblock(ROWS_BLOCK)
    sch.compute_at(rows, a)
    sch.set_scope(rows, 0, "local")
    loops = sch.get_loops(rows)
    j, t_c = loops[-2], loops[-1]
    sch.unroll(j)
    if vec > 1:
        sch.vectorize(t_c)
    # opaque to FuseOps: fusing a producer in would drop this schedule (and FuseTIR cannot merge
    # a scheduled function)
    return (sch.mod["main"].with_attr("tirx.is_scheduled", True)
            .with_attr("op_pattern", OPAQUE))


def input_transform(builder, x, lanes: int, rows: int, m: int, padding: int = 1,
                     dtype: str | None = None, pad_value: int = 0):
    """``call_tir`` of the scheduled input transform of ``x`` (BlockBuilder.call_te makes the
    PrimFunc, with its own copies of the symbolic variables and, where a shape is an expression
    of them, passes them along; it is scheduled in place)."""
    call = builder.call_te(_input_te, x, rows, m, padding, dtype, pad_value,
                           primfunc_name_hint=INPUT_BLOCK)
    gvar = call.args[0]
    func = builder.get()[gvar]
    if func.attrs is None or "tirx.is_scheduled" not in func.attrs:  # not a shared copy
        builder.update_func(gvar, _schedule_input(func, lanes))
    return call


def _gemm_te(v, u):
    from tvm import te

    p, ic = v.shape[1], int(v.shape[2])  # tiles: symbolic where the input is
    positions, blocks, _ic, tile = (int(d) for d in u.shape)
    rc = te.reduce_axis((0, ic), "rc")
    return te.compute(
        (positions, p, blocks * tile),
        lambda e, q, co: te.sum(v[e, q, rc] * u[e, co // tile, rc, co % tile], axis=[rc]),
        name=GEMM_BLOCK)


def _axis_terms(i, m: int, dtype):
    """The terms of ``sum_k A^T[i, k] z_k`` along one axis for a symbolic output position ``i``
    in the tile: ``[(k, coefficient), ...]`` with ``k`` an index expression. The columns of the
    finite non-zero points ``p`` are ``p^i`` (a select on ``i``; 1 for p = 1, no multiply);
    column 0 (p = 0: only i = 0) and column n-1 (infinity: only i = m-1) share one term that reads
    whichever applies."""
    from tvm import tirx

    at = matrices(m)[0]
    n = m + 2
    terms = []
    for k in range(1, n - 1):
        column = at[:, k]
        coef = None if np.all(column == 1) else _select(i, [_const(v, dtype) for v in column])
        terms.append((k, coef))
    edge = [0] + [None] * (m - 2) + [n - 1]
    edge_k = _select(i, [tirx.const(v if v is not None else 0, "int32") for v in edge])
    edge_coef = None if m == 2 else _select(
        i, [_const(1 if v is not None else 0, dtype) for v in edge])
    terms.append((edge_k, edge_coef))
    return terms


def output_te(mm, n_batch, h, w, m: int, shift: int = 0, tile_major: bool = False):
    """``Y[b, y, x, co] = (A^T M A)[y % m, x % m]`` of tile ``(y // m, x // m)``, written in NHWC
    (bias and activation epilogues fuse into it); the terms per axis: :func:`_axis_terms`.
    ``shift``: an integer ``M`` of weights scaled by ``2^shift`` is shifted back (exact: the
    integer transform's sums are multiples of it). ``tile_major``: ``M`` is laid out
    ``[tile, position, channel]`` (each tile's n*n products contiguous) instead of
    ``[position, tile, channel]``."""
    from tvm import te, tirx

    nh, nw = _tile_count(h, m), _tile_count(w, m)  # may be symbolic
    dtype = mm.dtype
    oc = int(mm.shape[2])
    n = m + 2

    def compute(b, y, x, co):
        p = b * nh * nw + (y // m) * nw + x // m
        total = None
        columns = _axis_terms(x % m, m, dtype)
        for k, ck in _axis_terms(y % m, m, dtype):
            for l, cl in columns:  # noqa: E741 - the usual tile index name
                term = mm[p, k * n + l, co] if tile_major else mm[k * n + l, p, co]
                for c in (ck, cl):
                    if c is not None:
                        term = term * c
                total = term if total is None else total + term
        return tirx.shift_right(total, _const(shift, dtype)) if shift else total

    return te.compute((n_batch, h, w, oc), compute, name=OUTPUT_BLOCK, attrs={TILE_ATTR: m})


def output_blocks(sch) -> list[str]:
    """Names of the top-level blocks of a (fused) function that are Winograd output transforms."""
    root = sch.get_sblock("root")
    return [sch.get(b).name_hint for b in sch.get_child_blocks(root)
            if TILE_ATTR in sch.get(b).annotations]


def schedule_output(sch, name: str, lanes: int, table_lanes: int | None = None) -> None:
    """Schedule an output transform (with its fused epilogue) tile by tile: per m x m output tile
    and vector of channels, the transform's m*m outputs are unrolled into a local tile, so ``y %
    m`` and ``x % m`` are constants: the coefficients of :func:`_axis_terms` fold and the tile's
    n*n products are loaded once for all its outputs (as one output per loop iteration, F(4, 3)
    ran 25 loads and multiply-adds of selected coefficients per output: its transform took as long
    as the input transform and a sixth of the GEMM). The element-wise epilogue (bias, activation,
    a residual add), inlined into one block, then reads the local tile in a plain loop: unrolled
    with it, a SiLU's expression 16 times per tile took seconds to compile per layer. A height or
    width that m does not divide leaves a predicate on the last tile. Tiles run in parallel. A
    consumer that writes another shape (a transpose) is left to the element-wise schedule."""
    from mmopt.codegen.byte_lookup import reads_byte_table
    from mmopt.codegen.cpu_inline import inline_intermediates
    from mmopt.codegen.tir_util import region_buffer, static_extent

    block = sch.get_sblock(name)
    m = int(sch.get(block).annotations[TILE_ATTR])
    inline_intermediates(sch, block)
    consumers = sch.get_consumers(block)
    if len(consumers) > 1:
        raise ValueError(f"{len(consumers)} epilogue blocks left after inlining")
    if consumers and ([list(region_buffer(r).shape) for r in sch.get(consumers[0]).writes]
                      != [list(region_buffer(r).shape) for r in sch.get(block).writes]):
        # not an element-wise epilogue in the same layout (a model's NCHW output transpose):
        # the transform alone, the consumer scheduled as any element-wise block
        consumers = []
    outer = consumers[0] if consumers else block
    channels = static_extent(sch.get(sch.get_loops(outer)[-1]).extent)
    if (consumers and table_lanes and channels is not None and (m * channels) % table_lanes == 0
            and reads_byte_table(sch.get(consumers[0]))):
        _schedule_table_output(sch, block, outer, m, pick_lanes(channels, lanes), table_lanes)
        return
    b, y, x, co = sch.get_loops(outer)
    ty, i = sch.split(y, factors=[None, m])
    tx, j = sch.split(x, factors=[None, m])
    vec = pick_lanes(channels, lanes) if channels is not None else 1
    co_o, co_i = sch.split(co, factors=[None, vec])
    sch.reorder(b, ty, tx, co_o, i, j, co_i)
    sch.parallel(sch.fuse(b, ty, tx))
    if vec > 1:
        sch.vectorize(co_i)
    if not consumers:
        sch.unroll(i)
        sch.unroll(j)
        return
    _local_tile(sch, block, co_o, vec, split=False)


def _local_tile(sch, block, loop, vec: int, split: bool) -> None:
    """The output transform ``block`` computed at ``loop`` into a ``local`` tile, its m x m
    outputs unrolled (the coefficients fold) and its channels vectorized by ``vec`` (``split``:
    the tile holds all channels, in vectors of ``vec``; else one vector's worth)."""
    sch.compute_at(block, loop)
    sch.set_scope(block, 0, "local")
    t_i, t_j, t_c = sch.get_loops(block)[-3:]
    sch.unroll(t_i)
    sch.unroll(t_j)
    if vec > 1:
        if split:
            _, t_c = sch.split(t_c, factors=[None, vec])
        sch.vectorize(t_c)


def _schedule_table_output(sch, block, epilogue, m: int, vec: int, table_lanes: int) -> None:
    """:func:`schedule_output` for an epilogue that reads a byte table: per m x m tile (in
    parallel) the transform fills a local ``[m, m, channels]`` tile (``vec``-lane vectors), then
    the epilogue runs row by row over the row's m outputs x channels (contiguous in NHWC) in
    vectors of ``table_lanes``."""
    b, y, x, co = sch.get_loops(epilogue)
    ty, i = sch.split(y, factors=[None, m])
    tx, j = sch.split(x, factors=[None, m])
    sch.reorder(b, ty, tx, i, j, co)
    tile = sch.fuse(b, ty, tx)
    sch.parallel(tile)
    _local_tile(sch, block, tile, vec, split=True)
    row = sch.fuse(j, co)
    vectors, lanes = sch.split(row, factors=[None, table_lanes])
    sch.vectorize(lanes)
    # unrolled, each vector's channels are a constant ramp (or two, where it crosses from one
    # output to the next): the per-channel scale and bias are vector loads, not gathers
    sch.unroll(vectors)
    sch.unroll(i)


def winograd_conv(builder, x, hwio: np.ndarray, lanes: int, registers: int, m: int,
                  full_rate_lanes: int | None = None):
    """Emit the three kernels of F(m x m, 3 x 3) for ``conv2d(x, hwio)`` (3x3, stride 1, padding
    1) with ``builder``; returns the NHWC output expression. Batch, height and width may be
    symbolic (of any parity: :func:`choice_shape`). ``full_rate_lanes``: as for
    :func:`mmopt.codegen.register_tiles.register_tile` (the GEMM's weights are packed for its
    static tile)."""
    from tvm import relax

    from mmopt.codegen.cpu_contraction import symbolic_tile
    from mmopt.codegen.register_tiles import known_multiple, round_up, rounded_rows
    from mmopt.codegen.tir_util import static_extent

    n, h, w = (x.ty.shape[i] for i in range(3))
    oc = hwio.shape[3]
    # the GEMM's rows are the input tiles: the weights are packed for the output-channel tile the
    # contraction schedule gives them (for a symbolic count, the one it takes for symbolic rows)
    tiles = n * _tile_count(h, m) * _tile_count(w, m)
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
        tile = output_tile(oc, count, lanes, registers, full_rate_lanes)
    v = builder.emit(input_transform(builder, x, lanes, pad_rows, m))
    u = relax.const(transform_weights(hwio, tile, m))
    products = builder.emit(builder.call_te(_gemm_te, v, u, primfunc_name_hint=GEMM_BLOCK))
    return builder.call_te(output_te, products, n, h, w, m, primfunc_name_hint=OUTPUT_BLOCK)


def rewrite(call, w: np.ndarray, builder, lanes: int, registers: int, bounds=None,
            full_rate_lanes: int | None = None):
    """For :func:`mmopt.codegen.relax_util.rewrite_dense_nhwc_convs`: the Winograd form of ``call``,
    or None where it does not apply (see the module docstring). ``bounds``: the ranges of the
    module's symbolic variables (:func:`mmopt.codegen.symbolic_dims.symbolic_bounds`)."""
    attrs = call.attrs
    if (tensor_dtype(call.args[0]) != "float32" or w.dtype != np.float32
            or (attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32"))):
        return None
    shape = list(call.args[0].ty.shape)
    min_pixels = MIN_PIXELS
    if all(hasattr(d, "value") for d in shape):
        x_shape = [int(d) for d in shape]
    else:
        min_pixels = MIN_PIXELS_SYMBOLIC
        x_shape = choice_shape(shape, bounds or {})
        if x_shape is None:
            if w.shape[:2] == (3, 3) and all(int(v) == 1 for v in attrs.strides):
                from mmopt.codegen.schedule_fallbacks import note_skip

                note_skip(f"conv2d {'x'.join(str(d) for d in w.shape)} (HWIO)", "winograd",
                          "symbolic shape without a range: the direct convolution runs instead")
            return None
    m = tile_size(x_shape, w.shape, [int(v) for v in attrs.strides],
                  [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation], min_pixels)
    if m is None or pick_lanes(w.shape[3], lanes) == 1:
        return None
    return winograd_conv(builder, call.args[0], w, lanes, registers, m, full_rate_lanes)
