"""Loading, validating, normalizing and saving ONNX models.

The graph-level IR of mmopt is ONNX: a ``onnx.ModelProto`` between stages, an ``onnx_ir.Model`` inside
passes. Everything here takes and returns ``ModelProto`` so that onnxruntime, onnxsim and TVM's
importer can consume the result of any step directly.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from mmopt.errors import ModelLoadError, MmoptError, summarize
from mmopt.ir.validate import validate

logger = logging.getLogger(__name__)

#: The opset every model is brought to before any pass runs.
MIN_OPSET = 17
#: Protobuf cannot serialize a message past 2 GiB; above this, tensors go to external data.
PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_THRESHOLD = 1_800_000_000

def load(source, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from a path, raw bytes or a ``ModelProto`` (returned as is).

    External-data tensors next to the file are loaded. Raises :class:`ModelLoadError` with a one-line
    reason for a missing file, a directory, a file that is not ONNX, or a truncated/corrupt protobuf;
    with ``check`` (the default) also for a model the front door refuses (:mod:`mmopt.ir.validate`:
    malformed graph, ``onnx.checker``, what onnxruntime refuses).
    """
    data = None
    if isinstance(source, onnx.ModelProto):
        model = source
        where = "<ModelProto>"
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        model = _parse(data, "<bytes>")
        where = "<bytes>"
    else:
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from exc
        model = _parse(data, where)
        if _uses_external_data(model):
            data = None  # the model is more than the file now
            try:
                onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
            except (OSError, ValueError, onnx.checker.ValidationError) as exc:
                raise ModelLoadError(
                    f"{path}: external tensor data missing or unreadable ({summarize(exc)}); keep the data "
                    "file(s) next to the model"
                ) from exc
    if check:
        validate(model, where, serialized=data)
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: file is empty, expected an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelLoadError(
            f"{where}: not a valid ONNX file (protobuf parse failed: {summarize(exc)}); "
            "the file may be truncated or not an ONNX model"
        ) from exc
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{where}: not an ONNX model (no ir_version or graph found)")
    return model



def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(model)  # noqa: SLF001
    )


def save(model: onnx.ModelProto, path, *, external_data: bool | None = None) -> Path:
    """Save ``model`` to ``path``. Models past the protobuf limit get one ``<name>.data`` file beside it.

    ``external_data=None`` decides by size; True/False forces it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() > _EXTERNAL_THRESHOLD if _fits(model) else True
    if external_data:
        model = onnx.ModelProto.FromString(model.SerializeToString()) if _fits(model) else model
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def _fits(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() < PROTOBUF_LIMIT
    except Exception:  # noqa: BLE001 - protobuf raises plain errors past 2 GiB on some builds
        return False


def sha256_of(source) -> str:
    """sha256 of a model file or directory (streamed) or of a ModelProto's serialization."""
    h = hashlib.sha256()
    if isinstance(source, onnx.ModelProto):
        h.update(source.SerializeToString())
    elif isinstance(source, (bytes, bytearray)):
        h.update(source)
    else:
        # a file, or a directory model (TensorFlow SavedModel): its files' relative paths and bytes
        source = Path(source)
        is_dir = source.is_dir()
        files = sorted(p for p in source.rglob("*") if p.is_file()) if is_dir else [source]
        for file in files:
            if is_dir:
                h.update(file.relative_to(source).as_posix().encode() + b"\0")
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# opset and shapes


