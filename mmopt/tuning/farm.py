"""The device farm: TVM's RPC tracker and device servers, as mmopt uses them.

A *tracker* (``mmopt farm tracker``) keeps a queue of free devices per key. A *device*
(``mmopt farm device --key KEY``, or the emulated ``mmopt farm emulate arm64``) registers with it
and serves one session at a time. Tuning, ``run --device`` and friends ask the tracker for a device
of a key, upload a library, run it and release the device.

Everything binds to loopback unless told otherwise: TVM's RPC has no authentication and lets any
client upload and run code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TRACKER_PORT = 9190
DEFAULT_DEVICE_PORT = 9090
#: How long a client waits for a free device of its key before giving up.
DEFAULT_WAIT_S = 120.0
READY_TRACKER = "mmopt-tracker-ready"


class FarmError(MmoptError):
    """The tracker is unreachable, or no device of the requested key is available."""


def parse_address(text: str, what: str = "--farm") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``, with a one-line error naming the option."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FarmError(f"{what} {text!r}: expected HOST:PORT, "
                        f"e.g. 127.0.0.1:{DEFAULT_TRACKER_PORT}")
    return host, int(port)


def format_address(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


# --------------------------------------------------------------------------------------------------
# tracker


def serve_tracker(host: str = DEFAULT_HOST, port: int = DEFAULT_TRACKER_PORT,
                  port_end: int | None = None) -> None:
    """Run a tracker in this process until interrupted (``mmopt farm tracker``).

    Binds the first free port in ``[port, port_end)`` (``port_end`` defaults to ``port + 1``: the
    port asked for, or an error) and prints ``mmopt-tracker-ready addr=HOST:PORT``. ``port=0`` lets
    the system choose.
    """
    import asyncio

    from tvm.rpc import base
    from tvm.rpc.tracker import TrackerServerHandler

    sock = socket.socket(base.get_addr_family((host, port)), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound = None
    for candidate in range(port, port_end or port + 1):
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            if port_end is None or candidate == port_end - 1:
                sock.close()
                raise FarmError(f"tracker: cannot listen on {host}:{candidate} ({exc.strerror}); "
                                "is another tracker running? choose another --port") from exc
            continue
        bound = sock.getsockname()[1]
        break
    sock.listen(64)
    asyncio.set_event_loop(asyncio.new_event_loop())
    handler = TrackerServerHandler(sock, base.random_key("tracker"))
    print(f"{READY_TRACKER} addr={host}:{bound} pid={os.getpid()}", flush=True)
    try:
        handler.run()
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            handler.stop()


def connect_tracker(address: tuple[str, int], timeout: float = 10.0):
    """A ``tvm.rpc.TrackerSession``; a :class:`FarmError` (one line) if nothing answers."""
    from tvm import rpc

    try:
        probe = socket.create_connection(address, timeout=timeout)
        probe.close()
        return rpc.connect_tracker(*address)
    except (OSError, RuntimeError) as exc:
        raise FarmError(f"no tracker answers at {format_address(address)} ({exc}); start one with "
                        f"`mmopt farm tracker --port {address[1]}`") from exc


# --------------------------------------------------------------------------------------------------
# status


@dataclass
class KeyStatus:
    key: str
    #: registered device servers (free + busy)
    devices: int = 0
    free: int = 0
    #: clients waiting for a device of this key
    pending: int = 0
    addresses: list[str] = field(default_factory=list)

    @property
    def busy(self) -> int:
        return max(self.devices - self.free, 0)

    def to_dict(self) -> dict:
        return {"key": self.key, "devices": self.devices, "free": self.free, "busy": self.busy,
                "pending": self.pending, "addresses": self.addresses}


@dataclass
class FarmStatus:
    tracker: str
    keys: dict[str, KeyStatus]

    def devices(self, key: str) -> int:
        return self.keys[key].devices if key in self.keys else 0

    def to_dict(self) -> dict:
        return {"tracker": self.tracker, "keys": [k.to_dict() for k in self.keys.values()]}


def status(address: tuple[str, int]) -> FarmStatus:
    """Keys, free/busy devices and pending requests, as the tracker sees them."""
    tracker = connect_tracker(address)
    try:
        summary = tracker.summary()
    except (OSError, RuntimeError) as exc:
        raise FarmError(f"tracker {format_address(address)} did not answer ({exc})") from exc
    finally:
        with contextlib.suppress(Exception):
            tracker.close()
    keys: dict[str, KeyStatus] = {}
    for info in summary.get("server_info", []):
        key = info.get("key", "")
        key = key.split(":", 1)[1] if ":" in key else key
        entry = keys.setdefault(key, KeyStatus(key))
        entry.devices += 1
        addr = info.get("addr")
        if addr:
            entry.addresses.append(f"{addr[0]}:{addr[1]}")
    for key, queue in summary.get("queue_info", {}).items():
        entry = keys.setdefault(key, KeyStatus(key))
        entry.free = int(queue.get("free", 0))
        entry.pending = int(queue.get("pending", 0))
    # A key whose devices all left stays in the tracker's queue map; show it only if it matters.
    keys = {k: v for k, v in sorted(keys.items()) if v.devices or v.pending}
    return FarmStatus(format_address(address), keys)


def require_devices(address: tuple[str, int], key: str) -> int:
    """Number of devices registered under ``key``; a :class:`FarmError` listing the keys if none."""
    farm = status(address)
    count = farm.devices(key)
    if count == 0:
        present = ", ".join(f"{k} ({v.devices})" for k, v in farm.keys.items() if v.devices)
        raise FarmError(f"no device with key {key!r} is registered at tracker {farm.tracker}"
                        + (f"; keys there: {present}" if present else "; it has no devices")
                        + " (see `mmopt farm status`)")
    return count


# --------------------------------------------------------------------------------------------------
# sessions


def request_session(address: tuple[str, int], key: str, *, wait_s: float = DEFAULT_WAIT_S,
                    session_timeout: float = 0, poll_s: float = 2.0):
    """An ``RPCSession`` on a device of ``key``, waiting at most ``wait_s`` for one to be free.

    TVM's ``TrackerSession.request`` waits forever when no device of the key is left; this one
    gives up with a :class:`FarmError` as soon as the tracker has no device of the key registered,
    or after ``wait_s``.
    """
    from tvm import rpc
    from tvm.rpc import base

    deadline = time.monotonic() + wait_s
    try:
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except OSError as exc:
        raise FarmError(f"no tracker answers at {format_address(address)} ({exc})") from exc
    try:
        if magic != base.RPC_TRACKER_MAGIC:
            raise FarmError(f"{format_address(address)} is not a TVM RPC tracker")
        sock.settimeout(None)
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        while True:
            ready, _, _ = select.select([sock], [], [], poll_s)
            if ready:
                break
            if status(address).devices(key) == 0:
                raise FarmError(f"no device with key {key!r} is left at tracker "
                                f"{format_address(address)}")
            if time.monotonic() > deadline:
                raise FarmError(f"no device with key {key!r} became free within {wait_s:.0f}s")
        value = base.recvjson(sock)
    finally:
        sock.close()
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise FarmError(f"tracker {format_address(address)} refused the request: {value}")
    url, port, matchkey = value[1]
    try:
        return rpc.connect(url, port, matchkey, session_timeout)
    except (OSError, RuntimeError) as exc:
        raise FarmError(f"device {url}:{port} (key {key!r}) did not accept the session "
                        f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})") \
            from exc


# --------------------------------------------------------------------------------------------------
# processes (used by tests and scripts to start a farm on loopback)


@dataclass
class FarmProcess:
    """A tracker or device server started as a subprocess in its own process group."""

    name: str
    proc: subprocess.Popen
    address: tuple[str, int] | None
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = 9, timeout: float = 10.0) -> None:
        """Signal the whole process group (the server and its session workers), then reap."""
        if self.proc.poll() is None or _group_alive(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL whatever is left, and wait until every member is gone."""
        self.kill(15, timeout)
        if not _wait_group_gone(self.proc.pid, 2.0):
            self.kill(9, timeout)
            _wait_group_gone(self.proc.pid, timeout)


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _start(name: str, cmd: list[str], ready: str, log_dir: Path, timeout: float,
           env: dict[str, str] | None = None) -> FarmProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed by the child's lifetime
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    handle.close()
    process = FarmProcess(name, proc, None, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith(ready):
                fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                if "addr" in fields:
                    process.address = parse_address(fields["addr"], name)
                return process
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    process.stop()
    tail = " | ".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:])
    raise FarmError(f"{name} did not start within {timeout:.0f}s"
                    + (f" (exit {proc.returncode})" if proc.returncode is not None else "")
                    + (f": {tail}" if tail else ""))


