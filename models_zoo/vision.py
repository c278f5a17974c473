"""ImageNet classifiers at their published configurations, with random (seeded) weights.

MobileNetV3-Large and EfficientNet-B0 follow torchvision's layer tables exactly (their parameter
counts match torchvision's), with BatchNormalization after every conv and hard-swish / SiLU
spelled out as element-wise subgraphs; ViT-Tiny follows DeiT-Tiny / timm ``vit_tiny_patch16_224``
with opset 17's fused LayerNormalization and the erf form of GELU. All take a symbolic batch
dim ``"N"`` on a [N, 3, 224, 224] input named ``input``.
"""

from __future__ import annotations

import numpy as np
import onnx

from ._blocks import conv_bn_silu, sigmoid, silu
from ._graph import (
    Dim,
    GraphBuilder,
    add,
    channel_scale,
    classifier_head,
    conv,
    conv_bn_act,
    gelu_erf,
    gemm,
    global_avg_pool,
    hardswish,
    linear,
)
from .onnx_models import _squeeze_excite

#: BN calibration batch: one unit-Gaussian and one image-like uniform [0, 1) sample (see
#: GraphBuilder.input), so the logits stay O(1) on both kinds of input
_CALIBRATION = (2, 3, 224, 224)

# ======================================================================
# MobileNetV3-Large
# ======================================================================
# torchvision's table: (kernel, expanded channels, out channels, squeeze-excite, activation, stride)
_MBV3_LARGE = [
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),  # C1
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),  # C2
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),  # C3
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),  # C4
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
]


def build_mobilenet_v3_large(seed: int = 0, num_classes: int = 1000, batch: Dim = "N") -> onnx.ModelProto:
    """MobileNetV3-Large: Conv 3/2 (16, hard-swish) stem; 15 inverted residual blocks (1x1 expand,
    kxk depthwise, optional squeeze-excite with ReLU and hard-sigmoid, linear 1x1 projection,
    residual add when shape allows) with the published kernels/channels/strides and ReLU in the
    early blocks, hard-swish later; 1x1 conv to 960 (hard-swish), global pool, Gemm 960->1280 with
    hard-swish, Gemm 1280->classes.
    """
    g = GraphBuilder("mobilenet_v3_large", seed)
    x = g.input("input", [batch, 3, 224, 224], calibration_shape=_CALIBRATION, image_like=True)
    x = conv_bn_act(g, x, "stem", 3, 16, 3, stride=2, act="hardswish")  # 112x112
    cin = 16
    for i, (k, exp, cout, use_se, act, stride) in enumerate(_MBV3_LARGE):
        p = f"blocks.{i}"
        y = x
        if exp != cin:
            y = conv_bn_act(g, y, f"{p}.expand", cin, exp, 1, act=act)
        y = conv_bn_act(g, y, f"{p}.dw", exp, exp, k, stride=stride, group=exp, act=act)
        if use_se:
            y = _squeeze_excite(g, y, f"{p}.se", exp)  # squeeze to _make_divisible(exp / 4)
        residual = stride == 1 and cin == cout
        y = conv_bn_act(g, y, f"{p}.project", exp, cout, 1, act=None, gamma_scale=0.5 if residual else 1.0)
        x = add(g, x, y, f"{p}.add") if residual else y
        cin = cout
    x = conv_bn_act(g, x, "last", cin, 6 * cin, 1, act="hardswish")  # 960 x 7x7
    pooled = global_avg_pool(g, x, "head.avgpool")
    flat = g.node("Flatten", [pooled], "head.flatten", axis=1)
    h = hardswish(g, gemm(g, flat, "head.fc1", 6 * cin, 1280, init="he"), "head.hardswish")
    logits = gemm(g, h, "head.fc2", 1280, num_classes)
    g.output(logits, [batch, num_classes])
    return g.model("MobileNetV3-Large for 224x224 inputs (inverted residuals, SE, decomposed hard-swish)")


# ======================================================================
# EfficientNet-B0
# ======================================================================
# (expand ratio, kernel, first stride, in channels, out channels, layers) -- the B0 stage table
_EFFICIENTNET_B0 = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


