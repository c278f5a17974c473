"""The data set ``mmopt check`` runs both models on, and the optional labels.

DATA is one of:

``random:N``
    N seeded random samples shaped like the reference's inputs (floats uniform in [0, 1), integers
    in [0, 4), booleans coin flips: :mod:`mmopt.runtime.inputs`). A symbolic leading dim becomes 1;
    other symbolic dims need ``--input-shape``. For smoke tests only: random data says little about accuracy.
``FILE.npz``
    One array per model input, keyed by input name, each with a leading *sample* axis: for an input
    ``[1, 3, 32, 32]`` store ``[N, 3, 32, 32]`` (each sample gets the batch axis back) or
    ``[N, 1, 3, 32, 32]``. Every input's array has the same N.
``FILE.npy``
    The same, for a model with exactly one input.
``DIRECTORY``
    Either one ``.npy`` file per model input named after it (``input.npy``, with a leading sample
    axis as above), or one file per *sample*: ``.npz`` files keyed by input name, or, for a
    single-input model, ``.npy`` files. Files are taken in natural name order (``2.npy`` before
    ``10.npy``) and name the sample in reports.

Files are never unpickled (``np.load(..., allow_pickle=False)``): object arrays are refused.

LABELS (for top-1 accuracy) is a ``.npy`` file, a ``.npz`` holding one array (or one named
``labels``), or a text file with one integer per line: N class indices in data order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmopt.check.runners import InputSpec
from mmopt.errors import MmoptError
from mmopt.runtime.inputs import random_feeds

#: a description of DATA in error messages
_DATA = "--data"


@dataclass
class Dataset:
    """Random-access samples: ``len(ds)``, ``ds[i]`` -> feeds ``{input: array}``, ``ds.ids[i]``."""

    description: str
    ids: list[str]
    _get: Callable[[int], dict[str, np.ndarray]]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._get(index)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def load_data(source, inputs: Sequence[InputSpec], *, seed: int = 0,
              input_shapes: Mapping[str, Sequence[int]] | None = None) -> Dataset:
    """The samples named by ``source`` (see the module docs), fitted to ``inputs``.

    ``source`` may also be a mapping ``{input name: array with a leading sample axis}`` or a
    :class:`Dataset` (returned as is).
    """
    if isinstance(source, Dataset):
        return source
    specs = list(inputs)
    if isinstance(source, Mapping):
        return _from_arrays(dict(source), specs, "<arrays>")
    text = str(source)
    if text.startswith("random:"):
        return _random(text, specs, seed, dict(input_shapes or {}))
    path = Path(text)
    if not path.exists():
        raise MmoptError(f"{_DATA} {text}: no such file or directory (give a .npz/.npy file, a "
                         "directory of them, or random:N)")
    if path.is_dir():
        return _from_directory(path, specs)
    if path.suffix == ".npz":
        with _open(path) as archive:
            arrays = {k: _load_array(archive, k, str(path)) for k in archive.files}
        return _from_arrays(arrays, specs, str(path))
    if path.suffix == ".npy":
        if len(specs) != 1:
            raise MmoptError(f"{_DATA} {path}: a .npy file holds one input, the model has "
                             f"{len(specs)} ({', '.join(s.name for s in specs)}); use an .npz "
                             "keyed by input name")
        return _from_arrays({specs[0].name: _open(path)}, specs, str(path))
    raise MmoptError(f"{_DATA} {path}: expected a .npz or .npy file, a directory, or random:N")


def _open(path: Path):
    try:
        return np.load(path, allow_pickle=False)  # never unpickle user files
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise MmoptError(f"{_DATA} {path}: holds Python objects (pickled), which mmopt never "
                             "loads; save plain numeric arrays") from exc
        raise MmoptError(f"{_DATA} {path}: not a .npy/.npz array file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise MmoptError(f"{_DATA} {path}: cannot read ({exc})") from exc


def _load_array(archive, key: str, where: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        raise MmoptError(f"{_DATA} {where}: array {key!r} holds Python objects (pickled), which "
                         "mmopt never loads; save plain numeric arrays") from exc


def fit_input(array: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """``array`` shaped and typed for input ``spec``: a missing leading batch axis is added, same-kind
    dtypes are converted (float64 -> float32); anything else is an error naming ``where``."""
    array = np.asarray(array)
    if array.dtype.kind == "O":
        raise MmoptError(f"{where}: input {spec.name} is an object array; save numeric arrays")
    want = np.dtype(spec.dtype)
    if array.dtype != want:
        if array.dtype.kind != want.kind:
            raise MmoptError(f"{where}: input {spec.name} has dtype {array.dtype}, the model "
                             f"expects {want}; convert the data (mmopt does not rescale it)")
        array = array.astype(want)
    dims = spec.dims
    if dims:
        if array.ndim == len(dims) - 1:
            array = array[np.newaxis]
        elif array.ndim != len(dims):
            raise MmoptError(f"{where}: input {spec.name} has shape {list(array.shape)} per "
                             f"sample, the model expects rank {len(dims)} ({_fmt(dims)})")
        for got, expected in zip(array.shape, dims):
            if isinstance(expected, int) and got != expected:
                raise MmoptError(f"{where}: input {spec.name} has shape {list(array.shape)} per "
                                 f"sample, the model expects {_fmt(dims)}")
    return np.ascontiguousarray(array)


def _fmt(dims) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def _check_names(names: Sequence[str], specs: Sequence[InputSpec], where: str) -> None:
    missing = [s.name for s in specs if s.name not in names]
    if missing:
        raise MmoptError(f"{_DATA} {where}: no data for input(s) {', '.join(missing)} (it has "
                         f"{', '.join(names) or 'nothing'}); key arrays by the model's input names: "
                         f"{', '.join(s.name for s in specs)}")


def _from_arrays(arrays: dict[str, np.ndarray], specs: Sequence[InputSpec], where: str) -> Dataset:
    _check_names(list(arrays), specs, where)
    counts = {}
    for spec in specs:
        array = arrays[spec.name]
        if array.dtype.kind == "O":
            raise MmoptError(f"{_DATA} {where}: {spec.name} is an object array; save numeric arrays")
        if array.ndim == 0:
            raise MmoptError(f"{_DATA} {where}: {spec.name} is a scalar; arrays need a leading "
                             "sample axis")
        counts[spec.name] = array.shape[0]
    if len(set(counts.values())) > 1:
        raise MmoptError(f"{_DATA} {where}: inputs have different sample counts ("
                         + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise MmoptError(f"{_DATA} {where}: no samples (the leading sample axis is empty)")
    name = Path(where).name

    def get(i: int) -> dict[str, np.ndarray]:
        return {s.name: fit_input(arrays[s.name][i], s, f"{where} sample {i}") for s in specs}

    get(0)  # shape/dtype errors before any model runs
    return Dataset(f"{where} ({n} samples)", [f"{name}[{i}]" for i in range(n)], get)


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _from_directory(path: Path, specs: Sequence[InputSpec]) -> Dataset:
    files = sorted((p for p in path.iterdir() if p.suffix in (".npy", ".npz") and p.is_file()),
                   key=_natural_key)
    if not files:
        raise MmoptError(f"{_DATA} {path}: the directory has no .npy or .npz files")
    names = {s.name for s in specs}
    by_input = {p.stem: p for p in files if p.suffix == ".npy"}
    if names and names <= set(by_input) and len(files) == len(names):
        # one file per input, each with a leading sample axis
        return _from_arrays({n: _open(by_input[n]) for n in names}, specs, str(path))
    if len(specs) != 1 and any(p.suffix == ".npy" for p in files):
        raise MmoptError(f"{_DATA} {path}: .npy sample files hold one input, the model has "
                         f"{len(specs)} ({', '.join(sorted(names))}); store each sample as an "
                         ".npz keyed by input name, or one NAME.npy per input")

    def get(i: int) -> dict[str, np.ndarray]:
        file = files[i]
        where = f"{_DATA} {file}"
        if file.suffix == ".npy":
            return {specs[0].name: fit_input(_open(file), specs[0], where)}
        with _open(file) as archive:
            _check_names(archive.files, specs, str(file))
            return {s.name: fit_input(_load_array(archive, s.name, str(file)), s, where)
                    for s in specs}

    get(0)
    return Dataset(f"{path}/ ({len(files)} files)", [p.name for p in files], get)


def _random(text: str, specs: Sequence[InputSpec], seed: int,
            shapes: dict[str, Sequence[int]]) -> Dataset:
    try:
        n = int(text.partition(":")[2])
    except ValueError:
        n = 0
    if n <= 0:
        raise MmoptError(f"{_DATA} {text}: expected random:N with N a positive sample count")
    unknown = [k for k in shapes if k not in {s.name for s in specs}]
    if unknown:
        raise MmoptError(f"--input-shape names unknown input(s) {', '.join(unknown)}; the "
                         f"model's inputs are: {', '.join(s.name for s in specs)}")
    static: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name in shapes:
            static[spec.name] = tuple(int(d) for d in shapes[spec.name])
            continue
        dims = list(spec.dims)
        if dims and not isinstance(dims[0], int):
            dims[0] = 1
        if not all(isinstance(d, int) for d in dims):
            example = ",".join(str(d) if isinstance(d, int) else "N" for d in dims)
            raise MmoptError(f"{_DATA} {text}: input {spec.name} has dynamic shape "
                             f"{_fmt(spec.dims)}; give it with --input-shape {spec.name}:{example}")
        static[spec.name] = tuple(dims)

    def get(i: int) -> dict[str, np.ndarray]:
        return random_feeds(((s.name, static[s.name], s.dtype) for s in specs), [seed, i],
                            where=f"{_DATA} {text}: ")

    get(0)
    return Dataset(f"random ({n} samples, seed {seed})", [f"random[{i}]" for i in range(n)], get)


def load_labels(source, count: int) -> np.ndarray:
    """Integer class labels ``[count]`` (or ``[count, rows]``) from a file or an array."""
    where = "--labels"
    if isinstance(source, (str, Path)):
        path = Path(source)
        where = f"--labels {path}"
        if not path.is_file():
            raise MmoptError(f"{where}: no such file")
        if path.suffix in (".npy", ".npz"):
            try:
                data = np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise MmoptError(f"{where}: not a plain numeric array file ({exc})") from exc
            except (OSError, EOFError) as exc:
                raise MmoptError(f"{where}: cannot read ({exc})") from exc
            if isinstance(data, np.lib.npyio.NpzFile):
                with data:
                    keys = data.files
                    if "labels" in keys:
                        key = "labels"
                    elif len(keys) == 1:
                        key = keys[0]
                    else:
                        raise MmoptError(f"{where}: the archive has {len(keys)} arrays; store one, "
                                         "or name it 'labels'")
                    labels = data[key]
            else:
                labels = data
        else:
            try:
                labels = np.loadtxt(path, dtype=np.float64, ndmin=1, delimiter=None)
            except ValueError as exc:
                raise MmoptError(f"{where}: expected one integer class index per line ({exc})") from exc
    else:
        labels = np.asarray(source)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise MmoptError(f"{where}: labels must be integer class indices")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise MmoptError(f"{where}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.ndim == 0 or labels.shape[0] != count:
        raise MmoptError(f"{where}: {labels.shape[0] if labels.ndim else 1} label(s) for {count} "
                         "sample(s); give one label per sample, in data order")
    return labels.astype(np.int64)
