"""Latency benchmarks: a compiled artifact and onnxruntime, same inputs, same thread count.

Each engine runs in its own child process (``spawn``), so thread-pool settings cannot leak between
them and each one's peak memory (max resident set size of the child) is its own. Engines run one
after the other and report wall-clock latencies per call; the ratio is mmopt / onnxruntime.
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


def _worker(engine: str, target: str, inputs_path: str, threads: int, warmup: int, repeat: int,
            queue) -> None:
    """Child process: load the engine, warm up, time ``repeat`` calls; report through ``queue``."""
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
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        queue.put(("ok", seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}", 0))


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


def time_engine(engine: str, target: str, feeds: dict[str, np.ndarray], *, threads: int,
                warmup: int, repeat: int) -> Timing:
    """Time one engine (``"mmopt"`` on an artifact path, ``"onnxruntime"`` on an .onnx path)."""
    from mmopt.errors import MmoptError

    with tempfile.TemporaryDirectory(prefix="mmopt-bench-") as tmp:
        inputs_path = os.path.join(tmp, "inputs.npz")
        np.savez(inputs_path, **feeds)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker,
                           args=(engine, str(target), inputs_path, threads, warmup, repeat, queue))
        proc.start()
        status, payload, peak = queue.get()
        proc.join()
    if status != "ok":
        raise MmoptError(f"benchmark of {engine} failed: {payload}")
    return _summarize(engine, threads, payload, peak)


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
    mine = time_engine("mmopt", str(artifact), feeds, threads=threads, warmup=warmup, repeat=repeat)
    theirs = None
    if reference_onnx is not None:
        theirs = time_engine("onnxruntime", str(reference_onnx), feeds, threads=threads,
                             warmup=warmup, repeat=repeat)
    return BenchResult(str(Path(artifact)), mine, theirs)
