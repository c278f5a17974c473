"""The zoo's one genuinely trained model: a small CNN on scikit-learn's bundled digits data set.

    from models_zoo.digits import train_digits_cnn
    model, splits = train_digits_cnn()          # onnx.ModelProto, DigitsSplits
    splits.calib_x, splits.test_x, splits.test_y

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 grey images with values 0..16, shipped inside the
scikit-learn wheel: no download). Pixels are scaled to [0, 1]; the model takes ``input`` float
``[N, 1, 8, 8]`` and returns ``logits`` ``[N, 10]``.

Splits are fixed by one seeded permutation: 500 held-out samples (1 sample = 0.2 accuracy points),
200 calibration samples, the remaining 1,097 for training. The three never overlap.

Network (38k parameters)::

    Conv 3x3 1->16 pad 1, Relu, Conv 3x3 16->32 pad 1, Relu, MaxPool 2   -> [N, 32, 4, 4]
    Flatten, Gemm 512->64, Relu, Gemm 64->10                            -> logits

Training is plain numpy (float32, im2col convolutions, Adam, cross-entropy, random +-1 pixel shifts
for augmentation), seeded, on the training split only: about ten seconds on two cores. Only the
recipe is stored: the trained ONNX file is cached under ``$MMOPT_CACHE`` (default
``~/.cache/mmopt``) in ``zoo/digits_cnn-<RECIPE_VERSION>.onnx`` (:mod:`models_zoo._cache`); change
:data:`RECIPE_VERSION` whenever anything here changes what is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from . import _cache

#: bump when the data split, architecture or training changes: it keys the cache
RECIPE_VERSION = "1"

SEED = 0
HELD_OUT = 500
CALIBRATION = 200
EPOCHS = 30
BATCH = 32
LEARNING_RATE = 2e-3

OPSET = 17
IR_VERSION = 8


@dataclass
class DigitsSplits:
    """Disjoint splits of the digits data: images ``[n, 1, 8, 8]`` float32 in [0, 1], labels int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_splits() -> DigitsSplits:
    """The fixed train / calibration / held-out splits (needs scikit-learn, for its bundled data)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits model needs scikit-learn for its data: pip install scikit-learn"
                          ) from exc
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    test, calib, train = np.split(order, [HELD_OUT, HELD_OUT + CALIBRATION])
    return DigitsSplits(x[train], y[train], x[calib], y[calib], x[test], y[test])


def cache_path() -> Path:
    return _cache.cache_path("digits_cnn", RECIPE_VERSION)


def train_digits_cnn(cache: bool = True) -> tuple[onnx.ModelProto, DigitsSplits]:
    """The trained digits CNN as ONNX and its data splits; trained once, then read from the cache."""
    splits = load_splits()
    model = _cache.cached_onnx("digits_cnn", RECIPE_VERSION,
                               lambda: to_onnx(train(splits.train_x, splits.train_y)), cache=cache)
    return model, splits


# --------------------------------------------------------------------------------------------------
# the numpy network


def _im2col(x: np.ndarray) -> np.ndarray:
    """3x3, stride 1, pad 1: [N, C, H, W] -> [N, H, W, C*9] (channel-major, like ONNX weights)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # [N, C, H, W, 3, 3]
    return np.ascontiguousarray(windows.transpose(0, 2, 3, 1, 4, 5)).reshape(n, h, w, c * 9)


def _col2im(cols: np.ndarray, c: int) -> np.ndarray:
    """Adjoint of :func:`_im2col`: [N, H, W, C*9] -> [N, C, H, W]."""
    n, h, w, _ = cols.shape
    cols = cols.reshape(n, h, w, c, 3, 3)
    padded = np.zeros((n, c, h + 2, w + 2), cols.dtype)
    for i in range(3):
        for j in range(3):
            padded[:, :, i:i + h, j:j + w] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return padded[:, :, 1:-1, 1:-1]


