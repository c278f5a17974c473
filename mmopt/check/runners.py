"""Runners: one interface over everything ``mmopt check`` can execute.

A :class:`Runner` takes ``{input name: array}`` for one sample and returns ``{output name: array}``.
:func:`open_runner` picks the implementation from what it is given:

==============================================  =================================================
source                                          runner
==============================================  =================================================
a :class:`Runner`                               used as is
``onnx.ModelProto``, ``*.onnx``, ``zoo:NAME``   :class:`OnnxRunner` (onnxruntime, CPU, on ``engine``)
``NAME.so`` / ``NAME.json`` / ``NAME`` (pair)   :class:`ArtifactRunner` (a compiled mmopt artifact)
a :class:`~mmopt.runtime.CompiledModel`         :class:`ArtifactRunner`
anything a registered probe accepts             what its factory returns (see :func:`register_runner`)
==============================================  =================================================

ONNX models run on one of the engines of :mod:`mmopt.runtime.ort` (``--eval-engine``): ``reference``
(the default: graph optimizations off, so a QDQ model computes dequantize -> float op -> quantize,
the same on every CPU) or ``onnxruntime`` (onnxruntime's default optimizations: fused int8 kernels,
whose results depend on the CPU; for models shipped on onnxruntime).

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

from mmopt.errors import MmoptError
from mmopt.runtime import ort

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
    """An ONNX model on onnxruntime's CPU provider, executed by ``engine`` (module docs)."""

    kind = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, label: str, *, engine: str = ort.DEFAULT_ENGINE):
        super().__init__(label)
        from mmopt import ir as mir

        self.model = model
        self.engine = ort.check_engine(engine)
        self.kind = f"onnxruntime, {self.engine} engine"
        self._inputs = [InputSpec(name, dims, dtype)
                        for name, (dims, dtype) in mir.input_specs(model).items()]
        self._session = ort.engine_session(model, self.engine, label=label)
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def inputs(self) -> list[InputSpec]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def __call__(self, feeds):
        return dict(zip(self._outputs, ort.run(self._session, feeds, label=self.label)))


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


def open_runner(source, role: str = "model", *, engine: str = ort.DEFAULT_ENGINE) -> Runner:
    """A :class:`Runner` for ``source``; ``role`` ("reference", "candidate") names it in errors.

    ONNX models (files, protos, ``zoo:NAME``, frontend imports) run on ``engine``; a given
    :class:`Runner`, a compiled artifact and a registered factory's runner run as they are.
    """
    engine = ort.check_engine(engine)
    if isinstance(source, Runner):
        return source
    if isinstance(source, onnx.ModelProto):
        return OnnxRunner(source, f"<{role} ModelProto>", engine=engine)
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

        return _onnx_runner(zoo_model(text[4:]), text, engine)
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
            return OnnxRunner(frontends.to_onnx(path), f"{text} (imported from {framework})",
                              engine=engine)
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
    return _onnx_runner(text, text, engine)


def _onnx_runner(path: str, label: str, engine: str) -> OnnxRunner:
    from mmopt import ir as mir

    return OnnxRunner(mir.load(path), label, engine=engine)
