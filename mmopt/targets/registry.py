"""Target descriptions as data.

A :class:`Target` says everything the rest of mmopt needs to know about where code will run: the TVM
target (JSON form; TVM 0.27 rejects the old ``"llvm -mcpu=..."`` strings), the host target for GPU
code, the cross compiler (and the Debian package that provides it), the preferred data layout, the
RPC key a device farm serves it under, and how to tell whether this machine can run it. Code that
needs to differ by target reads these fields; it never branches on the target's name.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import shutil
from dataclasses import dataclass

from mmopt.errors import TargetError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    #: "cpu" or "cuda": which runtime device executes the artifact.
    device: str
    #: machine architecture the shared library is built for ("x86_64", "aarch64").
    arch: str
    #: TVM target as a JSON dict (for CUDA: the device part; ``host`` holds the CPU part).
    tvm: dict
    host: dict | None = None
    #: C++ compiler that links the shared library; None = TVM's default (the host compiler).
    cross_compiler: str | None = None
    #: Debian package that provides ``cross_compiler``.
    cross_package: str | None = None
    preferred_layout: str = "NCHW"
    rpc_key: str | None = None
    #: CPU feature flags (as in /proc/cpuinfo) the host needs to run this target's code.
    requires_cpu_flags: tuple[str, ...] = ()

    def tvm_target(self):
        """The ``tvm.target.Target`` object (imports TVM lazily)."""
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.tvm, host=self.host)
        return tvm.target.Target(self.tvm)

    def runs_here(self) -> bool:
        """Whether an artifact for this target can be loaded and run on this machine."""
        if _machine() != self.arch:
            return False
        if self.device == "cuda":
            return _cuda_available()
        flags = _cpu_flags()
        return all(f in flags for f in self.requires_cpu_flags)

    def why_not_here(self) -> str:
        if _machine() != self.arch:
            return f"it is built for {self.arch} and this machine is {_machine()}"
        if self.device == "cuda" and not _cuda_available():
            return "no CUDA GPU is visible on this machine"
        missing = [f for f in self.requires_cpu_flags if f not in _cpu_flags()]
        if missing:
            return f"this CPU lacks {', '.join(missing)}"
        return ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "device": self.device,
            "arch": self.arch,
            "tvm": self.tvm,
            "host": self.host,
            "preferred_layout": self.preferred_layout,
            "rpc_key": self.rpc_key,
        }


# --------------------------------------------------------------------------------------------------
# machine facts (cached: they do not change while the process runs)


@functools.cache
def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags as ``/proc/cpuinfo`` lists them ("avx2", "avx512f", ...)."""
    return _cpu_flags()


@functools.cache
def _cuda_available() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - no driver, no runtime: not available
        return False


