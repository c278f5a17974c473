"""Per-kernel profile of a compiled model: where the time goes, and how close each kernel is to the
machine's FMA peak.

``profile(model_or_artifact, target, threads=...)`` compiles the model (or loads an artifact), runs
it several times on seeded random inputs and reports, per kernel call of one inference: the kernel,
the ONNX nodes it computes, its output shape(s), its time (median and min over the runs), its share
of the total, its FLOPs, GFLOP/s and percentage of :func:`mmopt.runtime.peak.fma_peak_gflops` for
the artifact's target; and the total latency and the time spent between kernels (VM bookkeeping,
views, allocations: total minus the sum of the kernels).

How each number is obtained (and how far to trust it):

* **Timing.** TVM 0.27's Relax VM has no ``profile=True`` / ``vm.profile()`` (its runtime
  profiling module is gone). Kernels are timed through ``VirtualMachine.set_instrument``, the hook
  the VM calls before and after every call instruction: a kernel's time is the wall-clock between
  the end of the "before" callback and the start of the "after" one, minus the instrument's own
  cost (the same interval measured around the VM's no-op builtin ``vm.builtin.null_value``,
  ~1-2 us; it matters for kernels of a few microseconds). The total latency comes from runs without
  the instrument, interleaved with the instrumented ones so both see the same machine.
  Everything runs in a fresh process whose TVM thread pool has exactly ``threads`` workers.
* **ONNX nodes.** TVM's ONNX importer keeps no node names or spans (bindings are named ``lv*``), so
  kernels are matched by value: one extra run records statistics of every kernel's output (size,
  mean, mean |x|, RMS, min, max: independent of the layout, so an NHWC kernel output matches the
  NCHW ONNX tensor), onnxruntime computes every value of the optimized ONNX graph on the same
  inputs, and each kernel output is matched, in execution order, to the first ONNX value with the
  same statistics (within 1e-3 of its RMS) that no earlier kernel produced. A kernel's nodes are
  those between its value and values that earlier kernels, the inputs or the weights provide
  (views such as Reshape/Flatten go to the kernel that consumes them; constant subgraphs are
  folded at compile time and listed nowhere). ``mapping`` says how a kernel was matched:
  ``value`` (exact, as above), ``copy`` (its output equals a value already produced: a layout
  conversion), ``helper`` (no ONNX value has its output: a step of a decomposed operator, e.g. a
  Winograd transform or batched GEMM; it is listed with the nodes of the next matched kernel) or
  ``unknown`` (the source model is not available).
* **FLOPs.** Counted from the kernels' TIR, captured at compile time after ``FuseTIR``: 2 x the
  multiply-adds of each contraction block (a block with reduction axes whose update is
  ``acc += a * b``), i.e. the arithmetic the kernel executes (a Winograd convolution counts its
  batched GEMM, not the direct convolution's multiplications; element-wise work is not counted).
  The JSON also has ``onnx_flops``: 2 x the MACs of the kernel's Conv/Gemm/MatMul nodes by their
  ONNX shapes (``mmopt inspect``'s count).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmopt.errors import MmoptError
from mmopt.runtime.profile_ops import OpTime, kernel_op, op_times, side_by_side

logger = logging.getLogger(__name__)

#: relative tolerance (of the tensor's RMS) within which two tensors' statistics are "the same"
MATCH_RTOL = 1e-3
#: the name of the pass whose output holds the fused kernels (one PrimFunc per kernel)
_FUSED_PASS = "FuseTIR"


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class KernelProfile:
    """One kernel call of an inference."""

    #: position in execution order (0 = first kernel called)
    index: int
    #: the kernel (TIR PrimFunc) name; the same kernel may be called at several places
    name: str
    output_shapes: list[list[int]]
    median_ms: float
    min_ms: float
    #: median_ms as a percentage of the total (uninstrumented) latency
    percent: float
    #: ONNX nodes (of the optimized graph) the kernel computes; see the module docstring
    onnx_nodes: list[str] = field(default_factory=list)
    onnx_ops: list[str] = field(default_factory=list)
    #: "value", "copy", "helper" or "unknown" (how ``onnx_nodes`` were found)
    mapping: str = "unknown"
    #: the ONNX value the output matched ("value"/"copy")
    onnx_value: str | None = None
    #: 2 x multiply-adds of the kernel's contraction blocks (TIR); None when not known
    flops: int | None = None
    gflops_per_s: float | None = None
    #: gflops_per_s as a percentage of the measured FMA peak
    peak_percent: float | None = None
    #: 2 x MACs of the kernel's Conv/Gemm/MatMul nodes by their ONNX shapes
    onnx_flops: int | None = None


def describe_nodes(mapping: str, onnx_nodes: Sequence[str], onnx_ops: Sequence[str],
                   onnx_value: str | None) -> str:
    """A kernel's ONNX nodes, short: ``first node +N (Op+Op)``; ``(helper)`` in front for a step of
    a decomposed op, ``(layout copy of VALUE)`` for a copy, ``?`` when unknown (the JSON lists them
    all). ``mmopt profile``'s table and the HTML reports show this."""
    if mapping == "copy":
        return f"(layout copy of {onnx_value})"
    if not onnx_nodes:
        return "?"
    ops = "+".join(dict.fromkeys(onnx_ops))
    text = onnx_nodes[0] + (f" +{len(onnx_nodes) - 1}" if len(onnx_nodes) > 1 else "") + f" ({ops})"
    return f"(helper) {text}" if mapping == "helper" else text


