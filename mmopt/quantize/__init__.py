"""Graph-level quantization: streaming calibration, QDQ int8, accuracy-aware fallback, fp16, weight-only.

    from mmopt.quantize import quantize
    qmodel, report = quantize("model.onnx", "calib.npz", method="entropy")

See :mod:`mmopt.quantize.pipeline` for the stages and :mod:`mmopt.quantize.data` for data formats.
"""

from mmopt.quantize.calibrate import METHODS, StreamingHistogram
from mmopt.quantize.data import Preprocess
from mmopt.quantize.evaluate import METRICS
from mmopt.quantize.pipeline import DEFAULT_METHOD, QuantizeReport, quantize

__all__ = ["DEFAULT_METHOD", "METHODS", "METRICS", "Preprocess", "QuantizeReport",
           "StreamingHistogram", "quantize"]
