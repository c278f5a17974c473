"""The optimized graph in Netron (the ``netron`` package: a graph viewer served from this
machine), each node annotated with the kernel that computes it and that kernel's time, where a
profile says so.

``mmopt view`` comes here. What is shown is the ONNX graph mmopt compiles (after its passes), saved
as a copy whose nodes carry, in ``metadata_props`` (Netron lists them in the node's properties) and
in ``doc_string`` (its description):

* ``mmopt.kernel``: the fused kernel (TIR function) that computes the node; ``mmopt.kernel_call``:
  its position in the inference; ``mmopt.kernel_ms`` and ``mmopt.kernel_percent``: its median time
  and share of the inference; ``mmopt.fused_with``: every ONNX node of that kernel.

A node two kernel calls account for (the step of a decomposed op, ``helper`` in the profile, and
the kernel that finishes it) lists both, separated by ``; ``. The times come from
:func:`mmopt.runtime.profile.profile_artifact` (or from a saved compile/profile report): kernels are
matched to ONNX nodes by value, as ``mmopt profile`` explains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

#: the loopback address Netron is served on
HOST = "127.0.0.1"


@dataclass
class View:
    """What ``mmopt view`` shows: the optimized graph, annotated where a profile is known."""

    model: onnx.ModelProto
    #: the profile's JSON (:meth:`ProfileResult.to_dict`), or None
    profile: dict | None
    #: where the graph came from, in words
    source: str
    #: why there are no kernel times (empty when there are)
    no_profile: str = ""


def annotate(model: onnx.ModelProto, profile: Mapping) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose nodes carry their kernel and its time (see the module docs), and
    how many nodes got one. ``profile`` is a profile's JSON (``mmopt profile --json``)."""
    annotated = onnx.ModelProto()
    annotated.CopyFrom(model)
    by_node: dict[str, list[dict]] = {}
    for kernel in sorted(profile.get("kernels") or [], key=lambda k: k["index"]):
        if kernel.get("mapping") in ("value", "helper"):
            for node in kernel.get("onnx_nodes") or []:
                by_node.setdefault(node, []).append(kernel)
    count = 0
    for node in annotated.graph.node:
        kernels = by_node.get(node.name)
        if not kernels:
            continue
        count += 1
        fields = {
            "mmopt.kernel": "; ".join(k["name"] for k in kernels),
            "mmopt.kernel_call": "; ".join(f"#{k['index']}" for k in kernels),
            "mmopt.kernel_ms": "; ".join(f"{k['median_ms']:.4f}" for k in kernels),
            "mmopt.kernel_percent": "; ".join(f"{k['percent']:.1f}" for k in kernels),
            "mmopt.fused_with": "; ".join(", ".join(k.get("onnx_nodes") or []) for k in kernels),
        }
        _set_props(node.metadata_props, fields)
        node.doc_string = "\n".join(
            f"mmopt kernel #{k['index']} {k['name']}: {k['median_ms']:.4f} ms "
            f"({k['percent']:.1f}% of {profile.get('total_median_ms', 0):.4f} ms per inference, "
            f"{profile.get('threads')} thread(s) on {profile.get('target')}); fused ONNX nodes: "
            + ", ".join(k.get("onnx_nodes") or []) for k in kernels)
    _set_props(annotated.metadata_props, {
        "mmopt.profile": f"{profile.get('total_median_ms', 0):.4f} ms per inference, "
                         f"{len(profile.get('kernels') or [])} kernel calls, "
                         f"{profile.get('threads')} thread(s), target {profile.get('target')}"})
    return annotated, count


def _set_props(props, fields: Mapping[str, str]) -> None:
    keep = [(p.key, p.value) for p in props if p.key not in fields]
    del props[:]
    for key, value in [*keep, *fields.items()]:
        entry = props.add()
        entry.key, entry.value = key, value


def view_of(source: str, *, target: str = "x86", input_shapes=None, opt_level: int | None = None,
            profile: bool | None = None, threads: int = 2,
            progress: Callable[[str], None] | None = None) -> View:
    """The graph ``mmopt view SOURCE`` shows. ``source``: a model (any framework, ``zoo:NAME``), a
    compiled artifact (its source model's optimized graph, as compiled), or a saved compile or
    profile report (the JSON; its profile annotates the graph, nothing is run). ``profile``: time
    the kernels now (a model is compiled for ``target``; the target must run here); None: where it
    can run."""
    from mmopt.runtime.artifact import is_artifact

    step = progress or (lambda _msg: None)
    path = Path(source)
    if path.suffix == ".json" and not is_artifact(path):
        return _from_report(path, step)
    if path.suffix != ".onnx" and is_artifact(path):
        return _from_artifact(path, profile, threads, step)
    return _from_model(source, target, input_shapes, opt_level, profile, threads, step)


