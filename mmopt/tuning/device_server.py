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
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

READY = "mmopt-device-ready"


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"device_server: --tracker {text!r}: expected HOST:PORT")
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


def serve(tracker: tuple[str, int], key: str, host: str = "127.0.0.1", port: int = 9090,
          port_end: int = 9199, quiet: bool = False) -> None:
    """Serve forever (until SIGINT/SIGTERM): bind ``host:port`` (first free port up to
    ``port_end``), register with ``tracker`` under ``key``."""
    from tvm.rpc import server as rpc_server

    _load_runtime_extras()

    # TVM's server logs each session ("connected from", "load_module", "finish serving").
    state = rpc_server.PopenRPCServerState(host, port, port_end, tracker_addr=tracker, key=key,
                                           silent=quiet)
    print(f"{READY} key={key} addr={host}:{state.port} tracker={tracker[0]}:{tracker[1]} "
          f"pid={os.getpid()}", flush=True)

    def _stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    code = 1  # the listen loop only ends by itself on an error (e.g. the tracker is unreachable)
    try:
        while state.thread.is_alive():
            state.thread.join(1.0)
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
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        serve(_address(args.tracker), args.key, args.host, args.port, args.port_end, args.quiet)
    except OSError as exc:
        raise SystemExit(f"device_server: cannot serve after {time.monotonic() - started:.1f}s: "
                         f"{exc}") from exc


if __name__ == "__main__":
    main()
