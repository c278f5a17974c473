"""Target descriptions (see :mod:`mmopt.targets.registry`)."""

from mmopt.targets.registry import (
    Target,
    for_module,
    get,
    names,
    registry,
    require_toolchain,
)

__all__ = ["Target", "for_module", "get", "names", "registry", "require_toolchain"]
