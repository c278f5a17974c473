"""The FMA peak microkernel: the instructions it runs and plausible numbers, per ISA."""

from __future__ import annotations

import time

import pytest

from mmopt import targets
from mmopt.runtime.peak import check_assembly, fma_peak_gflops, measure_peak


def _runs_here(name: str) -> bool:
    return targets.get(name).runs_here()


def test_assembly_check_wants_fma_on_the_isa_registers():
    avx2 = "\tvfmadd213ps\t%ymm13, %ymm12, %ymm0\n"
    avx512 = "\tvfmadd213ps\t%zmm25, %zmm24, %zmm0\n"
    assert check_assembly(avx2, 256) == (True, "vfmadd213ps %ymm")
    assert check_assembly(avx512, 512) == (True, "vfmadd213ps %zmm")
    # 256-bit FMAs where 512-bit vectors were asked for: not the ISA's full width
    assert check_assembly(avx2, 512)[0] is False
    # SSE2 has no FMA: a multiply and an add
    assert check_assembly("\tmulps\t%xmm1, %xmm0\n\taddps\t%xmm2, %xmm0\n", 128) == (
        False, "mulps (no FMA)")


@pytest.fixture(scope="module")
def avx2_peak():
    if not _runs_here("x86-avx2"):
        pytest.skip("this machine cannot run x86-avx2 code (no AVX2/FMA)")
    return measure_peak("x86-avx2", 1)


def test_avx2_peak_is_plausible_and_cached(avx2_peak):
    m = avx2_peak
    assert m.asm_ok and m.instruction.startswith("vfmadd") and "ymm" in m.instruction
    assert (m.lanes, m.threads) == (8, 1)
    assert m.chains >= m.fma_units * 4  # enough independent accumulators to hide FMA latency
    assert m.gflops > 0 and m.wall_gflops > 0
    # 2 FMA units x 8 lanes x 2 flops x clock: any clock between 0.3 and 7 GHz is believable
    assert 0.3 < m.implied_ghz < 7, m
    start = time.perf_counter()
    assert fma_peak_gflops("x86-avx2", 1) == m.gflops  # cached in this process
    assert time.perf_counter() - start < 0.5


def test_avx512_peak_is_at_least_the_avx2_peak(avx2_peak):
    if not _runs_here("x86-avx512"):
        pytest.skip("this CPU has no AVX-512: the 512-bit peak cannot be measured here")
    m = measure_peak("x86-avx512", 1)
    assert m.asm_ok and "zmm" in m.instruction and m.lanes == 16
    # Intel server cores have two 512-bit FMA units (2x the AVX2 peak); AMD Zen 4 runs a 512-bit
    # FMA as two 256-bit halves (the same peak). Measurement noise on a shared machine: 15%.
    assert m.gflops >= 0.85 * avx2_peak.gflops, (m, avx2_peak)


def test_more_threads_do_not_lower_the_peak(avx2_peak):
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: no second thread to measure")
    m = measure_peak("x86-avx2", 2)
    assert m.threads == 2
    # capacity per CPU second x threads: ~2x on two free cores; SMT siblings share FMA units
    assert m.gflops >= 0.9 * avx2_peak.gflops, (m, avx2_peak)


def test_a_target_that_cannot_run_here_is_refused():
    from mmopt.errors import MmoptError

    with pytest.raises(MmoptError, match="cannot run here"):
        fma_peak_gflops("arm", 1)
    with pytest.raises(MmoptError, match="CPU targets only"):
        fma_peak_gflops("cuda-sm80", 1)
