"""``mmopt farm``: a device farm on TVM's RPC tracker (tracker, devices, emulated arm64, status)."""

from __future__ import annotations

import json
import os

import click
from rich.table import Table

from mmopt.cli.common import err, out

DEFAULT_TRACKER = "127.0.0.1:9190"


def tracker_option(func):
    return click.option(
        "--tracker", "--farm", "tracker",
        default=lambda: os.environ.get("MMOPT_FARM", DEFAULT_TRACKER),
        show_default=f"$MMOPT_FARM or {DEFAULT_TRACKER}", metavar="HOST:PORT",
        help="Address of the tracker.")(func)


def _loopback_note(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] listening on {host}: TVM RPC has no authentication; anyone "
                  "who can reach this port can run code on this machine")


@click.group("farm")
def farm_cmd():
    """A device farm: a tracker, and devices that register with it under a key.

    \b
    On one machine (everything on loopback):
      mmopt farm tracker &                              # 127.0.0.1:9190
      mmopt farm device --key x86 --tracker 127.0.0.1:9190 &
      mmopt farm emulate arm64 --tracker 127.0.0.1:9190 &   # key arm64-qemu
      mmopt farm status
      mmopt tune model.onnx --target x86 --db tuning/ --farm 127.0.0.1:9190 --key x86
    """


@farm_cmd.command("tracker")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback unless told otherwise).")
@click.option("--port", type=click.IntRange(0, 65535), default=9190, show_default=True,
              help="Port (0: any free port; the chosen one is printed).")
def tracker_cmd(host, port):
    """Run an RPC tracker in the foreground (Ctrl-C stops it)."""
    from mmopt.tuning.farm import serve_tracker

    _loopback_note(host)
    serve_tracker(host, port)


@farm_cmd.command("device")
@click.option("--key", required=True, help="Key the device is requested by (e.g. the target's rpc "
              "key: x86, arm64).")
@tracker_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="First port to try (the next free one up to 9199 is used).")
@click.option("--threads", type=click.IntRange(1), help="Threads a model may use on this device "
              "(TVM_NUM_THREADS). [default: TVM's choice, the physical cores]")
@click.option("--quiet", is_flag=True, help="Do not log each session.")
def device_cmd(key, tracker, host, port, threads, quiet):
    """Serve this machine as a device of KEY, registered with the tracker (Ctrl-C stops it)."""
    from mmopt.tuning.device_server import serve
    from mmopt.tuning.farm import parse_address

    address = parse_address(tracker, "--tracker")
    _loopback_note(host)
    if threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
    serve(address, key, host, port, quiet=quiet)


@farm_cmd.command("emulate")
@click.argument("arch", type=click.Choice(["arm64"]))
@tracker_option
@click.option("--key", default="arm64-qemu", show_default=True, help="Key to register under.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="First port to try.")
@click.option("--prepare-only", is_flag=True,
              help="Only prepare (download and cache) the emulated environment, then exit.")
@click.option("--force", is_flag=True, help="Prepare the environment again even if cached.")
def emulate_cmd(arch, tracker, key, host, port, prepare_only, force):
    """Serve an emulated ARCH device under qemu-user (prepared once, cached in ~/.cache/mmopt).

    Runs and checks ARM artifacts on an x86 machine. Emulated timings are not ARM timings.
    """
    from mmopt.tuning import emulate
    from mmopt.tuning.farm import parse_address

    address = parse_address(tracker, "--tracker")
    with err.status("preparing the emulated arm64 environment") as status:
        root = emulate.prepare(force=force, progress=lambda msg: status.update(msg))
    err.print(f"arm64 environment: {root.path}")
    if prepare_only:
        return
    _loopback_note(host)
    raise SystemExit(emulate.serve(address, key, host, port))


@farm_cmd.command("status")
@tracker_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status_cmd(tracker, as_json):
    """List the tracker's keys with their free / busy devices and pending requests."""
    from mmopt.tuning.farm import parse_address, status

    farm = status(parse_address(tracker, "--tracker"))
    if as_json:
        out.print_json(json.dumps(farm.to_dict()))
        return
    if not farm.keys:
        out.print(f"tracker {farm.tracker}: no devices registered")
        return
    table = Table(box=None, padding=(0, 2), title=f"tracker {farm.tracker}", title_justify="left")
    for col in ("key", "devices", "free", "busy", "pending", "addresses"):
        table.add_column(col)
    for k in farm.keys.values():
        table.add_row(k.key, str(k.devices), str(k.free), str(k.busy), str(k.pending),
                      ", ".join(k.addresses))
    out.print(table)


command = farm_cmd
