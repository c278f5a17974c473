"""Which TensorFlow format a path holds (SavedModel directory, Keras ``.keras``/``.h5``, frozen
GraphDef ``.pb``), told from the path and the file's first bytes without importing TensorFlow.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

SAVED_MODEL, KERAS, GRAPHDEF = "savedmodel", "keras", "graphdef"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
GRAPHDEF_SUFFIXES = (".pb",)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# detection (no TensorFlow import)


def is_saved_model(path) -> bool:
    """Whether ``path`` is a SavedModel directory (it holds ``saved_model.pb``/``.pbtxt``)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in SAVED_MODEL_FILES)


def sniff(path, head: bytes | None = None) -> str | None:
    """``"savedmodel"``, ``"keras"``, ``"graphdef"`` or None, from the path and the file's start."""
    path = Path(path)
    if path.is_dir():
        return SAVED_MODEL if is_saved_model(path) else None
    if path.name in SAVED_MODEL_FILES:
        return SAVED_MODEL
    if head is None:
        with open(path, "rb") as f:
            head = f.read(16)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                return KERAS if "config.json" in archive.namelist() else None
        except (zipfile.BadZipFile, OSError):
            return None
    if suffix in (".h5", ".hdf5"):
        return KERAS if head.startswith(_HDF5_MAGIC) else None
    if suffix in GRAPHDEF_SUFFIXES:
        # GraphDef field 1 (repeated NodeDef) comes first; a NodeDef starts with its name (field 1)
        return GRAPHDEF if head[:1] == b"\x0a" else None
    return None
