"""Caffe recipes: real architectures as deploy prototxts plus generated ``.caffemodel`` weights.

    from models_zoo import caffe_models
    prototxt, caffemodel = caffe_models.write("squeezenet1_1", "out/")

Nothing is stored: each prototxt is written by the code below, layer by layer, and its caffemodel is
generated deterministically (seeded) in Caffe's own blob layout, the way Caffe itself saves one: a
``NetParameter`` whose layers carry ``blobs``. BatchNorm blobs are stored as Caffe's training leaves
them, scaled by a moving-average factor held in the third blob, so readers must undo it.

The three networks cover both input conventions (the legacy ``input:``/``input_dim:`` header and the
``Input`` layer), both blob-shape encodings (legacy ``num/channels/height/width`` and ``BlobShape``),
in-place layers, grouped (depthwise) convolution, Caffe's ceil-rounded pooling and global pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: BatchNorm blobs hold mean * f and var * f, with f in blob 2 (a typical trained value)
BN_FACTOR = 999.982


class Enum(str):
    """A prototxt enum value (written without quotes)."""


def _format(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


class Prototxt:
    """A small writer for Caffe net definitions in text format."""

    def __init__(self, name: str):
        self.lines = [f'name: "{name}"']

    def header_input(self, name: str, shape: tuple[int, ...]) -> str:
        """The legacy header: ``input: NAME`` + four ``input_dim`` values."""
        self.lines.append(f'input: "{name}"')
        self.lines.extend(f"input_dim: {d}" for d in shape)
        return name

    def input_layer(self, name: str, shape: tuple[int, ...]) -> str:
        return self.layer(name, "Input", [], [name],
                          input_param={"shape": {"dim": list(shape)}})[0]

    def layer(self, name: str, type_: str, bottoms: list[str], tops: list[str] | None = None,
              **params) -> list[str]:
        tops = [name] if tops is None else tops
        body = [f'  name: "{name}"', f'  type: "{type_}"']
        body += [f'  bottom: "{b}"' for b in bottoms]
        body += [f'  top: "{t}"' for t in tops]
        for key, value in params.items():
            body += self._block(key, value, "  ")
        self.lines += ["layer {", *body, "}"]
        return tops

    def _block(self, key: str, value, indent: str) -> list[str]:
        if isinstance(value, dict):
            inner = [line for k, v in value.items() for line in self._block(k, v, indent + "  ")]
            return [f"{indent}{key} {{", *inner, f"{indent}}}"]
        if isinstance(value, (list, tuple)):
            return [line for v in value for line in self._block(key, v, indent)]
        return [f"{indent}{key}: {_format(value)}"]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    # -- composite helpers ----------------------------------------------------------------------

    def conv(self, name: str, bottom: str, num_output: int, kernel: int, stride: int = 1,
             pad: int = 0, group: int = 1, bias: bool = True, top: str | None = None) -> str:
        param = {"num_output": num_output, "kernel_size": kernel}
        if pad:
            param["pad"] = pad
        if stride != 1:
            param["stride"] = stride
        if group != 1:
            param["group"] = group
        if not bias:
            param["bias_term"] = False
        return self.layer(name, "Convolution", [bottom], [top or name],
                          convolution_param=param)[0]

    def relu(self, name: str, blob: str) -> str:
        return self.layer(name, "ReLU", [blob], [blob])[0]  # in place, as Caffe nets do

    def bn_scale_relu(self, prefix: str, blob: str) -> str:
        self.layer(f"{prefix}/bn", "BatchNorm", [blob], [blob],
                   batch_norm_param={"use_global_stats": True, "eps": 1e-5})
        self.layer(f"{prefix}/scale", "Scale", [blob], [blob], scale_param={"bias_term": True})
        return self.relu(f"{prefix}/relu", blob)

    def pool(self, name: str, bottom: str, method: str, kernel: int = 0, stride: int = 1,
             pad: int = 0, global_: bool = False) -> str:
        param: dict = {"pool": Enum(method)}
        if global_:
            param["global_pooling"] = True
        else:
            param.update(kernel_size=kernel, stride=stride)
            if pad:
                param["pad"] = pad
        return self.layer(name, "Pooling", [bottom], pooling_param=param)[0]


# --------------------------------------------------------------------------------------------------
# architectures


def lenet() -> Prototxt:
    """LeNet-5 as in Caffe's MNIST example (lenet.prototxt), legacy input header, batch 2."""
    p = Prototxt("LeNet")
    x = p.header_input("data", (2, 1, 28, 28))
    x = p.conv("conv1", x, 20, 5)
    x = p.pool("pool1", x, "MAX", 2, 2)
    x = p.conv("conv2", x, 50, 5)
    x = p.pool("pool2", x, "MAX", 2, 2)
    x = p.layer("ip1", "InnerProduct", [x], inner_product_param={"num_output": 500})[0]
    x = p.relu("relu1", x)
    x = p.layer("ip2", "InnerProduct", [x], inner_product_param={"num_output": 10})[0]
    p.layer("prob", "Softmax", [x])
    return p