@dataclass
class OrtOpProfile:
    """onnxruntime's time for one op type (all its nodes), per inference."""

    op_type: str
    nodes: int
    median_ms: float
    percent: float


@dataclass
class ProfileResult:
    model: str
    artifact: str
    target: str
    threads: int
    runs: int
    warmup: int
    #: median / min latency of one inference without the instrument
    total_median_ms: float
    total_min_ms: float
    #: rows in execution order (``sorted_kernels()`` sorts them by time)
    kernels: list[KernelProfile]
    #: the kernels' time in one inference: the median over the instrumented runs of each run's
    #: sum (not the sum of the kernels' medians: timing noise only ever adds, so each kernel's
    #: median sits near its fast end and their sum falls short of a typical run's; on ResNet-50
    #: by 0.6 ms of 33, which the difference below then reported as time between kernels)
    kernel_sum_ms: float
    #: total_median_ms minus kernel_sum_ms (negative: noise)
    between_ms: float
    between_percent: float
    #: the FMA peak measurement (:class:`mmopt.runtime.peak.PeakMeasurement` as a dict)
    peak: dict | None
    #: bytes of storage the VM allocates per call (planned intermediates + outputs)
    workspace_bytes: int | None
    #: the instrument's own cost per call (median around the VM's no-op builtin calls), already
    #: subtracted from every kernel's time
    instrument_overhead_us: float
    flops_source: str
    mapping_source: str
    machine: dict
    #: the kernels' time by ONNX op type (:mod:`mmopt.runtime.profile_ops`), slowest first
    ops: list[OpTime] = field(default_factory=list)
    #: onnxruntime's per-op profile (``versus="onnxruntime"``)
    onnxruntime: dict | None = None
    #: mmopt's and onnxruntime's op times side by side
    #: (:func:`mmopt.runtime.profile_ops.side_by_side`; ``versus="onnxruntime"``)
    ops_vs_onnxruntime: list[dict] | None = None
    #: ONNX nodes (not folded at compile time) no kernel's value accounts for
    unattributed_nodes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gflops(self) -> float | None:
        return self.peak["gflops"] if self.peak else None

    def sorted_kernels(self) -> list[KernelProfile]:
        """Kernels by median time, slowest first (ties: execution order)."""
        return sorted(self.kernels, key=lambda k: (-k.median_ms, k.index))

    def to_dict(self) -> dict:
        data = {"kind": "profile", **asdict(self)}
        data["kernels"] = [asdict(k) for k in self.sorted_kernels()]
        data["peak_gflops"] = self.peak_gflops
        return data


# --------------------------------------------------------------------------------------------------
# FLOPs from TIR


def contraction_flops(func, values: Mapping[str, int] | None = None) -> int:
    """2 x the multiply-adds of ``func``'s contraction blocks (a TIR PrimFunc).

    A contraction block has reduction iteration axes and an update ``acc[...] = acc[...] + a * b``
    (casts allowed around the product or its factors, for integer kernels); it executes the product
    of its axes' extents multiply-adds, whatever the schedule. Symbolic extents (a dynamic-shape
    kernel) count with their variables set to ``values`` (``{name: value}``); a block with an
    extent left symbolic is not counted.
    """
    import tvm
    from tvm import tirx
    from tvm.s_tir import SBlock
    from tvm.sym import Analyzer  # TVM 0.27's arith analyzer

    # TVM 0.27: a load is an ``ir.TensorLoad`` whose ``source`` is the stored-to ``buffer``'s var
    loads = tuple(t for t in (getattr(tvm.ir, "TensorLoad", None), tirx.BufferLoad)
                  if isinstance(t, type))
    total = 0

    def evaluate(extent):
        if isinstance(extent, tirx.IntImm) or not values:
            return extent
        analyzer = Analyzer()
        for var in tirx.analysis.undefined_vars(extent):
            if var.name in values:
                analyzer.bind(var, tirx.const(int(values[var.name]), "int64"))
        return analyzer.simplify(extent)

    def is_product(expr) -> bool:
        while isinstance(expr, tirx.Cast):
            expr = expr.value
        return isinstance(expr, tirx.Mul)

    def loads_from(expr, buffer) -> bool:
        if not isinstance(expr, loads):
            return False
        source = getattr(expr, "source", None)
        if source is None:
            source = getattr(expr, "buffer", None)
        return source is not None and source.same_as(buffer)

    def is_update(store) -> bool:
        if not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tirx.Add):
            return False
        value = store.value
        return any(loads_from(acc, store.buffer) and is_product(other)
                   for acc, other in ((value.a, value.b), (value.b, value.a)))

    def visit(stmt) -> None:
        nonlocal total
        if stmt is None:
            return
        if isinstance(stmt, SBlock):
            reduces = [iv for iv in stmt.iter_vars if int(iv.iter_type) == tirx.IterVar.CommReduce]
            if reduces and is_update(stmt.body):
                extents = [evaluate(iv.dom.extent) for iv in stmt.iter_vars]
                if all(isinstance(e, tirx.IntImm) for e in extents):
                    total += 2 * math.prod(int(e.value) for e in extents)
        if isinstance(stmt, tirx.SeqStmt):
            for child in stmt.seq:
                visit(child)
            return
        for attr in ("block", "body", "then_case", "else_case"):
            child = getattr(stmt, attr, None)
            if isinstance(child, tirx.Stmt):
                visit(child)

    visit(func.body)
    return total


