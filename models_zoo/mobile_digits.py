"""A trained MobileNetV3-style network (hard-swish, squeeze-excite) on scikit-learn's digits.

    from models_zoo.mobile_digits import train_mobile_digits
    model, splits = train_mobile_digits()       # onnx.ModelProto, DigitsSplits (16x16 images)
    splits.calib_x, splits.test_x, splits.test_y

The zoo's second trained model, the one int8 calibration is measured on (issue #14): the
activations a mobile network has in real use, which random weights do not give. Hard-swish
outputs (reaching down to -0.375, long positive tails), squeeze-excite pooled features and
hard-sigmoid gates that stay away from zero, zero-heavy ReLU outputs.

Data: the splits of :mod:`models_zoo.digits` (500 held-out, 200 calibration, 1,097 training
samples of ``sklearn.datasets.load_digits``, disjoint), each 8x8 image upsampled bilinearly
(half-pixel centres, edge clamped) to 16x16. The model takes ``input`` float ``[N, 1, 16, 16]``
in [0, 1] and returns ``logits`` ``[N, 10]``.

Network (MobileNetV3-Small's layout, shrunk; 45,564 parameters; the exporter folds BatchNorm into
the convolutions)::

    stem     Conv 3x3 1->16, BN, HardSwish                                         16x16
    block 1  dw 3x3/2 16, BN, ReLU; SE(16->8->16); Conv 1x1 16->16, BN              8x8
    block 2  Conv 1x1 16->48, BN, ReLU; dw 3x3 48, BN, ReLU; Conv 1x1 48->24, BN     8x8
    block 3  Conv 1x1 24->72, BN, HardSwish; dw 3x3/2 72, BN, HardSwish;
             SE(72->18->72); Conv 1x1 72->32, BN                                    4x4
    block 4  as block 3 at stride 1, 32->96->32 (SE 96->24->96), plus the residual   4x4
    head     Conv 1x1 32->128, BN, HardSwish; global average pool;
             Linear 128->128, HardSwish; Linear 128->10

SE (squeeze-excite): global average pool, 1x1 Conv, ReLU, 1x1 Conv, HardSigmoid, channel-wise Mul.

Training (:mod:`models_zoo._torch_training`): PyTorch (the ``torch`` extra), seeded, deterministic
algorithms, one thread: AdamW with a one-cycle schedule, label smoothing 0.05, random +-2 pixel
shifts, 20 epochs of the training split (about 15 s on one core). Held-out top-1: 99.2% (496 of
500). Exported with :func:`mmopt.frontends.from_torch` (opset 18, dynamic batch). Only the recipe
is stored: the ONNX file is cached as ``zoo/mobile_digits-<RECIPE_VERSION>.onnx`` under
``$MMOPT_CACHE`` (:mod:`models_zoo._cache`); change :data:`RECIPE_VERSION` whenever anything here
or in :mod:`models_zoo._torch_training` changes what is trained.

Why seed 2: entropy calibration before commit ef025f1 clipped hard-sigmoid gates that stay away
from zero to a constant. What that costs depends on which gate it hits: with seed 2 it is block 3's
SE gate (seen [0.275, 0.713], clipped to [0.275, 0.275]) and held-out top-1 falls to 69.2% with
uint8 activations, 68.4% with int8, so ``tests/test_quantize_trained.py`` fails on that code; with
seeds 0 and 1 only int8 activations lost accuracy (83.6%, 37.8%), uint8 stayed within 0.8 points.

Training is bitwise reproducible on one machine, not across instruction sets: trained with PyTorch's
AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``, as on an AVX2-only CI machine) the weights differ, fp32
top-1 is 99.0%, every calibration method stays within 0.2 points of it, and the pre-fix entropy
search still fails (63.6% uint8, 64.6% int8).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import onnx

from . import _cache
from ._torch_training import Recipe, export_classifier, fit
from .digits import DigitsSplits
from .digits import load_splits as _load_digits

#: bump when the data, architecture or training changes: it keys the cache
RECIPE_VERSION = "1"

NAME = "mobile_digits"
SIZE = 16
RECIPE = Recipe(seed=2)


def _upsample_matrix(n: int, size: int) -> np.ndarray:
    """``[size, n]``: bilinear interpolation from ``n`` to ``size`` samples, half-pixel centres,
    edges clamped (``torch.nn.functional.interpolate(..., mode="bilinear")``'s convention)."""
    centres = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = centres - lo
    m = np.zeros((size, n))
    m[np.arange(size), lo] += 1 - frac
    m[np.arange(size), hi] += frac
    return m


def upsample(x: np.ndarray, size: int = SIZE) -> np.ndarray:
    """``[N, C, h, w]`` -> ``[N, C, size, size]`` float32, bilinear."""
    rows = _upsample_matrix(x.shape[2], size)
    cols = _upsample_matrix(x.shape[3], size)
    return np.einsum("ih,nchw,jw->ncij", rows, x.astype(np.float64), cols).astype(np.float32)


def load_splits() -> DigitsSplits:
    """:func:`models_zoo.digits.load_splits` at 16x16 (needs scikit-learn, for its bundled data)."""
    s = _load_digits()
    return replace(s, train_x=upsample(s.train_x), calib_x=upsample(s.calib_x),
                   test_x=upsample(s.test_x))


def train_mobile_digits(cache: bool = True) -> tuple[onnx.ModelProto, DigitsSplits]:
    """The trained network as ONNX and its data splits; trained once, then read from the cache."""
    splits = load_splits()
    model = _cache.cached_onnx(NAME, RECIPE_VERSION, lambda: export(train(splits)), cache=cache)
    return model, splits


def cache_path():
    return _cache.cache_path(NAME, RECIPE_VERSION)


# --------------------------------------------------------------------------------------------------
# the network (torch is imported when training)


@cache
def _torch_classes():
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv_bn(cin, cout, kernel, stride=1, groups=1, act=None):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int, squeezed: int):
            super().__init__()
            self.fc1 = nn.Conv2d(channels, squeezed, 1)
            self.fc2 = nn.Conv2d(squeezed, channels, 1)

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))

    class Block(nn.Module):
        def __init__(self, cin, expand, cout, kernel, stride, se, act):
            super().__init__()
            layers = [conv_bn(cin, expand, 1, act=act)] if expand != cin else []
            layers.append(conv_bn(expand, expand, kernel, stride, groups=expand, act=act))
            if se:
                layers.append(SqueezeExcite(expand, max(8, expand // 4)))
            layers.append(conv_bn(expand, cout, 1))
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileDigits(nn.Module):
        def __init__(self):
            super().__init__()
            hs, relu = nn.Hardswish, nn.ReLU
            self.features = nn.Sequential(
                conv_bn(1, 16, 3, act=hs),
                Block(16, 16, 16, 3, 2, True, relu),
                Block(16, 48, 24, 3, 1, False, relu),
                Block(24, 72, 32, 3, 2, True, hs),
                Block(32, 96, 32, 3, 1, True, hs),
                conv_bn(32, 128, 1, act=hs),
            )
            self.classifier = nn.Sequential(nn.Linear(128, 128), nn.Hardswish(),
                                            nn.Linear(128, 10))

        def forward(self, input):  # the name of the ONNX model's input
            x = self.features(input)
            return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return MobileDigits


def train(splits: DigitsSplits, *, epochs: int = RECIPE.epochs, seed: int = RECIPE.seed):
    """The trained module (eval mode) on ``splits``' training split."""
    return fit(_torch_classes(), splits, replace(RECIPE, epochs=epochs, seed=seed), name=NAME)


def export(module) -> onnx.ModelProto:
    """``module`` as ONNX: input ``input`` ``[N, 1, 16, 16]``, output ``logits`` ``[N, 10]``."""
    return export_classifier(module, SIZE, f"MobileNetV3-style network, recipe {RECIPE_VERSION}, "
                                           "trained on sklearn digits at 16x16")


__all__ = ["NAME", "RECIPE_VERSION", "cache_path", "load_splits", "train_mobile_digits", "upsample"]
