"""Matrix-vector products on CPUs: one output row against a weight matrix stored ``K x N`` (a
classifier's fully connected layer, ``1 x K`` by ``K x N``; one step of a recurrent layer).

Such a product does two FLOPs per weight element it reads, so it runs at the speed its weights
arrive, and in a whole model a large weight is not in cache when its layer runs (the layers before
it have streamed their own weights through): MobileNetV2's head (1280 x 1000 float32, 5 MB) and
ResNet-50's (2048 x 1000, 8 MB) come from memory.

The contraction schedule (:mod:`mmopt.codegen.cpu_contraction`) gives each thread a register tile
of ``nv x lanes`` output columns and reads the weight in column strips: ``K`` pieces of 64-160 bytes,
each a whole row (4 KB) after the last, so every piece is in another page and the hardware
prefetcher does not follow. Measured in the whole models on an AMD EPYC Zen 4 (2 threads): 0.19 ms
for MobileNetV2's head (5.7% of the FMA peak; onnxruntime 0.13 ms) and 0.45 ms for ResNet-50's
(3.9%; onnxruntime 0.26 ms).

Here the weight is read in the order it is stored. The reduction over ``K`` is split into
:func:`chunks` blocks of consecutive rows (``rfactor``); the blocks are the parallel loop, and a
thread streams each of its blocks row after row, adding ``x[k] * W[k, :]`` (vectorized along the
row) into a partial-sum row of ``N`` floats that stays in L1. A last loop adds the blocks' partial
rows (``chunks x N`` floats, from L1/L2). Each partial row starts on its own cache line
(``storage_align``), so two threads never write to the same line. With the heads' weights flushed
from the caches before every call (the state they are in inside a model), same machine: 234 ->
134-160 us and 401 -> 208-223 us (median); in the models (``mmopt profile``) 0.19 -> 0.17 ms and
0.45 -> 0.24 ms.

Only float32 products whose every output dimension but the last has extent 1 take this path, with
static extents and weights of at least :data:`MIN_WEIGHT_BYTES`; everything else keeps the
register tile. The tuning knobs of the register tile do not apply here, so such a kernel is no
knob-tuning task (:func:`mmopt.codegen.cpu_schedules.tunable_contraction`).
"""

from __future__ import annotations

from mmopt.codegen.register_tiles import pick_lanes
from mmopt.codegen.tir_util import _index_iter, _iter_kinds, _kind, region_buffer, static_extent

#: weights below this size stay with the register tile: its strips cost little when the whole
#: weight is a few pages (a squeeze-and-excitation layer's 1x1 convolutions are not this path
#: anyway: their weights are packed)
MIN_WEIGHT_BYTES = 64 * 1024
#: at most this many blocks of rows: enough parallel work for 16 threads; each block adds a
#: partial row of ``N`` floats that the last loop reads
MAX_CHUNKS = 16
#: at least this many rows per block, so a block's stream is long next to its partial row's
#: initialization and final read
MIN_CHUNK_ROWS = 32
#: a partial row's start is aligned to this many float32 elements (one 64-byte cache line)
_LINE_FLOATS = 16


