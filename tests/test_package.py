"""Bundles (``mmopt package``) run without Python and agree with onnxruntime.

Three models (a CNN, the fused-LSTM classifier and an int8 QDQ CNN) are compiled for x86 and for
aarch64, packaged, and run by the bundle's own ``mmopt-run`` binary: natively for x86_64, under
``qemu-aarch64`` for aarch64 (those skip, with the reason, where qemu, the cross compiler or the
emulated arm64 environment is missing). The C API's error paths run as a C program
(native/tests/test_capi.c) against each bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import mmopt
from mmopt import ir as mir
from mmopt.cli.main import cli
from mmopt.deploy import Bundle, native, package, run_bundle
from mmopt.runtime import ort

ROOT = Path(__file__).resolve().parents[1]

#: model kind -> target per architecture (the int8 model on the dot-product ARM core)
TARGETS = {
    "cnn": {"x86_64": "x86", "aarch64": "arm"},
    "lstm": {"x86_64": "x86", "aarch64": "arm"},
    "int8": {"x86_64": "x86", "aarch64": "arm-a76"},
}
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def _require(arch: str) -> None:
    reason = native.cannot_build_and_run(arch)
    if reason:
        pytest.skip(reason)


# --------------------------------------------------------------------------------------------------
# models, artifacts, bundles (built once per module)


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    from mmopt.quantize import quantize
    from mmopt.zoo import build

    cnn = mir.fix_input_shapes(build("conv_bn_relu"), {})
    lstm = mir.fix_input_shapes(build("lstm_classifier"), {})
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    int8, _ = quantize(cnn, calib)
    return {"cnn": cnn, "lstm": lstm, "int8": int8}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("package")


_ARTIFACTS: dict[tuple[str, str], Path] = {}
_BUNDLES: dict[tuple[str, str], Bundle] = {}


@pytest.fixture(scope="module")
def artifact(models, workdir):
    def get(kind: str, arch: str) -> Path:
        key = (kind, arch)
        if key not in _ARTIFACTS:
            prefix = workdir / f"{kind}_{arch}"
            mmopt.compile(models[kind], TARGETS[kind][arch], prefix, verify=False)
            _ARTIFACTS[key] = prefix
        return _ARTIFACTS[key]

    yield get
    _ARTIFACTS.clear()


@pytest.fixture(scope="module")
def bundle(artifact, workdir):
    def get(kind: str, arch: str) -> Bundle:
        key = (kind, arch)
        if key not in _BUNDLES:
            _BUNDLES[key] = package(artifact(kind, arch), workdir / f"bundle_{kind}_{arch}")
        return _BUNDLES[key]

    yield get
    _BUNDLES.clear()


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _output_steps(model: onnx.ModelProto) -> dict[str, float]:
    """Quantization step of each output a DequantizeLinear produces (its largest scale)."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    steps = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[1] in inits:
            steps[node.output[0]] = float(np.max(inits[node.input[1]]))
    return {o.name: steps[o.name] for o in model.graph.output if o.name in steps}


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


# --------------------------------------------------------------------------------------------------
# the bundle runs without Python and agrees with onnxruntime


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("kind", ["cnn", "lstm", "int8"])
def test_bundle_matches_onnxruntime(kind, arch, models, bundle):
    _require(arch)
    b = bundle(kind, arch)
    # what runs the model: the bundle's own binary (through qemu for aarch64 here), not Python
    command = b.command([])
    assert Path(command[-1]) == b.runner
    assert not any("python" in Path(part).name for part in command), command
    for name in ("bin/mmopt-run", "lib/libmmopt_model.so", "lib/libtvm_runtime.so",
                 "lib/libtvm_ffi.so", f"model/{b.model.name}.so"):
        assert _elf_machine(b.path / name) == ELF_MACHINE[arch], name

    model = models[kind]
    feeds = _feeds(model)
    ours = run_bundle(b, feeds, threads=1)
    reference = ort.session(model, label=kind)  # graph optimizations off: the QDQ definition
    expected = dict(zip([o.name for o in model.graph.output], reference.run(None, feeds)))
    assert list(ours) == list(expected)
    steps = _output_steps(model) if kind == "int8" else {}
    if kind == "int8":
        assert steps, "the int8 model's outputs should be dequantized"
    for name, value in expected.items():
        assert ours[name].shape == value.shape and ours[name].dtype == value.dtype
        err = float(np.max(np.abs(ours[name].astype(np.float64) - value)))
        tolerance = steps[name] * 1.0001 if name in steps else 1e-4
        assert err <= tolerance, f"{kind}/{arch} output {name}: max abs error {err:.3g}"


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_bundle_contents_and_manifest(arch, bundle):
    _require(arch)
    b = bundle("cnn", arch)
    manifest = json.loads((b.path / "bundle.json").read_text())
    assert manifest["arch"] == arch and manifest["target"] == TARGETS["cnn"][arch]
    on_disk = {p.relative_to(b.path).as_posix(): p.stat().st_size
               for p in b.path.rglob("*") if p.is_file() and p.name != "bundle.json"}
    assert b.files == on_disk
    for name in ("include/mmopt_model.h", "examples/run_model.c", "examples/Makefile",
                 "examples/CMakeLists.txt", "model/cnn_%s.json" % arch):
        assert name in b.files, name
    runtime = manifest["runtime"]
    assert runtime["bytes"] == b.runtime_bytes == sum(
        size for name, size in b.files.items() if name.startswith("lib/"))
    assert runtime["stripped"] is True
    assert 1e6 < b.runtime_bytes < 12e6  # TVM runtime + tvm-ffi + the C API, stripped
    assert runtime["apache-tvm"] == native.tvm_versions()["apache-tvm"]
    assert "libstdc++.so.6" in manifest["requires"]["system_libraries"]
    assert manifest["requires"]["libraries"]["GLIBC"]
    # what docs/deploy.md promises: libstdc++ of GCC 9 (Debian 11, Ubuntu 20.04) is enough
    glibcxx = manifest["requires"]["libraries"]["GLIBCXX"]
    assert tuple(int(p) for p in glibcxx.split(".")) <= (3, 4, 26), glibcxx
    # the runtime of the bundle's architecture, from the wheels (no download at run time)
    assert ("installed" in runtime["from"]) == (arch == native.host_arch())


