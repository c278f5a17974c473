"""Default schedules for untuned CPU kernels (x86 and ARM).

TVM's CPU pipeline leaves every kernel unscheduled: single-threaded scalar loops. This module gives
each fused PrimFunc a reasonable schedule without any measurement, so ``mmopt compile`` is fast
without tuning; tuning records (when given) are applied first and take precedence.

Per PrimFunc, blocks are scheduled by kind:

* **contraction** (conv2d of any layout, dense/matmul, batch matmul: a reduction block computing
  ``C += A * B``). A register tile of ``rows x (nv * lanes)`` outputs is kept in a local
  accumulator: ``lanes`` is the vector width in float32 lanes, taken along the output's innermost
  (contiguous) axis; ``rows`` along the next one. Loop order::

      parallel(v_o, other spatial) . r_o . reduction... . r_i(unrolled) . v_i(nv unrolled x lanes vector)

  The output tile is written back once, with the element-wise epilogue (bias, BN, activation,
  residual add) inlined into the write-back, so fused epilogues cost no extra pass over memory.
  ``v_o`` is outermost so a block of weights stays in cache while all spatial positions stream by.
* **reduction** (pooling, mean, softmax/layernorm statistics): spatial loops outside, reduction
  loops inside, the contiguous output axis innermost and vectorized; outer loops parallel.
* **injective** (element-wise, pad, transpose, concat, ...): outer loops fused and parallel,
  innermost axis vectorized (when no vector width divides it, its largest multiple of the
  vector width is, and the remainder runs as a scalar loop).

Tile sizes are chosen to divide the loop extents exactly, so no predicates end up in vector loops.
Where an extent has no good divisor (a transformer's 197 tokens: prime), a matmul-like contraction
is first padded (:func:`pad_multiples`): its inputs are copied into zero-padded buffers, the tile
runs on the padded extents, and the valid part of the result is copied out.
The contraction's choices are knobs (:class:`ContractionKnobs`: rows, vectors across, loop order,
reduction split; ``None`` = the heuristic). ``mmopt tune`` (``--search knobs``) measures the
variants of :func:`contraction_knob_space` and records the fastest schedule's trace in the tuning
database, where ``compile --db`` finds it like any MetaSchedule record.
A block whose schedule fails (an unusual access pattern) is left as generated: never wrong, only
slower.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import asdict, dataclass

from mmopt._collect import collecting
from mmopt.codegen.byte_lookup import reads_byte_table, table_read_lanes, table_read_lanes_for
from mmopt.codegen.register_tiles import (known_multiple, largest_divisor, pad_multiples,
                                          pick_lanes, register_tile, round_up, tile_efficiency,
                                          tile_fits)

logger = logging.getLogger(__name__)

_MIN_PARALLEL_ELEMENTS = 4096


def _vector_bits(target) -> int:
    """Vector register width of ``target`` in bits (from :mod:`mmopt.targets.cpu`)."""
    from mmopt.targets.cpu import cpu_facts

    return cpu_facts(target).vector_bits


def _extent(sch, loop) -> int | None:
    """A loop's extent, None when it is symbolic (a dynamic-shape kernel)."""
    return static_extent(sch.get(loop).extent)


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


#: ``{symbolic variable name: (min, max)}`` of the module being scheduled: the ranges of its
#: dynamic dims (``--dim``), from its Relax functions' ``tir_var_lower_bound`` /
#: ``tir_var_upper_bound`` (:func:`default_cpu_schedule_pass` sets it)
_VAR_BOUNDS: contextvars.ContextVar[dict] = contextvars.ContextVar("mmopt_symbolic_bounds",
                                                                   default={})
#: a loop sure to run at least this many iterations is worth running in parallel on its own
_MIN_PARALLEL_ITERATIONS = 8


def _least_extent(sch, loop) -> int | None:
    """The fewest iterations ``loop`` runs: its extent, or for a symbolic one the least value its
    variables' ranges allow; None when a variable's range is unknown."""
    from mmopt.codegen.symbolic_dims import least_value

    return least_value(sch.get(loop).extent, _VAR_BOUNDS.get())


def _plain_extent(expr) -> bool:
    """Whether ``expr`` is a constant, a variable or a product of such (no division)."""
    from tvm import tirx

    if isinstance(expr, (tirx.IntImm, tirx.Var)):
        return True
    return isinstance(expr, tirx.Mul) and _plain_extent(expr.a) and _plain_extent(expr.b)


