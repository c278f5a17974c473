"""Structured fuzzing of mmopt's front doors: mutated models through the CLI verbs, outcomes classified.

    cases = generate(count=200, seed=0)                 # deterministic for a (count, seed)
    results = run(cases, compile_limit=10)              # each (case, verb) in a worker, timed out
    print(render(results))                              # the outcome table

A case is a seed model (small zoo ONNX models, among them one with If subgraphs and LSTM state; the
Caffe zoo nets as prototxt + caffemodel; a small TFLite flatbuffer when TensorFlow is importable)
with one structured mutation: dropped initializers, dangling inputs, bad attribute values and
types, wrong dtypes and dims, cycles, out-of-order nodes, opset and IR version changes, byte flips,
truncation, duplicate names, empty graphs, unknown operators; for Caffe, prototxt edits (numbers,
layer types, bottoms, braces, lines) and damaged or missing caffemodels; for TFLite, flipped,
truncated or zeroed bytes. Unmutated seeds are cases too (they must compile and verify).

Each case runs through ``mmopt inspect``, ``optimize`` and ``compile --target x86`` (compiles of
models that load are limited: ``compile_limit``), and every ``subset``-th case also through
``quantize`` and ``check``. Verbs run in a worker process that imports mmopt once and calls the
click command the way the ``mmopt`` script does; each call has a timeout, and the worker's own
file descriptors 1 and 2 are captured so output written from C++ is seen. Outcomes:

* ``ok``: exit 0 (``compile``: compiled and verified; ``check``: exit 1, a failed gate, is ok too);
* ``clean-error``: exit 2 with exactly one line, ``mmopt: error: ...``, and nothing else on stderr;
* ``verify-failed``: ``compile`` exit 1 (compiled code disagrees with onnxruntime);
* ``messy-error``: any other exit, or an error that is not one line (C++ output included);
* ``internal-error``: exit 3 (``mmopt: internal error: ...``);
* ``crash``: the worker died from a signal; ``hang``: the call ran past its timeout.

Anything but ``ok`` and ``clean-error`` is a finding. ``python benchmarks/fuzz.py`` runs long.

The worker is started with multiprocessing's ``spawn``, which imports the calling script's main
module again in the worker: a script that calls :func:`run` must do so under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import multiprocessing as mp
import os
import re
import shutil
import signal
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUTCOMES = ("ok", "clean-error", "verify-failed", "messy-error", "internal-error", "crash", "hang")
FINDINGS = ("verify-failed", "messy-error", "internal-error", "crash", "hang")
VERBS = ("inspect", "optimize", "compile", "quantize", "check")
#: seconds a call may take before it counts as a hang
TIMEOUTS = {"inspect": 120, "optimize": 180, "compile": 600, "quantize": 300, "check": 180}


# --------------------------------------------------------------------------------------------------
# cases


@dataclasses.dataclass
class Case:
    id: str
    family: str  # onnx | caffe | tflite
    seed_model: str
    mutation: str
    #: file name -> content, written into the case's own directory
    files: dict[str, bytes]
    #: the MODEL argument (a name in ``files``)
    model: str
    #: extra arguments for every verb (``--random-weights``, ``--input-shape ...``)
    args: tuple[str, ...] = ()


@dataclasses.dataclass
class Result:
    case: str
    family: str
    mutation: str
    verb: str
    outcome: str
    exit_code: int | None
    seconds: float
    #: first line of stderr (the error), or the signal / timeout
    message: str = ""


#: the zoo models mutated (small ones; vad_lstm_if has If subgraphs and LSTM state)
ONNX_SEEDS = ("conv_bn_relu", "mobilenet_v3_style", "mlp_gelu", "lstm_classifier",
              "transformer_block", "vad_lstm_if")
CAFFE_SEEDS = ("lenet", "mobilenet_v1")


@functools.cache
def onnx_seeds(names: tuple[str, ...] = ONNX_SEEDS) -> dict[str, tuple[bytes, tuple[str, ...]]]:
    """name -> (serialized model, extra CLI arguments)."""
    from models_zoo import MODELS, build

    seeds = {}
    for name in names:
        args: tuple[str, ...] = ()
        if name == "vad_lstm_if":  # its state's batch dim is not the leading one
            for key in ("input", "h", "c"):
                args += ("--input-shape", f"{key}:" + ",".join(map(str, MODELS[name].input_shapes[key])))
        seeds[name] = (build(name).SerializeToString(), args)
    return seeds


@functools.cache
def caffe_seeds(names: tuple[str, ...] = CAFFE_SEEDS) -> dict[str, tuple[str, bytes]]:
    from models_zoo import caffe_models

    return {name: (caffe_models.prototxt(name), caffe_models.caffemodel(name)) for name in names}


def tflite_available() -> str | None:
    """None when TFLite cases can be made, else why not."""
    import importlib.util

    for module in ("tensorflow", "tf2onnx"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not importable"
    return None


@functools.cache
def tflite_seed() -> bytes:
    """A small float TFLite model (Conv, ReLU, pooling, Dense), converted by TensorFlow once and
    cached under mmopt's cache directory by TensorFlow version (importing TensorFlow in the
    process that generates cases costs more than the whole rest of a CI run)."""
    import importlib.metadata

    from mmopt.zoo import cache_dir

    dists = importlib.metadata.packages_distributions().get("tensorflow") or ["tensorflow"]
    version = "-".join(f"{d}{importlib.metadata.version(d)}" for d in sorted(set(dists)))
    cached = cache_dir() / "fuzz" / f"tiny-{version}.tflite"
    if cached.is_file():
        return cached.read_bytes()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from models_zoo import tf_models

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    with tempfile.TemporaryDirectory() as tmp:
        data = tf_models.save(model, Path(tmp) / "tiny.tflite", "tflite").read_bytes()
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + f".{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(cached)
    return data


# -- ONNX mutations ------------------------------------------------------------------------------

Mutation = Callable[[onnx.ModelProto, np.random.Generator], "onnx.ModelProto | bytes | None"]
ONNX_MUTATIONS: dict[str, Mutation] = {}


def _onnx_mutation(func: Mutation) -> Mutation:
    ONNX_MUTATIONS[func.__name__] = func
    return func


def _graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    out, todo = [], [model.graph]
    while todo:
        graph = todo.pop()
        out.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    todo.append(attr.g)
                todo.extend(attr.graphs)
    return out


def _pick_graph(model, rng, need_nodes: int = 1) -> onnx.GraphProto | None:
    graphs = [g for g in _graphs(model) if len(g.node) >= need_nodes]
    return graphs[rng.integers(len(graphs))] if graphs else None


def _pick_node(model, rng) -> onnx.NodeProto | None:
    graph = _pick_graph(model, rng)
    return graph.node[rng.integers(len(graph.node))] if graph is not None else None


@_onnx_mutation
def drop_initializer(model, rng):
    graphs = [g for g in _graphs(model) if g.initializer]
    if not graphs:
        return None
    graph = graphs[rng.integers(len(graphs))]
    del graph.initializer[int(rng.integers(len(graph.initializer)))]
    return model


@_onnx_mutation
def dangling_input(model, rng):
    node = _pick_node(model, rng)
    if node is None or not node.input:
        return None
    node.input[int(rng.integers(len(node.input)))] = f"fuzz_missing_{rng.integers(1000)}"
    return model


_WEIRD_INTS = [0, -1, -7, 3, 1 << 31, -(1 << 40), 1 << 62]
_WEIRD_FLOATS = [float("nan"), float("inf"), -1e30, 0.0, -1.0, 1e-45]


@_onnx_mutation
def bad_attribute_value(model, rng):
    nodes = [n for g in _graphs(model) for n in g.node if n.attribute]
    if not nodes:
        return None
    node = nodes[rng.integers(len(nodes))]
    attr = node.attribute[int(rng.integers(len(node.attribute)))]
    if attr.type == onnx.AttributeProto.INT:
        attr.i = int(rng.choice(_WEIRD_INTS))
    elif attr.type == onnx.AttributeProto.INTS:
        values = list(attr.ints)
        choice = rng.integers(4)
        if choice == 0 and values:
            values.pop(int(rng.integers(len(values))))
        elif choice == 1:
            values.append(int(rng.choice(_WEIRD_INTS)))
        elif values:
            values[int(rng.integers(len(values)))] = int(rng.choice(_WEIRD_INTS))
        del attr.ints[:]
        attr.ints.extend(values)
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(rng.choice(_WEIRD_FLOATS))
    elif attr.type == onnx.AttributeProto.FLOATS:
        values = list(attr.floats) or [0.0]
        values[int(rng.integers(len(values)))] = float(rng.choice(_WEIRD_FLOATS))
        del attr.floats[:]
        attr.floats.extend(values)
    elif attr.type == onnx.AttributeProto.STRING:
        attr.s = rng.choice([b"", b"NOT_A_MODE", b"\xff\xfe", b"SAME_UPPRE"])
    elif attr.type == onnx.AttributeProto.TENSOR:
        attr.t.dims.append(int(rng.integers(2, 5)))  # the data no longer fits the dims
    elif attr.type == onnx.AttributeProto.GRAPH:
        del attr.g.output[:]
    else:
        return None
    return model


@_onnx_mutation
def bad_attribute_type(model, rng):
    nodes = [n for g in _graphs(model) for n in g.node if n.attribute]
    if not nodes:
        return None
    node = nodes[rng.integers(len(nodes))]
    index = int(rng.integers(len(node.attribute)))
    name = node.attribute[index].name
    replacement = [helper.make_attribute(name, 1.5), helper.make_attribute(name, "text"),
                   helper.make_attribute(name, [1, 2, 3]), helper.make_attribute(name, 7),
                   helper.make_attribute(name, [0.5, 0.25])][rng.integers(5)]
    if replacement.type == node.attribute[index].type:
        replacement = helper.make_attribute(name, b"bytes")
    node.attribute[index].CopyFrom(replacement)
    return model


@_onnx_mutation
def unknown_attribute(model, rng):
    node = _pick_node(model, rng)
    if node is None:
        return None
    node.attribute.append(helper.make_attribute(f"fuzz_attr_{rng.integers(100)}", 1))
    return model


_DTYPES = [TensorProto.UNDEFINED, TensorProto.INT32, TensorProto.DOUBLE, TensorProto.STRING,
           TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.UINT8, TensorProto.INT64, 99]


@_onnx_mutation
def wrong_dtype(model, rng):
    if rng.integers(2) == 0 and model.graph.input:
        value = model.graph.input[int(rng.integers(len(model.graph.input)))]
        value.type.tensor_type.elem_type = int(rng.choice(_DTYPES))
        return model
    if not model.graph.initializer:
        return None
    tensor = model.graph.initializer[int(rng.integers(len(model.graph.initializer)))]
    tensor.data_type = int(rng.choice(_DTYPES))
    return model


@_onnx_mutation
def wrong_dims(model, rng):
    if rng.integers(2) == 0 and model.graph.input:
        shape = model.graph.input[int(rng.integers(len(model.graph.input)))].type.tensor_type.shape
        choice = rng.integers(4)
        if choice == 0 and shape.dim:
            del shape.dim[int(rng.integers(len(shape.dim)))]
        elif choice == 1:
            shape.dim.add().dim_value = int(rng.integers(1, 4))
        elif shape.dim:
            dim = shape.dim[int(rng.integers(len(shape.dim)))]
            dim.dim_value = int(rng.choice([0, -3, 1 << 40, 7]))
        else:
            return None
        return model
    tensors = [t for t in model.graph.initializer if t.dims]
    if not tensors:
        return None
    tensor = tensors[rng.integers(len(tensors))]
    tensor.dims[int(rng.integers(len(tensor.dims)))] += int(rng.choice([-1, 1, 5]))
    return model


@_onnx_mutation
def cycle(model, rng):
    graph = _pick_graph(model, rng, need_nodes=2)
    if graph is None:
        return None
    i, j = sorted(rng.choice(len(graph.node), size=2, replace=False))
    early, late = graph.node[int(i)], graph.node[int(j)]
    if not early.input or not late.output:
        return None
    early.input[int(rng.integers(len(early.input)))] = late.output[0]
    return model


@_onnx_mutation
def shuffled_nodes(model, rng):
    graph = _pick_graph(model, rng, need_nodes=2)
    if graph is None:
        return None
    nodes = list(graph.node)
    order = rng.permutation(len(nodes))
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return model


@_onnx_mutation
def opset_change(model, rng):
    choice = rng.integers(3)
    if choice == 0:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = int(rng.choice([1, 5, 9, 11, 13, 16, 18, 21, 23, 30, 1000]))
    elif choice == 1:
        keep = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    else:
        node = _pick_node(model, rng)
        if node is None:
            return None
        node.domain = rng.choice(["com.fuzz", "ai.onnx.ml", "com.microsoft"])
    return model


@_onnx_mutation
def ir_version_change(model, rng):
    model.ir_version = int(rng.choice([0, 1, 2, 3, 6, 11, 100]))
    return model


@_onnx_mutation
def unknown_operator(model, rng):
    node = _pick_node(model, rng)
    if node is None:
        return None
    node.op_type = str(rng.choice(["FuzzOp", "Softmax", "Relu", "Conv", "If", "Loop", "Gemm",
                                   "Reshape", "LSTM"]))
    return model


@_onnx_mutation
def input_count_change(model, rng):
    node = _pick_node(model, rng)
    if node is None:
        return None
    if node.input and rng.integers(2) == 0:
        del node.input[-1]
    else:
        node.input.append(node.input[0] if node.input else "")
    return model


@_onnx_mutation
def duplicate_name(model, rng):
    graph = _pick_graph(model, rng, need_nodes=2)
    if graph is None:
        return None
    choice = rng.integers(3)
    if choice == 0:
        i, j = rng.choice(len(graph.node), size=2, replace=False)
        graph.node[int(j)].output[0] = graph.node[int(i)].output[0]
    elif choice == 1 and graph.input:
        graph.input.append(copy.deepcopy(graph.input[0]))
    elif graph.initializer:
        graph.initializer.append(copy.deepcopy(graph.initializer[0]))
    else:
        return None
    return model


@_onnx_mutation
def empty_graph(model, rng):
    choice = rng.integers(3)
    graph = model.graph if choice != 2 else (_pick_graph(model, rng) or model.graph)
    if choice == 0:
        del graph.node[:]
    elif choice == 1:
        del graph.output[:]
    else:
        del graph.node[:]
        del graph.initializer[:]
    return model


@_onnx_mutation
def output_not_produced(model, rng):
    graph = _pick_graph(model, rng)
    if graph is None or not graph.output:
        return None
    graph.output[int(rng.integers(len(graph.output)))].name = f"fuzz_output_{rng.integers(100)}"
    return model


@_onnx_mutation
def byte_flip(model, rng):
    data = bytearray(model.SerializeToString())
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return bytes(data)


@_onnx_mutation
def byte_flip_header(model, rng):
    """Flips in the first KiB: names, op types, opset, graph structure rather than weights."""
    data = bytearray(model.SerializeToString())
    head = min(len(data), 1024)
    for _ in range(int(rng.integers(1, 4))):
        data[int(rng.integers(head))] ^= 1 << int(rng.integers(8))
    return bytes(data)


@_onnx_mutation
def truncate(model, rng):
    data = model.SerializeToString()
    return data[:int(rng.integers(0, len(data)))]


# -- Caffe mutations -------------------------------------------------------------------------------

CaffeMutation = Callable[[str, bytes, np.random.Generator],
                         "tuple[str | bytes, bytes | None, tuple[str, ...]] | None"]
CAFFE_MUTATIONS: dict[str, CaffeMutation] = {}


def _caffe_mutation(func: CaffeMutation) -> CaffeMutation:
    CAFFE_MUTATIONS[func.__name__] = func
    return func


@_caffe_mutation
def number_tweak(text, weights, rng):
    numbers = list(re.finditer(r"(?<=: )\d+", text))
    if not numbers:
        return None
    m = numbers[rng.integers(len(numbers))]
    value = str(rng.choice(["0", "-1", "99999", str(1 << 40), "3"]))
    return text[:m.start()] + value + text[m.end():], weights, ()


@_caffe_mutation
def unknown_layer_type(text, weights, rng):
    types = list(re.finditer(r'type: "(\w+)"', text))
    m = types[rng.integers(len(types))]
    new = str(rng.choice(["FuzzLayer", "PriorBox", "Data", "Convolution", "Pooling", "Softmax"]))
    return text[:m.start(1)] + new + text[m.end(1):], weights, ()


@_caffe_mutation
def dangling_bottom(text, weights, rng):
    bottoms = list(re.finditer(r'bottom: "([^"]+)"', text))
    if not bottoms:
        return None
    m = bottoms[rng.integers(len(bottoms))]
    return text[:m.start(1)] + "fuzz_missing" + text[m.end(1):], weights, ()


@_caffe_mutation
def break_syntax(text, weights, rng):
    positions = [i for i, ch in enumerate(text) if ch in "{}:\""]
    i = positions[rng.integers(len(positions))]
    return text[:i] + text[i + 1:], weights, ()


@_caffe_mutation
def delete_line(text, weights, rng):
    lines = text.splitlines(keepends=True)
    del lines[int(rng.integers(len(lines)))]
    return "".join(lines), weights, ()


@_caffe_mutation
def duplicate_layer(text, weights, rng):
    layers = list(re.finditer(r"layer \{.*?\n\}\n", text, re.S))
    if not layers:
        return None
    m = layers[rng.integers(len(layers))]
    return text[:m.end()] + m.group(0) + text[m.end():], weights, ()


@_caffe_mutation
def prototxt_byte_flip(text, weights, rng):
    data = bytearray(text.encode())
    for _ in range(int(rng.integers(1, 5))):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return bytes(data), weights, ()


@_caffe_mutation
def caffemodel_byte_flip(text, weights, rng):
    data = bytearray(weights)
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return text, bytes(data), ()


@_caffe_mutation
def caffemodel_truncate(text, weights, rng):
    return text, weights[:int(rng.integers(0, len(weights)))], ()


@_caffe_mutation
def caffemodel_missing(text, weights, rng):
    return text, None, ("--random-weights",) if rng.integers(2) else ()


@_caffe_mutation
def caffemodel_of_another_net(text, weights, rng):
    from models_zoo import caffe_models

    other = [n for n in caffe_models.names() if caffe_models.prototxt(n) != text]
    return text, caffe_models.caffemodel(other[rng.integers(len(other))]), ()


@_caffe_mutation
def empty_prototxt(text, weights, rng):
    return "", weights, ()


# -- TFLite mutations ------------------------------------------------------------------------------

TFLITE_MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "byte_flip": lambda data, rng: _flip(data, rng, int(rng.integers(1, 9))),
    "byte_flip_header": lambda data, rng: _flip(data, rng, int(rng.integers(1, 4)), limit=512),
    "truncate": lambda data, rng: data[:int(rng.integers(8, len(data)))],
    "zeroed_block": lambda data, rng: _zero(data, rng),
}


def _flip(data: bytes, rng, count: int, limit: int | None = None) -> bytes:
    out = bytearray(data)
    top = min(len(out), limit or len(out))
    for _ in range(count):
        out[int(rng.integers(8, top))] ^= 1 << int(rng.integers(8))  # keep the identifier
    return bytes(out)


def _zero(data: bytes, rng) -> bytes:
    start = int(rng.integers(8, len(data) - 16))
    size = int(rng.integers(4, 64))
    return data[:start] + bytes(min(size, len(data) - start)) + data[start + size:]


# -- generation --------------------------------------------------------------------------------------


def generate(count: int, seed: int = 0, *, tflite: bool = True,
             onnx_models: Sequence[str] = ONNX_SEEDS, caffe_nets: Sequence[str] = CAFFE_SEEDS,
             unmutated: Sequence[str] | None = None,
             mix: Sequence[tuple[str, float]] = (("onnx", 0.7), ("caffe", 0.22), ("tflite", 0.08))
             ) -> list[Case]:
    """``count`` cases from ``seed``: the unmutated seed models first (``unmutated``: only these
    names; default all), then mutations of ``onnx_models``, ``caffe_nets`` and (``tflite``, when
    TensorFlow is importable) a small TFLite model, drawn in the proportions of ``mix``."""
    rng = np.random.default_rng(seed)
    onnx_models, caffe_nets = tuple(onnx_models), tuple(caffe_nets)
    families = [f for f, _ in mix if f != "tflite" or (tflite and tflite_available() is None)]
    weights = np.array([w for f, w in mix if f in families])
    weights = weights / weights.sum()
    keep = (lambda name: True) if unmutated is None else (lambda name: name in unmutated)
    cases: list[Case] = []
    for name, (data, args) in onnx_seeds(onnx_models).items():
        if keep(name):
            cases.append(Case(f"onnx/{name}/seed", "onnx", name, "none", {"model.onnx": data},
                              "model.onnx", args))
    for name, (text, weights_) in caffe_seeds(caffe_nets).items():
        if keep(name):
            cases.append(Case(f"caffe/{name}/seed", "caffe", name, "none",
                              {"deploy.prototxt": text.encode(), "deploy.caffemodel": weights_},
                              "deploy.prototxt"))
    if "tflite" in families and keep("tiny"):
        cases.append(Case("tflite/tiny/seed", "tflite", "tiny", "none",
                          {"model.tflite": tflite_seed()}, "model.tflite"))
    cases = cases[:count]
    attempts = 0
    while len(cases) < count and attempts < count * 20:
        attempts += 1
        family = families[rng.choice(len(families), p=weights)]
        case = _mutate(family, rng, len(cases), onnx_models, caffe_nets)
        if case is not None:
            cases.append(case)
    return cases


def _mutate(family: str, rng, index: int, onnx_models: tuple[str, ...],
            caffe_nets: tuple[str, ...]) -> Case | None:
    if family == "onnx":
        seeds = onnx_seeds(onnx_models)
        name = list(seeds)[rng.integers(len(seeds))]
        data, args = seeds[name]
        mutation = list(ONNX_MUTATIONS)[rng.integers(len(ONNX_MUTATIONS))]
        model = onnx.ModelProto.FromString(data)
        out = ONNX_MUTATIONS[mutation](model, rng)
        if out is None:
            return None
        content = out if isinstance(out, bytes) else out.SerializeToString()
        return Case(f"onnx/{name}/{mutation}/{index}", "onnx", name, mutation,
                    {"model.onnx": content}, "model.onnx", args)
    if family == "caffe":
        seeds = caffe_seeds(caffe_nets)
        name = list(seeds)[rng.integers(len(seeds))]
        text, weights = seeds[name]
        mutation = list(CAFFE_MUTATIONS)[rng.integers(len(CAFFE_MUTATIONS))]
        out = CAFFE_MUTATIONS[mutation](text, weights, rng)
        if out is None:
            return None
        new_text, new_weights, args = out
        files = {"deploy.prototxt": new_text.encode() if isinstance(new_text, str) else new_text}
        if new_weights is not None:
            files["deploy.caffemodel"] = new_weights
        return Case(f"caffe/{name}/{mutation}/{index}", "caffe", name, mutation, files,
                    "deploy.prototxt", args)
    mutation = list(TFLITE_MUTATIONS)[rng.integers(len(TFLITE_MUTATIONS))]
    data = TFLITE_MUTATIONS[mutation](tflite_seed(), rng)
    return Case(f"tflite/tiny/{mutation}/{index}", "tflite", "tiny", mutation,
                {"model.tflite": data}, "model.tflite")


# --------------------------------------------------------------------------------------------------
# running


def verb_args(verb: str, case: Case) -> list[str]:
    model = case.model
    if verb == "inspect":
        return ["inspect", model, *case.args]
    if verb == "optimize":
        return ["optimize", model, "-o", "optimized.onnx", *case.args]
    if verb == "compile":
        return ["compile", model, "--target", "x86", "-o", "out/model", *case.args]
    if verb == "quantize":
        return ["quantize", model, "-o", "quantized.onnx", "--dtype", "fp16", *case.args]
    if verb == "check":
        return ["check", "-r", model, "-c", model, "-d", "random:2",
                *[a for a in case.args if a == "--random-weights"]]
    raise ValueError(verb)


#: worker commands that test the harness itself: the crash and hang classifications
_SELF_TESTS = {"__crash__": lambda: os.kill(os.getpid(), signal.SIGSEGV),
               "__hang__": lambda: time.sleep(3600)}


def _worker(conn) -> None:  # runs in the worker process
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    from click.testing import CliRunner

    cli = None
    while True:
        message = conn.recv()
        if message is None:
            return
        args, cwd, native_log = message
        if args and args[0] in _SELF_TESTS:
            _SELF_TESTS[args[0]]()
        if cli is None:
            from mmopt.cli.main import cli
        with open(native_log, "wb") as native:
            saved = [os.dup(1), os.dup(2)]
            os.dup2(native.fileno(), 1)
            os.dup2(native.fileno(), 2)
            try:
                os.chdir(cwd)
                result = CliRunner().invoke(cli, args, catch_exceptions=True)
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
        logging.getLogger().handlers.clear()  # the CLI configures logging per call
        conn.send((result.exit_code, result.stdout, result.stderr,
                   repr(result.exception) if result.exit_code not in (0, 1, 2, 3) else ""))


class Worker:
    """A process that imports mmopt once and runs verbs; restarted after a crash or a hang."""

    def __init__(self, recycle_after: int = 150):
        self.recycle_after = recycle_after
        self.process = None
        self.conn = None
        self.calls = 0

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.calls = 0

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None

    def call(self, args: list[str], cwd: Path, timeout: float):
        """``(exit code, stdout, stderr, native output)``, or ``("crash", signal name)`` /
        ``("hang", None)``."""
        if self.process is None or self.calls >= self.recycle_after:
            self.stop()
            self.start()
        self.calls += 1
        native_log = cwd / ".native.log"
        self.conn.send((args, str(cwd), str(native_log)))
        if not self.conn.poll(timeout):
            self.stop(kill=True)
            return "hang", None
        try:
            code, stdout, stderr, _ = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(timeout=10)
            exitcode = self.process.exitcode
            self.process = None
            name = (signal.Signals(-exitcode).name if exitcode is not None and exitcode < 0
                    else f"exit {exitcode}")
            return "crash", name
        native = native_log.read_text(errors="replace") if native_log.exists() else ""
        return code, stdout, stderr, native


def classify(verb: str, code: int, stderr: str, native: str, stdout: str = "") -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    native_lines = [line for line in native.splitlines() if line.strip()]
    first = lines[0] if lines else (native_lines[0] if native_lines else "")
    if code == 0 or (verb == "check" and code == 1):
        return "ok", ""
    if code == 3:
        return "internal-error", first
    if code == 1 and verb == "compile":
        report = [line.strip() for line in stdout.splitlines()
                  if "MISMATCH" in line or line.strip().startswith("verify")]
        return "verify-failed", " | ".join(report[:3]) or first
    if code == 2 and len(lines) == 1 and lines[0].startswith("mmopt: error: ") and not native_lines:
        return "clean-error", first
    detail = f"exit {code}, {len(lines)} stderr line(s), {len(native_lines)} native line(s): {first}"
    if native_lines:
        detail += f" | native: {native_lines[0][:150]}"
    return "messy-error", detail[:400]


def run(cases: Iterable[Case], *, compile_limit: int = 10, subset: int = 5,
        timeouts: dict[str, float] | None = None, workdir: Path | None = None,
        progress: Callable[[Result], None] | None = None) -> list[Result]:
    """Every case through the verbs (see the module docstring); results in order."""
    timeouts = {**TIMEOUTS, **(timeouts or {})}
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="mmopt-fuzz-")) if own else Path(workdir)
    worker = Worker()
    results: list[Result] = []
    compiles = 0
    try:
        for index, case in enumerate(cases):
            directory = root / f"case{index:05d}"
            directory.mkdir(parents=True, exist_ok=True)
            for name, content in case.files.items():
                (directory / name).write_bytes(content)
            verbs = ["inspect", "optimize", "compile"]
            if index % subset == 0:
                verbs += ["quantize", "check"]
            loads = None
            for verb in verbs:
                if verb == "compile" and loads:
                    if compiles >= compile_limit:
                        continue
                    compiles += 1
                start = time.perf_counter()
                reply = worker.call(verb_args(verb, case), directory, timeouts[verb])
                seconds = time.perf_counter() - start
                if reply[0] == "hang":
                    outcome, code, message = "hang", None, f"no answer in {timeouts[verb]:.0f}s"
                elif reply[0] == "crash":
                    outcome, code, message = "crash", None, f"worker died: {reply[1]}"
                else:
                    code, stdout, stderr, native = reply
                    outcome, message = classify(verb, code, stderr, native, stdout)
                if verb == "inspect":
                    loads = outcome == "ok"
                result = Result(case.id, case.family, case.mutation, verb, outcome, code,
                                round(seconds, 2), message)
                results.append(result)
                if progress is not None:
                    progress(result)
            if own:
                shutil.rmtree(directory, ignore_errors=True)
    finally:
        worker.stop()
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return results


# --------------------------------------------------------------------------------------------------
# reporting


def render(results: Sequence[Result]) -> str:
    """The outcome table: by verb, and by family/mutation (counts of (case, verb) calls)."""
    out = io.StringIO()

    def table(title: str, rows: dict[str, Counter]) -> None:
        width = max([len(title), *map(len, rows)]) + 2
        out.write(f"{title:<{width}}" + "".join(f"{o:>16}" for o in OUTCOMES) + f"{'total':>8}\n")
        for key in sorted(rows):
            counts = rows[key]
            out.write(f"{key:<{width}}" + "".join(f"{counts.get(o, 0):>16}" for o in OUTCOMES)
                      + f"{sum(counts.values()):>8}\n")

    by_verb: dict[str, Counter] = defaultdict(Counter)
    by_mutation: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_verb[r.verb][r.outcome] += 1
        by_verb["(all)"][r.outcome] += 1
        by_mutation[f"{r.family}/{r.mutation}"][r.outcome] += 1
    cases = len({r.case for r in results})
    out.write(f"{cases} cases, {len(results)} verb calls\n\n")
    table("verb", by_verb)
    out.write("\n")
    table("family/mutation", by_mutation)
    findings = [r for r in results if r.outcome in FINDINGS]
    if findings:
        out.write(f"\nfindings ({len(findings)}):\n")
        for r in findings:
            out.write(f"  {r.outcome:<15} {r.verb:<9} {r.case}: {r.message}\n")
    return out.getvalue()


__all__ = ["CAFFE_MUTATIONS", "FINDINGS", "ONNX_MUTATIONS", "OUTCOMES", "TFLITE_MUTATIONS", "Case",
           "Result", "classify", "generate", "render", "run", "tflite_available"]
