"""An emulated arm64 device: an aarch64 Python with TVM's aarch64 runtime, run under qemu-user.

ARM artifacts then run (and are checked, and can be tuned) on an x86 machine through the same farm
path as real devices. Emulated timings are not ARM timings: use it for correctness, not speed.

Preparation happens once and is cached under ``$MMOPT_CACHE/arm64-root`` (default
``~/.cache/mmopt/arm64-root``):

1. Debian arm64 packages for ``python3.11`` and the shared libraries it and TVM's runtime load are
   resolved and downloaded with ``apt-get`` (its own package lists under the cache, the host's
   apt sources), and unpacked with ``dpkg -x``;
2. the aarch64 wheels of apache-tvm / apache-tvm-ffi (the versions installed here, so host compiler
   and device runtime agree), numpy and the rest are installed with ``pip install --target
   --platform manylinux_2_28_aarch64 --only-binary=:all:``; TVM's 250 MB compiler library is
   removed (the device loads the runtime only: ``TVM_USE_RUNTIME_LIB=1``);
3. a smoke test imports tvm under qemu; a stamp file records the versions, so a TVM upgrade on the
   host prepares a new root.

Needs ``qemu-aarch64`` (Debian ``qemu-user``), ``apt-get``/``dpkg`` (Debian or Ubuntu) and network
access to the package registries; ``scripts/setup-arm-emulation.sh`` installs qemu-user.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mmopt.errors import MmoptError
from mmopt.tuning.farm import emulated_key, format_address

logger = logging.getLogger(__name__)

#: Python minor version of the emulated interpreter (Debian bookworm's python3.11).
PYTHON = "3.11"
#: Debian packages whose dependency closure forms the root filesystem.
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1")
#: Packages of that closure a Python interpreter never loads (pulled in by dpkg/mime-support).
DEBIAN_EXCLUDE_PREFIXES = ("perl", "libperl", "dpkg", "tar", "install-info", "mailcap",
                           "mime-support")
#: Python packages installed for the device (TVM and apache-tvm-ffi are pinned to the host's).
WHEELS = ("numpy", "ml_dtypes", "typing_extensions", "psutil", "cloudpickle", "tornado")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")
#: Default tracker key of the emulated device: the ARM targets' rpc key (``arm64``, see
#: :mod:`mmopt.targets`; a test checks they agree) with the emulated suffix, so ``mmopt tune
#: --target arm --farm ...`` finds it when no real device is there
#: (:func:`mmopt.tuning.farm.choose_key`).
DEFAULT_KEY = emulated_key("arm64")
STAMP = ".mmopt-arm64-root.json"
QEMU_CANDIDATES = ("qemu-aarch64", "qemu-aarch64-static")
SETUP_HINT = "run scripts/setup-arm-emulation.sh (installs Debian's qemu-user)"


def cache_root() -> Path:
    from mmopt.zoo import cache_dir

    return cache_dir() / "arm64-root"


def qemu_binary() -> str:
    for name in QEMU_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise MmoptError(f"the emulated arm64 device needs qemu-aarch64, which is not installed; "
                     f"{SETUP_HINT}")


def _versions() -> dict[str, str]:
    return {"apache-tvm": metadata.version("apache-tvm"),
            "apache-tvm-ffi": metadata.version("apache-tvm-ffi"), "python": PYTHON}


def guest_environment_fixes() -> list[str]:
    """qemu-user options that keep this machine's ``LD_PRELOAD`` (x86-64 libraries: a profiler, an
    allocator, :mod:`mmopt.runtime.cpu_mask`) from the aarch64 guest, whose loader would print an
    error line for each into the program's output."""
    return ["-U", "LD_PRELOAD"] if os.environ.get("LD_PRELOAD") else []


@dataclass
class Arm64Root:
    """A prepared aarch64 root: ``command(args)`` runs its Python under qemu."""

    path: Path

    @property
    def site(self) -> Path:
        return self.path / "site-packages"

    @property
    def python(self) -> Path:
        return self.path / "usr" / "bin" / f"python{PYTHON}"

    @property
    def wrapper(self) -> Path:
        """A shell script that runs the emulated Python (used as its ``sys.executable``)."""
        return self.path / "python-qemu"

    def environment(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.site), "TVM_USE_RUNTIME_LIB": "1",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}

    def command(self, args: list[str]) -> list[str]:
        cmd = [qemu_binary(), "-L", str(self.path), *guest_environment_fixes()]
        for key, value in self.environment().items():
            cmd += ["-E", f"{key}={value}"]
        return cmd + [str(self.python), *args]

    def is_ready(self) -> bool:
        stamp = self.path / STAMP
        try:
            return json.loads(stamp.read_text())["versions"] == _versions()
        except (OSError, ValueError, KeyError):
            return False