def _parallel_rows_symbolic(sch, rows) -> bool:
    """Fuse the row loops ``rows`` of a kernel whose rows are walked by an inner loop (a
    reduction over the row, or a symbolic innermost axis) into one parallel loop, when their
    extents are plain products (no divisions, which TVM's lowering may fail to prove divisible
    once fused): the run-time divisions that recover the row indices then happen once per row,
    and the kernel forks once instead of once per batch and head (a softmax over ``batch x 4 x
    seq`` rows). Returns whether it did."""
    if len(rows) < 2 or not all(_plain_extent(sch.get(lp).extent) for lp in rows):
        return False
    sch.parallel(sch.fuse(*rows))
    return True


def _parallel_symbolic(sch, loops) -> None:
    """Run one of ``loops`` (some of them symbolic) in parallel, without fusing symbolic ones
    (where :func:`_parallel_rows_symbolic` does not apply).

    Fused symbolic loops cost twice: index arithmetic TVM's lowering cannot prove divisible (a
    padded pool's ``(h // 2 + 2) * (w // 2 + 2)``), and, fused down to the innermost loop, a
    division by a run-time value per element to recover each index (the transformer block's
    softmax fused whole: 4.5x slower than with only ``seq`` parallel). The first loop sure to run
    at least
    :data:`_MIN_PARALLEL_ITERATIONS` times (or of unknown range: dynamic dims are image sizes and
    sequences) is chosen, not merely the first non-unit one: a dynamic batch of 1..4 would leave
    every core but one idle at batch 1. Loops outside it stay serial (a parallel region per
    iteration of theirs). Failing that, the loop with the most iterations for sure."""
    # runs of adjacent static loops are fused first (constant divisors: cheap), so that a
    # transpose over ``batch x 4 x 16 x seq`` forks once per batch over 64 iterations
    merged, run = [], []
    for lp in [*loops, None]:
        if lp is not None and _extent(sch, lp) is not None:
            run.append(lp)
            continue
        if run:
            merged.append(sch.fuse(*run) if len(run) > 1 else run[0])
            run = []
        if lp is not None:
            merged.append(lp)
    least = [(lp, _least_extent(sch, lp)) for lp in merged]
    for lp, n in least:
        if n is None or n >= _MIN_PARALLEL_ITERATIONS:
            sch.parallel(lp)
            return
    best = max(least, key=lambda item: item[1], default=(None, 1))
    if best[1] > 1:
        sch.parallel(best[0])


def static_extent(expr) -> int | None:
    """The integer value of a TIR/Relax extent, None when it is symbolic."""
    if isinstance(expr, int):
        return expr
    return int(expr.value) if hasattr(expr, "value") else None


def _kind(expr) -> str:
    """Node kind of a TIR expression ("Add", "Mul", "Var", ...); stable across TVM's module moves."""
    return type(expr).__name__


def region_buffer(region):
    """The buffer of a block read/write region (``TensorRegion.source`` in TVM 0.27)."""
    return region.source if hasattr(region, "source") else region.buffer


