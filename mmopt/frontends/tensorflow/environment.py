"""Importing TensorFlow and tf2onnx (quietly, with a clear error naming the extra when they are
missing), and keeping their logs, warnings and prints off the user's terminal during a conversion.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from mmopt.frontends._native import native_output_silenced
from mmopt.errors import MmoptError
from mmopt.frontends.tensorflow.extra_handlers import register_extra_handlers

_INSTALL_HINT = "pip install 'mmopt[tf]'"


# --------------------------------------------------------------------------------------------------
# environment: imports, quiet conversion


def tf_modules():
    """``(tensorflow, tf2onnx)``, imported quietly; a clear error naming the extra when missing."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with native_output_silenced():
            import tensorflow as tf
            import tf2onnx
            import tf2onnx.onnx_opset  # noqa: F401 - registers the TF op handlers
    except ImportError as exc:
        missing = exc.name or "tensorflow"
        raise MmoptError(f"the TensorFlow frontends need tensorflow and tf2onnx ({missing} is not "
                         f"installed); install them with: {_INSTALL_HINT}") from exc
    register_extra_handlers()
    return tf, tf2onnx


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet() -> Iterator[_Records]:
    """Keep TensorFlow's, Keras' and tf2onnx's logs, warnings and prints off the user's terminal;
    yields a handler holding tf2onnx's error messages (used to explain a failed conversion)."""
    records = _Records()
    names = ("tensorflow", "tf2onnx", "absl", "keras", "h5py")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
        lg.propagate = False
    tf2onnx_logger = loggers[1]
    tf2onnx_logger.addHandler(records)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield records
    finally:
        tf2onnx_logger.removeHandler(records)
        for lg, (level, propagate) in zip(loggers, saved):
            lg.setLevel(level)
            lg.propagate = propagate
