"""Keras ``.keras`` (Keras 3) and ``.h5``/``.hdf5`` (legacy) models: loaded with ``safe_mode=True``
(no code stored in a model file runs), load errors and unconverted operators named after the Keras
layer, and the conversion with tf2onnx.
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx

from mmopt.errors import MmoptError, ModelLoadError, UnsupportedModelError, summarize
from mmopt.frontends.tensorflow.environment import quiet, tf_modules
from mmopt.frontends.tensorflow.tf2onnx_result import _node_description, convert_checked


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
