"""A TVM RPC device server that registers itself with a tracker under a key.

This file is deliberately standalone: it imports only the standard library and ``tvm``, so the same
code serves the machine it runs on (``mmopt farm device``) and runs inside the emulated aarch64
Python (``mmopt farm emulate arm64``), where mmopt and its other dependencies are not installed:

    python device_server.py --tracker 127.0.0.1:9190 --key x86 [--host 127.0.0.1] [--port 9090]

TVM's ``python -m tvm.exec.rpc_server`` starts the server in a re-executed ``sys.executable``; under
qemu-user the host kernel cannot execute an aarch64 interpreter directly, so this runs TVM's listen
loop in this process instead. Each client session is a ``fork`` of this process (TVM's own design),
which works under qemu-user too.

When the server is up it prints one line, ``mmopt-device-ready key=KEY addr=HOST:PORT``, which
the process that started it waits for.

On a farm with a secret (:mod:`mmopt.tuning.secure`) the process that starts this one holds the
TLS endpoints, and this server talks only to Unix sockets in that process's private directory:
``--listen-unix PATH`` instead of a TCP port, ``--tracker-unix PATH`` to reach the tracker, and
``--advertise HOST:PORT``, the TLS endpoint the tracker hands to clients.

Every device answers the global function ``mmopt.device.info`` (a JSON object: ``emulated``,
``machine``, ``tvm``) so that clients can tell an emulated device (``--emulated``) from a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sys
import threading
import time

READY = "mmopt-device-ready"


def _address(text: str, what: str = "--tracker") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"device_server: {what} {text!r}: expected HOST:PORT")
    return host, int(port)


def _load_runtime_extras() -> None:
    """Load ``libtvm_runtime_extra`` when TVM runs as a runtime only (the emulated device).

    ``import tvm`` loads it only with the compiler; it holds functions a device needs, e.g.
    ``tvm.contrib.random.random_fill_for_measure``, with which MetaSchedule fills the inputs of
    the candidates it measures.
    """
    import ctypes
    from pathlib import Path

    import tvm
    from tvm import base

    if "tvm_runtime_extra" in base._LOADED_LIBS:  # noqa: SLF001
        return
    for path in sorted((Path(tvm.__file__).parent / "lib").glob("libtvm_runtime_extra.*")):
        library = ctypes.CDLL(str(path), ctypes.RTLD_LOCAL)
        base._LOADED_LIBS["tvm_runtime_extra"] = library  # noqa: SLF001
        return


def _register_info(emulated: bool) -> None:
    import tvm
    import tvm_ffi

    info = json.dumps({"emulated": bool(emulated), "machine": platform.machine(),
                       "tvm": str(tvm.__version__)})
    tvm_ffi.register_global_func("mmopt.device.info", lambda: info, override=True)


def _tracker_through_unix(path: str) -> None:
    """Make TVM's listen loop reach the tracker through the Unix socket ``path`` (the TLS link of
    the process that started this one). TVM reconnects at once after a failure; at most one
    attempt a second here."""
    from tvm.rpc import base

    last = [0.0]

    def connect(_addr, timeout=60, retry_period=1):
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(max(0.0, last[0] + 1.0 - time.monotonic()))
            last[0] = time.monotonic()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the tracker link {path} does not answer") from None
                time.sleep(retry_period)

    base.connect_with_retry = connect


def _listener(host: str, port: int, port_end: int, unix: str | None) -> tuple[socket.socket, int]:
    if unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(unix)
        sock.listen(1)
        return sock, 0
    from tvm.rpc import base

    sock = socket.socket(base.get_addr_family((host, port)), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for candidate in range(port, port_end):
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            if candidate == port_end - 1:
                raise OSError(f"cannot bind to any port in [{port}, {port_end}) on {host}: "
                              f"{exc.strerror}") from exc
            continue
        sock.listen(1)
        return sock, candidate
    raise OSError(f"no port in [{port}, {port_end})")


def serve(tracker: tuple[str, int], key: str, host: str = "127.0.0.1", port: int = 9090,
          port_end: int = 9199, quiet: bool = False, *, listen_unix: str | None = None,
          tracker_unix: str | None = None, advertise: tuple[str, int] | None = None,
          emulated: bool = False) -> None:
    """Serve forever (until SIGINT/SIGTERM): bind ``host:port`` (first free port up to
    ``port_end``) or the Unix socket ``listen_unix``, register with ``tracker`` (or through the
    Unix socket ``tracker_unix``) under ``key``, as reachable at ``advertise`` (default: the
    bound address)."""
    from tvm.rpc import server as rpc_server

    _load_runtime_extras()
    _register_info(emulated)
    if tracker_unix:
        _tracker_through_unix(tracker_unix)
    if quiet:
        rpc_server.logger.setLevel("ERROR")
    sock, bound = _listener(host, port, port_end, listen_unix)
    public = advertise or (host, bound)
    # TVM's listen loop: registers (custom address = the advertised host, port = the advertised
    # port), accepts one session at a time, each served in a fork of this process. It logs each
    # session ("connected from", "load_module", "finish serving").
    thread = threading.Thread(target=rpc_server._listen_loop,  # noqa: SLF001
                              args=(sock, public[1], key, tracker, None, public[0]))
    thread.start()
    print(f"{READY} key={key} addr={public[0]}:{public[1]} tracker={tracker[0]}:{tracker[1]} "
          f"pid={os.getpid()}", flush=True)

    main_pid = os.getpid()

    def _stop(signum, _frame):
        if os.getpid() != main_pid:  # a session's fork (TVM ends one that outlives its timeout)
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    code = 1  # the listen loop only ends by itself on an error (e.g. the tracker is unreachable)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        code = 0
    # TVM's listen loop runs in a non-daemon thread blocked in accept(): leave without joining it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracker", required=True, help="tracker address HOST:PORT")
    parser.add_argument("--key", required=True, help="device key to register under")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=9090, help="first port to try")
    parser.add_argument("--port-end", type=int, default=9199, help="last port to try (exclusive)")
    parser.add_argument("--quiet", action="store_true", help="do not log sessions")
    parser.add_argument("--listen-unix", metavar="PATH",
                        help="listen on this Unix socket instead of --host/--port")
    parser.add_argument("--tracker-unix", metavar="PATH",
                        help="reach the tracker through this Unix socket")
    parser.add_argument("--advertise", metavar="HOST:PORT",
                        help="address the tracker gives clients (default: the bound one)")
    parser.add_argument("--emulated", action="store_true",
                        help="report this device as emulated (mmopt.device.info)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        serve(_address(args.tracker), args.key, args.host, args.port, args.port_end, args.quiet,
              listen_unix=args.listen_unix, tracker_unix=args.tracker_unix,
              advertise=_address(args.advertise, "--advertise") if args.advertise else None,
              emulated=args.emulated)
    except OSError as exc:
        raise SystemExit(f"device_server: cannot serve after {time.monotonic() - started:.1f}s: "
                         f"{exc}") from exc


if __name__ == "__main__":
    main()
