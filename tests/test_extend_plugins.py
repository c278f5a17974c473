"""Third-party plugins: a package built here declares the ``mmopt.extensions`` entry point, and the
``mmopt`` command discovers it and compiles a model with its custom-domain ops; ``--plugin FILE``;
broken plugins end in one line naming them (exit 2).

The plugin's code is the two worked examples of ``docs/extending.md`` (a Swish activation by
decomposition, an RMSNorm kernel with a schedule), so the documentation is tested too. The packages
are installed into a directory of their own (``pip install --target``) that only the ``mmopt``
processes started here see: the shared environment is left alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"

MODEL = """
<ir_version: 8, opset_import: ["" : 17, "acme.ops" : 1]>
g (float[2,8,64] x) => (float[2,8,64] y) {
  a = acme.ops.Swish <beta = 1.5> (x)
  n = acme.ops.RMSNorm <epsilon = 0.00001> (a, w)
  y = Add (n, x)
}"""


def _doc_files() -> dict[str, str]:
    """The docs' Python blocks that start with ``# FILE.py``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    return {b.splitlines()[0][2:]: b for b in blocks if re.match(r"# \w+\.py\n", b)}


def _model(path: Path) -> Path:
    model = onnx.parser.parse_model(MODEL)
    model.graph.node[0].name, model.graph.node[1].name = "act1", "norm1"
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(64).astype(np.float32), "w"))
    onnx.save(model, path)
    return path


def _package(root: Path, name: str, module: str, entry_point: str, modules: dict[str, str]
             ) -> Path:
    """Build the distribution ``name`` (package ``module`` of ``modules``, declaring
    ``entry_point``) and install it into ``root/site``; returns that directory."""
    source = root / "src"
    package = source / module
    package.mkdir(parents=True)
    for file, text in modules.items():
        (package / file).write_text(text)
    (source / "pyproject.toml").write_text(f"""
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"

[project.entry-points."mmopt.extensions"]
{entry_point}

[tool.setuptools]
packages = ["{package.name}"]
""")
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(source)],
                   check=True, capture_output=True, timeout=300, cwd=root)
    return site


def _mmopt(*args: str, site: Path | None = None, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
    return subprocess.run([sys.executable, "-m", "mmopt.cli.main", *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def acme_site(tmp_path_factory) -> Path:
    docs = _doc_files()
    assert set(docs) == {"acme_swish.py", "acme_rmsnorm.py"}
    return _package(tmp_path_factory.mktemp("acme"), "acme-mmopt-ops", "acme_mmopt_ops",
                    'acme = "acme_mmopt_ops"',
                    {"__init__.py": "from acme_mmopt_ops import acme_rmsnorm, acme_swish\n",
                     **docs})


def test_entry_point_plugin_is_discovered_and_compiles_its_ops(acme_site, tmp_path):
    model = _model(tmp_path / "acme.onnx")
    # without the package: both ops are unsupported
    proc = _mmopt("inspect", "--support", str(model), "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert {o["status"] for o in json.loads(proc.stdout)["ops"] if "acme" in o["op"]} == {
        "unsupported"}

    proc = _mmopt("inspect", "--support", str(model), "--json", site=acme_site, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    plugin = "plugin acme from acme-mmopt-ops"
    assert {(n["node"], n["op"], n["rule"], n["source"], n["kind"]) for n in report["nodes"]} == {
        ("act1", "acme.ops::Swish", "inline_swish", plugin, "function"),
        ("norm1", "acme.ops::RMSNorm", "kernel_rms_norm", plugin, "kernel")}
    proc = _mmopt("inspect", "--support", str(model), site=acme_site, cwd=tmp_path)
    assert "inline_swish (plugin acme from acme-mmopt-ops): act1" in proc.stdout

    # compile verifies against onnx's reference evaluator running the plugin's numpy references
    proc = _mmopt("compile", str(model), "--target", "x86", "-o", str(tmp_path / "out" / "acme"),
                  "--json", site=acme_site, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verification = json.loads(proc.stdout)["verification"]
    assert verification["passed"] and verification["max_abs"] < 1e-4
    # the report names the engine that computed the reference: not onnxruntime here
    assert verification["engine"] == ("onnx's reference evaluator with numpy references of "
                                      "acme.ops::RMSNorm, acme.ops::Swish"), verification


def test_plugin_file_option(tmp_path):
    model = _model(tmp_path / "acme.onnx")
    files = _doc_files()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    proc = _mmopt("compile", str(model), "-o", str(tmp_path / "out" / "acme"), "--plugin",
                  "acme_swish.py", "--plugin", "acme_rmsnorm.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS vs onnx's reference evaluator with numpy references of acme.ops::" in " ".join(
        proc.stdout.split())


def test_broken_plugins_end_in_one_line_naming_them(tmp_path):
    model = _model(tmp_path / "acme.onnx")
    broken = tmp_path / "broken.py"
    broken.write_text("from mmopt import extend\nraise RuntimeError('no licence key')\n")
    proc = _mmopt("compile", str(model), "-o", str(tmp_path / "out" / "m"), "--plugin",
                  str(broken), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mmopt: error: plugin broken.py: failed to load: RuntimeError: no licence key"]
    assert not (tmp_path / "out").exists()

    proc = _mmopt("inspect", "--support", str(model), "--plugin", "nowhere.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mmopt: error: plugin nowhere.py: no such file (nowhere.py)"

    site = _package(tmp_path / "pkg", "broken-mmopt-plugin", "broken_plugin",
                    'broken = "broken_plugin.ops"',
                    {"__init__.py": "", "ops.py": "import does_not_exist\n"})
    proc = _mmopt("compile", str(model), "-o", str(tmp_path / "out" / "m"), site=site,
                  cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mmopt: error: plugin broken from broken-mmopt-plugin (entry point mmopt.extensions: "
        "broken = broken_plugin.ops): failed to load: ModuleNotFoundError: No module named "
        "'does_not_exist'"]
