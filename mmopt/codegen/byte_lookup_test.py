"""8-bit table reads as byte permutes (VBMI) or shuffles (AVX2): the TIR rewrites, the table
packing, and whole models."""

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


#: every index 0..255 (the identity after rounding), 12 rows of LANES
_EVERY_INDEX_KERNEL = (_TABLE_KERNEL.replace("LANES * 8", "LANES * 12")
                       .replace("range(8)", "range(12)")
                       .replace("T.float32(0.5)) * T.float32(2.0)", "T.float32(1.0))"))


def _every_index_kernel(lanes: int, dtype: str):
    from tvm.script import from_source

    return from_source(_EVERY_INDEX_KERNEL.replace("LANES", str(lanes)).replace("DTYPE", dtype))


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

    from mmopt.codegen.tir_pipeline import BYTE_TABLES, register

    func = _kernel(lanes, dtype)
    target = tvm.target.Target(_VBMI)
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target,
                         pipeline=register(BYTE_TABLES))
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
    table = _random_table(rng, dtype)
    index = (np.round(q.astype(np.float32) * np.float32(0.5)) * 2).astype(np.int64) & 255
    np.testing.assert_array_equal(_run(lib, q, table), table[index].astype(np.int32) - 7)


def _random_table(rng, dtype: str) -> np.ndarray:
    low, high = (-128, 128) if dtype == "int8" else (0, 256)
    return rng.integers(low, high, 256).astype(dtype)


def _run(lib, q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The table kernel's int16 output on ``q``."""
    import tvm

    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(q.size, np.int16), dev)
    lib["main"](tvm.runtime.tensor(q, dev), tvm.runtime.tensor(table, dev), out)
    return out.numpy()


def test_only_byte_tables_are_rewritten():
    """A 256-entry int32 table keeps its gather (the permute reads bytes)."""
    import tvm

    from mmopt.codegen.tir_pipeline import BYTE_TABLES, register

    lib = tvm.tirx.build(tvm.IRModule({"main": _kernel(16, "int32")}),
                         target=tvm.target.Target(_VBMI), pipeline=register(BYTE_TABLES))
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


def test_table_readers_by_target():
    """VBMI CPUs permute, other AVX2 ones (Haswell to Cascade Lake, Zen 1-3) shuffle, others
    keep 32-bit tables and gathers."""
    import tvm

    from mmopt.codegen.byte_lookup import byte_tables_pay, table_reader
    from mmopt.targets import get

    assert table_reader(tvm.target.Target(_VBMI)) == "permute"
    for name in ("x86-avx2", "x86-avx512", "x86-vnni"):  # Skylake/Cascade Lake: no VBMI
        assert table_reader(get(name).tvm_target()) == "shuffle", name
    assert table_reader(get("arm").tvm_target()) is None
    assert not byte_tables_pay(get("arm").tvm_target())


@pytest.mark.parametrize("lanes", [32, 64])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_wide_table_read_becomes_byte_shuffles_on_avx2(lanes, dtype):
    """On an AVX2 CPU without VBMI a byte-table read of 32 or 64 lanes compiles to vpshufb (16
    per 32 lanes), with no per-lane byte extraction, and returns table[index] for every lane,
    both halves of the table and the edges of each 16-entry chunk included (run: AVX2 is the
    floor of every x86 machine this project supports)."""
    import tvm

    from mmopt.codegen.tir_pipeline import BYTE_TABLES, register
    from mmopt.targets import get

    func = _every_index_kernel(lanes, dtype)
    target = get("x86-avx2").tvm_target()
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target,
                         pipeline=register(BYTE_TABLES))
    asm = lib.inspect_source("asm")
    assert asm.count("vpshufb") >= 16 and "vpextrb" not in asm and "gather" not in asm
    rng = np.random.default_rng(lanes)
    q = np.concatenate([np.arange(256), rng.integers(0, 256, lanes * 12 - 256)]).astype(np.uint8)
    table = _random_table(rng, dtype)
    np.testing.assert_array_equal(_run(lib, q, table), table[q].astype(np.int32) - 7)


def test_narrow_table_read_is_not_shuffled():
    """Below 32 lanes the shuffle sequence costs more than reading lane by lane: left alone."""
    import tvm

    from mmopt.codegen.tir_pipeline import BYTE_TABLES, register
    from mmopt.targets import get

    lib = tvm.tirx.build(tvm.IRModule({"main": _kernel(8, "uint8")}),
                         target=get("x86-avx2").tvm_target(), pipeline=register(BYTE_TABLES))
    assert "vpshufb" not in lib.inspect_source("asm")


