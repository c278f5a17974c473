"""The native runtime of a bundle: ``libmmopt_model.so`` (the C API of ``native/include/
mmopt_model.h`` over TVM's runtime), ``mmopt-run``, and the TVM runtime libraries they load.

TVM's runtime pieces are never built here: ``libtvm_runtime.so`` and ``libtvm_ffi.so`` come from
the wheels of the pinned TVM version, for the bundle's architecture:

- the machine's own architecture: the installed ``apache-tvm`` / ``apache-tvm-ffi`` wheels;
- aarch64 on an x86 machine: the aarch64 wheels that the emulated-device set-up already unpacked
  (``scripts/setup-arm-emulation.sh``, :mod:`mmopt.tuning.emulate`): nothing is downloaded here.

mmopt's own small pieces (C++ and C sources under ``native/``) are compiled with the target's
compiler (``g++``/``gcc``, or ``aarch64-linux-gnu-g++``/``-gcc``) against the tvm-ffi headers of the
installed wheel, and cached per architecture and source hash under ``$MMOPT_CACHE/native``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mmopt.errors import MmoptError, TargetError

logger = logging.getLogger(__name__)

#: the TVM runtime libraries a bundle ships (libtvm_runtime.so loads libtvm_ffi.so from $ORIGIN)
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
#: mmopt's C API library
CAPI_LIB = "libmmopt_model.so"
RUNNER = "mmopt-run"
HEADER = "mmopt_model.h"

#: compilers, by bundle architecture, when the machine is of another architecture
_CROSS = {"aarch64": "aarch64-linux-gnu-", "x86_64": "x86_64-linux-gnu-"}
_PACKAGES = {"aarch64": "g++-aarch64-linux-gnu", "x86_64": "g++-x86-64-linux-gnu"}


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def source_dir() -> Path:
    """The ``native/`` folder of the mmopt checkout (header, C++ implementation, runner, example)."""
    root = Path(__file__).resolve().parents[2] / "native"
    if not (root / "include" / HEADER).exists():
        raise MmoptError(f"{root}: mmopt's native sources are missing (the bundle's runtime is "
                         "built from native/ of an mmopt checkout: install mmopt editable, "
                         "pip install -e .)")
    return root


# --------------------------------------------------------------------------------------------------
# toolchains


@dataclass(frozen=True)
class Toolchain:
    arch: str
    cxx: str
    cc: str
    strip: str | None

    def version(self) -> str:
        try:
            out = subprocess.run([self.cxx, "--version"], capture_output=True, text=True,
                                 timeout=60, check=False).stdout
        except OSError:
            return "?"
        return out.splitlines()[0] if out else "?"


def toolchain(arch: str) -> Toolchain:
    """The C/C++ compilers (and strip) that build code for ``arch`` on this machine."""
    prefix = "" if arch == host_arch() else _CROSS.get(arch)
    if prefix is None:
        raise TargetError(f"no native runtime for {arch} (bundles are built for x86_64 and aarch64)")
    cxx, cc = f"{prefix}g++", f"{prefix}gcc"
    if shutil.which(cxx) is None:
        package = "g++" if not prefix else _PACKAGES[arch]
        raise TargetError(f"building the {arch} runtime needs the C++ compiler {cxx}, which is not "
                          f"installed; install Debian's {package} (apt-get install {package})")
    if shutil.which(cc) is None:
        cc = cxx  # the C sources are compiled with -x c
    strip = f"{prefix}strip" if shutil.which(f"{prefix}strip") else None
    return Toolchain(arch, cxx, cc, strip)


# --------------------------------------------------------------------------------------------------
# TVM's runtime libraries per architecture


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # without importing TVM (seconds, and the compiler lib)
    if spec is None or not spec.submodule_search_locations:
        raise MmoptError(f"the {name} package is not installed (pip install apache-tvm)")
    return Path(next(iter(spec.submodule_search_locations)))


def tvm_versions() -> dict[str, str]:
    return {"apache-tvm": metadata.version("apache-tvm"),
            "apache-tvm-ffi": metadata.version("apache-tvm-ffi")}


def ffi_include_dir() -> Path:
    """tvm-ffi's C++ headers (architecture independent) from the installed wheel."""
    include = _package_dir("tvm_ffi") / "include"
    if not (include / "tvm" / "ffi" / "extra" / "module.h").exists():
        raise MmoptError(f"{include}: tvm-ffi's C++ headers are missing from the apache-tvm-ffi "
                         "wheel")
    return include


