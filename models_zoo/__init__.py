"""models_zoo: small, realistic ONNX models built deterministically in memory.

    from models_zoo import MODELS, build, names
    model = build("resnet18_style")              # onnx.ModelProto, opset 17
    shapes = MODELS["resnet18_style"].input_shapes  # {"input": (1, 3, 224, 224)}

No weights are stored anywhere: every model is generated from a fixed numpy
seed with ``onnx.helper``, so repeated builds are byte-identical.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .detectors import build_yolov8n_dynamic, build_yolov8n_style, build_yolox_style
from .digits import train_digits_cnn
from .onnx_models import MODELS, ZooEntry, build, names
from .rnn_models import build_gru_tagger, build_lstm_classifier
from .stateful_models import build_vad_lstm_if
from .vision import build_efficientnet_b0_style, build_mobilenet_v3_large, build_vit_tiny_style

MODELS["lstm_classifier"] = ZooEntry(
    "lstm_classifier", build_lstm_classifier,
    "2-layer LSTM sequence classifier, batch-first [N,16,32] -> 10 logits", {"input": (1, 16, 32)})
MODELS["gru_tagger"] = ZooEntry(
    "gru_tagger", build_gru_tagger,
    "bidirectional GRU tagger, batch-first [N,16,24] -> [N,16,12] tag scores", {"input": (1, 16, 24)})
MODELS["vad_lstm_if"] = ZooEntry(
    "vad_lstm_if", build_vad_lstm_if,
    "Silero-VAD-like, opset 15: If on sr between two STFT+Conv+2-layer-LSTM nets, state in/out",
    {"input": (2, 512), "sr": (), "h": (2, 2, 64), "c": (2, 2, 64)})

# Published architectures at their real sizes (random seeded weights): speed and correctness work.
for _entry in (
    ZooEntry("yolov8n_style", build_yolov8n_style,
             "YOLOv8n detector: C2f, SPPF, PAN neck, DFL head + box decode, 640x640 (imgsz=320 too) "
             "-> [N,84,8400]", {"images": (1, 3, 640, 640)}),
    ZooEntry("yolov8n_dynamic", build_yolov8n_dynamic,
             "yolov8n_style exported with dynamic axes: images [batch,3,height,width], anchors "
             "computed in the graph (dynamic shapes)", {"images": (1, 3, 640, 640)}),
    ZooEntry("yolox_style", build_yolox_style,
             "YOLOX-Tiny detector: Focus, CSPDarknet, SPP, PAFPN, decoupled head + decode, 416x416 "
             "-> [N,3549,85]", {"images": (1, 3, 416, 416)}),
    ZooEntry("mobilenet_v3_large", build_mobilenet_v3_large,
             "MobileNetV3-Large (torchvision config): inverted residuals, SE, hard-swish, 224x224",
             {"input": (1, 3, 224, 224)}),
    ZooEntry("efficientnet_b0_style", build_efficientnet_b0_style,
             "EfficientNet-B0: MBConv with SE and SiLU, B0 stages, 224x224, 1000 classes",
             {"input": (1, 3, 224, 224)}),
    ZooEntry("vit_tiny_style", build_vit_tiny_style,
             "ViT-Tiny/DeiT-Tiny: patch 16, dim 192, 12 layers, 3 heads, LayerNormalization, erf GELU, "
             "224x224", {"input": (1, 3, 224, 224)}),
):
    MODELS[_entry.name] = _entry
del _entry

# The one genuinely trained model: a small CNN trained deterministically on scikit-learn's bundled
# digits (no download), cached after the first build (see models_zoo/digits.py).
MODELS["digits_cnn"] = ZooEntry(
    "digits_cnn", lambda **_kw: train_digits_cnn()[0],
    "CNN trained on scikit-learn's 8x8 digits (99% held-out top-1); cached after first build",
    {"input": (1, 1, 8, 8)})

__all__ = ["MODELS", "ZooEntry", "build", "names", "count_params"]


def count_params(model: onnx.ModelProto) -> int:
    """Number of weight elements in a zoo model's initializers.

    Shared scalar/shape constants (``const.*``) are not counted; BatchNorm
    running statistics are (they are weights as far as inference is concerned).
    """
    return int(
        sum(
            np.prod(numpy_helper.to_array(t).shape, dtype=np.int64)
            for t in model.graph.initializer
            if not t.name.startswith("const")
        )
    )