# --------------------------------------------------------------------------------------------------
# preparation


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 1800) -> str:
    logger.debug("$ %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError as exc:
        raise MmoptError(f"preparing the arm64 root: {what}: {cmd[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise MmoptError(f"preparing the arm64 root: {what} took more than {timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise MmoptError(f"preparing the arm64 root: {what} failed (exit {proc.returncode}): "
                         + " | ".join(tail))
    return proc.stdout


def _apt_options(state: Path) -> list[str]:
    """apt options that read the host's sources but keep lists, caches and status under ``state``
    and resolve for arm64 only (nothing on the host is touched)."""
    status = state / "status"
    return [
        "-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
        "-o", f"Dir::State={state}", "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::State::status={status}", "-o", f"Dir::Cache={state / 'cache'}",
        "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
        "-o", "Acquire::Retries=3", "-q",
    ]


def _dependency_closure(apt: list[str], packages: tuple[str, ...]) -> list[str]:
    out = _run(["apt-cache", *apt, "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages],
               "resolving Debian arm64 dependencies")
    names = set()
    for line in out.splitlines():
        if line and not line[0].isspace() and not line.startswith("<"):
            names.add(line.strip().split(":")[0])
    return sorted(n for n in names if not n.startswith(DEBIAN_EXCLUDE_PREFIXES))


def _download_debs(state: Path, debs: Path, progress: Callable[[str], None]) -> list[Path]:
    apt = _apt_options(state)
    for sub in ("lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    progress("updating Debian arm64 package lists")
    _run(["apt-get", *apt, "update"], "apt-get update (arm64)")
    names = _dependency_closure(apt, DEBIAN_PACKAGES)
    progress(f"downloading {len(names)} Debian arm64 packages")
    debs.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", *apt, "download", *names], "apt-get download (arm64)", cwd=debs)
    # The folder is a download cache kept between preparations: take only this closure's files.
    return sorted(p for p in debs.glob("*.deb") if p.name.split("_", 1)[0] in names)


def _install_wheels(site: Path, progress: Callable[[str], None]) -> None:
    versions = _versions()
    requirements = [f"apache-tvm=={versions['apache-tvm']}",
                    f"apache-tvm-ffi=={versions['apache-tvm-ffi']}", *WHEELS]
    progress("downloading aarch64 wheels (apache-tvm, numpy, ...)")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-warn-conflicts", "--no-compile", "--target", str(site), "--only-binary=:all:",
           "--python-version", PYTHON, "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    _run(cmd + requirements, "pip install (aarch64 wheels)")
    # The device only loads TVM's runtime; the compiler library is 250 MB of unused LLVM.
    for lib in site.glob("tvm/lib/libtvm_compiler*.so"):
        lib.unlink()


def _write_wrapper(root: Arm64Root) -> None:
    lines = ["#!/bin/sh", "# Runs the emulated aarch64 Python (written by mmopt.tuning.emulate)",
             "exec " + " ".join(f"'{part}'" for part in root.command([])) + ' "$@"', ""]
    root.wrapper.write_text("\n".join(lines))
    root.wrapper.chmod(0o755)


def prepare(path: Path | None = None, *, force: bool = False,
            progress: Callable[[str], None] | None = None) -> Arm64Root:
    """Prepare (once) the aarch64 root at ``path`` (default :func:`cache_root`) and return it.

    Safe against interruption and concurrent use: it is assembled beside the final directory and
    renamed into place only when the smoke test passed.
    """
    step = progress or (lambda msg: logger.info("%s", msg))
    root = Arm64Root(Path(path) if path else cache_root())
    if root.is_ready() and not force:
        return root
    qemu_binary()  # fail early, before downloading anything
    for tool in ("apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            raise MmoptError(f"preparing the arm64 root needs {tool} (a Debian or Ubuntu host)")
    started = time.monotonic()
    root.path.parent.mkdir(parents=True, exist_ok=True)
    work = root.path.with_name(f"{root.path.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    # Package lists and .debs are kept between attempts (they are only a download cache).
    state = root.path.with_name(f"{root.path.name}.apt")
    try:
        staged = Arm64Root(work)
        debs = _download_debs(state, state / "debs", step)
        step(f"unpacking {len(debs)} packages")
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(work)], f"dpkg -x {deb.name}")
        for unused in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"):
            shutil.rmtree(work / unused, ignore_errors=True)
        _install_wheels(staged.site, step)
        # Bytecode is architecture-independent: compiling it here with this machine's Python 3.11
        # saves the emulated interpreter from recompiling the standard library and TVM on every
        # start (several seconds under qemu).
        if f"{sys.version_info[0]}.{sys.version_info[1]}" == PYTHON:
            step("compiling bytecode")
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                            str(work / "usr" / "lib" / f"python{PYTHON}"), str(staged.site)],
                           capture_output=True, timeout=900, check=False)  # a few test files fail
        _write_wrapper(staged)
        step("checking the emulated Python (import tvm under qemu)")
        out = _run(staged.command(["-c", "import platform, tvm; "
                                   "print(platform.machine(), tvm.__version__)"]),
                   "smoke test under qemu", timeout=600)
        if "aarch64" not in out:
            raise MmoptError(f"preparing the arm64 root: smoke test printed {out.strip()!r}")
        (work / STAMP).write_text(json.dumps({"versions": _versions(),
                                              "seconds": round(time.monotonic() - started, 1)}))
        # Move into place. The wrapper names the final path, so write it again after the rename.
        if root.path.exists():
            shutil.rmtree(root.path)
        work.rename(root.path)
        _write_wrapper(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step(f"arm64 root ready at {root.path} ({time.monotonic() - started:.0f}s)")
    return root


# --------------------------------------------------------------------------------------------------
# serving


def device_command(root: Arm64Root, tracker: tuple[str, int], key: str = DEFAULT_KEY,
                   host: str = "127.0.0.1", port: int = 9090, *, listen_unix: str | None = None,
                   tracker_unix: str | None = None,
                   advertise: tuple[str, int] | None = None) -> list[str]:
    """The command line that serves the emulated device (``device_server.py`` under qemu; it
    reports itself as emulated). ``listen_unix``/``tracker_unix``/``advertise``: behind the TLS
    relays of a farm with a secret (see :func:`mmopt.tuning.farm.serve_behind_tls`)."""
    script = Path(__file__).with_name("device_server.py")
    args = [str(script), "--tracker", format_address(tracker), "--key", key, "--emulated"]
    if listen_unix:
        args += ["--listen-unix", listen_unix, "--tracker-unix", str(tracker_unix),
                 "--advertise", format_address(advertise)]
    else:
        args += ["--host", host, "--port", str(port)]
    return root.command(args)


def serve(tracker: tuple[str, int], key: str = DEFAULT_KEY, host: str = "127.0.0.1",
          port: int = 9090, progress: Callable[[str], None] | None = None, *, secret=None,
          insecure: bool = False, advertise: str | None = None) -> int:
    """Prepare if needed, then serve the emulated device in the foreground until interrupted.

    ``secret``/``insecure``/``advertise``: as for :func:`mmopt.tuning.farm.serve_device` (with a
    farm secret, this process holds the TLS endpoint and the emulated server sits behind it).
    Returns the server's exit status.
    """
    from mmopt.tuning import farm as _farm
    from mmopt.tuning.secure import resolve_secret

    secret = resolve_secret(secret)
    _farm.check_listen(host, secret, insecure, f"emulated device {key}")
    root = prepare(progress=progress)
    if secret is not None:
        return _farm.serve_behind_tls(
            lambda listen, link, public: device_command(root, tracker, key, listen_unix=listen,
                                                        tracker_unix=link, advertise=public),
            tracker, host, port, 9199, secret, advertise, f"emulated device {key}")
    cmd = device_command(root, tracker, key, host, port)
    logger.debug("$ %s", " ".join(cmd))
    # Same process group as this process: whoever stops the group stops the emulated device too.
    proc = subprocess.Popen(cmd)

    def _terminate(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