def _init(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    zeros = lambda n: np.zeros(n, np.float32)  # noqa: E731
    return {
        "conv1.weight": he((16, 1, 3, 3), 9), "conv1.bias": zeros(16),
        "conv2.weight": he((32, 16, 3, 3), 144), "conv2.bias": zeros(32),
        "fc1.weight": he((64, 512), 512), "fc1.bias": zeros(64),
        "fc2.weight": he((10, 64), 64), "fc2.bias": zeros(10),
    }


def _dense(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` over the last axis, as one 2-D matmul (a stacked matmul runs per leading index)."""
    return (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])


def _forward(p: dict[str, np.ndarray], x: np.ndarray):
    n = x.shape[0]
    c1 = _im2col(x)                                                     # [N,8,8,9]
    z1 = _dense(c1, p["conv1.weight"].reshape(16, -1)) + p["conv1.bias"]    # [N,8,8,16]
    a1 = np.maximum(z1, 0).transpose(0, 3, 1, 2)                        # [N,16,8,8]
    c2 = _im2col(a1)                                                    # [N,8,8,144]
    z2 = _dense(c2, p["conv2.weight"].reshape(32, -1)) + p["conv2.bias"]    # [N,8,8,32]
    a2 = np.maximum(z2, 0).transpose(0, 3, 1, 2)                        # [N,32,8,8]
    blocks = a2.reshape(n, 32, 4, 2, 4, 2)
    pooled = blocks.max(axis=(3, 5))                                    # [N,32,4,4]
    f = pooled.reshape(n, -1)
    z3 = f @ p["fc1.weight"].T + p["fc1.bias"]
    a3 = np.maximum(z3, 0)
    logits = a3 @ p["fc2.weight"].T + p["fc2.bias"]
    return logits, (c1, z1, c2, z2, a2, blocks, pooled, f, z3, a3)


def _backward(p, cache, dlogits):
    c1, z1, c2, z2, a2, blocks, pooled, f, z3, a3 = cache
    n = dlogits.shape[0]
    g = {"fc2.weight": dlogits.T @ a3, "fc2.bias": dlogits.sum(0)}
    dz3 = (dlogits @ p["fc2.weight"]) * (z3 > 0)
    g["fc1.weight"] = dz3.T @ f
    g["fc1.bias"] = dz3.sum(0)
    dpooled = (dz3 @ p["fc1.weight"]).reshape(pooled.shape)
    # max-pool: the gradient goes to the (first) arg-max of each 2x2 block
    flat = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, 32, 4, 4, 4)
    onehot = np.zeros_like(flat)
    np.put_along_axis(onehot, flat.argmax(-1)[..., None], 1.0, axis=-1)
    da2 = (onehot * dpooled[..., None]).reshape(n, 32, 4, 4, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    dz2 = da2.reshape(n, 32, 8, 8).transpose(0, 2, 3, 1) * (z2 > 0)     # [N,8,8,32]
    g["conv2.weight"] = (dz2.reshape(-1, 32).T @ c2.reshape(-1, 144)).reshape(32, 16, 3, 3)
    g["conv2.bias"] = dz2.sum((0, 1, 2))
    dc2 = _dense(dz2, p["conv2.weight"].reshape(32, -1).T)               # [N,8,8,144]
    dz1 = _col2im(dc2, 16).transpose(0, 2, 3, 1) * (z1 > 0)             # [N,8,8,16]
    g["conv1.weight"] = (dz1.reshape(-1, 16).T @ c1.reshape(-1, 9)).reshape(16, 1, 3, 3)
    g["conv1.bias"] = dz1.sum((0, 1, 2))
    return g


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by -1, 0 or +1 pixels on each axis (zero fill)."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, size=(2, len(x)))
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


def train(x: np.ndarray, y: np.ndarray, *, epochs: int = EPOCHS,
          seed: int = SEED) -> dict[str, np.ndarray]:
    """Adam on softmax cross-entropy; returns float32 parameters by ONNX initializer name.

    BLAS runs single-threaded: the matrices are small, threads only contend (10x slower on a busy
    2-core machine), and one thread keeps summation order, hence the result, fixed.
    """
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return _train(x, y, epochs, seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(x, y, epochs, seed)


def _train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = _init(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    x = x.astype(np.float32)
    step = 0
    for epoch in range(epochs):
        lr = LEARNING_RATE * (0.5 * (1 + np.cos(np.pi * epoch / epochs)))  # cosine decay
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            idx = order[start:start + BATCH]
            xb, yb = _shift(x[idx], rng), y[idx]
            logits, cache = _forward(p, xb)
            logits -= logits.max(1, keepdims=True)
            prob = np.exp(logits)
            prob /= prob.sum(1, keepdims=True)
            prob[np.arange(len(yb)), yb] -= 1.0
            grads = _backward(p, cache, (prob / len(yb)).astype(np.float32))
            step += 1
            for k in p:
                m[k] = beta1 * m[k] + (1 - beta1) * grads[k]
                v[k] = beta2 * v[k] + (1 - beta2) * grads[k] ** 2
                mhat = m[k] / (1 - beta1**step)
                vhat = v[k] / (1 - beta2**step)
                p[k] -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)
    return {k: val.astype(np.float32) for k, val in p.items()}


def predict(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of the numpy network (the reference the ONNX export is tested against)."""
    return _forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64))[0]


def to_onnx(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pool"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flatten"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1",
                         transB=1),
        helper.make_node("Relu", ["fc1"], ["relu3"], name="relu3"),
        helper.make_node("Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["logits"], name="fc2",
                         transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(params[k], k) for k in sorted(params)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mmopt.models_zoo", doc_string=
                              f"digits CNN, recipe {RECIPE_VERSION}, trained on sklearn digits")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


__all__ = ["DigitsSplits", "RECIPE_VERSION", "load_splits", "train_digits_cnn", "cache_path"]
