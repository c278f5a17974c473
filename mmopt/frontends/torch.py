"""PyTorch frontend: ``.pt2`` exported programs, TorchScript archives and live modules -> ONNX.

* ``.pt2`` (``torch.export.save``): loaded with ``torch.export.load`` and converted by PyTorch's
  dynamo ONNX exporter (``torch.onnx.export(exported_program, dynamo=True)``). Dynamic dims the
  program was exported with stay symbolic.
* TorchScript (``torch.jit.save``): loaded with ``torch.jit.load`` and converted by the
  TorchScript-based exporter (``dynamo=False``). A traced archive remembers its input shapes and
  dtypes; otherwise give them with ``input_shapes``.
* A live module: :func:`from_torch` runs ``torch.export.export`` and then the dynamo exporter.

**Never unpickle.** ``torch.save`` files (a state_dict or a whole pickled module, zip or legacy
format) are refused with a message saying how to export instead: loading a pickle runs whatever code
it names. The two archive formats above are read by PyTorch's restricted loaders: TorchScript's own
unpickler (TorchScript types only), and for ``.pt2`` ``torch.load(weights_only=True)``, which this
module enforces (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``) because ``torch.export.load`` would otherwise fall
back to a full unpickle for some payloads; archives holding pickled opaque objects are refused.

``torch`` is imported lazily: detection (:func:`sniff`) works without it installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from mmopt.frontends._native import native_output_silenced as _native_output_silenced
from mmopt.errors import ModelLoadError, MmoptError, UnsupportedModelError, summarize

logger = logging.getLogger(__name__)

PT2, TORCHSCRIPT, PICKLE = "pt2", "torchscript", "pickle"
#: opset asked of both exporters (18 is the lowest the dynamo exporter writes natively)
DEFAULT_OPSET = 18

_EXPORT_HINT = ("export the model instead: torch.export.save(torch.export.export(model.eval(), "
                "example_inputs), 'model.pt2') or torch.jit.save(torch.jit.trace(model.eval(), "
                "example_inputs), 'model.pt'), or call mmopt.from_torch(model, example_inputs)")


# --------------------------------------------------------------------------------------------------
# detection (no torch import)


def sniff(path, head: bytes | None = None) -> str | None:
    """``"pt2"``, ``"torchscript"``, ``"pickle"`` (a torch.save file or any Python pickle) or None."""
    path = Path(path)
    if head is None:
        with open(path, "rb") as f:
            head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                formats = [n for n in names if n.rsplit("/", 1)[-1] == "archive_format"]
                if any(archive.read(n).strip() == b"pt2" for n in formats):
                    return PT2
        except (zipfile.BadZipFile, OSError, KeyError):
            return None
        if any(n.rsplit("/", 1)[-1] == "serialized_exported_program.json" for n in names):
            return PT2  # the torch.export.save layout of torch < 2.6
        has_pickle = any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names)
        if has_pickle and any("/code/" in f"/{n}" for n in names):
            return TORCHSCRIPT
        if has_pickle:
            return PICKLE
        return None
    # pickle protocol 2-5 starts with PROTO; torch.save's legacy format is a pickle too
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PICKLE
    return None


# --------------------------------------------------------------------------------------------------
# helpers


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise MmoptError("the torch frontend needs PyTorch, which is not installed; install it "
                         "with: pip install 'mmopt[torch]'") from exc
    return torch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' progress prints, warnings and log lines off the user's terminal."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                              "onnxscript", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` inside the block use the restricted (weights-only) unpickler."""
    from mmopt._environ import patched_environ

    with patched_environ({"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1",
                          "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": None}):
        yield


_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'")
_UNSUPPORTED_TS = re.compile(r"Exporting the operator '([^']+)' to ONNX opset version (\d+) is not "
                             r"supported")
_UNKNOWN_NAMESPACE = re.compile(r"unrecognized namespace (\w+::\w+)")


def _exporter_reason(exc: BaseException) -> str:
    """One line from an exporter failure, naming the operator when the exporter says which."""
    text = str(exc)
    if m := _NO_FUNCTION.search(text):
        return f"operator {m.group(1)}.{m.group(2)} has no ONNX conversion"
    if m := _UNSUPPORTED_TS.search(text):
        return f"operator {m.group(1)} has no ONNX conversion at opset {m.group(2)}"
    if m := _UNKNOWN_NAMESPACE.search(text):
        return f"operator {m.group(1)} has no ONNX conversion (a custom operator)"
    summary = text.split("## Exception summary", 1)
    if len(summary) == 2:
        lines = [ln.strip() for ln in summary[1].splitlines() if ln.strip() and ln.strip() != "⬆️"]
        if lines:
            return lines[0][:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0].split(" [Caused by", 1)[0].strip()[:300]


