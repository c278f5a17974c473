"""The one registry of op implementations: mmopt's own decompositions, its com.microsoft ops, and
whatever plugins add.

An entry is a rule (:class:`mmopt.extend.rules.Decomposition`, or one of the forms
:mod:`mmopt.extend` builds from a function) plus where it came from (``source``: ``"mmopt"`` for
mmopt's own, else the plugin) and an optional numpy reference implementation.

Which rules are tried on a node, in order:

1. rules of plugins before mmopt's own (a plugin can replace a built-in implementation), the most
   recently registered first;
2. mmopt's own in registration order (the order of :data:`mmopt.codegen.decompose.FAMILIES`);
3. among the rules of one source for one op, only those with the highest ``since_version`` that is
   not above the node's opset version for its domain (ONNX's rule for schema versions).

The first rule that wants the node and whose ``check`` passes rewrites it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnx_ir as ir

from mmopt.extend.rules import DEFAULT_DOMAINS, Decomposition

logger = logging.getLogger(__name__)

#: the Python entry-point group plugins declare (``[project.entry-points."mmopt.extensions"]``)
ENTRY_POINT_GROUP = "mmopt.extensions"
#: ``source`` of mmopt's own rules
BUILTIN = "mmopt"
#: modules that register mmopt's own rules when imported, in this order
BUILTIN_MODULES = ("mmopt.codegen.decompose", "mmopt.ops.microsoft")

#: the source registrations are attributed to while a plugin loads
_current_source: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mmopt_extension_source", default=None)


@dataclass(frozen=True)
class Extension:
    """One registered rule."""

    rule: Decomposition
    source: str
    #: registration order (later registrations of plugins take precedence)
    order: int
    #: ``fn(*inputs, **attributes) -> array or tuple``: numpy reference of the op, or None
    reference: Callable | None = None

    @property
    def kind(self) -> str:
        return self.rule.kind

    def describe(self) -> str:
        ops = "*" if self.rule.generic else ", ".join(self.rule.op_types)
        domain = self.rule.domain or "ai.onnx"
        return (f"{domain}::{ops} (since {self.rule.since_version}): {self.rule.name} "
                f"[{self.kind}, {self.source}]")


@contextlib.contextmanager
def attributed_to(source: str) -> Iterator[None]:
    """Registrations inside this block are recorded as coming from ``source`` (a plugin)."""
    token = _current_source.set(source)
    try:
        yield
    finally:
        _current_source.reset(token)


def _source_of(rule: Decomposition) -> str:
    current = _current_source.get()
    if current is not None:
        return current
    module = type(rule).__module__
    if getattr(rule, "function_module", None):
        module = rule.function_module
    return BUILTIN if module.startswith("mmopt.") else module


class Registry:
    """Rules by op; see the module docstring for the order they are tried in."""

    def __init__(self) -> None:
        self._entries: list[Extension] = []
        self._by_op: dict[str, list[Extension]] = {}
        self._generic: list[Extension] = []
        self._references: dict[tuple[str, str], list[tuple[int, int, Callable, str]]] = {}
        self._lock = threading.RLock()
        self._loaded = False
        self._loading = False

    # ---------------------------------------------------------------------------------------------
    # registering

    def register(self, rule: Decomposition, *, source: str | None = None,
                 reference: Callable | None = None) -> Decomposition:
        """Add ``rule``; ``reference``: optional numpy implementation of the ops it handles."""
        if not isinstance(rule, Decomposition):
            raise TypeError(f"register() takes a Decomposition instance, not {type(rule).__name__} "
                            "(use mmopt.extend.decomposition or mmopt.extend.kernel for functions)")
        if not getattr(rule, "name", None):
            raise ValueError(f"{type(rule).__name__} has no name")
        if not rule.generic and not rule.op_types:
            raise ValueError(f"rule {rule.name} names no op_types")
        with self._lock:
            entry = Extension(rule, source or _source_of(rule), len(self._entries), reference)
            self._entries.append(entry)
            if rule.generic:
                self._generic.append(entry)
            for op_type in rule.op_types:
                self._by_op.setdefault(op_type, []).append(entry)
                if reference is not None:
                    self._add_reference(rule.domain, op_type, rule.since_version, reference,
                                        entry.source)
            if entry.source != BUILTIN:
                logger.debug("extension registered: %s", entry.describe())
        return rule

    def register_reference(self, domain: str, op_type: str, fn: Callable, *,
                           since_version: int = 1, source: str | None = None) -> Callable:
        """A numpy reference for ``domain::op_type`` (however the op is compiled)."""
        with self._lock:
            self._add_reference(domain, op_type, since_version, fn,
                                source or _current_source.get() or fn.__module__)
        return fn

    def _add_reference(self, domain, op_type, since, fn, source) -> None:
        key = ("" if domain in DEFAULT_DOMAINS else domain, op_type)
        self._references.setdefault(key, []).append((since, len(self._entries), fn, source))

    def unregister(self, source: str) -> int:
        """Drop every rule and reference of ``source`` (tests; reloading a plugin)."""
        with self._lock:
            kept = [e for e in self._entries if e.source != source]
            removed = len(self._entries) - len(kept)
            self._entries = []
            self._by_op, self._generic = {}, []
            for entry in kept:
                self._entries.append(entry)
                if entry.rule.generic:
                    self._generic.append(entry)
                for op_type in entry.rule.op_types:
                    self._by_op.setdefault(op_type, []).append(entry)
            for key, refs in list(self._references.items()):
                self._references[key] = [r for r in refs if r[3] != source]
            return removed

    # ---------------------------------------------------------------------------------------------
    # looking up

    def entries(self) -> list[Extension]:
        return list(self._entries)

    def candidates(self, node: ir.Node, version: int) -> list[Extension]:
        """The entries to try on ``node`` (whose domain is at opset ``version``), in order."""
        entries = [e for e in [*self._by_op.get(node.op_type, ()), *self._generic]
                   if e.rule.since_version <= version and e.rule.matches(node)]
        newest: dict[tuple, int] = {}
        for e in entries:
            key = (e.source, e.rule.generic)
            newest[key] = max(newest.get(key, 0), e.rule.since_version)
        entries = [e for e in entries if e.rule.since_version == newest[(e.source, e.rule.generic)]]
        plugins = sorted((e for e in entries if e.source != BUILTIN), key=lambda e: -e.order)
        return plugins + sorted((e for e in entries if e.source == BUILTIN), key=lambda e: e.order)

    def reference(self, domain: str, op_type: str, version: int = 1) -> Callable | None:
        """The numpy reference for the op at ``version`` (plugins' over mmopt's, newest first)."""
        refs = [r for r in self._references.get(("" if domain in DEFAULT_DOMAINS else domain,
                                                  op_type), ()) if r[0] <= version]
        if not refs:
            return None
        return max(refs, key=lambda r: (r[3] != BUILTIN, r[0], r[1]))[2]

    def kernels(self) -> dict[str, Decomposition]:
        """Kernel rules by the op type of the node they write (see :mod:`mmopt.extend.kernels`)."""
        return {e.rule.key: e.rule for e in self._entries if e.kind == "kernel"}

    # ---------------------------------------------------------------------------------------------
    # loading mmopt's own rules and the installed plugins, once

    def ensure_loaded(self) -> Registry:
        """Import mmopt's own rule modules and the entry-point plugins (first call only).

        A plugin that fails to load raises :class:`mmopt.extend.PluginError` (and is retried on the
        next call)."""
        if self._loaded or self._loading:
            return self
        with self._lock:
            if self._loaded or self._loading:
                return self
            self._loading = True
            try:
                import importlib

                from mmopt.extend.plugins import load_entry_points

                for module in BUILTIN_MODULES:
                    importlib.import_module(module)
                load_entry_points(self)
                self._loaded = True
            finally:
                self._loading = False
        return self


_REGISTRY = Registry()


def registry() -> Registry:
    """The process-wide registry, with mmopt's own rules and the entry-point plugins loaded."""
    return _REGISTRY.ensure_loaded()


def default_registry() -> Registry:
    """The process-wide registry as it is (nothing loaded): what registering functions add to."""
    return _REGISTRY
