"""Inlining around the default CPU schedules: a contraction's element-wise epilogue into its
write-back (:func:`inline_epilogue`), chains of element-wise blocks into one loop nest
(:func:`_inline_injective_chains`), and a contraction's plain-copy or padded producers into the
contraction itself (:func:`_inline_plain_copies`, :func:`_inline_row_padding`).
"""

from __future__ import annotations

from mmopt.codegen.byte_lookup import reads_byte_table
from mmopt.codegen.tir_util import _iter_kinds, region_buffer, static_extent


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