@contextlib.contextmanager
def counting_kernel_flops(values: Mapping[str, int] | None = None) -> Iterator[dict[str, int]]:
    """Within this block, every ``FuseTIR`` (a compile's kernel fusion) adds the
    :func:`contraction_flops` of each fused kernel (TIR PrimFunc) to the dict it yields, by
    kernel name (symbolic extents counted at ``values``). A pass instrument on a copy of the
    current ``PassContext``."""
    import tvm

    flops: dict[str, int] = {}

    @tvm.ir.instrument.pass_instrument
    class _KernelFlops:
        def run_after_pass(self, mod, info):
            if info.name != _FUSED_PASS:
                return
            for gv, func in mod.functions.items():
                if isinstance(func, tvm.tirx.PrimFunc):
                    try:
                        flops[gv.name_hint] = contraction_flops(func, values)
                    except Exception:  # noqa: BLE001 - a count is a nicety, never a failure
                        logger.debug("counting FLOPs of %s failed", gv.name_hint, exc_info=True)

    current = tvm.transform.PassContext.current()
    with tvm.transform.PassContext(opt_level=current.opt_level,
                                   required_pass=list(current.required_pass),
                                   disabled_pass=list(current.disabled_pass),
                                   instruments=[*current.instruments, _KernelFlops()],
                                   config=dict(current.config)):
        yield flops


# --------------------------------------------------------------------------------------------------
# the worker process: timing, output statistics, workspace, FMA peak


def fingerprint(array: np.ndarray) -> tuple:
    """Layout-independent statistics of a tensor: ``(size, mean, mean |x|, rms, min, max)``."""
    x = np.asarray(array)
    if x.size == 0:
        return (0, 0.0, 0.0, 0.0, 0.0, 0.0)
    x = x.astype(np.float64, copy=False).ravel()
    return (int(x.size), float(x.mean()), float(np.abs(x).mean()), float(np.sqrt((x * x).mean())),
            float(x.min()), float(x.max()))


def same_values(a: tuple, b: tuple, *, integer: bool = False, rtol: float = MATCH_RTOL) -> bool:
    """Whether two :func:`fingerprint` s describe the same elements (in any order) within ``rtol``
    of their RMS (plus one unit for integer tensors, which may round differently)."""
    if a[0] != b[0]:
        return False
    tol = rtol * max(a[3], b[3]) + (1.0 if integer else 1e-12)
    return all(abs(x - y) <= tol for x, y in zip(a[1:], b[1:]))


#: a VM builtin that does nothing: the time the instrument measures around it is its own cost
_NOOP_BUILTIN = "vm.builtin.null_value"


def _is_kernel(symbol: str) -> bool:
    return not symbol.startswith("vm.builtin.")


