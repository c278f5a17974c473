"""The Python API: the same verbs as the CLI (``mmopt.compile``, ``mmopt.run``, ``mmopt.inspect``...)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mmopt import __version__
from mmopt import ir as mir
from mmopt import targets as _targets
from mmopt.codegen import build as _build
from mmopt.codegen.options import CodegenOptions
from mmopt.codegen.relax_import import to_relax
from mmopt.errors import MmoptError
from mmopt.passes import DEFAULT_LEVEL, PipelineReport, optimize as _optimize
from mmopt.runtime.artifact import ArtifactMeta, CompiledModel, TensorSpec, artifact_paths
from mmopt.runtime.inputs import random_inputs
from mmopt.runtime.verify import DEFAULT_ATOL, DEFAULT_RTOL, VerifyReport, compare, run_onnxruntime

logger = logging.getLogger(__name__)

#: progress callback: called with a short stage description as each stage starts
Progress = Callable[[str], None]


@dataclass
class CompileResult:
    library: Path
    meta_path: Path
    meta: ArtifactMeta
    passes: PipelineReport
    verification: VerifyReport | None = None
    onnx_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: the artifact against the source framework (PyTorch, TensorFlow, TFLite, Caffe via OpenCV)
    #: when the model is not ONNX and the framework is installed; see :func:`verify_against_source`
    source_verification: VerifyReport | None = None
    #: why the source framework was not consulted (empty when it was, or the model is ONNX)
    source_skipped: str = ""
    #: the artifact profiled kernel by kernel (``compile(..., profile=True)``)
    profile: object | None = None
    #: what mmopt logged as warnings while compiling, in order
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No verification that ran failed."""
        return all(v is None or v.passed for v in (self.verification, self.source_verification))

    def to_dict(self) -> dict:
        """The compile report: ``mmopt compile --json`` prints it, ``--html`` and ``mmopt report``
        render it. The artifact JSON's fields, plus the pass-by-pass report, the stage timings,
        the profile (or None) and the warnings."""
        return {"kind": "compile", "library": str(self.library), "meta": str(self.meta_path),
                "timings": self.timings, **self.meta.to_dict(), "passed": self.passed,
                "passes": self.passes.to_dict(),
                "onnx": str(self.onnx_path) if self.onnx_path else None,
                "profile": self.profile.to_dict() if self.profile is not None else None,
                "warnings": self.warnings}


def _import(model, input_shapes=None) -> onnx.ModelProto:
    """Any supported model (ONNX, PyTorch, Caffe, ...; path or ModelProto) as ONNX."""
    from mmopt import frontends

    return frontends.to_onnx(model, input_shapes=input_shapes)


