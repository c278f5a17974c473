"""The model side of tuning: the Relax module that compile sees, and end-to-end latency of a model
compiled with and without a tuning database (locally, or on a farm device)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmopt import ir as mir
from mmopt import targets as _targets
from mmopt.errors import MmoptError
from mmopt.passes import DEFAULT_LEVEL
from mmopt.runtime.inputs import random_inputs

logger = logging.getLogger(__name__)


def model_name(model) -> str:
    return Path(model).name if isinstance(model, (str, Path)) else "<ModelProto>"


def relax_module(model, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 opt_level: int = DEFAULT_LEVEL, *, dims=None, buckets=(), resolved=None):
    """``(Relax IRModule, prepared reference ONNX)`` exactly as ``mmopt.compile`` builds them.

    Tuning must see the same graph as compile (same passes, same opt level, same ``dims`` and
    ``buckets``): tasks are keyed by the structural hash of their TIR, so any difference in the
    graph means records that never apply. ``resolved``: a list the resolved
    :class:`mmopt.codegen.buckets.Bucket` objects are appended to.
    """
    from mmopt.api import front_end
    from mmopt.codegen.buckets import add_buckets, resolve_buckets
    from mmopt.codegen.relax_import import to_relax
    from mmopt.ir.dims import dim_ranges

    ranges = dim_ranges(dims)
    reference, optimized, _report = front_end(model, input_shapes, opt_level, dims=ranges)
    specs = {v.name: mir.dims_of(v) for v in mir.graph_inputs(optimized)}
    found = resolve_buckets(list(buckets), specs, ranges) if buckets else []
    if resolved is not None:
        resolved.extend(found)
    return (add_buckets(to_relax(optimized, where=model_name(model), dims=ranges), found, ranges),
            reference)


@dataclass
class LatencyComparison:
    """End-to-end latency of the model with default schedules and with the tuning records."""

    default_s: float
    tuned_s: float
    tasks_tuned: int
    tasks_total: int
    where: str

    @property
    def speedup(self) -> float:
        return self.default_s / self.tuned_s if self.tuned_s else float("inf")

    def to_dict(self) -> dict:
        return {"default_ms": self.default_s * 1e3, "tuned_ms": self.tuned_s * 1e3,
                "speedup": self.speedup, "tasks_tuned": self.tasks_tuned,
                "tasks_total": self.tasks_total, "where": self.where}


def compare_latency(model, target, database, *, input_shapes=None, opt_level: int = DEFAULT_LEVEL,
                    farm=None, key: str | None = None, number: int = 10, repeat: int = 5,
                    min_repeat_ms: int = 100, codegen=None, farm_secret=None,
                    allow_emulated_records: bool = False, dims=None,
                    buckets=()) -> LatencyComparison:
    """Compile ``model`` for ``target`` twice (default schedules; records of ``database`` applied)
    and time both, on this machine or on a device of ``key`` at ``farm``: the median of
    ``repeat`` samples, each the mean of at least ``number`` calls lasting ``min_repeat_ms``.
    ``codegen``: the code-generation settings of both builds (default: from the environment);
    ``farm_secret``: the farm secret (default ``$MMOPT_FARM_SECRET``); ``allow_emulated_records``:
    apply records measured on emulated devices too (to time a run tuned on one); ``dims``,
    ``buckets``: a dynamic model, timed at its first bucket (its specialized function)."""
    from mmopt.codegen.build import build
    from mmopt.codegen.options import CodegenOptions
    from mmopt.tuning.database import open_database

    tgt = _targets.get(target)
    if not farm:
        # Time with the threads a deployed model gets (the physical cores), not TVM's default
        # (half the logical cores on x86). Read when TVM's thread pool starts in this process, so
        # set before anything runs.
        from mmopt.runtime.threads import default_thread_count

        default_thread_count()
    resolved: list = []
    mod, reference = relax_module(model, input_shapes, opt_level, dims=dims, buckets=buckets,
                                  resolved=resolved)
    if dims and not resolved:
        raise MmoptError("timing a dynamic model needs a size: give --buckets")
    tgt = _targets.for_module(tgt, mod)  # as compile builds it: the same database identity
    function = resolved[0].function if resolved else "main"
    feeds = random_inputs(reference, 0, resolved[0].sizes if resolved else None)
    if resolved and farm:
        raise MmoptError("timing a dynamic model's bucket on a farm device is not supported yet; "
                         "time it on this machine (without --farm)")
    from mmopt.codegen.symbolic_dims import block_counts
    from mmopt.ir.dims import dim_ranges

    leading = block_counts(resolved[0].sizes, dim_ranges(dims)) if resolved else []
    db = open_database(database, tgt, allow_emulated=allow_emulated_records)
    with tempfile.TemporaryDirectory(prefix="mmopt-latency-") as tmp:
        paths = {}
        for label, database_ in (("default", None), ("tuned", db)):
            paths[label] = export_artifact(
                build(mod, tgt, database_, codegen or CodegenOptions.from_env()), tgt, reference,
                Path(tmp) / label)
        times = _time_side_by_side(paths, feeds, tgt, farm, key, number, repeat, min_repeat_ms,
                                   farm_secret, function, leading)
    where = f"device {key or tgt.rpc_key} at {farm}" if farm else "this machine"
    return LatencyComparison(times["default"], times["tuned"], len(set(db.applied)),
                             len(set(db.queried)), where)


def _time_side_by_side(paths: dict[str, Path], feeds, tgt, farm, key, number: int, repeat: int,
                       min_repeat_ms: int, farm_secret=None,
                       function: str = "main", leading=()) -> dict[str, float]:
    """Median latency of each artifact, all loaded at once on the same device and timed in
    alternation (``repeat`` rounds), so that drift in the machine's load affects all alike.
    ``function``: the VM function timed (a bucket's); ``leading``: its block-count shape argument
    (:func:`mmopt.codegen.symbolic_dims.block_counts`; empty: none)."""
    timers = {}
    if farm:
        from mmopt.tuning.farm import parse_address, request_session
        from mmopt.tuning.remote import RemoteModel

        address = parse_address(farm) if isinstance(farm, str) else tuple(farm)
        session = request_session(address, key or tgt.rpc_key, session_timeout=600,
                                  secret=farm_secret)
        for label, path in paths.items():
            model = RemoteModel(path, key or tgt.rpc_key, address, session=session)
            timers[label] = (lambda m=model: m.benchmark(feeds, number=number, repeat=1,
                                                         min_repeat_ms=min_repeat_ms).mean)
    else:
        if not tgt.runs_here():
            raise MmoptError(f"target {tgt.name} cannot run here ({tgt.why_not_here()}); time it "
                             "on a farm device (--farm HOST:PORT --key KEY)")
        import tvm
        from tvm import relax

        from mmopt.runtime.artifact import artifact_paths, read_meta

        device = tvm.cpu(0)
        for label, path in paths.items():
            so, _ = artifact_paths(path)
            meta = read_meta(path)
            vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), device)
            tensors = [tvm.runtime.tensor(np.ascontiguousarray(feeds[s.name]), device=device)
                       for s in meta.inputs]
            if leading:
                # the VM's set_input turns a shape into a tuple of tensors: the function itself
                # is timed, with its block-count shape first
                args = [tvm.runtime.ShapeTuple(list(leading)), *tensors]
                timer = vm.time_evaluator(function, device, number=number, repeat=1,
                                          min_repeat_ms=min_repeat_ms)
                timers[label] = (lambda t=timer, a=args: float(t(*a).mean))
                continue
            vm.set_input(function, *tensors)
            timer = vm.time_evaluator("invoke_stateful", device, number=number, repeat=1,
                                      min_repeat_ms=min_repeat_ms)
            timers[label] = (lambda t=timer: float(t(function).mean))
    samples: dict[str, list[float]] = {label: [] for label in timers}
    for _ in range(max(repeat, 1)):
        for label, timer in timers.items():
            samples[label].append(timer())
    return {label: float(np.median(values)) for label, values in samples.items()}


def export_artifact(executable, tgt, reference, prefix: Path) -> Path:
    """Write ``prefix.so`` + ``prefix.json`` (enough of an artifact for the runtime and farm)."""
    import tvm

    from mmopt import __version__
    from mmopt.codegen.build import export
    from mmopt.runtime.artifact import ArtifactMeta, TensorSpec, artifact_paths

    so, meta_path = artifact_paths(prefix)
    export(executable, tgt, so)
    ArtifactMeta(
        name=prefix.name,
        inputs=[TensorSpec(v.name, [d if isinstance(d, int) else str(d) for d in mir.dims_of(v)],
                           str(mir.dtype_of(v))) for v in mir.graph_inputs(reference)],
        outputs=[TensorSpec(v.name, [d if isinstance(d, int) else -1 for d in mir.dims_of(v)],
                            str(mir.dtype_of(v))) for v in reference.graph.output],
        target=tgt.to_dict(), source_model="", source_sha256="", passes_applied=[],
        opt_level=None, mmopt_version=__version__, tvm_version=str(tvm.__version__), created="",
    ).write(meta_path)
    return prefix