def kernel_timing_worker(artifact: str, inputs_path: str, warmup: int, runs: int, capture: bool,
                         peak_target: str | None, threads: int) -> dict:
    """Runs in a fresh process (TVM_NUM_THREADS = threads;
    :func:`mmopt.runtime.bench.call_in_child`). See :func:`profile`. Returns ``{"totals":
    [seconds of each plain run], "runs": [[(kernel symbol, seconds) of each call] of each
    instrumented run], ...}``; tuning's in-model check
    (:mod:`mmopt.tuning.confirm`) reads the same."""
    from mmopt.runtime.artifact import CompiledModel
    from mmopt.runtime.bench import vm_workspace_bytes

    with np.load(inputs_path, allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    model = CompiledModel(artifact)
    args = model._arguments((), feeds)  # noqa: SLF001 - convert once, time only the calls
    # the function these shapes run: main, or a dynamic artifact's bucket (with its block counts)
    main, vm, device = model._function, model._vm, model.device  # noqa: SLF001
    on_cpu = model._on_cpu  # noqa: SLF001
    sync = (lambda: None) if on_cpu else device.sync

    def plain() -> float:
        start = time.perf_counter()
        main(*args)
        sync()
        return time.perf_counter() - start

    calls: list[tuple[str, float]] = []
    noops: list[float] = []  # the instrument's own cost: intervals around no-op builtin calls
    started = [0.0]

    def timing(_func, symbol, before, _ret, *_args):
        kernel = _is_kernel(symbol)
        if kernel or symbol == _NOOP_BUILTIN:
            if before:
                sync()
                started[0] = time.perf_counter()
            else:
                sync()
                elapsed = time.perf_counter() - started[0]
                if kernel:
                    calls.append((symbol, elapsed))
                else:
                    noops.append(elapsed)
        return 0

    for _ in range(warmup):
        plain()
    totals, per_run = [], []
    for _ in range(runs):  # interleaved: plain and instrumented runs see the same machine
        totals.append(plain())
        calls.clear()
        vm.set_instrument(timing)
        try:
            main(*args)
            sync()
        finally:
            vm.set_instrument(None)
        per_run.append(list(calls))

    outputs: list[list[dict]] = []
    if capture:
        pending: set[int] = set()  # tensors the VM allocated and no kernel has written yet

        def record(_func, symbol, before, ret, *call_args):
            if before:
                return 0
            if symbol == "vm.builtin.alloc_tensor":
                pending.add(ret.data_ptr())
                return 0
            if not _is_kernel(symbol):
                return 0
            tensors = [a for a in call_args if hasattr(a, "data_ptr") and hasattr(a, "shape")]
            written = [t for t in tensors if t.data_ptr() in pending] or tensors[-1:]
            for t in written:
                pending.discard(t.data_ptr())
            sync()
            outputs.append([{"shape": [int(d) for d in t.shape], "dtype": str(t.dtype),
                             "fingerprint": fingerprint(np.from_dlpack(t) if on_cpu
                                                        else t.numpy())} for t in written])
            return 0

        vm.set_instrument(record)
        try:
            main(*args)
            sync()
        finally:
            vm.set_instrument(None)
    workspace = vm_workspace_bytes(vm, lambda: (main(*args), sync()))
    peak = None
    if peak_target is not None:
        from mmopt.runtime.peak import measure_in_this_process

        peak = measure_in_this_process(peak_target, threads)
    return {"totals": totals, "runs": per_run, "outputs": outputs, "workspace_bytes": workspace,
            "peak": peak, "instrument_overhead": statistics.median(noops) if noops else 0.0}


# --------------------------------------------------------------------------------------------------
# kernels -> ONNX nodes


@dataclass
class _Mapping:
    nodes: list[list[str]]
    ops: list[list[str]]
    kind: list[str]
    value: list[str | None]
    unattributed: list[str]
    onnx_flops: list[int | None]


def onnx_values(model, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    """:func:`fingerprint` of every value of ``model`` (inputs and every node output with a known
    type), computed by onnxruntime with graph optimizations off (the graph as written)."""
    import onnx

    from mmopt.runtime import ort

    graph = model.graph
    typed = {vi.name: vi for vi in [*graph.value_info, *graph.output]}
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {o.name for o in extended.graph.output}
    for node in graph.node:
        for name in node.output:
            if name and name not in present and name in typed:
                extended.graph.output.append(typed[name])
                present.add(name)
    session = ort.session(extended, label="profile: ONNX values")
    names = [o.name for o in session.get_outputs()]
    values = ort.run(session, feeds, label="profile: ONNX values", names=names)
    result = {name: fingerprint(v) for name, v in feeds.items()}
    result.update({name: fingerprint(v) for name, v in zip(names, values)})
    return result


def map_kernels(model, values: Mapping[str, tuple], outputs: Sequence[Sequence[dict]]) -> _Mapping:
    """Match each kernel call's outputs (in execution order) to ONNX values of ``model``; see the
    module docstring for the rules."""
    from mmopt.ir.inspect import _MAC_FUNCS, _shape_table  # noqa: PLC2701 - same package family

    graph = model.graph
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producer[name] = i
    constants = {init.name for init in graph.initializer}
    folded: set[int] = set()
    for i, node in enumerate(graph.node):  # topological order: constants propagate forward
        if all(not name or name in constants for name in node.input):
            folded.add(i)
            constants.update(name for name in node.output if name)
    order = {name: producer.get(name, -1) for name in values}  # graph inputs first
    available = {inp.name for inp in graph.input} | constants  # produced without a kernel
    attributed: set[int] = set()
    shapes = _shape_table(graph)

    def walk(value: str) -> list[int]:
        group, stack = [], [value]
        while stack:
            name = stack.pop()
            if name in available and name != value:
                continue
            i = producer.get(name)
            if i is None or i in attributed or i in folded:
                continue
            attributed.add(i)
            group.append(i)
            stack.extend(n for n in graph.node[i].input if n)
        return sorted(group)

    nodes, ops, kinds, matched, flops = [], [], [], [], []
    for call in outputs:
        group: list[int] = []
        kind, value_name = "helper", None
        for out in call:
            integer = np.dtype(out["dtype"]).kind in "iub"
            candidates = sorted((n for n, fp in values.items()
                                 if same_values(fp, tuple(out["fingerprint"]), integer=integer)),
                                key=lambda n: order[n])
            fresh = [n for n in candidates if n not in available]
            if fresh:
                value_name, kind = fresh[0], "value"
                group += walk(fresh[0])
                available.add(fresh[0])
            elif candidates and kind != "value":
                value_name, kind = candidates[0], "copy"
        group = sorted(set(group))
        nodes.append([graph.node[i].name or f"#{i}" for i in group])
        ops.append([graph.node[i].op_type for i in group])
        kinds.append(kind)
        matched.append(value_name)
        macs = [(_MAC_FUNCS[graph.node[i].op_type](shapes, graph.node[i])
                 if graph.node[i].op_type in _MAC_FUNCS else 0) for i in group]
        flops.append(2 * sum(macs) if kind == "value" and None not in macs else None)
    # helpers belong to the next kernel that produced an ONNX value
    following: tuple[list[str], list[str]] = ([], [])
    for i in reversed(range(len(outputs))):
        if kinds[i] == "value":
            following = (nodes[i], ops[i])
        elif kinds[i] == "helper":
            nodes[i], ops[i] = list(following[0]), list(following[1])
    unattributed = [node.name or f"#{i}" for i, node in enumerate(graph.node)
                    if i not in attributed and i not in folded]
    return _Mapping(nodes, ops, kinds, matched, unattributed, flops)


# --------------------------------------------------------------------------------------------------
# onnxruntime's per-op profile


def _ort_profile_worker(model, feeds, threads: int, warmup: int, runs: int) -> dict:
    """:func:`onnxruntime_profile` in a child process (see :func:`profile`)."""
    return onnxruntime_profile(model, feeds, threads=threads, warmup=warmup, runs=runs)


def onnxruntime_profile(model, feeds: Mapping[str, np.ndarray], *, threads: int, warmup: int,
                        runs: int) -> dict:
    """onnxruntime (default optimizations, ``threads`` intra-op threads) profiled with
    ``SessionOptions.enable_profiling``: its JSON trace's node events of the last ``runs`` runs,
    per op type (the time of all its nodes in one inference, median over runs)."""
    import json

    from mmopt.errors import summarize
    from mmopt.runtime import ort

    with tempfile.TemporaryDirectory(prefix="mmopt-ort-profile-") as tmp:
        session = ort.session(model, label="onnxruntime profile", optimization="all",
                              threads=threads, inter_op_threads=1,
                              profile_prefix=os.path.join(tmp, "ort"))
        try:
            for _ in range(warmup + runs):
                session.run(None, dict(feeds))
            trace = session.end_profiling()
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise MmoptError(f"onnxruntime profile failed: {summarize(exc)}") from exc
        with open(trace, encoding="utf-8") as f:
            events = json.load(f)
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs:]
    per_run: list[list[tuple[str, float]]] = [[] for _ in spans]  # (node, ms) of each run
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        op_of[node] = e.get("args", {}).get("op_name", "?")
        for r, (start, end) in enumerate(spans):
            if start <= e["ts"] <= end:
                per_run[r].append((node, e["dur"] / 1e3))
                break
    total = statistics.median((end - start) / 1e3 for start, end in spans) if spans else 0.0
    # per op type as mmopt's kernels are counted (median over runs of each run's sum)
    ops = [OrtOpProfile(o.op_type, o.calls, o.median_ms, o.percent)
           for o in op_times(per_run, op_of, total)]
    # one inference's op time: the median of the runs' sums (as the kernels' in _assemble)
    op_sum = statistics.median(sum(ms for _, ms in run) for run in per_run) if per_run else 0.0
    from mmopt.runtime.cpu_mask import seen_isa

    return {"threads": threads, "runs": len(spans), "total_median_ms": total,
            "op_sum_ms": op_sum, "between_ms": total - op_sum,
            "ops": [asdict(o) for o in ops], "cpu_isa": seen_isa(),
            "cpu_mask": os.environ.get("MMOPT_CPU_MASK") or None}


# --------------------------------------------------------------------------------------------------
# the machine


_SIMD_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "amx", "vnni", "asimd", "neon", "sve",
                  "fphp", "i8mm", "bf16")