def test_package_replaces_a_bundle_and_refuses_other_folders(artifact, workdir):
    _require("x86_64")
    target = workdir / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(mmopt.MmoptError, match="not an mmopt bundle"):
        package(artifact("cnn", "x86_64"), target)
    assert (target / "notes.txt").exists()
    again = workdir / "again"
    package(artifact("cnn", "x86_64"), again)
    b = package(artifact("cnn", "x86_64"), again)  # an earlier bundle is replaced
    assert b.runner.exists()
    assert mmopt.package is package


# --------------------------------------------------------------------------------------------------
# the C API


def _c_compiler(arch: str) -> str:
    return "gcc" if arch == native.host_arch() else "aarch64-linux-gnu-gcc"


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_c_api_error_paths(arch, artifact, bundle, tmp_path):
    _require(arch)
    b = bundle("cnn", arch)
    program = tmp_path / "test_capi"
    lib = b.path / "lib"
    subprocess.run([_c_compiler(arch), "-std=c11", "-O1", "-Wall", "-pthread",
                    "-I", str(b.path / "include"),
                    str(ROOT / "native" / "tests" / "test_capi.c"), "-o", str(program),
                    "-L", str(lib), "-lmmopt_model", f"-Wl,-rpath,{lib}",
                    f"-Wl,-rpath-link,{lib}"], check=True, capture_output=True, text=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    other = "aarch64" if arch == "x86_64" else "x86_64"
    args = [str(b.model), str(scratch)]
    if native.cannot_build_and_run(other) is None:
        args.append(str(artifact("cnn", other)) + ".so")  # a library for the other architecture
    # no thread count set: the library takes one thread per physical core (TVM's own default is
    # half the logical CPUs on x86)
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.run(bundle_prefix(b) + [str(program), *args], capture_output=True,
                          text=True, timeout=600, env=env)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]  # < 0: a crash
    assert "0 failure(s)" in proc.stdout
    if arch == native.host_arch():
        from mmopt.runtime.threads import local_cores

        assert f"threads {local_cores()}\n" in proc.stdout
    passed = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    for case in ("open a bad path", "open a library truncated to", "set_input wrong name",
                 "set_input wrong dtype", "set_input wrong shape"):
        assert any(line.startswith(f"ok   {case}") for line in passed), case


def bundle_prefix(b: Bundle) -> list[str]:
    return b.command([])[:-1]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_example_builds_against_the_bundle(arch, bundle):
    _require(arch)
    b = bundle("cnn", arch)
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    examples = b.path / "examples"
    subprocess.run(["make", "-C", str(examples), f"CC={_c_compiler(arch)}"], check=True,
                   capture_output=True, text=True)
    proc = subprocess.run(bundle_prefix(b) + [str(examples / "run_model"), str(b.model)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "output head.fc float32:" in proc.stdout


# --------------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_cli_package_and_run_native(arch, models, artifact, tmp_path):
    _require(arch)
    prefix = artifact("cnn", arch)
    runner = CliRunner()
    result = runner.invoke(cli, ["package", str(prefix), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert "runtime" in result.output and "stripped" in result.output
    assert (tmp_path / "bundle" / "bin" / "mmopt-run").exists()

    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "native.npz"
    result = runner.invoke(cli, ["run", str(prefix), "--native", "-i", f"input={tmp_path / 'x.npy'}",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        native_y = data["head.fc"]
    expected = ort.session(models["cnn"], label="cnn").run(None, {"input": x})[0]
    assert float(np.max(np.abs(native_y - expected))) <= 1e-4
    if arch == native.host_arch():  # the same kernels through Python's loader: identical
        np.testing.assert_array_equal(native_y, mmopt.load(prefix)(input=x)["head.fc"])


def test_cli_package_refuses_cuda_artifacts(models, workdir, tmp_path):
    prefix = workdir / "cnn_cuda"
    mmopt.compile(models["cnn"], "cuda-sm80", prefix, verify=False)
    result = CliRunner().invoke(cli, ["package", str(prefix), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "CUDA artifacts are not packaged" in lines[0], result.output
    assert not (tmp_path / "b").exists()


def test_cli_run_native_excludes_device(artifact):
    _require("x86_64")
    result = CliRunner().invoke(cli, ["run", str(artifact("cnn", "x86_64")), "--native",
                                      "--device", "arm64-qemu"])
    assert result.exit_code == 2 and "excludes --device" in result.output


def test_native_sources_build_with_cmake(artifact, tmp_path):
    """native/CMakeLists.txt (building the runtime from source, e.g. on a device) stays working."""
    _require("x86_64")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    libs = native.runtime_libs("x86_64")
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(ROOT / "native"), "-B", str(build),
                    f"-DTVM_FFI_INCLUDE_DIR={native.ffi_include_dir()}",
                    f"-DTVM_RUNTIME_LIB={libs.runtime}", f"-DTVM_FFI_LIB={libs.ffi}"],
                   check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.run([str(build / "test_capi"), str(artifact("cnn", "x86_64")), str(scratch)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
