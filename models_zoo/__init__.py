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

from .digits import train_digits_cnn
from .onnx_models import MODELS, ZooEntry, build, names
from .rnn_models import build_gru_tagger, build_lstm_classifier
from .stateful_models import build_vad_lstm_if

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
