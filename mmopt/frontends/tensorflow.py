"""TensorFlow frontend: SavedModel directories, Keras ``.keras``/``.h5``, frozen GraphDefs -> ONNX.

    model = to_onnx("resnet50_savedmodel/")                     # a SavedModel directory
    model = to_onnx("mobilenet_v2.keras")                       # Keras 3 (or a legacy .h5)
    model = to_onnx("frozen.pb", inputs=["x"], outputs=["y"])   # names only when not inferable

The conversion is tf2onnx's (TensorFlow graph -> ONNX, opset 17); this module picks the graph,
names its inputs and outputs, and turns tf2onnx's partial results into clear errors:

* **SavedModel** (``tf.saved_model.save`` / Keras ``model.export``): the ``serving_default``
  signature (or the only one, or ``signature=``). Inputs and outputs keep the signature's names.
* **Keras** ``.keras`` (Keras 3) and ``.h5``/``.hdf5`` (legacy): loaded with ``safe_mode=True`` and
  ``compile=False``. A ``Lambda`` layer holding Python code, or a custom layer whose class Keras
  cannot find, is refused with a line naming the layer: mmopt never runs code stored in a model
  file. Inputs are named after the Keras ``Input`` layers, outputs after the output layers.
* **Frozen GraphDef** ``.pb``: inputs are the ``Placeholder`` ops and outputs the ops nothing
  consumes, unless ``inputs``/``outputs`` name the tensors (``x`` or ``x:0``).

tf2onnx leaves an operator it cannot convert in the graph under its TensorFlow name; every such
node makes :func:`to_onnx` fail with one line naming the Keras layer (or graph node), its type and
the file. A few operators TF 2.21 emits for common layers that tf2onnx 1.17 lacks are added here
(:func:`register_extra_handlers`: ``Erfc`` from exact GELU, ``Log1p``, ``Expm1``, TFLite ``GELU``).

TensorFlow and tf2onnx are imported lazily (``pip install 'mmopt[tf]'``): detection works without
them. :mod:`mmopt.frontends.tflite` shares the helpers below.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from mmopt.frontends._native import native_output_silenced
from mmopt.errors import MmoptError, ModelLoadError, UnsupportedModelError, summarize

logger = logging.getLogger(__name__)

SAVED_MODEL, KERAS, GRAPHDEF = "savedmodel", "keras", "graphdef"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
GRAPHDEF_SUFFIXES = (".pb",)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
#: the opset asked of tf2onnx (the one the Caffe frontend writes; mmopt.ir normalizes upward)
DEFAULT_OPSET = 17
DEFAULT_SIGNATURE = "serving_default"

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_INSTALL_HINT = "pip install 'mmopt[tf]'"
#: ops that reach outside the graph (files, Python callbacks, checkpoints, input pipelines):
#: TensorFlow would run them while converting (tf2onnx folds constants with TensorFlow) or
#: verifying, so a SavedModel or GraphDef whose computation uses one is refused
_IO_OPS = frozenset({"WriteFile", "ReadFile", "MatchingFiles", "ImmutableConst", "PyFunc",
                     "PyFuncStateless", "EagerPyFunc", "Save", "SaveV2", "SaveSlices", "Restore",
                     "RestoreV2", "RestoreSlice", "MergeV2Checkpoints", "ShardedFilename"})
_IO_OP_PATTERN = re.compile(r"File|Reader|Writer|Summary|Dataset|Iterator|Checkpoint")
#: op types that are never a graph output even when nothing consumes them
_NOT_OUTPUTS = frozenset({"Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "Assert",
                          "VarHandleOp", "VariableV2", "Variable", "VarIsInitializedOp",
                          "AssignVariableOp", "Assign", "SaveV2", "RestoreV2", "Print", "PrintV2"})


# --------------------------------------------------------------------------------------------------
# detection (no TensorFlow import)


def is_saved_model(path) -> bool:
    """Whether ``path`` is a SavedModel directory (it holds ``saved_model.pb``/``.pbtxt``)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in SAVED_MODEL_FILES)


