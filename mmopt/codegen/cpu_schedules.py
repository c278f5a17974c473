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
A block whose schedule fails (an unusual access pattern) is left as generated: never wrong, only
slower.

This module holds the reduction and injective rules and the pass; the contraction schedule and its
knobs are :mod:`mmopt.codegen.cpu_contraction`, the inlining of epilogues and producers
:mod:`mmopt.codegen.cpu_inline`, the record of fallbacks :mod:`mmopt.codegen.schedule_fallbacks`.
"""

from __future__ import annotations

import contextvars
import logging

from mmopt.codegen.byte_lookup import table_read_lanes, table_read_lanes_for
from mmopt.codegen.cpu_contraction import (_MIN_PARALLEL_TILES, SymbolicInnermost,
                                           _contraction_axes, _contraction_names,
                                           _contraction_shape, schedule_contraction,
                                           schedule_contraction_symbolic)
from mmopt.codegen.cpu_inline import _inline_injective_chains, _inline_plain_copies
from mmopt.codegen.register_tiles import known_multiple, pick_lanes
from mmopt.codegen.schedule_fallbacks import exception_reason, note_fallback, note_skip
from mmopt.codegen.tir_util import (_block_axes, _extent, _index_iter, _iter_kinds, _kind,
                                    _loops_match_iters, region_buffer, static_extent,
                                    vectorize_head)

logger = logging.getLogger(__name__)

_MIN_PARALLEL_ELEMENTS = 4096


def _vector_bits(target) -> int:
    """Vector register width of ``target`` in bits (from :mod:`mmopt.targets.cpu`)."""
    from mmopt.targets.cpu import cpu_facts

    return cpu_facts(target).vector_bits


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


def schedule_reduction(sch, name: str, lanes: int) -> None:
    block_rv = sch.get_sblock(name)
    # A pooling window reads each padded input element a few times and does almost no work per
    # read: a materialized padded copy is as much traffic as the pooling itself (ResNet-50's
    # stem max-pool: 0.09 ms against onnxruntime's 0.03 on a Zen 5), so the padding is read
    # through its select instead.
    _inline_plain_copies(sch, block_rv, padding=True)
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
        vectorize_head(sch, inner, extents[-1], lanes)
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
    from mmopt.codegen import gemv

    for name in contractions:
        matvec = gemv.matvec_shape(sch, name) if name not in knobs else None
        if matvec is not None:
            # a matrix-vector product: the weight streamed in storage order (mmopt.codegen.gemv)
            trial = sch.copy()
            try:
                gemv.schedule_matvec(trial, name, matvec, lanes)
                sch = trial
                continue
            except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError and friends
                note_skip(name, "gemv.schedule_matvec", exception_reason(exc)[:200]
                          + "; scheduled as a register tile", kind="degraded")
        if strict and name in knobs:
            trial = sch.copy()
            schedule_contraction(trial, name, lanes, registers, knobs[name], target=target)
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
    from mmopt.codegen import fast_math, row_local, winograd

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
    if not contractions and row_local.applies(sch):
        trial = sch.copy()
        try:
            row_local.schedule_rows(trial, lanes)
            return trial
        except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError and friends
            note_skip(fast_math.SOFTMAX_OUTPUT, "row_local.schedule_rows",
                      exception_reason(exc)[:200] + "; its stages scheduled one by one",
                      kind="degraded")
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
    with the most iterations), or None when it has none the default schedule can handle with
    knobs (a matrix-vector product has none: :mod:`mmopt.codegen.gemv`)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    lanes, registers = _target_params(target)
    best, best_size = None, 0
    try:
        names = _contraction_names(sch)
    except Exception:  # noqa: BLE001
        return None
    from mmopt.codegen import gemv

    for name in names:
        if gemv.matvec_shape(sch, name) is not None:
            continue  # scheduled without the knobs (mmopt.codegen.gemv)
        try:
            shape = _contraction_shape(sch, name, lanes, registers, target)
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
        from mmopt.codegen import prefetch
        from mmopt.codegen.symbolic_dims import symbolic_bounds

        token = _VAR_BOUNDS.set(symbolic_bounds(mod))
        target = tvm.target.Target.current(allow_none=True)
        try:
            with prefetch.streaming(target is not None
                                    and prefetch.weights_from_memory(mod, target)):
                return apply(mod)
        finally:
            _VAR_BOUNDS.reset(token)

    return _schedule
