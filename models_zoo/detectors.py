"""Object detectors: YOLOv8n- and YOLOX-Tiny-style networks with random (seeded) weights.

Both are built the way their exporters emit them (BatchNormalization after every conv, SiLU as
x * Sigmoid(x), nearest upsampling as Resize, box decoding inside the graph) with a symbolic batch
dim ``"N"``. The anchor grids of the box decoders are constants of the input resolution, so each
builder takes ``imgsz`` (a multiple of 32); the weights do not depend on it: BN statistics are
calibrated at the default resolution whatever ``imgsz`` is (see :mod:`models_zoo._graph`), so
``imgsz=320`` is the same network as ``imgsz=640`` at a lower resolution.

Node names follow the PyTorch state-dict names of the reference implementations
(``model.<i>.cv1.conv`` for Ultralytics, ``backbone.dark3.1.conv1.conv`` for YOLOX).
"""

from __future__ import annotations

import numpy as np
import onnx

from ._blocks import concat, conv_bn_silu, focus, sigmoid, split, upsample2x
from ._graph import Dim, GraphBuilder, add, maxpool

#: BN calibration batches (GraphBuilder.input's ``image_like``): a unit-Gaussian and a uniform [0, 1)
#: image, at each detector's default resolution whatever ``imgsz`` is, so the weights do not depend
#: on it. The size matters: the SPP/SPPF max-pools cover most of the deepest map, and statistics
#: taken at a much smaller size let activations grow along the neck.
_V8_CALIBRATION = (2, 3, 640, 640)
_X_CALIBRATION = (2, 3, 416, 416)


def _check_imgsz(imgsz: int) -> None:
    if imgsz % 32 or imgsz <= 0:
        raise ValueError(f"imgsz must be a positive multiple of 32 (the largest stride), got {imgsz}")


def _pred_conv(g: GraphBuilder, x: str, name: str, cin: int, cout: int, std: float = 1.0) -> str:
    """1x1 prediction conv (with bias) of a detection head, scaled so its outputs have standard
    deviation ``std`` on the calibration data, as a trained head's logits and box offsets roughly
    do (a random He-initialized one would feed exp() and the DFL softmax with values in the tens)."""
    data = g.value(x)
    rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64)))) if data is not None else 1.0
    weight = g.lecun_normal((cout, cin, 1, 1), cin) * np.float32(std / max(rms, 1e-3))
    inputs = [x, g.param(f"{name}.weight", weight), g.param(f"{name}.bias", g.normal((cout,), 0.05))]
    return g.node("Conv", inputs, name, kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1])