def sniff(path, head: bytes | None = None) -> str | None:
    """``"savedmodel"``, ``"keras"``, ``"graphdef"`` or None, from the path and the file's start."""
    path = Path(path)
    if path.is_dir():
        return SAVED_MODEL if is_saved_model(path) else None
    if path.name in SAVED_MODEL_FILES:
        return SAVED_MODEL
    if head is None:
        with open(path, "rb") as f:
            head = f.read(16)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                return KERAS if "config.json" in archive.namelist() else None
        except (zipfile.BadZipFile, OSError):
            return None
    if suffix in (".h5", ".hdf5"):
        return KERAS if head.startswith(_HDF5_MAGIC) else None
    if suffix in GRAPHDEF_SUFFIXES:
        # GraphDef field 1 (repeated NodeDef) comes first; a NodeDef starts with its name (field 1)
        return GRAPHDEF if head[:1] == b"\x0a" else None
    return None


# --------------------------------------------------------------------------------------------------
# environment: imports, quiet conversion


def tf_modules():
    """``(tensorflow, tf2onnx)``, imported quietly; a clear error naming the extra when missing."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with native_output_silenced():
            import tensorflow as tf
            import tf2onnx
            import tf2onnx.onnx_opset  # noqa: F401 - registers the TF op handlers
    except ImportError as exc:
        missing = exc.name or "tensorflow"
        raise MmoptError(f"the TensorFlow frontends need tensorflow and tf2onnx ({missing} is not "
                         f"installed); install them with: {_INSTALL_HINT}") from exc
    register_extra_handlers()
    return tf, tf2onnx


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet() -> Iterator[_Records]:
    """Keep TensorFlow's, Keras' and tf2onnx's logs, warnings and prints off the user's terminal;
    yields a handler holding tf2onnx's error messages (used to explain a failed conversion)."""
    records = _Records()
    names = ("tensorflow", "tf2onnx", "absl", "keras", "h5py")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
        lg.propagate = False
    tf2onnx_logger = loggers[1]
    tf2onnx_logger.addHandler(records)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield records
    finally:
        tf2onnx_logger.removeHandler(records)
        for lg, (level, propagate) in zip(loggers, saved):
            lg.setLevel(level)
            lg.propagate = propagate


# --------------------------------------------------------------------------------------------------
# operators tf2onnx 1.17 does not convert but TF 2.21 emits for common layers

_EXTRA_REGISTERED = False


