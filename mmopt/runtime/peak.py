"""This machine's peak float32 FMA throughput for a target's instruction set, measured.

``fma_peak_gflops("x86-avx2", threads=2)`` is the yardstick that ``mmopt profile`` (and the speed
suite) divide a kernel's GFLOP/s by: how fast *this* CPU runs fused multiply-adds when nothing but
FMAs stand in the way, with the vector width the artifact's code was generated for (``x86-avx2``:
256-bit ymm FMAs, ``x86-avx512``: 512-bit zmm, ``x86``: this machine's own CPU).

How it is measured: a TIR kernel, compiled by TVM/LLVM for the target exactly as an artifact's
kernels are, where each thread keeps ``chains`` independent vector accumulators and updates each
with ``acc = acc * a + b`` in a long loop (one ``vfmadd`` per accumulator per iteration). FMA
latency x FMA units bounds the useful number of accumulators from below (2 units x 4 cycles on
current x86 cores: at least 8); the register file bounds it from above. The kernel therefore uses
``vector_registers - 4`` of them (12 ymm on AVX2, 28 zmm on AVX-512), all held in registers. Each
measurement runs in a freshly spawned process whose TVM thread pool has exactly ``threads``
workers, and is cached per ``(target, threads)`` in this process.

What the number means: the FMA throughput of ``threads`` cores that each run the kernel whenever
they run, i.e. the flops of a burst divided by the CPU time its threads got, times ``threads``; the
median of 10 bursts of 0.1 s each, or the best wall-clock rate when that is higher. On an idle
machine this equals the wall-clock rate
(``wall_gflops``, also reported). On a shared machine the wall-clock rate of several threads
depends on whether the other processes leave all the cores free at once (measured: 46 instead of
~225 GFLOP/s for 2 threads on a 2-core machine at load average 8), while the per-CPU-second rate
stays the hardware's; kernels timed on the same busy machine then show a lower percentage of it,
which is what happened to them.
(Where two threads share one physical core through SMT and the machine is busy, this can
overstate the peak of that pair: they are then rarely measured running at the same time.)

The generated assembly is checked for FMA instructions on the vector registers the ISA implies
(``vfmadd...ps`` on ``%ymm`` for AVX2, ``%zmm`` for AVX-512); the result carries the clock it
implies (GFLOP/s / (threads x FMA units x lanes x 2)), a plausibility check.

Note: AMD Zen 4 executes a 512-bit FMA as two 256-bit halves, so its AVX-512 and AVX2 peaks are
about equal; Intel server cores with two 512-bit FMA units double theirs.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass

from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

#: the API (the rest serves ``mmopt profile``'s worker process and the tests)
__all__ = ["PeakMeasurement", "fma_peak_gflops", "measure_peak"]

#: one timed burst lasts about this long. Long enough that the kernel's accounting of the other
#: threads' CPU time, which on an idle machine is brought up to date only at scheduler ticks (up
#: to 4 ms late), cannot make a burst's CPU time look short: with 4 ms bursts, some bursts showed
#: the second thread's time missing and the 2-thread AVX-512 peak came out twice the true one
#: (441 instead of 227 GFLOP/s on a Zen 4 with two cores)
_BURST_S = 0.1
_BURSTS = 10
#: registers kept free of accumulators: the two loop-invariant operands, and room to spare
_FREE_REGISTERS = 4


@dataclass(frozen=True)
class PeakMeasurement:
    """One measured FMA peak, with what was measured and how to judge it."""

    target: str
    threads: int
    #: the peak: best over the bursts of flops / CPU seconds of the threads x threads (2 flops per
    #: lane per FMA)
    gflops: float
    #: best wall-clock GFLOP/s over the bursts (equal to ``gflops`` on an idle machine)
    wall_gflops: float
    #: median wall-clock GFLOP/s over the bursts: how much the machine's other load took away
    median_gflops: float
    isa: str
    vector_bits: int
    lanes: int
    fma_units: int
    #: independent accumulators per thread
    chains: int
    #: the FMA (or multiply) instruction the kernel's assembly uses, e.g. "vfmadd213ps %ymm"
    instruction: str
    #: whether the assembly has fused multiply-adds on the ISA's vector registers
    asm_ok: bool
    #: GHz the peak implies per FMA unit: gflops / (threads * fma_units * lanes * 2), the lanes
    #: counted at most as wide as the units run at full rate (``CpuFacts.full_rate_lanes``: a
    #: Zen 4 runs a 16-lane FMA as two 8-lane halves)
    implied_ghz: float
    #: CPU time / (wall time x threads) of the fastest wall-clock burst: below ~0.9, other
    #: processes held some of the cores while it was measured
    cpu_share: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def fma_peak_gflops(target="x86", threads: int = 1) -> float:
    """This machine's measured peak float32 FMA GFLOP/s for ``target``'s ISA at ``threads``.

    ``target``: a target name from :mod:`mmopt.targets` (or a ``Target``) that runs on this
    machine. Cached per ``(target, threads)`` in this process (the first call takes a few seconds:
    it spawns a process, compiles the kernel and measures). See :func:`measure_peak` for the
    details of a measurement.
    """
    return measure_peak(target, threads).gflops


def measure_peak(target="x86", threads: int = 1) -> PeakMeasurement:
    """:func:`fma_peak_gflops` with the measurement's details (:class:`PeakMeasurement`)."""
    from mmopt import targets

    tgt = targets.get(target)
    if tgt.device != "cpu":
        raise MmoptError(f"target {tgt.name}: the FMA peak is measured for CPU targets only")
    if not tgt.runs_here():
        raise MmoptError(f"target {tgt.name} cannot run here ({tgt.why_not_here()}): its FMA "
                         "peak cannot be measured on this machine")
    if threads < 1:
        raise MmoptError(f"threads={threads}: at least 1")
    return _measure_cached(tgt.name, int(threads))


