"""The JSON reports the verbs write, as data: which verb wrote one, reading one from a file, and
making one safe for strict JSON.

Every verb that renders HTML (``--html``) renders the dict its ``--json`` prints; ``mmopt report
RUN.json`` reads such a file back. A report names its verb in ``kind``; files written before that
key existed (and an artifact's own ``NAME.json``, which holds a compile's fields) are recognized by
the keys only that verb writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mmopt.errors import MmoptError

#: the verbs whose reports render as HTML, in the order the docs list them
KINDS = ("compile", "profile", "tune", "quantize", "check", "bench")

#: kind -> keys that only that verb's report has (all of them must be present)
_SIGNATURES = {
    "profile": ("kernels", "total_median_ms", "between_ms"),
    "tune": ("tasks", "sub_database", "runner"),
    "check": ("checks", "outputs", "reference", "candidate"),
    "bench": ("mmopt", "onnxruntime", "ratio"),
    "quantize": ("dtype", "ops_before", "ops_after", "excluded"),
    "compile": ("source_sha256", "target", "inputs", "outputs"),
}


def finite(value):
    """A JSON-safe copy: non-finite floats become "inf", "-inf" or "nan" (strict JSON has no
    such numbers; ``mmopt check`` and ``mmopt quantize`` write them so)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def kind_of(data: dict) -> str:
    """The verb that wrote ``data`` (one of :data:`KINDS`); :class:`MmoptError` if none did."""
    if not isinstance(data, dict):
        raise MmoptError("not an mmopt report: the JSON is not an object")
    kind = data.get("kind")
    if kind in KINDS:
        return kind
    for name, keys in _SIGNATURES.items():
        if all(k in data for k in keys):
            return name
    raise MmoptError("not an mmopt report: expected the JSON of compile, profile, tune, quantize, "
                     "check or bench (their --json output, --report or profile --json file, or "
                     "an artifact's NAME.json)")


def load(path) -> dict:
    """A report from a JSON file, with its ``kind`` set."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MmoptError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise MmoptError(f"{path}: not a JSON report (not UTF-8 text)") from None
    except OSError as exc:
        raise MmoptError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MmoptError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        kind = kind_of(data)
    except MmoptError as exc:
        raise MmoptError(f"{path}: {exc.message}") from None
    return {**data, "kind": kind}


def write_text(path, text: str, what: str = "the report") -> Path:
    """Write ``text`` to ``path`` atomically (a failure leaves no partial file), making its
    folder; :class:`MmoptError` naming ``path`` and ``what`` when it cannot."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise MmoptError(f"{path}: cannot write {what} ({exc.strerror or exc})") from exc
    return path
