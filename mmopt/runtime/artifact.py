"""Compiled artifacts: ``NAME.so`` (TVM Relax VM executable) + ``NAME.json`` (what it is and how to call it).

The JSON is the contract between the compiler and everything that runs an artifact (``mmopt run``,
``bench``, ``check``, a farm device): input/output names, shapes and dtypes in call order, the target,
the versions that produced it, the passes applied and the sha256 of the source model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmopt.errors import MmoptError, summarize
from mmopt.runtime.threads import default_thread_count

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

# TVM pins its worker threads to cores by default. On a machine where other processes also run
# (CI runners, shared servers), a pinned worker cannot move off a busy core and every parallel
# kernel waits for it: measured 2-3x slower end-to-end on a loaded 2-core machine. Unpinned
# threads are what onnxruntime uses too. Set TVM_BIND_THREADS=1 to pin anyway. This must happen
# before TVM's thread pool starts (the first parallel kernel), hence at import.
os.environ.setdefault("TVM_BIND_THREADS", "0")
# As many as the physical cores, not TVM's default of half the logical CPUs (mmopt.runtime.threads).
default_thread_count()


@dataclass
class TensorSpec:
    name: str
    #: ints, and for symbolic dims their names (``[1, 3, "height", "width"]``; see ``dims``);
    #: outputs: -1 where the size depends on the inputs in a way not named
    shape: list
    dtype: str

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


@dataclass
class ArtifactMeta:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: dict
    source_model: str
    source_sha256: str
    passes_applied: list[str]
    opt_level: int | None
    mmopt_version: str
    tvm_version: str
    created: str
    verification: dict | None = None
    #: code-generation settings (:mod:`mmopt.codegen.options`); empty in older artifacts
    codegen: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: symbolic dims (``--dim``): ``{name: {"min", "max", "multiple"}}``; empty: static shapes
    dims: dict = field(default_factory=dict)
    #: statically specialized functions (``--buckets``): ``[{"function", "sizes": {dim: size},
    #: "inputs": {input: shape}}]``; calls of exactly those sizes run them
    buckets: list = field(default_factory=list)

    @property
    def dynamic(self) -> bool:
        return bool(self.dims)

    def dim_ranges(self) -> dict:
        from mmopt.ir.dims import DimRange

        return {name: DimRange.from_dict(name, r) for name, r in self.dims.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactMeta:
        data = dict(data)
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        return cls(**data)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def artifact_paths(path) -> tuple[Path, Path]:
    """``(NAME.so, NAME.json)`` for an artifact given as ``NAME``, ``NAME.so`` or ``NAME.json``."""
    path = Path(path)
    if path.suffix in (".so", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".so"), path.with_name(path.name + ".json")


def is_artifact(path) -> bool:
    """Whether ``path`` names a compiled artifact: ``NAME``/``NAME.so``/``NAME.json`` with both files."""
    so, meta = artifact_paths(path)
    return so.exists() and meta.exists()


def read_meta(path) -> ArtifactMeta:
    so, meta_path = artifact_paths(path)
    if not meta_path.exists():
        raise MmoptError(f"{meta_path}: no such file; an mmopt artifact is NAME.so + NAME.json "
                         "(written by `mmopt compile`)")
    try:
        return ArtifactMeta.from_dict(json.loads(meta_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise MmoptError(f"{meta_path}: not an mmopt artifact description ({exc})") from exc


class CompiledModel:
    """A loaded artifact: call it with numpy arrays (by name or in order), get ``{name: array}``."""

    def __init__(self, path, device_id: int = 0):
        from mmopt import targets

        self.so_path, self.meta_path = artifact_paths(path)
        self.meta = read_meta(path)
        target_name = self.meta.target.get("name", "?")
        target = targets.registry().get(target_name)
        if target is not None and not target.runs_here():
            raise MmoptError(f"{self.so_path}: built for target {target_name}, which cannot run "
                             f"here: {target.why_not_here()}")
        if not self.so_path.exists():
            raise MmoptError(f"{self.so_path}: no such file (the artifact's library is missing)")
        import tvm
        from tvm import relax

        self.device = tvm.cuda(device_id) if self.meta.target.get("device") == "cuda" else tvm.cpu(0)
        try:
            lib = tvm.runtime.load_module(str(self.so_path))
        except Exception as exc:  # noqa: BLE001
            raise MmoptError(f"{self.so_path}: cannot load the library ({summarize(exc)})") from exc
        self._vm = relax.VirtualMachine(lib, self.device)
        self._main = self._vm["main"]
        self._ranges = self.meta.dim_ranges()
        #: dims with a multiple are passed to the compiled functions as block counts, in a leading
        #: shape argument (mmopt.codegen.symbolic_dims.with_block_argument)
        from mmopt.codegen.symbolic_dims import block_dims

        self._block_dims = block_dims(self._ranges)
        self._buckets = {tuple(sorted(b["sizes"].items())): b["function"]
                         for b in self.meta.buckets}
        #: dynamic artifacts: (function, input tensors, numpy views) per input-shape set seen
        self._by_shape: dict[tuple, tuple] = {}
        if self.meta.dynamic:
            self._input_tensors = self._input_views = None
            self._on_cpu = self.device.dlpack_device_type() == 1  # kDLCPU
            return
        # Per-call cost: on a model of ~5 us, converting numpy arrays to fresh TVM tensors and
        # back cost 28 us. Inputs are copied into tensors allocated once (through a numpy view of
        # their memory on the CPU: np.copyto also casts within a dtype kind and handles strides);
        # outputs are copied out of the VM's tensors through DLPack.
        self._input_tensors = [tvm.runtime.empty(t.shape, t.dtype, self.device)
                               for t in self.meta.inputs]
        self._on_cpu = self.device.dlpack_device_type() == 1  # kDLCPU
        self._input_views = ([np.from_dlpack(t) for t in self._input_tensors] if self._on_cpu
                             else None)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.meta.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.meta.outputs]

    def _arguments(self, args: tuple, kwargs: Mapping[str, np.ndarray]) -> list:
        import tvm

        if args and kwargs:
            raise MmoptError("pass inputs either in order or by name, not both")
        if args:
            if len(args) != len(self.meta.inputs):
                raise MmoptError(f"expected {len(self.meta.inputs)} input(s) "
                                 f"({', '.join(self.input_names)}), got {len(args)}")
            kwargs = dict(zip(self.input_names, args))
        missing = [n for n in self.input_names if n not in kwargs]
        extra = [n for n in kwargs if n not in self.input_names]
        if missing or extra:
            raise MmoptError(
                "inputs do not match the artifact: "
                + (f"missing {', '.join(missing)}; " if missing else "")
                + (f"unknown {', '.join(extra)}; " if extra else "")
                + f"expected {', '.join(self.input_names)}"
            )
        arrays = [np.asarray(kwargs[spec.name]) for spec in self.meta.inputs]
        tensors, views = self._input_tensors, self._input_views
        self._function = self._main
        if self.meta.dynamic:
            self._function, tensors, views = self._for_shapes(arrays)
        for i, (spec, array) in enumerate(zip(self.meta.inputs, arrays)):
            if not self.meta.dynamic and list(array.shape) != list(spec.shape):
                raise MmoptError(f"input {spec.name}: shape {list(array.shape)} given, the artifact "
                                 f"was compiled for {spec.shape}")
            if array.dtype != np.dtype(spec.dtype) and array.dtype.kind != np.dtype(spec.dtype).kind:
                raise MmoptError(f"input {spec.name}: dtype {array.dtype} given, expected "
                                 f"{spec.dtype}")
            if views is not None:
                np.copyto(views[i], array, casting="unsafe")
            else:
                tensors[i].copyfrom(
                    np.require(array.astype(spec.dtype, copy=False), requirements="C"))
        return tensors

    def function_for(self, shapes) -> str:
        """Which compiled function a call with input ``shapes`` (``{name: shape}`` or a list in
        call order) runs: ``"main"`` (the dynamic kernels) or a bucket's function. Raises a
        one-line :class:`MmoptError` for shapes the artifact does not accept."""
        if not isinstance(shapes, Mapping):
            shapes = dict(zip(self.input_names, shapes))
        sizes = self._sizes({n: list(s) for n, s in shapes.items()})
        return self._buckets.get(tuple(sorted(sizes.items())), "main")

    def _sizes(self, shapes: Mapping[str, list]) -> dict:
        from mmopt.ir.dims import bind_sizes

        specs = {s.name: s.shape for s in self.meta.inputs}
        return bind_sizes(specs, shapes, self._ranges)

    def _for_shapes(self, arrays: list[np.ndarray]):
        """(function, input tensors, numpy views) for a call of a dynamic artifact with ``arrays``
        (their shapes checked against the dims' ranges); kept for the shapes seen last."""
        import tvm

        key = tuple(a.shape for a in arrays)
        hit = self._by_shape.get(key)
        if hit is not None:
            return hit
        sizes = self._sizes({s.name: list(a.shape) for s, a in zip(self.meta.inputs, arrays)})
        name = self._buckets.get(tuple(sorted(sizes.items())), "main")
        function = self._main if name == "main" else self._vm[name]
        tensors = [tvm.runtime.empty(a.shape, s.dtype, self.device)
                   for s, a in zip(self.meta.inputs, arrays)]
        views = [np.from_dlpack(t) for t in tensors] if self._on_cpu else None
        if self._block_dims:
            from mmopt.codegen.symbolic_dims import block_counts

            function = _with_leading(function, tvm.runtime.ShapeTuple(block_counts(sizes,
                                                                                    self._ranges)))
        if len(self._by_shape) >= 8:  # a few shapes stay allocated, not every size ever seen
            self._by_shape.pop(next(iter(self._by_shape)))
        self._by_shape[key] = (function, tensors, views)
        return self._by_shape[key]

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Run once. Inputs are copied into buffers the model owns, so one ``CompiledModel`` is
        not for concurrent calls from several threads (load one per thread)."""
        tensors = self._arguments(args, kwargs)
        result = self._function(*tensors)
        arrays = _flatten(result, self._on_cpu)
        if len(arrays) != len(self.meta.outputs):
            raise MmoptError(f"{self.so_path}: returned {len(arrays)} output(s), the description "
                             f"lists {len(self.meta.outputs)}")
        return dict(zip(self.output_names, arrays))


def _with_leading(function, first):
    """``function`` with ``first`` passed before the other arguments."""
    return lambda *args: function(first, *args)


def _flatten(value, on_cpu: bool = False) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        # a copy: the VM may hand the same memory out again on the next call
        return [np.from_dlpack(value).copy() if on_cpu else value.numpy()]
    out: list[np.ndarray] = []
    for item in value:
        out.extend(_flatten(item, on_cpu))
    return out



def load(path, device_id: int = 0) -> CompiledModel:
    """Load an artifact (``NAME``, ``NAME.so`` or ``NAME.json``) for local execution."""
    return CompiledModel(path, device_id)