def squeezenet1_1() -> Prototxt:
    """SqueezeNet v1.1 (Iandola et al.; DeepScale's deploy net): fire modules, ceil pooling."""
    p = Prototxt("SqueezeNet_v1.1")
    x = p.input_layer("data", (1, 3, 227, 227))
    x = p.relu("relu_conv1", p.conv("conv1", x, 64, 3, stride=2))
    x = p.pool("pool1", x, "MAX", 3, 2)

    def fire(n: int, x: str, squeeze: int, expand: int) -> str:
        f = f"fire{n}"
        s = p.relu(f"{f}/relu_squeeze1x1", p.conv(f"{f}/squeeze1x1", x, squeeze, 1))
        e1 = p.relu(f"{f}/relu_expand1x1", p.conv(f"{f}/expand1x1", s, expand, 1))
        e3 = p.relu(f"{f}/relu_expand3x3", p.conv(f"{f}/expand3x3", s, expand, 3, pad=1))
        return p.layer(f"{f}/concat", "Concat", [e1, e3])[0]

    x = fire(3, fire(2, x, 16, 64), 16, 64)
    x = p.pool("pool3", x, "MAX", 3, 2)
    x = fire(5, fire(4, x, 32, 128), 32, 128)
    x = p.pool("pool5", x, "MAX", 3, 2)
    for n, (s, e) in zip(range(6, 10), [(48, 192), (48, 192), (64, 256), (64, 256)]):
        x = fire(n, x, s, e)
    x = p.layer("drop9", "Dropout", [x], [x], dropout_param={"dropout_ratio": 0.5})[0]
    x = p.relu("relu_conv10", p.conv("conv10", x, 1000, 1))
    x = p.pool("pool10", x, "AVE", global_=True)
    p.layer("prob", "Softmax", [x])
    return p


def mobilenet_v1() -> Prototxt:
    """MobileNet v1 1.0-224 (Howard et al.) in the usual Caffe form: conv + BatchNorm + Scale +
    ReLU in place, depthwise convolutions as grouped convs, a 1x1 conv as the classifier."""
    p = Prototxt("MobileNet_v1")
    x = p.input_layer("data", (1, 3, 224, 224))
    x = p.bn_scale_relu("conv1", p.conv("conv1", x, 32, 3, stride=2, pad=1, bias=False))
    channels = 32
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
            (1024, 2), (1024, 1)]
    for i, (out, stride) in enumerate(plan):
        name = f"conv{i // 2 + 2}_{i % 2 + 1}" if i < 12 else f"conv{i - 6}"
        x = p.bn_scale_relu(f"{name}/dw", p.conv(f"{name}/dw", x, channels, 3, stride=stride,
                                                 pad=1, group=channels, bias=False))
        x = p.bn_scale_relu(f"{name}/sep", p.conv(f"{name}/sep", x, out, 1, bias=False))
        channels = out
    x = p.pool("pool6", x, "AVE", global_=True)
    x = p.conv("fc7", x, 1000, 1)
    p.layer("prob", "Softmax", [x])
    return p


@dataclass(frozen=True)
class CaffeEntry:
    build: Callable[[], Prototxt]
    description: str
    #: write blob shapes with the legacy num/channels/height/width fields instead of BlobShape
    legacy_blobs: bool = False


MODELS: dict[str, CaffeEntry] = {
    "lenet": CaffeEntry(lenet, "LeNet-5 (MNIST), legacy input header and 4-D blob fields", True),
    "squeezenet1_1": CaffeEntry(squeezenet1_1, "SqueezeNet v1.1, 227x227, fire modules"),
    "mobilenet_v1": CaffeEntry(mobilenet_v1, "MobileNet v1 1.0-224 with BatchNorm + Scale"),
}


def names() -> list[str]:
    return sorted(MODELS)


def prototxt(name: str) -> str:
    return MODELS[name].build().text()


def caffemodel(name: str, seed: int = 0) -> bytes:
    """The generated weights of ``name`` as a serialized ``NetParameter`` (a .caffemodel)."""
    return generate_caffemodel(prototxt(name), seed, legacy_blobs=MODELS[name].legacy_blobs,
                               where=f"{name}.prototxt")


def generate_caffemodel(text: str, seed: int = 0, *, legacy_blobs: bool = False,
                        bn_factor: float = BN_FACTOR, where: str = "<prototxt>") -> bytes:
    """Seeded weights for any deploy prototxt ``text``, serialized as Caffe saves them.

    The blob shapes come from mmopt's converter, which records the weights it generates; BatchNorm
    statistics are then stored scaled by ``bn_factor`` with the factor as the third blob.
    """
    from mmopt.frontends.caffe import proto
    from mmopt.frontends.caffe.converter import convert

    net = proto.parse_prototxt(text, where)
    blobs: dict[str, dict[int, np.ndarray]] = {}
    convert(net, where=where, weights=None, seed=seed, record=blobs)
    out = proto.new_net()
    out.name = net.name
    for layer in net.layer:  # every layer, as Caffe saves them; those without weights have no blobs
        saved = out.layer.add(name=layer.name, type=layer.type)
        saved.bottom.extend(layer.bottom)
        saved.top.extend(layer.top)
        arrays = [blobs[layer.name][i] for i in sorted(blobs.get(layer.name, {}))]
        if layer.type == "BatchNorm":
            arrays = [arrays[0] * bn_factor, arrays[1] * bn_factor,
                      np.array([bn_factor], np.float32)]
        for array in arrays:
            blob = saved.blobs.add()
            if legacy_blobs:
                dims = [1] * (4 - array.ndim) + list(array.shape)
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    return out.SerializeToString()


def write(name: str, directory, seed: int = 0) -> tuple[Path, Path]:
    """Write ``NAME.prototxt`` and ``NAME.caffemodel`` into ``directory``; return both paths."""
    if name not in MODELS:
        raise KeyError(f"unknown Caffe zoo model {name!r}; known: {', '.join(names())}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    proto_path = directory / f"{name}.prototxt"
    model_path = directory / f"{name}.caffemodel"
    proto_path.write_text(prototxt(name))
    model_path.write_bytes(caffemodel(name, seed))
    return proto_path, model_path
