"""Target descriptions (see :mod:`mmopt.targets.registry`)."""

from mmopt.targets.registry import Target, get, names, registry, require_toolchain

__all__ = ["Target", "get", "names", "registry", "require_toolchain"]
