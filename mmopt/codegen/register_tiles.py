"""The register-tile model of the CPU contraction schedules: which ``rows x nv``-vector tile of
accumulators a contraction gets, from the target's vector width and register count, and when an
extent is worth padding (or a convolution's width rounding up) to whole tiles.

Pure arithmetic on extents, shared by the schedules (:mod:`mmopt.codegen.cpu_schedules`) and the
weight packers that must lay weights out for the tile the schedule will use
(:mod:`mmopt.codegen.packed_conv`, :mod:`mmopt.codegen.winograd`).
"""

from __future__ import annotations


def tile_fits(rows: int, nv: int, registers: int) -> bool:
    """Whether a ``rows x nv``-vector register tile fits the vector registers: ``rows * nv``
    accumulators, the ``nv`` weight vectors of one reduction step, and one broadcast input."""
    return rows * nv + nv + 1 <= registers


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` not above ``limit`` (1 at least)."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def pick_lanes(extent: int, lanes: int) -> int:
    """The vector width (in lanes, at least 4) that divides ``extent``: ``lanes``, or a half or a
    quarter of it; 1 when none does (scalar code)."""
    for cand in (lanes, lanes // 2, lanes // 4):
        if cand >= 4 and extent % cand == 0:
            return cand
    return 1


def known_multiple(extent) -> int:
    """The largest integer known to divide the symbolic ``extent`` (``32 * w_blocks``: 32; a
    stride-2 convolution's output of it, ``(32 * w_blocks - 1) // 2 + 1``: 16); 1 when none."""
    from tvm.sym import Analyzer  # TVM 0.27's arith analyzer

    found = Analyzer().modular_set(extent)
    return int(found.coeff) if int(found.base) == 0 and int(found.coeff) > 0 else 1


#: loads (broadcasts and vector loads) a core starts per cycle: 2 on the x86 and Arm cores
#: targeted (3 on Zen 3+, which only makes loads cheaper); the tile model assumes the lower
_LOADS_PER_CYCLE = 2
#: rows of a register tile at most: each row streams its own input row (a different cache line per
#: reduction step); beyond 8 the hardware prefetchers fall behind (AVX-512, 14 x 2 against
#: 8 x 2 tiles on ResNet-50's layers: up to 1.2x slower, never faster)
_MAX_ROWS = 8


def part_rate(vec: int, full_rate_lanes: int | None) -> int:
    """How many FMA-unit passes one ``vec``-lane FMA takes: 1 where the units run that width at
    full rate, 2 for AVX-512 on Zen 4's 256-bit units (``full_rate_lanes``:
    :attr:`mmopt.targets.cpu.CpuFacts.full_rate_lanes`; None: ``vec`` runs at full rate)."""
    if not full_rate_lanes or vec <= full_rate_lanes:
        return 1
    return vec // full_rate_lanes


def tile_efficiency(rows: int, nv: int, min_acc: int) -> float:
    """Estimated fraction of the FMA peak a ``rows x nv`` register tile sustains per reduction
    step. One step issues ``rows * nv`` FMAs, ``nv`` weight loads and ``rows`` input broadcasts;
    each accumulator takes one FMA per step, so a step lasts at least one FMA latency. With
    ``min_acc`` = FMA units x latency, the step takes ``max(acc, loads * units / loads_per_cycle,
    min_acc)`` FMA slots of which ``acc`` do work."""
    acc = rows * nv
    units_per_load = min_acc / 4 / _LOADS_PER_CYCLE  # FMA units per load port (latency ~4)
    return acc / max(acc, (rows + nv) * units_per_load, min_acc)


def register_tile(v_ext: int, r_ext: int | None, lanes: int, registers: int,
                  min_acc: int = 8, full_rate_lanes: int | None = None) -> tuple[int, int]:
    """``(rows, nv)``: the default register tile of a contraction whose output has ``v_ext``
    contiguous elements (vectorized by ``lanes``) and ``r_ext`` rows (None: no row axis).

    Every tile that fits the registers (:func:`tile_fits`) and divides the extents exactly (no
    predicated tails in the micro-kernel) is scored by :func:`tile_efficiency`; the best wins,
    then the one with the most rows, then the most accumulators, then ``nv = 2``.

    Rows before accumulators: one reduction step loads ``nv`` weight vectors, each used by
    ``rows`` accumulators. The weights are the operand that leaves L1 -- the micro-kernel streams
    a ``K x nv``-vector panel of them (K: the reduction length) once per tile of rows, while a
    row's inputs are K floats --, so among tiles the FMA model scores alike the taller one
    streams the fewest weight bytes per FMA. On a 14-wide map with 256 input channels (ResNet-50's
    stage 3, AVX-512) 2 x 8 streams a 128 KiB panel 98 times per output channel block, 7 x 2 a
    32 KiB one (it stays in a 48 KiB L1) 28 times. Measured on Zen 5 (``x86``, 2 threads, whole
    ResNet-50-style, min of alternating runs): those kernels 1.9x faster (0.393 -> 0.212 ms), the
    model 17.09 -> 15.03 ms; on Zen 4, where the FMA units are half as wide, the wider tile's
    extra traffic had stayed hidden.

    Consequences: AVX2 (16 registers) takes 4 x 3 or 4 x 2 on 56- or 28-wide outputs, 2 x 4 on
    14-wide and 7 x 1 on 7-wide ones (2 x 2 or 1 x 2 would leave the FMA units waiting on
    their own latency); AVX-512 and NEON (32 registers) take up to 8 x 2 (:data:`_MAX_ROWS`),
    7 x 2 on 14- and 28-wide maps.

    Vectors wider than the FMA units (``full_rate_lanes``; :func:`part_rate` passes per FMA):
    the tile above keeps its rows and is narrowed to the fewest weight vectors whose
    accumulators, counted in passes, still hide the latency (``rows * nv * passes >= min_acc``),
    so that it streams a narrower ``K x nv`` weight panel. Zen 4 ``x86`` (zmm on 256-bit units,
    32 KiB L1): 7 x 1 instead of 7 x 2 on 7-, 14- and 28-wide maps and on ResNet-50's Winograd
    GEMMs (49 and 16 tiles), 8 x 1 instead of 8 x 2 on 56-wide ones. The callers pass it only
    for modules whose weights stream from memory
    (:func:`mmopt.codegen.cpu_contraction._tile_rate_lanes` has the measurements). Padding and
    rounding (:func:`pad_multiples`, :func:`rounded_rows`) are decided on the tile before
    narrowing: scored with fewer accumulators, a 1-row tile on a 13-wide map had looked as good
    as rounding the map up to 14 columns, and the YOLOX-style detector at 416 ran 20% slower.

    The float weight packers (:mod:`mmopt.codegen.packed_conv`, :mod:`mmopt.codegen.winograd`)
    call this with the same extents, so weights are laid out for the tile the schedule uses."""
    vec = pick_lanes(v_ext, lanes)
    if vec == 1:
        nvs = [1]
    else:
        blocks = v_ext // vec
        nvs = [n for n in (1, 2, 3, 4, 6, 8) if blocks % n == 0]
    if r_ext is None or r_ext == 1:
        if vec == 1:
            return 1, 1
        # GEMV-like (one output row): spend the registers on a wide row of vectors so that every
        # cache line of the weight stream is used whole
        return 1, largest_divisor(v_ext // vec, min(8, registers // 2))
    best, best_key = (1, 1), None
    for nv in nvs:
        for rows in range(1, min(r_ext, _MAX_ROWS) + 1):
            if r_ext % rows or not tile_fits(rows, nv, registers):
                continue
            key = (round(tile_efficiency(rows, nv, min_acc), 3), rows, rows * nv, nv == 2, -nv)
            if best_key is None or key > best_key:
                best, best_key = (rows, nv), key
    passes = part_rate(vec, full_rate_lanes)
    if passes > 1:
        rows, nv = best
        best = (rows, min(n for n in nvs if n == nv or n < nv and rows * n * passes >= min_acc))
    return best


#: the channels a float depthwise convolution's register tile spans, in bytes: one cache line
#: per output position (:func:`depthwise_tile`)
DEPTHWISE_TILE_BYTES = 64


def depthwise_tile(v_ext: int, r_ext: int | None, lanes: int, registers: int, kernel_rows: int,
                   l1_bytes: int, min_acc: int = 8) -> tuple[int, int]:
    """``(rows, nv)``: the register tile of a float depthwise convolution (NHWC, ``v_ext``
    channels, ``r_ext`` output positions along the width, ``kernel_rows`` the kernel's height).

    A depthwise convolution is not a matrix product: each multiply-add reads its own input
    vector (no broadcast reused across ``nv`` vectors) and only the kernel tap's weight vector is
    shared, by the tile's ``rows`` positions. So the tile does not need many accumulators to beat
    the load ports; what it needs is its input in L1: one task of the parallel loop (a tile of
    channels, one output row) slides over ``kernel_rows`` input rows of ``r_ext`` positions (and
    the kernel's halo) of ``nv`` vectors, and the next row's task reuses all but one of them.
    :func:`register_tile`'s tile is kept where that window takes less than half the L1; where it
    takes more (its 8 x 3 AVX-512 tile, 48 channels, on a 56-wide 3x3 layer: 3 x 58 x 192 bytes
    = 33 KiB of a 48 KiB L1, with the padding branches short of registers beside 24
    accumulators; AVX2's 4 x 3 there: 16.3 of 32 KiB, its 12 accumulators three quarters of 16
    registers) the tile narrows to at most
    :data:`DEPTHWISE_TILE_BYTES` of channels (one cache line per position: a 16-lane AVX-512
    vector, two AVX2 or four NEON ones), with the most accumulators up to half the register file
    (the other half for the tap's weights, the inputs and the epilogue), then whole cache lines
    (a half-line tile leaves the other half of each line to a task that runs a whole pass over
    the map later: AVX2's stride-2 112x112x96 layer 48 -> 71 us with 8 x 1 against 4 x 2).

    Measured on Zen 5 (2 threads, min of 6 x 100 calls alternated, single kernels in cache),
    earlier tile -> this one: ``x86`` (8 x 3 -> 14 x 1) 56x56x144 3x3 35.7 -> 26.8 us, its
    stride-2 twin on 112x112x96 45.4 -> 34.5 us, 5x5 with SiLU on 56x56x144 94.8 -> 77.9 us;
    ``x86-avx2`` (4 x 3 -> 4 x 2) 56x56x144 80.1 -> 46.1 us, the 5x5 244.5 -> 191.7 us, the
    stride-2 one 50.0 -> 48.2 us. In a whole MobileNetV2 (``mmopt profile``, min of 3 x 30
    runs, alternated): ``x86`` depthwise kernels 0.229 -> 0.191 ms in all (56x56x144 0.049 ->
    0.030, the stride-2 112x112x96 0.050 -> 0.037, 112x112x32 0.032 -> 0.029; the others
    unchanged), ``x86-avx2`` 0.396 -> 0.316 ms (56x56x144 0.086 -> 0.050). The narrow tile on
    every layer had made the 14x14 and 7x7 ones, whose window fits, slower (0.005 -> 0.007 ms
    on ``x86``): hence the L1 condition. NEON follows the same reasoning, unmeasured: no ARM
    hardware here."""
    vec = pick_lanes(v_ext, lanes)
    rows0, nv0 = register_tile(v_ext, r_ext, vec, registers, min_acc)
    if vec == 1 or r_ext is None:
        return rows0, nv0
    # the input window: the kernel's rows of the output row's positions and their halo (a
    # square kernel, stride 1: strided layers read more, which only adds to the case for it)
    if kernel_rows * (r_ext + kernel_rows - 1) * nv0 * vec * 4 < l1_bytes // 2:
        return rows0, nv0
    budget = max(1, registers // 2)
    blocks = v_ext // vec
    best, best_key = (rows0, nv0), None
    for nv in range(1, blocks + 1):
        if blocks % nv or nv * vec * 4 > max(DEPTHWISE_TILE_BYTES, vec * 4):
            continue
        rows = largest_divisor(r_ext, max(1, budget // nv))
        key = (rows * nv, nv)  # most accumulators, then whole cache lines
        if best_key is None or key > best_key:
            best, best_key = (rows, nv), key
    return best


#: padding of a contraction's extent may waste at most this fraction of the work
_MAX_PAD_WASTE = 0.125


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pad_multiples(v_ext: int, r_ext: int | None, lanes: int, registers: int,
                  min_acc: int = 8) -> tuple[int, int]:
    """``(v_multiple, r_multiple)``: the multiples a contraction's innermost output extent
    ``v_ext`` and row extent ``r_ext`` are padded to (1: not padded) before it is tiled.

    Tiles divide the extents exactly (no predicates in the micro-kernel), so an extent without
    a good divisor degrades the tile: a transformer with 197 tokens (prime) gets 1-row tiles,
    which reload every weight vector for each row (memory-bound: 18 GFLOP/s on ViT-Tiny's MLP
    on a core with a 117 GFLOP/s peak), and a 197-wide output gets scalar code (3 GFLOP/s on its
    attention scores). Padding costs a copy of the padded operands and of the result, so:

    * ``v_ext`` is padded to a multiple of ``lanes`` when it is not one of at least half of
      ``lanes``, the padding wastes less than the narrower vectors would, and there are at least
      16 rows to spread the padded operand's copy over (a single-row product would copy as much
      as it computes);
    * ``r_ext`` (at least 8) is padded when its exact tiles have fewer than 4 rows, to the multiple
      of 4..8 rows whose register tile (:func:`register_tile` on the padded extents) does the
      most useful work per FMA slot, wasting at most :data:`_MAX_PAD_WASTE`.
    """
    pad_v = 1
    vec = pick_lanes(v_ext, lanes)
    rows_ext = r_ext or 1
    if vec < lanes and v_ext > lanes and rows_ext >= 16:
        padded = round_up(v_ext, lanes)
        if padded / v_ext - 1 <= _MAX_PAD_WASTE and v_ext / padded > vec / lanes:
            pad_v = lanes
    v_eff = round_up(v_ext, pad_v)
    vec_eff = pick_lanes(v_eff, lanes)
    pad_r = 1
    if r_ext is not None and r_ext >= 8 and vec_eff > 1:
        rows0, _nv = register_tile(v_eff, r_ext, vec_eff, registers, min_acc)
        if rows0 < 4:
            best_key = None
            for m in range(_MAX_ROWS, 3, -1):
                padded = round_up(r_ext, m)
                if padded / r_ext - 1 > _MAX_PAD_WASTE:
                    continue
                rows, nv = register_tile(v_eff, padded, vec_eff, registers, min_acc)
                if rows < 4:
                    continue
                key = (round(tile_efficiency(rows, nv, min_acc) * r_ext / padded, 3), rows * nv)
                if best_key is None or key > best_key:
                    pad_r, best_key = m, key
    return pad_v, pad_r


#: a convolution's output channels are padded (:func:`padded_channels`) only when its output has
#: at least this many positions, over which the padded weights' extra work is spread
_MIN_PADDED_POSITIONS = 64


def padded_channels(channels: int, positions: int, lanes: int,
                    full_rate_lanes: int | None = None) -> int:
    """The channel count a float convolution's output is computed with: ``channels`` rounded up
    to whole vectors of ``lanes`` when that does more useful work per FMA than the narrower
    vectors that divide ``channels`` (else ``channels`` itself); ``positions``: output pixels.

    AVX-512 (16 lanes) on 24 or 40 channels (MobileNetV2's and EfficientNet's 56x56 and 28x28
    projections): 8-lane vectors, half of every FMA idle (47% of the FMA peak measured on Zen 5);
    padded to 32 or 48 channels (zero weights, cropped after the convolution) the tile runs on
    full vectors, 75% or 83% of whose lanes do useful work. The crop runs in the tile's loop,
    on the tile still in L1 (:func:`mmopt.codegen.cpu_contraction.schedule_contraction`). AVX2 (8 lanes) and NEON (4) divide these
    counts already and are left alone, as is every count a full vector divides.

    ``full_rate_lanes``: the narrowest vector that keeps the FMA units at full rate
    (:attr:`mmopt.targets.cpu.CpuFacts.full_rate_lanes`; default ``lanes``). Where the narrower
    vector that divides ``channels`` is at least that wide, nothing is idle and the channels are
    left alone: Zen 4 runs AVX-512 on 256-bit units, so 24 channels take three 8-lane vectors at
    full rate. MobileNetV2 ``x86`` on an EPYC Zen 4, 2 threads, in the model: its 56 x 56
    projection to 24 channels 0.094 -> 0.067 ms (minimum of 30 runs), the model 1-2% faster;
    EfficientNet-B0 (24 and 40 channels) 2-3%."""
    vec = pick_lanes(channels, lanes)
    if vec >= (full_rate_lanes or lanes) or positions < _MIN_PADDED_POSITIONS:
        return channels
    padded = round_up(channels, lanes)
    return padded if channels / padded > vec / lanes else channels


#: a convolution's width (:func:`rounded_rows`) may be rounded up by this fraction at most: one
#: more column on a 7-wide map (ResNet's and MobileNet's last stage at 224 x 224)
_MAX_ROW_ROUNDING = 0.15


def rounded_rows(v_ext: int, r_ext: int, lanes: int, registers: int,
                 min_acc: int = 8) -> int | None:
    """The row tile a static row extent ``r_ext`` is rounded up to a multiple of (None: tiled
    exact), for contractions that pad their rows themselves rather than through
    :func:`pad_multiples` (a convolution reads ``x + kw``: no ``pad_einsum``; the packed
    convolutions of :mod:`mmopt.codegen.packed_conv` compute the rounded-up width and crop, and
    :mod:`mmopt.codegen.winograd`'s input transform writes zero tiles up to the rounded count).

    Every rounded-up extent wasting at most :data:`_MAX_ROW_ROUNDING` is scored by its register
    tile's :func:`tile_efficiency` times the useful fraction of the rows; the best one is taken
    if it beats the exact extent's tile, or ties with it while the exact tile has fewer than
    ``min_acc`` accumulators and the rounded-up one does not. AVX-512, 64 channels: 13 columns
    tile 1 x 4, 14 tile 7 x 2 (taken); AVX2 keeps 14 columns' 2 x 4 rather than 15's 5 x 2; a
    26-wide map with 192 channels keeps its 2 x 6, which fills AVX-512's FMA units already.

    The tie: AVX2's 7-wide maps tile 7 x 1 (7 accumulators, one short of hiding the FMA
    latency); 8 columns tile 4 x 2 or 4 x 3, which the model scores the same after the wasted
    column. Measured in whole models (Zen 4, ``x86-avx2``, 2 threads), the rounded-up width is
    faster: MobileNetV2's 7 x 7 1x1 convolutions by 10-26%, ResNet-50's stage-4 convolutions by
    7-10% (the 7 x 1 tile alone, its weights in cache, matches the model; in the network it
    does not). AVX-512 keeps 7 x 2."""
    vec = pick_lanes(v_ext, lanes)
    if vec == 1:
        return None

    def useful(rows_ext: int) -> tuple[float, int, int]:
        rows, nv = register_tile(v_ext, rows_ext, vec, registers, min_acc)
        return tile_efficiency(rows, nv, min_acc) * r_ext / rows_ext, rows, rows * nv

    best_useful, _, exact_acc = useful(r_ext)
    best = None
    for padded in range(r_ext + 1, int(r_ext * (1 + _MAX_ROW_ROUNDING)) + 1):
        value, rows, acc = useful(padded)
        if round_up(r_ext, rows) != padded:
            continue
        ties = (best is None and abs(value - best_useful) < 1e-9
                and exact_acc < min_acc <= acc)
        if value > best_useful + 1e-9 or ties:
            best, best_useful = rows, value
    return best