def _iter_kinds(block) -> list[str]:
    from tvm import tirx

    return ["R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in block.iter_vars]


def _index_iter(block, region_index) -> int | None:
    """Which block iter var indexes a buffer dimension directly (``buf[..., v, ...]``)."""
    expr = region_index.min
    if _kind(expr) == "Var":
        for i, iv in enumerate(block.iter_vars):
            if iv.var.same_as(expr):
                return i
    return None


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


def _loops_match_iters(sch, block_rv) -> bool:
    block = sch.get(block_rv)
    return len(sch.get_loops(block_rv)) == len(block.iter_vars)


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractionKnobs:
    """The tunable choices of :func:`schedule_contraction` (``None``: the built-in heuristic).

    ``rows`` x ``nv`` vectors is the register tile (``rows`` along the output's second innermost
    axis, must divide it; ``nv`` vectors of ``lanes`` along the innermost); ``order``: ``"v"``
    puts the output-channel tile loop outermost (a block of weights stays in cache while every
    spatial position streams by), ``"s"`` the spatial loops (the input stays, the weights
    stream); ``kc``: split the innermost reduction loop (the input channels of a conv) by ``kc``
    and move its outer part outside the other reduction loops (the kernel window), so that the
    inner loops touch ``kc`` channels of input and weights at a time.
    """

    rows: int | None = None
    nv: int | None = None
    order: str = "v"
    kc: int | None = None

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


def _tile_registers(sch, block_rv, registers: int) -> int:
    """The vector registers a contraction block's register tile is chosen from: all of them, less
    :data:`INTEGER_DEPTHWISE_TEMPS` for an integer depthwise convolution (its channel reduction
    has extent 1; it sums into int32)."""
    block = sch.get(block_rv)
    kinds = _iter_kinds(block)
    extents = [static_extent(iv.dom.extent) for iv in block.iter_vars]
    reductions = [e for e, k in zip(extents, kinds) if k == "R"]
    integer = all(str(region_buffer(w).dtype) == "int32" for w in block.writes)
    if integer and _depthwise(reductions):
        return registers - INTEGER_DEPTHWISE_TEMPS
    return registers


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


def _contraction_shape(sch, name: str, lanes: int, registers: int) -> _ContractionShape:
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
                             red[-1] if red else None, len(red), registers)


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
    """``(rows, nv)`` of the built-in heuristic: :func:`register_tile`."""
    rows, nv = register_tile(shape.v_ext, shape.r_ext, shape.vec if shape.vec > 1 else 1,
                             registers, shape.min_acc)
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
        shape = _ContractionShape(v_ext, vec, _rows_extent(extents, r_axis), None, 0, registers)
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
    if knobs.order == "s":
        outer = [*others, v_o]
    elif knobs.order == "v":
        outer = [v_o, *others]
    else:
        raise ValueError(f"unknown loop order {knobs.order!r}")
    order = outer + ([r_o] if r_axis is not None else []) + reductions
    order += ([r_i] if r_axis is not None else []) + [v_i]
    sch.reorder(*order)

    # Threads share the parallel loop's iterations statically, so too few of them leave cores
    # idle: a transformer's matmul (1 x 197 x 768 by 768 x 192) has 192 / 64 = 3 column tiles,
    # two for one core and one for the other (65% of the FMA peak at 2 threads, against 91% on
    # one). Below _MIN_PARALLEL_TILES the row tiles join the parallel loop too.
    parallel_ext = 1
    for lp in outer:
        # a symbolic loop (a dynamic batch or height) counts as enough iterations: fusing it with
        # the row tiles makes index arithmetic TVM's lowering may not prove divisible
        parallel_ext *= _extent(sch, lp) or _MIN_PARALLEL_TILES
    if r_axis is not None and parallel_ext < _MIN_PARALLEL_TILES:
        outer.append(r_o)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    tile_loop = r_o if r_axis is not None and not r_o.same_as(outer[-1]) else fused

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
    if extents[v_axis] is not None:
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


def inline_epilogue(sch, writeback, tables_apart: bool = False) -> None:
    """Fuse the element-wise epilogue after a contraction into its write-back block.

    Intermediate element-wise blocks are first inlined into their consumers (an epilogue that
    uses a value twice, such as HardSwish's ``x * relu6(x + 3) / 6`` or a requantized residual,
    is a diamond, not a chain); the single block left is then inlined into the write-back, so the
    whole epilogue runs on the register tile. What cannot be inlined stays a block of its own.

    ``tables_apart``: a byte-table read stays a block of its own (the requantization before it
    joins the write-back), for the caller's tile too narrow for the target's wide table reads
    (:func:`mmopt.codegen.byte_lookup.table_read_lanes`): that block is then scheduled as an
    element-wise loop whose rows give the width (AVX2 shuffles read 32 lanes; lane by lane, a
    24-channel tile's reads were a third of an int8 depthwise layer's time)."""
    def apart(block_rv) -> bool:
        return tables_apart and reads_byte_table(sch.get(block_rv))

    inline_intermediates(sch, writeback, apart)
    while True:
        consumers = sch.get_consumers(writeback)
        if len(consumers) != 1 or apart(consumers[0]):
            break
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001 - not element-wise: schedule it on its own later
            break


def inline_intermediates(sch, block, apart=lambda _block: False) -> None:
    """Inline the element-wise blocks downstream of ``block`` into their consumers, until one block
    (the function's output) or what cannot be inlined is left: a diamond (HardSwish's ``x *
    relu6(x + 3) / 6``) becomes one expression. Kept: blocks whose values are broadcast into a
    consumer (computed once per channel) and, per ``apart``, the index of a table read."""
    while True:
        inlined = False
        for candidate in _downstream(sch, block):
            if (not sch.get_consumers(candidate) or _broadcast_into_consumer(sch, candidate)
                    or any(apart(c) for c in sch.get_consumers(candidate))):
                # the function's output, computed once per channel, or the index of a table
                # read kept apart
                continue
            try:
                sch.compute_inline(candidate)
                inlined = True
                break
            except Exception:  # noqa: BLE001 - not element-wise, or feeds a reduction
                continue
        if not inlined:
            break


