"""``mmopt-check.toml``: the check's settings committed beside the model, so CI runs ``mmopt check``.

Every command-line option has a key of the same name (without ``--``; ``-`` or ``_`` both work);
thresholds sit at the top level, per-output overrides in ``[output."NAME"]`` tables::

    reference = "model.onnx"
    candidate = "build/model.int8.onnx"
    data = "testdata/val.npz"
    labels = "testdata/val_labels.npy"
    max-drop = "1%"
    min-cosine = 0.99
    report = "build/check.json"
    junit = "build/check.xml"
    html = "build/check.html"

    [output."boxes"]
    min-snr = 25

Relative paths are taken from the file's directory. Options given on the command line win over the
file. Unknown keys are errors (a typo must not silently drop a gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmopt.check.thresholds import Thresholds
from mmopt.errors import MmoptError

#: the file ``mmopt check`` reads from the current directory when no --config is given
CONFIG_NAME = "mmopt-check.toml"

_PATHS = ("reference", "candidate", "data", "labels", "report", "junit", "html")
_OPTIONS = {
    **{k: str for k in _PATHS},
    "metric": list, "output_name": list, "input_shape": list,
    "per_layer": bool, "per_layer_samples": int, "jump_db": float, "seed": int,
    "eval_engine": str,
}


@dataclass
class CheckConfig:
    path: Path | None = None
    #: option name (underscores) -> value, paths resolved against the file's directory
    options: dict = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    per_output: dict[str, Thresholds] = field(default_factory=dict)


def _toml():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise MmoptError("reading mmopt-check.toml needs Python >= 3.11 or the tomli "
                             "package") from None
    return tomllib


def find_config(explicit=None) -> Path | None:
    """``explicit`` if given (it must exist), else ``./mmopt-check.toml`` if present."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise MmoptError(f"--config {path}: no such file")
        return path
    default = Path(CONFIG_NAME)
    return default if default.is_file() else None


def load_config(path) -> CheckConfig:
    path = Path(path)
    tomllib = _toml()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MmoptError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MmoptError(f"{path}: not valid TOML ({exc})") from exc
    config = CheckConfig(path=path)
    thresholds = {}
    base = path.parent
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "output":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise MmoptError(f'{path}: "output" must hold tables like [output."NAME"] with '
                                 "thresholds for that output")
            config.per_output = {out: Thresholds.from_mapping(v, f"{path} [output.{out}]")
                                 for out, v in value.items()}
        elif name in Thresholds.names():
            thresholds[key] = value
        elif name in _OPTIONS:
            config.options[name] = _option(name, value, path, base)
        else:
            known = sorted({*(k.replace("_", "-") for k in _OPTIONS),
                            *(k.replace("_", "-") for k in Thresholds.names()), "output"})
            raise MmoptError(f"{path}: unknown key {key!r}; known keys: {', '.join(known)}")
    config.thresholds = Thresholds.from_mapping(thresholds, str(path))
    return config


def _option(name: str, value, path: Path, base: Path):
    kind = _OPTIONS[name]
    key = name.replace("_", "-")
    if kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MmoptError(f"{path}: {key} must be a string or a list of strings")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise MmoptError(f"{path}: {key} must be true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and not isinstance(value, int)):
            raise MmoptError(f"{path}: {key} must be a{'n integer' if kind is int else ' number'}")
        return kind(value)
    if not isinstance(value, str) or not value:
        raise MmoptError(f"{path}: {key} must be a non-empty string")
    if name in _PATHS and not value.startswith(("random:", "zoo:")) and not Path(value).is_absolute():
        return str(base / value)
    return value
