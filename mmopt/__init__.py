"""mmopt: a compiler-style model optimization toolchain.

ONNX (and other frameworks, through frontends) in; optimized ONNX and verified TVM-compiled artifacts
for x86, ARM and NVIDIA GPUs out. The CLI (``mmopt``) is a thin shell over these functions.
"""

__version__ = "0.1.0"

from mmopt.api import CompileResult, compile, inspect, load, optimize, run  # noqa: E402
from mmopt.errors import MmoptError  # noqa: E402
from mmopt import check  # noqa: E402  (the package is callable: mmopt.check(...))
from mmopt.frontends import from_torch  # noqa: E402
from mmopt import quantize  # noqa: E402  (mmopt.quantize.quantize(model, calib_data, ...))

__all__ = ["CompileResult", "MmoptError", "__version__", "check", "compile", "from_torch", "inspect",
           "load", "optimize", "quantize", "run"]
