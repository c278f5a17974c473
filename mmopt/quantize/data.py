"""Calibration and evaluation data: samples streamed one at a time, fitted to the model's inputs.

A source is one of:

``FILE.npz``
    One array per model input, keyed by input name, with a leading *sample* axis (an input
    ``[1, 3, 32, 32]`` takes ``[N, 3, 32, 32]`` or ``[N, 1, 3, 32, 32]``). An extra array named
    ``labels`` holds N integer class labels (used by ``--metric top1``).
``FILE.npy``
    The same for a single-input model, memory-mapped (never read whole).
``DIRECTORY``
    Images (``.png .jpg .jpeg .bmp .ppm .pgm .tif .tiff .webp``), read one at a time and turned into
    the input by a :class:`Preprocess` spec; when every image sits in a sub-directory, the sorted
    sub-directory names are the classes (ImageFolder layout) and give labels. Without images: one
    ``NAME.npy`` per input (leading sample axis), or one ``.npz``/``.npy`` file per sample in
    natural name order.
Python objects (API)
    a mapping ``{input: array with a sample axis}``, an array (single input), any iterable of
    per-sample feeds (dicts, or arrays for a single input; ``(feeds, label)`` pairs carry labels),
    or a pair ``(data, labels)``.

Files are never unpickled. Samples are yielded one by one, so calibration memory does not depend on
the number of samples; :func:`batches` concatenates samples along a symbolic leading (batch) dim.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import onnx

from mmopt import ir as mir
from mmopt.errors import MmoptError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: tuple
    dtype: np.dtype

    @property
    def batchable(self) -> bool:
        """A symbolic leading dim: samples can be stacked along it."""
        return bool(self.dims) and not isinstance(self.dims[0], int)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    return [InputSpec(n, tuple(d), np.dtype(t)) for n, (d, t) in mir.input_specs(model).items()]


# --------------------------------------------------------------------------------------------------
# image preprocessing


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input.

    Order: decode (RGB, or greyscale for a 1-channel input) -> ``resize`` -> centre ``crop`` ->
    float ``* scale`` -> ``(x - mean) / std`` per channel -> ``channel_order`` -> ``layout``.
    ``resize`` is an int (shorter side, aspect kept) or ``[H, W]``; without ``resize`` and ``crop``
    the image is resized to the input's H x W. ``layout`` None: NCHW unless the input's last dim
    is 1 or 3 and its second is not.
    """

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"
    layout: str | None = None

    @classmethod
    def from_toml(cls, path) -> "Preprocess":
        """Read a spec: top-level keys or a ``[preprocess]`` table with this class's field names."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise MmoptError(f"--preprocess {path}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise MmoptError(f"--preprocess {path}: not valid TOML ({exc})") from exc
        data = data.get("preprocess", data)
        return cls().updated(**data, where=f"--preprocess {path}")

    def updated(self, *, where: str = "preprocess", **values) -> "Preprocess":
        """A copy with ``values`` set (None values ignored), validated."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MmoptError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                             + ", ".join(sorted(known)))
        clean = {}
        for key, value in values.items():
            if value is None:
                continue
            try:
                if key == "resize":
                    value = int(value) if isinstance(value, (int, float, str)) else _pair(value)
                elif key == "crop":
                    value = _pair([value, value] if isinstance(value, (int, float)) else value)
                elif key in ("mean", "std"):
                    value = tuple(float(v) for v in (value if isinstance(value, (list, tuple))
                                                     else [value]))
                elif key == "scale":
                    value = float(value)
                elif key == "channel_order":
                    value = str(value).upper()
                    if value not in ("RGB", "BGR"):
                        raise ValueError("channel_order is RGB or BGR")
                elif key == "layout":
                    value = str(value).upper()
                    if value not in ("NCHW", "NHWC"):
                        raise ValueError("layout is NCHW or NHWC")
            except (TypeError, ValueError) as exc:
                raise MmoptError(f"{where}: bad {key} {values[key]!r} ({exc})") from exc
            clean[key] = value
        spec = replace(self, **clean)
        if any(s == 0 for s in spec.std):
            raise MmoptError(f"{where}: std must not be 0")
        return spec

    def apply(self, path: Path, spec: InputSpec) -> np.ndarray:
        """The image at ``path`` as one sample of input ``spec`` (with its leading batch axis)."""
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MmoptError("reading images needs Pillow: pip install pillow") from exc
        dims = spec.dims
        if len(dims) != 4:
            raise MmoptError(f"images need a 4-D input; {spec.name} has rank {len(dims)}")
        layout = self.layout or ("NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW")
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        if c not in (1, 3):
            raise MmoptError(f"input {spec.name} {_fmt(dims)} as {layout} has {c} channels; images "
                             "give 1 or 3 (set layout in the preprocessing spec)")
        try:
            with Image.open(path) as image:
                image = image.convert("L" if c == 1 else "RGB")
                if self.resize is None and self.crop is None:
                    if not (isinstance(h, int) and isinstance(w, int)):
                        raise MmoptError(f"input {spec.name} has dynamic H/W; give resize and crop")
                    image = image.resize((w, h), Image.BILINEAR)
                elif self.resize is not None:
                    if isinstance(self.resize, int):
                        ratio = self.resize / min(image.size)
                        size = tuple(max(1, round(d * ratio)) for d in image.size)
                    else:
                        size = (self.resize[1], self.resize[0])
                    image = image.resize(size, Image.BILINEAR)
                if self.crop is not None:
                    ch, cw = self.crop
                    left, top = (image.size[0] - cw) // 2, (image.size[1] - ch) // 2
                    if left < 0 or top < 0:
                        raise MmoptError(f"{path}: image {image.size[0]}x{image.size[1]} is smaller "
                                         f"than crop {ch}x{cw}")
                    image = image.crop((left, top, left + cw, top + ch))
                array = np.asarray(image, dtype=np.float32)
        except OSError as exc:
            raise MmoptError(f"{path}: cannot read image ({exc})") from exc
        if array.ndim == 2:
            array = array[:, :, None]
        array = array * np.float32(self.scale)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.channel_order == "BGR":
            array = array[:, :, ::-1]
        if layout == "NCHW":
            array = array.transpose(2, 0, 1)
        return fit_input(np.ascontiguousarray(array, dtype=np.float32), spec, str(path))


