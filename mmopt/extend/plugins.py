"""Finding and loading plugins: installed packages (entry points) and ``--plugin FILE.py``.

* An installed package declares an entry point in the group ``mmopt.extensions``::

      [project.entry-points."mmopt.extensions"]
      acme = "acme_mmopt.ops"            # a module: importing it registers its ops
      acme_more = "acme_mmopt:register"  # or a function, called with no arguments

  Every such entry point is loaded the first time mmopt needs its registry (a compile, an
  ``inspect --support``, a verification), in the order of their names.
* ``mmopt COMMAND --plugin FILE.py`` (every command that loads a model) and
  :func:`load_plugin` import a Python file the same way.

What a plugin registers is attributed to it (``inspect --support`` shows the plugin's name next to
each node it handles). A plugin that cannot be loaded -- missing file, syntax error, an exception
at import, a bad registration -- raises :class:`PluginError`: a one-line error naming the plugin,
exit code 2 on the command line. So does an exception raised by a plugin's rule while it rewrites
a node.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from pathlib import Path

from mmopt.errors import MmoptError, summarize
from mmopt.extend._registry import ENTRY_POINT_GROUP, Registry, attributed_to, default_registry

logger = logging.getLogger(__name__)

#: resolved path -> plugin name, for files already loaded in this process
_loaded_files: dict[Path, str] = {}
#: "name=value" of the entry points already loaded -> plugin name
_loaded_entry_points: dict[str, str] = {}


class PluginError(MmoptError):
    """A plugin could not be loaded, or failed while compiling (exit code 2)."""


def load_plugin(path, registry: Registry | None = None) -> str:
    """Import the plugin file ``path`` (its registrations go to the registry); returns its name.

    Loading the same file again does nothing."""
    registry = registry or default_registry()
    file = Path(path).expanduser()
    name = f"plugin {file.name}"
    try:
        resolved = file.resolve(strict=True)
    except (OSError, RuntimeError):
        raise PluginError(f"{name}: no such file ({file})") from None
    if resolved in _loaded_files:
        return _loaded_files[resolved]
    if resolved.is_dir() or resolved.suffix != ".py":
        raise PluginError(f"{name}: a plugin is a Python file (.py)")
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    module_name = f"mmopt_plugin_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise PluginError(f"{name}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with attributed_to(name):
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            _forget(registry, name, module_name)
            raise PluginError(f"{name}: exited while loading (SystemExit {exc.code})") from None
        except Exception as exc:  # noqa: BLE001 - any error of third-party code names the plugin
            _forget(registry, name, module_name)
            raise PluginError(
                f"{name}: failed to load: {type(exc).__name__}: {summarize(exc)}") from exc
    _loaded_files[resolved] = name
    logger.info("loaded %s (%s)", name, resolved)
    return name


def _forget(registry: Registry, name: str, module_name: str) -> None:
    """A plugin that failed halfway leaves nothing registered."""
    registry.unregister(name)
    sys.modules.pop(module_name, None)


def entry_points():
    """The installed entry points of :data:`ENTRY_POINT_GROUP`, sorted by name."""
    from importlib.metadata import entry_points as _entry_points

    return sorted(_entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))


def load_entry_points(registry: Registry | None = None) -> list[str]:
    """Load every installed plugin not loaded yet; returns the names loaded now."""
    registry = registry or default_registry()
    loaded = []
    for ep in entry_points():
        key = f"{ep.name}={ep.value}"
        if key in _loaded_entry_points:
            continue
        dist = getattr(ep, "dist", None)
        package = f" from {dist.name}" if dist is not None and getattr(dist, "name", None) else ""
        name = f"plugin {ep.name}{package}"
        with attributed_to(name):
            try:
                target = ep.load()
                if callable(target) and not isinstance(target, type):
                    target()
            except Exception as exc:  # noqa: BLE001
                registry.unregister(name)
                raise PluginError(f"{name} (entry point {ENTRY_POINT_GROUP}: {ep.name} = "
                                  f"{ep.value}): failed to load: {type(exc).__name__}: "
                                  f"{summarize(exc)}") from exc
        _loaded_entry_points[key] = name
        loaded.append(name)
        logger.info("loaded %s (entry point %s)", name, ep.value)
    return loaded


def loaded_plugins() -> list[str]:
    """Names of the plugins loaded in this process (files and entry points)."""
    return sorted(set(_loaded_files.values()) | set(_loaded_entry_points.values()))
