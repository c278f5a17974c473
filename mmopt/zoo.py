"""Access to the built-in example models (``models_zoo``) from the CLI: ``zoo:NAME`` model paths."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from mmopt.errors import MmoptError


def cache_dir() -> Path:
    base = os.environ.get("MMOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmopt")
    return Path(base)


def build(name: str) -> onnx.ModelProto:
    import models_zoo

    if name not in models_zoo.MODELS:
        raise MmoptError(f"zoo:{name}: no such built-in model; known: {', '.join(models_zoo.names())}")
    return models_zoo.build(name)


def zoo_model(name: str) -> str:
    """Path of the built-in model ``name`` as an ONNX file, built once and cached.

    Built models are deterministic, so the cache is keyed by name and mmopt version only.
    """
    from mmopt import __version__
    from mmopt import ir as mir

    path = cache_dir() / "zoo" / __version__ / f"{name}.onnx"
    if not path.exists():
        model = build(name)
        tmp = path.with_name(path.name + f".{os.getpid()}.partial")
        mir.save(model, tmp)
        tmp.replace(path)
    return str(path)
