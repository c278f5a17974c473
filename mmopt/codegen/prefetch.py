"""Software prefetch of a contraction's next weight panel while the current one is reused.

A register-tiled contraction (:func:`mmopt.codegen.cpu_contraction.schedule_contraction`) reads
one *panel* of weights -- the ``K x tile`` values of one output-channel tile, contiguous in the
packed layouts (:mod:`mmopt.codegen.packed_conv`, :mod:`mmopt.codegen.winograd`) -- once per row
tile of the output, ``R`` times in a row. The first pass brings the panel from memory (a model's
weights do not stay in cache between inferences: ResNet-50's are 102 MB), the other ``R - 1``
passes find it in L1/L2 and run at the FMA peak. So each panel costs one memory-bound pass plus
``R - 1`` compute-bound ones, and the memory is idle during the latter: the hardware prefetchers
follow a stream a few lines ahead, not into the next panel.

Here the schedule splits the innermost reduction loop into chunks of ``C`` steps and annotates the
chunk loop (:data:`ANNOTATION`); :func:`expand_prefetches` (a TIR pass before lowering) puts at the
top of each chunk ``prefetch`` instructions for the lines of the *next* panel (the parallel loop's
next iteration that reads other weights) at the position ``(u K + k) / R`` of that panel, ``u`` the
pass (row tile) over the current one and ``k`` the reduction step. Over the ``R`` passes that
walks the next panel once, evenly: it arrives while the current one is computed on, and its first
pass no longer waits on memory.

Why the chunk: a prefetch inside the innermost loop would need its index arithmetic every step,
and LLVM does not keep a heap-allocated accumulator tile in registers across a call it cannot
prove not to alias. ``C`` is about ``9 R`` (about ten prefetched reduction steps per chunk),
between 8 and 128 steps.

When: the model's weights exceed the target's last-level cache (``CpuFacts.llc_kib``; smaller
ones stay there between inferences, and fetching the next panel early then only displaces the
current one: a ViT-tiny's matmuls ran 5-9% slower with prefetches, MobileNetV2's 7x7 expansions
12% on ``x86-avx2``), decided once per module (:func:`weights_from_memory`, which the schedule
pass and tuning's task schedules set with :func:`streaming`); a panel operand of at least
:data:`MIN_WEIGHT_FRACTION_OF_L2` of the target's L2 (smaller weights cost little to fetch);
reused ``R >= 2`` times; an innermost reduction of at least 8 steps.
``ContractionKnobs.prefetch`` forces it on or off whatever the rule says.

Measured on an AMD EPYC Zen 5 (2 threads, AVX-512 ``x86``, weights flushed from cache before each
call, which is what a model's kernels see): ResNet-50's stage-3 Winograd GEMM (16 x 49 x 256 by
256 x 256) 0.250 -> 0.200 ms; its stage-4 3x3 convolution (7 x 7 x 512, a 590 KB panel per
32-channel tile) 0.535 -> 0.485 ms. With the weights already in cache the prefetches cost 2-8%.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

from mmopt.codegen.tir_util import static_bytes

#: the chunk loop's annotation: ``"buffer:stride:reuse"`` (see :func:`expand_prefetches`; a string,
#: since a tuning record's trace replays only scalar annotation values)
ANNOTATION = "mmopt_prefetch"
#: weights smaller than this fraction of the L2 are not prefetched
MIN_WEIGHT_FRACTION_OF_L2 = 0.5
#: reduction steps of the next panel prefetched per chunk (the chunk is ``R`` times longer)
STEPS_PER_CHUNK = 9
_MIN_CHUNK, _MAX_CHUNK = 8, 128
#: the cache line prefetched: 64 bytes on every x86 and Arm core targeted
LINE_BYTES = 64
#: LLVM's prefetch locality 0 (``prefetchnta`` on x86, ``pldl1strm`` on AArch64): into L1 without
#: displacing what L2/L3 hold. With locality 3 (``prefetcht0``) a ViT-tiny's matmuls, whose 23 MB of
#: weights stay in this Zen 5's 32 MB L3 between inferences, ran 5-9% slower (the next panel came
#: from L3 anyway and pushed the current one out); ResNet-50 gains the same with either; locality 2
#: (``prefetcht1``) gained less on both.
_NON_TEMPORAL = 0


#: whether the module being scheduled reads its weights from memory (see :func:`streaming`)
_STREAMING: contextvars.ContextVar[bool] = contextvars.ContextVar("mmopt_weights_streamed",
                                                                  default=False)


def streamed() -> bool:
    """Whether the module being scheduled reads its weights from memory (:func:`streaming`)."""
    return _STREAMING.get()


@contextlib.contextmanager
def streaming(flag: bool):
    """Schedule with the weights read from memory (``flag``) or staying in cache."""
    token = _STREAMING.set(bool(flag))
    try:
        yield
    finally:
        _STREAMING.reset(token)


def constant_bytes(mod) -> int:
    """Bytes of the distinct constants (the weights) of ``mod``'s Relax functions."""
    import tvm
    from tvm import relax

    seen: dict = {}  # the constant node (kept alive, hashed by identity): its bytes

    def visit(expr):
        if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor):
            data = expr.value
            count = 1
            for d in data.shape:
                count *= int(d)
            seen[expr] = count * tvm.DataType(str(data.dtype)).bits // 8

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sum(seen.values())


