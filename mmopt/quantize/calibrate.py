"""Streaming calibration: activation ranges from a fixed-size summary per tensor.

Memory is O(number of tensors), never O(number of samples): each calibrated tensor keeps a running
min, max, element count and one histogram of ``|x|`` with :data:`DEFAULT_BINS` bins over ``[0, R]``.
When a batch holds a value past ``R``, ``R`` grows by the smallest power of two ``2^k`` that covers it
and every ``2^k`` neighbouring bins merge into one (exact: bin edges stay edges). Each batch's
intermediate outputs are dropped as soon as they are counted.

From that summary each method gives a clipping threshold ``t`` for ``|x|`` (``minmax`` needs no
histogram). The range handed to the QDQ writer is ``[max(min, -t), min(max, t)]``; a symmetric
(int8) activation then takes ``max(|lo|, |hi|)`` as its scale limit.

``L(t)`` below is the number of quantization steps over ``[0, t]`` of the grid the QDQ writer will
use (:func:`grid_steps`): 127 for int8 (symmetric); 255 for uint8 on a tensor that never goes
negative; for uint8 on a tensor whose minimum ``m`` is negative the asymmetric grid spans
``[max(m, -t), t]``, so ``L(t) = 255 * t / (t + min(-m, t))``: ~127 for a signed tensor clipped
inside its negative range, 240 for a hard-swish output (``m = -0.375``) clipped at 6.

- **minmax**: ``[min, max]``.
- **percentile** (``p``, default 99.99): ``t`` = the smallest bin edge with ``P(|x| <= t) >= p/100``.
Exact zeros (most of a post-ReLU tensor) are counted apart: zero is exactly representable, and
left in, their spike in bin 0 makes entropy favour clipping hard (a narrow first level keeps it
sharp), so entropy and mse leave them out.

- **entropy** (KL divergence, after TensorRT's calibrator): for each candidate ``t = i * w`` the
  reference ``P`` is the first ``i`` bins with everything beyond folded into the last; ``Q`` merges
  those ``i`` in-range bins into ``L(t) + 1`` levels and spreads each level's mass evenly over the
  bins where ``P`` is non-zero (zero bins stay zero). Both are divided by the same total, so the
  clipped mass is what ``Q`` lacks, and ``t`` minimizes the generalized KL divergence::

      D(P || Q) = sum P log(P / Q) - sum P + sum Q

  To first order in the clipped fraction this is the classic KL with ``Q`` renormalized; unlike it,
  it does not fall to 0 when almost everything is clipped. Renormalized, a candidate just above a
  tensor's minimum (``P`` and ``Q`` then both one spike in the last bin) scored a perfect 0 on every
  tensor whose values stay away from zero (squeeze-excite gates, hard-sigmoid inputs, pooled
  features), and entropy clipped such a tensor to a constant. A candidate where ``P`` has mass that
  ``Q`` cannot hold (a clipped tail folded into a level with no in-range mass) is skipped; the full
  range never is.
- **mse**: ``t`` minimizes the expected squared quantization error over the histogram (bin centres
  ``c`` with counts ``n``, step ``s = t / L(t)``)::

      E(t) = sum_{c <= t} n(c) * min(c^2, s^2 / 12)  +  sum_{c > t} n(c) * (c - t)^2

  (rounding noise inside the range, a value below half a step rounds to zero; clipping outside).

Candidates for ``t`` are bin edges from the ``L + 1``-th on (``L`` at the full range), at most
:data:`MAX_CANDIDATES` of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_BINS = 2048
DEFAULT_PERCENTILE = 99.99
MAX_CANDIDATES = 512

#: progress callback: ``(samples done, total or None)``
Progress = Callable[[int, "int | None"], None]


class StreamingHistogram:
    """Running min/max/count and an ``|x|`` histogram of fixed size that re-bins as the range grows."""

    __slots__ = ("bins", "counts", "limit", "min", "max", "count", "zeros")

    def __init__(self, bins: int = DEFAULT_BINS):
        if bins <= 0 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        #: upper edge R of the histogram; 0 until a non-zero value is seen
        self.limit = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        #: exact zeros (in bin 0): representable without error, left out of entropy and mse
        self.zeros = 0

    @property
    def width(self) -> float:
        return self.limit / self.bins

    def update(self, values: np.ndarray, *, histogram: bool = True) -> None:
        x = np.asarray(values).reshape(-1)
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += x.size
        if not histogram:
            return
        amax = max(abs(lo), abs(hi))
        self.zeros += x.size - int(np.count_nonzero(x))
        if amax == 0.0:
            self.counts[0] += x.size
            return
        if self.limit == 0.0:
            self.limit = amax
        elif amax > self.limit:
            self._grow(amax)
        index = (np.abs(x) * np.float32(self.bins / self.limit)).astype(np.int64)
        np.minimum(index, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def _grow(self, amax: float) -> None:
        factor = 2 ** max(1, math.ceil(math.log2(amax / self.limit)))
        while self.limit * factor < amax:  # guard against log2 rounding
            factor *= 2
        merged = (self.counts.reshape(-1, factor).sum(1) if factor < self.bins
                  else np.array([self.counts.sum()]))
        self.counts = np.zeros(self.bins, np.int64)
        self.counts[:merged.size] = merged
        self.limit *= factor

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes

    # --- thresholds -------------------------------------------------------------------------------

    def _trimmed(self, *, without_zeros: bool = False) -> np.ndarray:
        counts = self.counts
        if without_zeros and self.zeros:
            counts = counts.copy()
            counts[0] -= self.zeros
        nonzero = np.flatnonzero(counts)
        return counts[: nonzero[-1] + 1] if nonzero.size else counts[:1]

    def percentile_threshold(self, percentile: float) -> float:
        counts = self._trimmed()
        cdf = np.cumsum(counts) / max(counts.sum(), 1)
        i = int(np.searchsorted(cdf, percentile / 100.0, side="left"))
        return min(i + 1, counts.size) * self.width

    def entropy_threshold(self, levels: float = 127, negative: float = 0.0) -> float:
        """``t`` minimizing ``D(P || Q)`` (module docs); ``levels``, ``negative``: see
        :func:`grid_steps`."""
        counts = self._trimmed(without_zeros=True).astype(np.float64)
        n, w = counts.size, self.width
        total = counts.sum()
        if w == 0.0 or total <= 0:
            return n * w
        start = round(grid_steps(n * w, levels, negative)) + 1
        if n <= start:
            return n * w
        cands = np.array(list(_candidates(start, n)))
        nq = np.rint(grid_steps(cands * w, levels, negative)).astype(np.int64) + 1
        divergence = _divergences(counts, cands, nq)
        return float(cands[int(np.argmin(divergence))]) * w

    def mse_threshold(self, levels: float = 127, negative: float = 0.0) -> float:
        """``t`` minimizing ``E(t)`` (module docs); ``levels``, ``negative``: see
        :func:`grid_steps`."""
        counts = self._trimmed(without_zeros=True).astype(np.float64)
        n = counts.size
        w = self.width
        if w == 0.0:
            return 0.0
        start = round(grid_steps(n * w, levels, negative)) + 1
        if n <= start:
            return n * w
        centers = (np.arange(n) + 0.5) * w
        cands = np.array(list(_candidates(start, n)), dtype=np.float64) * w
        step = cands[:, None] / grid_steps(cands[:, None], levels, negative)
        inside = centers[None, :] <= cands[:, None]
        rounding = np.minimum(centers[None, :] ** 2, step**2 / 12.0)
        clipping = (centers[None, :] - cands[:, None]) ** 2
        error = (np.where(inside, rounding, clipping) * counts[None, :]).sum(1)
        return float(cands[int(np.argmin(error))])


def _divergences(counts: np.ndarray, cands: np.ndarray, nq: np.ndarray) -> np.ndarray:
    """``total * D(P || Q)`` for each candidate ``i`` in ``cands`` (bins kept) with ``nq`` levels.

    All candidates at once from prefix sums: level ``k`` of candidate ``i`` covers the bins
    ``[ceil(k i / nq), ceil((k + 1) i / nq))``, and on the bins where ``P > 0`` its ``Q`` is the
    level's mass ``M`` over their number ``F``, so a level contributes
    ``sum P log P - (sum P) log(M / F)``; ``sum P - sum Q`` is the clipped mass ``T``. The last bin
    of each candidate holds ``T`` too. inf where ``P`` has mass in a level with ``M = 0``.
    """
    c = counts
    zero = np.zeros(1)
    mass_before = np.concatenate([zero, np.cumsum(c)])
    nonzero_before = np.concatenate([zero, np.cumsum(c > 0)])
    safe = np.where(c > 0, c, 1.0)
    plogp_before = np.concatenate([zero, np.cumsum(c * np.log(safe))])
    total = mass_before[-1]

    i = cands[:, None]
    k = np.arange(int(nq.max()) + 1)[None, :]
    edges = np.minimum((k * i + nq[:, None] - 1) // nq[:, None], i)  # level starts, then i
    lo, hi = edges[:, :-1], edges[:, 1:]
    m = mass_before[hi] - mass_before[lo]
    sum_p = m.copy()
    filled = nonzero_before[hi] - nonzero_before[lo]
    plogp = plogp_before[hi] - plogp_before[lo]
    # the last level: the clipped mass T folds into the candidate's last bin
    rows = np.arange(cands.size)
    last = nq - 1
    clipped = total - mass_before[cands]
    edge_bin = c[cands - 1]
    folded = edge_bin + clipped
    sum_p[rows, last] += clipped
    filled[rows, last] += (edge_bin == 0) & (clipped > 0)
    plogp[rows, last] += (folded * np.log(np.where(folded > 0, folded, 1.0))
                          - edge_bin * np.log(np.where(edge_bin > 0, edge_bin, 1.0)))
    has_p = sum_p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(has_p, plogp - sum_p * np.log(m / np.where(filled > 0, filled, 1)), 0.0)
    out = terms.sum(1) - clipped
    out[np.any(has_p & (m <= 0), axis=1)] = np.inf
    return out


def grid_steps(t, levels: float, negative: float = 0.0):
    """Quantization steps over ``[0, t]`` of a grid of ``levels`` steps spanning
    ``[-min(negative, t), t]``.

    int8 (symmetric): ``levels=254, negative=inf`` -> 127. uint8 (asymmetric) on a tensor with
    minimum ``m``: ``levels=255, negative=max(0, -m)`` -> 255 when ``m >= 0``. ``t`` may be an
    array.
    """
    return levels * t / (t + np.minimum(negative, t))


def _candidates(start: int, stop: int):
    """Bin counts ``start..stop`` (inclusive), at most MAX_CANDIDATES of them, always with ``stop``."""
    stride = max(1, (stop - start) // MAX_CANDIDATES)
    yield from range(start, stop, stride)
    yield stop


def tensor_range(hist: StreamingHistogram, method: str, *, levels: float = 127,
                 negative: float = 0.0,
                 percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """The ``(lo, hi)`` range of one tensor by ``method`` (see the module docs).

    ``levels`` and ``negative`` describe the quantization grid (:func:`grid_steps`); the defaults
    are 127 steps over ``[0, t]``.
    """
    if hist.count == 0:
        return 0.0, 0.0
    if method == "minmax" or hist.limit == 0.0:
        return hist.min, hist.max
    if method == "percentile":
        t = hist.percentile_threshold(percentile)
    elif method == "entropy":
        t = hist.entropy_threshold(levels, negative)
    elif method == "mse":
        t = hist.mse_threshold(levels, negative)
    else:
        raise MmoptError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    return max(hist.min, -t), min(hist.max, t)


# --------------------------------------------------------------------------------------------------
# running the model


@dataclass
class CalibrationResult:
    """Per-tensor statistics after calibration; turn them into ranges with :meth:`ranges`."""

    stats: dict[str, StreamingHistogram]
    samples: int
    batches: int
    seconds: float

    def ranges(self, method: str, *, unsigned: bool = False,
               percentile: float = DEFAULT_PERCENTILE) -> dict[str, tuple[float, float]]:
        """``{tensor: (lo, hi)}``. ``unsigned``: activations are uint8 (asymmetric)."""
        out = {}
        for name, hist in self.stats.items():
            levels, negative = (255, max(0.0, -hist.min)) if unsigned else (254, math.inf)
            out[name] = tensor_range(hist, method, levels=levels, negative=negative,
                                     percentile=percentile)
        return out

    @property
    def summary_bytes(self) -> int:
        return sum(h.nbytes for h in self.stats.values())


def augment(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``tensors`` (float tensors; types from shape inference)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in present:
            augmented.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return augmented


def calibrate(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[tuple[Mapping[str, np.ndarray], int]],
    *,
    histogram: bool = True,
    bins: int = DEFAULT_BINS,
    total: int | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> CalibrationResult:
    """Run ``model`` on each ``(feeds, number of samples in them)`` batch and fold ``tensors`` into
    streaming statistics.

    ``histogram=False`` keeps min/max only (all that ``minmax`` needs). ``total`` is the expected
    number of samples, for progress only.
    """
    from mmopt.runtime import ort

    start = time.perf_counter()
    session = ort.session(augment(model, tensors), label="calibration", threads=threads)
    stats = {name: StreamingHistogram(bins) for name in tensors}
    names = list(tensors)
    samples = count = 0
    for feeds, n in batches:
        outputs = ort.run(session, feeds, label=f"calibration (sample {samples})", names=names)
        for name, value in zip(names, outputs):
            stats[name].update(value, histogram=histogram)
        del outputs
        samples += n
        count += 1
        if progress:
            progress(samples, total)
    if samples == 0:
        raise MmoptError("calibration: the calibration data has no samples")
    seconds = time.perf_counter() - start
    logger.info("calibrated %d tensors on %d samples in %.1fs", len(names), samples, seconds)
    return CalibrationResult(stats, samples, count, seconds)