def machine_info() -> dict:
    """CPU model, its SIMD flags, core count and load average (for reading the numbers)."""
    import platform

    model, flags = platform.processor() or "?", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and model in ("?", "", "x86_64"):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = sorted(v for v in value.split() if v.startswith(_SIMD_PREFIXES))
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_model": model, "isa_flags": flags, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "load_average": load}


# --------------------------------------------------------------------------------------------------
# the verb


def _is_artifact_path(model) -> bool:
    from mmopt.runtime.artifact import is_artifact

    return (isinstance(model, (str, os.PathLike)) and not str(model).endswith(".onnx")
            and is_artifact(model))


def profile(model, target: str = "x86", *, input_shapes: Mapping[str, Sequence[int]] | None = None,
            threads: int = 2, runs: int = 10, warmup: int = 3, opt_level: int | None = None,
            db=None, codegen=None, versus: str | None = None, seed: int = 0,
            progress: Callable[[str], None] | None = None) -> ProfileResult:
    """Profile ``model`` (a model file or ModelProto, compiled here for ``target``; or an artifact
    ``NAME``/``NAME.so``/``NAME.json``, whose own target is used) kernel by kernel.

    ``threads``: the TVM thread pool (and onnxruntime's intra-op pool) size; ``runs`` timed runs
    after ``warmup``; ``input_shapes``, ``opt_level``, ``db`` and ``codegen`` as for
    :func:`mmopt.compile`; ``versus="onnxruntime"`` adds onnxruntime's per-op-type profile on the
    same inputs and thread count. See the module docstring for how each number is measured.
    Raises :class:`MmoptError` for bad input (missing file, a target that cannot run here, ...).
    """
    from mmopt import ir as mir
    from mmopt import targets
    from mmopt.passes import DEFAULT_LEVEL
    from mmopt.runtime.artifact import read_meta

    step = progress or (lambda _msg: None)
    _check_options(threads, runs, warmup, versus)
    if not _is_artifact_path(model):
        # compiled here, and profiled by the compile, which has the graph and the kernels' FLOPs
        import mmopt

        tgt = targets.get(target)
        _require_runs_here(tgt)
        with tempfile.TemporaryDirectory(prefix="mmopt-profile-") as tmp:
            result = mmopt.compile(model, tgt.name, Path(tmp) / "model",
                                   input_shapes=input_shapes,
                                   opt_level=DEFAULT_LEVEL if opt_level is None else opt_level,
                                   verify=False, db=db, codegen=codegen, progress=step,
                                   profile={"threads": threads, "runs": runs, "warmup": warmup,
                                            "versus": versus, "seed": seed})
        return result.profile
    meta = read_meta(model)
    sizes = dynamic_sizes(meta, input_shapes)
    tgt = targets.get(meta.target.get("name", "?"))
    _require_runs_here(tgt)
    notes: list[str] = []
    reference = optimized = None
    flops: dict[str, int] = {}
    source = Path(meta.source_model)
    if source.exists() and mir.sha256_of(source) == meta.source_sha256:
        step("re-deriving the kernels from the source model")
        reference, optimized, flops = rederive(source, meta, tgt, sizes)
    else:
        notes.append(f"the artifact's source model {source} is not available (or changed): "
                     "no ONNX nodes, no FLOPs")
    return profile_artifact(str(model), meta, reference, optimized, flops, threads=threads,
                            runs=runs, warmup=warmup, versus=versus, seed=seed, progress=step,
                            notes=notes, input_shapes=input_shapes)