def weights_from_memory(mod, target) -> bool:
    """Whether ``mod``'s weights exceed ``target``'s last-level cache: every inference then reads
    them from memory, and prefetching the next panel pays (module docstring)."""
    from mmopt.targets.cpu import cpu_facts

    try:
        llc = cpu_facts(target).llc_kib * 1024
    except Exception:  # noqa: BLE001 - not an LLVM CPU target
        return False
    return constant_bytes(mod) > llc


@dataclass(frozen=True)
class PrefetchPlan:
    """How a contraction's weight panel is prefetched (see the module docstring)."""

    #: the panel operand (a weight buffer's name)
    buffer: str
    #: iterations of the parallel loop that read the same panel (the next panel is ``stride``
    #: iterations on)
    stride: int
    #: the row-tile loop between the parallel loop and the reductions (1) or none (0)
    reuse_loops: int
    #: passes over one panel (``stride`` x the row-tile loop's extent)
    passes: int
    #: reduction steps per chunk
    chunk: int

    def annotation(self) -> str:
        return f"{self.buffer}:{self.stride}:{self.reuse_loops}"


def _vars_of(region) -> set:
    from tvm import tirx

    found = set()
    for rng in region.region:
        found.update(tirx.analysis.undefined_vars(rng.min))
    return found


def panel_operand(block, v_axis: int, r_axis: int | None):
    """The read region of a contraction ``block`` that is its weight panel: indexed by the output
    channel (the innermost output axis ``v_axis``, in its last dimension) and not by the rows
    (``r_axis``). None when there is no such read."""
    from tvm import tirx

    from mmopt.codegen.tir_util import region_buffer

    out = region_buffer(block.writes[0])
    v_var = block.iter_vars[v_axis].var
    r_var = block.iter_vars[r_axis].var if r_axis is not None else None
    best = None
    for region in block.reads:
        buf = region_buffer(region)
        if buf.same_as(out) or not region.region:
            continue
        used = _vars_of(region)
        last = set(tirx.analysis.undefined_vars(region.region[-1].min))
        if v_var not in used or v_var not in last or (r_var is not None and r_var in used):
            continue
        if best is None or (static_bytes(buf) or 0) > (static_bytes(best[1]) or 0):
            best = (region, buf)
    return best


def chunk_for(passes: int, k_extent: int) -> int | None:
    """The reduction chunk for ``passes`` over a panel: a divisor of ``k_extent`` near
    ``STEPS_PER_CHUNK * passes`` within [8, 128]; None when the reduction is shorter than 8."""
    want = min(max(STEPS_PER_CHUNK * passes, _MIN_CHUNK), _MAX_CHUNK)
    divisors = [d for d in range(_MIN_CHUNK, min(k_extent, _MAX_CHUNK) + 1) if k_extent % d == 0]
    if not divisors:
        return None
    return min(divisors, key=lambda d: (abs(d - want), -d))