@functools.cache
def _host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. "znver4", "skylake-avx512")."""
    try:
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu()) or "generic"
    except Exception:  # noqa: BLE001
        return "generic"


@functools.cache
def _cuda_arch() -> str | None:
    if not _cuda_available():
        return None
    import tvm

    return "sm_" + str(tvm.cuda(0).compute_version).replace(".", "")


# --------------------------------------------------------------------------------------------------
# the registry

_X86_TRIPLE = "x86_64-linux-gnu"
_ARM_TRIPLE = "aarch64-linux-gnu"
_ARM_CXX = "aarch64-linux-gnu-g++"
_ARM_PKG = "g++-aarch64-linux-gnu"


def _x86(name: str, mcpu: str, description: str, flags: tuple[str, ...]) -> Target:
    """An x86-64 target for LLVM's CPU ``mcpu`` (see :func:`for_module` for the one
    attribute a dynamic-shape module adds)."""
    tvm = {"kind": "llvm", "mtriple": _X86_TRIPLE, "mcpu": mcpu}
    return Target(
        name=name,
        description=description,
        device="cpu",
        arch="x86_64",
        tvm=tvm,
        # measured: NHWC conv (vectorized over channels) is 5-6x faster than NCHW with mmopt's
        # default schedules on ResNet-50 (benchmarks/)
        preferred_layout="NHWC",
        rpc_key=name,
        requires_cpu_flags=flags,
    )


#: LLVM attribute that lets its own vectorizers use 512-bit vectors on AVX-512 CPUs
_PREFER_512 = "-prefer-256-bit"


def for_module(target: Target, mod) -> Target:
    """``target`` as it compiles the Relax module ``mod`` (compile, tune and ``tune --compare``
    all ask here, so that the tuning-database identity matches).

    A module with symbolic input shapes (``--dim``) on an AVX-512 x86 CPU: LLVM's own
    vectorizers may use 512-bit vectors (``-prefer-256-bit``, recorded in the artifact's target
    and so in the tuning-database identity); every other case: ``target`` unchanged.

    TVM vectorizes most loops itself at the full width (16 float lanes), but the ones it leaves
    whole for LLVM (a symbolic innermost extent: softmax over a sequence, a padded result's crop)
    got 256-bit vectors, the default tuning of the Intel server CPUs ``mcpu`` names. Measured on
    the dynamic transformer block at sequence 256, Zen 4: 5-7% faster. Static modules keep LLVM's
    default: with 512-bit preference LLVM's optimizer scalarized the requantizing write-back of
    16-lane int8 kernels (round, clamp, store as uint8: one vcvttss2si per element; MobileNetV2
    int8 on x86-vnni 10% slower, three of its kernels 2-3x)."""
    if target.device != "cpu" or target.arch != "x86_64":
        return target
    from mmopt.codegen.symbolic_dims import has_symbolic_inputs
    from mmopt.targets.cpu import cpu_facts

    if not has_symbolic_inputs(mod):
        return target
    if cpu_facts(target.tvm_target()).vector_bits < 512:
        return target
    mattr = [a for a in target.tvm.get("mattr", []) if a != _PREFER_512] + [_PREFER_512]
    return dataclasses.replace(target, tvm={**target.tvm, "mattr": mattr})


def _arm(name: str, mcpu: str | None, mattr: list[str], description: str) -> Target:
    tvm_target = {"kind": "llvm", "mtriple": _ARM_TRIPLE, "mattr": mattr}
    if mcpu:
        tvm_target["mcpu"] = mcpu
    return Target(
        name=name,
        description=description,
        device="cpu",
        arch="aarch64",
        tvm=tvm_target,
        cross_compiler=None if _machine() == "aarch64" else _ARM_CXX,
        cross_package=None if _machine() == "aarch64" else _ARM_PKG,
        preferred_layout="NHWC",
        rpc_key="arm64",
    )


def _cuda(name: str, arch: str, description: str) -> Target:
    return Target(
        name=name,
        description=description,
        device="cuda",
        arch="x86_64" if _machine() == "x86_64" else _machine(),
        # Per-block limits common to sm_75..sm_90 (without them TVM warns on every kernel).
        tvm={"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152,
             "max_threads_per_block": 1024, "thread_warp_size": 32},
        host={"kind": "llvm", "mtriple": f"{_machine()}-linux-gnu"},
        preferred_layout="NCHW",
        rpc_key=f"cuda-{arch}",
    )


def _build_registry() -> dict[str, Target]:
    targets = [
        _x86("x86", _host_cpu(), f"x86-64 Linux, this machine's CPU ({_host_cpu()})", ()),
        _x86("x86-generic", "x86-64", "x86-64 Linux, baseline SSE2 (runs on any x86-64)", ()),
        _x86("x86-avx2", "haswell", "x86-64 Linux with AVX2 + FMA (Haswell and newer)",
             ("avx2", "fma")),
        _x86("x86-avx512", "skylake-avx512", "x86-64 Linux with AVX-512 (Skylake-SP and newer)",
             ("avx512f", "avx512bw", "avx512vl")),
        _x86("x86-vnni", "cascadelake", "x86-64 Linux with AVX-512 VNNI int8 dot products",
             ("avx512f", "avx512_vnni")),
        _arm("arm", None, ["+neon"], "aarch64 Linux, NEON (any ARMv8-A core)"),
        _arm("arm-a53", "cortex-a53", ["+neon"], "aarch64 Linux, Cortex-A53 (Raspberry Pi 3, ...)"),
        _arm("arm-a72", "cortex-a72", ["+neon"], "aarch64 Linux, Cortex-A72 (Raspberry Pi 4, ...)"),
        _arm("arm-a76", "cortex-a76", ["+neon", "+dotprod"],
             "aarch64 Linux, Cortex-A76 with dot product (Raspberry Pi 5, ...)"),
        _arm("arm-n1", "neoverse-n1", ["+neon", "+dotprod"],
             "aarch64 Linux, Neoverse-N1 servers (Graviton2, Ampere Altra)"),
    ]
    cuda_arches = {
        "sm_75": "Turing (T4, RTX 20xx)",
        "sm_80": "Ampere (A100)",
        "sm_86": "Ampere (RTX 30xx, A10)",
        "sm_89": "Ada (L4, RTX 40xx)",
        "sm_90": "Hopper (H100, H200)",
    }
    detected = _cuda_arch()
    default_arch = detected or "sm_80"
    targets.append(_cuda("cuda", default_arch,
                         f"NVIDIA GPU, {default_arch} ("
                         + ("this machine's GPU" if detected else "no GPU here; pick a preset") + ")"))
    for arch, what in cuda_arches.items():
        targets.append(_cuda(f"cuda-{arch.replace('_', '')}", arch, f"NVIDIA GPU {arch}: {what}"))
    return {t.name: t for t in targets}


@functools.cache
def registry() -> dict[str, Target]:
    return _build_registry()


def names() -> list[str]:
    return list(registry())


def get(name: str | Target) -> Target:
    """Look a target up by name; unknown names raise a :class:`TargetError` listing the known ones."""
    if isinstance(name, Target):
        return name
    targets = registry()
    if name in targets:
        return targets[name]
    raise TargetError(f"unknown target {name!r}; known targets: {', '.join(targets)} "
                      "(see `mmopt targets`)")


def require_toolchain(target: Target) -> None:
    """Raise a one-line :class:`TargetError` if the target's cross compiler is missing."""
    if target.cross_compiler and shutil.which(target.cross_compiler) is None:
        raise TargetError(
            f"target {target.name} needs the cross compiler {target.cross_compiler}, which is not "
            f"installed; install Debian's {target.cross_package} "
            f"(apt-get install {target.cross_package})"
        )
