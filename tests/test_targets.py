"""Targets: the registry is data; lookups, errors, toolchain checks and host detection."""

from __future__ import annotations

import pytest

from mmopt import targets
from mmopt.errors import TargetError


def test_registry_has_the_documented_presets():
    names = targets.names()
    for name in ("x86", "x86-avx2", "x86-avx512", "arm", "arm-a53", "arm-a72", "arm-a76", "cuda",
                 "cuda-sm75", "cuda-sm80", "cuda-sm86", "cuda-sm89", "cuda-sm90"):
        assert name in names


@pytest.mark.parametrize("name", targets.names())
def test_every_target_is_a_valid_tvm_target(name):
    t = targets.get(name)
    tvm_target = t.tvm_target()
    assert tvm_target.kind.name == t.tvm["kind"]
    assert t.to_dict()["name"] == name
    if t.device == "cuda":
        assert tvm_target.host is not None
        assert t.tvm["arch"].startswith("sm_")


def _module(shape):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("name", ["x86-avx2", "x86-avx512", "x86-vnni", "arm-a76"])
def test_only_dynamic_modules_let_llvm_vectorize_at_512_bits(name):
    """``for_module``: a module with a symbolic input dim on an AVX-512 target lets LLVM's own
    vectorizers use 512-bit vectors (recorded in the target, hence in the tuning-database
    identity); a static module, or any other target, compiles for the registry's target as is."""
    from tvm import tirx

    target = targets.get(name)
    static = targets.for_module(target, _module((1, 64)))
    dynamic = targets.for_module(target, _module((tirx.Var("seq", "int64"), 64)))
    assert static == target
    if name in ("x86-avx512", "x86-vnni"):
        assert dynamic.tvm["mattr"] == ["-prefer-256-bit"]
        assert {k: v for k, v in dynamic.tvm.items() if k != "mattr"} == target.tvm
        assert dynamic.name == target.name
    else:
        assert dynamic == target


def test_arm_targets_cross_compile_from_x86():
    arm = targets.get("arm-a76")
    assert arm.arch == "aarch64"
    assert arm.tvm["mtriple"] == "aarch64-linux-gnu"
    assert "+dotprod" in arm.tvm["mattr"]
    assert arm.preferred_layout == "NHWC"
    import platform

    if platform.machine() == "x86_64":
        assert arm.cross_compiler == "aarch64-linux-gnu-g++"
        assert arm.cross_package == "g++-aarch64-linux-gnu"
        assert not arm.runs_here()
        assert "aarch64" in arm.why_not_here()


def test_x86_host_target_runs_here():
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("x86 host required")
    host = targets.get("x86")
    assert host.runs_here()
    assert host.tvm["mcpu"] not in ("", None)


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError) as info:
        targets.get("riscv")
    message = info.value.message
    assert "unknown target 'riscv'" in message
    assert "x86" in message and "arm" in message and "cuda" in message


def test_missing_cross_compiler_names_the_debian_package(monkeypatch):
    import dataclasses

    fake = dataclasses.replace(targets.get("arm"), cross_compiler="no-such-g++",
                               cross_package="g++-no-such")
    with pytest.raises(TargetError, match=r"apt-get install g\+\+-no-such"):
        targets.require_toolchain(fake)


@pytest.mark.parametrize(("mcpu", "bits", "full_rate_lanes"),
                         [("znver4", 512, 8), ("znver5", 512, 16), ("skylake-avx512", 512, 16),
                          ("znver3", 256, 8), ("haswell", 256, 8)])
def test_fma_width_of_cpus_that_split_wide_vectors(mcpu, bits, full_rate_lanes):
    """Zen 4 executes a 512-bit FMA as two 256-bit halves: 8 lanes already run at full rate there,
    not on the cores with 512-bit units."""
    from mmopt.targets.cpu import _facts

    facts = _facts("x86_64-linux-gnu", mcpu, ())
    assert facts.vector_bits == bits and facts.lanes == bits // 32
    assert facts.full_rate_lanes == full_rate_lanes
    assert facts.to_dict()["fma_bits"] == full_rate_lanes * 32