def chunks(k: int) -> int:
    """The number of blocks of rows the reduction over ``k`` is split into: the largest divisor of
    ``k`` up to :data:`MAX_CHUNKS` that leaves :data:`MIN_CHUNK_ROWS` rows per block (0: none,
    ``k`` is too short or has no such divisor)."""
    for d in range(min(MAX_CHUNKS, k // MIN_CHUNK_ROWS), 1, -1):
        if k % d == 0:
            return d
    return 0


def _named_block(func, name: str):
    """The block called ``name`` in PrimFunc ``func`` and the extents of the loops around it,
    read from the IR: looking it up through the schedule would add a step to the schedule's trace
    (tuning records and their comparisons are traces)."""
    from tvm import tirx
    from tvm.s_tir import SBlock, SBlockRealize

    found = []

    def visit(node, loops):
        if isinstance(node, tirx.For):
            visit(node.body, [*loops, node])
        elif isinstance(node, SBlockRealize):
            if node.block.name_hint == name:
                found.append((node.block, [static_extent(lp.extent) for lp in loops]))
            visit(node.block.body, loops)
        elif isinstance(node, tirx.SeqStmt):
            for child in node.seq:
                visit(child, loops)
        elif isinstance(node, SBlock):
            visit(node.body, loops)
        elif hasattr(node, "body") and isinstance(node.body, tirx.Stmt):
            visit(node.body, loops)

    visit(func.body, [])
    return found[0] if len(found) == 1 else (None, None)


def matvec_shape(sch, name: str) -> tuple[int, int] | None:
    """``(K, N)`` when contraction block ``name`` of the schedule's function is a float32
    matrix-vector product this module schedules (see the module docstring), else None."""
    block, extents = _named_block(sch.mod["main"], name)
    if block is None or len(extents) != len(block.iter_vars) or len(block.writes) != 1:
        return None
    kinds = _iter_kinds(block)
    if any(e is None for e in extents) or kinds.count("R") != 1:
        return None
    out = region_buffer(block.writes[0])
    if str(out.dtype) != "float32" or not block.writes[0].region:
        return None
    iters = [iv.var for iv in block.iter_vars]
    v_axis = _index_iter(block, block.writes[0].region[-1])
    k_axis = kinds.index("R")
    if v_axis is None or any(e != 1 for i, (e, kd) in enumerate(zip(extents, kinds))
                             if kd == "S" and i != v_axis):
        return None
    k, n = extents[k_axis], extents[v_axis]
    for region in block.reads:
        buf = region_buffer(region)
        if buf.same_as(out) or len(region.region) < 2:
            continue
        rows, cols = region.region[-2].min, region.region[-1].min
        if (_kind(rows) == "Var" and rows.same_as(iters[k_axis])
                and _kind(cols) == "Var" and cols.same_as(iters[v_axis])):
            if str(buf.dtype) != "float32" or k * n * 4 < MIN_WEIGHT_BYTES:
                return None
            return (k, n) if chunks(k) else None
    return None


def schedule_matvec(sch, name: str, shape: tuple[int, int], lanes: int) -> None:
    """Schedule contraction block ``name`` as described in the module docstring; ``shape``: its
    ``(K, N)`` from :func:`matvec_shape`, ``lanes``: the target's float32 vector width."""
    k, n = shape
    vec = pick_lanes(n, lanes)
    block_rv = sch.get_sblock(name)
    block = sch.get(block_rv)
    kinds = _iter_kinds(block)
    k_axis = kinds.index("R")
    v_axis = _index_iter(block, block.writes[0].region[-1])
    loops = sch.get_loops(block_rv)
    k_o, _k_i = sch.split(loops[k_axis], factors=[chunks(k), None])
    partial = sch.rfactor(k_o, factor_axis=0)

    # the partial sums: parallel over the blocks of rows; in a block, row after row, the whole
    # row vectorized. The rfactor block has the original loops with k split in two, in place.
    rf_loops = sch.get_loops(partial)
    rf_v = v_axis + (1 if v_axis > k_axis else 0)
    rows_o, rows_i, cols = rf_loops[k_axis], rf_loops[k_axis + 1], rf_loops[rf_v]
    units = [lp for i, lp in enumerate(rf_loops) if i not in (rf_v, k_axis, k_axis + 1)]
    if vec > 1:
        v_o, v_i = sch.split(cols, factors=[None, vec])
        sch.reorder(rows_o, *units, rows_i, v_o, v_i)
        sch.vectorize(v_i)
    else:
        sch.reorder(rows_o, *units, rows_i, cols)
    sch.parallel(rows_o)
    sch.storage_align(partial, 0, axis=0, factor=_LINE_FLOATS, offset=0)
    init = sch.decompose_reduction(partial, rows_i)
    if vec > 1:
        sch.vectorize(sch.split(sch.get_loops(init)[-1], factors=[None, vec])[1])

    # the sum of the partial rows, vectorized along the row
    total = sch.get_sblock(name)
    t_loops = sch.get_loops(total)  # the original loops, k (the blocks) in place
    if vec > 1:
        v_o, v_i = sch.split(t_loops[v_axis], factors=[None, vec])
        others = [lp for i, lp in enumerate(t_loops) if i not in (v_axis, k_axis)]
        sch.reorder(*others, v_o, t_loops[k_axis], v_i)
        sch.vectorize(v_i)
        t_init = sch.decompose_reduction(total, t_loops[k_axis])
        sch.vectorize(sch.get_loops(t_init)[-1])
