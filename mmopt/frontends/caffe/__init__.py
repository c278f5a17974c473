"""Caffe frontend: a deploy ``.prototxt`` (+ ``.caffemodel`` weights) -> ONNX.

    model = to_onnx("deploy.prototxt", weights="net.caffemodel")

Pure Python: the Caffe schema subset is built at run time (:mod:`.proto`), so no Caffe, protoc or
extra package is needed. A prototxt without a caffemodel (given, or beside it) is an error naming
the file looked for; ``random_weights=True`` (``--random-weights`` on every verb) gives the network
seeded random weights instead, which is enough to compile, tune and benchmark an architecture. Such
a model carries ``mmopt.random_weights = true`` in its metadata, and every artifact compiled from it
records it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from mmopt.errors import ModelLoadError
from mmopt.frontends.caffe import proto
from mmopt.frontends.caffe.converter import (
    OUTPUT_LAYERS_KEY,
    blobs_by_layer,
    check_supported,
    convert,
    supported_layer_types,
)

logger = logging.getLogger(__name__)

PROTOTXT_SUFFIXES = (".prototxt",)
WEIGHTS_SUFFIXES = (".caffemodel",)

__all__ = ["find_weights", "load_net", "looks_like_prototxt", "reference_outputs",
           "supported_layer_types", "to_onnx"]

_PROTOTXT = re.compile(rb'^\s*(layers?\s*\{|input\s*:\s*"|input_dim\s*:)', re.MULTILINE)


def looks_like_prototxt(head: bytes) -> bool:
    """Whether the start of a file reads like a Caffe net in text format."""
    return bool(_PROTOTXT.search(head)) and b"type" in head


def load_net(path, *, warn: bool = True):
    """Parse a prototxt file into a ``caffe.NetParameter`` message."""
    net, skipped = _load_net(Path(path))
    if skipped and warn:
        logger.warning("%s: skipped fields mmopt does not read (first: %s)", path, skipped)
    return net


def _load_net(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path}: not a text prototxt (is it a binary .caffemodel? give the "
                             "deploy .prototxt as the model and this file with --weights)") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from exc
    return proto.parse_prototxt_report(text, str(path))


def find_weights(prototxt: Path) -> Path | None:
    """The caffemodel beside a prototxt: same stem, else the only ``.caffemodel`` in its folder."""
    same = prototxt.with_suffix(".caffemodel")
    if same.is_file():
        return same
    candidates = sorted(prototxt.parent.glob("*.caffemodel"))
    return candidates[0] if len(candidates) == 1 else None


def _no_weights(prototxt: Path) -> ModelLoadError:
    expected = prototxt.with_suffix(".caffemodel")
    others = sorted(p.name for p in prototxt.parent.glob("*.caffemodel"))
    found = (f"; the folder has {len(others)} others ({', '.join(others[:3])}"
             f"{', ...' if len(others) > 3 else ''}), so none is picked" if others else "")
    return ModelLoadError(
        f"{prototxt}: no weights: {expected} does not exist{found}. Put the .caffemodel there "
        "(or give it with `mmopt import --weights FILE`), or pass --random-weights to build the "
        "architecture with seeded random weights (its outputs are meaningless)")


def to_onnx(path, *, weights=None, input_shapes: Mapping[str, Sequence[int]] | None = None,
            seed: int = 0, random_weights: bool | None = None) -> onnx.ModelProto:
    """Convert a Caffe deploy network to ONNX (opset 17).

    ``path`` is the deploy ``.prototxt``; ``weights`` the ``.caffemodel`` (default: found beside
    the prototxt, see :func:`find_weights`; none found is a :class:`ModelLoadError` naming the file
    looked for). With ``random_weights=True`` weights are generated from ``seed`` instead (a
    warning is logged and the model's metadata says so). ``input_shapes`` overrides the input
    shapes the prototxt declares (``{"data": (1, 3, 227, 227)}``).
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix.lower() in WEIGHTS_SUFFIXES:
        beside = path.with_suffix(".prototxt")
        if weights is None and beside.is_file():
            path, weights = beside, path
        else:
            raise ModelLoadError(f"{path}: a .caffemodel holds only weights; give the deploy "
                                 ".prototxt as the model and this file with --weights")
    net, skipped = _load_net(path)
    check_supported(net, str(path))  # an unsupported layer fails before any other message
    if skipped:
        logger.warning("%s: skipped fields mmopt does not read (first: %s)", path, skipped)
    if random_weights:
        weights = None
    elif weights is None:
        weights = find_weights(path)
        if weights is None:
            raise _no_weights(path)
        logger.info("%s: using weights %s", path, weights)
    by_layer = None
    if weights is not None:
        weights = Path(weights)
        try:
            data = weights.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{weights}: cannot read weights ({exc.strerror or exc})") from exc
        by_layer = blobs_by_layer(proto.parse_caffemodel(data, str(weights)))
    else:
        logger.warning("%s: --random-weights: seeded random weights (seed %d); outputs are "
                       "meaningless", path, seed)
    model = convert(net, where=str(path), weights=by_layer, input_shapes=input_shapes, seed=seed)
    if by_layer is None:
        from mmopt.frontends import RANDOM_WEIGHTS_KEY

        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            RANDOM_WEIGHTS_KEY: "true",
                                            "mmopt.random_weights_seed": str(seed)})
    return model


def reference_outputs(path, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *,
                      weights=None, random_weights: bool = False,
                      **_ignored) -> dict[str, np.ndarray] | None:
    """The network's outputs computed by OpenCV's Caffe importer (``cv2.dnn``), an implementation
    independent of this converter. ``None`` (with a log line) when OpenCV 4 is not installed or
    the model was converted with random weights (OpenCV cannot see those)."""
    from mmopt.frontends import has_random_weights

    path = Path(path)
    if path.suffix.lower() in WEIGHTS_SUFFIXES:
        path, weights = path.with_suffix(".prototxt"), path
    weights = Path(weights) if weights is not None else find_weights(path)
    if weights is None or random_weights or has_random_weights(model):
        logger.warning("not verified: the net has random weights, which OpenCV cannot load")
        return None
    try:
        import cv2
    except ImportError:
        logger.warning("not verified: OpenCV is not installed (pip install 'mmopt[caffe]')")
        return None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        logger.warning("not verified: this OpenCV (%s) has no Caffe importer; install "
                       "opencv-python-headless<5 (pip install 'mmopt[caffe]')", cv2.__version__)
        return None
    props = {p.key: p.value for p in model.metadata_props}
    tops = json.loads(props.get(OUTPUT_LAYERS_KEY, "{}"))
    net = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    for name, value in feeds.items():
        net.setInput(np.ascontiguousarray(value, np.float32), name)
    names = [o.name for o in model.graph.output]
    missing = [n for n in names if n not in tops]
    if missing:
        logger.warning("not verified: no Caffe layer recorded for output(s) %s", ", ".join(missing))
        return None
    layers = [tops[n][0] for n in names]
    if any(tops[n][1] != 0 for n in names):
        logger.warning("not verified: OpenCV returns only the first top of a layer, and output(s) "
                       "%s are later tops", ", ".join(n for n in names if tops[n][1]))
        return None
    outs = net.forward(layers)
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    return {n: np.asarray(o).reshape(shapes[n]) for n, o in zip(names, outs)}
