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

from .onnx_models import MODELS, ZooEntry, build, names

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
