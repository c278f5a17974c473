"""Latency benchmarks: a compiled artifact and onnxruntime, same inputs, same thread count.

Each engine runs in its own child process (``spawn``), so thread-pool settings cannot leak between
them and each one's peak memory (max resident set size of the child) is its own. The timed calls
are interleaved in blocks (mmopt, onnxruntime, mmopt, ...) so both engines see the same machine;
latencies are wall-clock per call; the ratio is mmopt / onnxruntime.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


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
    peak_rss_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchResult:
    model: str
    mmopt: Timing
    onnxruntime: Timing | None = None

    @property
    def ratio(self) -> float | None:
        """mmopt median latency / onnxruntime median latency (< 1: mmopt is faster)."""
        if self.onnxruntime is None:
            return None
        return self.mmopt.median_ms / self.onnxruntime.median_ms

    def to_dict(self) -> dict:
        return {"model": self.model, "mmopt": self.mmopt.to_dict(),
                "onnxruntime": self.onnxruntime.to_dict() if self.onnxruntime else None,
                "ratio": self.ratio}


def _summarize(engine: str, threads: int, seconds: list[float], peak_kb: int) -> Timing:
    ms = sorted(s * 1e3 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    median = statistics.median(ms)
    return Timing(engine, threads, len(ms), ms[0], median, p90, statistics.fmean(ms),
                  1e3 / median if median > 0 else float("inf"), peak_kb / 1024.0)


def _worker(engine: str, target: str, inputs_path: str, threads: int, warmup: int, conn) -> None:
    """Child process: load the engine and warm up, then run blocks of timed calls on request.

    Protocol on ``conn``: the child sends ``("ready", None)``; then each ``n`` received runs ``n``
    timed calls and answers ``("ok", seconds)``; ``None`` answers ``("done", peak_rss_kb)``.
    Failures answer ``("error", message)``.
    """
    try:
        os.environ["TVM_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import resource

        with np.load(inputs_path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
        if engine == "mmopt":
            run = _mmopt_runner(target, feeds)
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
        conn.send(("done", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _mmopt_runner(artifact: str, feeds):
    from mmopt.runtime.artifact import CompiledModel

    model = CompiledModel(artifact)
    args = model._arguments((), feeds)  # noqa: SLF001 - convert once, time only the call
    main = model._main  # noqa: SLF001
    device = model.device

    def run():
        out = main(*args)
        device.sync()  # GPU kernels run asynchronously: the clock stops when the work is done
        return out

    return run


def _ort_runner(model_path: str, feeds, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


#: pause between blocks, so the previous engine's spinning worker threads have gone to sleep
_SETTLE_S = 0.1


def time_engines(engines: list[tuple[str, str]], feeds: dict[str, np.ndarray], *, threads: int,
                 warmup: int, repeat: int, rounds: int = 10) -> list[Timing]:
    """Time engines (``("mmopt", artifact)``, ``("onnxruntime", model.onnx)``) on the same inputs.

    Every engine lives in its own process; the timed calls are interleaved in ``rounds`` blocks
    (engine A, engine B, engine A, ...), so a slow phase of a shared machine hits all of them
    alike instead of only the one that happened to be running.
    """
    from mmopt.errors import MmoptError

    ctx = mp.get_context("spawn")
    workers = []

    def expect(engine, conn, kind):
        status, payload = conn.recv()
        if status == "error":
            raise MmoptError(f"benchmark of {engine} failed: {payload}")
        if status != kind:
            raise MmoptError(f"benchmark of {engine}: unexpected reply {status!r}")
        return payload

    with tempfile.TemporaryDirectory(prefix="mmopt-bench-") as tmp:
        inputs_path = os.path.join(tmp, "inputs.npz")
        np.savez(inputs_path, **feeds)
        try:
            for engine, target in engines:  # one at a time: loading is not timed but is heavy
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(engine, str(target), inputs_path,
                                                         threads, warmup, child))
                proc.start()
                workers.append((engine, proc, parent))
                expect(engine, parent, "ready")
            seconds: list[list[float]] = [[] for _ in workers]
            rounds = max(1, min(rounds, repeat))
            blocks = [repeat // rounds + (1 if i < repeat % rounds else 0) for i in range(rounds)]
            for block in blocks:
                for i, (engine, _proc, conn) in enumerate(workers):
                    time.sleep(_SETTLE_S)
                    conn.send(block)
                    seconds[i] += expect(engine, conn, "ok")
            peaks = []
            for engine, _proc, conn in workers:
                conn.send(None)
                peaks.append(expect(engine, conn, "done"))
        finally:
            for _engine, proc, _conn in workers:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
    return [_summarize(engine, threads, secs, peak)
            for (engine, _p, _c), secs, peak in zip(workers, seconds, peaks)]


def time_engine(engine: str, target: str, feeds: dict[str, np.ndarray], *, threads: int,
                warmup: int, repeat: int) -> Timing:
    """Time one engine (``"mmopt"`` on an artifact path, ``"onnxruntime"`` on an .onnx path)."""
    return time_engines([(engine, target)], feeds, threads=threads, warmup=warmup,
                        repeat=repeat)[0]


def bench(artifact, reference_onnx=None, feeds=None, *, threads: int = 2, warmup: int = 5,
          repeat: int = 30) -> BenchResult:
    """Benchmark ``artifact`` (and onnxruntime on ``reference_onnx`` when given) on ``feeds``
    (seeded random inputs by default)."""
    from mmopt.runtime.artifact import read_meta

    meta = read_meta(artifact)
    if feeds is None:
        rng = np.random.default_rng(0)
        feeds = {s.name: rng.random(s.shape, dtype=np.float32).astype(s.dtype)
                 if np.dtype(s.dtype).kind == "f" else rng.integers(0, 4, s.shape).astype(s.dtype)
                 for s in meta.inputs}
    engines = [("mmopt", str(artifact))]
    if reference_onnx is not None:
        engines.append(("onnxruntime", str(reference_onnx)))
    timings = time_engines(engines, feeds, threads=threads, warmup=warmup, repeat=repeat)
    return BenchResult(str(Path(artifact)), timings[0], timings[1] if len(timings) > 1 else None)