def _rename_dims(model: onnx.ModelProto, renames: Mapping[str, str]) -> None:
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _name_batch_dim(model: onnx.ModelProto) -> None:
    """Call the symbolic leading dim of the inputs ``batch`` (the exporter names it ``s0``...)."""
    renames = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param") and dims[0].dim_param:
            renames.setdefault(dims[0].dim_param, "batch")
    if renames:
        _rename_dims(model, renames)


def _flatten_outputs(value) -> list:
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten_outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten_outputs(v)]
    raise UnsupportedModelError(f"the model returns a {type(value).__name__}; only tensors and "
                                "tuples/lists/dicts of tensors can be exported")


# --------------------------------------------------------------------------------------------------
# exported programs


def _export_program(ep, where: str, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    torch = _torch()
    try:
        with _quiet():
            program = torch.onnx.export(ep, (), dynamo=True, verbose=False, opset_version=opset,
                                        optimize=True)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        raise UnsupportedModelError(f"{where}: PyTorch's ONNX exporter cannot convert the "
                                    f"program: {_exporter_reason(exc)}") from exc
    model = program.model_proto
    _name_batch_dim(model)
    return model


def from_torch(module, example_inputs, dynamic_batch: bool = False, *,
               opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export a live module with ``torch.export`` and convert it to ONNX.

    ``dynamic_batch=True`` marks dim 0 of every tensor input dynamic (an example batch of 1 is
    repeated to 2 for tracing, since torch.export specializes a size-1 dim).
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise MmoptError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    module = module.eval()
    dynamic_shapes = None
    if dynamic_batch:
        grown = []
        for x in example_inputs:
            if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1:
                x = x.expand(2, *x.shape[1:]).clone()
            grown.append(x)
        example_inputs = tuple(grown)
        dynamic_shapes = tuple({0: torch.export.Dim.DYNAMIC}
                               if isinstance(x, torch.Tensor) and x.dim() > 0 else None
                               for x in example_inputs)
    try:
        with _quiet():
            ep = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # noqa: BLE001
        what = "with a dynamic batch dim " if dynamic_batch else ""
        raise UnsupportedModelError(f"torch.export cannot capture the module {what}"
                                    f"({type(module).__name__}): {summarize(exc)[:300]}") from exc
    return _export_program(ep, f"<{type(module).__name__}>", opset)


_OPAQUE_PREFIX = "opaque_obj_"


def _check_pt2_archive(path: Path) -> None:
    """Refuse archives whose constants are arbitrary pickled Python objects."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith("_constants_config.json"):
                continue
            try:
                config = json.loads(archive.read(name)).get("config", {})
            except (ValueError, AttributeError):
                continue
            for fqn, meta in config.items():
                if str(meta.get("path_name", "")).startswith(_OPAQUE_PREFIX):
                    raise UnsupportedModelError(
                        f"{path}: constant {fqn} is a pickled Python object; mmopt does not "
                        "unpickle files")


def load_exported_program(path):
    """``torch.export.load`` with only restricted (weights-only) unpickling."""
    torch = _torch()
    path = Path(path)
    _check_pt2_archive(path)
    try:
        with _quiet(), _weights_only_loads():
            return torch.export.load(str(path))
    except MmoptError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load the exported program safely "
                             f"({summarize(exc)[:300]})") from exc


# --------------------------------------------------------------------------------------------------
# TorchScript

_SCALAR_TYPES = {"Float": "float32", "Double": "float64", "Half": "float16", "BFloat16": "bfloat16",
                 "Long": "int64", "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8",
                 "Bool": "bool"}


def load_torchscript(path):
    torch = _torch()
    try:
        with _quiet():
            try:  # a traced archive can restore its example input shapes
                module = torch.jit.load(str(path), map_location="cpu", _restore_shapes=True)
            except Exception:  # noqa: BLE001 - scripted archives have no stored inputs
                module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load the TorchScript archive "
                             f"({summarize(exc)[:300]})") from exc
    return module.eval()


def _torchscript_inputs(module, path: Path, input_shapes: Mapping[str, Sequence[int]] | None):
    """Names and example tensors for a TorchScript module's ``forward``."""
    torch = _torch()
    args = list(module.forward.schema.arguments)[1:]
    values = list(module.graph.inputs())[1:]
    shapes = dict(input_shapes or {})
    unknown = [n for n in shapes if n not in [a.name for a in args]]
    if unknown:
        raise MmoptError(f"{path}: --input-shape names unknown input(s) {', '.join(unknown)}; "
                         f"forward() takes {', '.join(a.name for a in args)}")
    names, example = [], []
    gen = torch.Generator().manual_seed(0)
    for arg, value in zip(args, values):
        vtype = value.type()
        restored_shape, dtype = None, torch.float32
        if vtype.kind() == "TensorType":
            sizes = vtype.sizes()
            if sizes is not None and all(isinstance(d, int) for d in sizes):
                restored_shape = sizes
            if vtype.scalarType() in _SCALAR_TYPES:
                dtype = getattr(torch, _SCALAR_TYPES[vtype.scalarType()])
        elif str(arg.type) != "Tensor":
            raise UnsupportedModelError(f"{path}: forward() argument {arg.name} has type "
                                        f"{arg.type}; only tensor inputs can be exported")
        shape = shapes.get(arg.name, restored_shape)
        if shape is None:
            example_opt = ",".join(f"--input-shape {a.name}:1,3,224,224" for a in args)
            raise MmoptError(f"{path}: the TorchScript archive does not record the shape of input "
                             f"{arg.name}; give it, e.g. {example_opt}")
        names.append(arg.name)
        if dtype.is_floating_point:
            example.append(torch.randn(*shape, generator=gen).to(dtype))
        else:
            example.append(torch.zeros(*shape, dtype=dtype))
    return names, tuple(example)


def _torchscript_to_onnx(path: Path, input_shapes, dynamic_batch: bool, opset: int):
    torch = _torch()
    module = load_torchscript(path)
    names, example = _torchscript_inputs(module, path, input_shapes)
    try:
        with torch.no_grad(), _quiet():
            n_out = len(_flatten_outputs(module(*example)))
    except MmoptError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise MmoptError(f"{path}: running forward() on inputs of shape "
                         f"{[list(x.shape) for x in example]} failed ({summarize(exc)[:200]}); "
                         "check --input-shape") from exc
    outputs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dynamic_axes = ({n: {0: "batch"} for n in [*names, *outputs]} if dynamic_batch else None)
    buffer = io.BytesIO()
    try:
        with _quiet(), _native_output_silenced():
            torch.onnx.export(module, example, buffer, dynamo=False, opset_version=opset, verbose=False,
                              input_names=names, output_names=outputs, dynamic_axes=dynamic_axes)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(f"{path}: PyTorch's ONNX exporter (TorchScript) cannot convert "
                                    f"the module: {_exporter_reason(exc)} (a .pt2 from "
                                    "torch.export.save often converts where TorchScript does not)"
                                    ) from exc
    return onnx.load_from_string(buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# the frontend interface


def _kind(path: Path) -> str:
    kind = sniff(path)
    if kind == PICKLE:
        raise UnsupportedModelError(
            f"{path}: a pickled file (torch.save of a state_dict or module); mmopt never unpickles "
            f"files since that can run arbitrary code; {_EXPORT_HINT}")
    if kind is None:
        raise ModelLoadError(f"{path}: not a PyTorch .pt2 (torch.export.save) or TorchScript "
                             "(torch.jit.save) archive")
    return kind


def to_onnx(path, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
            dynamic_batch: bool = False, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a ``.pt2`` or TorchScript archive to ONNX.

    ``input_shapes`` is needed for TorchScript archives that do not record their input shapes (a
    ``.pt2`` carries its own; fix its dims later with :func:`mmopt.ir.fix_input_shapes`).
    ``dynamic_batch`` makes dim 0 symbolic for TorchScript (a ``.pt2`` keeps the dims it was
    exported with).
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if _kind(path) == PT2:
        if dynamic_batch:
            logger.warning("%s: --dynamic-batch does not apply to .pt2 files; the program keeps "
                           "the dynamic dims it was exported with", path)
        return _export_program(load_exported_program(path), str(path), opset)
    return _torchscript_to_onnx(path, input_shapes, dynamic_batch, opset)


def reference_outputs(path, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                      **_ignored) -> dict[str, np.ndarray]:
    """The source model's outputs on ``feeds``, computed by PyTorch, keyed like ``model``'s outputs."""
    torch = _torch()
    from mmopt import ir as mir

    path = Path(path)
    kind = _kind(path)
    runner = (load_exported_program(path).module() if kind == PT2 else load_torchscript(path))
    names = [v.name for v in mir.graph_inputs(model)]
    args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]
    with torch.no_grad(), _quiet():
        outputs = _flatten_outputs(runner(*args))
    out_names = [o.name for o in model.graph.output]
    if len(outputs) != len(out_names):
        raise MmoptError(f"{path}: the module returned {len(outputs)} tensors, the ONNX model has "
                         f"{len(out_names)} outputs")
    return {n: t.detach().cpu().numpy() for n, t in zip(out_names, outputs)}


__all__ = ["DEFAULT_OPSET", "from_torch", "load_exported_program", "load_torchscript",
           "reference_outputs", "sniff", "to_onnx"]