_CACHE: dict[tuple[str, int], PeakMeasurement] = {}


def _measure_cached(target_name: str, threads: int) -> PeakMeasurement:
    from mmopt.runtime.bench import call_in_child

    key = (target_name, threads)
    if key not in _CACHE:
        _CACHE[key] = call_in_child(measure_in_this_process, target_name, threads,
                                    threads=threads, what=f"FMA peak of {target_name}")
    return _CACHE[key]


def cached(target_name: str, threads: int) -> PeakMeasurement | None:
    """The measurement this process already has for ``(target_name, threads)``, if any."""
    return _CACHE.get((target_name, int(threads)))


def remember(measurement: PeakMeasurement) -> None:
    """Cache a measurement made elsewhere (:func:`measure_in_this_process` in a worker process
    that had the right thread pool anyway, as ``mmopt profile``'s does)."""
    _CACHE[(measurement.target, measurement.threads)] = measurement


def _kernel_parameters(target_name: str) -> tuple[int, int, int]:
    """``(lanes, chains, fma_units)`` of the peak kernel for a target (from its CPU facts)."""
    from mmopt import targets
    from mmopt.targets.cpu import cpu_facts

    facts = cpu_facts(targets.get(target_name).tvm_target())
    chains = max(facts.min_accumulators, facts.vector_registers - _FREE_REGISTERS)
    return facts.lanes, chains, facts.fma_units


def _kernel(threads: int, chains: int, lanes: int):
    """The TIR PrimFunc: ``threads`` parallel tasks, each ``chains`` x ``lanes`` accumulators
    updated ``n`` times by ``acc = acc * a + b``."""
    from tvm.script import tirx as T

    @T.prim_func
    def fma_peak(x: T.Buffer((threads, chains, lanes), "float32"),
                 y: T.Buffer((threads, chains, lanes), "float32"),
                 a: T.Buffer((lanes,), "float32"), b: T.Buffer((lanes,), "float32"), n: T.int32):
        T.func_attr({"global_symbol": "fma_peak", "tirx.noalias": True})
        for p in T.parallel(threads):
            acc = T.alloc_buffer((chains, lanes), "float32", scope="local")
            for c in T.unroll(chains):
                for v in T.vectorized(lanes):
                    acc[c, v] = x[p, c, v]
            for _i in range(n):
                for c in T.unroll(chains):
                    for v in T.vectorized(lanes):
                        acc[c, v] = acc[c, v] * a[v] + b[v]
            for c in T.unroll(chains):
                for v in T.vectorized(lanes):
                    y[p, c, v] = acc[c, v]

    return fma_peak


_VECTOR_REGISTER = {128: "xmm", 256: "ymm", 512: "zmm"}