def start_tracker(log_dir: Path, host: str = DEFAULT_HOST, port: int = 0,
                  timeout: float = 60.0) -> FarmProcess:
    """Start ``mmopt farm tracker`` as a subprocess; returns once it listens (``port=0``: any)."""
    cmd = [sys.executable, "-m", "mmopt.cli.main", "farm", "tracker", "--host", host,
           "--port", str(port)]
    return _start("tracker", cmd, READY_TRACKER, log_dir, timeout)


def start_device(log_dir: Path, tracker: tuple[str, int], key: str, name: str | None = None,
                 host: str = DEFAULT_HOST, port: int = DEFAULT_DEVICE_PORT,
                 threads: int | None = None, timeout: float = 120.0) -> FarmProcess:
    """Start ``mmopt farm device`` as a subprocess; returns once it is registered."""
    from mmopt.tuning.device_server import READY

    cmd = [sys.executable, "-m", "mmopt.cli.main", "farm", "device", "--key", key, "--tracker",
           format_address(tracker), "--host", host, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    process = _start(name or f"device-{key}", cmd, READY, log_dir, timeout)
    _wait_registered(tracker, key, process, timeout)
    return process


def start_emulated_device(log_dir: Path, tracker: tuple[str, int], key: str = "arm64-qemu",
                          host: str = DEFAULT_HOST, port: int = DEFAULT_DEVICE_PORT,
                          timeout: float = 600.0) -> FarmProcess:
    """Start ``mmopt farm emulate arm64`` as a subprocess (prepares the root first if needed)."""
    from mmopt.tuning.device_server import READY

    cmd = [sys.executable, "-m", "mmopt.cli.main", "farm", "emulate", "arm64", "--tracker",
           format_address(tracker), "--key", key, "--host", host, "--port", str(port)]
    process = _start(f"emulated-{key}", cmd, READY, log_dir, timeout)
    _wait_registered(tracker, key, process, timeout)
    return process


def _wait_registered(tracker: tuple[str, int], key: str, process: FarmProcess,
                     timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.address and process.address[1] and any(
                a.endswith(f":{process.address[1]}")
                for a in status(tracker).keys.get(key, KeyStatus(key)).addresses):
            return
        if not process.alive():
            break
        time.sleep(0.2)
    process.stop()
    raise FarmError(f"{process.name} did not register with the tracker within {timeout:.0f}s")


@contextlib.contextmanager
def local_farm(log_dir: Path, devices: dict[str, int] | None = None, *, emulated: str | None = None,
               threads: int | None = None) -> Iterator[tuple[FarmProcess, list[FarmProcess]]]:
    """A tracker plus devices on loopback, all stopped (process groups killed) on exit.

    ``devices``: ``{key: count}`` of device servers for this machine; ``emulated``: key of an
    emulated arm64 device to add.
    """
    started: list[FarmProcess] = []
    tracker = start_tracker(log_dir)
    try:
        for key, count in (devices or {}).items():
            for i in range(count):
                started.append(start_device(log_dir, tracker.address, key, f"device-{key}-{i}",
                                            threads=threads))
        if emulated:
            started.append(start_emulated_device(log_dir, tracker.address, emulated))
        yield tracker, started
    finally:
        for process in reversed(started):
            process.stop()
        tracker.stop()
