"""The default CPU schedule of contractions (conv2d of any layout, dense/matmul, batch matmul): a
register tile of ``rows x (nv * lanes)`` outputs in a local accumulator, written back once with
the element-wise epilogue inlined (:func:`schedule_contraction`; the loop order is described in
:mod:`mmopt.codegen.cpu_schedules`).

Where an extent has no good divisor (a transformer's 197 tokens: prime), a matmul-like contraction
is first padded (:func:`pad_multiples`): its inputs are copied into zero-padded buffers, the tile
runs on the padded extents, and the valid part of the result is copied out.
The contraction's choices are knobs (:class:`ContractionKnobs`: rows, vectors across, loop order,
reduction split; ``None`` = the heuristic). ``mmopt tune`` (``--search knobs``) measures the
variants of :func:`contraction_knob_space` and records the fastest schedule's trace in the tuning
database, where ``compile --db`` finds it like any MetaSchedule record.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from mmopt.codegen.byte_lookup import table_read_lanes, table_read_lanes_for
from mmopt.codegen.cpu_inline import _inline_plain_copies, _inline_row_padding, inline_epilogue
from mmopt.codegen.register_tiles import (depthwise_tile, known_multiple, largest_divisor,
                                          pad_multiples, pick_lanes, register_tile, round_up,
                                          tile_efficiency, tile_fits)
from mmopt.codegen.schedule_fallbacks import note_skip
from mmopt.codegen.tir_util import (_block_axes, _extent, _index_iter, _iter_kinds, _kind,
                                    _loops_match_iters, region_buffer, static_extent)

logger = logging.getLogger(__name__)


#: the row extent a register tile is chosen for when the rows are symbolic (a dynamic height,
#: width or sequence length): divisible by every row count a tile may have (up to 8,
#: :mod:`mmopt.codegen.register_tiles`), so the tile is the one a large static extent gets (the
#: rows are then padded to whole tiles, or a tile whose rows divide the extent is taken:
#: :func:`symbolic_tile`)
SYMBOLIC_ROWS = 840
#: likewise for a symbolic innermost output extent (attention's ``Q K^T`` over a dynamic sequence),
#: in vector blocks: the tile is chosen as for a wide static output, and the extent is padded to a
#: multiple of the tile's width (:func:`_pad_contraction`)
SYMBOLIC_BLOCKS = 840


def _is_contraction(block) -> bool:
    kinds = _iter_kinds(block)
    if "R" not in kinds or "S" not in kinds or len(block.writes) != 1:
        return False
    out = region_buffer(block.writes[0])
    inputs = [r for r in block.reads if not region_buffer(r).same_as(out)]
    if len(inputs) < 2 or _kind(block.body) != "BufferStore":
        return False
    value = block.body.value
    if not (_kind(value) == "Add" and "Mul" in (_kind(value.a), _kind(value.b))):
        return False
    # a product of two tensors summed over a shared axis (``A[i, k] * B[k, j]``): at least two
    # inputs vary with the reduction; a row's sum of squares (``(x[i, k] - m[i])^2``) does not
    return sum(1 for r in inputs if _varies_with_reduction(block, r)) >= 2


def _varies_with_reduction(block, region) -> bool:
    from tvm import tirx

    reduce_vars = {iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    return any(any(v in reduce_vars for v in tirx.analysis.undefined_vars(rng.min))
               for rng in region.region)


@dataclass(frozen=True)
class ContractionKnobs:
    """The tunable choices of :func:`schedule_contraction` (``None``: the built-in heuristic).

    ``rows`` x ``nv`` vectors is the register tile (``rows`` along the output's second innermost
    axis, must divide it; ``nv`` vectors of ``lanes`` along the innermost); ``order``: ``"v"``
    puts the output-channel tile loop outermost (a block of weights stays in cache while every
    spatial position streams by), ``"s"`` the spatial loops (the input stays, the weights
    stream); ``kc``: split the innermost reduction loop (the input channels of a conv) by ``kc``
    and move its outer part outside the other reduction loops (the kernel window), so that the
    inner loops touch ``kc`` channels of input and weights at a time; ``prefetch``: prefetch the
    next weight panel while the current one is reused (:mod:`mmopt.codegen.prefetch`; ``None``:
    where its rule says).
    """

    rows: int | None = None
    nv: int | None = None
    order: str = "v"
    kc: int | None = None
    prefetch: bool | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class _ContractionShape:
    """What the knobs of a contraction block are chosen from."""

    v_ext: int
    vec: int
    r_ext: int | None  # None: the output has no second spatial axis to tile rows along
    k_ext: int | None  # innermost reduction loop's extent (None: no reduction loop)
    n_reductions: int
    #: architectural vector registers (AVX-512 and NEON have 32, AVX2 and SSE 16): what a register
    #: tile must fit in (:func:`tile_fits`)
    registers: int = 32
    #: accumulators that hide the FMA latency (FMA units x latency, :mod:`mmopt.targets.cpu`)
    min_acc: int = 8
    #: a float depthwise convolution's kernel height (0: not one), and the target's L1 data
    #: cache (:func:`mmopt.codegen.register_tiles.depthwise_tile`)
    depthwise_rows: int = 0
    l1_bytes: int = 48 * 1024
    #: the narrowest vector the target's FMA units run at full rate (None: every vector;
    #: :func:`mmopt.codegen.register_tiles.register_tile`)
    full_rate_lanes: int | None = None


def _contraction_axes(sch, block_rv):
    block = sch.get(block_rv)
    if not _loops_match_iters(sch, block_rv):
        raise ValueError("loop nest does not match block iters")
    loops = sch.get_loops(block_rv)
    kinds = _iter_kinds(block)
    region = block.writes[0].region
    v_axis = _index_iter(block, region[-1]) if region else None
    r_axis = _index_iter(block, region[-2]) if len(region) >= 2 else None
    if v_axis is None or kinds[v_axis] != "S":
        raise ValueError("innermost output dim is not a spatial iter")
    if r_axis is not None and kinds[r_axis] != "S":
        r_axis = None
    extents = [_extent(sch, lp) for lp in loops]
    return loops, kinds, v_axis, r_axis, extents


#: vector registers an integer depthwise convolution's multiply-add needs besides its tile and
#: weight vectors: the widened input, the widened weight, the padding select's mask and value.
#: Without them a 12-accumulator AVX2 tile (4 x 3) spilled inside its loop once the tile was a
#: stack allocation (:mod:`mmopt.codegen.stack_tiles`): the PP-OCR detector's 5x5 int8 depthwise
#: layers ran 25-40% slower; with a 4 x 2 tile they run as fast as before and every other kernel
#: gains from the stack tile (Zen 4, ``x86-avx2``). Measured neutral on AVX-512's 32 registers.
INTEGER_DEPTHWISE_TEMPS = 4


def _reductions_and_dtypes(sch, block_rv) -> tuple[list, set[str]]:
    """A contraction block's reduction extents (None where symbolic), outermost first, and the
    dtypes it writes."""
    block = sch.get(block_rv)
    extents = [static_extent(iv.dom.extent) for iv in block.iter_vars]
    reductions = [e for e, k in zip(extents, _iter_kinds(block)) if k == "R"]
    return reductions, {str(region_buffer(w).dtype) for w in block.writes}


def _tile_registers(sch, block_rv, registers: int) -> int:
    """The vector registers a contraction block's register tile is chosen from: all of them, less
    :data:`INTEGER_DEPTHWISE_TEMPS` for an integer depthwise convolution (its channel reduction
    has extent 1; it sums into int32)."""
    reductions, dtypes = _reductions_and_dtypes(sch, block_rv)
    if dtypes == {"int32"} and _depthwise(reductions):
        return registers - INTEGER_DEPTHWISE_TEMPS
    return registers


def _float_depthwise_rows(sch, block_rv) -> int:
    """The kernel height of a float depthwise convolution block (its innermost reduction has
    extent 1, it sums in floating point; the outermost reduction is the kernel's rows), else 0."""
    reductions, dtypes = _reductions_and_dtypes(sch, block_rv)
    floating = all(d.startswith("float") for d in dtypes)
    if not (floating and _depthwise(reductions)) or reductions[0] is None:
        return 0
    return reductions[0]


def _l1_bytes(target) -> int:
    from mmopt.targets.cpu import cpu_facts

    return cpu_facts(target).l1d_kib * 1024 if target is not None else 48 * 1024


def _tile_rate_lanes(target) -> int | None:
    """The ``full_rate_lanes`` the register tile is chosen with
    (:func:`mmopt.codegen.register_tiles.register_tile`): the target's
    :attr:`~mmopt.targets.cpu.CpuFacts.full_rate_lanes` where the module's weights stream from
    memory (:func:`mmopt.codegen.prefetch.streaming`), else None (every vector counted as full
    rate). The weight packer (:func:`mmopt.codegen.packed_conv.pack_float_convs`) decides the same
    from the same module and target, so packed weights match the tile chosen here.

    Why only then: on Zen 4 (``x86``, 2 threads, in the whole models) the narrower tiles made
    ResNet-50 (102 MB of weights, from memory) 3% faster and MobileNetV2 (14 MB, in the 32 MB
    L3) 2-3% slower -- its 7 x 7 layers 10-15% -- though alone, weights flushed or not, the
    kernels of both ran about as fast either way."""
    from mmopt.codegen import prefetch
    from mmopt.targets.cpu import cpu_facts

    if target is None or not prefetch.streamed():
        return None
    return cpu_facts(target).full_rate_lanes


def _depthwise(reduction_extents) -> bool:
    """Whether a contraction with these reduction extents is a depthwise convolution: its
    innermost (channel) reduction has extent 1."""
    return bool(reduction_extents) and reduction_extents[-1] == 1


#: a prime above every row count a tile may have: ``m * _NO_DIVISORS`` has, among them, exactly
#: the divisors of ``m``
_NO_DIVISORS = 101


def symbolic_tile(v_ext: int | None, r_ext: int | None, lanes: int, registers: int,
                  r_multiple: int = 1, exact: bool = False) -> tuple[int, int, int]:
    """``(vec, rows, nv)`` of a contraction with a symbolic innermost output extent or row extent
    (``None``): the tile a large static extent gets (:data:`SYMBOLIC_BLOCKS` vectors,
    :data:`SYMBOLIC_ROWS` rows), which :func:`_pad_contraction` pads the symbolic extents to
    multiples of.

    Symbolic rows known to be a multiple of ``r_multiple`` (a width of ``32 * w_blocks`` after a
    stride-4 layer: 8) take the best tile whose rows divide it instead, when it does as well by
    :func:`tile_efficiency`: every tile is then whole without padding (no copies, no cropped
    write-back). ``exact``: that tile whatever it does (rows that cannot be padded: 1 when the
    rows have no known multiple)."""
    vec = lanes if v_ext is None else pick_lanes(v_ext, lanes)
    v_choice = SYMBOLIC_BLOCKS * lanes if v_ext is None else v_ext

    def tile(rows_ext):
        shape = _ContractionShape(v_choice, vec, rows_ext, None, 0, registers)
        return shape, _default_tile(shape, registers)

    if r_ext is None and exact:
        _shape, (rows, nv) = tile(r_multiple * _NO_DIVISORS)
        return vec, rows, nv
    shape, (rows, nv) = tile(SYMBOLIC_ROWS if r_ext is None else r_ext)
    if r_ext is None and r_multiple > 1:
        _shape, (rows2, nv2) = tile(r_multiple * _NO_DIVISORS)
        if (tile_efficiency(rows2, nv2, shape.min_acc)
                >= tile_efficiency(rows, nv, shape.min_acc) - 1e-9):
            rows, nv = rows2, nv2
    return vec, rows, nv


class SymbolicInnermost(ValueError):
    """A contraction whose contiguous output axis is symbolic (attention's ``Q K^T`` over a
    dynamic sequence): no register tile along it."""


def schedule_contraction_symbolic(sch, name: str) -> None:
    """A contraction whose innermost output axis is symbolic: the other spatial loops fused and
    parallel, the reductions next, the innermost output axis last and left whole, so that each
    reduction step is a contiguous row update ``C[.., j] += a * B[.., j]`` over a symbolic extent,
    which LLVM's loop vectorizer vectorizes with a scalar epilogue. No register tile: the row of
    ``C`` lives in L1, not in registers."""
    block_rv = sch.get_sblock(name)
    loops, kinds, v_axis = _block_axes(sch, block_rv)
    if v_axis is None or kinds[v_axis] != "S":
        raise ValueError("innermost output dim is not a spatial iter")
    outer = [loops[i] for i, k in enumerate(kinds) if k == "S" and i != v_axis]
    reductions = [loops[i] for i, k in enumerate(kinds) if k == "R"]
    sch.reorder(*outer, *reductions, loops[v_axis])
    _inline_plain_copies(sch, block_rv)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    sch.decompose_reduction(block_rv, reductions[0])
    note_skip(name, "contraction", "symbolic innermost output axis: parallel rows, no register "
              "tile", kind="symbolic")


def _rows_extent(extents, r_axis) -> int | None:
    """The extent rows are tiled along (:data:`SYMBOLIC_ROWS` for a symbolic one); None: no row
    axis."""
    if r_axis is None:
        return None
    return extents[r_axis] if extents[r_axis] is not None else SYMBOLIC_ROWS


def _contraction_shape(sch, name: str, lanes: int, registers: int,
                       target=None) -> _ContractionShape:
    """The shape the knobs of contraction ``name`` apply to: its extents after the padding
    :func:`schedule_contraction` applies (:func:`pad_multiples`)."""
    registers = _tile_registers(sch, sch.get_sblock(name), registers)
    _loops, kinds, v_axis, r_axis, extents = _contraction_axes(sch, sch.get_sblock(name))
    red = [e for e, k in zip(extents, kinds) if k == "R"]
    if any(e is None for e in extents):
        raise ValueError("symbolic extents: tuned per bucket, not in the dynamic kernel")
    r_ext = extents[r_axis] if r_axis is not None else None
    pad_v, pad_r = pad_multiples(extents[v_axis], r_ext, lanes, registers)
    v_ext = round_up(extents[v_axis], pad_v)
    r_ext = round_up(r_ext, pad_r) if r_ext is not None else None
    return _ContractionShape(v_ext, pick_lanes(v_ext, lanes), r_ext,
                             red[-1] if red else None, len(red), registers,
                             depthwise_rows=_float_depthwise_rows(sch, sch.get_sblock(name)),
                             l1_bytes=_l1_bytes(target),
                             full_rate_lanes=_tile_rate_lanes(target))


def default_knobs(shape: _ContractionShape, registers: int) -> ContractionKnobs:
    """The heuristic's choices as knobs (what ``ContractionKnobs()`` amounts to)."""
    return ContractionKnobs(*_default_tile(shape, registers))


def _pad_contraction(sch, block_rv, lanes: int, registers: int):
    """Pad a matmul-like contraction's iteration domain as :func:`pad_multiples` says; returns the
    (possibly new) block. A contraction that is not an einsum (a convolution reads ``h + kh``)
    cannot be padded this way and is returned as is."""
    _loops, kinds, v_axis, r_axis, extents = _contraction_axes(sch, block_rv)
    r_ext = extents[r_axis] if r_axis is not None else 1
    if extents[v_axis] is None or r_ext is None:
        # Symbolic extents (a dynamic sequence, height or width) are padded to multiples of the
        # register tile, so that the micro-kernel has no predicated tail. A predicated tile is
        # not only slower: TVM cannot bound the accumulator's region under the predicate by the
        # tile (it would have to prove that the symbolic extent is at least one tile), so the
        # accumulators become a buffer of the whole output in memory instead of registers (2x
        # slower on the transformer block's projections at sequence 256).
        v_ext = extents[v_axis]
        pad_v = 1
        if v_ext is not None:  # padded to whole vectors as a static output would be
            pad_v = pad_multiples(v_ext, SYMBOLIC_ROWS, lanes, registers)[0]
            v_ext = round_up(v_ext, pad_v)
        multiple = known_multiple(sch.get(_loops[r_axis]).extent) if r_ext is None else 1
        vec, rows, nv = symbolic_tile(v_ext, r_ext, lanes, registers, multiple)
        if extents[v_axis] is None:
            pad_v = nv * vec
        pad_r = rows if r_ext is None and multiple % rows else 1
    else:
        pad_v, pad_r = pad_multiples(extents[v_axis], extents[r_axis] if r_axis is not None
                                     else None, lanes, registers)
    if pad_v == 1 and pad_r == 1:
        return block_rv
    padding = [1] * len(kinds)
    padding[v_axis] = pad_v
    if r_axis is not None:
        padding[r_axis] = pad_r
    name = sch.get(block_rv).name_hint
    try:
        sch.pad_einsum(block_rv, padding)
    except Exception as exc:  # noqa: BLE001 - not an einsum: tiled on the exact extents
        logger.debug("not padding %s: %s", name, str(exc).splitlines()[-1:])
        return block_rv
    if extents[v_axis] is None or r_ext is None:
        note_skip(name, "contraction", "symbolic extents padded to the register tile (operands "
                  "and result copied)", kind="symbolic")
    return sch.get_sblock(name)


def _default_tile(shape: _ContractionShape, registers: int) -> tuple[int, int]:
    """``(rows, nv)`` of the built-in heuristic: :func:`register_tile`, or for a float depthwise
    convolution :func:`depthwise_tile`."""
    if shape.depthwise_rows:
        return depthwise_tile(shape.v_ext, shape.r_ext, shape.vec if shape.vec > 1 else 1,
                              registers, shape.depthwise_rows, shape.l1_bytes, shape.min_acc)
    rows, nv = register_tile(shape.v_ext, shape.r_ext, shape.vec if shape.vec > 1 else 1,
                             registers, shape.min_acc, shape.full_rate_lanes)
    return (rows if shape.r_ext is not None else 1), nv


def contraction_knob_space(shape: _ContractionShape, registers: int,
                           best: ContractionKnobs | None = None) -> list[ContractionKnobs]:
    """Knob settings worth measuring for a contraction, most promising first.

    Without ``best``: the register tiles (every ``rows x nv`` that divides the extents and fits the
    accumulators) with the default loop order. With ``best`` (the fastest tile measured so far):
    that tile with the other loop order and with reduction splits.
    """
    rows0, nv0 = _default_tile(shape, registers)
    if best is None:
        if shape.vec == 1:
            nvs = [1]
        else:
            blocks = shape.v_ext // shape.vec
            nvs = [n for n in (1, 2, 3, 4, 6, 8) if blocks % n == 0 and tile_fits(1, n, registers)]
        tiles = []
        for nv in nvs:
            if shape.r_ext is None:
                tiles.append((1, nv))
                continue
            fits = [d for d in range(1, shape.r_ext + 1)
                    if shape.r_ext % d == 0 and tile_fits(d, nv, registers)]
            # the two largest row counts that fit (fewer rows: less reuse of each weight vector)
            tiles += [(d, nv) for d in sorted(fits, reverse=True)[:2]
                      if d * nv >= min(6, shape.r_ext * nv)]
        tiles = [t for t in tiles if t != (rows0, nv0)]
        # nearest to the default first: the heuristic is usually close
        tiles.sort(key=lambda t: (abs(t[1] - nv0), -t[0] * t[1]))
        return [ContractionKnobs(rows, nv) for rows, nv in tiles]
    out = [ContractionKnobs(best.rows, best.nv, "s" if best.order == "v" else "v", best.kc)]
    if shape.k_ext is not None and shape.n_reductions > 1:
        for kc in (16, 32, 64, 128):
            if kc < shape.k_ext and shape.k_ext % kc == 0 and kc != best.kc:
                out.append(ContractionKnobs(best.rows, best.nv, best.order, kc))
    return out


#: parallel iterations a contraction's tile loop should have at least (up to 2 per core on a
#: 32-core server) before its row tiles are spread over the threads as well
_MIN_PARALLEL_TILES = 64


def schedule_contraction(sch, name: str, lanes: int, registers: int,
                         knobs: ContractionKnobs | None = None, pad_symbolic: bool = True,
                         target=None) -> None:
    block_rv = sch.get_sblock(name)
    registers = _tile_registers(sch, block_rv, registers)
    if pad_symbolic or all(e is not None for e in _contraction_axes(sch, block_rv)[4]):
        block_rv = _pad_contraction(sch, block_rv, lanes, registers)
    loops, kinds, v_axis, r_axis, extents = _contraction_axes(sch, block_rv)
    knobs = knobs or ContractionKnobs()

    v_ext = extents[v_axis]
    red_extents = [e for e, k in zip(extents, kinds) if k == "R"]
    r_sym = r_axis is not None and extents[r_axis] is None
    if v_ext is None or r_sym:
        multiple = known_multiple(sch.get(loops[r_axis]).extent) if r_sym else 1
        r_ext = extents[r_axis] if r_axis is not None else 1
        vec, rows, nv = symbolic_tile(v_ext, r_ext, lanes, registers, multiple)
        if r_sym and multiple % rows:
            # not padded (a convolution whose padding TVM could not prove safe): rows that
            # divide the extent, down to 1, rather than a predicated last tile (whose
            # accumulators would live in memory, see :func:`_pad_contraction`)
            vec, rows, nv = symbolic_tile(v_ext, r_ext, lanes, registers, multiple, exact=True)
        if v_ext is None and known_multiple(sch.get(loops[v_axis]).extent) % (nv * vec):
            # not padded (not an einsum): :func:`schedule_contraction_symbolic` handles it
            raise SymbolicInnermost("symbolic innermost output extent")
        v_ext = SYMBOLIC_BLOCKS * vec if v_ext is None else v_ext
        if r_sym and rows == 1:
            note_skip(name, "contraction", "symbolic rows of no known multiple, not padded: "
                      "1-row register tiles", kind="symbolic")
    else:
        vec = pick_lanes(v_ext, lanes)
        shape = _ContractionShape(v_ext, vec, _rows_extent(extents, r_axis), None, 0, registers,
                                  depthwise_rows=_float_depthwise_rows(sch, block_rv),
                                  l1_bytes=_l1_bytes(target),
                                  full_rate_lanes=_tile_rate_lanes(target))
        rows, nv = _default_tile(shape, registers)
    if knobs.nv is not None:
        if vec == 1 and knobs.nv != 1 or vec > 1 and (v_ext // vec) % knobs.nv:
            raise ValueError(f"nv={knobs.nv} does not divide {v_ext} by {vec} lanes")
        nv = knobs.nv
    if any(e is None for e in extents) and knobs != ContractionKnobs():
        raise ValueError("knobs apply to static kernels only")
    if knobs.rows is not None:
        rows_ext = extents[r_axis] if r_axis is not None else 1
        if rows_ext % knobs.rows:
            raise ValueError(f"rows={knobs.rows} does not divide the rows")
        rows = knobs.rows
    tile_v = nv * vec if vec > 1 else largest_divisor(v_ext, 8)

    v_o, v_i = sch.split(loops[v_axis], factors=[None, tile_v])
    if r_axis is not None:
        r_o, r_i = sch.split(loops[r_axis], factors=[None, rows])
    others = [loops[i] for i, k in enumerate(kinds) if k == "S" and i not in (v_axis, r_axis)]
    reductions = [loops[i] for i, k in enumerate(kinds) if k == "R"]
    if knobs.kc is not None:
        k_ext = extents[[i for i, k in enumerate(kinds) if k == "R"][-1]]
        if len(reductions) < 2 or k_ext % knobs.kc or knobs.kc >= k_ext:
            raise ValueError(f"kc={knobs.kc} does not split the reduction")
        k_o, k_i = sch.split(reductions[-1], factors=[None, knobs.kc])
        reductions = [k_o, *reductions[:-1], k_i]
    other_axes = [i for i, k in enumerate(kinds) if k == "S" and i not in (v_axis, r_axis)]
    if knobs.order == "s":
        outer, outer_axes = [*others, v_o], [*other_axes, v_axis]
    elif knobs.order == "v":
        outer, outer_axes = [v_o, *others], [v_axis, *other_axes]
    else:
        raise ValueError(f"unknown loop order {knobs.order!r}")

    # Threads share the parallel loop's iterations statically, so too few of them leave cores
    # idle: a transformer's matmul (1 x 197 x 768 by 768 x 192) has 192 / 64 = 3 column tiles,
    # two for one core and one for the other (65% of the FMA peak at 2 threads, against 91% on
    # one). Below _MIN_PARALLEL_TILES the row tiles join the parallel loop too.
    parallel_ext = 1
    for lp in outer:
        # a symbolic loop (a dynamic batch or height) counts as enough iterations: fusing it with
        # the row tiles makes index arithmetic TVM's lowering may not prove divisible
        parallel_ext *= _extent(sch, lp) or _MIN_PARALLEL_TILES
    rows_parallel = r_axis is not None and parallel_ext < _MIN_PARALLEL_TILES
    if rows_parallel:
        outer_axes.append(r_axis)

    plan = None
    if knobs.kc is None and all(e is not None for e in extents) and vec > 1:
        from mmopt.codegen import prefetch
        from mmopt.targets.cpu import cpu_facts

        l2 = cpu_facts(target).l2_kib * 1024 if target is not None else 1 << 20
        row_tiles = extents[r_axis] // rows if r_axis is not None else 1
        plan = prefetch.plan(sch.get(block_rv), v_axis, r_axis,
                             [(a, _extent(sch, lp)) for a, lp in
                              zip(outer_axes, outer + ([r_o] if rows_parallel else []))],
                             1 if rows_parallel else row_tiles,
                             extents[[i for i, k in enumerate(kinds) if k == "R"][-1]]
                             if reductions else None, l2, knobs.prefetch)
    if plan is not None:
        k_o, k_i = sch.split(reductions[-1], factors=[None, plan.chunk])
        reductions = [*reductions[:-1], k_o, k_i]

    order = outer + ([r_o] if r_axis is not None else []) + reductions
    order += ([r_i] if r_axis is not None else []) + [v_i]
    sch.reorder(*order)
    if rows_parallel:
        outer.append(r_o)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    tile_loop = r_o if r_axis is not None and not r_o.same_as(outer[-1]) else fused

    if plan is not None:
        sch.annotate(reductions[-2], prefetch.ANNOTATION, plan.annotation())
    _inline_plain_copies(sch, block_rv, padding=_depthwise(red_extents))
    if r_sym and registers >= 32:
        _inline_row_padding(sch, block_rv, v_axis)
    writeback = sch.cache_write(block_rv, 0, "local")
    sch.reverse_compute_at(writeback, tile_loop, preserve_unit_loops=True)
    sch.parallel(fused)

    # micro-kernel: rows unrolled, nv vectors unrolled, lanes vectorized
    def vectorize_tail(blk, split: bool, width: int | None = None) -> None:
        lps = sch.get_loops(blk)
        inner = lps[-1]
        width = width or vec
        if vec > 1 and split and nv * vec > width:
            vo, inner = sch.split(inner, factors=[nv * vec // width, width])
            sch.unroll(vo)
        if vec > 1:
            sch.vectorize(inner)
        else:
            sch.unroll(inner)
        if r_axis is not None:
            sch.unroll(lps[-2] if split else lps[-3 if nv > 1 and vec > 1 else -2])

    # Annotate while the block still has its init (a complete reduction block); then split the
    # init out: it inherits the split loops, so only annotate its vector tail.
    vectorize_tail(block_rv, True)
    init = sch.decompose_reduction(block_rv, reductions[0])
    init_loops = sch.get_loops(init)
    if vec > 1:
        sch.vectorize(init_loops[-1])
    for lp in init_loops[len(sch.get_loops(init)) - (3 if nv > 1 and vec > 1 else 2):-1]:
        sch.unroll(lp)

    # a table read in the epilogue: on CPUs that read tables in wide vectors only (AVX2
    # shuffles), a tile narrower than that leaves the read to a loop of its own
    wide = table_read_lanes_for(target)
    apart = bool(wide) and vec > 1 and (nv * vec) % wide != 0
    if _crops_innermost(sch, writeback):
        # output channels computed padded to whole vectors
        # (:func:`mmopt.codegen.register_tiles.padded_channels`): the tile is written whole, and
        # the crop with the epilogue follows it inside the tile's loop, in the narrower vectors
        # that divide the kept channels, while the tile is still in L1 (a per-lane predicate in
        # the write-back would make TVM write it one element at a time)
        crop = sch.get_consumers(writeback)[0]
        inline_epilogue(sch, crop)
        sch.reverse_compute_at(crop, tile_loop, preserve_unit_loops=True)
        crop_loops = sch.get_loops(crop)
        kept = _extent(sch, crop_loops[-1])
        width = pick_lanes(kept, vec) if kept is not None else 1
        if width > 1:
            _, inner = sch.split(crop_loops[-1], factors=[None, width])
            sch.vectorize(inner)
    elif extents[v_axis] is not None:
        inline_epilogue(sch, writeback, tables_apart=apart)
    else:
        # a symbolic innermost extent, padded: the crop would put a per-lane predicate in the
        # vectorized write-back, which TVM then writes one element at a time (2.5x slower on
        # attention scores); the tile is written whole to the padded buffer, and the crop runs
        # after it with the epilogue as one loop of its own
        crops = sch.get_consumers(writeback)
        if len(crops) == 1:
            inline_epilogue(sch, crops[0])
    # a write-back reading a byte table reads it in wider vectors where that pays (AVX2)
    table_lanes = table_read_lanes(sch.get(writeback), target)
    try:
        vectorize_tail(writeback, True, table_lanes if table_lanes and vec > 1
                       and (nv * vec) % table_lanes == 0 else None)
    except Exception:  # noqa: BLE001 - an unusual epilogue: leave the write-back as is
        pass


def _crops_innermost(sch, writeback) -> bool:
    """Whether the write-back's one consumer is the crop of a packed convolution's output
    channels, computed padded to whole vectors (:mod:`mmopt.codegen.packed_conv`). (A padded
    matrix product's copy-out, :func:`_pad_contraction`, stays a loop of its own.)"""
    from mmopt.codegen.packed_conv import PACKED_BLOCK

    consumers = sch.get_consumers(writeback)
    if len(consumers) != 1 or sch.get(consumers[0]).name_hint != f"{PACKED_BLOCK}_crop":
        return False
    produced = region_buffer(sch.get(writeback).writes[0]).shape
    kept = region_buffer(sch.get(consumers[0]).writes[0]).shape
    if len(produced) != len(kept):
        return False
    last, cropped = static_extent(produced[-1]), static_extent(kept[-1])
    return last is not None and cropped is not None and cropped < last


def _contraction_names(sch) -> list[str]:
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    return [n for n in names if _is_contraction(sch.get(sch.get_sblock(n)))]