@dataclass(frozen=True)
class RuntimeLibs:
    """Where ``libtvm_runtime.so`` and ``libtvm_ffi.so`` for one architecture are found."""

    arch: str
    runtime: Path
    ffi: Path
    origin: str

    def paths(self) -> dict[str, Path]:
        return {"libtvm_runtime.so": self.runtime, "libtvm_ffi.so": self.ffi}


def cannot_build_and_run(arch: str) -> str | None:
    """Why a bundle for ``arch`` cannot be built and run on this machine (one line naming what to
    install or prepare), or None when it can: natively, or an aarch64 bundle on x86 with the
    cross compiler, qemu and the prepared arm64 environment."""
    if arch == host_arch():
        return None
    if arch != "aarch64":
        return f"{arch} bundles run on {arch} machines only"
    from mmopt.tuning import emulate

    if shutil.which("aarch64-linux-gnu-g++") is None:
        return "the aarch64 cross compiler is not installed (apt-get install g++-aarch64-linux-gnu)"
    if not any(shutil.which(q) for q in emulate.QEMU_CANDIDATES):
        return f"qemu-aarch64 is not installed; {emulate.SETUP_HINT}"
    if not emulate.Arm64Root(emulate.cache_root()).is_ready():
        return f"the emulated arm64 environment is not prepared; {emulate.SETUP_HINT}"
    return None


def runtime_libs(arch: str) -> RuntimeLibs:
    """TVM's runtime libraries for ``arch`` from a wheel of the installed version."""
    versions = tvm_versions()
    wheels = f"apache-tvm {versions['apache-tvm']} + apache-tvm-ffi {versions['apache-tvm-ffi']}"
    if arch == host_arch():
        tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
        origin = f"{wheels} {arch} wheels (installed)"
    elif arch == "aarch64":
        from mmopt.tuning import emulate

        root = emulate.Arm64Root(emulate.cache_root())
        if not root.is_ready():
            raise MmoptError(
                "an aarch64 bundle ships TVM's runtime from the aarch64 wheels that the emulated "
                f"arm64 device set-up unpacks, and {root.path} is not prepared (for these TVM "
                "versions); run scripts/setup-arm-emulation.sh (or `mmopt farm emulate arm64 "
                "--prepare-only`)")
        tvm_dir, ffi_dir = root.site / "tvm", root.site / "tvm_ffi"
        origin = f"{wheels} aarch64 wheels ({root.site})"
    else:
        raise MmoptError(f"no TVM runtime libraries for {arch} on this {host_arch()} machine")
    libs = RuntimeLibs(arch, tvm_dir / "lib" / "libtvm_runtime.so",
                       ffi_dir / "lib" / "libtvm_ffi.so", origin)
    for path in libs.paths().values():
        if not path.exists():
            raise MmoptError(f"{path}: missing (TVM's {arch} runtime library)")
    return libs


# --------------------------------------------------------------------------------------------------
# building mmopt's pieces


def _sources(src: Path) -> list[Path]:
    return [src / "include" / HEADER, src / "src" / "mmopt_model.cc",
            src / "tools" / "mmopt_run.c"]