def opset_of(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 0


def normalize_opset(model: onnx.ModelProto, target: int = MIN_OPSET) -> onnx.ModelProto:
    """Bring the default-domain opset up to ``target`` (never down).

    If onnx's version converter cannot convert the model, warn and return it unchanged: TVM's importer
    and onnxruntime both accept older opsets, so this is a normalization, not a requirement.
    """
    current = opset_of(model)
    if current >= target or not _fits(model):
        return model
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/ValueError/C++ errors
        logger.warning("opset %d -> %d conversion failed (%s); keeping opset %d", current, target,
                       summarize(exc), current)
        return model
    logger.info("converted opset %d -> %d", current, target)
    return converted


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference (with data propagation); on failure return the model unchanged."""
    if not _fits(model):
        return model
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        logger.debug("shape inference failed: %s", summarize(exc))
        return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def dims_of(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dims of a tensor value: int for fixed, str for symbolic, None for unknown (or -1 / 0)."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(d.dim_value)
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def dtype_of(value: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def is_static(dims: Sequence) -> bool:
    return all(isinstance(d, int) for d in dims)


def parse_shape_option(text: str) -> tuple[str, tuple[int | str, ...]]:
    """Parse ``name:1,3,224,224`` (also ``name=1x3x224x224``) into ``(name, shape)``.

    A dim may be a name instead of a number (``x:1,3,48,width``): the axis stays symbolic under that
    name, and ``--dim width=MIN..MAX`` gives its range (:mod:`mmopt.ir.dims`)."""
    from mmopt.ir.dims import valid_dim_name

    sep = ":" if ":" in text else "=" if "=" in text else None
    if sep is None:
        raise MmoptError(f"--input-shape {text!r}: expected NAME:D1,D2,... e.g. x:1,3,224,224")
    name, _, dims = text.rpartition(sep)
    parts = [d.strip() for d in dims.split(",") if d.strip()]
    if len(parts) == 1 and re.fullmatch(r"\d+(x\d+)+", parts[0]):
        parts = parts[0].split("x")  # 1x3x224x224
    shape: list[int | str] = []
    for d in parts:
        if d.lstrip("-").isdigit():
            shape.append(int(d))
        elif valid_dim_name(d):
            shape.append(d)
        else:
            raise MmoptError(f"--input-shape {text!r}: dims must be positive integers or dim names, "
                             f"e.g. {name}:1,3,224,224 or {name}:1,3,height,width")
    if not name or not shape or any(isinstance(d, int) and d <= 0 for d in shape):
        raise MmoptError(f"--input-shape {text!r}: expected NAME:D1,D2,... with positive dims")
    return name, tuple(shape)


def fix_input_shapes(
    model: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int | str]] | None = None,
    *,
    default_batch: int | None = 1,
    dims: Mapping | None = None,
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose graph inputs have static shapes, except the dims ``dims``
    keeps symbolic.

    ``shapes`` gives shapes by input name; a dim given as a name makes that axis symbolic under the
    name. ``dims`` (``{name: DimRange}``, :mod:`mmopt.ir.dims`): symbolic dims that stay symbolic
    (every one needs a range). A symbolic *leading* dim of an input not in ``shapes`` and not in
    ``dims`` is set to ``default_batch`` (when given); any other unknown dim is an error that names
    the input and shows the ``--input-shape`` and ``--dim`` options to use. Intermediate shape
    annotations are dropped and inferred again so they agree with the new input shapes.
    """
    from mmopt.ir.dims import format_dims

    shapes = dict(shapes or {})
    dims = dict(dims or {})
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise MmoptError(
            f"--input-shape names unknown input(s) {', '.join(unknown)}; the model's inputs are: "
            + ", ".join(names)
        )
    model = onnx.ModelProto.FromString(model.SerializeToString()) if _fits(model) else model
    changed = False
    used: set[str] = set()
    for value in graph_inputs(model):
        old_dims = dims_of(value)
        if value.name in shapes:
            new = list(shapes[value.name])
            if old_dims and len(old_dims) != len(new):
                raise MmoptError(
                    f"--input-shape {value.name}: rank {len(new)} given, but the model's input "
                    f"{value.name} has rank {len(old_dims)} ({_fmt_dims(old_dims)})"
                )
            for i, (old, want) in enumerate(zip(old_dims, new)):
                if isinstance(old, int) and isinstance(want, int) and old != want:
                    raise MmoptError(
                        f"--input-shape {value.name}: dim {i} is fixed to {old} in the model, got {want}"
                    )
        else:
            new = list(old_dims)
            if (new and not isinstance(new[0], int) and default_batch is not None
                    and new[0] not in dims):
                new[0] = default_batch
        symbolic = [d for d in new if not isinstance(d, int)]
        unranged = [d for d in symbolic if d is None or d not in dims]
        if unranged or not value.type.tensor_type.HasField("shape"):
            hint = ""
            if symbolic and any(d is None or not _is_name(d) for d in unranged):
                hint = (f"; to keep a dim the model leaves unnamed dynamic, name it: --input-shape "
                        f"{value.name}:{_example_named(new)}")
            named = [d for d in unranged if d is not None and _is_name(d)]
            raise MmoptError(
                f"input {value.name} has dynamic shape ({format_dims(old_dims)}); give it with "
                f"--input-shape {value.name}:{_example_dims(new)}"
                + (f", or keep it dynamic with --dim {named[0]}=MIN..MAX" if named else "")
                + hint
            )
        used.update(symbolic)
        if new != old_dims:
            changed = True
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in new:
                if isinstance(d, int):
                    shape.dim.add().dim_value = int(d)
                else:
                    shape.dim.add().dim_param = str(d)
    unused = [n for n in dims if n not in used]
    if unused:
        found = sorted({d for v in graph_inputs(model) for d in dims_of(v) if isinstance(d, str)})
        raise MmoptError(
            f"--dim {unused[0]}: no input has a dim named {unused[0]}"
            + (f" (the model's symbolic dims: {', '.join(found)})" if found else "")
            + "; name an axis with --input-shape, e.g. x:1,3,height,width")
    if changed:
        del model.graph.value_info[:]
        ranks = {}
        for out in model.graph.output:
            # Output shapes are recomputed from the new input shapes.
            if out.type.tensor_type.HasField("shape"):
                ranks[out.name] = len(out.type.tensor_type.shape.dim)
                out.type.tensor_type.ClearField("shape")
        model = infer_shapes(model)
        for out in model.graph.output:
            # What inference cannot tell keeps its declared rank, with unknown dims: a main-graph
            # output without a shape field is invalid ONNX (onnx.checker, and onnxsim with it).
            if out.name in ranks and not out.type.tensor_type.HasField("shape"):
                shape = out.type.tensor_type.shape
                shape.SetInParent()  # present even for a scalar (rank 0)
                for _ in range(ranks[out.name]):
                    shape.dim.add()
    return model


def _is_name(d) -> bool:
    from mmopt.ir.dims import valid_dim_name

    return isinstance(d, str) and d != "?" and valid_dim_name(d)


def _example_named(dims: Sequence) -> str:
    out = []
    for i, d in enumerate(dims):
        out.append(str(d) if isinstance(d, int) else d if _is_name(d) else
                   ("batch" if i == 0 else f"d{i}"))
    return ",".join(out)


def _fmt_dims(dims: Sequence) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def _example_dims(dims: Sequence) -> str:
    return ",".join(str(d) if isinstance(d, int) else ("1" if i == 0 else "N") for i, d in enumerate(dims))


def input_specs(model: onnx.ModelProto) -> dict[str, tuple[tuple, np.dtype]]:
    """``{name: (dims, dtype)}`` of the real graph inputs, in graph order."""
    return {v.name: (tuple(dims_of(v)), dtype_of(v)) for v in graph_inputs(model)}


def prepare(
    source,
    input_shapes: Mapping[str, Sequence[int | str]] | None = None,
    *,
    opset: int = MIN_OPSET,
    dims: Mapping | None = None,
) -> onnx.ModelProto:
    """Load + normalize opset + fix input shapes + infer shapes: the start of every pipeline.
    ``dims``: symbolic dims that stay symbolic (see :func:`fix_input_shapes`)."""
    model = load(source)
    model = normalize_opset(model, opset)
    model = fix_input_shapes(model, input_shapes, dims=dims)
    return infer_shapes(model)


__all__ = [
    "MIN_OPSET",
    "dims_of",
    "dtype_of",
    "fix_input_shapes",
    "graph_inputs",
    "infer_shapes",
    "input_specs",
    "is_static",
    "load",
    "normalize_opset",
    "opset_of",
    "parse_shape_option",
    "prepare",
    "save",
    "sha256_of",
]
