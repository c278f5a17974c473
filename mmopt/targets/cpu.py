"""CPU facts that code generation is derived from: vector width, vector registers, FMA units, caches.

Default schedules (:mod:`mmopt.codegen.cpu_schedules`), weight packing and the roofline figures of
the benchmarks read these numbers instead of assuming one CPU. They are derived from the TVM target
alone (its ``mtriple``, ``mcpu`` and ``mattr``, through LLVM's own feature tables), never from the
machine that compiles, so the same target gives the same code everywhere and a tuning database
keyed by the target stays valid.

Why each number matters:

* ``vector_bits``: the float32 lanes of one vector (``bits / 32``). LLVM splits a wider vector type
  into several registers, so a schedule that assumes 512 bits on an AVX2 CPU holds twice the
  registers it thinks it does (TVM 0.27's ``llvm_get_vector_width`` answers 512 for every x86
  ``mcpu`` on an AVX-512 host, and so cannot be used).
* ``vector_registers``: how many accumulators a register tile can keep. A contraction micro-kernel
  of ``rows x nv`` vectors needs ``rows * nv`` accumulators, ``nv`` weight vectors and one
  broadcast input: AVX2 and SSE have 16 registers, AVX-512 and AArch64 32.
* ``fma_units`` x FMA latency: the independent accumulators needed to keep the FMA pipes busy
  (2 units x 4-5 cycles on current x86 cores: at least 8-10 accumulators).
* ``fma_bits``: the width the FMA units compute at full rate. A wider vector is executed in
  pieces: Zen 4 runs AVX-512 on 256-bit units (a 512-bit FMA takes two of them), so its 8-lane
  (ymm) FMAs do as many FLOPs per cycle as 16-lane ones -- measured on an EPYC Zen 4, 2 threads:
  234 GFLOP/s with ymm, 233 with zmm. A narrower vector that divides a channel count then costs
  nothing, and padding the channels to whole 512-bit vectors only adds work
  (:func:`mmopt.codegen.register_tiles.padded_channels`).
* ``l1d_kib`` / ``l2_kib``: cache blocking (how many input channels and output tiles stay in cache).
* ``llc_kib``: the last-level cache one core's work can use: a model whose weights exceed it
  reads them from memory on every inference, and its kernels prefetch them
  (:mod:`mmopt.codegen.prefetch`).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CpuFacts:
    #: instruction set family the float code targets: "avx512", "avx2", "sse2", "neon"
    isa: str
    vector_bits: int
    vector_registers: int
    #: float32 vector FMA instructions the core can start per cycle
    fma_units: int
    l1d_kib: int
    l2_kib: int
    #: last-level cache (L3 of one core complex or die; L2 where there is no L3)
    llc_kib: int = 8192
    #: per-cycle latency of a dependent FMA (how long one accumulator is busy)
    fma_latency: int = 4
    #: vector width (bits) the FMA units run at full rate; 0: ``vector_bits`` (see the module
    #: docstring)
    fma_bits: int = 0

    @property
    def lanes(self) -> int:
        """float32 lanes of one vector register."""
        return self.vector_bits // 32

    @property
    def full_rate_lanes(self) -> int:
        """float32 lanes of the narrowest vector that still runs the FMA units at full rate."""
        return (self.fma_bits or self.vector_bits) // 32

    @property
    def min_accumulators(self) -> int:
        """Independent accumulators that hide the FMA latency on every FMA unit."""
        return self.fma_units * self.fma_latency

    def to_dict(self) -> dict:
        return asdict(self)


# Cache sizes (L1D and L2 per core, last level per core complex or die) of the CPUs the presets
# name (public datasheets; the last level of the desktop and mobile parts is their smallest
# common one). An ``mcpu`` missing here gets its ISA family's typical sizes: cache sizes only steer
# blocking and prefetching, never correctness.
_CACHES_KIB = {
    "haswell": (32, 256, 8192), "broadwell": (32, 256, 8192), "skylake": (32, 256, 8192),
    "skylake-avx512": (32, 1024, 22528), "cascadelake": (32, 1024, 22528),
    "cooperlake": (32, 1024, 22528), "icelake-server": (48, 1280, 36864),
    "sapphirerapids": (48, 2048, 61440), "alderlake": (48, 1280, 18432),
    "znver2": (32, 512, 16384), "znver3": (32, 512, 32768), "znver4": (32, 1024, 32768),
    "znver5": (48, 1024, 32768),
    "cortex-a53": (32, 512, 512), "cortex-a55": (32, 256, 1024), "cortex-a72": (32, 1024, 1024),
    "cortex-a76": (64, 512, 2048), "cortex-a78": (64, 512, 4096), "neoverse-n1": (64, 1024, 32768),
    "neoverse-v1": (64, 1024, 32768), "neoverse-n2": (64, 1024, 32768),
}
_FAMILY_CACHES_KIB = {"avx512": (32, 1024, 16384), "avx2": (32, 256, 8192),
                      "sse2": (32, 256, 4096), "neon": (32, 512, 1024)}
# In-order little cores issue one 128-bit FMA per cycle; the others listed two.
_ONE_FMA_UNIT = {"cortex-a53", "cortex-a55", "x86-64"}
# AVX-512 executed on 256-bit FMA units (AMD's Zen 4 software optimization guide: a 512-bit
# operation is issued as two 256-bit halves); the other AVX-512 cores listed run 512 bits at once.
_FMA_BITS = {"znver4": 256}


def _has(target, feature: str) -> bool:
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features([feature], target))
    except Exception:  # noqa: BLE001 - an LLVM without that backend: feature unknown
        return False


def _key(target) -> tuple:
    attrs = target.attrs
    return (str(attrs.get("mtriple", "")), str(attrs.get("mcpu", "")),
            tuple(str(a) for a in attrs.get("mattr", []) or []))


@functools.lru_cache(maxsize=64)
def _facts(triple: str, mcpu: str, mattr: tuple) -> CpuFacts:
    import tvm

    spec = {"kind": "llvm", "mtriple": triple, "mattr": list(mattr)}
    if mcpu:
        spec["mcpu"] = mcpu
    target = tvm.target.Target(spec)
    if triple.startswith("aarch64") or triple.startswith("arm64"):
        isa, bits, regs = "neon", 128, 32
    elif _has(target, "avx512f"):
        isa, bits, regs = "avx512", 512, 32
    elif _has(target, "avx2"):
        isa, bits, regs = "avx2", 256, 16
    else:
        isa, bits, regs = "sse2", 128, 16
    l1, l2, llc = _CACHES_KIB.get(mcpu, _FAMILY_CACHES_KIB[isa])
    units = 1 if (mcpu in _ONE_FMA_UNIT or isa == "sse2" or (isa == "neon" and not mcpu)) else 2
    fma_bits = min(bits, _FMA_BITS.get(mcpu, bits))
    return CpuFacts(isa, bits, regs, units, l1, l2, llc, fma_bits=fma_bits)


def cpu_facts(target) -> CpuFacts:
    """The :class:`CpuFacts` of a TVM CPU target (``tvm.target.Target``)."""
    return _facts(*_key(target))
