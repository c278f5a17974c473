"""Code-generation settings: the choices that change the generated kernels for one target.

They are compile options, passed explicitly down the pipeline (never read from the environment
inside a pass), written into the artifact JSON (``codegen``) and into the tuning database beside
the records they were measured with, so that a compile with other settings than the tuning run
says so instead of silently applying fewer records.

* ``winograd``: 3x3 float convolutions where F(4x4, 3x3) or F(2x2, 3x3) pays run as Winograd
  (:mod:`mmopt.codegen.winograd`);
* ``pack_weights``: float NHWC convolution weights are re-laid out at compile time for the
  micro-kernel's access order (:mod:`mmopt.codegen.packed_conv`);
* ``layout``: the data layout convolutions run in (``None``: the target's preferred layout);
* ``fast_math``: float32 exp/erf/tanh/sigmoid/softmax on CPUs computed with vectorizable
  arithmetic instead of the C library's scalar functions (:mod:`mmopt.codegen.fast_math`);
* ``lookup_tables``: long element-wise chains on 8-bit tensors of quantized models (a QDQ
  hard-swish) read a 256-entry table computed at compile time
  (:mod:`mmopt.codegen.quantized_lut`).

The environment variables of earlier releases (``MMOPT_WINOGRAD=0``, ``MMOPT_PACK_WEIGHTS=0``,
``MMOPT_CONV_LAYOUT=NCHW``) still work as defaults for the command line and the Python API; what
they chose is recorded like any other option.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from mmopt.errors import MmoptError

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class CodegenOptions:
    winograd: bool = True
    pack_weights: bool = True
    layout: str | None = None
    fast_math: bool = True
    lookup_tables: bool = True

    def __post_init__(self):
        if self.layout is not None and self.layout not in LAYOUTS:
            raise MmoptError(f"layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")

    @classmethod
    def from_env(cls, **overrides) -> CodegenOptions:
        """Defaults, then the ``MMOPT_*`` environment variables, then ``overrides`` (None values
        are ignored: "not given")."""
        env = cls(winograd=os.environ.get("MMOPT_WINOGRAD", "1") != "0",
                  pack_weights=os.environ.get("MMOPT_PACK_WEIGHTS", "1") != "0",
                  layout=(os.environ.get("MMOPT_CONV_LAYOUT") or None))
        return replace(env, **{k: v for k, v in overrides.items() if v is not None})

    def layout_for(self, target) -> str:
        return self.layout or target.preferred_layout

    def resolved(self, target) -> dict:
        """The settings as used for ``target`` (layout filled in): what artifacts record."""
        data = asdict(self)
        data["layout"] = self.layout_for(target)
        return data


def differences(recorded: dict | None, used: dict) -> list[str]:
    """``["winograd: tuned with False, compiled with True", ...]`` for settings that differ."""
    if not recorded:
        return []
    return [f"{key}: tuned with {recorded[key]}, compiled with {used.get(key)}"
            for key in sorted(recorded) if key in used and recorded[key] != used[key]]