def _mbconv(g: GraphBuilder, x: str, p: str, cin: int, cout: int, expand: int, k: int, stride: int) -> str:
    """MBConv: 1x1 expand (when ratio > 1), kxk depthwise, squeeze-excite (squeeze to cin/4 with
    SiLU, Sigmoid gate), linear 1x1 projection; residual add when stride 1 and cin == cout."""
    hidden = cin * expand
    y = x
    if expand != 1:
        y = conv_bn_silu(g, y, f"{p}.expand", cin, hidden, 1, eps=1e-5)
    y = conv_bn_silu(g, y, f"{p}.dw", hidden, hidden, k, stride=stride, group=hidden, eps=1e-5)
    squeezed = max(1, cin // 4)
    s = global_avg_pool(g, y, f"{p}.se.avgpool")
    s = silu(g, conv(g, s, f"{p}.se.fc1", hidden, squeezed, 1, bias=True), f"{p}.se.silu")
    s = sigmoid(g, conv(g, s, f"{p}.se.fc2", squeezed, hidden, 1, bias=True), f"{p}.se.sigmoid")
    y = channel_scale(g, y, s, f"{p}.se.scale")
    residual = stride == 1 and cin == cout
    y = conv_bn_act(g, y, f"{p}.project", hidden, cout, 1, act=None, gamma_scale=0.5 if residual else 1.0)
    return add(g, x, y, f"{p}.add") if residual else y


def build_efficientnet_b0_style(seed: int = 0, num_classes: int = 1000, batch: Dim = "N") -> onnx.ModelProto:
    """EfficientNet-B0: Conv 3/2 (32, SiLU) stem; 16 MBConv blocks in 7 stages (expand 1/6, kernels
    3/5, channels 16-24-40-80-112-192-320); 1x1 conv to 1280 (SiLU); global pool; Gemm to classes.
    SiLU is x * Sigmoid(x)."""
    g = GraphBuilder("efficientnet_b0_style", seed)
    x = g.input("input", [batch, 3, 224, 224], calibration_shape=_CALIBRATION, image_like=True)
    x = conv_bn_silu(g, x, "features.0", 3, 32, 3, stride=2, eps=1e-5)  # 112x112
    for s, (expand, k, first_stride, cin, cout, layers) in enumerate(_EFFICIENTNET_B0, start=1):
        for j in range(layers):
            x = _mbconv(g, x, f"features.{s}.{j}", cin if j == 0 else cout, cout, expand, k,
                        first_stride if j == 0 else 1)
    x = conv_bn_silu(g, x, "features.8", 320, 1280, 1, eps=1e-5)  # 7x7
    logits = classifier_head(g, x, 1280, num_classes, name="classifier")
    g.output(logits, [batch, num_classes])
    return g.model("EfficientNet-B0 for 224x224 inputs (MBConv with squeeze-excite, SiLU)")


# ======================================================================
# ViT-Tiny / DeiT-Tiny
# ======================================================================
def _layer_norm(g: GraphBuilder, x: str, name: str, dim: int) -> str:
    """Opset-17 LayerNormalization over the last axis (eps 1e-6 as in timm's ViTs)."""
    return g.node(
        "LayerNormalization",
        [x, g.param(f"{name}.weight", g.uniform((dim,), 0.8, 1.2)), g.param(f"{name}.bias", g.normal((dim,), 0.05))],
        name,
        axis=-1,
        epsilon=1e-6,
    )


def _attention(g: GraphBuilder, x: str, p: str, tokens: int, dim: int, heads: int) -> str:
    """timm ``Attention``: one qkv projection, Reshape [N, T, 3, H, D] + Transpose [3, N, H, T, D],
    q/k/v by Gather, softmax(q k^T * D^-1/2) v, heads merged back, output projection."""
    head_dim = dim // heads
    qkv = linear(g, x, f"{p}.qkv", dim, 3 * dim)
    qkv = g.node("Reshape", [qkv, g.const([0, tokens, 3, heads, head_dim], "int64")], f"{p}.qkv.reshape")
    qkv = g.node("Transpose", [qkv], f"{p}.qkv.transpose", perm=[2, 0, 3, 1, 4])
    q, k, v = (g.node("Gather", [qkv, g.const(i, "int64")], f"{p}.{n}", axis=0) for i, n in enumerate("qkv"))
    kt = g.node("Transpose", [k], f"{p}.k.transpose", perm=[0, 1, 3, 2])
    scores = g.node("MatMul", [q, kt], f"{p}.scores")  # [N, H, T, T]
    scores = g.node("Mul", [scores, g.const(head_dim**-0.5)], f"{p}.scale")
    probs = g.node("Softmax", [scores], f"{p}.softmax", axis=-1)
    ctx = g.node("MatMul", [probs, v], f"{p}.context")  # [N, H, T, D]
    ctx = g.node("Transpose", [ctx], f"{p}.merge.transpose", perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, g.const([0, tokens, dim], "int64")], f"{p}.merge.reshape")
    return _linear_scaled(g, ctx, f"{p}.proj", dim, dim)


