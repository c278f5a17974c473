"""TensorFlow / Keras recipes: ``keras.applications`` networks with deterministic weights, saved in
every format the TensorFlow frontends read.

    from models_zoo import tf_models
    model, x = tf_models.build("mobilenet_v2")                 # keras.Model, NHWC example input
    path = tf_models.write("mobilenet_v2", "out/")             # out/mobilenet_v2.keras
    path = tf_models.write("resnet50", "out/", fmt="savedmodel")   # out/resnet50_savedmodel/
    path = tf_models.write("resnet50", "out/", fmt="tflite")   # out/resnet50.tflite

Nothing is downloaded (``weights=None``) and nothing is stored: weights come from
``keras.utils.set_random_seed`` and the BatchNorm statistics are drawn too (fresh ones are the
identity at inference, which would hide conversion errors). The classifier returns logits
(``classifier_activation=None``) so a softmax does not flatten differences. Inputs are 96x96, the
smallest size the recipes are checked at, to keep conversion and tests quick. Files are written on
demand: ``resnet50`` is about 100 MB in each format.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402 - after the log level, which TensorFlow reads at import
import tensorflow as tf  # noqa: E402

#: formats :func:`write` produces, and the file or directory name each gets
FORMATS = {"keras": "{name}.keras", "h5": "{name}.h5", "savedmodel": "{name}_savedmodel",
           "tflite": "{name}.tflite", "pb": "{name}.pb"}


@dataclass(frozen=True)
class TFEntry:
    factory: Callable[..., keras.Model]
    input_shape: tuple[int, ...]  # NHWC, batch 1
    description: str


MODELS: dict[str, TFEntry] = {
    "mobilenet_v2": TFEntry(keras.applications.MobileNetV2, (1, 96, 96, 3),
                            "keras.applications MobileNetV2 1.0, 96x96, 1000 logits"),
    "resnet50": TFEntry(keras.applications.ResNet50, (1, 96, 96, 3),
                        "keras.applications ResNet50, 96x96, 1000 logits"),
}


def names() -> list[str]:
    return sorted(MODELS)


def _randomize_batchnorm(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            if layer.scale:
                layer.gamma.assign((rng.random(c) * 0.5 + 0.75).astype(np.float32))
            if layer.center:
                layer.beta.assign((rng.standard_normal(c) * 0.1).astype(np.float32))
            layer.moving_mean.assign((rng.standard_normal(c) * 0.1).astype(np.float32))
            layer.moving_variance.assign((rng.random(c) * 0.5 + 0.75).astype(np.float32))


def example_input(name: str, seed: int = 0) -> np.ndarray:
    """A seeded NHWC float32 batch for ``name``."""
    return np.random.default_rng(seed + 1).standard_normal(MODELS[name].input_shape,
                                                           dtype=np.float32)


def build(name: str, seed: int = 0) -> tuple[keras.Model, np.ndarray]:
    """The Keras model ``name`` with deterministic weights and layer names, and an example input
    for it."""
    if name not in MODELS:
        raise KeyError(f"unknown TensorFlow zoo model {name!r}; known: {', '.join(names())}")
    entry = MODELS[name]
    # Keras numbers the default names of layers and tensors per process (``input_layer_1`` once
    # another model was built first): a fresh session keeps the names the same in every process,
    # whatever ran before (the frontend tests check them)
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = entry.factory(input_shape=entry.input_shape[1:], weights=None,
                          classifier_activation=None)
    _randomize_batchnorm(model, np.random.default_rng(seed))
    return model, example_input(name, seed)


def _frozen_graph_def(model: keras.Model):
    """The inference graph with variables folded in: one ``input`` Placeholder, ``Identity`` out."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(function).graph.as_graph_def()


def save(model: keras.Model, path, fmt: str) -> Path:
    """Write a built Keras model in ``fmt`` (one of :data:`FORMATS`) at ``path``."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporters print progress ("Saved artifact at ...") on stdout, and Keras warns that .h5
    # is a legacy format (it is written on purpose: the frontend reads it)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _save(model, path, fmt)
    finally:
        absl.setLevel(level)
    return path


def _save(model: keras.Model, path: Path, fmt: str) -> None:
    if fmt in ("keras", "h5"):
        model.save(path)
    elif fmt == "savedmodel":
        model.export(str(path), format="tf_saved_model", verbose=False)
    elif fmt == "tflite":
        path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    else:
        path.write_bytes(_frozen_graph_def(model).SerializeToString())


def write(name: str, directory, fmt: str = "keras", seed: int = 0) -> Path:
    """Save zoo model ``name`` into ``directory`` in ``fmt``: ``keras`` (NAME.keras), ``h5``,
    ``savedmodel`` (a NAME_savedmodel/ directory, Keras ``model.export``), ``tflite`` (float32, by
    TensorFlow's TFLite converter) or ``pb`` (a frozen GraphDef)."""
    if fmt not in FORMATS:  # before the build
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, _ = build(name, seed)
    return save(model, Path(directory) / FORMATS[fmt].format(name=name), fmt)


__all__ = ["FORMATS", "MODELS", "build", "example_input", "names", "save", "write"]
