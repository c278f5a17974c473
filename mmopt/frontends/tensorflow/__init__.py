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
them. :mod:`mmopt.frontends.tflite` shares the helpers of this package's modules:

* :mod:`.detect`: which format a path holds (no TensorFlow import);
* :mod:`.environment`: importing TensorFlow and tf2onnx, quiet conversions;
* :mod:`.extra_handlers`: the operators added to tf2onnx;
* :mod:`.tf2onnx_result`: checking and tidying tf2onnx's result;
* :mod:`.io_ops`: refusing graphs that reach outside the model;
* :mod:`.keras_model`, :mod:`.saved_model`, :mod:`.graphdef`: one per source format.

This module is the frontend interface: :func:`to_onnx` and :func:`reference_outputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from mmopt.frontends._native import native_output_silenced
from mmopt.errors import MmoptError, ModelLoadError
from mmopt.frontends.tensorflow.detect import GRAPHDEF, KERAS, SAVED_MODEL, is_saved_model, sniff
from mmopt.frontends.tensorflow.environment import quiet, tf_modules
from mmopt.frontends.tensorflow.extra_handlers import register_extra_handlers
from mmopt.frontends.tensorflow.graphdef import (
    _graphdef_to_onnx,
    _read_graph_def,
    _tensor_name,
    graph_io,
)
from mmopt.frontends.tensorflow.io_ops import refuse_io_ops
from mmopt.frontends.tensorflow.keras_model import _keras_to_onnx, load_keras
from mmopt.frontends.tensorflow.saved_model import (
    _saved_model_dir,
    _saved_model_to_onnx,
    check_saved_model,
    saved_model_signature,
)
from mmopt.frontends.tensorflow.tf2onnx_result import (
    check_converted,
    convert_checked,
    finish,
    name_batch_dim,
    tidy_io_names,
)

#: the opset asked of tf2onnx (the one the Caffe frontend writes; mmopt.ir normalizes upward)
DEFAULT_OPSET = 17


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