def _pair(value) -> tuple[int, int]:
    items = [int(v) for v in value]
    if len(items) != 2 or min(items) <= 0:
        raise ValueError("expected two positive integers [H, W]")
    return items[0], items[1]


# --------------------------------------------------------------------------------------------------
# sources


@dataclass
class DataSource:
    """Samples of ``(feeds, label or None)``; ``size`` is the count when known."""

    description: str
    size: int | None
    _iterate: object = field(repr=False)
    has_labels: bool = False

    def samples(self, limit: int | None = None
                ) -> Iterator[tuple[dict[str, np.ndarray], int | None]]:
        for i, item in enumerate(self._iterate()):
            if limit is not None and i >= limit:
                return
            yield item

    def count(self, limit: int | None = None) -> int | None:
        if self.size is None:
            return limit
        return self.size if limit is None else min(self.size, limit)


def fit_input(array, spec: InputSpec, where: str) -> np.ndarray:
    """``array`` as one sample for ``spec``: a missing leading batch axis is added; same-kind dtypes
    are converted; a shape that cannot fit is an error naming ``where``."""
    array = np.asarray(array)
    if array.dtype.kind == "O":
        raise MmoptError(f"{where}: input {spec.name} is an object array; save numeric arrays")
    if array.dtype != spec.dtype:
        if (array.dtype.kind == "f") != (spec.dtype.kind == "f") or array.dtype.kind not in "fiub":
            raise MmoptError(f"{where}: input {spec.name} has dtype {array.dtype}, the model "
                             f"expects {spec.dtype}")
        array = array.astype(spec.dtype)
    dims = spec.dims
    if dims:
        if array.ndim == len(dims) - 1:
            array = array[np.newaxis]
        if array.ndim != len(dims) or any(isinstance(d, int) and d != g
                                          for d, g in zip(dims, array.shape)):
            raise MmoptError(f"{where}: input {spec.name} has shape {list(array.shape)} per "
                             f"sample, the model expects {_fmt(dims)}")
    return array


def _fmt(dims) -> str:
    return "[" + ",".join("?" if not isinstance(d, int) else str(d) for d in dims) + "]"