def _grid_cells(imgsz: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per anchor point of every level, row-major: cell x, cell y, stride (all float32 [A])."""
    xs, ys, ss = [], [], []
    for s in strides:
        n = imgsz // s
        yv, xv = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
        xs.append(xv.reshape(-1))
        ys.append(yv.reshape(-1))
        ss.append(np.full(n * n, s, np.float32))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ss)


# ======================================================================
# YOLOv8n
# ======================================================================
def _v8_bottleneck(g: GraphBuilder, x: str, p: str, c: int, shortcut: bool) -> str:
    """Ultralytics ``Bottleneck(c, c, shortcut, k=(3, 3), e=1.0)``: two 3x3 Conv-BN-SiLU (+ x)."""
    y = conv_bn_silu(g, x, f"{p}.cv1", c, c, 3)
    y = conv_bn_silu(g, y, f"{p}.cv2", c, c, 3)
    return add(g, x, y, f"{p}.add") if shortcut else y


def _c2f(g: GraphBuilder, x: str, p: str, cin: int, cout: int, n: int, shortcut: bool) -> str:
    """C2f: 1x1 conv to 2c, Split in halves, n bottlenecks chained on the second half, every
    intermediate kept, Concat of the (2 + n) c-channel tensors, 1x1 conv to ``cout``."""
    c = cout // 2
    y = conv_bn_silu(g, x, f"{p}.cv1", cin, 2 * c, 1)
    parts = split(g, y, f"{p}.split", [c, c])
    for i in range(n):
        parts.append(_v8_bottleneck(g, parts[-1], f"{p}.m.{i}", c, shortcut))
    return conv_bn_silu(g, concat(g, parts, f"{p}.concat"), f"{p}.cv2", (2 + n) * c, cout, 1)


def _sppf(g: GraphBuilder, x: str, p: str, cin: int, cout: int, k: int = 5) -> str:
    """SPPF: 1x1 conv to cin/2, three chained k x k stride-1 MaxPools, Concat of all four, 1x1 conv."""
    c = cin // 2
    ys = [conv_bn_silu(g, x, f"{p}.cv1", cin, c, 1)]
    for i in range(3):
        ys.append(maxpool(g, ys[-1], f"{p}.m.{i}", kernel=k, stride=1, pad=k // 2))
    return conv_bn_silu(g, concat(g, ys, f"{p}.concat"), f"{p}.cv2", 4 * c, cout, 1)


def _dynamic_anchors(g: GraphBuilder, levels: list[str], strides: tuple[int, ...], p: str
                     ) -> tuple[str, str]:
    """Anchor points ``[1, 2, A]`` and strides ``[1, A]`` computed from the levels' feature maps
    (``[N, C, h, w]`` each) the way Ultralytics' ``make_anchors`` exports with ``dynamic=True``:
    Shape -> Gather -> Range per axis, cell centres (+0.5), row-major like the flattened maps."""
    grids, steps = [], []
    # Unsqueeze axes as their own tensors: [0] and [1] would share the names of the scalars 0, 1
    axis0 = g.param(f"{p}.anchors.axis0", np.array([0], np.int64))
    axis1 = g.param(f"{p}.anchors.axis1", np.array([1], np.int64))
    for i, (y, s) in enumerate(zip(levels, strides)):
        q = f"{p}.anchors.{i}"
        shape = g.node("Shape", [y], f"{q}.shape")
        h = g.node("Gather", [shape, g.const(2, "int64")], f"{q}.h", axis=0)
        w = g.node("Gather", [shape, g.const(3, "int64")], f"{q}.w", axis=0)
        ys = g.node("Range", [g.const(0, "int64"), h, g.const(1, "int64")], f"{q}.ys")
        xs = g.node("Range", [g.const(0, "int64"), w, g.const(1, "int64")], f"{q}.xs")
        ys = g.node("Add", [g.node("Cast", [ys], f"{q}.ys.float", to=onnx.TensorProto.FLOAT),
                            g.const(0.5)], f"{q}.cy")
        xs = g.node("Add", [g.node("Cast", [xs], f"{q}.xs.float", to=onnx.TensorProto.FLOAT),
                            g.const(0.5)], f"{q}.cx")
        col = g.node("Unsqueeze", [ys, axis1], f"{q}.cy.col")  # [h, 1]
        row = g.node("Unsqueeze", [xs, axis0], f"{q}.cx.row")  # [1, w]
        zero = g.node("Add", [g.node("Mul", [col, g.const(0.0)], f"{q}.zero.col"),
                              g.node("Mul", [row, g.const(0.0)], f"{q}.zero.row")], f"{q}.zero")
        gx = g.node("Add", [row, zero], f"{q}.gx")  # [h, w]
        gy = g.node("Add", [col, zero], f"{q}.gy")
        grid = g.node("Concat", [g.node("Unsqueeze", [gx, axis0], f"{q}.gx.u"),
                                 g.node("Unsqueeze", [gy, axis0], f"{q}.gy.u")],
                      f"{q}.grid", axis=0)  # [2, h, w]
        grids.append(g.node("Reshape", [grid, g.const([2, -1], "int64")], f"{q}.flat"))
        steps.append(g.node("Add", [g.node("Reshape", [zero, g.const([1, -1], "int64")],
                                           f"{q}.zero.flat"), g.const(float(s))], f"{q}.stride"))
    anchors = g.node("Unsqueeze", [g.node("Concat", grids, f"{p}.anchors.cat", axis=1),
                                   axis0], f"{p}.anchors")  # [1, 2, A]
    return anchors, g.node("Concat", steps, f"{p}.strides", axis=1)  # [1, A]


def _v8_detect(
    g: GraphBuilder, feats: list[str], chans: list[int], imgsz: int | None, nc: int,
    reg_max: int = 16
) -> str:
    """Decoupled Detect head with DFL and box decode -> [N, 4 + nc, A] (xywh in pixels, class probs).

    Per level: box branch Conv3x3-Conv3x3-Conv1x1 (4 * reg_max) and class branch Conv3x3-Conv3x3-
    Conv1x1 (nc), concatenated and flattened to [N, 4*reg_max + nc, H*W]; the levels are
    concatenated and split into box/class parts. DFL: Reshape [N, 4, reg_max, A] -> Transpose ->
    Softmax over the reg_max bins -> 1x1 Conv with weights 0..reg_max-1 (the expected bin) ->
    [N, 4, A] distances (l, t, r, b). Decode: x1y1 = anchor - lt, x2y2 = anchor + rb, centre and
    size times the level's stride. Classes: Sigmoid. ``imgsz=None``: the anchors are computed in
    the graph from the feature maps' shapes (:func:`_dynamic_anchors`), for any input size.
    """
    p = "model.22"
    strides = (8, 16, 32)
    c2, c3 = max(16, chans[0] // 4, reg_max * 4), max(chans[0], min(nc, 100))
    no = 4 * reg_max + nc
    flat, levels = [], []
    for i, (x, ch) in enumerate(zip(feats, chans)):
        b = conv_bn_silu(g, x, f"{p}.cv2.{i}.0", ch, c2, 3)
        b = conv_bn_silu(g, b, f"{p}.cv2.{i}.1", c2, c2, 3)
        b = _pred_conv(g, b, f"{p}.cv2.{i}.2", c2, 4 * reg_max)
        c = conv_bn_silu(g, x, f"{p}.cv3.{i}.0", ch, c3, 3)
        c = conv_bn_silu(g, c, f"{p}.cv3.{i}.1", c3, c3, 3)
        c = _pred_conv(g, c, f"{p}.cv3.{i}.2", c3, nc)
        y = concat(g, [b, c], f"{p}.concat.{i}")
        levels.append(y)
        flat.append(g.node("Reshape", [y, g.const([0, no, -1], "int64")], f"{p}.flatten.{i}"))
    y = g.node("Concat", flat, f"{p}.concat", axis=2)  # [N, no, A]
    box, cls = split(g, y, f"{p}.split", [4 * reg_max, nc])

    d = g.node("Reshape", [box, g.const([0, 4, reg_max, -1], "int64")], f"{p}.dfl.reshape")
    d = g.node("Transpose", [d], f"{p}.dfl.transpose", perm=[0, 2, 1, 3])  # [N, reg_max, 4, A]
    d = g.node("Softmax", [d], f"{p}.dfl.softmax", axis=1)
    bins = np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1)
    d = g.node("Conv", [d, g.param(f"{p}.dfl.conv.weight", bins)], f"{p}.dfl.conv", kernel_shape=[1, 1])
    d = g.node("Reshape", [d, g.const([0, 4, -1], "int64")], f"{p}.dfl.distances")  # [N, 4, A]

    if imgsz is None:
        anchors, stride_row = _dynamic_anchors(g, levels, strides, p)
    else:
        cx, cy, stride = _grid_cells(imgsz, strides)
        anchors = g.param(f"{p}.anchors", np.stack([cx + 0.5, cy + 0.5])[None])  # [1, 2, A]
        stride_row = g.param(f"{p}.strides", stride[None])
    lt, rb = split(g, d, f"{p}.dist.split", [2, 2])
    x1y1 = g.node("Sub", [anchors, lt], f"{p}.decode.x1y1")
    x2y2 = g.node("Add", [anchors, rb], f"{p}.decode.x2y2")
    centre = g.node("Div", [g.node("Add", [x1y1, x2y2], f"{p}.decode.sum"), g.const(2.0)], f"{p}.decode.xy")
    size = g.node("Sub", [x2y2, x1y1], f"{p}.decode.wh")
    xywh = g.node("Concat", [centre, size], f"{p}.decode.xywh", axis=1)
    boxes = g.node("Mul", [xywh, stride_row], f"{p}.decode.boxes")  # [N, 4, A]
    probs = sigmoid(g, cls, f"{p}.cls.sigmoid")
    return g.node("Concat", [boxes, probs], f"{p}.output", axis=1)


def build_yolov8n_dynamic(seed: int = 0, num_classes: int = 80) -> onnx.ModelProto:
    """:func:`build_yolov8n_style` exported as with ``dynamic=True``: input
    ``[batch, 3, height, width]`` (any multiple of 32), anchors computed in the graph from the
    feature maps' shapes; the same weights as the static model."""
    return build_yolov8n_style(seed, None, num_classes, "batch")


def build_yolov8n_style(seed: int = 0, imgsz: int | None = 640, num_classes: int = 80,
                        batch: Dim = "N") -> onnx.ModelProto:
    """YOLOv8n (depth 0.33, width 0.25): Conv-BN-SiLU, C2f, SPPF, PAN neck, decoupled DFL head.

    Backbone: Conv 3/2 (16) -> Conv 3/2 (32) -> C2f x1 -> Conv 3/2 (64) -> C2f x2 [P3] -> Conv 3/2
    (128) -> C2f x2 [P4] -> Conv 3/2 (256) -> C2f x1 -> SPPF [P5]. Neck (PAN): upsample + concat
    top-down to P4 and P3 (C2f without shortcut each), then strided convs + concat bottom-up back to
    P4 and P5. Head: see :func:`_v8_detect`. Output [N, 4 + nc, A], A = sum (imgsz/s)^2 over
    s = 8, 16, 32 (8400 at 640).
    """
    if imgsz is not None:
        _check_imgsz(imgsz)
    g = GraphBuilder("yolov8n_style", seed)
    calibration = _V8_CALIBRATION
    hw = [imgsz, imgsz] if imgsz is not None else ["height", "width"]
    x = g.input("images", [batch, 3, *hw], calibration_shape=calibration, image_like=True)
    x = conv_bn_silu(g, x, "model.0", 3, 16, 3, stride=2)  # P1/2
    x = conv_bn_silu(g, x, "model.1", 16, 32, 3, stride=2)  # P2/4
    x = _c2f(g, x, "model.2", 32, 32, 1, True)
    x = conv_bn_silu(g, x, "model.3", 32, 64, 3, stride=2)  # P3/8
    p3 = _c2f(g, x, "model.4", 64, 64, 2, True)
    x = conv_bn_silu(g, p3, "model.5", 64, 128, 3, stride=2)  # P4/16
    p4 = _c2f(g, x, "model.6", 128, 128, 2, True)
    x = conv_bn_silu(g, p4, "model.7", 128, 256, 3, stride=2)  # P5/32
    x = _c2f(g, x, "model.8", 256, 256, 1, True)
    p5 = _sppf(g, x, "model.9", 256, 256)
    # top-down
    x = concat(g, [upsample2x(g, p5, "model.10"), p4], "model.11")
    n4 = _c2f(g, x, "model.12", 384, 128, 1, False)
    x = concat(g, [upsample2x(g, n4, "model.13"), p3], "model.14")
    out3 = _c2f(g, x, "model.15", 192, 64, 1, False)  # P3/8 out
    # bottom-up
    x = concat(g, [conv_bn_silu(g, out3, "model.16", 64, 64, 3, stride=2), n4], "model.17")
    out4 = _c2f(g, x, "model.18", 192, 128, 1, False)  # P4/16 out
    x = concat(g, [conv_bn_silu(g, out4, "model.19", 128, 128, 3, stride=2), p5], "model.20")
    out5 = _c2f(g, x, "model.21", 384, 256, 1, False)  # P5/32 out
    y = _v8_detect(g, [out3, out4, out5], [64, 128, 256], imgsz, num_classes)
    if imgsz is None:
        g.output(y, [batch, 4 + num_classes, "anchors"])
        return g.model("YOLOv8n-style detector for any input size (C2f, SPPF, PAN, DFL head)")
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    g.output(y, [batch, 4 + num_classes, anchors])
    return g.model(f"YOLOv8n-style detector for {imgsz}x{imgsz} inputs (C2f, SPPF, PAN, DFL head)")


# ======================================================================
# YOLOX-Tiny
# ======================================================================
def _x_bottleneck(g: GraphBuilder, x: str, p: str, c: int, shortcut: bool) -> str:
    """YOLOX ``Bottleneck(c, c, shortcut, expansion=1.0)``: 1x1 then 3x3 BaseConv (+ x)."""
    y = conv_bn_silu(g, x, f"{p}.conv1", c, c, 1)
    y = conv_bn_silu(g, y, f"{p}.conv2", c, c, 3)
    return add(g, x, y, f"{p}.add") if shortcut else y


def _csp(g: GraphBuilder, x: str, p: str, cin: int, cout: int, n: int, shortcut: bool = True) -> str:
    """CSPLayer: two 1x1 branches of cout/2; n bottlenecks on the first; Concat; 1x1 to cout."""
    hidden = cout // 2
    x1 = conv_bn_silu(g, x, f"{p}.conv1", cin, hidden, 1)
    x2 = conv_bn_silu(g, x, f"{p}.conv2", cin, hidden, 1)
    for i in range(n):
        x1 = _x_bottleneck(g, x1, f"{p}.m.{i}", hidden, shortcut)
    return conv_bn_silu(g, concat(g, [x1, x2], f"{p}.concat"), f"{p}.conv3", 2 * hidden, cout, 1)


def _spp(g: GraphBuilder, x: str, p: str, cin: int, cout: int, kernels=(5, 9, 13)) -> str:
    """SPPBottleneck: 1x1 conv to cin/2, parallel stride-1 MaxPools (5, 9, 13), Concat, 1x1 conv."""
    hidden = cin // 2
    x = conv_bn_silu(g, x, f"{p}.conv1", cin, hidden, 1)
    pools = [maxpool(g, x, f"{p}.m.{i}", kernel=k, stride=1, pad=k // 2) for i, k in enumerate(kernels)]
    return conv_bn_silu(g, concat(g, [x, *pools], f"{p}.concat"), f"{p}.conv2", hidden * 4, cout, 1)


def build_yolox_style(seed: int = 0, imgsz: int = 416, num_classes: int = 80, batch: Dim = "N") -> onnx.ModelProto:
    """YOLOX-Tiny (depth 0.33, width 0.375): Focus stem, CSPDarknet, PAFPN, decoupled head.

    Backbone: Focus (space-to-depth by four strided Slices + Concat, then Conv 3x3 to 24) ->
    dark2..dark5, each a Conv 3/2 and a CSPLayer (1, 3, 3, 1 bottlenecks; dark5 has the SPP
    bottleneck with 5/9/13 max-pools first and no shortcut). PAFPN: lateral 1x1 convs, upsample +
    concat + CSPLayer top-down, strided conv + concat + CSPLayer bottom-up. Head per level: 1x1
    stem, two 3x3 convs for classes and two for boxes, 1x1 predictions reg (4), obj (1), cls (nc);
    output Concat(reg, Sigmoid(obj), Sigmoid(cls)) flattened to [N, A, 5 + nc], boxes decoded
    (xy = (xy + grid) * stride, wh = exp(wh) * stride).
    """
    _check_imgsz(imgsz)
    g = GraphBuilder("yolox_style", seed)
    calibration = _X_CALIBRATION
    x = g.input("images", [batch, 3, imgsz, imgsz], calibration_shape=calibration, image_like=True)
    bb = "backbone.backbone"
    x = conv_bn_silu(g, focus(g, x, f"{bb}.stem.focus"), f"{bb}.stem.conv", 12, 24, 3)  # /2
    x = conv_bn_silu(g, x, f"{bb}.dark2.0", 24, 48, 3, stride=2)  # /4
    x = _csp(g, x, f"{bb}.dark2.1", 48, 48, 1)
    x = conv_bn_silu(g, x, f"{bb}.dark3.0", 48, 96, 3, stride=2)  # /8
    c3 = _csp(g, x, f"{bb}.dark3.1", 96, 96, 3)
    x = conv_bn_silu(g, c3, f"{bb}.dark4.0", 96, 192, 3, stride=2)  # /16
    c4 = _csp(g, x, f"{bb}.dark4.1", 192, 192, 3)
    x = conv_bn_silu(g, c4, f"{bb}.dark5.0", 192, 384, 3, stride=2)  # /32
    x = _spp(g, x, f"{bb}.dark5.1", 384, 384)
    c5 = _csp(g, x, f"{bb}.dark5.2", 384, 384, 1, shortcut=False)

    fp = "backbone"
    fpn_out0 = conv_bn_silu(g, c5, f"{fp}.lateral_conv0", 384, 192, 1)  # /32
    x = concat(g, [upsample2x(g, fpn_out0, f"{fp}.upsample0"), c4], f"{fp}.concat0")
    f_out0 = _csp(g, x, f"{fp}.C3_p4", 384, 192, 1, shortcut=False)  # /16
    fpn_out1 = conv_bn_silu(g, f_out0, f"{fp}.reduce_conv1", 192, 96, 1)
    x = concat(g, [upsample2x(g, fpn_out1, f"{fp}.upsample1"), c3], f"{fp}.concat1")
    pan_out2 = _csp(g, x, f"{fp}.C3_p3", 192, 96, 1, shortcut=False)  # /8
    x = concat(g, [conv_bn_silu(g, pan_out2, f"{fp}.bu_conv2", 96, 96, 3, stride=2), fpn_out1], f"{fp}.concat2")
    pan_out1 = _csp(g, x, f"{fp}.C3_n3", 192, 192, 1, shortcut=False)  # /16
    x = concat(g, [conv_bn_silu(g, pan_out1, f"{fp}.bu_conv1", 192, 192, 3, stride=2), fpn_out0], f"{fp}.concat3")
    pan_out0 = _csp(g, x, f"{fp}.C3_n4", 384, 384, 1, shortcut=False)  # /32

    hidden, no = 96, 5 + num_classes
    flat = []
    for i, (feat, ch) in enumerate(zip([pan_out2, pan_out1, pan_out0], [96, 192, 384])):
        s = conv_bn_silu(g, feat, f"head.stems.{i}", ch, hidden, 1)
        c = conv_bn_silu(g, s, f"head.cls_convs.{i}.0", hidden, hidden, 3)
        c = conv_bn_silu(g, c, f"head.cls_convs.{i}.1", hidden, hidden, 3)
        r = conv_bn_silu(g, s, f"head.reg_convs.{i}.0", hidden, hidden, 3)
        r = conv_bn_silu(g, r, f"head.reg_convs.{i}.1", hidden, hidden, 3)
        cls = sigmoid(g, _pred_conv(g, c, f"head.cls_preds.{i}", hidden, num_classes), f"head.cls_sigmoid.{i}")
        # small box offsets: wh goes through exp(), and inputs unlike the calibration data (uniform
        # [0, 1) images instead of unit Gaussians) make the random backbone's features several
        # times larger
        reg = _pred_conv(g, r, f"head.reg_preds.{i}", hidden, 4, std=0.2)
        obj = sigmoid(g, _pred_conv(g, r, f"head.obj_preds.{i}", hidden, 1), f"head.obj_sigmoid.{i}")
        y = g.node("Concat", [reg, obj, cls], f"head.output.{i}", axis=1)
        flat.append(g.node("Reshape", [y, g.const([0, no, -1], "int64")], f"head.flatten.{i}"))
    y = g.node("Concat", flat, "head.concat", axis=2)
    y = g.node("Transpose", [y], "head.transpose", perm=[0, 2, 1])  # [N, A, 5 + nc]

    cx, cy, stride = _grid_cells(imgsz, (8, 16, 32))
    xy, wh, rest = split(g, y, "head.decode.split", [2, 2, 1 + num_classes], axis=2)
    xy = g.node("Add", [xy, g.param("head.grids", np.stack([cx, cy], axis=1)[None])], "head.decode.add_grid")
    strides = g.param("head.strides", stride[None, :, None])  # [1, A, 1]
    xy = g.node("Mul", [xy, strides], "head.decode.xy")
    wh = g.node("Mul", [g.node("Exp", [wh], "head.decode.exp"), strides], "head.decode.wh")
    y = g.node("Concat", [xy, wh, rest], "head.output", axis=2)
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    g.output(y, [batch, anchors, no])
    return g.model(f"YOLOX-Tiny-style detector for {imgsz}x{imgsz} inputs (Focus, CSPDarknet, PAFPN, decoupled head)")