def dynamic_sizes(meta, input_shapes) -> dict[str, int]:
    """The sizes of a dynamic artifact's symbolic dims in the concrete ``input_shapes`` (``{input:
    shape}``, ``--input-shape``), checked against its ranges; ``{}`` for a static artifact. A
    dynamic artifact profiled without them is a one-line :class:`MmoptError`."""
    if not getattr(meta, "dims", None):
        return {}
    from mmopt.ir.dims import bind_sizes
    from mmopt.runtime.inputs import with_shapes

    concrete = {name: dims for name, dims, _dtype in with_shapes(meta.inputs, input_shapes)}
    return bind_sizes({s.name: s.shape for s in meta.inputs}, concrete, meta.dim_ranges())


def profile_artifact(artifact, meta, reference, optimized, flops: Mapping[str, int], *,
                     threads: int = 2, runs: int = 10, warmup: int = 3,
                     versus: str | None = None, seed: int = 0,
                     progress: Callable[[str], None] | None = None,
                     notes: Sequence[str] = (),
                     input_shapes: Mapping[str, Sequence[int]] | None = None) -> ProfileResult:
    """Profile a compiled ``artifact`` whose graph is known: ``meta`` its
    :class:`~mmopt.runtime.artifact.ArtifactMeta`, ``reference`` the source model as onnxruntime
    runs it and ``optimized`` the ONNX graph that was compiled (either None when not known: no
    ONNX nodes, no ``--vs``), ``flops`` the kernels' :func:`contraction_flops` by name (from
    :func:`counting_kernel_flops` around the compile). :func:`profile` comes here, and so does
    ``mmopt.compile(..., profile=True)``, which has all of these at hand. A dynamic artifact
    runs at ``input_shapes`` (required for it; see :func:`dynamic_sizes`)."""
    from mmopt import targets
    from mmopt.runtime.bench import call_in_child, ort_mask
    from mmopt.runtime.inputs import random_feeds

    from mmopt.runtime.inputs import with_shapes

    step = progress or (lambda _msg: None)
    _check_options(threads, runs, warmup, versus)
    sizes = dynamic_sizes(meta, input_shapes)
    tgt = targets.get(meta.target.get("name", "?"))
    _require_runs_here(tgt)
    notes = list(notes)
    if sizes:
        notes.append("dynamic artifact, profiled at " + ", ".join(
            f"{name}={size}" for name, size in sizes.items()))
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="mmopt-profile-") as tmp:
        feeds = random_feeds(with_shapes(meta.inputs, input_shapes) if sizes else meta.inputs,
                             seed)
        inputs_path = os.path.join(tmp, "inputs.npz")
        np.savez(inputs_path, **feeds)
        from mmopt.runtime import peak as _peak

        known_peak = _peak.cached(tgt.name, threads)
        measure = tgt.device == "cpu" and known_peak is None
        step(f"profiling ({runs} runs, {threads} threads)"
             + (" and measuring the FMA peak" if measure else ""))
        raw = call_in_child(kernel_timing_worker, str(artifact), inputs_path, warmup, runs,
                            optimized is not None, tgt.name if measure else None,
                            threads, threads=threads, what="profile run")
    if raw["peak"] is not None:
        _peak.remember(raw["peak"])
    else:
        raw["peak"] = known_peak
        if known_peak is None:
            notes.append(f"no FMA peak for a {tgt.device} target")
    mapping = None
    if optimized is not None:
        step("matching kernels to ONNX nodes")
        try:
            mapping = map_kernels(optimized, onnx_values(optimized, feeds), raw["outputs"])
        except MmoptError as exc:  # the profile stands without the names
            notes.append(f"no ONNX nodes: {exc.message}")
    ort_profile = None
    if versus == "onnxruntime":
        if reference is None:
            notes.append("--vs onnxruntime: the source model is not available")
        else:
            # in its own process, shown the artifact's ISA (see mmopt.runtime.bench.ort_mask)
            mask, mask_notes = ort_mask(tgt.name)
            notes += mask_notes
            step(f"profiling onnxruntime ({runs} runs, {threads} threads"
                 + (f", {mask} kernels" if mask else "") + ")")
            ort_profile = call_in_child(_ort_profile_worker, reference, feeds, threads, warmup,
                                        runs, what="onnxruntime profile", mask=mask)
    machine["load_average_after"] = machine_info()["load_average"]
    return _assemble(meta.source_model, str(artifact), tgt.name, threads, runs, warmup, raw,
                     dict(flops), mapping, ort_profile, machine, notes)


