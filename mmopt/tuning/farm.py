"""The device farm: TVM's RPC tracker and device servers, as mmopt uses them.

A *tracker* (``mmopt farm tracker``) keeps a queue of free devices per key. A *device*
(``mmopt farm device --key KEY``, or the emulated ``mmopt farm emulate arm64``) registers with it
and serves one session at a time. Tuning, ``run --device`` and friends ask the tracker for a device
of a key, upload a library, run it and release the device.

Everything binds to loopback unless told otherwise: TVM's RPC has no authentication and lets any
client upload and run code. A tracker or device refuses to listen on any other address unless it
holds a *farm secret* (:mod:`mmopt.tuning.secure`: mutual TLS in front of every socket, clients
included), or ``insecure`` is asked for. The secret comes from ``--farm-secret DIR`` or
``$MMOPT_FARM_SECRET``; every function here that takes ``secret`` reads that variable when it is
None.

Keys: a device of key ``K`` emulated under qemu registers as ``K-qemu`` (:func:`emulated_key`;
``mmopt farm emulate arm64`` registers ``arm64-qemu``, the emulation of the ARM targets' key
``arm64``). :func:`choose_key` falls back to the emulated key when no real device is there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmopt.errors import MmoptError
from mmopt.tuning import secure
from mmopt.tuning.secure import FarmSecret, resolve_secret

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TRACKER_PORT = 9190
DEFAULT_DEVICE_PORT = 9090
#: How long a client waits for a free device of its key before giving up.
DEFAULT_WAIT_S = 120.0
READY_TRACKER = "mmopt-tracker-ready"
#: Suffix of the key of an emulated device (``arm64`` -> ``arm64-qemu``).
EMULATED_SUFFIX = "-qemu"
#: A device whose tracker link has been failing this long gives up (TVM's own server: 60 s).
TRACKER_LOST_S = 60.0


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


def emulated_key(key: str) -> str:
    """The key an emulated device of ``key`` registers under."""
    return key if is_emulated_key(key) else f"{key}{EMULATED_SUFFIX}"


def is_emulated_key(key: str | None) -> bool:
    return bool(key) and key.endswith(EMULATED_SUFFIX)


def check_listen(host: str, secret: FarmSecret | None, insecure: bool, what: str) -> None:
    """Refuse to listen on a non-loopback ``host`` without a farm secret unless ``insecure``
    (then warn)."""
    if secret is not None or secure.is_loopback(host):
        return
    if not insecure:
        raise FarmError(f"{what}: refusing to listen on {host} without a farm secret: TVM RPC "
                        "has no authentication, so anyone who reaches the port could run code on "
                        "this machine. Create a secret once with `mmopt farm init-secret DIR`, "
                        "copy DIR to every machine of the farm and pass --farm-secret DIR (or set "
                        f"{secure.ENV}); or pass --insecure on a network you trust entirely")
    logger.warning("%s: listening on %s without a farm secret (--insecure): anyone who can "
                   "reach this port can run code on this machine", what, host)


# --------------------------------------------------------------------------------------------------
# tracker


def serve_tracker(host: str = DEFAULT_HOST, port: int = DEFAULT_TRACKER_PORT,
                  port_end: int | None = None, *, secret=None, insecure: bool = False) -> None:
    """Run a tracker in this process until interrupted (``mmopt farm tracker``).

    Binds the first free port in ``[port, port_end)`` (``port_end`` defaults to ``port + 1``: the
    port asked for, or an error) and prints ``mmopt-tracker-ready addr=HOST:PORT``. ``port=0`` lets
    the system choose. With a farm secret, that port is a TLS endpoint and TVM's tracker listens on
    a Unix socket in a private directory behind it. ``secret``: see the module docstring.
    """
    import asyncio

    from tvm.rpc import base
    from tvm.rpc.tracker import TrackerServerHandler

    secret = resolve_secret(secret)
    check_listen(host, secret, insecure, "tracker")
    try:
        sock = secure.bind_listener(host, port, port_end)
    except OSError as exc:
        raise FarmError(f"tracker: cannot listen on {host}:{port} ({exc.strerror or exc}); is "
                        "another tracker running? choose another --port") from exc
    bound = sock.getsockname()[1]
    private = relays = None
    if secret is not None:
        private = secure.private_directory("mmopt-tracker-")
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        inner.bind(str(private / "tracker.sock"))
        inner.listen(64)
        relays = secure.RelayLoop("mmopt-tracker-tls")
        secure.Front(relays, sock, secret, str(private / "tracker.sock"), "tracker")
        sock = inner
    asyncio.set_event_loop(asyncio.new_event_loop())
    handler = TrackerServerHandler(sock, base.random_key("tracker"))
    print(f"{READY_TRACKER} addr={host}:{bound} tls={'on' if secret else 'off'} "
          f"pid={os.getpid()}", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up on SIGTERM too
    try:
        handler.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(Exception):
            handler.stop()
        if relays is not None:
            relays.close()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _open_tracker(address: tuple[str, int], secret: FarmSecret | None,
                  timeout: float = 10.0) -> socket.socket:
    """A connection to the tracker, handshake done (TLS with a secret); :class:`FarmError` with
    one line saying what went wrong."""
    from tvm.rpc import base

    where = format_address(address)
    try:
        if secret is not None:
            sock = secure.connect_tls(address, secret, timeout)
        else:
            sock = socket.create_connection(address, timeout=timeout)
    except ssl.SSLCertVerificationError as exc:
        raise FarmError(f"tracker {where}: its certificate is not from this farm secret "
                        f"({secret.path}, CA {secret.fingerprint}): the tracker and this client "
                        f"hold different farm secrets ({exc.verify_message})") from exc
    except ssl.SSLError as exc:
        raise FarmError(f"tracker {where}: TLS handshake failed ({exc.reason or exc}); was it "
                        "started with a farm secret (--farm-secret)?") from exc
    except OSError as exc:
        raise FarmError(f"no tracker answers at {where} ({exc}); start one with "
                        f"`mmopt farm tracker --port {address[1]}`") from exc
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        if secret is not None:
            reason = exc.reason if isinstance(exc, ssl.SSLError) else exc
            raise FarmError(f"tracker {where} refused this client ({reason}): the tracker and "
                            f"this client hold different farm secrets (this one: "
                            f"{secret.path}, CA {secret.fingerprint})") from exc
        raise FarmError(f"tracker {where} closed the connection without answering, as a "
                        "tracker with a farm secret does to clients without it (--farm-secret "
                        f"DIR or {secure.ENV})") from exc
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise FarmError(f"{where} is not a TVM RPC tracker")
    return sock


def connect_tracker(address: tuple[str, int], timeout: float = 10.0, *, secret=None):
    """A connection to the tracker (a socket, the handshake done) to exchange
    ``tvm.rpc.base.sendjson``/``recvjson`` messages; a :class:`FarmError` (one line) if nothing
    answers or the tracker refuses this client."""
    return _open_tracker(address, resolve_secret(secret), timeout)


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


def status(address: tuple[str, int], *, secret=None) -> FarmStatus:
    """Keys, free/busy devices and pending requests, as the tracker sees them."""
    from tvm.rpc import base

    sock = connect_tracker(address, secret=secret)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        reply = base.recvjson(sock)
    except (OSError, ValueError) as exc:
        raise FarmError(f"tracker {format_address(address)} did not answer ({exc})") from exc
    finally:
        with contextlib.suppress(Exception):
            sock.close()
    if not isinstance(reply, list) or reply[0] != base.TrackerCode.SUCCESS:
        raise FarmError(f"tracker {format_address(address)} answered {reply!r} to a summary")
    summary = reply[1]
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


def choose_key(address: tuple[str, int], key: str, *, fallback_emulated: bool = False,
               secret=None) -> tuple[str, int, str | None]:
    """``(key, devices, note)``: ``key`` if the tracker has devices of it; else, with
    ``fallback_emulated``, the emulated key (:func:`emulated_key`) if that has devices, with a note
    saying so; else a :class:`FarmError` listing the keys there."""
    farm = status(address, secret=secret)
    count = farm.devices(key)
    if count:
        return key, count, None
    emulated = emulated_key(key)
    if fallback_emulated and emulated != key and farm.devices(emulated):
        return emulated, farm.devices(emulated), (
            f"no real {key!r} device at tracker {farm.tracker}; measuring on the emulated "
            f"device(s) {emulated!r} instead: emulated timings, not {key} hardware timings "
            "(the records are kept apart; compile applies them only with "
            "--allow-emulated-records)")
    present = ", ".join(f"{k} ({v.devices})" for k, v in farm.keys.items() if v.devices)
    hint = ""
    if emulated != key and not farm.devices(emulated) and key == _arm_key():
        hint = f"; an emulated one registers as {emulated!r} (`mmopt farm emulate arm64`)"
    elif emulated != key and farm.devices(emulated):
        hint = f"; {emulated!r} is an emulated one: ask for it with --key {emulated}"
    raise FarmError(f"no device with key {key!r} is registered at tracker {farm.tracker}"
                    + (f"; keys there: {present}" if present else "; it has no devices")
                    + hint + " (see `mmopt farm status`)")


def _arm_key() -> str | None:
    from mmopt import targets

    return targets.get("arm").rpc_key


def require_devices(address: tuple[str, int], key: str, *, secret=None) -> int:
    """Number of devices registered under ``key``; a :class:`FarmError` listing the keys if none."""
    return choose_key(address, key, secret=secret)[1]


# --------------------------------------------------------------------------------------------------
# sessions


def request_session(address: tuple[str, int], key: str, *, wait_s: float = DEFAULT_WAIT_S,
                    session_timeout: float = 0, poll_s: float = 2.0, secret=None):
    """An ``RPCSession`` on a device of ``key``, waiting at most ``wait_s`` for one to be free.

    TVM's ``TrackerSession.request`` waits forever when no device of the key is left; this one
    gives up with a :class:`FarmError` as soon as the tracker has no device of the key registered,
    or after ``wait_s``. With a farm secret, both the tracker connection and the session are TLS.
    """
    from tvm import rpc
    from tvm.rpc import base

    secret = resolve_secret(secret)
    deadline = time.monotonic() + wait_s
    sock = _open_tracker(address, secret)
    try:
        sock.settimeout(None)
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        while True:
            ready, _, _ = select.select([sock], [], [], poll_s)
            if ready:
                break
            if status(address, secret=secret).devices(key) == 0:
                raise FarmError(f"no device with key {key!r} is left at tracker "
                                f"{format_address(address)}")
            if time.monotonic() > deadline:
                raise FarmError(f"no device with key {key!r} became free within {wait_s:.0f}s")
        value = base.recvjson(sock)
    except OSError as exc:
        raise FarmError(f"tracker {format_address(address)} dropped the request ({exc})") from exc
    finally:
        sock.close()
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise FarmError(f"tracker {format_address(address)} refused the request: {value}")
    url, port, matchkey = value[1]
    try:
        if secret is not None:
            return secure.open_session(url, port, matchkey, session_timeout, secret, rpc.connect)
        return rpc.connect(url, port, matchkey, session_timeout)
    except secure.SecretError as exc:
        raise FarmError(exc.message) from exc
    except (OSError, RuntimeError) as exc:
        raise FarmError(f"device {url}:{port} (key {key!r}) did not accept the session "
                        f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})") \
            from exc


def device_info(session) -> dict:
    """What an mmopt device says about itself (``mmopt.device.info``: ``emulated``, ``machine``,
    ``tvm``); ``{}`` for a device that does not say (e.g. TVM's own server)."""
    try:
        function = session.get_function("mmopt.device.info")
        return dict(json.loads(str(function())))
    except Exception:  # noqa: BLE001 - an older or foreign device: nothing known
        return {}


# --------------------------------------------------------------------------------------------------
# serving a device


def serve_device(tracker: tuple[str, int], key: str, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_DEVICE_PORT, *, port_end: int = 9199, quiet: bool = False,
                 threads: int | None = None, secret=None, insecure: bool = False,
                 advertise: str | None = None) -> int:
    """Serve this machine as a device of ``key`` until interrupted (``mmopt farm device``).

    Without a farm secret, TVM's server runs in this process on ``host:port``. With one, this
    process holds the TLS endpoint on ``host:port`` and the tracker link, and runs the server as a
    child process on a Unix socket behind them (:func:`serve_behind_tls`). Returns an exit status.
    """
    from mmopt.tuning import device_server

    secret = resolve_secret(secret)
    check_listen(host, secret, insecure, "device")
    if threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
    else:
        from mmopt.runtime.threads import default_thread_count

        default_thread_count()  # the physical cores, as a model deployed here gets
    if secret is None:
        device_server.serve(tracker, key, host, port, port_end, quiet)  # exits the process
        return 0

    def command(listen: str, link: str, public: tuple[str, int]) -> list[str]:
        return [sys.executable, device_server.__file__, "--tracker", format_address(tracker),
                "--key", key, "--listen-unix", listen, "--tracker-unix", link,
                "--advertise", format_address(public)] + (["--quiet"] if quiet else [])

    return serve_behind_tls(command, tracker, host, port, port_end, secret, advertise,
                            f"device {key}")


def serve_behind_tls(command: Callable[[str, str, tuple[str, int]], list[str]],
                     tracker: tuple[str, int], host: str, port: int, port_end: int,
                     secret: FarmSecret, advertise: str | None, what: str) -> int:
    """Run a device server (``command(listen_unix, tracker_unix, public_address)``, a
    ``device_server.py`` command line) behind this process's TLS relays until it ends or this
    process is interrupted; returns its exit status.

    The TLS endpoint listens on the first free port of ``[port, port_end)`` of ``host``; the
    tracker hands clients ``advertise`` (default: ``host``, or for a wildcard host this machine's
    address toward the tracker) with that port. The server listens and reaches the tracker only
    through Unix sockets in a directory only this user can enter.
    """
    private = secure.private_directory("mmopt-device-")
    relays = secure.RelayLoop("mmopt-device-tls")
    proc = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            sock = secure.bind_listener(host, port, port_end)
        except OSError as exc:
            raise FarmError(f"{what}: cannot listen on {host}:{port}..{port_end - 1} "
                            f"({exc.strerror or exc})") from exc
        listen = str(private / "device.sock")
        front = secure.Front(relays, sock, secret, listen, what)
        link = secure.Link(relays, str(private / "tracker.sock"), tracker, secret)
        public_host = advertise or (host if host not in ("", "0.0.0.0", "::")
                                    else secure.outward_address(tracker))
        proc = subprocess.Popen(command(listen, link.path, (public_host, front.address[1])))
        while proc.poll() is None:
            time.sleep(0.5)
            if link.failing_for() > TRACKER_LOST_S:
                logger.error("%s: the tracker at %s has been unreachable for %.0fs (%s); "
                             "stopping", what, format_address(tracker), link.failing_for(),
                             link.state.get("error"))
                return 1
        return proc.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        relays.close()
        shutil.rmtree(private, ignore_errors=True)


def _raise_interrupt(_signum, _frame):
    raise KeyboardInterrupt


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


def _secret_args(secret) -> list[str]:
    resolved = resolve_secret(secret) if secret is not None else None
    return ["--farm-secret", str(resolved.path)] if resolved else []


def start_tracker(log_dir: Path, host: str = DEFAULT_HOST, port: int = 0,
                  timeout: float = 60.0, *, secret=None) -> FarmProcess:
    """Start ``mmopt farm tracker`` as a subprocess; returns once it listens (``port=0``: any).
    ``secret``: a farm secret (directory) for it; None: the environment's, if any."""
    cmd = [sys.executable, "-m", "mmopt.cli.main", "farm", "tracker", "--host", host,
           "--port", str(port), *_secret_args(secret)]
    return _start("tracker", cmd, READY_TRACKER, log_dir, timeout)


def start_device(log_dir: Path, tracker: tuple[str, int], key: str, name: str | None = None,
                 host: str = DEFAULT_HOST, port: int = DEFAULT_DEVICE_PORT,
                 threads: int | None = None, timeout: float = 120.0, *,
                 secret=None) -> FarmProcess:
    """Start ``mmopt farm device`` as a subprocess; returns once it is registered."""
    from mmopt.tuning.device_server import READY

    cmd = [sys.executable, "-m", "mmopt.cli.main", "farm", "device", "--key", key, "--tracker",
           format_address(tracker), "--host", host, "--port", str(port), *_secret_args(secret)]
    if threads:
        cmd += ["--threads", str(threads)]
    process = _start(name or f"device-{key}", cmd, READY, log_dir, timeout)
    _wait_registered(tracker, key, process, timeout, secret)
    return process


def start_emulated_device(log_dir: Path, tracker: tuple[str, int], key: str | None = None,
                          host: str = DEFAULT_HOST, port: int = DEFAULT_DEVICE_PORT,
                          timeout: float = 600.0, *, secret=None) -> FarmProcess:
    """Start ``mmopt farm emulate arm64`` as a subprocess (prepares the root first if needed);
    ``key`` defaults to the emulated ARM key (``arm64-qemu``)."""
    from mmopt.tuning.device_server import READY
    from mmopt.tuning.emulate import DEFAULT_KEY

    key = key or DEFAULT_KEY
    cmd = [sys.executable, "-m", "mmopt.cli.main", "farm", "emulate", "arm64", "--tracker",
           format_address(tracker), "--key", key, "--host", host, "--port", str(port),
           *_secret_args(secret)]
    process = _start(f"emulated-{key}", cmd, READY, log_dir, timeout)
    _wait_registered(tracker, key, process, timeout, secret)
    return process


def _wait_registered(tracker: tuple[str, int], key: str, process: FarmProcess,
                     timeout: float, secret=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.address and process.address[1] and any(
                a.endswith(f":{process.address[1]}")
                for a in status(tracker, secret=secret).keys.get(key, KeyStatus(key)).addresses):
            return
        if not process.alive():
            break
        time.sleep(0.2)
    process.stop()
    raise FarmError(f"{process.name} did not register with the tracker within {timeout:.0f}s")


@contextlib.contextmanager
def local_farm(log_dir: Path, devices: dict[str, int] | None = None, *, emulated: str | None = None,
               threads: int | None = None,
               secret=None) -> Iterator[tuple[FarmProcess, list[FarmProcess]]]:
    """A tracker plus devices on loopback, all stopped (process groups killed) on exit.

    ``devices``: ``{key: count}`` of device servers for this machine; ``emulated``: key of an
    emulated arm64 device to add; ``secret``: run them all with this farm secret.
    """
    started: list[FarmProcess] = []
    tracker = start_tracker(log_dir, secret=secret)
    try:
        for key, count in (devices or {}).items():
            for i in range(count):
                started.append(start_device(log_dir, tracker.address, key, f"device-{key}-{i}",
                                            threads=threads, secret=secret))
        if emulated:
            started.append(start_emulated_device(log_dir, tracker.address, emulated,
                                                 secret=secret))
        yield tracker, started
    finally:
        for process in reversed(started):
            process.stop()
        tracker.stop()
