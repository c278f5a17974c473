"""Latency benchmarks: a compiled artifact and onnxruntime, same inputs, same thread count.

Each engine runs in its own child process (``spawn``: fork + exec of a fresh interpreter), so
thread-pool settings cannot leak between them. The timed calls are interleaved in blocks (mmopt,
onnxruntime, mmopt, ...) so both engines see the same machine; latencies are wall-clock per call; the
ratio is mmopt / onnxruntime.

Peak memory is each engine's own: the high-water mark of its child's resident set (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs`` when the worker starts). Not
``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the maximum across fork and exec, so a spawned
child reports at least its parent's peak (a parent holding a 400 MB array made both engines show
420 MB). The peak includes the interpreter and numpy (``baseline_rss_mb``, the worker's resident set
before it loads its engine) and what loading needs for a while; ``rss_mb`` is what stays resident
after the timed runs and ``anon_rss_mb`` its anonymous part (measured with a 64 MB weight: each
engine keeps it once in anonymous memory; an mmopt artifact's .so also stays mapped with the
weights inside, file pages the kernel can drop, and loading it peaks at four copies against
onnxruntime's two). For mmopt, ``workspace_mb`` is the storage the Relax VM allocates per
call (the memory plan of ``StaticPlanBlockMemory`` for intermediates, plus the outputs), read from
the VM's ``vm.builtin.alloc_storage`` calls; onnxruntime does not expose its arena's size (None).

The ISA each engine runs: a compiled artifact runs the code of its target; onnxruntime picks its
kernels by CPUID when it loads. On an AVX-512 CPU an ``x86-avx2`` artifact is therefore timed
against onnxruntime's AVX-512 kernels unless onnxruntime's process is shown an AVX2-only CPU
(:mod:`mmopt.runtime.cpu_mask`): :func:`bench` does that by default (``ort_isa="auto"``) and every
timing records the ISA its process saw (``cpu_isa``) and the mask it ran under (``cpu_mask``).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmopt.runtime.inputs import random_feeds


@dataclass
class Timing:
    engine: str
    threads: int
    runs: int
    min_ms: float
    median_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # inferences per second at the median latency
    #: the engine process's peak resident set (VmHWM), its own (see the module docstring)
    peak_rss_mb: float
    #: the worker's resident set before it loaded its engine (interpreter, numpy)
    baseline_rss_mb: float | None = None
    #: its resident set after the timed runs (what the loaded engine keeps; the peak adds what
    #: loading needed for a while)
    rss_mb: float | None = None
    #: the anonymous part of rss_mb (RssAnon: memory the process allocated, without the file
    #: pages of its mapped libraries, e.g. an artifact's .so holding the weights once more)
    anon_rss_mb: float | None = None
    #: mmopt: storage the VM allocates per call (planned intermediates + outputs); else None
    workspace_mb: float | None = None
    #: how peak_rss_mb was measured ("VmHWM", or "ru_maxrss" where /proc is missing)
    memory_source: str = "VmHWM"
    #: every timed call's latency, in call order (the distribution the summary comes from)
    samples_ms: list[float] = field(default_factory=list)
    #: the best vector ISA the engine's process saw through CPUID ("avx512_vnni", "avx2", ...):
    #: what onnxruntime picks its kernels by (an artifact runs its target's code whatever it is)
    cpu_isa: str | None = None
    #: the :mod:`~mmopt.runtime.cpu_mask` level the process ran under ("avx2"; given by mmopt or
    #: inherited, e.g. from ``scripts/avx2-emulated.sh --cpuid``), None: unmasked
    cpu_mask: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchResult:
    model: str
    mmopt: Timing
    onnxruntime: Timing | None = None
    #: what makes the comparison less than like-for-like (onnxruntime on another ISA)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """mmopt median latency / onnxruntime median latency (< 1: mmopt is faster)."""
        if self.onnxruntime is None:
            return None
        return self.mmopt.median_ms / self.onnxruntime.median_ms

    def to_dict(self) -> dict:
        return {"kind": "bench", "model": self.model, "mmopt": self.mmopt.to_dict(),
                "onnxruntime": self.onnxruntime.to_dict() if self.onnxruntime else None,
                "ratio": self.ratio, "notes": list(self.notes)}


def _summarize(engine: str, threads: int, seconds: list[float], memory: dict) -> Timing:
    in_order = [s * 1e3 for s in seconds]
    ms = sorted(in_order)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    median = statistics.median(ms)
    workspace = memory.get("workspace_bytes")

    def mb(kb):
        return kb / 1024.0 if kb is not None else None

    return Timing(engine, threads, len(ms), ms[0], median, p90, statistics.fmean(ms),
                  1e3 / median if median > 0 else float("inf"), memory["peak_kb"] / 1024.0,
                  mb(memory.get("baseline_kb")), mb(memory.get("rss_kb")),
                  mb(memory.get("anon_kb")), workspace / 2**20 if workspace is not None else None,
                  memory["source"], in_order, memory.get("cpu_isa"), memory.get("cpu_mask"))


# --------------------------------------------------------------------------------------------------
# memory of the current process


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``), None without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> int | None:
    """Reset this process's peak resident set to its current one (``5`` into
    ``/proc/self/clear_refs``, Linux >= 4.0); returns the current resident set in kB (None where
    /proc is missing)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kb("VmRSS")


