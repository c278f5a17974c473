"""8-bit table reads as byte permutes: the TIR rewrite, the table packing, and whole models."""

from __future__ import annotations

import numpy as np
import pytest

#: an x86 CPU with AVX-512 VBMI (Ice Lake server), for code that is only compiled here
_VBMI = {"kind": "llvm", "mcpu": "icelake-server", "mtriple": "x86_64-linux-gnu"}

_TABLE_KERNEL = '''
# from tvm.script import tirx as T
@T.prim_func
def main(q: T.Buffer((LANES * 8,), "uint8"), table: T.Buffer((256,), "DTYPE"),
         out: T.Buffer((LANES * 8,), "int16")):
    for i in range(8):
        for j in T.vectorized(LANES):
            out[i * LANES + j] = T.Cast("int16", T.Cast("int32", table[T.Cast(
                "int32", T.Cast("uint8", T.nearbyint(T.Cast("float32", q[i * LANES + j])
                                                    * T.float32(0.5)) * T.float32(2.0)))]) - 7)
'''


def _kernel(lanes: int, dtype: str):
    from tvm.script import from_source

    return from_source(_TABLE_KERNEL.replace("LANES", str(lanes)).replace("DTYPE", dtype))


def _host_has_vbmi() -> bool:
    from mmopt.codegen.byte_lookup import byte_tables_pay
    from mmopt.targets import get

    return byte_tables_pay(get("x86").tvm_target())


@pytest.mark.parametrize("lanes", [8, 16, 32, 64])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_table_read_becomes_byte_permutes_and_reads_the_same_entries(lanes, dtype):
    """The vectorized read of a 256-byte table (at an index computed with round-half-even, which
    TVM alone would leave scalar) compiles to vpermi2b/vpermt2b, not a gather or byte inserts, and
    returns table[index] for every lane (run where the CPU has VBMI)."""
    import tvm

    from mmopt.codegen.byte_lookup import register_pipeline

    func = _kernel(lanes, dtype)
    target = tvm.target.Target(_VBMI)
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target,
                         pipeline=register_pipeline())
    asm = lib.inspect_source("asm")
    assert "vpermt2b" in asm or "vpermi2b" in asm
    assert "gather" not in asm and "vpinsrb" not in asm
    default = tvm.tirx.build(tvm.IRModule({"main": func}), target=target)
    assert "vpermt2b" not in default.inspect_source("asm")  # the pass did it, not LLVM
    if not _host_has_vbmi():
        pytest.skip("this CPU has no AVX-512 VBMI: compiled only")
    rng = np.random.default_rng(lanes)
    q = rng.integers(0, 256, lanes * 8).astype(np.uint8)
    q[:4] = [0, 127, 128, 255]  # both halves of the table and their edges
    table = rng.integers(-128 if dtype == "int8" else 0, 128 if dtype == "int8" else 256,
                         256).astype(dtype)
    index = (np.round(q.astype(np.float32) * np.float32(0.5)) * 2).astype(np.int64) & 255
    want = table[index].astype(np.int32) - 7
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(lanes * 8, np.int16), dev)
    lib["main"](tvm.runtime.tensor(q, dev), tvm.runtime.tensor(table, dev), out)
    np.testing.assert_array_equal(out.numpy(), want.astype(np.int16))


def test_only_byte_tables_are_rewritten():
    """A 256-entry int32 table keeps its gather (the permute reads bytes)."""
    import tvm

    from mmopt.codegen.byte_lookup import register_pipeline

    lib = tvm.tirx.build(tvm.IRModule({"main": _kernel(16, "int32")}),
                         target=tvm.target.Target(_VBMI), pipeline=register_pipeline())
    assert "vpermt2b" not in lib.inspect_source("asm")


def test_byte_table_packing():
    from mmopt.codegen.quantized_lut import _byte_table  # noqa: PLC2701

    unsigned = np.arange(256, dtype=np.int32)
    entries, bias = _byte_table(unsigned)
    assert entries.dtype == np.uint8 and bias == 0
    signed = np.arange(-128, 128, dtype=np.int32)
    entries, bias = _byte_table(signed)
    assert entries.dtype == np.int8 and bias == 0
    centered = np.arange(256, dtype=np.int32) - 200  # a uint8 result minus a zero point
    entries, bias = _byte_table(centered)
    assert entries.dtype == np.uint8 and bias == -200
    np.testing.assert_array_equal(entries.astype(np.int32) + bias, centered)
    assert _byte_table(np.arange(256, dtype=np.int32) * 2) is None  # spans 511 values


def test_targets_with_byte_permutes():
    import tvm

    from mmopt.codegen.byte_lookup import byte_tables_pay
    from mmopt.targets import get

    assert byte_tables_pay(tvm.target.Target(_VBMI))
    for name in ("x86-avx2", "x86-avx512", "x86-vnni", "arm"):  # Skylake/Cascade Lake: no VBMI
        assert not byte_tables_pay(get(name).tvm_target()), name


def test_quantized_hard_swish_model_reads_tables_by_permutes(tmp_path, monkeypatch):
    """A QDQ Conv -> HardSwish -> Conv model on this machine's target: with byte permutes
    (where the CPU has VBMI) the artifact passes compile's verification against the QDQ
    reference, and its outputs are bit-identical to the gathering build's."""
    if not _host_has_vbmi():
        pytest.skip("this CPU has no AVX-512 VBMI")
    import mmopt
    from mmopt.codegen import byte_lookup
    from mmopt.codegen.quantized_lut_test import _model, _quantized

    qdq = _quantized(_model("HardSwish"), "uint8")
    permuted = mmopt.compile(qdq, "x86", tmp_path / "permuted")
    assert permuted.verification.passed
    monkeypatch.setattr(byte_lookup, "byte_tables_pay", lambda _target: False)
    gathered = mmopt.compile(qdq, "x86", tmp_path / "gathered", verify=False)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32) * 1.5
        a = mmopt.load(permuted.library)(x=x)["y"]
        b = mmopt.load(gathered.library)(x=x)["y"]
        np.testing.assert_array_equal(a, b)


def test_compile_and_tuning_builds_take_the_same_pipeline(tmp_path):
    """Tuning's candidate builds lower with the pipeline compile uses, so a tuned table-reading
    kernel is measured with the permutes it ships with (the default pipeline would read the byte
    table with scalar loads)."""
    import shutil
    import subprocess

    import tvm

    from mmopt.codegen.byte_lookup import PIPELINE, tir_pipeline_for
    from mmopt.targets import get
    from mmopt.tuning.workers import _build_and_export  # noqa: PLC2701

    assert tir_pipeline_for(tvm.target.Target(_VBMI)) == PIPELINE
    for name in ("x86-avx2", "arm"):
        assert tir_pipeline_for(get(name).tvm_target()) == "default"
    if shutil.which("objdump") is None:
        pytest.skip("no objdump to read the candidate's code")
    path = _build_and_export(None)(tvm.IRModule({"main": _kernel(16, "uint8")}),
                                   tvm.target.Target(_VBMI))
    code = subprocess.run(["objdump", "-d", path], capture_output=True, text=True,
                          check=True).stdout
    assert "vpermt2b" in code or "vpermi2b" in code
