"""Model definitions and the zoo registry.

Each builder returns a freshly built, checker-validated ``onnx.ModelProto``
(opset 17, IR 8). All weights come from ``np.random.default_rng(seed)`` so a
given ``(name, kwargs)`` always serializes to the same bytes. The CNN and MLP
models take a symbolic batch dimension ``"N"`` by default (pass ``batch=1`` to
pin it); ``ZooEntry.input_shapes`` gives the concrete shapes to feed.

The models intentionally keep the *exporter-style* decompositions that the
optimizer is expected to clean up: BatchNormalization after every conv, and
hard-swish / hard-sigmoid / ReLU6 / GELU / LayerNorm spelled out as elementwise
subgraphs rather than fused ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import onnx

from ._graph import (
    Dim,
    GraphBuilder,
    add,
    channel_scale,
    classifier_head,
    conv,
    conv_bn_act,
    gelu_erf,
    gelu_tanh,
    gemm,
    global_avg_pool,
    hardsigmoid,
    layernorm,
    linear,
    maxpool,
    relu,
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` (MobileNet convention),
    never going more than 10% below the requested value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# ======================================================================
# 1. conv_bn_relu: a small CIFAR-sized CNN
# ======================================================================
def build_conv_bn_relu(seed: int = 0, num_classes: int = 10, batch: Dim = "N") -> onnx.ModelProto:
    """4 Conv-BN-ReLU blocks + MaxPool, then GAP/Flatten/Gemm, on [N,3,32,32].

    The first conv carries its own bias so BN folding must merge into an
    existing bias, not only create one.
    """
    g = GraphBuilder("conv_bn_relu", seed)
    x = g.input("input", [batch, 3, 32, 32], calibration_shape=(16, 3, 32, 32))
    x = conv_bn_act(g, x, "block0", 3, 16, 3, conv_bias=True)  # 32x32
    x = conv_bn_act(g, x, "block1", 16, 32, 3)  # 32x32
    x = maxpool(g, x, "pool", kernel=2, stride=2, pad=0)  # 16x16
    x = conv_bn_act(g, x, "block2", 32, 64, 3, stride=2)  # 8x8
    x = conv_bn_act(g, x, "block3", 64, 64, 3)  # 8x8
    logits = classifier_head(g, x, 64, num_classes)
    g.output(logits, [batch, num_classes])
    return g.model("Conv-BN-ReLU CNN for 32x32 inputs")


# ======================================================================
# 2. mobilenet_v3_style
# ======================================================================
# (expand channels, out channels, squeeze-excite?, activation, stride); all
# depthwise kernels are 3x3. Loosely follows MobileNetV3-Small, trimmed for 64x64.
_MBV3_BLOCKS = [
    (16, 16, True, "relu", 2),
    (64, 24, False, "relu", 2),
    (72, 24, False, "relu", 1),
    (96, 40, True, "hardswish", 2),
    (120, 40, True, "hardswish", 1),
    (144, 48, True, "hardswish", 1),
    (192, 48, True, "hardswish", 1),
]


def _squeeze_excite(g: GraphBuilder, x: str, prefix: str, channels: int) -> str:
    """GAP -> 1x1 Conv -> Relu -> 1x1 Conv -> decomposed HardSigmoid -> channel-wise Mul."""
    squeezed = _make_divisible(channels / 4)
    s = global_avg_pool(g, x, f"{prefix}.avgpool")
    s = conv(g, s, f"{prefix}.fc1", channels, squeezed, 1, bias=True)
    s = relu(g, s, f"{prefix}.relu")
    s = conv(g, s, f"{prefix}.fc2", squeezed, channels, 1, bias=True)
    s = hardsigmoid(g, s, f"{prefix}.hardsigmoid")
    return channel_scale(g, x, s, f"{prefix}.scale")


def build_mobilenet_v3_style(seed: int = 0, num_classes: int = 100, batch: Dim = "N") -> onnx.ModelProto:
    g = GraphBuilder("mobilenet_v3_style", seed)
    x = g.input("input", [batch, 3, 64, 64], calibration_shape=(16, 3, 64, 64))
    x = conv_bn_act(g, x, "stem", 3, 16, 3, stride=2, act="hardswish")  # 32x32
    cin = 16
    for i, (exp, cout, use_se, act, stride) in enumerate(_MBV3_BLOCKS):
        p = f"blocks.{i}"
        y = x
        if exp != cin:  # the first block has no expansion, as in MobileNetV3
            y = conv_bn_act(g, y, f"{p}.expand", cin, exp, 1, act=act)
        y = conv_bn_act(g, y, f"{p}.dw", exp, exp, 3, stride=stride, group=exp, act=act)
        if use_se:
            y = _squeeze_excite(g, y, f"{p}.se", exp)
        residual = stride == 1 and cin == cout
        # Linear bottleneck: projection has BN but no activation.
        y = conv_bn_act(g, y, f"{p}.project", exp, cout, 1, act=None, gamma_scale=0.5 if residual else 1.0)
        x = add(g, x, y, f"{p}.add") if residual else y
        cin = cout
    last = 288
    x = conv_bn_act(g, x, "last", cin, last, 1, act="hardswish")
    logits = classifier_head(g, x, last, num_classes)
    g.output(logits, [batch, num_classes])
    return g.model("MobileNetV3-style network (SE, decomposed hard-swish) for 64x64 inputs")


# ======================================================================
# 3. mobilenet_v2_style
# ======================================================================
# (expansion t, channels c, repeats n, first stride s) -- the published MobileNetV2 table.
_MBV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def build_mobilenet_v2_style(
    seed: int = 0, num_classes: int = 1000, width_mult: float = 1.0, batch: Dim = "N"
) -> onnx.ModelProto:
    g = GraphBuilder("mobilenet_v2_style", seed)
    x = g.input("input", [batch, 3, 224, 224], calibration_shape=(1, 3, 224, 224))
    cin = _make_divisible(32 * width_mult)
    x = conv_bn_act(g, x, "stem", 3, cin, 3, stride=2, act="relu6")  # 112x112
    for s, (t, c, n, first_stride) in enumerate(_MBV2_SETTINGS, start=1):
        cout = _make_divisible(c * width_mult)
        for j in range(n):
            p = f"stage{s}.block{j}"
            stride = first_stride if j == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = conv_bn_act(g, y, f"{p}.expand", cin, hidden, 1, act="relu6")
            y = conv_bn_act(g, y, f"{p}.dw", hidden, hidden, 3, stride=stride, group=hidden, act="relu6")
            residual = stride == 1 and cin == cout
            y = conv_bn_act(g, y, f"{p}.project", hidden, cout, 1, act=None, gamma_scale=0.5 if residual else 1.0)
            x = add(g, x, y, f"{p}.add") if residual else y
            cin = cout
    last = _make_divisible(1280 * max(1.0, width_mult))
    x = conv_bn_act(g, x, "last", cin, last, 1, act="relu6")  # 7x7
    logits = classifier_head(g, x, last, num_classes)
    g.output(logits, [batch, num_classes])
    return g.model(f"MobileNetV2 (width {width_mult}) for 224x224 inputs")


# ======================================================================
# 4./5. ResNets
# ======================================================================
def _resnet_stem(g: GraphBuilder, x: str) -> str:
    """7x7/2 conv + BN + ReLU, then 3x3/2 max-pool: 224 -> 56."""
    x = conv_bn_act(g, x, "stem", 3, 64, 7, stride=2)
    return maxpool(g, x, "stem.maxpool", kernel=3, stride=2, pad=1)


def _shortcut(g: GraphBuilder, x: str, prefix: str, cin: int, cout: int, stride: int) -> str:
    """Identity, or a 1x1 projection conv + BN when the shape changes."""
    if stride == 1 and cin == cout:
        return x
    return conv_bn_act(g, x, f"{prefix}.downsample", cin, cout, 1, stride=stride, act=None)


def _basic_block(g: GraphBuilder, x: str, p: str, cin: int, width: int, stride: int) -> tuple[str, int]:
    y = conv_bn_act(g, x, p, cin, width, 3, stride=stride, suffix="1")
    y = conv_bn_act(g, y, p, width, width, 3, act=None, gamma_scale=0.5, suffix="2")
    y = add(g, _shortcut(g, x, p, cin, width, stride), y, f"{p}.add")
    return relu(g, y, f"{p}.relu"), width


def _bottleneck_block(g: GraphBuilder, x: str, p: str, cin: int, width: int, stride: int) -> tuple[str, int]:
    # torchvision "v1.5" placement: the stride sits on the 3x3 conv.
    cout = width * 4
    y = conv_bn_act(g, x, p, cin, width, 1, suffix="1")
    y = conv_bn_act(g, y, p, width, width, 3, stride=stride, suffix="2")
    y = conv_bn_act(g, y, p, width, cout, 1, act=None, gamma_scale=0.5, suffix="3")
    y = add(g, _shortcut(g, x, p, cin, cout, stride), y, f"{p}.add")
    return relu(g, y, f"{p}.relu"), cout


def _build_resnet(name: str, block, layers: list[int], seed: int, num_classes: int, batch: Dim) -> onnx.ModelProto:
    g = GraphBuilder(name, seed)
    x = g.input("input", [batch, 3, 224, 224], calibration_shape=(1, 3, 224, 224))
    x = _resnet_stem(g, x)
    cin = 64
    for s, (width, n) in enumerate(zip([64, 128, 256, 512], layers), start=1):
        for j in range(n):
            stride = 2 if (s > 1 and j == 0) else 1
            x, cin = block(g, x, f"stage{s}.block{j}", cin, width, stride)
    logits = classifier_head(g, x, cin, num_classes)
    g.output(logits, [batch, num_classes])
    return g.model(f"{name}: ResNet {layers} for 224x224 inputs")


def build_resnet50_style(seed: int = 0, num_classes: int = 1000, batch: Dim = "N") -> onnx.ModelProto:
    return _build_resnet("resnet50_style", _bottleneck_block, [3, 4, 6, 3], seed, num_classes, batch)


def build_resnet18_style(seed: int = 0, num_classes: int = 1000, batch: Dim = "N") -> onnx.ModelProto:
    return _build_resnet("resnet18_style", _basic_block, [2, 2, 2, 2], seed, num_classes, batch)


# ======================================================================
# 6. mlp_gelu
# ======================================================================
def build_mlp_gelu(seed: int = 0, batch: Dim = "N") -> onnx.ModelProto:
    """[N,64] -> 128 -> 128 -> 64 -> 10, mixing MatMul+Add and Gemm layers.

    fc1 and fc3 use erf-form GELU, fc2 the tanh approximation.
    """
    g = GraphBuilder("mlp_gelu", seed)
    x = g.input("input", [batch, 64])
    x = gelu_erf(g, linear(g, x, "fc1", 64, 128, init="he"), "act1")
    x = gelu_tanh(g, gemm(g, x, "fc2", 128, 128, init="he"), "act2")
    x = gelu_erf(g, linear(g, x, "fc3", 128, 64, init="he"), "act3")
    logits = gemm(g, x, "fc_out", 64, 10)
    g.output(logits, [batch, 10])
    return g.model("MLP with decomposed GELU (erf and tanh forms)")


# ======================================================================
# 7. transformer_block
# ======================================================================
def build_transformer_block_dynamic(seed: int = 0) -> onnx.ModelProto:
    """:func:`build_transformer_block` with symbolic ``batch`` and ``seq`` (reshape targets ``0``
    and ``-1``, as exporters write them for dynamic axes); the same weights."""
    return build_transformer_block(seed, batch="batch", seq_len="seq")


def build_transformer_block(
    seed: int = 0, batch: int | str = 1, seq_len: int | str = 16, hidden: int = 64, heads: int = 4,
    ffn: int = 256
) -> onnx.ModelProto:
    """One post-LN encoder block: x = LN(x + MHA(x)); x = LN(x + FFN(x)).

    Attention is spelled out with MatMul/Add/Reshape/Transpose/Softmax, the way
    exporters lower nn.MultiheadAttention; Reshape targets are constants, so
    batch/seq are fixed at build time.
    """
    if hidden % heads:
        raise ValueError("hidden must be divisible by heads")
    head_dim = hidden // heads
    g = GraphBuilder("transformer_block", seed)
    x = g.input("input", [batch, seq_len, hidden])

    # symbolic batch/seq: 0 copies the dim, -1 infers it (how exporters write dynamic axes)
    lead = [batch if isinstance(batch, int) else 0, seq_len if isinstance(seq_len, int) else -1]

    def split_heads(t: str, name: str, perm: list[int]) -> str:
        t = g.node("Reshape", [t, g.const([*lead, heads, head_dim], "int64")], f"{name}.reshape")
        return g.node("Transpose", [t], f"{name}.transpose", perm=perm)

    q = split_heads(linear(g, x, "attn.q_proj", hidden, hidden), "attn.q", [0, 2, 1, 3])  # [B,H,S,D]
    k = split_heads(linear(g, x, "attn.k_proj", hidden, hidden), "attn.k", [0, 2, 3, 1])  # [B,H,D,S]
    v = split_heads(linear(g, x, "attn.v_proj", hidden, hidden), "attn.v", [0, 2, 1, 3])  # [B,H,S,D]
    scores = g.node("MatMul", [q, k], "attn.scores")  # [B,H,S,S]
    scores = g.node("Div", [scores, g.const(math.sqrt(head_dim))], "attn.scale")
    probs = g.node("Softmax", [scores], "attn.softmax", axis=-1)
    ctx = g.node("MatMul", [probs, v], "attn.context")  # [B,H,S,D]
    ctx = g.node("Transpose", [ctx], "attn.merge.transpose", perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, g.const([*lead, hidden], "int64")], "attn.merge.reshape")
    attn = linear(g, ctx, "attn.out_proj", hidden, hidden)
    x = layernorm(g, g.node("Add", [x, attn], "attn.residual"), "ln1", hidden)

    h = gelu_erf(g, linear(g, x, "ffn.fc1", hidden, ffn, init="he"), "ffn.gelu")
    h = linear(g, h, "ffn.fc2", ffn, hidden)
    x = layernorm(g, g.node("Add", [x, h], "ffn.residual"), "ln2", hidden)
    g.output(x, [batch, seq_len, hidden])
    return g.model("Transformer encoder block with decomposed LayerNorm and GELU")


# ======================================================================
# registry
# ======================================================================
@dataclass(frozen=True)
class ZooEntry:
    name: str
    builder: Callable[..., onnx.ModelProto]
    description: str
    # Concrete shape for every graph input (symbolic dims bound, batch = 1).
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def build(self, **kwargs) -> onnx.ModelProto:
        return self.builder(**kwargs)


_ENTRIES = [
    ZooEntry(
        "conv_bn_relu",
        build_conv_bn_relu,
        "4x Conv-BN-ReLU + MaxPool + GAP/Flatten/Gemm, 32x32 input, symbolic batch N",
        {"input": (1, 3, 32, 32)},
    ),
    ZooEntry(
        "mobilenet_v3_style",
        build_mobilenet_v3_style,
        "MobileNetV3-style: decomposed hard-swish, depthwise convs, squeeze-excite, 64x64 input",
        {"input": (1, 3, 64, 64)},
    ),
    ZooEntry(
        "mobilenet_v2_style",
        build_mobilenet_v2_style,
        "MobileNetV2 (width 1.0): inverted residuals, ReLU6 as Clip, 224x224, 1000 classes",
        {"input": (1, 3, 224, 224)},
    ),
    ZooEntry(
        "resnet50_style",
        build_resnet50_style,
        "ResNet-50: bottleneck blocks [3,4,6,3], BN after every conv, 224x224, 1000 classes",
        {"input": (1, 3, 224, 224)},
    ),
    ZooEntry(
        "resnet18_style",
        build_resnet18_style,
        "ResNet-18: basic blocks [2,2,2,2], 224x224, 1000 classes",
        {"input": (1, 3, 224, 224)},
    ),
    ZooEntry(
        "mlp_gelu",
        build_mlp_gelu,
        "MLP [N,64]->10 with MatMul+Add/Gemm layers and decomposed GELU (erf and tanh forms)",
        {"input": (1, 64)},
    ),
    ZooEntry(
        "transformer_block_dynamic",
        build_transformer_block_dynamic,
        "transformer_block with symbolic batch and seq: input [batch,seq,64] (dynamic shapes)",
        {"input": (1, 16, 64)},
    ),
    ZooEntry(
        "transformer_block",
        build_transformer_block,
        "Transformer encoder block [1,16,64], 4-head attention, decomposed LayerNorm, erf GELU FFN",
        {"input": (1, 16, 64)},
    ),
]

MODELS: dict[str, ZooEntry] = {e.name: e for e in sorted(_ENTRIES, key=lambda e: e.name)}


def names() -> list[str]:
    """Sorted registry names."""
    return sorted(MODELS)


def build(name: str, **kwargs) -> onnx.ModelProto:
    """Build the named model; ``kwargs`` go to its builder (e.g. ``seed``, ``batch``)."""
    try:
        entry = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}") from None
    return entry.builder(**kwargs)
