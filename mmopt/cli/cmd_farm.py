"""``mmopt farm``: a device farm on TVM's RPC tracker (tracker, devices, emulated arm64, status)."""

from __future__ import annotations

import json
import os

import click
from rich.table import Table

from mmopt.cli.common import err, out
from mmopt.tuning.emulate import DEFAULT_KEY as EMULATED_ARM_KEY

DEFAULT_TRACKER = "127.0.0.1:9190"


def tracker_option(func):
    return click.option(
        "--tracker", "--farm", "tracker",
        default=lambda: os.environ.get("MMOPT_FARM", DEFAULT_TRACKER),
        show_default=f"$MMOPT_FARM or {DEFAULT_TRACKER}", metavar="HOST:PORT",
        help="Address of the tracker.")(func)


def secret_option(func):
    """``--farm-secret DIR`` (default ``$MMOPT_FARM_SECRET``), for every command that talks to or
    serves a farm."""
    return click.option(
        "--farm-secret", "farm_secret", envvar="MMOPT_FARM_SECRET", metavar="DIR",
        type=click.Path(file_okay=False),
        help="Farm secret directory (`mmopt farm init-secret`): every farm connection is TLS with "
             "a certificate of the farm. [default: $MMOPT_FARM_SECRET; none: plain TVM RPC, "
             "loopback only]")(func)


def _listen_options(func):
    func = click.option("--insecure", is_flag=True,
                        help="Listen on a non-loopback --host without a farm secret (TVM RPC has "
                             "no authentication: anyone who reaches the port can run code "
                             "here).")(func)
    return secret_option(func)


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

    \b
    On a network, with a farm secret (mutual TLS on every connection):
      mmopt farm init-secret ~/farm-secret              # once; copy it to every machine
      export MMOPT_FARM_SECRET=~/farm-secret
      mmopt farm tracker --host 0.0.0.0 &
      mmopt farm device --key x86 --tracker TRACKER:9190 --host 0.0.0.0 &
      mmopt tune model.onnx --target x86 --db tuning/ --farm TRACKER:9190
    """


@farm_cmd.command("init-secret")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace the secret already in DIRECTORY.")
@click.option("--days", type=click.IntRange(1), default=3650, show_default=True,
              help="Validity of the certificates.")
def init_secret_cmd(directory, force, days):
    """Create a farm secret in DIRECTORY (a CA and a member certificate, with openssl).

    Copy DIRECTORY to every machine of the farm (tracker, devices, clients) and pass
    --farm-secret DIRECTORY or set MMOPT_FARM_SECRET; whoever holds farm.key can run code on the
    farm's devices: keep it like an SSH key.
    """
    from mmopt.tuning.secure import init_secret

    secret = init_secret(directory, force=force, days=days)
    out.print(f"farm secret in {secret.path} (CA fingerprint {secret.fingerprint}); copy it to "
              f"every machine of the farm and use --farm-secret {secret.path} or "
              f"MMOPT_FARM_SECRET={secret.path}")


@farm_cmd.command("tracker")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback unless told otherwise).")
@click.option("--port", type=click.IntRange(0, 65535), default=9190, show_default=True,
              help="Port (0: any free port; the chosen one is printed).")
@_listen_options
def tracker_cmd(host, port, farm_secret, insecure):
    """Run an RPC tracker in the foreground (Ctrl-C stops it)."""
    from mmopt.tuning.farm import serve_tracker

    serve_tracker(host, port, secret=farm_secret, insecure=insecure)


@farm_cmd.command("device")
@click.option("--key", required=True, help="Key the device is requested by (e.g. the target's rpc "
              "key: x86, arm64).")
@tracker_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="First port to try (the next free one up to 9199 is used).")
@click.option("--threads", type=click.IntRange(1), help="Threads a model may use on this device "
              "(TVM_NUM_THREADS). [default: this machine's physical cores]")
@click.option("--quiet", is_flag=True, help="Do not log each session.")
@_listen_options
@click.option("--advertise", metavar="HOST", help="Address the tracker gives clients for this "
              "device (with a farm secret). [default: --host, or for 0.0.0.0 this machine's "
              "address toward the tracker]")
def device_cmd(key, tracker, host, port, threads, quiet, farm_secret, insecure, advertise):
    """Serve this machine as a device of KEY, registered with the tracker (Ctrl-C stops it)."""
    from mmopt.tuning.farm import parse_address, serve_device

    address = parse_address(tracker, "--tracker")
    raise SystemExit(serve_device(address, key, host, port, quiet=quiet, threads=threads,
                                  secret=farm_secret, insecure=insecure, advertise=advertise))


@farm_cmd.command("emulate")
@click.argument("arch", type=click.Choice(["arm64"]))
@tracker_option
@click.option("--key", default=EMULATED_ARM_KEY, show_default=True,
              help="Key to register under (the ARM targets' key arm64 + -qemu: `tune --target "
                   "arm` falls back to it when no real arm64 device is there).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="First port to try.")
@click.option("--prepare-only", is_flag=True,
              help="Only prepare (download and cache) the emulated environment, then exit.")
@click.option("--force", is_flag=True, help="Prepare the environment again even if cached.")
@_listen_options
@click.option("--advertise", metavar="HOST", help="Address the tracker gives clients for this "
              "device (with a farm secret).")
def emulate_cmd(arch, tracker, key, host, port, prepare_only, force, farm_secret, insecure,
                advertise):
    """Serve an emulated ARCH device under qemu-user (prepared once, cached in ~/.cache/mmopt).

    Runs and checks ARM artifacts on an x86 machine. Emulated timings are not ARM timings.
    """
    from mmopt.tuning import emulate
    from mmopt.tuning.farm import check_listen, parse_address
    from mmopt.tuning.secure import resolve_secret

    address = parse_address(tracker, "--tracker")
    secret = resolve_secret(farm_secret)
    if not prepare_only:
        check_listen(host, secret, insecure, f"emulated device {key}")  # before the long part
    with err.status("preparing the emulated arm64 environment") as status:
        root = emulate.prepare(force=force, progress=lambda msg: status.update(msg))
    err.print(f"arm64 environment: {root.path}")
    if prepare_only:
        return
    raise SystemExit(emulate.serve(address, key, host, port, secret=secret, insecure=insecure,
                                   advertise=advertise))


@farm_cmd.command("status")
@tracker_option
@secret_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status_cmd(tracker, farm_secret, as_json):
    """List the tracker's keys with their free / busy devices and pending requests."""
    from mmopt.tuning.farm import parse_address, status

    farm = status(parse_address(tracker, "--tracker"), secret=farm_secret)
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
