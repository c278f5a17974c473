"""The zoo's trained models are stored as recipes; what they train is cached here.

    from models_zoo._cache import cached_onnx
    model = cached_onnx("digits_cnn", RECIPE_VERSION, lambda: to_onnx(train(...)))

A trained model lives in ``$MMOPT_CACHE/zoo/<name>-<recipe version>.onnx`` (the cache directory of
:func:`mmopt.zoo.cache_dir`, default ``~/.cache/mmopt``): a recipe bumps its version whenever
anything it trains changes, so an old file is never read for a new recipe. A file that does not
load or fails ``onnx.checker`` is trained again; a new one is written under a temporary name and
renamed, so concurrent test workers never read half a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import onnx

logger = logging.getLogger(__name__)


def cache_path(name: str, version: str) -> Path:
    from mmopt.zoo import cache_dir

    return cache_dir() / "zoo" / f"{name}-{version}.onnx"


def cached_onnx(name: str, version: str, build: Callable[[], onnx.ModelProto], *,
                cache: bool = True) -> onnx.ModelProto:
    """The model ``build`` returns, read from the cache when an entry for ``name``-``version``
    exists (``cache=False``: built, neither read nor written)."""
    path = cache_path(name, version)
    if cache and path.exists():
        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
            return model
        except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is rebuilt, not fatal
            logger.warning("%s cache %s unreadable (%s); training again", name, path, exc)
    model = build()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return model