def open_data(source, inputs: Sequence[InputSpec], *, preprocess: Preprocess | None = None,
              what: str = "--calib") -> DataSource:
    """The samples of ``source`` (see the module docs), fitted to ``inputs``."""
    inputs = list(inputs)
    if isinstance(source, DataSource):
        return source
    if isinstance(source, tuple) and len(source) == 2 and not isinstance(source[0], (str, int)):
        data, labels = source
        inner = open_data(data, inputs, preprocess=preprocess, what=what)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if inner.size is not None and inner.size != labels.size:
            raise MmoptError(f"{what}: {labels.size} labels for {inner.size} samples")

        def with_labels():
            for (feeds, _), label in zip(inner.samples(), labels):
                yield feeds, int(label)

        return DataSource(inner.description, inner.size, with_labels, True)
    if isinstance(source, Mapping):
        return _from_arrays(dict(source), inputs, "<arrays>", what)
    if isinstance(source, np.ndarray):
        spec = _single(inputs, what, "an array")
        return _from_arrays({spec.name: source}, inputs, "<array>", what)
    if isinstance(source, (str, Path)):
        return _from_path(Path(source), inputs, preprocess, what)
    if isinstance(source, Iterable):
        return _from_iterable(source, inputs, what)
    raise MmoptError(f"{what}: cannot read calibration data from a {type(source).__name__}")


def _single(inputs, what, kind) -> InputSpec:
    if len(inputs) != 1:
        raise MmoptError(f"{what}: {kind} holds one input, the model has {len(inputs)} ("
                         + ", ".join(s.name for s in inputs) + "); key the data by input name")
    return inputs[0]


def _labels_from(arrays: dict, inputs) -> np.ndarray | None:
    names = {s.name for s in inputs}
    for key in LABEL_KEYS:
        if key in arrays and key not in names:
            return np.asarray(arrays[key]).reshape(-1).astype(np.int64)
    return None


