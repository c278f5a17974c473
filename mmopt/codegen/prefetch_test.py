"""Weight-panel prefetching: where the rule puts it, that it walks each next panel once during the
current one, and that it changes no result."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def target():
    from mmopt import targets

    return targets.get("x86-avx2").tvm_target()


def _gemm(points=2, rows=14, k=64, n=64, tile=16):
    """A Winograd-style batched GEMM ``[points, rows, k] x [points, n / tile, k, tile]`` with
    packed weights (the layout whose panels the schedule prefetches)."""
    from tvm import te

    a = te.placeholder((points, rows, k), name="A")
    w = te.placeholder((points, n // tile, k, tile), name="W")
    r = te.reduce_axis((0, k), name="r")
    out = te.compute((points, rows, n),
                     lambda e, q, c: te.sum(a[e, q, r] * w[e, c // tile, r, c % tile], axis=r),
                     name="gemm")
    return te.create_prim_func([a, w, out])


def _prefetch_loops(func):
    import tvm_ffi
    from tvm import tirx

    found = []

    def on_evaluate(node, visitor):
        value = node.value
        if hasattr(value, "op") and str(value.op.name) == "tirx.prefetch":
            found.append(value)
        visitor.default_visit(node)

    tvm_ffi.structural_visit(func.body, [(tirx.Evaluate, on_evaluate)])
    return found


def test_chunk_is_about_nine_prefetched_steps():
    from mmopt.codegen.prefetch import chunk_for

    assert chunk_for(7, 512) == 64      # ResNet-50's 7 row tiles of a stage-4 panel
    assert chunk_for(7, 256) == 64
    assert chunk_for(49, 512) == 128    # at most 128 steps
    assert chunk_for(2, 24) == 24       # near 18: 12 and 24 tie, the longer chunk wins
    assert chunk_for(3, 6) is None      # too short a reduction to chunk


def test_forced_knob_schedules_and_annotates_the_chunk_loop(target):
    from mmopt.codegen import cpu_contraction as cc
    from mmopt.codegen.cpu_schedules import schedule_prim_func
    from mmopt.codegen.prefetch import ANNOTATION

    func = _gemm()
    sch = schedule_prim_func(func, target, {"gemm": cc.ContractionKnobs(prefetch=True)},
                             strict=True)
    assert ANNOTATION in sch.mod["main"].script()
    plain = schedule_prim_func(func, target)  # small weights, weights not streamed: no prefetch
    assert ANNOTATION not in plain.mod["main"].script()
    off = schedule_prim_func(func, target, {"gemm": cc.ContractionKnobs(prefetch=False)},
                             strict=True)
    assert ANNOTATION not in off.mod["main"].script()


def test_rule_wants_streamed_weights_and_a_large_panel(target):
    from mmopt.codegen import prefetch
    from mmopt.codegen.cpu_schedules import schedule_prim_func

    big = _gemm(points=4, rows=14, k=256, n=256, tile=16)  # 1 MiB of weights
    small = _gemm()  # 32 KiB
    with prefetch.streaming(True):
        assert prefetch.ANNOTATION in schedule_prim_func(big, target).mod["main"].script()
        assert prefetch.ANNOTATION not in schedule_prim_func(small, target).mod["main"].script()
    assert prefetch.ANNOTATION not in schedule_prim_func(big, target).mod["main"].script()


def _evaluate(expr, values):
    from tvm.sym import Analyzer

    from mmopt.codegen.prefetch import _substitute  # noqa: PLC2701 - the pass's own substitution

    from tvm import tirx

    vmap = {v: tirx.IntImm(str(v.ty.dtype), x) for v, x in values.items()}
    out = Analyzer().simplify(_substitute(expr, vmap))
    return int(out.value)


def _enumerate(stack):
    """Every assignment of the loop vars of ``stack`` (outermost first)."""
    extents = [int(lp.extent) for lp in stack]
    for flat in range(int(np.prod(extents))):
        values, rest = {}, flat
        for lp, e in reversed(list(zip(stack, extents))):
            values[lp.loop_var] = rest % e
            rest //= e
        yield values


def _line(buffer, indices, values) -> int:
    """The 64-byte line of ``buffer[indices]`` (row-major) under the loop values ``values``."""
    shape = [int(d) for d in buffer.ty.shape]
    flat = 0
    for i, extent in zip(indices, shape):
        flat = flat * extent + _evaluate(i, values)
    return flat * 4 // 64


@pytest.mark.parametrize("shape", [(3, 14, 64, 32), (2, 49, 96, 64)])
def test_each_next_panel_is_prefetched_whole_during_the_current_one(target, shape):
    """Interpret the expanded loop nest: the lines the next panel's iterations of the parallel loop
    read are all prefetched during the current panel's iterations."""
    import tvm_ffi
    from tvm import tirx
    from tvm.s_tir.stmt import SBlockRealize

    from mmopt.codegen import cpu_contraction as cc
    from mmopt.codegen.cpu_schedules import schedule_prim_func
    from mmopt.codegen.prefetch import ANNOTATION, expand_prefetches
    from mmopt.codegen.tir_util import region_buffer

    points, rows, k, n = shape
    func = _gemm(points, rows, k, n, tile=32)  # x86-avx2's tile: 4 vectors of 8
    sch = schedule_prim_func(func, target, {"gemm": cc.ContractionKnobs(prefetch=True)},
                             strict=True)
    lowered = expand_prefetches()(sch.mod)["main"]
    assert ANNOTATION not in lowered.script()
    prefetches, updates, stack = [], [], []

    def on_for(node, visitor):
        stack.append(node)
        visitor.default_visit(node)
        stack.pop()

    def on_evaluate(node, visitor):
        if hasattr(node.value, "op") and str(node.value.op.name) == "tirx.prefetch":
            prefetches.append((node.value.args[0].args[0], list(stack)))

    def on_realize(node, visitor):
        if node.block.name_hint == "gemm_update":
            updates.append((node, list(stack)))
        visitor.default_visit(node)

    tvm_ffi.structural_visit(lowered.body, [(tirx.For, on_for), (tirx.Evaluate, on_evaluate),
                                           (SBlockRealize, on_realize)])
    assert prefetches and len(updates) == 1
    realize, update_stack = updates[0]
    parallel = update_stack[0]
    assert parallel.kind == tirx.ForKind.PARALLEL
    block = realize.block
    bind = {iv.var: v for iv, v in zip(block.iter_vars, realize.iter_values)}
    w_region = next(r for r in block.reads if str(region_buffer(r).name) == "W")
    w = region_buffer(w_region)
    from mmopt.codegen.prefetch import _substitute  # noqa: PLC2701

    w_index = [_substitute(rng.min, bind) for rng in w_region.region]

    reads: dict[int, frozenset] = {}
    fetched: dict[int, set] = {}
    for f in range(int(parallel.extent)):
        fixed = {parallel.loop_var: f}
        lines = set()
        for values in _enumerate(update_stack[1:]):
            lines.add(_line(w, w_index, {**fixed, **values}))
        reads[f] = frozenset(lines)
        got = set()
        for load, pstack in prefetches:
            assert pstack[0].same_as(parallel)
            for values in _enumerate(pstack[1:]):
                got.add(_line(w, load.indices, {**fixed, **values}))
        fetched[f] = got
    # consecutive iterations reading the same panel form a group; each group prefetches the next
    groups: list[list[int]] = []
    for f in sorted(reads):
        if groups and reads[groups[-1][0]] == reads[f]:
            groups[-1].append(f)
        else:
            groups.append([f])
    assert len(groups) > 1
    for current, following in zip(groups, groups[1:]):
        prefetched = set().union(*(fetched[f] for f in current))
        missing = reads[following[0]] - prefetched
        assert not missing, (current, sorted(missing)[:8])