def peak_rss() -> tuple[int, str]:
    """``(kB, source)``: this process's peak resident set: ``VmHWM`` (its own, since exec or the
    last :func:`reset_peak_rss`), else ``ru_maxrss`` (which includes a spawning parent's peak)."""
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm, "VmHWM"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def vm_workspace_bytes(vm, call) -> int:
    """Bytes of storage the Relax VM ``vm`` allocates during ``call()`` (its
    ``vm.builtin.alloc_storage`` calls, observed through ``set_instrument``); the instrument is
    removed afterwards."""
    total = 0

    def instrument(_func, symbol, before, _ret, *args):
        nonlocal total
        if before and symbol == "vm.builtin.alloc_storage":
            shape, dtype = args[1], args[3]
            total += int(np.prod([int(d) for d in shape])) * np.dtype(str(dtype)).itemsize
        return 0

    vm.set_instrument(instrument)
    try:
        call()
    finally:
        vm.set_instrument(None)
    return total


# --------------------------------------------------------------------------------------------------
# child processes


def _child_entry(fn, args, threads, conn) -> None:
    try:
        if threads is not None:
            os.environ["TVM_NUM_THREADS"] = str(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        from mmopt.errors import MmoptError

        kind = "mmopt" if isinstance(exc, MmoptError) else "error"
        text = exc.message if isinstance(exc, MmoptError) else f"{type(exc).__name__}: {exc}"
        conn.send((kind, text))


def call_in_child(fn, *args, threads: int | None = None, what: str = "", mask: str | None = None):
    """``fn(*args)`` in a freshly spawned process whose TVM (and OpenMP) thread pool has
    ``threads`` workers (and that runs under the CPUID mask ``mask`` when given); returns its
    (picklable) result.

    ``fn`` must be a module-level function. An :class:`~mmopt.errors.MmoptError` in the child is
    raised again here with its message; anything else as an ``MmoptError`` naming ``what``.
    """
    from mmopt.errors import MmoptError

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_entry, args=(fn, args, threads, child))
    with _spawn_environment(mask):
        proc.start()
    child.close()
    try:
        kind, payload = parent.recv()
    except EOFError:
        proc.join()
        raise MmoptError(f"{what or fn.__name__}: the worker process died (exit code "
                         f"{proc.exitcode})") from None
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    if kind == "mmopt":
        raise MmoptError(payload)
    if kind == "error":
        raise MmoptError(f"{what or fn.__name__} failed: {payload}")
    return payload