def _inline_injective_chains(sch, contractions) -> None:
    """Inline every intermediate element-wise/injective block whose consumers are all injective
    too, so a fused chain (a depth-to-space and the requantization after it; transposes around
    a scale) runs as one loop nest instead of one full pass over memory per operator. Producers of
    reductions (a contraction's padded input, softmax's exponentials) are left alone."""
    root = sch.get_sblock("root")
    changed = True
    while changed:
        changed = False
        for block_rv in sch.get_child_blocks(root):
            block = sch.get(block_rv)
            name = block.name_hint
            if any(name == c or name.startswith(c + "_") for c in contractions):
                continue
            consumers = sch.get_consumers(block_rv)
            if (not consumers or "R" in _iter_kinds(block)
                    or any("R" in _iter_kinds(sch.get(c)) or _selects_between(sch.get(c))
                           for c in consumers)
                    or _broadcast_into_consumer(sch, block_rv)):
                continue
            try:
                sch.compute_inline(block_rv)
            except Exception:  # noqa: BLE001 - not inlinable (e.g. an opaque access): keep it
                continue
            changed = True
            break


#: a block whose consumer iterates over at least this many times more points than the block
#: itself is not inlined into it (:func:`_broadcast_into_consumer`)
BROADCAST_RECOMPUTE = 16


def _broadcast_into_consumer(sch, block_rv) -> bool:
    """Whether a consumer of the block reads its values broadcast over a much larger domain:
    inlined, every value would be computed once per point of the consumer instead of once. A
    squeeze-and-excitation gate (``[1, 1, 1, C]``, a hard-sigmoid on the pooled vector) feeding
    the ``[1, H, W, C]`` rescale is the case that matters: inlined, the gate's requantization
    and table read ran H*W times per channel (a 160x160x96 int8 rescale of the PP-OCR detector:
    1.87 ms on AVX2, where the table read is a gather). Kept, it is a loop over C at the root
    (or joins its contraction's write-back). A nearest 2x resize reads each value 4 times and is
    still inlined: below :data:`BROADCAST_RECOMPUTE`, recomputing costs less than a pass over
    memory. Symbolic extents count as not broadcast."""

    def points(block):
        total = 1
        for iv in block.iter_vars:
            extent = static_extent(iv.dom.extent)
            if extent is None:
                return None
            total *= extent
        return total

    own = points(sch.get(block_rv))
    if own is None:
        return False
    for consumer in sch.get_consumers(block_rv):
        theirs = points(sch.get(consumer))
        if theirs is not None and theirs >= BROADCAST_RECOMPUTE * own:
            return True
    return False


def _selects_between(block) -> bool:
    """A block choosing between several inputs with an if-then-else (a concatenate). Inlining
    producers into one gave wrong results (RotaryEmbedding's rotated halves; TVM 0.27), so
    concatenations keep their inputs materialized."""
    from tvm import get_global_func

    if not get_global_func("s_tir.schedule.HasIfThenElse")(block):
        return False
    return len({str(r.buffer.name) if hasattr(r, "buffer") else str(r) for r in block.reads}) > 1


def _downstream(sch, block) -> list:
    """Blocks reading (transitively) what ``block`` writes, nearest first."""
    seen, order, frontier = set(), [], [block]
    while frontier:
        nxt = []
        for b in frontier:
            for c in sch.get_consumers(b):
                name = sch.get(c).name_hint
                if name not in seen:
                    seen.add(name)
                    order.append(c)
                    nxt.append(c)
        frontier = nxt
    return order


def _inline_plain_copies(sch, block_rv, padding: bool = False) -> None:
    """Inline producers that only copy (the ``pad_temp`` of an unpadded conv): the contraction then
    reads its input directly instead of through a full extra copy. Real padding (an if-then-else)
    stays materialized unless ``padding``: inlined, it puts a branch next to the innermost loop,
    which pays only where the contraction does little work per input element (depthwise
    convolutions, where the padded copy is as large as the layer's whole traffic)."""
    from tvm import get_global_func

    has_branch = get_global_func("s_tir.schedule.HasIfThenElse")
    for producer in sch.get_producers(block_rv):
        block = sch.get(producer)
        if ("R" in _iter_kinds(block) or len(block.reads) != 1
                or (has_branch(block) and not padding)):
            continue
        try:
            sch.compute_inline(producer)
        except Exception:  # noqa: BLE001 - not inlinable (e.g. several consumers): keep it
            pass


