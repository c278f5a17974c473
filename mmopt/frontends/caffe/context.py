"""What every Caffe layer converter works with: the conversion state carried from layer to layer
(:class:`_Context`: blobs, shapes, tensor names, weights) and the registry of converters by layer
type (:func:`converts`, filled in when the layer modules are imported by :mod:`.converter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mmopt.errors import ModelLoadError, UnsupportedModelError

Converter = Callable[["_Context", object], None]
CONVERTERS: dict[str, Converter] = {}


def converts(*types: str):
    """Register a converter for the given Caffe layer type names."""

    def register(fn: Converter) -> Converter:
        for t in types:
            CONVERTERS[t] = fn
        return fn

    return register


# --------------------------------------------------------------------------------------------------
# conversion state


@dataclass
class _Context:
    where: str
    weights: Mapping[str, list[np.ndarray]] | None
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    #: Caffe blob name -> ONNX tensor holding its current value
    blobs: dict[str, str] = field(default_factory=dict)
    #: ONNX tensor -> static shape
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Caffe blob names in order of first production (candidates for graph outputs)
    blob_order: list[str] = field(default_factory=list)
    #: ONNX tensor -> (Caffe layer that produced it, index of the top among the layer's tops)
    producers: dict[str, tuple[str, int]] = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)
    used_names: set[str] = field(default_factory=set)
    layer: object = None
    #: when set (and weights is None), generated blobs are stored here: {layer: {index: array}}
    record: dict | None = None
    #: how many weight blobs the current layer's parameters give it (1 + the highest index read)
    blob_span: int = 0

    # -- errors ---------------------------------------------------------------------------------

    def fail(self, message: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.where}: layer '{self.layer.name}' (type {self.layer.type}): {message}")

    # -- names, tensors -------------------------------------------------------------------------

    def unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.used_names:
            candidate = f"{name}_{i}"
            i += 1
        self.used_names.add(candidate)
        return candidate

    def bottom(self, i: int = 0) -> str:
        layer = self.layer
        if i >= len(layer.bottom):
            raise self.fail(f"expects at least {i + 1} bottom blob(s), has {len(layer.bottom)}")
        blob = layer.bottom[i]
        if blob not in self.blobs:
            raise ModelLoadError(f"{self.where}: layer '{layer.name}' reads blob '{blob}', which no "
                                 "input or earlier layer produces")
        tensor = self.blobs[blob]
        self.consumed.add(tensor)
        return tensor

    def bottoms(self) -> list[str]:
        return [self.bottom(i) for i in range(len(self.layer.bottom))]

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self.shapes[tensor]

    def top(self, i: int, shape: Sequence[int]) -> str:
        """A new tensor for the layer's ``i``-th top blob (with its static shape)."""
        layer = self.layer
        if i >= len(layer.top):
            raise self.fail(f"expects at least {i + 1} top blob(s), has {len(layer.top)}")
        blob = layer.top[i]
        name = self.unique(blob if blob not in self.used_names else f"{blob}/{layer.name}")
        if blob not in self.blobs:
            self.blob_order.append(blob)
        self.blobs[blob] = name
        self.shapes[name] = tuple(int(d) for d in shape)
        self.producers[name] = (layer.name, i)
        if any(d <= 0 for d in shape):
            raise self.fail(f"output '{blob}' would have shape {list(shape)}; check the input "
                            "shape and the layer's kernel/stride/pad")
        return name

    def temp(self, role: str, shape: Sequence[int]) -> str:
        name = self.unique(f"{self.layer.name}/{role}")
        self.shapes[name] = tuple(int(d) for d in shape)
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], role: str | None = None,
             **attrs) -> None:
        name = self.layer.name if role is None else f"{self.layer.name}/{role}"
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def const(self, role: str, value, dtype=np.float32) -> str:
        name = self.unique(f"{self.layer.name}.{role}")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    # -- weights --------------------------------------------------------------------------------

    def blob(self, index: int, shape: Sequence[int], init: str, *, fan_in: int = 1) -> np.ndarray:
        """The layer's weight blob ``index`` (from the caffemodel, or generated), as ``shape``.

        ``init`` picks the generated values when there is no caffemodel: ``he`` (normal, std
        sqrt(2 / fan_in)), ``bias``, ``gamma`` (around 1), ``mean``, ``var``, ``one``, ``slope``.
        """
        shape = tuple(int(d) for d in shape)
        count = int(np.prod(shape, dtype=np.int64))
        self.blob_span = max(self.blob_span, index + 1)
        if self.weights is None:
            value = _generate(self.rng, init, shape, fan_in)
            if self.record is not None:
                self.record.setdefault(self.layer.name, {})[index] = value
            return value
        blobs = self.weights.get(self.layer.name)
        if blobs is None:
            raise ModelLoadError(f"{self.where}: the caffemodel has no weights for layer "
                                 f"'{self.layer.name}' (type {self.layer.type})")
        if index >= len(blobs):
            raise ModelLoadError(f"{self.where}: layer '{self.layer.name}' needs weight blob "
                                 f"{index}, the caffemodel has {len(blobs)}")
        value = blobs[index]
        if value.size != count:
            raise ModelLoadError(
                f"{self.where}: layer '{self.layer.name}': caffemodel blob {index} has shape "
                f"{list(value.shape)}, the prototxt implies {list(shape)}")
        return value.reshape(shape).astype(np.float32)

    def has_blob(self, index: int) -> bool:
        self.blob_span = max(self.blob_span, index + 1)
        if self.weights is None:
            return True
        return len(self.weights.get(self.layer.name, ())) > index


def _generate(rng: np.random.Generator, init: str, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    if init == "he":
        v = rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))
    elif init == "bias":
        v = rng.standard_normal(shape) * 0.1
    elif init == "gamma":
        v = rng.uniform(0.5, 1.5, shape)
    elif init == "mean":
        v = rng.standard_normal(shape) * 0.2
    elif init == "var":
        v = rng.uniform(0.5, 2.0, shape)
    elif init == "one":
        v = np.ones(shape)
    elif init == "slope":
        v = rng.uniform(0.05, 0.3, shape)
    else:  # pragma: no cover - programming error
        raise ValueError(init)
    return v.astype(np.float32)


def _axis(ctx: _Context, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ctx.fail(f"{what} {axis} is out of range for a {rank}-D blob")
    return axis % rank