def _check_options(threads: int, runs: int, warmup: int, versus: str | None) -> None:
    if threads < 1 or runs < 1 or warmup < 0:
        raise MmoptError("profile: threads and runs must be >= 1, warmup >= 0")
    if versus not in (None, "none", "onnxruntime"):
        raise MmoptError(f"--vs {versus}: use onnxruntime or none")


def _require_runs_here(tgt) -> None:
    if not tgt.runs_here():
        raise MmoptError(f"target {tgt.name} cannot run here ({tgt.why_not_here()}); profile runs "
                         "the model on this machine")


def rederive(source: Path, meta, tgt, sizes: Mapping[str, int] | None = None):
    """``(reference, optimized, kernel FLOPs)`` of an artifact's source model: its graph passes and
    fused kernels as the compile produced them (same shapes, dims, buckets, level and
    code-generation settings; the kernels' names do not depend on schedules or tuning records).
    A dynamic artifact's kernels are counted at the dims' ``sizes``."""
    from mmopt.api import front_end
    from mmopt.codegen.buckets import add_buckets, resolve_buckets
    from mmopt.codegen.options import CodegenOptions
    from mmopt.codegen.pipeline import tuning_module
    from mmopt.codegen.relax_import import to_relax
    from mmopt.codegen.symbolic_dims import symbol_values
    from mmopt.passes import DEFAULT_LEVEL

    shapes = {s.name: s.shape for s in meta.inputs}
    level = meta.opt_level if meta.opt_level is not None else DEFAULT_LEVEL
    ranges = meta.dim_ranges()
    reference, optimized, _report = front_end(str(source), shapes, level, dims=ranges or None)
    mod = to_relax(optimized, where=str(source), dims=ranges or None)
    if meta.buckets:
        buckets = resolve_buckets([b["inputs"] for b in meta.buckets], shapes, ranges)
        mod = add_buckets(mod, buckets, ranges)
    values = symbol_values(sizes, ranges) if sizes else None
    with counting_kernel_flops(values) as flops:
        tuning_module(mod, tgt, CodegenOptions(**meta.codegen) if meta.codegen else None)
    return reference, optimized, flops