def _inline_row_padding(sch, block_rv, v_axis: int) -> None:
    """Inline the padded copy of a contraction's row operand (``A`` of ``A @ B`` with its symbolic
    rows padded to whole register tiles, :func:`_pad_contraction`): the micro-kernel reads it one
    scalar per row and broadcasts it, so the padding's branch costs a compare per scalar load,
    while the copy is a pass over the whole operand (attention probabilities: seq x seq per head,
    a quarter of ``softmax @ V``'s time at sequence 256). The other operand's padded copy, read
    as vectors along the padded axis, stays: a branch per lane would scalarize the loads.

    Only with 32 vector registers: with AVX2's 16 the branch next to a tile that fills them made
    every such contraction of the transformer block slower, 1.4-1.9x (measured, Zen 4), where
    AVX-512 gained 5-20%. AArch64 (32 registers) takes the same path, unmeasured: no ARM
    hardware here."""
    from tvm import get_global_func, tirx

    has_branch = get_global_func("s_tir.schedule.HasIfThenElse")
    block = sch.get(block_rv)
    v_var = block.iter_vars[v_axis].var
    for producer in sch.get_producers(block_rv):
        written = sch.get(producer)
        if len(written.writes) != 1 or not has_branch(written):
            continue
        buffer = region_buffer(written.writes[0])
        regions = [r for r in block.reads if region_buffer(r).same_as(buffer)]
        if not regions or any(any(v.same_as(v_var) for rng in r.region
                                  for v in tirx.analysis.undefined_vars(rng.min))
                              for r in regions):
            continue
        try:
            sch.compute_inline(producer)
        except Exception:  # noqa: BLE001 - not inlinable: the copy stays
            pass


def _block_axes(sch, block_rv):
    """``(loops, iter kinds, v_axis)`` of a block whose loops match its iters one to one;
    ``v_axis`` indexes the iter of the output's innermost dim (None: not a plain iter)."""
    block = sch.get(block_rv)
    if not _loops_match_iters(sch, block_rv):
        raise ValueError("loop nest does not match block iters")
    region = block.writes[0].region
    return (sch.get_loops(block_rv), _iter_kinds(block),
            _index_iter(block, region[-1]) if region else None)


def schedule_reduction(sch, name: str, lanes: int) -> None:
    block_rv = sch.get_sblock(name)
    loops, kinds, v_axis = _block_axes(sch, block_rv)
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    reductions = [loops[i] for i, k in enumerate(kinds) if k == "R"]
    vec_loop = None
    if v_axis is not None and kinds[v_axis] == "S":
        ext = _extent(sch, loops[v_axis])
        if ext is not None and pick_lanes(ext, lanes) > 1:
            vec_loop = loops[v_axis]
    outer = [loops[i] for i in spatial if vec_loop is None or not loops[i].same_as(vec_loop)]
    sch.reorder(*outer, *reductions, *([vec_loop] if vec_loop is not None else []))
    # parallel/vectorize while the block still has its init (a complete reduction block), then
    # split the init out and vectorize it too
    if outer:
        symbolic = [lp for lp in outer if _extent(sch, lp) is None]
        if symbolic:
            if not _parallel_rows_symbolic(sch, outer):
                _parallel_symbolic(sch, outer)
        else:
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            if _extent(sch, fused) > 1:
                sch.parallel(fused)
    if vec_loop is not None:
        ext = _extent(sch, vec_loop)
        vec = pick_lanes(ext, lanes)
        if ext != vec:
            _, vec_loop = sch.split(vec_loop, factors=[None, vec])
        sch.vectorize(vec_loop)
        init = sch.decompose_reduction(block_rv, reductions[0])
        sch.vectorize(sch.get_loops(init)[-1])


def _row_reduction_loop(sch, block_rv, lanes: int):
    """The loop :func:`schedule_row_reduction` splits, or None: the block's innermost reduction
    loop when it walks the last (contiguous) dimension of an input, its extent is a multiple of
    ``lanes`` of at least two vectors, and the output's own last dimension cannot be vectorized."""
    block = sch.get(block_rv)
    if not _loops_match_iters(sch, block_rv) or len(block.writes) != 1:
        return None
    kinds = _iter_kinds(block)
    region = block.writes[0].region
    v_axis = _index_iter(block, region[-1]) if region else None
    loops = sch.get_loops(block_rv)
    if v_axis is not None and kinds[v_axis] == "S":
        ext = _extent(sch, loops[v_axis])
        if ext is not None and pick_lanes(ext, lanes) > 1:
            return None  # schedule_reduction vectorizes the output instead
    reductions = [i for i, k in enumerate(kinds) if k == "R"]
    if len(reductions) != 1 or reductions[0] != len(kinds) - 1:
        return None  # one reduction, innermost: the loop layout schedule_row_reduction expects
    last = reductions[0]
    ext = _extent(sch, loops[last])
    if ext is not None and (ext % lanes or ext < 2 * lanes):
        return None
    if ext is None:
        # a symbolic row: split into vectors with a predicated last one. Each of the ``lanes``
        # partials must see at least one element (its initial value is written with its first
        # update), so the row must be sure to hold a whole vector; and the range must start at
        # 0 (a row's tail, :mod:`mmopt.codegen.fast_math`, stays scalar)
        least = _least_extent(sch, loops[last])
        if least is None or least < lanes or static_extent(sch.get(loops[last]).min) != 0:
            return None
    out = region_buffer(block.writes[0])
    contiguous = any(not region_buffer(r).same_as(out) and r.region
                     and _index_iter(block, r.region[-1]) == last for r in block.reads)
    return loops[last] if contiguous else None