def _worker(engine: str, target: str, inputs_path: str, threads: int, warmup: int, conn) -> None:
    """Child process: load the engine and warm up, then run blocks of timed calls on request.

    Protocol on ``conn``: the child sends ``("ready", None)``; then each ``n`` received runs ``n``
    timed calls and answers ``("ok", seconds)``; ``None`` answers ``("done", memory)`` (a dict:
    ``peak_kb``, ``source``, ``baseline_kb``, ``rss_kb``, ``anon_kb``, ``workspace_bytes``).
    Failures answer
    ``("error", message)``.
    """
    try:
        os.environ["TVM_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        baseline_kb = reset_peak_rss()  # a fresh exec has its own peak already; this makes sure
        with np.load(inputs_path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
        workspace = None
        if engine == "mmopt":
            run, workspace = _mmopt_runner(target, feeds)
        else:
            run = _ort_runner(target, feeds, threads)
        for _ in range(warmup):
            run()
        conn.send(("ready", None))
        while (n := conn.recv()) is not None:
            seconds = []
            for _ in range(n):
                start = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - start)
            conn.send(("ok", seconds))
        peak_kb, source = peak_rss()  # before measuring the workspace (an extra call)
        from mmopt.runtime.cpu_mask import seen_isa

        conn.send(("done", {"peak_kb": peak_kb, "source": source, "baseline_kb": baseline_kb,
                            "rss_kb": _status_kb("VmRSS"), "anon_kb": _status_kb("RssAnon"),
                            "workspace_bytes": workspace() if workspace is not None else None,
                            "cpu_isa": seen_isa(),
                            "cpu_mask": os.environ.get("MMOPT_CPU_MASK") or None}))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _mmopt_runner(artifact: str, feeds):
    from mmopt.runtime.artifact import CompiledModel

    model = CompiledModel(artifact)
    args = model._arguments((), feeds)  # noqa: SLF001 - convert once, time only the call
    main = model._function  # noqa: SLF001 - the function these shapes run (dynamic: or a bucket)
    device = model.device

    def run():
        out = main(*args)
        device.sync()  # GPU kernels run asynchronously: the clock stops when the work is done
        return out

    def workspace() -> int:
        return vm_workspace_bytes(model._vm, run)  # noqa: SLF001

    return run, workspace


def _ort_runner(model_path: str, feeds, threads: int):
    from mmopt.runtime import ort

    session = ort.session(model_path, label="onnxruntime", optimization="all", threads=threads,
                          inter_op_threads=1)
    return lambda: session.run(None, feeds)


#: pause between blocks, at least: the previous engine's last call has returned, its worker threads
#: may still be running (see :func:`_settle`)
_SETTLE_S = 0.1
#: :func:`_settle` polls the other engines' CPU time this often, and waits at most this long
_IDLE_POLL_S = 0.02
_IDLE_WAIT_S = 2.0


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) process ``pid`` has used, from ``/proc/PID/stat``
    (in clock ticks, 10 ms on Linux); None where that cannot be read (not Linux, process gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is first
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _settle(pids: list[int]) -> float:
    """Wait until the processes ``pids`` (the engines not timed next) are idle; return the seconds
    waited.

    An engine's thread pool keeps its worker threads busy after a call returns, waiting for the
    next parallel task: TVM's workers call ``sched_yield`` 300000 times (about 125 ms of a core on
    an AMD EPYC Zen 5; ``TVM_THREAD_POOL_SPIN_COUNT``), onnxruntime's spin about 35 ms. On a
    machine with as many cores as threads per engine, a still-spinning engine takes a core from
    the one being timed: measured with MobileNetV2 at 2 threads on 2 cores, onnxruntime's calls
    right after an mmopt block took 4x their time (its 90th percentile 8.1-8.6 ms against a
    minimum of 1.9), which made its median say more about the harness than about onnxruntime.
    So after the fixed pause (:data:`_SETTLE_S`), the next block waits until the other engines'
    processes have used no CPU time over two polls (:data:`_IDLE_POLL_S` apart; the clock-tick
    counter moves once a spinning thread has run 10 ms), at most :data:`_IDLE_WAIT_S`. Where
    ``/proc`` is not there, the fixed pause is all."""
    start = time.perf_counter()
    time.sleep(_SETTLE_S)
    last = [_cpu_seconds(pid) for pid in pids]
    quiet = 0
    while quiet < 2 and time.perf_counter() - start < _IDLE_WAIT_S:
        if all(v is None for v in last):
            break
        time.sleep(_IDLE_POLL_S)
        now = [_cpu_seconds(pid) for pid in pids]
        quiet = quiet + 1 if now == last else 0
        last = now
    return time.perf_counter() - start


@contextlib.contextmanager
def _spawn_environment(mask: str | None):
    """This process's environment while a ``spawn`` child starts (the child inherits it): with the
    CPUID mask ``mask`` preloaded when given."""
    if mask is None:
        yield
        return
    from mmopt._environ import patched_environ
    from mmopt.runtime import cpu_mask

    changed = {k: v for k, v in cpu_mask.environment(mask).items() if os.environ.get(k) != v}
    with patched_environ(changed):
        yield


def time_engines(engines: list[tuple], feeds: dict[str, np.ndarray], *, threads: int,
                 warmup: int, repeat: int, rounds: int = 10) -> list[Timing]:
    """Time engines (``("mmopt", artifact)``, ``("onnxruntime", model.onnx)``) on the same inputs.

    Every engine lives in its own process; the timed calls are interleaved in ``rounds`` blocks
    (engine A, engine B, engine A, ...), so a slow phase of a shared machine hits all of them
    alike instead of only the one that happened to be running. A third element names a
    :mod:`~mmopt.runtime.cpu_mask` level the engine's process runs under
    (``("onnxruntime", model.onnx, "avx2")``: onnxruntime's AVX2 kernels on an AVX-512 CPU).
    """
    from mmopt.errors import MmoptError

    ctx = mp.get_context("spawn")
    workers = []

    def expect(engine, conn, kind, proc):
        try:
            status, payload = conn.recv()
        except EOFError:  # the worker died (a crash in the engine): say so instead of waiting
            proc.join(timeout=10)
            raise MmoptError(f"benchmark of {engine} failed: its process died (exit code "
                             f"{proc.exitcode}; a negative code is the signal, -11 a "
                             "segmentation fault)") from None
        if status == "error":
            raise MmoptError(f"benchmark of {engine} failed: {payload}")
        if status != kind:
            raise MmoptError(f"benchmark of {engine}: unexpected reply {status!r}")
        return payload

    with tempfile.TemporaryDirectory(prefix="mmopt-bench-") as tmp:
        inputs_path = os.path.join(tmp, "inputs.npz")
        np.savez(inputs_path, **feeds)
        try:
            for engine, target, *mask in engines:  # one at a time: loading is heavy
                mask = mask[0] if mask else None
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(engine, str(target), inputs_path,
                                                         threads, warmup, child))
                with _spawn_environment(mask):
                    proc.start()
                child.close()  # the worker's end: a worker that dies then ends recv() with EOF
                workers.append((engine, proc, parent))
                expect(engine, parent, "ready", proc)
            seconds: list[list[float]] = [[] for _ in workers]
            rounds = max(1, min(rounds, repeat))
            blocks = [repeat // rounds + (1 if i < repeat % rounds else 0) for i in range(rounds)]
            for block in blocks:
                for i, (engine, proc, conn) in enumerate(workers):
                    _settle([p.pid for j, (_e, p, _c) in enumerate(workers) if j != i])
                    conn.send(block)
                    seconds[i] += expect(engine, conn, "ok", proc)
            memory = []
            for engine, proc, conn in workers:
                conn.send(None)
                memory.append(expect(engine, conn, "done", proc))
        finally:
            for _engine, proc, _conn in workers:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
    return [_summarize(engine, threads, secs, mem)
            for (engine, _p, _c), secs, mem in zip(workers, seconds, memory)]


def time_engine(engine: str, target: str, feeds: dict[str, np.ndarray], *, threads: int,
                warmup: int, repeat: int) -> Timing:
    """Time one engine (``"mmopt"`` on an artifact path, ``"onnxruntime"`` on an .onnx path)."""
    return time_engines([(engine, target)], feeds, threads=threads, warmup=warmup,
                        repeat=repeat)[0]


#: ``ort_isa`` values of :func:`bench` besides the mask levels
ORT_ISA_CHOICES = ("auto", "native")


def ort_mask(target_name: str, ort_isa: str = "auto") -> tuple[str | None, list[str]]:
    """The CPUID mask onnxruntime runs under next to an artifact for ``target_name``, and notes.

    ``"auto"``: the mask that shows onnxruntime the artifact's ISA (an ``x86-avx2`` artifact on an
    AVX-512 CPU: ``"avx2"``), none when the artifact already uses the CPU's best ISA; where the
    mask is needed but unavailable, onnxruntime runs unmasked and a note says the comparison is
    not like-for-like. ``"native"``: never masked. A level (``"avx2"``): that mask, or an error.
    """
    from mmopt.errors import MmoptError
    from mmopt.runtime import cpu_mask

    if ort_isa == "native":
        return None, []
    if ort_isa == "auto":
        level = cpu_mask.level_for(target_name)
        if level is None:
            return None, []
        reason = cpu_mask.unavailable()
        if reason:
            return None, [f"onnxruntime ran with this CPU's AVX-512 kernels against {target_name} "
                          f"code (not like-for-like): {reason}"]
        return level, []
    if ort_isa not in cpu_mask.LEVELS:
        raise MmoptError(f"--ort-isa {ort_isa}: use one of "
                         f"{', '.join((*ORT_ISA_CHOICES, *cpu_mask.LEVELS))}")
    reason = cpu_mask.unavailable()
    if reason:
        raise MmoptError(f"--ort-isa {ort_isa}: {reason}")
    return ort_isa, []


def bench(artifact, reference_onnx=None, feeds=None, *, threads: int = 2, warmup: int = 5,
          repeat: int = 30, ort_isa: str = "auto") -> BenchResult:
    """Benchmark ``artifact`` (and onnxruntime on ``reference_onnx`` when given) on ``feeds``
    (seeded random inputs by default). ``ort_isa``: the ISA onnxruntime is shown (:func:`ort_mask`;
    by default the artifact's)."""
    from mmopt.runtime.artifact import read_meta

    meta = read_meta(artifact)
    if feeds is None:
        feeds = random_feeds(meta.inputs)
    engines = [("mmopt", str(artifact))]
    notes: list[str] = []
    if reference_onnx is not None:
        mask, notes = ort_mask(str(meta.target.get("name", "")), ort_isa)
        engines.append(("onnxruntime", str(reference_onnx), mask))
    timings = time_engines(engines, feeds, threads=threads, warmup=warmup, repeat=repeat)
    return BenchResult(str(Path(artifact)), timings[0], timings[1] if len(timings) > 1 else None,
                       notes)