def plan(block, v_axis: int, r_axis: int | None, outer, reuse_extent: int, k_extent: int | None,
         l2_bytes: int, force: bool | None = None) -> PrefetchPlan | None:
    """The prefetch plan of a contraction ``block`` whose parallel loop fuses ``outer``
    (``[(block axis, extent), ...]``, outermost first) above a row-tile loop of ``reuse_extent``
    (1: none); None where the module docstring's conditions do not hold (``force``: True ignores
    the weight-size conditions, False gives None)."""
    if force is False or k_extent is None or (force is None and not _STREAMING.get()):
        return None
    found = panel_operand(block, v_axis, r_axis)
    if found is None:
        return None
    region, buf = found
    if force is not True and (static_bytes(buf) or 0) < MIN_WEIGHT_FRACTION_OF_L2 * l2_bytes:
        return None
    used = _vars_of(region)
    stride = 1
    for axis, extent in reversed(outer):
        if block.iter_vars[axis].var in used:
            break
        stride *= extent
    passes = stride * reuse_extent
    if passes < 2:
        return None
    chunk = chunk_for(passes, k_extent)
    if chunk is None:
        return None
    return PrefetchPlan(str(buf.name), stride, 1 if reuse_extent > 1 else 0, passes, chunk)


# ---- the TIR pass ---------------------------------------------------------------------------


def _find_annotated(body):
    """``[(enclosing For loops, annotated For), ...]`` in a PrimFunc body."""
    import tvm_ffi
    from tvm import tirx

    found = []
    stack = []

    def on_for(node, visitor):
        if ANNOTATION in (node.annotations or {}):
            found.append((list(stack), node))
        stack.append(node)
        visitor.default_visit(node)
        stack.pop()

    tvm_ffi.structural_visit(body, [(tirx.For, on_for)])
    return found


def _update_realize(loop, buffer: str):
    """The block realize under ``loop`` that reads ``buffer`` and reduces (the update block)."""
    import tvm_ffi
    from tvm import tirx

    from mmopt.codegen.tir_util import region_buffer

    hits = []

    def on_realize(node, visitor):
        block = node.block
        if any(str(region_buffer(r).name) == buffer for r in block.reads) and any(
                iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars):
            hits.append(node)
            return
        visitor.default_visit(node)

    from tvm.s_tir.stmt import SBlockRealize

    tvm_ffi.structural_visit(loop.body, [(SBlockRealize, on_realize)])
    return hits[0] if hits else None


def _substitute(expr, vmap: dict):
    import tvm_ffi
    from tvm import tirx

    def on_var(var):
        return vmap.get(var, var)

    return tvm_ffi.structural_map(expr, [(tirx.Var, on_var)])


def _loops_to(loop, realize):
    """The For loops from inside ``loop`` down to ``realize``."""
    import tvm_ffi
    from tvm import tirx

    path, stack = [], []

    def on_for(node, visitor):
        stack.append(node)
        visitor.default_visit(node)
        stack.pop()

    def on_realize(node, visitor):
        if node.same_as(realize):
            path.extend(stack)
            return
        visitor.default_visit(node)

    from tvm.s_tir.stmt import SBlockRealize

    tvm_ffi.structural_visit(loop.body, [(tirx.For, on_for), (SBlockRealize, on_realize)])
    return path


