"""Bundles: an artifact plus everything that runs it without Python, for its target architecture.

```
BUNDLE/
  bundle.json               what is inside: target, architecture, files and sizes, requirements
  model/NAME.so NAME.json   the artifact, unchanged
  lib/libmmopt_model.so     the C API (include/mmopt_model.h) over TVM's runtime
  lib/libtvm_runtime.so     TVM's runtime and tvm-ffi, from the pinned TVM version's wheels
  lib/libtvm_ffi.so
  include/mmopt_model.h
  bin/mmopt-run             .npy in, .npy out, --bench N
  examples/run_model.c      + Makefile and CMakeLists.txt building it against this folder
```

:func:`package` writes one; :func:`run_native` runs an artifact through its bundle's ``mmopt-run``
(ARM bundles through ``qemu-aarch64`` on x86 machines) and reads the outputs back.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmopt.errors import MmoptError

from . import native

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "bundle.json"


@dataclass
class Bundle:
    """A packaged artifact (the result of :func:`package`)."""

    path: Path
    arch: str
    target: str
    model: Path
    runner: Path
    #: relative path -> size in bytes, for every file in the bundle
    files: dict[str, int] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    @property
    def runtime_bytes(self) -> int:
        """Bytes of the runtime libraries (lib/), what a deployment adds besides the model."""
        return sum(size for name, size in self.files.items() if name.startswith("lib/"))

    def command(self, args: list[str]) -> list[str]:
        """The command line that runs ``bin/mmopt-run ARGS`` on this machine (qemu for aarch64
        bundles on other machines)."""
        return runner_prefix(self.arch) + [str(self.runner), *args]

    @classmethod
    def open(cls, path) -> Bundle:
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            return cls(path=path, arch=manifest["arch"], target=manifest["target"],
                       model=path / manifest["model"]["prefix"], runner=path / manifest["runner"],
                       files={f["path"]: f["bytes"] for f in manifest["files"]},
                       manifest=manifest)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MmoptError(f"{path}: not an mmopt bundle ({exc})") from exc


def _refuse_reason(meta) -> str | None:
    device = meta.target.get("device", "cpu")
    if device == "cuda":
        return ("CUDA artifacts are not packaged: their kernels need TVM's CUDA runtime "
                "(libtvm_runtime_cuda.so, which links libcudart.so.13 and the NVIDIA driver, neither "
                "in the wheels) on the device; package a CPU target (x86*, arm*) instead")
    if device != "cpu":
        return f"{device} artifacts are not packaged (CPU targets only)"
    if meta.target.get("arch") not in ("x86_64", "aarch64"):
        return f"no native runtime for architecture {meta.target.get('arch')!r}"
    return None


def package(artifact, output, *, force: bool = False,
            progress: Callable[[str], None] | None = None) -> Bundle:
    """Write the bundle of ``artifact`` (``NAME``, ``NAME.so`` or ``NAME.json``) to the folder
    ``output``: the artifact, TVM's runtime for its architecture, the C API and ``mmopt-run``.

    ``output`` must be missing, empty or an earlier bundle (replaced); ``force`` replaces any
    folder. CUDA artifacts are refused with a one-line reason.
    """
    from mmopt import __version__
    from mmopt.runtime.artifact import artifact_paths, read_meta

    so, meta_path = artifact_paths(artifact)
    meta = read_meta(artifact)
    reason = _refuse_reason(meta)
    if reason:
        raise MmoptError(f"{so}: {reason}")
    if not so.exists():
        raise MmoptError(f"{so}: no such file (the artifact's library is missing)")
    arch = meta.target["arch"]
    output = Path(output)
    if output.exists() and not force:
        if not output.is_dir():
            raise MmoptError(f"{output}: exists and is not a folder")
        if any(output.iterdir()) and not (output / MANIFEST).exists():
            raise MmoptError(f"{output}: exists, is not empty and is not an mmopt bundle; choose "
                             "another folder or pass --force to replace it")
    built = native.build_capi(arch, progress=progress)
    src = native.source_dir()
    info = native.build_info(built)

    output.parent.mkdir(parents=True, exist_ok=True)
    work = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        for sub in ("model", "lib", "include", "bin", "examples"):
            (work / sub).mkdir(parents=True)
        shutil.copy2(so, work / "model" / so.name)
        shutil.copy2(meta_path, work / "model" / meta_path.name)
        for name in (*native.RUNTIME_LIBS, native.CAPI_LIB):
            shutil.copy2(built / name, work / "lib" / name)
        shutil.copy2(built / native.RUNNER, work / "bin" / native.RUNNER)
        shutil.copy2(src / "include" / native.HEADER, work / "include" / native.HEADER)
        for name in ("run_model.c", "Makefile", "CMakeLists.txt"):
            shutil.copy2(src / "examples" / name, work / "examples" / name)

        files = {p.relative_to(work).as_posix(): p.stat().st_size
                 for p in sorted(work.rglob("*")) if p.is_file()}
        requires = {
            "libraries": _merge_versions(native.symbol_versions(work / "lib" / n)
                                         for n in (*native.RUNTIME_LIBS, native.CAPI_LIB)),
            "mmopt-run": native.symbol_versions(work / "bin" / native.RUNNER),
            "system_libraries": sorted({lib for n in (*native.RUNTIME_LIBS, native.CAPI_LIB)
                                        for lib in native.needed_libraries(work / "lib" / n)}
                                       - {*native.RUNTIME_LIBS, native.CAPI_LIB}),
        }
        runtime_bytes = sum(size for name, size in files.items() if name.startswith("lib/"))
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "mmopt_version": __version__,
            "target": meta.target.get("name"),
            "arch": arch,
            "c_api_version": 1,
            "model": {"name": meta.name, "prefix": f"model/{so.stem}",
                      "library": f"model/{so.name}", "description": f"model/{meta_path.name}",
                      "sha256": _sha256(so),
                      "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape}
                                 for t in meta.inputs],
                      "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape}
                                  for t in meta.outputs],
                      # symbolic dims (--dim) and buckets, as in the artifact's description
                      "dims": meta.dims, "buckets": [{"function": b["function"],
                                                      "sizes": b["sizes"]}
                                                     for b in meta.buckets]},
            "runtime": {"bytes": runtime_bytes, "stripped": info["stripped"],
                        "from": info["runtime_from"], "compiler": info["compiler"],
                        **native.tvm_versions()},
            "runner": f"bin/{native.RUNNER}",
            "requires": requires,
            "files": [{"path": name, "bytes": size} for name, size in files.items()],
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        work.rename(output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Bundle.open(output)


def _merge_versions(items) -> dict[str, str]:
    newest: dict[str, str] = {}
    for versions in items:
        for lib, version in versions.items():
            if lib not in newest or _vkey(version) > _vkey(newest[lib]):
                newest[lib] = version
    return dict(sorted(newest.items()))


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# running a bundle here


def runner_prefix(arch: str) -> list[str]:
    """What runs an ``arch`` program on this machine: nothing for its own architecture,
    ``qemu-aarch64 -L SYSROOT`` for aarch64 on another machine."""
    if arch == native.host_arch():
        return []
    if arch != "aarch64":
        raise MmoptError(f"cannot run a {arch} bundle on this {native.host_arch()} machine")
    from mmopt.tuning import emulate

    qemu = emulate.qemu_binary()
    return [qemu, "-L", str(arm64_sysroot()), *emulate.guest_environment_fixes()]


def arm64_sysroot() -> Path:
    """The aarch64 root file system qemu loads the dynamic loader, libc and libstdc++ from: the
    emulated device's (Debian arm64 packages), else the cross compiler's."""
    from mmopt.tuning import emulate

    root = emulate.Arm64Root(emulate.cache_root())
    if (root.path / "lib" / "ld-linux-aarch64.so.1").exists() or \
            (root.path / "usr" / "lib" / "ld-linux-aarch64.so.1").exists():
        return root.path
    cross = Path("/usr/aarch64-linux-gnu")
    if (cross / "lib" / "ld-linux-aarch64.so.1").exists():
        return cross
    raise MmoptError("running an aarch64 bundle here needs an aarch64 root file system for qemu; "
                     f"{emulate.SETUP_HINT}")


def bundle_for(artifact, *, progress=None) -> Bundle:
    """The bundle of ``artifact``, packaged once into the cache (keyed by the artifact's files and
    the native runtime's sources)."""
    from mmopt.runtime.artifact import artifact_paths

    so, meta_path = artifact_paths(artifact)
    if not so.exists() or not meta_path.exists():
        missing = so if not so.exists() else meta_path
        raise MmoptError(f"{missing}: no such file (an mmopt artifact is NAME.so + NAME.json)")
    key = hashlib.sha256((_sha256(so) + _sha256(meta_path) + native.sources_digest()).encode()
                         ).hexdigest()[:16]
    path = native.cache_dir() / "bundles" / f"{so.stem}-{key}"
    if (path / MANIFEST).exists():
        bundle = Bundle.open(path)
        if bundle.runner.exists():
            return bundle
    return package(artifact, path, force=True, progress=progress)


def run_bundle(bundle: Bundle, feeds: Mapping[str, np.ndarray], *, threads: int | None = None,
               timeout: float = 600) -> dict[str, np.ndarray]:
    """Run ``bundle``'s ``mmopt-run`` on ``feeds`` (name -> array) and return its outputs in the
    model's output order. No Python runs the model: inputs and outputs travel as .npy files."""
    inputs = {t["name"]: t for t in bundle.manifest["model"]["inputs"]}
    unknown = [n for n in feeds if n not in inputs]
    missing = [n for n in inputs if n not in feeds]
    if unknown or missing:
        raise MmoptError("inputs do not match the artifact: "
                         + (f"missing {', '.join(missing)}; " if missing else "")
                         + (f"unknown {', '.join(unknown)}; " if unknown else "")
                         + f"expected {', '.join(inputs)}")
    with tempfile.TemporaryDirectory(prefix="mmopt-native-") as tmp:
        args = [str(bundle.model)]
        for i, (name, value) in enumerate(feeds.items()):
            path = Path(tmp) / f"input{i}.npy"
            array = np.asarray(value)
            expected = np.dtype(inputs[name]["dtype"])
            static = all(isinstance(d, int) for d in inputs[name]["shape"])
            # symbolic dims: mmopt-run checks the sizes against the ranges (a one-line error)
            if static and list(array.shape) != list(inputs[name]["shape"]):
                raise MmoptError(f"input {name}: shape {list(array.shape)} given, the artifact "
                                 f"was compiled for {inputs[name]['shape']}")
            if array.dtype != expected and array.dtype.kind == expected.kind:
                array = array.astype(expected)  # as the Python loader does
            np.save(path, np.require(array, requirements="C"))
            args += ["-i", f"{name}={path}"]
        out_dir = Path(tmp) / "out"
        args += ["-o", str(out_dir)]
        if threads:
            args += ["--threads", str(threads)]
        cmd = bundle.command(args)
        logger.debug("$ %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise MmoptError(f"{bundle.runner}: no result after {timeout:.0f}s") from exc
        if proc.returncode != 0:
            lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise MmoptError(f"{bundle.runner} failed: {detail.removeprefix('mmopt-run: error: ')}")
        written = {}
        for line in proc.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[0] == "wrote":
                written[parts[1]] = parts[2]
        outputs = {}
        for spec in bundle.manifest["model"]["outputs"]:
            if spec["name"] not in written:
                raise MmoptError(f"{bundle.runner} wrote no output {spec['name']!r}")
            outputs[spec["name"]] = np.load(written[spec["name"]], allow_pickle=False)
        return outputs


def run_native(artifact, feeds: Mapping[str, np.ndarray], *, threads: int | None = None,
               progress=None) -> dict[str, np.ndarray]:
    """Run ``artifact`` through its native bundle (packaged into the cache on first use)."""
    return run_bundle(bundle_for(artifact, progress=progress), feeds, threads=threads)