def _parallel_rows(sch, rows) -> None:
    if any(_extent(sch, lp) is None for lp in rows):
        if not _parallel_rows_symbolic(sch, rows):
            _parallel_symbolic(sch, rows)
        return
    if rows:
        fused = sch.fuse(*rows) if len(rows) > 1 else rows[0]
        if (_extent(sch, fused) or 0) > 1:
            sch.parallel(fused)


def schedule_row_reduction(sch, name: str, lanes: int):
    """A reduction along rows (LayerNorm's mean and variance, softmax's max and sum, ReduceMean
    over the last axis) as ``lanes`` partial reductions in a vector, then one short scalar one.

    As generated, each output element sums its row one element at a time: a chain of dependent
    scalar additions (4 cycles each) and no vector use. Splitting the row ``k = ko*lanes + ki`` and
    factoring out ``ki`` (``rfactor``) keeps ``lanes`` running partials side by side: the
    ``ko`` loop adds whole vectors, and the last step folds ``lanes`` partials per row. The sum is
    reassociated (partials, then their total), which changes float rounding by a few ulps.

    Returns the scheduled copy, or None where the block is not such a reduction (rows whose length
    is not a multiple of ``lanes`` stay with :func:`schedule_reduction`: a split with a remainder
    needs a predicate, which the vectorized partials cannot carry).
    """
    trial = sch.copy()
    block_rv = trial.get_sblock(name)
    loop = _row_reduction_loop(trial, block_rv, lanes)
    if loop is None:
        return None
    try:
        outer, inner = trial.split(loop, factors=[None, lanes])
        out_dims = len(trial.get(block_rv).writes[0].region)
        rf = trial.rfactor(inner, factor_axis=out_dims)
        # partials: (rows..., ko, ki) with ki now spatial -- rows in parallel, ki in a vector
        *rows, ko, ki = trial.get_loops(rf)
        _parallel_rows(trial, rows)
        trial.vectorize(ki)
        init = trial.decompose_reduction(rf, ko)
        trial.vectorize(trial.get_loops(init)[-1])
        # the fold of each row's partials: (rows..., ki)
        *rows, _ = trial.get_loops(block_rv)
        _parallel_rows(trial, rows)
    except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError and friends
        logger.debug("row reduction %s left to schedule_reduction: %s", name, exc)
        return None
    return trial