def _prefetch_loop(outer_loops, loop):
    """The unrolled prefetch loop for the annotated chunk ``loop`` (see the module docstring);
    None when the loop nest is not the one the schedule annotated."""
    import tvm
    from tvm import tirx
    from tvm.sym import Analyzer

    from mmopt.codegen.tir_util import region_buffer, static_extent

    buffer, stride, n_reuse = str(loop.annotations[ANNOTATION]).rsplit(":", 2)
    stride, n_reuse = int(stride), int(n_reuse)
    if not outer_loops or outer_loops[0].kind != tirx.ForKind.PARALLEL:
        return None
    realize = _update_realize(loop, buffer)
    if realize is None or not isinstance(loop.body, tirx.For):
        return None
    inner = loop.body
    parallel, reuse = outer_loops[0], outer_loops[1:1 + n_reuse]
    reductions = [*outer_loops[1 + n_reuse:], loop, inner]
    extents = [static_extent(lp.extent) for lp in [parallel, *reuse, *reductions]]
    if any(e is None for e in extents) or any(static_extent(lp.min) != 0
                                              for lp in [parallel, *reuse, *reductions]):
        return None
    dtype = str(parallel.loop_var.ty.dtype)

    def const(v):
        return tirx.IntImm(dtype, v)

    f = parallel.loop_var
    n_par = extents[0]
    red_ext = extents[1 + n_reuse:]
    k_total = 1
    for e in red_ext:
        k_total *= e
    # the pass over the current panel, and how many there are
    u = tirx.FloorMod(f, const(stride))
    passes = stride
    for lp, e in zip(reuse, extents[1:1 + n_reuse]):
        u = u * const(e) + lp.loop_var
        passes *= e
    # reduction steps before this chunk
    k0 = const(0)
    for lp, e in zip(reductions[:-1], red_ext[:-1]):
        k0 = k0 * const(e) + lp.loop_var
    k0 = k0 * const(red_ext[-1])
    chunk = red_ext[-1]
    steps = chunk // passes + 1
    j = tirx.Var("prefetch_j", dtype)
    k_next = tirx.Min(tirx.FloorDiv(u * const(k_total) + k0, const(passes)) + j, const(k_total - 1))
    vmap = {f: tirx.Min(f + const(stride), const(n_par - 1))}
    for lp in reuse:
        vmap[lp.loop_var] = const(0)
    rest = k_next
    for lp, e in reversed(list(zip(reductions, red_ext))):
        vmap[lp.loop_var] = tirx.FloorMod(rest, const(e))
        rest = tirx.FloorDiv(rest, const(e))
    block = realize.block
    bind = {iv.var: value for iv, value in zip(block.iter_vars, realize.iter_values)}
    region = next(r for r in block.reads if str(region_buffer(r).name) == buffer)
    buf = region_buffer(region)
    # the output-channel loops of the register tile: those the panel's last index moves with
    last_vars = set(tirx.analysis.undefined_vars(_substitute(region.region[-1].min, bind)))
    tile_loops = []
    for lp in _loops_to(inner, realize):
        if lp.loop_var in last_vars:
            tile_loops.append(lp)
        else:
            vmap[lp.loop_var] = const(0)
    tile_extents = [static_extent(lp.extent) for lp in tile_loops]
    if any(e is None for e in tile_extents):
        return None
    tile = 1
    for e in tile_extents:
        tile *= e
    analyzer = Analyzer()
    elem = tvm.DataType(str(buf.dtype)).bits // 8
    body = []
    # one prefetch per cache line of the tile's weights at this reduction step
    for offset in range(0, tile, max(LINE_BYTES // elem, 1)):
        rest = offset
        for lp, e in reversed(list(zip(tile_loops, tile_extents))):
            vmap[lp.loop_var] = const(rest % e)
            rest //= e
        index = [analyzer.simplify(_substitute(_substitute(rng.min, bind), vmap))
                 for rng in region.region]
        address = tirx.address_of(buf[tuple(index)])
        body.append(tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", address, 0,
                                                   _NON_TEMPORAL, 1)))
    return tirx.For(j, const(0), const(steps), tirx.ForKind.UNROLLED,
                    body[0] if len(body) == 1 else tirx.SeqStmt(body))


def expand_prefetches():
    """The TIR pass of the module docstring: prefetches at the top of every annotated chunk loop
    (the annotation is removed; a loop nest that is not the scheduled one is left without, and
    reported as degraded with the schedule fallbacks)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="mmopt_expand_prefetches")
    def _pass(func, _mod, _ctx):
        found = _find_annotated(func.body)
        if not found:
            return func
        new = {}
        for outer, loop in found:
            prefetch = _prefetch_loop(outer, loop)
            if prefetch is None:
                from mmopt.codegen.schedule_fallbacks import note_skip

                name = func.attrs.get("global_symbol", "?") if func.attrs is not None else "?"
                note_skip(str(name), "prefetch", "the loop nest is not the one the schedule "
                          "annotated: its weights are not prefetched", kind="degraded")
            annotations = {k: v for k, v in loop.annotations.items() if k != ANNOTATION}
            body = loop.body if prefetch is None else tirx.SeqStmt([prefetch, loop.body])
            new[loop] = tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body,
                                 loop.thread_binding, annotations)

        def on_for(node):
            for old, replacement in new.items():
                if node.same_as(old):
                    return replacement
            return node

        return tvm_ffi.structural_map(func, [(tirx.For, on_for)], order="pre")

    return _pass