def test_vector_rounding_only_where_it_pays():
    """TVM's vector rounding is switched on for a function whose table read it makes a wide
    vector (a 32-lane loop on a shuffling CPU; any on a permuting one), not for an 8-lane one
    on a shuffling CPU (LLVM's loop vectorizer did better there)."""
    import tvm

    from mmopt.codegen.byte_lookup import _vector_rounding_pays  # noqa: PLC2701
    from mmopt.targets import get

    avx2, vbmi = get("x86-avx2").tvm_target(), tvm.target.Target(_VBMI)
    kernel = _every_index_kernel  # its input (12 rows) is no 256-entry buffer
    assert _vector_rounding_pays(kernel(32, "uint8").with_attr("target", avx2))
    assert not _vector_rounding_pays(kernel(8, "uint8").with_attr("target", avx2))
    assert _vector_rounding_pays(kernel(8, "uint8").with_attr("target", vbmi))
    assert not _vector_rounding_pays(kernel(32, "int32").with_attr("target", avx2))


def _requantized_sum(acc_dtype: str):
    """A 3-tap sum over an int16 row into ``acc_dtype``, requantized to uint8 (a depthwise
    convolution's shape, without its padding)."""
    from tvm import te, tirx

    x = te.placeholder((64, 32), "int16", name="x")
    w = te.placeholder((3, 32), "int16", name="w")
    r = te.reduce_axis((0, 3), "r")
    acc = te.compute((62, 32), lambda i, c: te.sum(
        x[i + r, c].astype(acc_dtype) * w[r, c].astype(acc_dtype), axis=r), name="acc")
    out = te.compute((62, 32), lambda i, c: tirx.Cast("uint8", tirx.min(tirx.max(
        tirx.nearbyint(tirx.Cast("float32", acc[i, c]) * tirx.const(0.25, "float32")),
        tirx.const(0.0, "float32")), tirx.const(255.0, "float32"))), name="requantize")
    return te.create_prim_func([x, w, out])


def test_vector_rounding_for_every_integer_sum():
    """Any kernel summing into int32 (a depthwise convolution too, not only the dot-product
    kernels) gets TVM's vector rounding: LLVM left a depthwise write-back scalar. A float sum
    does not."""
    from mmopt.codegen.byte_lookup import _vector_rounding_pays  # noqa: PLC2701
    from mmopt.targets import get

    avx2 = get("x86-avx2").tvm_target()
    assert _vector_rounding_pays(_requantized_sum("int32").with_attr("target", avx2))
    assert not _vector_rounding_pays(_requantized_sum("float32").with_attr("target", avx2))


#: a QuantizeLinear of an NHWC tensor of 16 channels in two 8-lane vectors (AVX2), as the
#: element-wise schedule leaves it; INDEX is the read (``c, w``: a transposing one)
_QUANTIZE_KERNEL = '''
# from tvm.script import tirx as T
@T.prim_func(s_tir=True)
def main(x: T.Buffer((1, 4, 20, 16), "float32"), y: T.Buffer((1, 4, 20, 16), "uint8")):
    for h in T.parallel(4):
        for w, c0 in T.grid(20, 2):
            for c1 in T.vectorized(8):
                with T.sblock("quantize"):
                    vh, vw = T.axis.remap("SS", [h, w])
                    vc = T.axis.spatial(16, c0 * 8 + c1)
                    y[0, vh, vw, vc] = T.Cast("uint8", T.min(T.max(T.nearbyint(
                        x[0, INDEX] * T.float32(0.5)) + T.float32(3.0), T.float32(0.0)),
                        T.float32(255.0)))
'''


def _quantize_kernel(transposed: bool):
    from tvm.script import from_source

    index = "vh, vc, vw" if transposed else "vh, vw, vc"
    return from_source(_QUANTIZE_KERNEL.replace("INDEX", index).replace(
        "(1, 4, 20, 16), \"float32\"", "(1, 4, 16, 20), \"float32\"" if transposed
        else "(1, 4, 20, 16), \"float32\""))