def schedule_injective(sch, name: str, lanes: int, target=None) -> None:
    block_rv = sch.get_sblock(name)
    loops = sch.get_loops(block_rv)
    if not loops:
        return
    extents = [_extent(sch, lp) for lp in loops]
    table_lanes = table_read_lanes(sch.get(block_rv), target)
    if table_lanes:
        # a byte-table read in vectors of ``table_lanes`` (AVX2 shuffles); an innermost extent
        # they do not divide is first fused with the one outside it (rows of an NHWC tensor)
        if (len(loops) > 1 and None not in extents[-2:] and extents[-1] % table_lanes
                and extents[-1] * extents[-2] % table_lanes == 0
                and _loops_match_iters(sch, block_rv) and _writes_whole_rows(sch.get(block_rv))):
            loops = [*loops[:-2], sch.fuse(loops[-2], loops[-1])]
            extents = [*extents[:-2], extents[-2] * extents[-1]]
        if extents[-1] is not None and extents[-1] % table_lanes == 0:
            lanes = table_lanes
    total = 1
    for e in extents:
        # a symbolic extent: assume a large kernel (dynamic dims are image sizes, sequences)
        total *= e if e is not None else _MIN_PARALLEL_ELEMENTS
    inner = loops[-1]
    if extents[-1] is not None:
        vec = pick_lanes(extents[-1], lanes)
    else:  # symbolic: whole vectors when its known multiple allows
        vec = lanes if known_multiple(sch.get(inner).extent) % lanes == 0 else 1
    rows = loops[:-1] if extents[-1] is None else None  # loops over rows walked whole
    if vec > 1:
        outer_part, vec_loop = sch.split(inner, factors=[None, vec])
        sch.vectorize(vec_loop)
        loops = loops[:-1] + [outer_part]
        rows = loops[:-1]
    elif extents[-1] is not None and extents[-1] > lanes and len(loops) > 1:
        # no vector width divides the innermost extent (197 tokens): the first multiple of
        # ``lanes`` elements of each row runs in vectors, the rest as a scalar loop of its own
        head, _tail = sch.loop_partition(inner, [extents[-1] // lanes * lanes, None])
        _, vec_loop = sch.split(head, factors=[None, lanes])
        sch.vectorize(vec_loop)
        loops = loops[:-1]
    if total >= _MIN_PARALLEL_ELEMENTS:
        if any(e is None for e in extents):
            # rows of a symbolic innermost axis, or of a vectorized static one, run in parallel
            if not (rows is not None and _parallel_rows_symbolic(sch, rows)):
                _parallel_symbolic(sch, loops)
            return
        # Threads take the fewest outer loops that give them enough iterations; the inner loops
        # stay serial. Fusing the whole nest into one parallel loop recomputes every index with
        # a division and a modulo per iteration, which a vector of work hides but a scalar one
        # does not: the stem's padded 224 x 224 x 3 input (153,228 one-element iterations) took
        # longer than its convolution.
        outer, iterations = [], 1
        for lp in loops:
            outer.append(lp)
            iterations *= _extent(sch, lp)
            if iterations >= _MIN_PARALLEL_TILES:
                break
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(fused)


def _writes_whole_rows(block) -> bool:
    """Whether the block's loops (one per iter) write its output buffer in row-major order,
    every element: fusing its two innermost loops then walks contiguous memory."""
    if len(block.writes) != 1:
        return False
    region = block.writes[0].region
    buffer = region_buffer(block.writes[0])
    if len(region) != len(block.iter_vars) or len(region) != len(buffer.shape):
        return False
    for rng, iv, dim in zip(region, block.iter_vars, buffer.shape):
        if _kind(rng.min) != "Var" or not rng.min.same_as(iv.var):
            return False
        if static_extent(iv.dom.extent) != static_extent(dim):
            return False
    return True


#: where :func:`_try` reports blocks left as generated (see :func:`record_fallbacks`)
_FALLBACKS: contextvars.ContextVar[list | None] = contextvars.ContextVar("mmopt_fallbacks",
                                                                          default=None)


def record_fallbacks():
    """Collect, while the block runs, every block a default schedule could not handle: a list of
    ``{"block", "schedule", "reason"}``. Such a block runs as generated (correct, but a plain
    loop nest: not parallel, not vectorized), which a compile report must say."""
    return collecting(_FALLBACKS)


def note_skip(block: str, schedule: str, reason: str, kind: str = "skipped") -> None:
    """Record that ``schedule`` was not used on ``block`` (or used in a degraded form) for
    ``reason``: a symbolic shape (Winograd, a tile with a predicated tail), reported with the
    fallbacks."""
    logger.debug("%s on %s: %s", schedule, block, reason)
    found = _FALLBACKS.get()
    if found is not None:
        entry = {"block": block, "schedule": schedule, "reason": reason, "kind": kind}
        if entry not in found:
            found.append(entry)


def exception_reason(exc: BaseException) -> str:
    """The last non-empty line of an exception's message (TVM's end with the error itself), else
    its type's name."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def note_fallback(block: str, schedule: str, exc: BaseException) -> None:
    reason = exception_reason(exc)
    logger.debug("schedule %s on %s failed: %s", schedule, block, reason)
    found = _FALLBACKS.get()
    if found is not None:
        found.append({"block": block, "schedule": schedule, "reason": reason[:200]})


def _try(sch, fn, *args) -> object:
    """Apply ``fn`` to a copy of the schedule; keep the copy only if it succeeded (a failure is
    noted with :func:`note_fallback`)."""
    trial = sch.copy()
    try:
        fn(trial, *args)
    except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError and friends
        note_fallback(str(args[0]), fn.__name__, exc)
        return sch
    return trial


def _target_params(target) -> tuple[int, int]:
    """``(lanes, registers)`` of a target: float32 lanes per vector and vector registers."""
    from mmopt.targets.cpu import cpu_facts

    facts = cpu_facts(target)
    return max(4, facts.lanes), facts.vector_registers


def _in_scheduled_loops(sch, block_rv) -> bool:
    """Whether a block sits in a loop some schedule made parallel, vectorized or unrolled."""
    from tvm import tirx

    return any(sch.get(lp).kind != tirx.ForKind.SERIAL for lp in sch.get_loops(block_rv))


def _contraction_names(sch) -> list[str]:
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    return [n for n in names if _is_contraction(sch.get(sch.get_sblock(n)))]


def _unpadded_retry(sch, name: str, lanes: int, registers: int, exc: BaseException):
    """After :func:`schedule_contraction` failed with ``exc``: a contraction with symbolic
    extents is tried once more without padding them (TVM may fail to prove that a padded
    result covers the cropped one); otherwise, or if that fails too, it is reported and left
    as generated."""
    try:
        static = all(e is not None for e in _contraction_axes(sch, sch.get_sblock(name))[4])
    except Exception:  # noqa: BLE001 - not a loop nest the contraction schedule handles
        static = True
    if static:
        note_fallback(name, "schedule_contraction", exc)
        return sch
    trial = sch.copy()
    try:
        schedule_contraction(trial, name, lanes, registers, pad_symbolic=False)
    except SymbolicInnermost:
        return _try(sch, schedule_contraction_symbolic, name)
    except Exception as again:  # noqa: BLE001 - TVM raises ScheduleError and friends
        note_fallback(name, "schedule_contraction", again)
        return sch
    return trial


def schedule_prim_func(func, target, knobs: dict | None = None, *, strict: bool = False):
    """A scheduled copy of ``func`` (an ``s_tir.Schedule``), or None if nothing applied.

    ``knobs``: ``{contraction block name: ContractionKnobs}`` overriding the heuristic's tile
    choices (tuning measures such variants); ``strict``: raise when a contraction given knobs
    cannot be scheduled with them, instead of leaving it as generated.
    """
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    lanes, registers = _target_params(target)
    knobs = knobs or {}
    try:
        contractions = _contraction_names(sch)
    except Exception:  # noqa: BLE001 - no root block
        return None
    for name in contractions:
        if strict and name in knobs:
            trial = sch.copy()
            schedule_contraction(trial, name, lanes, registers, knobs[name])
            sch = trial
        else:
            trial = sch.copy()
            try:
                schedule_contraction(trial, name, lanes, registers, knobs.get(name),
                                     target=target)
                sch = trial
            except SymbolicInnermost:
                sch = _try(sch, schedule_contraction_symbolic, name)
            except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError and friends
                sch = _unpadded_retry(sch, name, lanes, registers, exc)
    from mmopt.codegen import winograd

    tiled = []
    for name in winograd.output_blocks(sch):
        trial = sch.copy()
        try:
            winograd.schedule_output(trial, name, lanes, table_read_lanes_for(target))
            sch = trial
            tiled.append(name)
        except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError and friends
            note_skip(name, "winograd.schedule_output", exception_reason(exc)[:200]
                      + "; scheduled as an element-wise loop", kind="degraded")
    sch = _try(sch, _inline_injective_chains, contractions + tiled)
    # what is left at the top level (epilogues that could not be inlined, pads, other blocks)
    root = sch.get_sblock("root")
    for block_rv in sch.get_child_blocks(root):
        block = sch.get(block_rv)
        name = block.name_hint
        # skip the contractions and the init/write-back blocks their schedules created (inside
        # the contraction's parallel loops); a padded contraction's copy-out stays to schedule
        if name in contractions or name in tiled or (
                any(name.startswith(c + "_") for c in contractions)
                and _in_scheduled_loops(sch, block_rv)):
            continue
        if "R" in _iter_kinds(block):
            sch = (schedule_row_reduction(sch, name, lanes)
                   or _try(sch, schedule_reduction, name, lanes))
        else:
            sch = _try(sch, schedule_injective, name, lanes, target)
    return sch


def tunable_contraction(func, target):
    """``(block name, shape, registers)`` of the contraction of ``func`` worth tuning (the one
    with the most iterations), or None when it has none the default schedule can handle."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    lanes, registers = _target_params(target)
    best, best_size = None, 0
    try:
        names = _contraction_names(sch)
    except Exception:  # noqa: BLE001
        return None
    for name in names:
        try:
            shape = _contraction_shape(sch, name, lanes, registers)
        except Exception:  # noqa: BLE001 - the default schedule leaves it alone: nothing to tune
            continue
        size = 1
        for lp in sch.get_loops(sch.get_sblock(name)):
            size *= _extent(sch, lp) or 1
        if size > best_size:
            best, best_size = (name, shape, shape.registers), size
    return best


def default_cpu_schedule_pass():
    """A module pass giving every unscheduled PrimFunc a default CPU schedule."""
    from tvm.s_tir import dlight as dl

    class _Rule(dl.ScheduleRule):
        def apply(self, func, target, tunable):  # noqa: ARG002 - dlight's signature
            try:
                return schedule_prim_func(func, target)
            except Exception as exc:  # noqa: BLE001
                note_fallback(str(func.attrs.get("global_symbol", "?")) if func.attrs else "?",
                              "schedule_prim_func", exc)
                return None

    import tvm

    apply = dl.ApplyDefaultSchedule(_Rule())

    @tvm.transform.module_pass(opt_level=0, name="mmopt_default_cpu_schedules")
    def _schedule(mod, ctx):
        from mmopt.codegen.symbolic_dims import symbolic_bounds

        token = _VAR_BOUNDS.set(symbolic_bounds(mod))
        try:
            return apply(mod)
        finally:
            _VAR_BOUNDS.reset(token)

    return _schedule