def _assemble(model, artifact, target, threads, runs, warmup, raw, flops, mapping, ort_profile,
              machine, notes) -> ProfileResult:
    totals_ms = [t * 1e3 for t in raw["totals"]]
    total = statistics.median(totals_ms)
    sequences = [[name for name, _ in run] for run in raw["runs"]]
    reference_calls = sequences[0]
    if any(seq != reference_calls for seq in sequences):
        notes.append("the kernel sequence differs between runs (control flow): calls are matched "
                     "by kernel name and occurrence")
    overhead = raw.get("instrument_overhead", 0.0)
    samples: dict[tuple[str, int], list[float]] = {}
    run_sums = []  # each instrumented run's kernel time (ProfileResult.kernel_sum_ms)
    run_calls = []  # each instrumented run's ((kernel, occurrence), ms), for the op times
    for run in raw["runs"]:
        seen: dict[str, int] = {}
        run_sums.append(0.0)
        run_calls.append([])
        for name, seconds in run:
            k = seen.get(name, 0)
            seen[name] = k + 1
            ms = max(0.0, seconds - overhead) * 1e3
            samples.setdefault((name, k), []).append(ms)
            run_sums[-1] += ms
            run_calls[-1].append(((name, k), ms))
    peak = raw["peak"].to_dict() if raw["peak"] is not None else None
    kernels = []
    seen = {}
    op_of: dict[tuple[str, int], str] = {}
    for index, name in enumerate(reference_calls):
        k = seen.get(name, 0)
        seen[name] = k + 1
        ms = samples[(name, k)]
        median = statistics.median(ms)
        outputs = raw["outputs"][index] if index < len(raw["outputs"]) else []
        row = KernelProfile(index, name, [o["shape"] for o in outputs], median, min(ms),
                            100 * median / total if total else 0.0)
        row.flops = flops.get(name)
        if row.flops and median > 0:
            row.gflops_per_s = row.flops / (median * 1e6)
            if peak:
                row.peak_percent = 100 * row.gflops_per_s / peak["gflops"]
        if mapping is not None and index < len(mapping.kind):
            row.onnx_nodes, row.onnx_ops = mapping.nodes[index], mapping.ops[index]
            row.mapping, row.onnx_value = mapping.kind[index], mapping.value[index]
            row.onnx_flops = mapping.onnx_flops[index]
        op_of[(name, k)] = kernel_op(row.mapping, row.onnx_ops)
        kernels.append(row)
    kernel_sum = statistics.median(run_sums)
    ops = op_times(run_calls, op_of, total)
    between = total - kernel_sum
    if between < 0:
        notes.append("the kernels' sum exceeds the total latency: the instrumented runs were "
                     "slower than the plain ones (a busy machine); the time between kernels is "
                     "below what this run can measure")
    if mapping is not None:
        counts = {kind: sum(1 for k in kernels if k.mapping == kind)
                  for kind in ("value", "copy", "helper")}
        mapping_source = (f"by value against onnxruntime on the optimized ONNX graph: "
                          f"{counts['value']} of {len(kernels)} kernel calls matched an ONNX "
                          f"value, {counts['copy']} are layout copies, {counts['helper']} helpers "
                          "(steps of a decomposed op, listed with the next matched kernel's nodes)")
    else:
        mapping_source = "unavailable (see the notes)"
    return ProfileResult(
        model=model, artifact=artifact, target=target, threads=threads, runs=runs, warmup=warmup,
        total_median_ms=total, total_min_ms=min(totals_ms), kernels=kernels,
        kernel_sum_ms=kernel_sum, between_ms=between,
        between_percent=100 * between / total if total else 0.0, peak=peak,
        workspace_bytes=raw["workspace_bytes"], instrument_overhead_us=overhead * 1e6,
        flops_source=("TIR: 2 x multiply-adds of each kernel's contraction blocks (executed "
                      "arithmetic; element-wise work not counted)" if flops else
                      "unavailable (no source model)"),
        mapping_source=mapping_source, machine=machine,
        ops=ops, onnxruntime=ort_profile,
        ops_vs_onnxruntime=(side_by_side([asdict(o) for o in ops], ort_profile["ops"])
                            if ort_profile else None),
        unattributed_nodes=mapping.unattributed if mapping is not None else [], notes=notes)