def _source_name(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return "<ModelProto>"


def _recorded_source(source: str) -> str:
    """The source model as the artifact records it: a file by its absolute path, so that
    ``profile``, ``bench`` and ``view`` find it from any directory; a zoo name or
    ``<ModelProto>`` as it is."""
    path = Path(source)
    return str(path.resolve()) if path.is_file() else source


def default_output(model, target: str) -> Path:
    stem = Path(model).stem if isinstance(model, (str, os.PathLike)) else "model"
    return Path(f"{stem}.{target}")


@contextlib.contextmanager
def _atomic_outputs(prefix: Path) -> Iterator[Path]:
    """A private directory beside ``prefix`` to write into; removed (with any directory this made)
    if the block fails, so a failed compile leaves nothing on disk."""
    parent = prefix.parent if str(prefix.parent) else Path(".")
    created = []
    probe = parent.resolve()
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix.name}.", suffix=".partial", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def compile(  # noqa: A001 - the verb users expect: mmopt.compile(...)
    model,
    target: str = "x86",
    output=None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    opt_level: int = DEFAULT_LEVEL,
    verify: bool | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    save_onnx: bool = False,
    db=None,
    allow_emulated_records: bool = False,
    codegen: CodegenOptions | None = None,
    profile: bool | Mapping = False,
    progress: Progress | None = None,
    dims=None,
    buckets: Sequence[Mapping[str, Sequence[int]]] = (),
) -> CompileResult:
    """Compile an ONNX model (path or ModelProto) into ``OUTPUT.so`` + ``OUTPUT.json`` for ``target``.

    ``verify=None`` verifies when the target can run on this machine. The reference for verification
    is the *source* model on onnxruntime, so it covers both the graph passes and code generation.
    ``db``: a tuning database directory (``mmopt tune``); its records for this target are applied
    and the remaining kernels get default schedules. The report says how many were tuned, and
    which code-generation settings differ from those the records were tuned with. Records measured
    on emulated devices apply only with ``allow_emulated_records`` (and only where no real record
    exists); the report says which kernels used them or had only them.
    ``codegen``: :class:`mmopt.codegen.options.CodegenOptions` (default: from the environment,
    else all on); recorded in the artifact JSON.
    ``profile``: also profile the artifact kernel by kernel (``result.profile``, a
    :class:`mmopt.runtime.profile.ProfileResult`; the target must run here); a mapping gives
    :func:`mmopt.runtime.profile.profile_artifact`'s options (``threads``, ``runs``, ...).
    ``result.warnings`` holds what mmopt logged as warnings meanwhile.
    ``dims``: symbolic dims that stay symbolic (``--dim``): :class:`mmopt.ir.dims.DimRange` objects
    (or ``{name: DimRange}``); ``input_shapes`` may name axes (``{"x": (1, 3, 48, "width")}``).
    The artifact then accepts every size in the ranges and refuses others; verification runs at
    several sizes (:func:`mmopt.ir.dims.size_sets`). ``buckets``: ``[{input: shape}, ...]``,
    sizes compiled as statically specialized functions in the same artifact
    (:mod:`mmopt.codegen.buckets`). See docs/dynamic-shapes.md.
    Raises :class:`MmoptError` for bad input; a failed verification is reported in the result (and
    the CLI exits 1), not raised.
    """
    step = progress or (lambda _msg: None)
    tgt = _targets.get(target)
    _targets.require_toolchain(tgt)  # fail before any work
    if verify is None:
        verify = tgt.runs_here()
    elif verify and not tgt.runs_here():
        raise MmoptError(f"--verify: target {tgt.name} cannot run here ({tgt.why_not_here()}); "
                         "use --no-verify, or verify on a device")
    if profile and not tgt.runs_here():
        raise MmoptError(f"--profile: target {tgt.name} cannot run here ({tgt.why_not_here()})")
    if profile and dims:
        raise MmoptError("--profile: an artifact with symbolic dims (--dim) runs at many sizes; "
                         "profile it at one with mmopt profile ARTIFACT --input-shape "
                         "NAME:D1,D2,...")
    from mmopt._logging import capture_warnings

    with capture_warnings() as warnings:
        result = _compile(model, tgt, output, input_shapes, opt_level, verify, atol, rtol, seed,
                          save_onnx, db, allow_emulated_records, codegen, profile, step, dims,
                          buckets)
    result.warnings = warnings
    return result