def test_vector_rounding_for_unit_stride_requantization():
    """An element-wise requantization whose vectors walk the channels (8 of 16 per vector) is
    lowered with TVM's vector rounding: whole vectors in and out, where LLVM re-vectorized the
    scalar loop over the width and wrote byte by byte (``vpextrb``); the result rounds half to
    even as QuantizeLinear does. A transposing read keeps LLVM's choice."""
    import tvm

    from mmopt.codegen.byte_lookup import _vector_rounding_pays  # noqa: PLC2701
    from mmopt.codegen.tir_pipeline import BYTE_TABLES, register
    from mmopt.targets import get

    avx2 = get("x86-avx2").tvm_target()
    plain, transposed = _quantize_kernel(False), _quantize_kernel(True)
    assert _vector_rounding_pays(plain.with_attr("target", avx2))
    assert not _vector_rounding_pays(transposed.with_attr("target", avx2))

    lib = tvm.tirx.build(tvm.IRModule({"main": plain}), target=avx2,
                         pipeline=register(BYTE_TABLES))
    asm = lib.inspect_source("asm")
    assert "vpextrb" not in asm and "vroundps" in asm
    x = (np.arange(4 * 20 * 16, dtype=np.float32).reshape(1, 4, 20, 16) - 600) * 0.5
    x[0, 0, 0, :4] = [1.0, 3.0, -1.0, 5.0]  # ties: 0.5, 1.5, -0.5, 2.5 round to even
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(x.shape, np.uint8), dev)
    lib["main"](tvm.runtime.tensor(x, dev), out)
    np.testing.assert_array_equal(out.numpy(), np.clip(np.rint(x * 0.5) + 3, 0, 255))
    assert list(out.numpy()[0, 0, 0, :4]) == [3, 5, 3, 5]


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

    from mmopt.codegen.tir_pipeline import BYTE_TABLES, CPU, tir_pipeline_for
    from mmopt.targets import get
    from mmopt.tuning.workers import _build_and_export  # noqa: PLC2701

    assert tir_pipeline_for(tvm.target.Target(_VBMI)) == BYTE_TABLES
    assert tir_pipeline_for(get("x86-avx2").tvm_target()) == BYTE_TABLES
    assert tir_pipeline_for(get("arm").tvm_target()) == CPU
    if shutil.which("objdump") is None:
        pytest.skip("no objdump to read the candidate's code")
    path = _build_and_export(None)(tvm.IRModule({"main": _kernel(16, "uint8")}),
                                   tvm.target.Target(_VBMI))
    code = subprocess.run(["objdump", "-d", path], capture_output=True, text=True,
                          check=True).stdout
    assert "vpermt2b" in code or "vpermi2b" in code


def _depthwise_table_func():
    """A 3x3 depthwise-style int16 x int8 contraction over 24 channels, requantized to a byte
    index, then a byte-table read: the shape of an int8 hard-swish after a depthwise layer."""
    from tvm import te, tirx

    x = te.placeholder((1, 10, 10, 24), "int16", name="x")
    w = te.placeholder((3, 3, 24), "int8", name="w")
    table = te.placeholder((256,), "uint8", name="table")
    ry, rx = te.reduce_axis((0, 3), "ry"), te.reduce_axis((0, 3), "rx")
    acc = te.compute((1, 8, 8, 24), lambda n, h, v, c: te.sum(
        x[n, h + ry, v + rx, c].astype("int32") * w[ry, rx, c].astype("int32"), axis=[ry, rx]),
        name="acc")
    index = te.compute(acc.shape, lambda *i: tirx.Cast("uint8", tirx.max(tirx.min(
        tirx.nearbyint(acc(*i).astype("float32") * 0.05) + 128.0, 255.0), 0.0)), name="index")
    out = te.compute(acc.shape, lambda *i: table[index(*i).astype("int32")], name="lookup")
    return te.create_prim_func([x, w, table, out])


@pytest.mark.parametrize("target_name", ["x86-avx2", "vbmi"])
def test_narrow_tile_reads_its_table_in_a_wide_loop_of_its_own(target_name):
    """A contraction tile of 24 channels with a table read in its epilogue: on a shuffling CPU the
    read is left out of the write-back and runs as a 32-lane loop over rows (lane by lane in
    the tile before: an int8 5x5 depthwise layer of the PP-OCR detector, 0.36 -> 0.32 ms); on a
    permuting one it stays in the write-back. Both give table[requantized] exactly."""
    import tvm

    from mmopt.codegen.tir_pipeline import BYTE_TABLES, register
    from mmopt.codegen.cpu_schedules import schedule_prim_func
    from mmopt.targets import get

    target = (tvm.target.Target(_VBMI) if target_name == "vbmi"
              else get(target_name).tvm_target())
    sch = schedule_prim_func(_depthwise_table_func(), target)
    script = sch.mod["main"].script()
    apart = 'T.sblock("lookup")' in script
    assert apart == (target_name == "x86-avx2"), script
    if apart:
        assert "T.vectorized(32)" in script or "T.vectorized(T.int64(32))" in script, script
        lib = tvm.tirx.build(sch.mod, target=target, pipeline=register(BYTE_TABLES))
        assert "vpshufb" in lib.inspect_source("asm")
    elif not _host_has_vbmi():
        return
    else:
        lib = tvm.tirx.build(sch.mod, target=target, pipeline=register(BYTE_TABLES))
    rng = np.random.default_rng(9)
    xs = rng.integers(-255, 256, (1, 10, 10, 24)).astype(np.int16)
    ws = rng.integers(-127, 128, (3, 3, 24)).astype(np.int8)
    table = rng.integers(0, 256, 256).astype(np.uint8)
    acc = np.zeros((1, 8, 8, 24), np.int64)
    for i in range(3):
        for j in range(3):
            acc += xs[:, i:i + 8, j:j + 8, :].astype(np.int64) * ws[i, j]
    index = np.clip(np.round(acc.astype(np.float32) * np.float32(0.05)) + 128, 0, 255)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((1, 8, 8, 24), np.uint8), dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in (xs, ws, table)), out)
    np.testing.assert_array_equal(out.numpy(), table[index.astype(np.int64)])
