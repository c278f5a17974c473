"""mmopt: a compiler-style model optimization toolchain.

ONNX (and other frameworks, through frontends) in; optimized ONNX and verified TVM-compiled artifacts
for x86, ARM and NVIDIA GPUs out. The CLI (``mmopt``) is a thin shell over these functions.

The API is imported lazily (``mmopt.compile`` loads TVM on first use, not at ``import mmopt``), so
light-weight parts such as ``mmopt.runtime.bench``'s onnxruntime worker and ``mmopt --help`` stay
light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> (module, attribute or None for the module itself)
_LAZY = {
    "CompileResult": ("mmopt.api", "CompileResult"),
    "compile": ("mmopt.api", "compile"),
    "inspect": ("mmopt.api", "inspect"),
    "load": ("mmopt.api", "load"),
    "optimize": ("mmopt.api", "optimize"),
    "profile": ("mmopt.api", "profile"),
    "package": ("mmopt.deploy", "package"),
    "run": ("mmopt.api", "run"),
    "MmoptError": ("mmopt.errors", "MmoptError"),
    "from_torch": ("mmopt.frontends", "from_torch"),
    "tune": ("mmopt.tuning.tune", "tune"),
    # packages: mmopt.check is callable (mmopt.check(...)); quantize via mmopt.quantize.quantize
    "check": ("mmopt.check", None),
    "quantize": ("mmopt.quantize", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mmopt' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