def check_assembly(asm: str, vector_bits: int) -> tuple[bool, str]:
    """``(ok, instruction)``: whether ``asm`` multiplies-adds packed floats on the registers of
    ``vector_bits``-bit vectors with FMA instructions, and the first such instruction (or the
    first packed multiply, for an ISA without FMA)."""
    reg = _VECTOR_REGISTER.get(vector_bits)
    fma = re.search(r"\b(v?fmadd\w*ps)\s+%?(\w+)", asm)
    if fma and reg and fma.group(2).startswith(reg):
        return True, f"{fma.group(1)} %{reg}"
    aarch64 = re.search(r"\b(fmla)\s+(v\d+\.4s)", asm)
    if aarch64:
        return vector_bits == 128, f"{aarch64.group(1)} {aarch64.group(2)}"
    mul = re.search(r"\b(v?mulps)\s+%?(\w+)", asm)
    return False, (f"{fma.group(1)} %{fma.group(2)[:3]}" if fma
                   else f"{mul.group(1)} (no FMA)" if mul else "?")


def measure_in_this_process(target_name: str, threads: int) -> PeakMeasurement:
    """Build the kernel for the target and time it in this process, whose TVM thread pool must
    have ``threads`` workers (a process started with ``TVM_NUM_THREADS=threads``: the pool's size
    is fixed when it starts). :func:`measure_peak` runs this in a fresh child process."""
    import numpy as np
    import tvm

    from mmopt import targets
    from mmopt.targets.cpu import cpu_facts

    tgt = targets.get(target_name)
    facts = cpu_facts(tgt.tvm_target())
    lanes, chains, units = _kernel_parameters(target_name)
    executable = tvm.compile(tvm.IRModule({"fma_peak": _kernel(threads, chains, lanes)}),
                             target=tgt.tvm_target())
    asm_ok, instruction = check_assembly(executable.mod.inspect_source("asm"), facts.vector_bits)
    run = executable.mod["fma_peak"]
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor(rng.random((threads, chains, lanes), dtype=np.float32))
    y = tvm.runtime.empty((threads, chains, lanes), "float32")
    # a fixed point near 1 keeps the accumulators finite and normal (no denormal slow path)
    a = tvm.runtime.tensor(np.full(lanes, 0.5, np.float32))
    b = tvm.runtime.tensor(np.full(lanes, 0.5, np.float32))
    flops_per_iteration = 2 * threads * chains * lanes

    def timed(n: int) -> tuple[float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        run(x, y, a, b, n)
        return time.perf_counter() - start, time.process_time() - cpu

    timed(1000)  # warm up: thread pool start, page faults
    n = 20_000
    while (elapsed := timed(n)[0]) < _BURST_S / 4 and n < 1 << 28:
        n *= 4
    n = max(1000, int(n * _BURST_S / max(elapsed, 1e-6)))
    flops = flops_per_iteration * n / 1e9
    bursts = sorted((flops / wall, flops / cpu * threads if cpu > 0 else 0.0,
                     cpu / (wall * threads)) for wall, cpu in (timed(n) for _ in range(_BURSTS)))
    rates = [wall_rate for wall_rate, _cpu_rate, _share in bursts]
    wall_best, _, share = bursts[-1]
    # the median rather than the maximum: one burst's CPU accounting can be off
    cpu_rates = sorted(cpu_rate for _, cpu_rate, _ in bursts)
    best = max(cpu_rates[len(cpu_rates) // 2], wall_best)
    if not np.all(np.isfinite(y.numpy())):
        raise MmoptError(f"FMA peak kernel for {target_name} produced non-finite values")
    implied = best / (threads * units * min(lanes, facts.full_rate_lanes) * 2)
    if not asm_ok:
        logger.warning("FMA peak kernel for %s: the assembly has no packed FMA on %d-bit "
                       "registers (%s); the figure is that of the instructions used",
                       target_name, facts.vector_bits, instruction)
    if share < 0.9:
        logger.info("FMA peak of %s at %d threads: the threads held %.0f%% of their cores at best "
                    "(other processes are running): %.1f GFLOP/s wall-clock, %.1f per CPU second",
                    target_name, threads, 100 * share, wall_best, best)
    return PeakMeasurement(target_name, threads, best, wall_best, rates[len(rates) // 2],
                           facts.isa, facts.vector_bits, lanes, units, chains, instruction, asm_ok,
                           implied, min(1.0, share))