def _compile(model, tgt, output, input_shapes, opt_level, verify, atol, rtol, seed, save_onnx, db,
             allow_emulated_records, codegen, profile, step, dims, buckets) -> CompileResult:
    import time

    import tvm

    from mmopt.runtime.profile import counting_kernel_flops

    timings: dict[str, float] = {}

    prefix = Path(output) if output is not None else default_output(model, tgt.name)
    library, meta_path = artifact_paths(prefix)
    source = _source_name(model)

    from mmopt.ir.dims import dim_ranges

    ranges = dim_ranges(dims)
    if buckets and not ranges:
        raise MmoptError("--buckets: the model is compiled with static shapes; buckets need "
                         "symbolic dims (--dim NAME=MIN..MAX)")
    t0 = time.perf_counter()
    step("loading model")
    reference, optimized, report = front_end(model, input_shapes, opt_level, progress=step,
                                             dims=ranges)
    specs = {v.name: mir.dims_of(v) for v in mir.graph_inputs(optimized)}
    from mmopt.codegen.buckets import add_buckets, resolve_buckets

    resolved = resolve_buckets(list(buckets), specs, ranges) if buckets else []
    # hashed after loading, so a missing or unreadable file gets the loader's one-line error
    sha = mir.sha256_of(model if isinstance(model, onnx.ModelProto) else Path(model))
    timings["passes"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    step("importing into TVM Relax")
    mod = add_buckets(to_relax(optimized, where=source, dims=ranges), resolved, ranges)
    tgt = _targets.for_module(tgt, mod)
    codegen = codegen or CodegenOptions.from_env()
    database = None
    if db is not None:
        from mmopt.tuning.database import open_database

        database = open_database(db, tgt, allow_emulated=allow_emulated_records)
    step(f"generating code for {tgt.name}")
    from mmopt.codegen.schedule_fallbacks import record_fallbacks
    from mmopt.codegen.int8_paths import record_int8_kernels

    flops_counter = counting_kernel_flops() if profile else contextlib.nullcontext({})
    with record_fallbacks() as fallbacks, record_int8_kernels() as int8_kernels, \
            flops_counter as flops:
        executable = _build.build(mod, tgt, database, codegen)
    timings["codegen"] = time.perf_counter() - t0
    tuning = None
    if database is not None:
        from mmopt.codegen.options import differences

        tuning = {"database": str(db), "kernels_tuned": len(set(database.applied)),
                  "kernels_looked_up": len(set(database.queried)),
                  "tuned": sorted(set(database.applied)),
                  "codegen_differences": differences(database.codegen, codegen.resolved(tgt)),
                  **database.emulated_report()}
    target_info = tgt.to_dict()
    if tgt.device == "cpu":
        from mmopt.targets.cpu import cpu_facts

        target_info["cpu"] = cpu_facts(tgt.tvm_target()).to_dict()

    degraded = [f for f in fallbacks if f.get("kind")]
    fallbacks = [f for f in fallbacks if not f.get("kind")]
    meta = ArtifactMeta(
        name=prefix.name,
        inputs=[TensorSpec(v.name, [d if isinstance(d, int) else str(d) for d in mir.dims_of(v)],
                           str(mir.dtype_of(v)))
                for v in mir.graph_inputs(optimized)],
        outputs=[TensorSpec(v.name, [d if isinstance(d, int) else d if d in ranges else -1
                                     for d in mir.dims_of(v)],
                            str(mir.dtype_of(v))) for v in optimized.graph.output],
        dims={name: r.to_dict() for name, r in ranges.items()},
        buckets=[b.to_dict() for b in resolved],
        target=target_info,
        source_model=_recorded_source(source),
        source_sha256=sha,
        passes_applied=report.applied,
        opt_level=opt_level,
        mmopt_version=__version__,
        tvm_version=str(tvm.__version__),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        codegen=codegen.resolved(tgt),
        extra={**({"tuning": tuning} if tuning else {}),
               **({"schedule_fallbacks": fallbacks} if fallbacks else {}),
               **({"int8_kernels": int8_kernels} if int8_kernels else {}),
               **({"dynamic_kernels": _degradations(degraded)} if ranges
                  else {"degraded_kernels": _degradations(degraded)} if degraded else {}),
               **_random_weights(reference)},
    )

    with _atomic_outputs(prefix) as tmp:
        tmp_lib, tmp_meta = artifact_paths(tmp / prefix.name)
        step(f"linking {library.name}")
        t0 = time.perf_counter()
        _build.export(executable, tgt, tmp_lib)
        timings["export"] = time.perf_counter() - t0
        meta.write(tmp_meta)
        verification = source_verification = None
        source_skipped = ""
        if verify:
            step("verifying against a reference run")
            t0 = time.perf_counter()
            verification = verify_artifact(tmp_lib, reference, atol=atol, rtol=rtol, seed=seed,
                                           sizes=_verify_sizes(ranges, resolved))
            meta.verification = verification.to_dict()
            if _is_foreign(model):
                step("verifying against the source framework")
                source_verification, source_skipped = verify_against_source(
                    model, tmp_lib, reference, atol=atol, rtol=rtol, seed=seed)
                meta.extra["source_verification"] = (
                    source_verification.to_dict() if source_verification is not None
                    else {"skipped": source_skipped})
            timings["verify"] = time.perf_counter() - t0
            meta.write(tmp_meta)
        onnx_path = None
        if save_onnx:
            onnx_path = prefix.with_name(prefix.name + ".onnx")
            mir.save(optimized, tmp / onnx_path.name)
        # Everything is written: move into place (library last is not needed: same directory).
        for path in [tmp_lib, tmp_meta] + ([tmp / onnx_path.name] if onnx_path else []):
            os.replace(path, prefix.parent / path.name)
            if onnx_path and path.name == onnx_path.name and (tmp / (path.name + ".data")).exists():
                os.replace(tmp / (path.name + ".data"), prefix.parent / (path.name + ".data"))
    profiled = None
    if profile:
        from mmopt.runtime.profile import profile_artifact

        t0 = time.perf_counter()
        profiled = profile_artifact(library, meta, reference, optimized, flops, progress=step,
                                    **(profile if isinstance(profile, Mapping) else {}))
        timings["profile"] = time.perf_counter() - t0
    return CompileResult(library, meta_path, meta, report, verification, onnx_path, timings,
                         source_verification, source_skipped, profiled)


def _verify_sizes(ranges, buckets) -> list[dict] | None:
    """The size sets a dynamic artifact is verified at: the ranges' (min, middle, max, odd sizes)
    and each bucket's; None for a static artifact."""
    if not ranges:
        return None
    from mmopt.ir.dims import size_sets

    sets = size_sets(ranges)
    return sets + [b.sizes for b in buckets if b.sizes not in sets]


def _degradations(degraded: list[dict]) -> dict:
    """The kernels that kept a slower form, by what and why (recorded in the artifact JSON):
    for a dynamic artifact what symbolic shapes cost (Winograd skipped, tiles with predicated
    tails; ``extra.dynamic_kernels``), for any artifact a schedule that failed and left a
    working but slower kernel (an integer convolution without its dot-product instruction, a
    Winograd output transform as an element-wise loop; ``extra.degraded_kernels`` when static)."""
    by: dict[str, list[str]] = {}
    for d in degraded:
        by.setdefault(f"{d['schedule']}: {d['reason']}", []).append(d["block"])
    return {"degradations": [{"what": what, "count": len(blocks), "blocks": blocks[:20]}
                             for what, blocks in by.items()]}


def _random_weights(model: onnx.ModelProto) -> dict:
    """``{"random_weights": True, "random_weights_seed": N}`` when a frontend generated the
    weights (``--random-weights``), else ``{}``: the artifact JSON says what was compiled."""
    from mmopt import frontends

    if not frontends.has_random_weights(model):
        return {}
    props = {p.key: p.value for p in model.metadata_props}
    seed = props.get("mmopt.random_weights_seed")
    return {"random_weights": True,
            **({"random_weights_seed": int(seed)} if seed and seed.isdigit() else {})}


def front_end(model, input_shapes=None, opt_level: int = DEFAULT_LEVEL, *,
              progress: Progress | None = None, dims=None):
    """``(reference, optimized, pass report)``: the graph half of :func:`compile`.

    ``reference`` is the imported model with fixed shapes (what verification runs on onnxruntime);
    ``optimized`` is what goes to TVM. Tuning (``mmopt.tuning``) uses this too: records only apply
    when tuning and compiling see exactly the same graph. ``dims``: symbolic dims kept symbolic
    (``{name: DimRange}``; both models then keep them).
    """
    static = {k: v for k, v in (input_shapes or {}).items()
              if all(isinstance(d, int) for d in v)}
    if dims or len(static) != len(input_shapes or {}):
        if _is_foreign(model):
            raise MmoptError("--dim and named dims in --input-shape apply to ONNX models: import "
                             "the model first (`mmopt import`), then compile the .onnx")
    reference = mir.prepare(_import(model, static or None), input_shapes, dims=dims)
    if progress is not None:
        progress(f"optimizing (-O{opt_level})")
    optimized, report = _optimize(reference, opt_level)
    return reference, mir.infer_shapes(optimized), report


def verify_artifact(artifact, reference: onnx.ModelProto, *, atol: float = DEFAULT_ATOL,
                    rtol: float = DEFAULT_RTOL, seed: int = 0,
                    sizes: Sequence[Mapping[str, int]] | None = None) -> VerifyReport:
    """Run ``artifact`` and onnxruntime (on ``reference``) on the same seeded random inputs; the
    report's ``engine`` says what computed the reference when onnxruntime could not run a plugin's
    ops (:func:`mmopt.extend.reference.run_reference`).

    ``sizes``: for a dynamic artifact, the symbolic dims' sizes of each call to verify
    (``[{dim: size}, ...]``); the report lists every call and keeps each output's worst."""
    if sizes:
        model = CompiledModel(artifact)
        runs = []
        for one in sizes:
            feeds = random_inputs(reference, seed, one)
            report = _verify_once(model, reference, feeds, atol, rtol, seed)
            runs.append((one, model.function_for({k: v.shape for k, v in feeds.items()}),
                         report))
        return VerifyReport.merged(runs)
    return _verify_once(CompiledModel(artifact), reference, random_inputs(reference, seed),
                        atol, rtol, seed)


def _verify_once(model: CompiledModel, reference: onnx.ModelProto, feeds, atol: float,
                 rtol: float, seed: int) -> VerifyReport:
    from mmopt.runtime.verify import (QDQ_OUTLIER_FACTOR, QDQ_OUTLIER_FRACTION,
                                      QDQ_TOLERANCE_STEPS, quantized_output_step)

    step = quantized_output_step(reference)
    note = ""
    outliers = {}
    if step is not None and QDQ_TOLERANCE_STEPS * step > atol:
        # integer kernels round differently from onnxruntime: compare in output quantization
        # steps, and let a few amplified rounding flips through (counted in the report)
        atol = QDQ_TOLERANCE_STEPS * step
        note = f"quantized model: {QDQ_TOLERANCE_STEPS} output quantization steps of {step:.3g}"
        outliers = {"outliers": QDQ_OUTLIER_FRACTION, "outlier_factor": QDQ_OUTLIER_FACTOR}
    from mmopt.extend.reference import run_reference  # plugin ops onnxruntime lacks: references
    from mmopt.quantize.fp16 import output_tolerance

    # a model computing in fp16 is judged at fp16 precision (onnxruntime's CPU kernels compute
    # most fp16 ops in fp32); None for the others
    fp16 = output_tolerance(reference, feeds)
    if fp16 is not None and fp16[0] > atol:
        atol, note = fp16

    expected = run_reference(reference, feeds)
    got = model(**feeds)
    report = compare(expected, got, atol=atol, rtol=rtol, **outliers)
    report.seed = seed
    few = [o for o in report.outputs if o.passed and o.beyond]
    if few:
        note += "; " + ", ".join(
            f"{o.name}: {o.beyond} element(s) beyond it, at most {o.worst_ratio:.2g}x (allowed: "
            f"{QDQ_OUTLIER_FRACTION:g} of the elements, {QDQ_OUTLIER_FACTOR:g}x)" for o in few)
    report.note = note
    report.engine = expected.engine
    return report


def _is_foreign(model) -> bool:
    """A model file of another framework than ONNX (a ModelProto or .onnx file is not)."""
    from mmopt import frontends

    if isinstance(model, onnx.ModelProto):
        return False
    try:
        return frontends.detect(Path(model)) != "onnx"
    except MmoptError:
        return False


def verify_against_source(source, artifact, reference: onnx.ModelProto, *,
                          atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                          seed: int = 0) -> tuple[VerifyReport | None, str]:
    """Run ``artifact`` and the source framework of ``source`` (a PyTorch, TensorFlow/Keras,
    TFLite or Caffe file; ``reference`` is its ONNX import) on the same seeded random inputs.

    This catches what verifying against onnxruntime cannot: an exporter or converter bug, where
    onnxruntime faithfully runs a wrong ONNX model. Returns ``(report, "")``, or
    ``(None, reason)`` when the framework's runtime is not installed here.
    """
    from mmopt import frontends

    path = Path(source)
    if frontends.has_random_weights(reference):
        return None, ("its weights are random (--random-weights): the source framework has none "
                      "to compare with")
    entry = frontends.frontend(frontends.detect(path))
    module = entry.load()
    if not hasattr(module, "reference_outputs"):
        return None, f"mmopt cannot run {entry.name} models itself"
    feeds = random_inputs(reference, seed)
    try:
        expected = module.reference_outputs(path, reference, feeds)
    except ImportError as exc:
        return None, f"{entry.name} is not installed here ({exc.name or exc})"
    if expected is None:
        return None, f"{entry.name}'s runtime is not available here"
    got = CompiledModel(artifact)(**feeds)
    report = compare(expected, got, atol=atol, rtol=rtol)
    report.seed = seed
    report.note = f"reference: {entry.name}"
    return report, ""


def load(artifact) -> CompiledModel:
    """Load a compiled artifact; call the result with numpy arrays."""
    return CompiledModel(artifact)


def run(artifact, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a compiled artifact once on ``inputs`` (by name)."""
    return CompiledModel(artifact)(**inputs)


def profile(model, target: str = "x86", **options):
    """Profile a model (compiled here for ``target``) or an artifact kernel by kernel: time, ONNX
    nodes, FLOPs and % of the FMA peak per kernel; a :class:`mmopt.runtime.profile.ProfileResult`.
    ``options``: see :func:`mmopt.runtime.profile.profile` (``threads``, ``runs``, ``warmup``,
    ``input_shapes``, ``opt_level``, ``db``, ``codegen``, ``versus``, ``progress``)."""
    from mmopt.runtime.profile import profile as _profile

    return _profile(model, target, **options)


def optimize(model, output=None, *, input_shapes=None, opt_level: int = DEFAULT_LEVEL,
             passes: Sequence[str] | None = None, disable: Sequence[str] = (),
             layout: str | None = None):
    """Optimize an ONNX model at the graph level; returns ``(ModelProto, PipelineReport)``.

    ``layout="nhwc"`` (with ``opt_level=3``) makes the model's image inputs/outputs channels-last.
    """
    model = _import(model, input_shapes)
    prepared = mir.prepare(model, input_shapes) if input_shapes else mir.normalize_opset(mir.load(model))
    optimized, report = _optimize(prepared, opt_level, passes=passes, disable=disable, layout=layout)
    if output is not None:
        mir.save(optimized, output)
    return optimized, report


def inspect(model):
    """Inputs/outputs, op histogram, parameter count and MACs of an ONNX model."""
    from mmopt.ir.inspect import inspect_model

    return inspect_model(mir.load(model))