def sources_digest() -> str:
    """sha256 of the native sources a bundle's runtime is built from (part of the key of bundles
    cached by :func:`mmopt.deploy.bundle.bundle_for`: a changed runtime packages again)."""
    h = hashlib.sha256()
    for path in _sources(source_dir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    logger.debug("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or proc.stdout).splitlines() if "error" in l.lower()]
        tail = " | ".join((lines or (proc.stderr or proc.stdout).strip().splitlines())[-3:])
        raise MmoptError(f"{what} failed (exit {proc.returncode}): {tail}")


def cache_dir() -> Path:
    from mmopt.zoo import cache_dir as base

    return base() / "native"


def build_capi(arch: str, *, progress=None) -> Path:
    """Compile ``libmmopt_model.so`` and ``mmopt-run`` for ``arch`` (cached); returns the folder
    that holds them together with (stripped copies of) TVM's runtime libraries."""
    step = progress or (lambda msg: logger.info("%s", msg))
    src = source_dir()
    tools = toolchain(arch)
    libs = runtime_libs(arch)
    versions = tvm_versions()
    key = hashlib.sha256()
    for path in [*_sources(src), *libs.paths().values()]:
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    key.update(f"{tools.cxx} {tools.version()} {versions}".encode())
    out = cache_dir() / f"{arch}-{key.hexdigest()[:16]}"
    if (out / "ok").exists():
        return out
    step(f"building the {arch} runtime (libmmopt_model.so, mmopt-run) with {tools.cxx}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        stripped = True
        for name, path in libs.paths().items():
            if tools.strip:
                _run([tools.strip, "--strip-unneeded", "-o", str(work / name), str(path)],
                     f"stripping {name}")
            else:
                shutil.copy2(path, work / name)
                stripped = False
        flags = ["-O2", "-fPIC", "-pthread"]
        _run([tools.cxx, "-std=c++17", *flags, "-shared", "-fvisibility=hidden",
              f"-DMMOPT_TVM_VERSION=\"{versions['apache-tvm']}\"",
              "-I", str(src / "include"), "-isystem", str(ffi_include_dir()),
              str(src / "src" / "mmopt_model.cc"), "-o", str(work / CAPI_LIB),
              "-L", str(work), "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
              "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN", "-Wl,-soname," + CAPI_LIB],
             f"compiling {CAPI_LIB} for {arch}")
        c_flags = ["-x", "c"] if tools.cc == tools.cxx else []
        _run([tools.cc, *c_flags, "-std=c11", "-O2", "-I", str(src / "include"),
              str(src / "tools" / "mmopt_run.c"), "-o", str(work / RUNNER),
              "-L", str(work), "-lmmopt_model", "-Wl,-rpath,$ORIGIN/../lib",
              f"-Wl,-rpath-link,{work}"], f"compiling {RUNNER} for {arch}")
        if tools.strip:
            for name in (CAPI_LIB, RUNNER):
                _run([tools.strip, "--strip-unneeded", str(work / name)], f"stripping {name}")
        (work / "ok").write_text(f"{libs.origin}\nstripped={stripped}\n{tools.version()}\n")
        if out.exists() and not (out / "ok").exists():
            shutil.rmtree(out)  # a broken earlier build (complete builds are renamed into place)
        try:
            work.rename(out)
        except OSError:
            if not (out / "ok").exists():
                raise  # else: a concurrent build of the same sources finished first; keep it
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def build_info(built: Path) -> dict[str, str | bool]:
    origin, stripped, compiler = ((built / "ok").read_text().splitlines() + ["", "", ""])[:3]
    return {"runtime_from": origin, "stripped": stripped == "stripped=True", "compiler": compiler}


# --------------------------------------------------------------------------------------------------
# what a binary needs from the system


_VERSION_NEED = re.compile(r"Name:\s*(GLIBC|GLIBCXX|CXXABI)_([0-9.]+)")


def symbol_versions(path: Path) -> dict[str, str]:
    """The newest GLIBC / GLIBCXX symbol versions ``path`` needs (``readelf -V``; {} when readelf
    is missing)."""
    try:
        out = subprocess.run(["readelf", "-V", "--wide", str(path)], capture_output=True,
                             text=True, timeout=60, check=False).stdout
    except OSError:
        return {}
    newest: dict[str, tuple[int, ...]] = {}
    for lib, version in _VERSION_NEED.findall(out):
        parts = tuple(int(p) for p in version.split(".") if p)
        if parts > newest.get(lib, ()):
            newest[lib] = parts
    return {lib: ".".join(map(str, v)) for lib, v in sorted(newest.items())}


def needed_libraries(path: Path) -> list[str]:
    """The shared libraries ``path`` names as NEEDED (``readelf -d``)."""
    try:
        out = subprocess.run(["readelf", "-d", "--wide", str(path)], capture_output=True,
                             text=True, timeout=60, check=False).stdout
    except OSError:
        return []
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