def _from_arrays(arrays: dict, inputs, where: str, what: str) -> DataSource:
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        raise MmoptError(f"{what} {where}: no data for input(s) {', '.join(missing)} (it has "
                         f"{', '.join(map(str, arrays)) or 'nothing'}); key arrays by input name")
    counts = {s.name: np.shape(arrays[s.name])[0] if np.ndim(arrays[s.name]) else 0 for s in inputs}
    if len(set(counts.values())) > 1:
        raise MmoptError(f"{what} {where}: inputs have different sample counts ("
                         + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise MmoptError(f"{what} {where}: no samples (the leading sample axis is empty)")
    labels = _labels_from(arrays, inputs)
    if labels is not None and labels.size != n:
        raise MmoptError(f"{what} {where}: {labels.size} labels for {n} samples")
    first = {s.name: fit_input(arrays[s.name][0], s, f"{what} {where} sample 0") for s in inputs}
    del first

    def iterate():
        for i in range(n):
            feeds = {s.name: fit_input(arrays[s.name][i], s, f"{what} {where} sample {i}")
                     for s in inputs}
            yield feeds, (int(labels[i]) if labels is not None else None)

    return DataSource(f"{where} ({n} samples)", n, iterate, labels is not None)


def _from_iterable(items: Iterable, inputs, what: str) -> DataSource:
    size = len(items) if hasattr(items, "__len__") else None
    state = {"used": False}

    def iterate():
        if state["used"] and iter(items) is items:
            raise MmoptError(f"{what}: the iterable was already consumed (pass a list, or a "
                             "re-iterable object, when the data is read more than once)")
        state["used"] = True
        for i, item in enumerate(items):
            label = None
            if isinstance(item, tuple) and len(item) == 2:
                item, label = item
                label = None if label is None else int(label)
            if isinstance(item, Mapping):
                feeds = {s.name: fit_input(item[s.name], s, f"{what} sample {i}") for s in inputs
                         if s.name in item}
                if len(feeds) != len(inputs):
                    missing = [s.name for s in inputs if s.name not in item]
                    raise MmoptError(f"{what} sample {i}: no data for input(s) "
                                     f"{', '.join(missing)}")
            else:
                spec = _single(inputs, what, "a bare array")
                feeds = {spec.name: fit_input(item, spec, f"{what} sample {i}")}
            yield feeds, label

    return DataSource(f"<{type(items).__name__}>", size, iterate)


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _open_npy(path: Path, what: str, mmap: bool = False):
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        raise MmoptError(f"{what} {path}: not a plain .npy/.npz array file ({exc}); mmopt never "
                         "loads pickled objects") from exc
    except (OSError, EOFError) as exc:
        raise MmoptError(f"{what} {path}: cannot read ({exc})") from exc


def _from_path(path: Path, inputs, preprocess: Preprocess | None, what: str) -> DataSource:
    if not path.exists():
        raise MmoptError(f"{what} {path}: no such file or directory (give a .npz/.npy file or a "
                         "directory of images or arrays)")
    if path.is_dir():
        images = sorted((p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                         and p.is_file()), key=_natural_key)
        if images:
            return _from_images(path, images, inputs, preprocess or Preprocess(), what)
        return _from_array_dir(path, inputs, what)
    if path.suffix == ".npz":
        archive = _open_npy(path, what)
        arrays = {k: archive[k] for k in archive.files}  # npz members cannot be memory-mapped
        return _from_arrays(arrays, inputs, str(path), what)
    if path.suffix == ".npy":
        spec = _single(inputs, what, "a .npy file")
        return _from_arrays({spec.name: _open_npy(path, what, mmap=True)}, inputs, str(path), what)
    raise MmoptError(f"{what} {path}: expected a .npz or .npy file or a directory")


def _from_array_dir(path: Path, inputs, what: str) -> DataSource:
    files = sorted((p for p in path.iterdir() if p.suffix in (".npy", ".npz") and p.is_file()),
                   key=_natural_key)
    if not files:
        raise MmoptError(f"{what} {path}: the directory has no images and no .npy/.npz files")
    names = {s.name for s in inputs}
    per_input = {p.stem: p for p in files if p.suffix == ".npy"}
    if names <= set(per_input) and len(files) == len(names):
        return _from_arrays({n: _open_npy(per_input[n], what, mmap=True) for n in names}, inputs,
                            str(path), what)
    if len(inputs) != 1 and any(p.suffix == ".npy" for p in files):
        raise MmoptError(f"{what} {path}: .npy sample files hold one input, the model has "
                         f"{len(inputs)}; store each sample as an .npz keyed by input name")

    def iterate():
        for file in files:
            data = _open_npy(file, what)
            if file.suffix == ".npz":
                with data:
                    arrays = {k: data[k] for k in data.files}
                missing = [s.name for s in inputs if s.name not in arrays]
                if missing:
                    raise MmoptError(f"{what} {file}: no array for input(s) {', '.join(missing)}")
                label = _labels_from(arrays, inputs)
                yield ({s.name: fit_input(arrays[s.name], s, f"{what} {file}") for s in inputs},
                       int(label[0]) if label is not None and label.size else None)
            else:
                yield {inputs[0].name: fit_input(data, inputs[0], f"{what} {file}")}, None

    return DataSource(f"{path} ({len(files)} files)", len(files), iterate)


def _from_images(root: Path, images: list[Path], inputs, preprocess: Preprocess,
                 what: str) -> DataSource:
    spec = _single(inputs, what, "an image directory")
    classes = sorted({p.relative_to(root).parts[0] for p in images})
    labelled = all(len(p.relative_to(root).parts) == 2 for p in images)
    index = {c: i for i, c in enumerate(classes)}
    preprocess.apply(images[0], spec)  # configuration errors before any model runs

    def iterate():
        for image in images:
            label = index[image.relative_to(root).parts[0]] if labelled else None
            yield {spec.name: preprocess.apply(image, spec)}, label

    desc = f"{root} ({len(images)} images" + (f", {len(classes)} classes)" if labelled else ")")
    return DataSource(desc, len(images), iterate, labelled)


# --------------------------------------------------------------------------------------------------
# batching


def batches(source: DataSource, inputs: Sequence[InputSpec], batch_size: int = 1, *,
            limit: int | None = None) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """``(feeds, n)`` with up to ``batch_size`` samples stacked along a symbolic leading dim.

    When any input's leading dim is fixed, every batch is one sample.
    """
    if not all(s.batchable for s in inputs):
        batch_size = 1
    pending: list[dict[str, np.ndarray]] = []
    for feeds, _label in source.samples(limit):
        if batch_size == 1:
            yield feeds, 1
            continue
        pending.append(feeds)
        if len(pending) == batch_size:
            yield _stack(pending), len(pending)
            pending = []
    if pending:
        yield _stack(pending), len(pending)


def _stack(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in samples], axis=0) for k in samples[0]}


def materialize(source: DataSource, limit: int | None = None
                ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """All samples in memory (for evaluation sets, which are read many times) and their labels."""
    feeds, labels = [], []
    for sample, label in source.samples(limit):
        feeds.append(sample)
        labels.append(label)
    if not feeds:
        raise MmoptError(f"{source.description}: no samples")
    have = [label is not None for label in labels]
    if all(have):
        return feeds, np.asarray(labels, np.int64)
    return feeds, None