def _linear_scaled(g: GraphBuilder, x: str, name: str, fin: int, fout: int, scale: float = 0.5) -> str:
    """Output projection of a residual branch, initialized smaller so the residual stream grows
    slowly over 12 blocks (random weights only; the graph is the same ``MatMul + Add``)."""
    weight = g.lecun_normal((fin, fout), fin) * np.float32(scale)
    y = g.node("MatMul", [x, g.param(f"{name}.weight", weight)], f"{name}.matmul")
    return g.node("Add", [y, g.param(f"{name}.bias", g.normal((fout,), 0.02))], f"{name}.add")


def build_vit_tiny_style(
    seed: int = 0,
    num_classes: int = 1000,
    image: int = 224,
    patch: int = 16,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    mlp: int = 768,
    batch: Dim = "N",
) -> onnx.ModelProto:
    """ViT-Tiny / DeiT-Tiny: 16x16 patch embedding (Conv stride 16, 192 channels) flattened to
    tokens; class token (Expand to the batch, Concat) and learned position embedding; 12 pre-norm
    blocks x += MHSA(LN(x)) (3 heads of 64), x += MLP(LN(x)) (192 -> 768, erf GELU, -> 192); final
    LayerNormalization; class token (Gather) -> Gemm to classes."""
    if image % patch or dim % heads:
        raise ValueError("image must be a multiple of patch, dim a multiple of heads")
    g = GraphBuilder("vit_tiny_style", seed)
    x = g.input("input", [batch, 3, image, image])
    grid = image // patch
    tokens = grid * grid + 1
    w = g.lecun_normal((dim, 3, patch, patch), 3 * patch * patch)
    x = g.node(
        "Conv",
        [x, g.param("patch_embed.proj.weight", w), g.param("patch_embed.proj.bias", g.normal((dim,), 0.02))],
        "patch_embed.proj",
        kernel_shape=[patch, patch],
        strides=[patch, patch],
    )
    x = g.node("Reshape", [x, g.const([0, dim, -1], "int64")], "patch_embed.flatten")
    x = g.node("Transpose", [x], "patch_embed.transpose", perm=[0, 2, 1])  # [N, 196, dim]
    # class token expanded to the batch the way torch exports cls_token.expand(N, -1, -1)
    batch_dim = g.node("Shape", [x], "cls_token.batch", start=0, end=1)
    shape = g.node("Concat", [batch_dim, g.const([1, dim], "int64")], "cls_token.shape", axis=0)
    cls = g.node("Expand", [g.param("cls_token", g.normal((1, 1, dim), 0.02)), shape], "cls_token.expand")
    x = g.node("Concat", [cls, x], "tokens", axis=1)  # [N, 197, dim]
    x = g.node("Add", [x, g.param("pos_embed", g.normal((1, tokens, dim), 0.02))], "pos_embed.add")
    for i in range(depth):
        p = f"blocks.{i}"
        a = _attention(g, _layer_norm(g, x, f"{p}.norm1", dim), f"{p}.attn", tokens, dim, heads)
        x = g.node("Add", [x, a], f"{p}.add1")
        h = linear(g, _layer_norm(g, x, f"{p}.norm2", dim), f"{p}.mlp.fc1", dim, mlp, init="he")
        h = _linear_scaled(g, gelu_erf(g, h, f"{p}.mlp.gelu"), f"{p}.mlp.fc2", mlp, dim)
        x = g.node("Add", [x, h], f"{p}.add2")
    x = _layer_norm(g, x, "norm", dim)
    cls_out = g.node("Gather", [x, g.const(0, "int64")], "cls_out", axis=1)  # [N, dim]
    logits = gemm(g, cls_out, "head", dim, num_classes)
    g.output(logits, [batch, num_classes])
    return g.model(f"ViT-Tiny (DeiT-Tiny) for {image}x{image} inputs, patch {patch}, {depth} layers")


__all__ = ["build_efficientnet_b0_style", "build_mobilenet_v3_large", "build_vit_tiny_style"]