def register_extra_handlers() -> None:
    """Teach tf2onnx ``Erfc`` (Keras' exact GELU: ``0.5·x·erfc(-x/√2)``), ``Log1p``, ``Expm1``
    and TFLite's ``GELU``. A handler tf2onnx already has is left alone. Idempotent."""
    global _EXTRA_REGISTERED
    if _EXTRA_REGISTERED:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    known = {name for opsets in tf_op.get_opsets().values() for versions in opsets
             for name in versions}

    def const(ctx, like: str, value: float) -> str:
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(like))
        return ctx.make_const(utils.make_name("mmopt_const"), np.array(value, dtype)).output[0]

    def unary(ctx, node, op_type: str) -> str:
        return ctx.make_node(op_type, [node.input[0]], op_name_scope=node.name).output[0]

    class Erfc:  # erfc(x) = 1 - erf(x)
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            erf = unary(ctx, node, "Erf")
            node.type = "Sub"
            ctx.replace_inputs(node, [const(ctx, node.input[0], 1.0), erf])

    class Log1p:  # log1p(x) = log(1 + x)
        @classmethod
        def version_1(cls, ctx, node, **kwargs):
            x = node.input[0]
            plus = ctx.make_node("Add", [x, const(ctx, x, 1.0)], op_name_scope=node.name).output[0]
            node.type = "Log"
            ctx.replace_inputs(node, [plus])

    class Expm1:  # expm1(x) = exp(x) - 1
        @classmethod
        def version_1(cls, ctx, node, **kwargs):
            exp = unary(ctx, node, "Exp")
            node.type = "Sub"
            ctx.replace_inputs(node, [exp, const(ctx, node.input[0], 1.0)])

    class TflGelu:
        """0.5·x·(1 + erf(x/√2)); ``approximate``:
        0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""

        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            x = node.input[0]
            scope = node.name
            if node.get_attr_value("approximate", False):
                cube = ctx.make_node("Mul", [x, x], op_name_scope=scope).output[0]
                cube = ctx.make_node("Mul", [cube, x], op_name_scope=scope).output[0]
                cube = ctx.make_node("Mul", [cube, const(ctx, x, 0.044715)],
                                     op_name_scope=scope).output[0]
                inner = ctx.make_node("Add", [x, cube], op_name_scope=scope).output[0]
                inner = ctx.make_node("Mul", [inner, const(ctx, x, float(np.sqrt(2 / np.pi)))],
                                      op_name_scope=scope).output[0]
                shaped = ctx.make_node("Tanh", [inner], op_name_scope=scope).output[0]
            else:
                scaled = ctx.make_node("Mul", [x, const(ctx, x, float(1 / np.sqrt(2)))],
                                       op_name_scope=scope).output[0]
                shaped = ctx.make_node("Erf", [scaled], op_name_scope=scope).output[0]
            one_plus = ctx.make_node("Add", [shaped, const(ctx, x, 1.0)],
                                     op_name_scope=scope).output[0]
            half_x = ctx.make_node("Mul", [x, const(ctx, x, 0.5)], op_name_scope=scope).output[0]
            node.type = "Mul"
            node.attr.pop("approximate", None)
            ctx.replace_inputs(node, [half_x, one_plus])

    for name, handler in (("Erfc", Erfc), ("Log1p", Log1p), ("Expm1", Expm1),
                          ("TFL_GELU", TflGelu)):
        if name not in known:
            tf_op(name)(handler)
    _EXTRA_REGISTERED = True


# --------------------------------------------------------------------------------------------------
# checking and tidying tf2onnx's result


def _is_onnx_op(node: onnx.NodeProto) -> bool:
    return onnx.defs.has(node.op_type, node.domain or "")


def _unconverted(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes tf2onnx left as TensorFlow (or TFLite) operators, including inside subgraphs."""
    found = []

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            if not _is_onnx_op(node):
                found.append(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


def check_converted(model: onnx.ModelProto, where: str, describe: Callable[[onnx.NodeProto], str],
                    records: _Records | None = None) -> onnx.ModelProto:
    """Fail with one line when tf2onnx left an operator unconverted or wrote an invalid model.

    ``describe(node)`` names the culprit as the user knows it (Keras layer, graph node, TFLite op).
    """
    import tf2onnx

    bad = _unconverted(model)
    if bad:
        first = bad[0]
        others = sorted({n.op_type for n in bad[1:]} - {first.op_type})
        more = f" (also unsupported: {', '.join(others)})" if others else ""
        raise UnsupportedModelError(f"{where}: {describe(first)} has no ONNX conversion in "
                                    f"tf2onnx {tf2onnx.__version__}{more}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        failed = [m for m in (records.messages if records else []) if "convert" in m.lower()]
        reason = summarize(Exception(failed[0])) if failed else summarize(exc)
        raise UnsupportedModelError(f"{where}: tf2onnx wrote an invalid ONNX model "
                                    f"({reason[:300]})") from exc
    return model


def _rename_values(model: onnx.ModelProto, renames: Mapping[str, str]) -> None:
    """Rename tensors everywhere in the main graph (inputs, outputs, node edges, value infos)."""
    if not renames:
        return
    graph = model.graph
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for values in (graph.input, graph.output, graph.value_info):
        for v in values:
            v.name = renames.get(v.name, v.name)
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)


def tidy_io_names(model: onnx.ModelProto, preferred: Mapping[str, str] | None = None) -> None:
    """Give graph inputs/outputs the ``preferred`` names, else drop a ``:0`` port suffix, where the
    new name is free (``--input-shape`` and ``mmopt run --input`` read better without ports)."""
    preferred = dict(preferred or {})
    graph = model.graph
    taken = ({n for node in graph.node for n in (*node.input, *node.output)}
             | {v.name for v in (*graph.input, *graph.output)}
             | {t.name for t in graph.initializer})
    renames: dict[str, str] = {}
    for value in (*graph.input, *graph.output):
        old = value.name
        new = preferred.get(old) or (old[:-2] if old.endswith(":0") else old)
        if new != old and new not in taken and new not in renames.values():
            renames[old] = new
    _rename_values(model, renames)


def name_batch_dim(model: onnx.ModelProto) -> None:
    """Call the symbolic leading dim of the inputs ``batch`` (tf2onnx says ``unk__12``) when all
    inputs share it (TensorFlow's ``None`` batch). Outputs keep their own names: tf2onnx gives them
    separate ones, and whether an output's leading dim is the batch is not known here."""
    params = {v.type.tensor_type.shape.dim[0].dim_param for v in model.graph.input
              if v.type.tensor_type.shape.dim}
    if len(params) != 1 or "" in params:
        return
    (param,) = params
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == param:
                dim.dim_param = "batch"


def finish(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None
           ) -> onnx.ModelProto:
    """Name the batch dim; with ``input_shapes``, make every input static (a batch dim left out
    becomes 1), as :func:`mmopt.ir.fix_input_shapes` does for compile."""
    name_batch_dim(model)
    if input_shapes:
        from mmopt import ir as mir

        model = mir.fix_input_shapes(model, input_shapes)
    return model


def convert_checked(where: str, describe: Callable[[onnx.NodeProto], str],
                    run: Callable[[], object]) -> onnx.ModelProto:
    """Run a tf2onnx conversion quietly, then check what it produced."""
    with quiet() as records:
        try:
            result = run()
        except MmoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - tf2onnx and TF raise many types
            raise UnsupportedModelError(f"{where}: tf2onnx cannot convert the model: "
                                        f"{summarize(exc)[:300]}") from exc
    model = result[0] if isinstance(result, tuple) else result
    return check_converted(model, where, describe, records)


def _node_description(node: onnx.NodeProto) -> str:
    return f"node '{node.name}' (TensorFlow op {node.op_type})"


def _called_functions(node) -> Iterator[str]:
    for attr in node.attr.values():
        if attr.HasField("func"):
            yield attr.func.name
        yield from (f.name for f in attr.list.func)


def refuse_io_ops(graph_def, start: Sequence[str], where) -> None:
    """Refuse a graph whose computation of the ``start`` nodes (names, or ``name:port`` tensors)
    uses an op that touches files or runs Python (:data:`_IO_OPS`), looking into called functions.

    Only what the conversion runs is checked: a SavedModel's checkpoint-saving functions are not.
    """
    nodes = {n.name: n for n in graph_def.node}
    functions = {f.signature.name: f for f in graph_def.library.function}
    seen_nodes: set[str] = set()
    seen_functions: set[str] = set()
    pending = [_PORT.sub("", s.lstrip("^")) for s in start]
    pending_functions: list[str] = []

    def check(node, scope: str) -> None:
        if node.op in _IO_OPS or _IO_OP_PATTERN.search(node.op):
            raise UnsupportedModelError(
                f"{where}: node '{scope}{node.name}' (TensorFlow op {node.op}) reaches outside the "
                "model (files, Python or input pipelines), and TensorFlow would run it while "
                "converting; mmopt converts only self-contained inference graphs")
        pending_functions.extend(_called_functions(node))
        if node.op in functions:  # a call to a library function by its name
            pending_functions.append(node.op)

    while pending or pending_functions:
        while pending:
            name = pending.pop()
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            node = nodes[name]
            check(node, "")
            pending.extend(_PORT.sub("", i.lstrip("^")).split(":")[0] for i in node.input)
        while pending_functions:
            fname = pending_functions.pop()
            if fname in seen_functions or fname not in functions:
                continue
            seen_functions.add(fname)
            for node in functions[fname].node_def:
                check(node, f"{fname}/")


# --------------------------------------------------------------------------------------------------
# Keras


def _keras_config(path: Path) -> dict:
    """The model's architecture as JSON, read without Keras (for naming layers in errors)."""
    with contextlib.suppress(Exception):
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is not None:
                return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    return {}


def _config_layers(config) -> Iterator[tuple[str, str, dict]]:
    """``(name, class_name, entry)`` of each layer entry in a Keras config, nested ones included."""
    if isinstance(config, dict):
        inner = config.get("config")
        if "class_name" in config and isinstance(inner, dict) and "name" in inner:
            yield inner["name"], str(config["class_name"]), config
        for value in config.values():
            yield from _config_layers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _config_layers(value)


_UNKNOWN_CLASS = re.compile(r"(?:Unknown (?:layer|object)|Could not locate class)[: ]*'([^']+)'")


def _keras_load_error(path: Path, exc: BaseException) -> MmoptError:
    text = str(exc)
    layers = [(n, c, e) for n, c, e in _config_layers(_keras_config(path)) if c != "Functional"]
    if "Lambda" in text and "safe_mode" in text:
        lambdas = [(n, c) for n, c, _ in layers if c == "Lambda"]
        name, cls = lambdas[0] if lambdas else ("?", "Lambda")
        return UnsupportedModelError(
            f"{path}: layer '{name}' ({cls}) holds Python code, which mmopt does not run (Keras "
            "files are loaded with safe_mode=True); export the model instead: model.export('DIR') "
            "writes a SavedModel mmopt converts")
    wanted = None
    if m := _UNKNOWN_CLASS.search(text):
        wanted = m.group(1).split(">")[-1]
    if wanted is None and "could not be deserialized" in text:
        # Keras 3 names the enclosing model; the culprit is a layer of a class Keras cannot find
        custom = [(n, c) for n, c, e in layers
                  if not str(e.get("module") or "").startswith("keras")]
        wanted = custom[0][1] if custom else None
    if wanted is not None:
        hits = [(n, c) for n, c, _ in layers if c == wanted or c.split(">")[-1] == wanted]
        name = hits[0][0] if hits else "?"
        return UnsupportedModelError(
            f"{path}: layer '{name}' ({wanted}) is not a Keras built-in layer, and mmopt does not "
            "import code named in a model file; export the model instead: model.export('DIR') "
            "writes a SavedModel mmopt converts")
    return ModelLoadError(f"{path}: Keras cannot load the model ({summarize(exc)[:300]})")


def load_keras(path):
    """``keras.models.load_model(path, safe_mode=True, compile=False)`` with one-line errors."""
    tf_modules()
    import keras

    path = Path(path)
    with quiet():
        try:
            return keras.models.load_model(path, safe_mode=True, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, TypeError, ...
            raise _keras_load_error(path, exc) from exc


def _keras_operations(model) -> dict[str, str]:
    """``{name: class name}`` of a Keras model's layers and ops, nested models included."""
    found: dict[str, str] = {}
    stack = [model]
    while stack:
        current = stack.pop()
        for op in getattr(current, "operations", None) or getattr(current, "layers", []):
            found.setdefault(op.name, type(op).__name__)
            if hasattr(op, "operations") or hasattr(op, "layers"):
                stack.append(op)
    return found


_NAME_SUFFIX = re.compile(r"_\d+$")


def _keras_describer(model) -> Callable[[onnx.NodeProto], str]:
    """Name the Keras layer a TensorFlow node came from: the innermost scope of the node's name that
    is a layer's name (TensorFlow may add ``_1`` to scope names)."""
    operations = _keras_operations(model)
    operations.pop(model.name, None)

    def describe(node: onnx.NodeProto) -> str:
        for part in reversed(node.name.split("/")[:-1]):
            for candidate in (part, _NAME_SUFFIX.sub("", part)):
                if candidate in operations:
                    return (f"layer '{candidate}' ({operations[candidate]}) uses TensorFlow op "
                            f"{node.op_type}, which")
        return _node_description(node)

    return describe


def _keras_to_onnx(path: Path, opset: int) -> onnx.ModelProto:
    _, tf2onnx = tf_modules()
    model = load_keras(path)
    return convert_checked(str(path), _keras_describer(model),
                    lambda: tf2onnx.convert.from_keras(model, opset=opset))


# --------------------------------------------------------------------------------------------------
# SavedModel


def _saved_model_dir(path: Path) -> Path:
    return path.parent if path.name in SAVED_MODEL_FILES else path


def _read_saved_model_proto(path: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    pb = path / "saved_model.pb"
    try:
        if pb.is_file():
            proto.ParseFromString(pb.read_bytes())
        else:
            from google.protobuf import text_format

            text_format.Parse((path / "saved_model.pbtxt").read_text(), proto)
    except Exception as exc:  # noqa: BLE001 - DecodeError, ParseError, OSError
        raise ModelLoadError(f"{path}: not a readable SavedModel ({summarize(exc)[:200]})") from exc
    return proto


def saved_model_signature(path, signature: str | None = None) -> tuple[list[str], str]:
    """``(tags, signature key)``: the serving meta graph and the signature to convert.

    ``signature`` picks one; otherwise ``serving_default``, else the only one there is.
    """
    path = _saved_model_dir(Path(path))
    proto = _read_saved_model_proto(path)
    graphs = list(proto.meta_graphs)
    if not graphs:
        raise ModelLoadError(f"{path}: the SavedModel holds no graph")
    graph = next((g for g in graphs if "serve" in g.meta_info_def.tags), graphs[0])
    tags = list(graph.meta_info_def.tags)
    keys = sorted(k for k in graph.signature_def if not k.startswith("_"))
    if signature is not None:
        if signature not in keys:
            raise MmoptError(f"{path}: no signature {signature!r}; it has: "
                             f"{', '.join(keys) or 'none'}")
        return tags, signature
    if DEFAULT_SIGNATURE in keys:
        return tags, DEFAULT_SIGNATURE
    if len(keys) == 1:
        return tags, keys[0]
    if not keys:
        raise UnsupportedModelError(
            f"{path}: the SavedModel has no signature to convert; save it with one, e.g. "
            "tf.saved_model.save(module, DIR, signatures=module.__call__.get_concrete_function("
            "tf.TensorSpec(...))), or model.export(DIR) for Keras")
    raise MmoptError(f"{path}: several signatures ({', '.join(keys)}) and none is "
                     f"{DEFAULT_SIGNATURE!r}; choose one with signature=")


def check_saved_model(path: Path, tags: Sequence[str], key: str) -> None:
    """:func:`refuse_io_ops` on what the signature ``key`` computes."""
    proto = _read_saved_model_proto(path)
    graph = next(g for g in proto.meta_graphs if list(g.meta_info_def.tags) == list(tags))
    outputs = [t.name for t in graph.signature_def[key].outputs.values()]
    refuse_io_ops(graph.graph_def, outputs, path)


def _saved_model_to_onnx(path: Path, signature: str | None, opset: int) -> onnx.ModelProto:
    _, tf2onnx = tf_modules()
    from tf2onnx import tf_loader

    path = _saved_model_dir(path)
    tags, key = saved_model_signature(path, signature)
    check_saved_model(path, tags, key)

    def run():
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(path), None, None, tag=tags, signatures=[key], return_tensors_to_rename=True)
        return tf2onnx.convert.from_graph_def(graph_def, name=path.name, input_names=inputs,
                                              output_names=outputs, tensors_to_rename=renames,
                                              opset=opset)

    return convert_checked(str(path), _node_description, run)


# --------------------------------------------------------------------------------------------------
# frozen GraphDef

_PORT = re.compile(r":\d+$")


def _tensor_name(name: str) -> str:
    """``x`` -> ``x:0``; ``x:1`` stays."""
    return name if _PORT.search(name) else f"{name}:0"


def _read_graph_def(path: Path):
    tf, _ = tf_modules()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - DecodeError
        raise ModelLoadError(f"{path}: not a frozen TensorFlow GraphDef ({summarize(exc)[:200]})"
                             ) from exc
    if not graph_def.node:
        raise ModelLoadError(f"{path}: the GraphDef has no nodes")
    return graph_def


def _import_graph(graph_def, path: Path):
    tf, _ = tf_modules()
    graph = tf.Graph()
    with quiet(), graph.as_default():
        try:
            tf.import_graph_def(graph_def, name="")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{path}: TensorFlow cannot load the graph "
                                 f"({summarize(exc)[:300]})") from exc
    return graph


def graph_io(graph_def, path, inputs: Sequence[str] | None = None,
             outputs: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Input and output tensor names (``name:port``) of a frozen graph: the given ones, checked,
    else the ``Placeholder`` outputs and the outputs of the ops nothing consumes."""
    tf, _ = tf_modules()
    path = Path(path)
    graph = _import_graph(graph_def, path)
    ops = graph.get_operations()

    def check(names: Sequence[str], option: str) -> list[str]:
        tensors = [_tensor_name(n.strip()) for n in names if n.strip()]
        for t in tensors:
            try:
                graph.get_tensor_by_name(t)
            except (KeyError, ValueError):
                raise MmoptError(f"{path}: {option} {t.rsplit(':', 1)[0]}: no such tensor in the "
                                 "graph") from None
        return tensors

    if inputs:
        found_inputs = check(inputs, "--inputs")
    else:
        found_inputs = [op.outputs[0].name for op in ops if op.type == "Placeholder"]
        if not found_inputs:
            raise MmoptError(f"{path}: the graph has no Placeholder to use as input; name the "
                             "input tensors with --inputs NAME[,NAME...]")
    if outputs:
        found_outputs = check(outputs, "--outputs")
    else:
        consumed = {t.name for op in ops for t in op.inputs}
        found_outputs = [t.name for op in ops
                         if op.type not in _NOT_OUTPUTS and op.outputs
                         and not any(t.name in consumed for t in op.outputs)
                         for t in op.outputs if t.dtype != tf.dtypes.resource]
        if not found_outputs:
            raise MmoptError(f"{path}: cannot tell the graph's outputs; name them with "
                             "--outputs NAME[,NAME...]")
    logger.info("%s: inputs %s, outputs %s", path, ", ".join(found_inputs),
                ", ".join(found_outputs))
    return found_inputs, found_outputs


def _graphdef_to_onnx(path: Path, inputs, outputs, opset: int) -> onnx.ModelProto:
    _, tf2onnx = tf_modules()
    graph_def = _read_graph_def(path)
    in_names, out_names = graph_io(graph_def, path, inputs, outputs)
    refuse_io_ops(graph_def, out_names, path)
    return convert_checked(str(path), _node_description, lambda: tf2onnx.convert.from_graph_def(
        graph_def, name=path.stem, input_names=in_names, output_names=out_names, opset=opset))


# --------------------------------------------------------------------------------------------------
# the frontend interface


def _kind(path: Path) -> str:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    kind = sniff(path)
    if kind is None:
        what = ("a directory without saved_model.pb" if path.is_dir()
                else "not a Keras .keras/.h5 file or a frozen GraphDef .pb")
        raise ModelLoadError(f"{path}: {what}; expected a TensorFlow SavedModel directory, a "
                             "Keras model file or a frozen GraphDef")
    return kind


def _names(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    names = [v.strip() for v in value if v and v.strip()]
    return names or None


def to_onnx(path, *, inputs: Sequence[str] | str | None = None,
            outputs: Sequence[str] | str | None = None, signature: str | None = None,
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a SavedModel directory, a Keras ``.keras``/``.h5`` file or a frozen ``.pb`` to ONNX.

    ``inputs``/``outputs`` (frozen GraphDefs only) name the tensors to cut the graph at, as a list
    or comma-separated string (``x`` or ``x:0``). ``signature`` picks a SavedModel signature.
    ``input_shapes`` makes the inputs static (``{"input_layer": (1, 96, 96, 3)}``); without it the
    batch dim stays symbolic (``batch``).
    """
    path = Path(path)
    kind = _kind(path)
    inputs, outputs = _names(inputs), _names(outputs)
    if (inputs or outputs) and kind != GRAPHDEF:
        raise MmoptError(f"{path}: --inputs/--outputs apply to frozen GraphDef .pb files; a "
                         f"{'SavedModel' if kind == SAVED_MODEL else 'Keras model'} names its own")
    if signature is not None and kind != SAVED_MODEL:
        raise MmoptError(f"{path}: signature= applies to SavedModel directories")
    if kind == KERAS:
        model = _keras_to_onnx(path, opset)
    elif kind == SAVED_MODEL:
        model = _saved_model_to_onnx(path, signature, opset)
    else:
        model = _graphdef_to_onnx(path, inputs, outputs, opset)
    tidy_io_names(model)
    return finish(model, input_shapes)


def _as_list(value, names: Sequence[str]) -> list:
    """Model outputs (a tensor, list/tuple, or dict) in the order of ``names``."""
    if isinstance(value, Mapping):
        if all(n in value for n in names):
            return [value[n] for n in names]
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def reference_outputs(path, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *,
                      signature: str | None = None, **_ignored) -> dict[str, np.ndarray]:
    """The source model's outputs on ``feeds``, computed by TensorFlow/Keras, keyed like ``model``'s
    outputs (``model`` must come from :func:`to_onnx` on the same file)."""
    tf, _ = tf_modules()
    from mmopt import ir as mir

    path = Path(path)
    kind = _kind(path)
    in_names = [v.name for v in mir.graph_inputs(model)]
    out_names = [o.name for o in model.graph.output]
    with quiet():
        if kind == KERAS:
            keras_model = load_keras(path)
            args = [tf.constant(feeds[n]) for n in in_names]
            result = keras_model(args if len(args) > 1 else args[0], training=False)
        elif kind == SAVED_MODEL:
            directory = _saved_model_dir(path)
            tags, key = saved_model_signature(directory, signature)
            check_saved_model(directory, tags, key)
            function = tf.saved_model.load(str(directory), tags=tags).signatures[key]
            result = function(**{n: tf.constant(feeds[n]) for n in in_names})
        else:
            graph_def = _read_graph_def(path)
            refuse_io_ops(graph_def, [_tensor_name(n) for n in out_names], path)

            def imports():
                tf.compat.v1.import_graph_def(graph_def, name="")

            wrapped = tf.compat.v1.wrap_function(imports, [])
            function = wrapped.prune(feeds=[_tensor_name(n) for n in in_names],
                                     fetches=[_tensor_name(n) for n in out_names])
            result = function(*[tf.constant(feeds[n]) for n in in_names])
    values = _as_list(result, out_names)
    if len(values) != len(out_names):
        raise MmoptError(f"{path}: TensorFlow returned {len(values)} outputs, the ONNX model has "
                         f"{len(out_names)}")
    return {n: np.asarray(v) for n, v in zip(out_names, values)}


__all__ = ["DEFAULT_OPSET", "check_converted", "check_saved_model", "convert_checked", "finish",
           "graph_io", "is_saved_model", "load_keras", "name_batch_dim", "native_output_silenced",
           "quiet", "reference_outputs", "refuse_io_ops", "register_extra_handlers",
           "saved_model_signature", "sniff", "tf_modules", "tidy_io_names", "to_onnx"]
