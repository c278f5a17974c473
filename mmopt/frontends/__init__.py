"""Frontends: a model from another framework in, an ONNX ``ModelProto`` out.

    from mmopt import frontends
    frontends.detect("deploy.prototxt")                  # "caffe"
    frontends.detect("saved_model_dir/")                 # "tensorflow"
    model = frontends.to_onnx("resnet18.pt2")            # onnx.ModelProto
    model = frontends.from_torch(module, (x,))           # from a live nn.Module

Every frontend is described by one :class:`Frontend` entry in :data:`FRONTENDS` (data, not if-chains):
its file suffixes, an optional content sniffer, the module that converts, and the pip extra that
brings its heavy dependency. :func:`detect` picks the entry by suffix and content; :func:`to_onnx`
calls the entry's ``to_onnx(path, **options)`` and checks the result. A missing dependency is an
:class:`MmoptError` naming the extra to install. To add a framework, add its module and an entry.

Options that come from the command line of any verb (``--random-weights``) reach every
:func:`to_onnx` under :func:`import_options`, so verbs whose models pass through other modules
(quantize, check, tune, ...) need not thread them through::

    with frontends.import_options(random_weights=True):
        mmopt.compile("deploy.prototxt", "x86")      # Caffe net with seeded random weights

A model imported with random weights says so in its metadata (:data:`RANDOM_WEIGHTS_KEY`), so
the artifact compiled from it (even via a saved ``.onnx``) records it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from mmopt.errors import MmoptError, ModelLoadError

logger = logging.getLogger(__name__)

#: options every frontend may receive from a generic caller (compile, optimize, ...); a frontend
#: whose ``to_onnx`` does not take one of these just does not get it
GENERIC_OPTIONS = ("input_shapes",)
#: metadata_props key a frontend sets (to "true") on a model whose weights it generated
RANDOM_WEIGHTS_KEY = "mmopt.random_weights"
#: options set with :func:`import_options`: defaults for every :func:`to_onnx` in the block
_IMPORT_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("mmopt_import_options",
                                                                      default={})


@contextlib.contextmanager
def import_options(**options) -> Iterator[None]:
    """Defaults for the frontend options of every :func:`to_onnx` call in the block (an explicit
    argument wins; ``None`` values are not set). A frontend that does not take an option is told
    nothing, and a warning says the option did not apply."""
    token = _IMPORT_OPTIONS.set({**_IMPORT_OPTIONS.get(),
                                 **{k: v for k, v in options.items() if v is not None}})
    try:
        yield
    finally:
        _IMPORT_OPTIONS.reset(token)


def has_random_weights(model: onnx.ModelProto) -> bool:
    """Whether a frontend generated ``model``'s weights (``--random-weights``)."""
    return any(p.key == RANDOM_WEIGHTS_KEY and p.value == "true" for p in model.metadata_props)


@dataclass(frozen=True)
class Frontend:
    name: str
    #: lower-case file suffixes that select this frontend outright
    suffixes: tuple[str, ...]
    #: module with ``to_onnx(path, **options) -> onnx.ModelProto``
    module: str
    #: ``(path, head) -> bool``: whether the file's content is this framework's (head = first 4 KiB)
    sniff: Callable[[Path, bytes], bool] | None = None
    #: importable packages the frontend needs, and the pip extra that installs them
    requires: tuple[str, ...] = ()
    extra: str | None = None
    #: when True the suffix alone is not enough: the sniffer must agree (e.g. ``.pt`` may be a pickle)
    suffix_needs_sniff: bool = False
    description: str = ""
    #: ``(directory) -> bool``: whether a directory is a model of this framework (a SavedModel)
    sniff_dir: Callable[[Path], bool] | None = None

    def load(self):
        missing = [r for r in self.requires if importlib.util.find_spec(r) is None]
        if missing:
            hint = f"pip install 'mmopt[{self.extra}]'" if self.extra else "pip install " + " ".join(missing)
            raise MmoptError(f"the {self.name} frontend needs {', '.join(missing)}, which is not "
                             f"installed; install it with: {hint}")
        return importlib.import_module(self.module)


def _sniff_caffe_text(path: Path, head: bytes) -> bool:
    from mmopt.frontends.caffe import looks_like_prototxt

    return looks_like_prototxt(head)


def _sniff_torch(path: Path, head: bytes) -> bool:
    from mmopt.frontends.torch import sniff  # does not import torch

    return sniff(path, head) is not None


def _sniff_tensorflow(path: Path, head: bytes) -> bool:
    from mmopt.frontends.tensorflow import sniff  # does not import tensorflow

    return sniff(path, head) is not None


def _sniff_saved_model(path: Path) -> bool:
    from mmopt.frontends.tensorflow import is_saved_model

    return is_saved_model(path)


def _sniff_tflite(path: Path, head: bytes) -> bool:
    from mmopt.frontends.tflite import sniff

    return sniff(head)


def _sniff_onnx(path: Path, head: bytes) -> bool:
    # ModelProto starts with ir_version (field 1, varint: 0x08) in files written by onnx/exporters
    return head[:1] == b"\x08" and len(head) > 2 and 3 <= head[1] <= 20


