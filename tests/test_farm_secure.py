"""A farm with a secret (mutual TLS in front of TVM's RPC sockets), on loopback.

Shows: ``mmopt farm init-secret`` makes a CA and a member certificate; trackers and devices refuse
to listen on a non-loopback address without a secret (unless --insecure); with the secret on, a
client without it -- or with another farm's -- is refused by the tracker and by the device itself,
and nothing runs on the device; a client with it tunes and runs models as on a plain farm.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat

import numpy as np
import pytest
from click.testing import CliRunner

import mmopt
from mmopt import ir as mir
from mmopt.cli.main import cli
from mmopt.errors import MmoptError
from mmopt.runtime.verify import run_onnxruntime
from mmopt.tuning import farm, secure
from mmopt.tuning.remote import run_remote
from mmopt.tuning.tune import Measurement, tune

FAST = Measurement(min_repeat_ms=5, device_wait_s=30)
KEY = "x86-tls"


@pytest.fixture(autouse=True)
def _no_secret_from_the_environment(monkeypatch):
    monkeypatch.delenv(secure.ENV, raising=False)


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    return secure.init_secret(tmp_path_factory.mktemp("farm") / "secret")


@pytest.fixture(scope="module")
def other_secret(tmp_path_factory):
    return secure.init_secret(tmp_path_factory.mktemp("other-farm") / "secret")


@pytest.fixture(scope="module")
def secure_farm(secret, tmp_path_factory):
    """A tracker and one x86 device, both with the secret, on loopback."""
    logs = tmp_path_factory.mktemp("tls-logs")
    saved = os.environ.pop(secure.ENV, None)  # the processes get the secret by option only
    try:
        with farm.local_farm(logs, {KEY: 1}, threads=1, secret=secret) as (tracker, devices):
            yield tracker, devices[0]
    finally:
        if saved is not None:
            os.environ[secure.ENV] = saved


@pytest.fixture(scope="module")
def model():
    from models_zoo import MODELS, build

    return mir.fix_input_shapes(build("conv_bn_relu"), MODELS["conv_bn_relu"].input_shapes)


def _sessions(device: farm.FarmProcess) -> int:
    """Sessions the device's TVM server has served (it logs one line per session)."""
    return device.log.read_text(errors="replace").count("connected from")


# --------------------------------------------------------------------------------------------------


def test_init_secret_makes_a_ca_and_a_member_certificate(tmp_path):
    made = secure.init_secret(tmp_path / "s")
    for path in (made.ca, made.cert, made.key):
        assert path.is_file()
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o700
    assert not list(made.path.glob("ca.key")) and not list(made.path.glob("*.csr"))
    with pytest.raises(MmoptError, match="already holds a farm secret"):
        secure.init_secret(made.path)
    fingerprint = made.fingerprint
    assert secure.init_secret(made.path, force=True).fingerprint != fingerprint
    with pytest.raises(MmoptError, match="not a farm secret .*missing"):
        secure.FarmSecret.load(tmp_path)
    result = CliRunner().invoke(cli, ["farm", "init-secret", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "CA fingerprint" in result.output


def test_no_network_listening_without_a_secret(secret, caplog):
    for host in ("127.0.0.1", "localhost", "::1"):
        farm.check_listen(host, None, False, "tracker")  # loopback: fine
    with pytest.raises(MmoptError, match="refusing to listen on 0.0.0.0 without a farm secret"):
        farm.check_listen("0.0.0.0", None, False, "tracker")
    farm.check_listen("0.0.0.0", secret, False, "tracker")
    with caplog.at_level(logging.WARNING):
        farm.check_listen("0.0.0.0", None, True, "device")
    assert "--insecure" in caplog.text
    for command in (["farm", "tracker", "--host", "0.0.0.0", "--port", "0"],
                    ["farm", "device", "--key", "x86", "--host", "0.0.0.0"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2 and "mmopt farm init-secret" in result.output, result.output


def test_a_client_without_the_secret_is_refused(secure_farm, other_secret, model, tmp_path):
    tracker, device = secure_farm
    served = _sessions(device)
    with pytest.raises(MmoptError, match="farm secret does to clients without it"):
        farm.status(tracker.address)
    with pytest.raises(MmoptError, match="farm secret does to clients without it"):
        farm.request_session(tracker.address, KEY, wait_s=10)
    with pytest.raises(MmoptError, match="different farm secrets"):
        farm.status(tracker.address, secret=other_secret)
    result = CliRunner().invoke(cli, ["farm", "status", "--tracker",
                                      farm.format_address(tracker.address)])
    assert result.exit_code == 2 and "clients without it" in result.output
    # Straight to the device, past the tracker: TVM's own client, and a TLS client of another farm.
    from tvm import rpc

    with pytest.raises(Exception):  # noqa: B017 - TVM raises what its C++ check raises
        rpc.connect(device.address[0], device.address[1], KEY, 10)
    with pytest.raises(MmoptError, match="refused the TLS connection"):
        secure.open_session(device.address[0], device.address[1], KEY, 10, other_secret,
                            rpc.connect)
    with pytest.raises(ssl.SSLError):
        secure.connect_tls(device.address, other_secret, 10).recv(1)
    # Nothing reached TVM's server: no session was served, and the relay logged the refusals.
    mmopt.compile(model, "x86-generic", tmp_path / "net", verify=False)
    feeds = mir.random_inputs(mir.prepare(model), 0)
    with pytest.raises(MmoptError):
        run_remote(tmp_path / "net", feeds, KEY, tracker.address, wait_s=10)
    assert _sessions(device) == served
    assert device.log.read_text(errors="replace").count("refused a connection") >= 2


def test_a_client_with_the_secret_tunes_and_runs(secure_farm, secret, model, tmp_path):
    tracker, device = secure_farm
    status = farm.status(tracker.address, secret=secret)
    assert status.devices(KEY) == 1
    assert status.keys[KEY].addresses == [farm.format_address(device.address)]
    result = CliRunner().invoke(cli, ["farm", "status", "--tracker",
                                      farm.format_address(tracker.address), "--farm-secret",
                                      str(secret.path), "--json"])
    assert result.exit_code == 0 and KEY in result.output, result.output
    # run: an artifact on the device matches onnxruntime
    mmopt.compile(model, "x86-generic", tmp_path / "net", verify=False)
    reference = mir.prepare(model)
    feeds = mir.random_inputs(reference, 0)
    got = run_remote(tmp_path / "net", feeds, KEY, tracker.address, secret=secret)
    for name, value in run_onnxruntime(reference, feeds).items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4)
    # tune: the knob search measures on the device (the secret from the environment here)
    os.environ[secure.ENV] = str(secret.path)
    try:
        report = tune(model, "x86-generic", tmp_path / "db", trials_per_task=2, batch=2,
                      farm=tracker.address, key=KEY, measurement=FAST, tasks=["conv2d"])
    finally:
        del os.environ[secure.ENV]
    assert report.stopped is None, report.stopped
    assert report.runner.startswith(f"1 device(s) '{KEY}'") and not report.emulated
    assert report.trials > 0 and report.records > report.trials
    assert "load_module" in device.log.read_text(errors="replace")
