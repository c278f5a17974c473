"""A trained Inception-style network (three branches concatenated, SiLU) on scikit-learn's digits.

    from models_zoo.concat_digits import train_concat_digits
    model, splits = train_concat_digits()       # onnx.ModelProto, DigitsSplits (16x16 images)
    splits.calib_x, splits.test_x, splits.test_y

The zoo's trained model for shared concatenation ranges (issue #14,
:mod:`mmopt.quantize.shared_scales`): ``quantize`` gives a ``Concat`` and its inputs one range so
the compiled concatenation copies bytes, which had been shown on random weights only. Here the
concatenated tensors are what a trained network computes: a 1x1 branch, a 3x3 branch and a
max-pooled branch of one input, each after its own BatchNorm and SiLU, reach different maxima on
real images, so the union range costs each branch a different amount of resolution.

Data: the 16x16 splits of :mod:`models_zoo.mobile_digits` (500 held-out, 200 calibration, 1,097
training samples of ``sklearn.datasets.load_digits``, disjoint, each 8x8 image upsampled
bilinearly). The model takes ``input`` float ``[N, 1, 16, 16]`` in [0, 1] and returns ``logits``
``[N, 10]``.

Network (GoogLeNet's Inception block without its 1x1 reductions, YOLO's SiLU; 34,474 parameters;
the exporter folds BatchNorm into the convolutions; every Conv is followed by BN and SiLU)::

    stem     Conv 3x3 1->16                                                        16x16
    block 1  Concat(Conv 1x1 16->8, Conv 3x3 16->16, MaxPool 3x3/1 -> Conv 1x1 16->8);
             Conv 1x1 32->32; MaxPool 2                                              8x8
    block 2  Concat(Conv 1x1 32->16, Conv 3x3 32->24, MaxPool 3x3/1 -> Conv 1x1 32->8,
                    the image, AveragePool 2); Conv 1x1 49->48; MaxPool 2            4x4
    block 3  Concat(Conv 1x1 48->16, Conv 3x3 48->32, MaxPool 3x3/1 -> Conv 1x1 48->16);
             Conv 1x1 64->64                                                         4x4
    head     global average pool; Linear 64->10

Block 2 also concatenates the image itself, averaged to its 8x8 (ESPNet's "input reinforcement"):
pixels on [0, 1] beside SiLU features reaching about 5, so joining that concatenation would make
the image's quantization step over 4 times coarser and ``quantize`` keeps it apart (its report's
``shared_scales.kept``: 5.7x with ``minmax``), while blocks 1 and 3, whose branches differ less
(1.1x and 1.6x), are joined.

Training (:mod:`models_zoo._torch_training`: mobile_digits' recipe, seed 0 instead of 2): PyTorch
(the ``torch`` extra), deterministic algorithms, one thread: AdamW (learning rate 4e-3, weight
decay 1e-4) with a one-cycle schedule, label smoothing 0.05, random +-2 pixel shifts, 20 epochs
of the training split in batches of 32 (about 15 s on one core). Held-out top-1: 99.8% (499 of
500). Exported with :func:`mmopt.frontends.from_torch` (opset 18, dynamic batch). Only the recipe
is stored: the ONNX file is cached as ``zoo/concat_digits-<RECIPE_VERSION>.onnx`` under
``$MMOPT_CACHE`` (:mod:`models_zoo._cache`); change :data:`RECIPE_VERSION` whenever anything here
or in :mod:`models_zoo._torch_training` changes what is trained.

Training is bitwise reproducible on one machine, not across instruction sets: trained with PyTorch's
AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``, as on an AVX2-only CI machine) the weights differ,
fp32 top-1 is 100.0%, int8 stays at 100.0% with ``minmax`` and ``percentile``, shared or own
ranges, and block 2's concatenation is kept apart again (5.8x), blocks 1 and 3 joined.
"""

from __future__ import annotations

from functools import cache

import onnx

from . import _cache
from ._torch_training import Recipe, export_classifier, fit
from .digits import DigitsSplits
from .mobile_digits import SIZE, load_splits

#: bump when the data, architecture or training changes: it keys the cache
RECIPE_VERSION = "1"

NAME = "concat_digits"
RECIPE = Recipe(seed=0)


def train_concat_digits(cache: bool = True) -> tuple[onnx.ModelProto, DigitsSplits]:
    """The trained network as ONNX and its data splits; trained once, then read from the cache."""
    splits = load_splits()
    model = _cache.cached_onnx(NAME, RECIPE_VERSION, lambda: export(train(splits)), cache=cache)
    return model, splits


# --------------------------------------------------------------------------------------------------
# the network (torch is imported when training)


@cache
def _torch_classes():
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv_bn_silu(cin, cout, kernel):
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False),
                             nn.BatchNorm2d(cout), nn.SiLU())

    class Inception(nn.Module):
        """A 1x1, a 3x3 and a max-pooled 1x1 branch of one input, concatenated on channels (with
        the image itself, averaged over ``image_pool`` x ``image_pool`` tiles, when that is set)
        and mixed by a 1x1 convolution."""

        def __init__(self, cin, narrow, wide, pooled, cout, image_pool=0):
            super().__init__()
            self.branch1 = conv_bn_silu(cin, narrow, 1)
            self.branch3 = conv_bn_silu(cin, wide, 3)
            self.pool = nn.MaxPool2d(3, 1, 1)
            self.branch_pool = conv_bn_silu(cin, pooled, 1)
            self.image_pool = image_pool
            self.mix = conv_bn_silu(narrow + wide + pooled + (1 if image_pool else 0), cout, 1)

        def forward(self, x, image):
            branches = [self.branch1(x), self.branch3(x), self.branch_pool(self.pool(x))]
            if self.image_pool:
                branches.append(F.avg_pool2d(image, self.image_pool))
            return self.mix(torch.cat(branches, 1))

    class ConcatDigits(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn_silu(1, 16, 3)
            self.block1 = Inception(16, 8, 16, 8, 32)
            self.block2 = Inception(32, 16, 24, 8, 48, image_pool=2)
            self.block3 = Inception(48, 16, 32, 16, 64)
            self.classifier = nn.Linear(64, 10)

        def forward(self, input):  # the name of the ONNX model's input
            x = self.block1(self.stem(input), input)
            x = self.block2(F.max_pool2d(x, 2), input)
            x = self.block3(F.max_pool2d(x, 2), input)
            return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return ConcatDigits


def train(splits: DigitsSplits):
    """The trained module (eval mode) on ``splits``' training split."""
    return fit(_torch_classes(), splits, RECIPE, name=NAME)


def export(module) -> onnx.ModelProto:
    """``module`` as ONNX: input ``input`` ``[N, 1, 16, 16]``, output ``logits`` ``[N, 10]``."""
    return export_classifier(module, SIZE, f"Inception-style network, recipe {RECIPE_VERSION}, "
                                           "trained on sklearn digits at 16x16")


__all__ = ["NAME", "RECIPE_VERSION", "load_splits", "train_concat_digits"]