FRONTENDS: tuple[Frontend, ...] = (
    Frontend("onnx", (".onnx",), "mmopt.frontends.onnx_frontend", _sniff_onnx,
             description="ONNX model (.onnx)"),
    Frontend("caffe", (".prototxt", ".caffemodel"), "mmopt.frontends.caffe", _sniff_caffe_text,
             extra="caffe", description="Caffe deploy .prototxt (+ .caffemodel weights)"),
    Frontend("torch", (".pt2", ".pt", ".pth", ".torchscript", ".ptl", ".jit"), "mmopt.frontends.torch",
             _sniff_torch, requires=("torch",), extra="torch", suffix_needs_sniff=True,
             description="PyTorch .pt2 (torch.export.save) or TorchScript archive (torch.jit.save)"),
    Frontend("tensorflow", (".keras", ".h5", ".hdf5", ".pb"), "mmopt.frontends.tensorflow",
             _sniff_tensorflow, requires=("tensorflow", "tf2onnx"), extra="tf",
             suffix_needs_sniff=True, sniff_dir=_sniff_saved_model,
             description="TensorFlow SavedModel directory, Keras .keras/.h5, frozen GraphDef .pb"),
    Frontend("tflite", (".tflite",), "mmopt.frontends.tflite", _sniff_tflite,
             requires=("tensorflow", "tf2onnx"), extra="tf",
             description="TensorFlow Lite flatbuffer (.tflite)"),
)


def frontend(name: str) -> Frontend:
    for f in FRONTENDS:
        if f.name == name:
            return f
    raise MmoptError(f"unknown framework {name!r}; known: {', '.join(f.name for f in FRONTENDS)}")


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from exc


def detect(path) -> str:
    """The framework of the model file ``path`` (``"onnx"``, ``"caffe"``, ``"torch"``, ...), or of a
    model directory (a TensorFlow SavedModel: ``"tensorflow"``).

    The suffix decides when it is unambiguous; otherwise (or to confirm an ambiguous suffix such as
    ``.pt``) the file's content does. Raises :class:`ModelLoadError` for a missing file or one no
    frontend recognizes.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        for f in FRONTENDS:
            if f.sniff_dir is not None and f.sniff_dir(path):
                return f.name
        readers = ", ".join(f.name for f in FRONTENDS if f.sniff_dir is not None)
        raise ModelLoadError(f"{path}: is a directory, and not a model directory ({readers}: a "
                             "SavedModel holds saved_model.pb); expected a model file")
    suffix = path.suffix.lower()
    head = _head(path)
    for f in FRONTENDS:
        if suffix in f.suffixes and (not f.suffix_needs_sniff or f.sniff is None
                                     or f.sniff(path, head)):
            return f.name
    for f in FRONTENDS:
        if f.sniff is not None and f.sniff(path, head):
            return f.name
    known = "; ".join(f.description for f in FRONTENDS)
    raise ModelLoadError(f"{path}: cannot tell which framework this model is from (supported: "
                         f"{known})")


def to_onnx(path, *, framework: str | None = None, **options) -> onnx.ModelProto:
    """Load the model at ``path`` from whichever framework it is in, as an ONNX ``ModelProto``.

    ``framework`` skips detection. ``options`` go to the frontend: ``input_shapes`` (any; ignored by
    frontends that take the shapes from the file), ``weights``/``seed``/``random_weights`` (Caffe),
    ``dynamic_batch``/``opset`` (PyTorch), ``inputs``/``outputs`` (frozen TensorFlow GraphDef),
    ``signature`` (SavedModel); defaults come from :func:`import_options`. An ONNX path is loaded
    and checked as it is.
    """
    if isinstance(path, onnx.ModelProto):
        return path
    path = Path(path)
    entry = frontend(framework) if framework else frontend(detect(path))
    module = entry.load()
    accepted = set(inspect.signature(module.to_onnx).parameters)
    passed = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in accepted:
            passed[key] = value
        elif key not in GENERIC_OPTIONS:
            raise MmoptError(f"{path}: option {key!r} does not apply to {entry.name} models")
    for key, value in _IMPORT_OPTIONS.get().items():
        if options.get(key) is not None:
            continue
        if key in accepted:
            passed[key] = value
        else:
            logger.warning("%s: --%s does not apply to %s models; ignored", path,
                           key.replace("_", "-"), entry.name)
    model = module.to_onnx(path, **passed)
    logger.info("%s: imported from %s (%d nodes)", path, entry.name, len(model.graph.node))
    return model


def from_torch(module, example_inputs, dynamic_batch: bool = False) -> onnx.ModelProto:
    """Export a live ``torch.nn.Module`` to ONNX (torch.export + the dynamo ONNX exporter).

    ``example_inputs`` is a tensor or a tuple of tensors; ``dynamic_batch=True`` makes dim 0 of every
    input symbolic (``batch``).
    """
    return frontend("torch").load().from_torch(module, example_inputs, dynamic_batch=dynamic_batch)


def verify(path, model: onnx.ModelProto, *, seed: int = 0,
           input_shapes: Mapping[str, Sequence[int]] | None = None, atol: float = 1e-4,
           rtol: float = 1e-4, **options):
    """Run the source framework and onnxruntime (on ``model``) on the same seeded random inputs.

    Returns a :class:`~mmopt.runtime.verify.VerifyReport`, or ``None`` with a logged reason when the
    source framework's runtime is not available (e.g. OpenCV for Caffe).
    """
    from mmopt import ir as mir
    from mmopt.runtime.inputs import random_inputs
    from mmopt.runtime.verify import compare, run_onnxruntime

    path = Path(path)
    entry = frontend(detect(path))
    module = entry.load()
    if not hasattr(module, "reference_outputs"):
        return None
    fixed = mir.fix_input_shapes(model, input_shapes)
    feeds = random_inputs(fixed, seed)
    reference = module.reference_outputs(path, model, feeds, **options)
    if reference is None:
        return None
    candidate = run_onnxruntime(fixed, feeds)
    report = compare(reference, candidate, atol=atol, rtol=rtol)
    report.seed = seed
    return report


__all__ = ["FRONTENDS", "RANDOM_WEIGHTS_KEY", "Frontend", "detect", "from_torch", "frontend",
           "has_random_weights", "import_options", "to_onnx", "verify"]
