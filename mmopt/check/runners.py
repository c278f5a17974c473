"""Runners: one interface over everything ``mmopt check`` can execute.

A :class:`Runner` takes ``{input name: array}`` for one sample and returns ``{output name: array}``.
:func:`open_runner` picks the implementation from what it is given:

==============================================  =================================================
source                                          runner
==============================================  =================================================
a :class:`Runner`                               used as is
``onnx.ModelProto``, ``*.onnx``, ``zoo:NAME``   :class:`OnnxRunner` (onnxruntime, CPU)
``NAME.so`` / ``NAME.json`` / ``NAME`` (pair)   :class:`ArtifactRunner` (a compiled mmopt artifact)
a :class:`~mmopt.runtime.CompiledModel`         :class:`ArtifactRunner`
anything a registered probe accepts             what its factory returns (see :func:`register_runner`)
==============================================  =================================================

Source-framework models (PyTorch, TensorFlow, TFLite, Caffe) come in through
:func:`register_runner`: a frontend registers a probe (``path -> bool``) and a factory
(``path -> Runner``). The factory may convert the model to ONNX and return an :class:`OnnxRunner`, or
run the framework itself. Registered probes are tried before the built-in rules.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mmopt.errors import MmoptError, summarize

logger = logging.getLogger(__name__)

#: dims of an input: int for fixed, str for symbolic, None for unknown
Dims = tuple


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: Dims
    dtype: np.dtype


class Runner(ABC):
    """Runs one model on one sample at a time."""

    #: short kind shown in reports: "onnxruntime", "artifact", or a frontend's name
    kind: str = "?"

    def __init__(self, label: str):
        #: what the user named (a path, ``zoo:NAME``, ``<ModelProto>``)
        self.label = label

    @property
    @abstractmethod
    def inputs(self) -> list[InputSpec]:
        """The model's inputs in call order."""

    @property
    @abstractmethod
    def output_names(self) -> list[str]:
        """The model's outputs in order."""

    @abstractmethod
    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one sample."""

    def describe(self) -> str:
        return f"{self.label} ({self.kind})"


class OnnxRunner(Runner):
    """An ONNX model on onnxruntime's CPU provider.

    ``optimize=True`` keeps onnxruntime's default graph optimizations, so a QDQ model runs on its int8
    kernels as it would when deployed; per-layer comparison turns them off to keep every tensor name.
    """

    kind = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, label: str, *, optimize: bool = True):
        super().__init__(label)
        from mmopt import ir as mir

        self.model = model
        self._inputs = [InputSpec(name, dims, dtype)
                        for name, (dims, dtype) in mir.input_specs(model).items()]
        self._session = make_session(model, label, optimize=optimize)
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def inputs(self) -> list[InputSpec]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def __call__(self, feeds):
        return dict(zip(self._outputs, run_session(self._session, feeds, self.label)))


def make_session(model: onnx.ModelProto, label: str, *, optimize: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise MmoptError(f"{label}: onnxruntime cannot load the model ({summarize(exc)})") from exc


def run_session(session, feeds: Mapping[str, np.ndarray], label: str,
                names: list[str] | None = None) -> list[np.ndarray]:
    try:
        return session.run(names, dict(feeds))
    except Exception as exc:  # noqa: BLE001
        raise MmoptError(f"{label}: onnxruntime failed to run ({summarize(exc)})") from exc


class ArtifactRunner(Runner):
    """A compiled mmopt artifact (``NAME.so`` + ``NAME.json``) run on this machine."""

    kind = "artifact"

    def __init__(self, compiled, label: str):
        super().__init__(label)
        self.compiled = compiled
        meta = compiled.meta
        self.kind = f"artifact, {meta.target.get('name', '?')}"
        self._inputs = [InputSpec(t.name, tuple(t.shape), np.dtype(t.dtype)) for t in meta.inputs]

    @property
    def inputs(self) -> list[InputSpec]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self.compiled.output_names

    def __call__(self, feeds):
        return self.compiled(**feeds)


# --------------------------------------------------------------------------------------------------
# choosing a runner

#: (name, probe, factory); tried in order before the built-in rules
_PLUGINS: list[tuple[str, Callable[[str], bool], Callable[[str], Runner]]] = []

#: files of source frameworks that no frontend handles yet (frontends are tried first)
_FRAMEWORK_SUFFIXES = {
    ".pt": "PyTorch", ".pth": "PyTorch", ".pt2": "PyTorch", ".ts": "TorchScript",
    ".pb": "TensorFlow", ".h5": "Keras", ".keras": "Keras", ".tflite": "TFLite",
    ".caffemodel": "Caffe", ".prototxt": "Caffe",
}


def register_runner(name: str, probe: Callable[[str], bool],
                    factory: Callable[[str], Runner]) -> None:
    """Let ``mmopt check`` run another kind of model (the hook for source-framework frontends).

    ``probe(path)`` says whether ``factory(path)`` can run ``path``; registering a name again
    replaces the earlier entry.
    """
    _PLUGINS[:] = [p for p in _PLUGINS if p[0] != name]
    _PLUGINS.append((name, probe, factory))


def open_runner(source, role: str = "model") -> Runner:
    """A :class:`Runner` for ``source``; ``role`` ("reference", "candidate") names it in errors."""
    if isinstance(source, Runner):
        return source
    if isinstance(source, onnx.ModelProto):
        return OnnxRunner(source, f"<{role} ModelProto>")
    from mmopt.runtime import CompiledModel

    if isinstance(source, CompiledModel):
        return ArtifactRunner(source, str(source.so_path))
    if not isinstance(source, (str, os.PathLike)):
        raise MmoptError(f"{role}: expected a model path, an onnx.ModelProto or a Runner, got "
                         f"{type(source).__name__}")
    text = str(source)
    for _name, probe, factory in _PLUGINS:
        if probe(text):
            return factory(text)
    if text.startswith("zoo:"):
        from mmopt.zoo import zoo_model

        return _onnx_runner(zoo_model(text[4:]), text)
    path = Path(text)
    from mmopt.runtime import is_artifact

    if is_artifact(path):
        from mmopt.runtime import load

        return ArtifactRunner(load(path), text)
    suffix = path.suffix.lower()
    if (path.is_file() and suffix != ".onnx") or path.is_dir():
        # a source-framework model a frontend can import: run its ONNX import on onnxruntime
        from mmopt import frontends

        try:
            framework = frontends.detect(path)
        except MmoptError:
            framework = None
        if framework not in (None, "onnx"):
            return OnnxRunner(frontends.to_onnx(path), f"{text} (imported from {framework})")
    if suffix in _FRAMEWORK_SUFFIXES:
        raise MmoptError(f"{role} {text}: {_FRAMEWORK_SUFFIXES[suffix]} models cannot be run by "
                         "`mmopt check` yet; export the model to ONNX and check that")
    if suffix in (".so", ".json"):
        from mmopt.runtime import artifact_paths

        so, meta = artifact_paths(path)
        missing = so if not so.exists() else meta
        raise MmoptError(f"{role} {text}: {missing} is missing; a compiled artifact is "
                         "NAME.so + NAME.json (written by `mmopt compile`)")
    if not path.exists():
        raise MmoptError(f"{role} {text}: no such file (expected an .onnx model or a compiled "
                         "artifact NAME.so + NAME.json)")
    if path.is_dir():
        raise MmoptError(f"{role} {text}: is a directory; source-framework model directories "
                         "(e.g. TensorFlow SavedModel) cannot be run by `mmopt check` yet")
    return _onnx_runner(text, text)


def _onnx_runner(path: str, label: str) -> OnnxRunner:
    from mmopt import ir as mir

    return OnnxRunner(mir.load(path), label)
