"""The zoo's trained models are stored as recipes; what they train is cached here.

    from models_zoo._cache import cached_onnx
    model = cached_onnx("digits_cnn", RECIPE_VERSION, lambda: to_onnx(train(...)))

A trained model lives in ``$MMOPT_CACHE/zoo/<name>-<recipe version>.onnx`` (the cache directory of
:func:`mmopt.zoo.cache_dir`, default ``~/.cache/mmopt``): a recipe bumps its version whenever
anything it trains changes, so an old file is never read for a new recipe. A file that does not
load or fails ``onnx.checker`` is trained again; a new one is written under a temporary name and
renamed, so concurrent test workers never read half a file. Training holds a lock on
``<file>.lock``: a second process (another test worker) that wants the same model waits for it and
reads the file instead of training it as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
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
    if not cache:
        return build()
    path = cache_path(name, version)
    model = _read(path)
    if model is not None:
        return model
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(f"{path.name}.lock")):
        model = _read(path)  # built by another process while this one waited
        if model is not None:
            return model
        model = build()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return model


def _read(path: Path) -> onnx.ModelProto | None:
    if not path.exists():
        return None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        return model
    except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is rebuilt, not fatal
        logger.warning("cache entry %s unreadable (%s); training again", path, exc)
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX ``flock``; elsewhere no lock: both processes train)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
