"""Seeded random inputs: what mmopt feeds a model or an artifact when the user gives no data.

Verification (``compile``, ``import``, tuning's end-to-end check), ``run`` without ``--input``,
``bench``, ``profile`` and ``check --data random:N`` all draw their inputs here, so one seed means
the same tensors everywhere. Per input, in order, from one ``numpy.random.default_rng(seed)``:

* floats: uniform in [0, 1) (image-like), drawn in float32 and cast to the input's type;
* integers: uniform in [0, 4) (small enough to be valid indices and sizes);
* booleans: fair coin flips.

Verification results depend on these values: changing them changes every recorded
``verification`` of an artifact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mmopt.errors import MmoptError


def random_array(rng: np.random.Generator, dims: Sequence[int], dtype) -> np.ndarray:
    """One tensor of ``dims`` and ``dtype`` drawn from ``rng`` (see the module docs); a
    :class:`TypeError` for a dtype that has no random data (strings, objects)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.random(dims, dtype=np.float32).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 4, size=dims).astype(dtype)
    if dtype.kind == "b":
        return rng.random(dims) < 0.5
    raise TypeError(f"cannot generate random data of dtype {dtype}")


def random_feeds(specs: Iterable, seed=0, *, where: str = "") -> dict[str, np.ndarray]:
    """``{name: array}`` for ``specs``, in their order, from ``numpy.random.default_rng(seed)``.

    ``specs``: ``(name, dims, dtype)`` triples with static dims, or an artifact's input specs
    (:class:`mmopt.runtime.artifact.TensorSpec`: ``name``, ``shape``, ``dtype``). ``seed``: anything
    ``default_rng`` takes (an int, or ``[seed, sample]`` for one sample of a data set). ``where``
    starts the :class:`MmoptError` for an input of a dtype with no random data.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        name, dims, dtype = spec if isinstance(spec, tuple) else (spec.name, spec.shape, spec.dtype)
        if not all(isinstance(d, (int, np.integer)) for d in dims):
            raise MmoptError(f"{where}input {name} has symbolic dims {list(dims)} (a dynamic "
                             f"artifact): give its shape with --input-shape {name}:D1,D2,...")
        try:
            feeds[name] = random_array(rng, dims, dtype)
        except TypeError as exc:
            raise MmoptError(f"{where}input {name}: {exc}") from None
        except (MemoryError, ValueError) as exc:
            # fuzzing (mlp_gelu/wrong_dims/726): a static dim of 2^40 compiled, then its random
            # verification input (256 TiB) ended in an internal error
            size = int(np.prod(dims, dtype=np.float64) * np.dtype(dtype).itemsize)
            raise MmoptError(f"{where}input {name}: no memory for random data of shape "
                             f"{list(dims)} ({_bytes(size)}; {exc.__class__.__name__}); check the "
                             "input's shape or set it with --input-shape") from None
    return feeds


def with_shapes(specs: Iterable, shapes: Mapping[str, Sequence[int]] | None = None,
                *, option: str = "--input-shape") -> list[tuple]:
    """``(name, dims, dtype)`` triples of an artifact's input ``specs`` with the shapes
    ``shapes`` gives (``{input: shape}``: a dynamic artifact's inputs have symbolic dims, named by
    strings). An input left symbolic is a one-line :class:`MmoptError` naming ``option``; the
    sizes are checked against the artifact's ranges when it is called."""
    shapes = dict(shapes or {})
    out = []
    for spec in specs:
        dims = tuple(shapes.get(spec.name, spec.shape))
        if not all(isinstance(d, int) for d in dims):
            raise MmoptError(f"input {spec.name} has symbolic dims {list(spec.shape)} (a dynamic "
                             f"artifact): give its shape with {option} {spec.name}:D1,D2,...")
        out.append((spec.name, dims, spec.dtype))
    return out


def _bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    return ""


def random_inputs(model, seed: int = 0, sizes: Mapping[str, int] | None = None
                  ) -> dict[str, np.ndarray]:
    """Seeded random inputs for an ONNX model with static input shapes (its real graph inputs, in
    graph order), or with symbolic dims whose sizes ``sizes`` gives (``{dim name: size}``: a
    dynamic artifact is verified at several such size sets)."""
    from mmopt.ir.model import _fmt_dims, input_specs, is_static

    sizes = dict(sizes or {})
    specs = {name: (tuple(sizes.get(d, d) if isinstance(d, str) else d for d in dims), dtype)
             for name, (dims, dtype) in input_specs(model).items()}
    for name, (dims, _dtype) in specs.items():
        if not is_static(dims):
            raise MmoptError(f"input {name} has dynamic shape {_fmt_dims(dims)}; fix it first")
    return random_feeds(((name, dims, dtype) for name, (dims, dtype) in specs.items()), seed)