def _from_report(path: Path, step) -> View:
    from mmopt.api import front_end
    from mmopt.passes import DEFAULT_LEVEL
    from mmopt.report.data import load

    data = load(path)
    if data["kind"] not in ("compile", "profile"):
        raise MmoptError(f"{path}: a {data['kind']} report has no kernels; give a compile report "
                         "(with a profile), a profile report, a model or an artifact")
    profile = data.get("profile") if data["kind"] == "compile" else data
    model = data.get("source_model") if data["kind"] == "compile" else data.get("model")
    if not model or not Path(model).exists():
        raise MmoptError(f"{path}: its model {model} is not available here")
    shapes = {t["name"]: t["shape"] for t in data.get("inputs") or []} or None
    step("optimizing the model as it was compiled")
    level = data.get("opt_level")
    _reference, optimized, _report = front_end(model, shapes,
                                               DEFAULT_LEVEL if level is None else level)
    return View(optimized, profile, f"{model} (from {path})",
                "" if profile else f"{path} holds no profile (`mmopt compile --profile`)")


def _from_artifact(path: Path, profile: bool | None, threads: int, step) -> View:
    from mmopt import ir as mir
    from mmopt import targets
    from mmopt.runtime.artifact import read_meta
    from mmopt.runtime.profile import profile_artifact, rederive

    meta = read_meta(path)
    source = Path(meta.source_model)
    if not (source.exists() and mir.sha256_of(source) == meta.source_sha256):
        raise MmoptError(f"{path}: its source model {source} is not available (or changed): the "
                         "graph it was compiled from cannot be shown")
    tgt = targets.get(meta.target.get("name", "?"))
    step("re-deriving the compiled graph from the source model")
    reference, optimized, flops = rederive(source, meta, tgt)
    if profile is None:
        profile = tgt.runs_here()
    if not profile:
        return View(optimized, None, f"{source} as compiled into {path}",
                    "--no-profile" if tgt.runs_here() else f"target {tgt.name} does not run here")
    result = profile_artifact(path, meta, reference, optimized, flops, threads=threads,
                              progress=step)
    return View(optimized, result.to_dict(), f"{source} as compiled into {path}")


def _from_model(source: str, target: str, input_shapes, opt_level, profile: bool | None,
                threads: int, step) -> View:
    import mmopt
    from mmopt import targets
    from mmopt.api import front_end
    from mmopt.passes import DEFAULT_LEVEL

    level = DEFAULT_LEVEL if opt_level is None else opt_level
    tgt = targets.get(target)
    if profile is None:
        profile = tgt.runs_here()
    if not profile:
        step("optimizing")
        _reference, optimized, _report = front_end(source, input_shapes, level)
        return View(optimized, None, f"{source} optimized (-O{level})",
                    "--no-profile" if tgt.runs_here() else f"target {tgt.name} does not run here")
    with tempfile.TemporaryDirectory(prefix="mmopt-view-") as tmp:
        result = mmopt.compile(source, tgt.name, Path(tmp) / "model", input_shapes=input_shapes,
                               opt_level=level, verify=False, save_onnx=True,
                               profile={"threads": threads}, progress=step)
        from mmopt import ir as mir

        optimized = mir.load(result.onnx_path)
    return View(optimized, result.profile.to_dict(), f"{source} compiled for {tgt.name}")


def annotated_model(view: View) -> tuple[onnx.ModelProto, int]:
    """The graph to show and how many of its nodes name their kernel."""
    if view.profile is None:
        return view.model, 0
    return annotate(view.model, view.profile)


@contextlib.contextmanager
def served(model: onnx.ModelProto, name: str, *, port: int = 0, browse: bool = False,
           keep: str | os.PathLike | None = None) -> Iterator[str]:
    """Serve ``model`` with Netron on the loopback interface while the block runs; yields the URL.
    ``port`` 0 takes a free one; ``browse`` opens the system's web browser; ``keep``: also write
    the model there (else it lives in a temporary directory for as long as the server runs)."""
    try:
        import netron
    except ImportError:
        raise MmoptError("mmopt view needs the netron package (pip install netron; "
                         "scripts/setup.sh installs it)") from None
    from mmopt import ir as mir

    with tempfile.TemporaryDirectory(prefix="mmopt-view-") as tmp:
        path = Path(keep) if keep else Path(tmp) / f"{name}.onnx"
        mir.save(model, path)
        try:
            address = netron.serve(str(path), None, address=(HOST, port), browse=browse)
        except OSError as exc:
            raise MmoptError(f"cannot serve on {HOST}:{port} ({exc.strerror or exc})") from exc
        _daemon_request_threads(address)
        try:
            yield f"http://{address[0]}:{address[1]}"
        finally:
            netron.stop(address)


def _daemon_request_threads(address) -> None:
    """Let the process end while a browser still holds a connection to the server.

    Netron answers each request on a thread of a ``socketserver.ThreadingMixIn`` server whose
    request threads are not daemons, and the interpreter joins every such thread at exit.
    Chromium opens speculative (preconnect) sockets that never send a request; the thread serving
    one waits on it forever, so after Ctrl-C ``mmopt view`` would hang until the browser closed.
    Marking the server's request threads as daemons ends them with the process instead."""
    for thread in threading.enumerate():
        server = getattr(thread, "server", None)
        if server is not None and getattr(server, "server_address", None) == tuple(address):
            server.daemon_threads = True
