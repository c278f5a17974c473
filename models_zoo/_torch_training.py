"""How the zoo's PyTorch-trained classifiers are trained and exported, shared by their recipes.

    from models_zoo._torch_training import Recipe, export_classifier, fit
    module = fit(Net, splits, Recipe(seed=2), name="mobile_digits")
    model = export_classifier(module, 16, "what it is, recipe 1")

A trained zoo model stores only its recipe (:mod:`models_zoo._cache`), so what it trains must come
out the same every time: one module states the network and its seed, this one the procedure and
the hyperparameters (:class:`Recipe`). :func:`fit` seeds PyTorch, builds the network under that
seed, and trains on one thread with deterministic algorithms (summation order fixed): AdamW, a
one-cycle learning-rate schedule, cross-entropy with label smoothing, random pixel shifts of each
image. The result is bitwise reproducible on one machine, not across instruction sets (PyTorch's
AVX2 and AVX-512 kernels sum in different orders).

Anything changed here changes what every recipe using it trains: bump their ``RECIPE_VERSION``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from .digits import DigitsSplits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """What :func:`fit` trains with; the zoo's digits classifiers differ in the seed only."""

    seed: int
    epochs: int = 20
    batch: int = 32
    learning_rate: float = 4e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    #: images are shifted by up to this many pixels on each axis
    shift: int = 2


@contextlib.contextmanager
def deterministic_torch(seed: int):
    """Seeded, deterministic algorithms, one thread (summation order fixed); restored after."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def random_shift(x, generator, pixels: int):
    """Each image shifted by -pixels..+pixels on each axis (zero fill)."""
    import torch
    from torch.nn import functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def fit(build: Callable[[], object], splits: DigitsSplits, recipe: Recipe, *, name: str):
    """``build()`` (called after seeding: the initial weights follow ``recipe.seed``) trained on
    ``splits``' training split, returned in eval mode."""
    import torch
    from torch.nn import functional as F

    start = time.perf_counter()
    with deterministic_torch(recipe.seed):
        model = build()
        generator = torch.Generator().manual_seed(recipe.seed)
        x = torch.from_numpy(splits.train_x)
        y = torch.from_numpy(splits.train_y)
        steps = recipe.epochs * -(-len(y) // recipe.batch)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate,
                                      weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate,
                                                       total_steps=steps)
        model.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(y), generator=generator)
            for i in range(0, len(y), recipe.batch):
                idx = order[i:i + recipe.batch]
                loss = F.cross_entropy(model(random_shift(x[idx], generator, recipe.shift)),
                                       y[idx], label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    logger.info("trained %s in %.1fs", name, time.perf_counter() - start)
    return model.eval()


def export_classifier(module, size: int, doc_string: str) -> onnx.ModelProto:
    """``module`` as ONNX: input ``input`` ``[N, 1, size, size]``, output ``logits``, opset 18,
    dynamic batch, without the exporter's provenance."""
    import torch

    from mmopt.frontends import from_torch

    model = from_torch(module, torch.zeros(1, 1, size, size), dynamic_batch=True)
    graph = model.graph
    (output,) = graph.output
    for node in graph.node:  # the exporter names the output after its node
        node.output[:] = ["logits" if o == output.name else o for o in node.output]
    output.name = "logits"
    # the exporter's provenance: stack traces with this checkout's paths and line numbers, the
    # exported program's signature (names the output's old name); none of it needed to run
    for node in graph.node:
        del node.metadata_props[:]
    del graph.metadata_props[:]
    model.doc_string = doc_string
    onnx.checker.check_model(model)
    return model