def _wide_model(channels=1024, blocks=3, hw=7):
    """``blocks`` 1x1 convolutions of ``channels`` (4 MiB of weights each at 1024)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(blocks):
        w = (rng.standard_normal((channels, channels, 1, 1)) / np.sqrt(channels)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"y{i}"]))
        prev = f"y{i}"
    shape = [1, channels, hw, hw]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _disassembly(so) -> str:
    import subprocess

    return subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True,
                          check=True).stdout


def test_weights_beyond_the_last_level_cache_are_prefetched_and_results_unchanged(tmp_path,
                                                                                   monkeypatch):
    """12 MiB of weights exceed ``x86-avx2``'s 8 MiB last-level cache (a Haswell's): the kernels
    prefetch, verify against onnxruntime, and equal the artifact built without prefetches bit
    for bit (the chunked reduction sums in the same order)."""
    import shutil

    import mmopt
    from mmopt.codegen import prefetch
    from mmopt.runtime.artifact import load

    if shutil.which("objdump") is None:
        pytest.skip("objdump not installed")
    model = _wide_model()
    with_pf = mmopt.compile(model, "x86-avx2", tmp_path / "pf", verify=True)
    assert with_pf.passed
    assert "prefetchnta" in _disassembly(tmp_path / "pf.so")
    monkeypatch.setattr(prefetch, "weights_from_memory", lambda mod, target: False)
    mmopt.compile(model, "x86-avx2", tmp_path / "plain", verify=False)
    assert "prefetchnta" not in _disassembly(tmp_path / "plain.so")
    x = np.random.default_rng(1).standard_normal((1, 1024, 7, 7)).astype(np.float32)
    a = list(load(tmp_path / "pf")(x=x).values())[0]
    b = list(load(tmp_path / "plain")(x=x).values())[0]
    assert np.array_equal(a, b)


def test_a_model_within_the_last_level_cache_is_not_prefetched(tmp_path):
    import shutil

    import mmopt

    if shutil.which("objdump") is None:
        pytest.skip("objdump not installed")
    mmopt.compile(_wide_model(channels=512, blocks=2), "x86-avx2", tmp_path / "m", verify=False)
    assert "prefetch" not in _disassembly(tmp_path / "m.so")


def test_constant_bytes_counts_each_weight_once():
    import tvm
    from tvm import relax

    from mmopt.codegen.prefetch import constant_bytes

    c = relax.const(np.zeros((256, 256), "float32"))
    x = relax.Var("x", relax.TensorType((256, 256), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        y = bb.emit(relax.op.add(x, c))
        z = bb.emit(relax.op.multiply(y, c))
        bb.emit_func_output(z)
    assert constant_bytes(bb.get()) == 256 * 256 * 4
    del tvm


def test_a_prefetching_schedule_replays_from_a_tuning_database(target, tmp_path):
    """Tuning records store a schedule as its trace in a JSON database: the annotation must
    survive the round trip (a dict value did not: "Cannot recognize the type of an input random
    variable: ffi.Map" when compile replayed the record)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from mmopt.codegen import cpu_contraction as cc
    from mmopt.codegen.cpu_schedules import schedule_prim_func
    from mmopt.codegen.prefetch import ANNOTATION

    func = _gemm().with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    sch = schedule_prim_func(func, target, {"gemm": cc.ContractionKnobs(prefetch=True)},
                             strict=True)
    db = ms.database.JSONDatabase(str(tmp_path / "w.json"), str(tmp_path / "r.json"),
                                  allow_missing=True)
    workload = db.commit_workload(mod)
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1e-3], target))
    fresh = ms.database.JSONDatabase(str(tmp_path / "w.json"), str(tmp_path / "r.json"))
    replay = fresh.query_schedule(mod, target, workload_name="main")
    assert replay is not None
    assert ANNOTATION in replay.mod["main"].script()
    assert replay.mod["main"].script() == sch.mod["main"].script()


def test_an_annotation_on_another_loop_nest_is_reported_not_expanded():
    """An annotated loop outside a parallel tile loop (not what the schedule makes) gets no
    prefetch, loses the annotation, and is reported as degraded."""
    from tvm import s_tir

    from mmopt.codegen.prefetch import ANNOTATION, expand_prefetches
    from mmopt.codegen.schedule_fallbacks import record_fallbacks

    sch = s_tir.Schedule(_gemm().with_attr("global_symbol", "gemm_main"))
    sch.annotate(sch.get_loops(sch.get_sblock("gemm"))[-1], ANNOTATION, "W:1:0")
    with record_fallbacks() as found:
        out = expand_prefetches()(sch.mod)["main"]
    assert ANNOTATION not in out.script() and "prefetch" not in out.script()
    assert [f["schedule"] for f in found if f.get("kind") == "degraded"] == ["prefetch"]
