"""Dynamic shapes: symbolic dims kept from ONNX to the artifact (``--dim``), run-time refusal of
sizes outside the ranges, buckets of statically specialized kernels (``--buckets``),
verification against onnxruntime at several sizes, and the native bundle (``mmopt package``:
``mmopt-run`` and the C API, x86_64 and aarch64 under qemu) running them with the Python
runtime's semantics (docs/dynamic-shapes.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import mmopt
from mmopt.cli.main import cli
from mmopt.codegen.buckets import parse_bucket_option, resolve_buckets
from mmopt.errors import MmoptError
from mmopt.ir import fix_input_shapes, parse_shape_option
from mmopt.ir.dims import DimRange, bind_sizes, parse_dim_option, size_sets
from mmopt.runtime import load
from mmopt.runtime.verify import run_onnxruntime
from models_zoo import build

# ------------------------------------------------------------------------------------------------
# options and ranges (no compile)


def test_dim_option_parses_ranges_and_multiples():
    assert parse_dim_option("height=320..1280:32") == DimRange("height", 320, 1280, 32)
    assert parse_dim_option("batch=1..8") == DimRange("batch", 1, 8, 1)
    for bad in ("height", "height=320", "h=10..5", "h=0..4", "h=30..100:32", "1h=1..2",
                "h=1..4:0"):
        with pytest.raises(MmoptError) as exc:
            parse_dim_option(bad)
        assert "\n" not in exc.value.message and "--dim" in exc.value.message


@pytest.mark.parametrize("text", ["height=320..1280:32", "width=80..1600", "batch=1..4",
                                  "seq=8..512", "one=7..7"])
def test_test_sizes_cover_the_range_in_steps(text):
    r = parse_dim_option(text)
    sizes = r.test_sizes()
    assert sizes[0] == r.min and sizes[-1] == r.max
    assert all(r.contains(s) for s in sizes)
    if (r.max - r.min) // r.multiple >= 8:
        assert len(sizes) == 5  # min, max, middle, two odd ones
        assert any(((s - r.min) // r.multiple) % 2 for s in sizes)  # an odd number of steps


def test_least_and_typical_values_of_symbolic_extents():
    """What code generation reads from the ranges: the least value of an extent (a loop sure to be
    long enough to run in parallel) and its value at the middle of each range on a log scale (the
    size Winograd is chosen for); None for a variable without a range."""
    from tvm import tirx

    from mmopt.codegen.symbolic_dims import least_value, typical_value

    blocks, batch = tirx.Var("height_blocks", "int64"), tirx.Var("batch", "int64")
    bounds = {"height_blocks": (10, 40), "batch": (1, 4)}
    height = blocks * 32
    assert least_value(batch * height, bounds) == 320
    assert typical_value(height, bounds) == 640 and typical_value(batch, bounds) == 2
    assert typical_value((height - 1) // 8 + 1, bounds) == 80
    assert least_value(7, {}) == typical_value(tirx.const(7, "int64"), {}) == 7
    assert least_value(batch, {}) is None and typical_value(batch, {}) is None


def test_size_sets_move_dims_apart():
    ranges = {n: parse_dim_option(t) for n, t in (("height", "height=320..1280:32"),
                                                   ("width", "width=320..1280:32"))}
    sets = size_sets(ranges)
    assert sets[0] == {"height": 320, "width": 320}
    assert {"height": 1280, "width": 1280} in sets
    assert any(s["height"] != s["width"] for s in sets)  # a non-square call
    assert len(sets) == 5


def test_input_shape_may_name_dims():
    assert parse_shape_option("x:1,3,48,width") == ("x", (1, 3, 48, "width"))
    assert parse_shape_option("x:1x3x224x224") == ("x", (1, 3, 224, 224))
    with pytest.raises(MmoptError):
        parse_shape_option("x:1,3,4-8")


def _tiny(dims=("N", 3, "H", "W")) -> onnx.ModelProto:
    model = onnx.parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[{','.join(map(str, dims))}] x) => (float[{','.join(map(str, dims))}] y) {{
            y = Relu(x)
        }}""")
    return model


def test_fix_input_shapes_keeps_ranged_dims_and_says_what_to_do_with_the_rest():
    ranges = {"H": parse_dim_option("H=8..64"), "W": parse_dim_option("W=8..64")}
    model = fix_input_shapes(_tiny(), dims=ranges)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "H", "W"]  # the unranged batch defaults to 1, as before
    with pytest.raises(MmoptError) as exc:
        fix_input_shapes(_tiny(), dims={"H": ranges["H"]})
    assert "--dim W=MIN..MAX" in exc.value.message and "--input-shape x:" in exc.value.message
    with pytest.raises(MmoptError) as exc:
        fix_input_shapes(_tiny(), dims={**ranges, "Z": parse_dim_option("Z=1..2")})
    assert "--dim Z: no input has a dim named Z" in exc.value.message
    # a dim the model leaves unnamed ("?") is named in --input-shape
    named = fix_input_shapes(_tiny(("N", 3, "?", "W")), {"x": (1, 3, "rows", "W")},
                             dims={"rows": ranges["H"], "W": ranges["W"]})
    dims = [d.dim_param or d.dim_value for d in named.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "rows", "W"]
    with pytest.raises(MmoptError) as exc:
        fix_input_shapes(_tiny(("N", 3, "?", "W")), dims={"W": ranges["W"]})
    assert "name it: --input-shape x:1,3,d2,W" in exc.value.message


def test_bind_sizes_refuses_with_one_line_naming_input_and_dim():
    specs = {"x": [1, 3, "h", "w"], "m": [1, "h"]}
    ranges = {"h": parse_dim_option("h=32..64:8"), "w": parse_dim_option("w=16..128")}
    assert bind_sizes(specs, {"x": [1, 3, 40, 17], "m": [1, 40]}, ranges) == {"h": 40, "w": 17}
    cases = {
        "rank 3 given": {"x": [1, 3, 40]},
        "dim 1 is 4, the artifact takes 3": {"x": [1, 4, 40, 17]},
        "dim 2 (h) is 72, outside the compiled range 32..64": {"x": [1, 3, 72, 17]},
        "dim 2 (h) is 44, not a multiple of 8": {"x": [1, 3, 44, 17]},
        "dim 1 (h) is 48, but input x has h = 40": {"x": [1, 3, 40, 17], "m": [1, 48]},
    }
    for expected, shapes in cases.items():
        with pytest.raises(MmoptError) as exc:
            bind_sizes(specs, shapes, ranges)
        assert expected in exc.value.message, exc.value.message
        assert "\n" not in exc.value.message


def test_buckets_are_checked_against_inputs_and_ranges():
    specs = {"images": [1, 3, "h", "w"]}
    ranges = {"h": parse_dim_option("h=320..1280:32"), "w": parse_dim_option("w=320..1280:32")}
    (b,) = resolve_buckets([parse_bucket_option("images:1,3,640,480")], specs, ranges)
    assert b.sizes == {"h": 640, "w": 480} and b.function == "main_bucket0"
    for text, expected in (("images:1,3,650,480", "not a multiple of 32"),
                           ("images:1,3,2048,480", "outside the compiled range"),
                           ("other:1,3,640,640", "no input named other")):
        with pytest.raises(MmoptError) as exc:
            resolve_buckets([parse_bucket_option(text)], specs, ranges)
        assert expected in exc.value.message
    with pytest.raises(MmoptError) as exc:
        resolve_buckets([parse_bucket_option("images:1,3,640,640")] * 2, specs, ranges)
    assert "given twice" in exc.value.message
    with pytest.raises(MmoptError):
        parse_bucket_option("images:1,3,h,w")


# ------------------------------------------------------------------------------------------------
# compiled: the transformer block (sequence 8..512, batch 1..2) with one bucket


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    path = tmp_path_factory.mktemp("dyn") / "transformer_block_dynamic.onnx"
    onnx.save(build("transformer_block_dynamic"), path)
    out = path.parent / "tr"
    result = mmopt.compile(path, "x86", out, dims=[parse_dim_option("seq=8..512"),
                                                   parse_dim_option("batch=1..2")],
                           buckets=[{"input": (1, 128, 64)}])
    return path, out, result


def test_transformer_verified_at_range_sizes_and_bucket(transformer):
    _path, _out, result = transformer
    v = result.verification
    assert v.passed and v.max_abs <= 1e-4, v.to_dict()
    sizes = [r["sizes"] for r in v.runs]
    assert {"seq": 8, "batch": 1} in sizes and {"seq": 512, "batch": 2} in sizes
    assert len(v.runs) >= 6 and any(r["sizes"]["seq"] % 2 for r in v.runs)
    assert [r["function"] for r in v.runs].count("main_bucket0") == 1
    assert all(r["function"] == "main" for r in v.runs if r["sizes"] != {"seq": 128, "batch": 1})


def test_transformer_artifact_json_records_dims_and_buckets(transformer):
    _path, out, _result = transformer
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["inputs"][0]["shape"] == ["batch", "seq", 64]
    assert meta["dims"] == {"seq": {"min": 8, "max": 512, "multiple": 1},
                            "batch": {"min": 1, "max": 2, "multiple": 1}}
    assert meta["buckets"] == [{"function": "main_bucket0", "sizes": {"batch": 1, "seq": 128},
                                "inputs": {"input": [1, 128, 64]}}]
    assert meta["verification"]["runs"]
    # the target it was compiled for: the host's, with 512-bit LLVM vectorization where the host
    # has AVX-512 (mmopt.targets.for_module)
    from mmopt import targets
    from mmopt.targets.cpu import cpu_facts

    host = targets.get("x86")
    wide = cpu_facts(host.tvm_target()).vector_bits == 512
    assert ("-prefer-256-bit" in meta["target"]["tvm"].get("mattr", [])) == wide


@pytest.mark.parametrize("shape", [(1, 37, 64), (2, 301, 64), (1, 128, 64), (1, 127, 64)])
def test_transformer_matches_onnxruntime_at_other_sizes(transformer, shape):
    path, out, _result = transformer
    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    model = load(out)
    got = model(input=x)
    expected = run_onnxruntime(onnx.load(path), {"input": x})
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, atol=1e-4, rtol=1e-4)
    assert model.function_for([shape]) == ("main_bucket0" if shape == (1, 128, 64) else "main")


@pytest.mark.parametrize("shape, message", [
    ((1, 513, 64), "input input: dim 1 (seq) is 513, outside the compiled range 8..512"),
    ((3, 16, 64), "input input: dim 0 (batch) is 3, outside the compiled range 1..2"),
    ((1, 16, 32), "input input: dim 2 is 32, the artifact takes 64"),
    ((16, 64), "input input: rank 2 given"),
])
def test_transformer_refuses_other_shapes_in_one_line(transformer, shape, message):
    _path, out, _result = transformer
    with pytest.raises(MmoptError) as exc:
        load(out)(input=np.zeros(shape, np.float32))
    assert message in exc.value.message


def test_cli_run_takes_concrete_shapes_and_refuses_out_of_range(transformer):
    _path, out, _result = transformer
    runner = CliRunner()
    ok = runner.invoke(cli, ["run", str(out), "--input-shape", "input:2,33,64"])
    assert ok.exit_code == 0, ok.output
    assert "[2, 33, 64]" in ok.output
    bad = runner.invoke(cli, ["run", str(out), "--input-shape", "input:1,600,64"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1].startswith("mmopt: error: input input: dim 1 (seq)")
    missing = runner.invoke(cli, ["run", str(out)])
    assert missing.exit_code == 2 and "--input-shape input:" in missing.output


# ------------------------------------------------------------------------------------------------
# compiled: a CNN with dynamic batch, height and width named on the command line


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn") / "conv"
    runner = CliRunner()
    result = runner.invoke(cli, ["compile", "zoo:conv_bn_relu", "-o", str(out), "--json",
                                 "--input-shape", "input:batch,3,h,w", "--dim", "batch=1..3",
                                 "--dim", "h=16..64:8", "--dim", "w=16..64:8",
                                 "--buckets", "input:1,3,32,32"])
    return out, result


def test_cnn_compiles_from_the_cli_with_named_axes(cnn):
    _out, result = cnn
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["inputs"][0]["shape"] == ["batch", 3, "h", "w"]
    assert report["verification"]["passed"]
    assert len(report["verification"]["runs"]) >= 5
    # what the dynamic kernels gave up is recorded (symbolic extents padded to whole tiles)
    kinds = {d["what"].split(":")[0] for d in report["extra"]["dynamic_kernels"]["degradations"]}
    assert "contraction" in kinds


def _one_line_error(result, starts: str) -> None:
    """Exit 2, the error in one line (``mmopt: error: ...``, last), no traceback (random inputs
    are announced by a warning line before it)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert errors == [lines[-1]] and lines[-1].startswith(f"mmopt: error: {starts}"), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("shape, starts", [
    ("input:1,3,36,32", "input input: dim 2 (h) is 36, not a multiple of 8"),
    ("input:1,3,32,72", "input input: dim 3 (w) is 72, outside the compiled range 16..64"),
    ("input:4,3,32,32", "input input: dim 0 (batch) is 4, outside the compiled range 1..3"),
    ("input:1,3,32", "input input: rank 3 given [1, 3, 32], the artifact takes rank 4"),
    ("input:1,4,32,32", "input input: dim 1 is 4, the artifact takes 3 there"),
])
def test_cli_run_refuses_bad_shapes_in_one_line(cnn, shape, starts):
    """Issue 16, must-show 4: a non-multiple size, a size out of range, a wrong rank and a wrong
    fixed dim are each one line and exit 2, for random inputs and for a given array alike."""
    out, result = cnn
    assert result.exit_code == 0, result.output
    runner = CliRunner()
    _one_line_error(runner.invoke(cli, ["run", str(out), "--input-shape", shape]), starts)
    dims = [int(d) for d in shape.split(":")[1].split(",")]
    array = out.parent / f"x_{'_'.join(map(str, dims))}.npy"
    np.save(array, np.zeros(dims, np.float32))
    _one_line_error(runner.invoke(cli, ["run", str(out), "-i", f"input={array}"]), starts)


def test_python_call_refuses_a_non_multiple_size(cnn):
    out, _result = cnn
    with pytest.raises(MmoptError) as exc:
        load(out)(input=np.zeros((1, 3, 40, 42), np.float32))
    assert exc.value.message == ("input input: dim 3 (w) is 42, not a multiple of 8 "
                                 "(range 16..64 in steps of 8)")


def test_cli_run_takes_a_size_with_a_multiple_at_an_odd_block_count(cnn):
    out, _result = cnn
    ok = CliRunner().invoke(cli, ["run", str(out), "--input-shape", "input:3,3,56,24"])
    assert ok.exit_code == 0, ok.output


def test_profile_of_a_dynamic_artifact_needs_its_shapes_in_one_line(cnn):
    out, _result = cnn
    _one_line_error(CliRunner().invoke(cli, ["profile", str(out)]),
                    "input input has symbolic dims")
    _one_line_error(CliRunner().invoke(cli, ["profile", str(out), "--input-shape",
                                             "input:1,3,36,32"]),
                    "input input: dim 2 (h) is 36, not a multiple of 8")
    with pytest.raises(MmoptError) as exc:
        mmopt.compile(build("conv_bn_relu"), "x86", out.parent / "p", profile=True,
                      input_shapes={"input": (1, 3, "h", "w")},
                      dims=[parse_dim_option("h=16..64:8"), parse_dim_option("w=16..64:8")])
    assert exc.value.message.startswith("--profile: an artifact with symbolic dims")
    assert "mmopt profile ARTIFACT --input-shape" in exc.value.message


@pytest.mark.parametrize("shape, function", [((2, 3, 48, 24), "main"), ((1, 3, 32, 32),
                                                                         "main_bucket0")])
def test_profile_times_a_dynamic_artifact_at_the_shapes_given(cnn, shape, function, tmp_path):
    """``mmopt profile ARTIFACT --input-shape``: the kernels of the function those shapes run (the
    dynamic ``main``, or the bucket), with FLOPs counted at those sizes (the convolutions' exact
    multiply-adds) and matched to their ONNX nodes."""
    from mmopt.runtime.profile import profile

    out, _result = cnn
    result = profile(out, input_shapes={"input": shape}, runs=2, warmup=1)
    assert result.kernels and result.total_median_ms > 0
    assert any(f"h={shape[2]}" in note for note in result.notes), result.notes
    convs = [k for k in result.kernels if "conv" in k.name]
    assert convs and all(k.flops > 0 for k in convs), [(k.name, k.flops) for k in convs]
    assert any(k.onnx_nodes for k in result.kernels)
    names = {k.name for k in result.kernels}
    # Winograd in the bucket (a static copy) and in the dynamic kernels (chosen for the middle of
    # the ranges: 32x32)
    assert any("winograd" in n for n in names), names
    # first conv: 3x3, 3 -> 16 channels, at every output pixel of the given size
    batch, _c, h, w = shape
    assert max(k.flops for k in convs) >= 2 * 3 * 3 * 3 * 16 * batch * h * w


# ------------------------------------------------------------------------------------------------
# the native bundle (mmopt package): mmopt-run and the C API take every size the ranges allow,
# with the Python runtime's one-line errors


def _bundles_missing(arch: str) -> str | None:
    from mmopt.deploy import native

    return native.cannot_build_and_run(arch)


def _package(artifact, folder):
    from mmopt.deploy import package

    reason = _bundles_missing("x86_64")
    if reason:
        pytest.skip(reason)
    return package(artifact, folder)


@pytest.fixture(scope="module")
def cnn_bundle(cnn, tmp_path_factory):
    out, result = cnn
    assert result.exit_code == 0, result.output
    return _package(out, tmp_path_factory.mktemp("dyn") / "conv_bundle")


@pytest.fixture(scope="module")
def transformer_bundle(transformer, tmp_path_factory):
    _path, out, _result = transformer
    return _package(out, tmp_path_factory.mktemp("dyn") / "tr_bundle")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two inputs sharing the dim ``n`` (``a: [n, 8]``, ``b: [n, k]``, ``k`` a multiple of 4), a
    bucket, and its bundle: what inputs disagreeing on a dim look like."""
    from onnx import TensorProto, helper

    folder = tmp_path_factory.mktemp("dyn")
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"]),
         helper.make_node("Sigmoid", ["b"], ["z"])], "pair",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 8]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", "k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", "k"])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = folder / "pair"
    mmopt.compile(model, "x86", out, dims=[parse_dim_option("n=1..8"),
                                           parse_dim_option("k=4..32:4")],
                  buckets=[{"a": (2, 8), "b": (2, 16)}], verify=False)
    return out, _package(out, folder / "pair_bundle")


def _mmopt_run(bundle, tmp_path, feeds=None, args=()):
    """``bin/mmopt-run`` of ``bundle`` on ``feeds`` (.npy files), outputs written to a folder:
    (process, {output: array}, the function that ran)."""
    command = [str(bundle.model)]
    for i, (name, value) in enumerate((feeds or {}).items()):
        np.save(tmp_path / f"in{i}.npy", value)
        command += ["-i", f"{name}={tmp_path / f'in{i}.npy'}"]
    command += ["-o", str(tmp_path / "out"), *args]
    proc = subprocess.run(bundle.command(command), capture_output=True, text=True, timeout=600)
    outputs, function = {}, None
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if parts[0] == "wrote" and len(parts) == 3:
            outputs[parts[1]] = np.load(parts[2])
        elif parts[0] == "function" and len(parts) == 2:
            function = parts[1]
    return proc, outputs, function


def _native_one_line_error(proc, message: str) -> None:
    """mmopt-run's exit status 1 and the Python runtime's ``message``, alone on stderr."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"mmopt-run: error: {message}"], proc.stderr


def _python_error(artifact, feeds) -> str:
    with pytest.raises(MmoptError) as exc:
        load(artifact)(**feeds)
    return exc.value.message


def _cnn_reference_model():
    return fix_input_shapes(build("conv_bn_relu"), {"input": ("batch", 3, "h", "w")},
                            dims={"batch": DimRange("batch", 1, 3), "h": DimRange("h", 16, 64, 8),
                                  "w": DimRange("w", 16, 64, 8)})


@pytest.mark.parametrize("shape, function", [
    ((1, 3, 32, 32), "main_bucket0"),  # the bucket's sizes: its static kernels
    ((3, 3, 56, 24), "main"),          # odd block counts (7 and 3), non-square
    ((1, 3, 16, 16), "main"),          # every dim at its minimum
    ((2, 3, 64, 40), "main"),
])
def test_native_bundle_runs_the_dynamic_cnn_at_every_size(cnn, cnn_bundle, shape, function,
                                                          tmp_path):
    """The packaged CNN (a batch dim, height and width multiples of 8, a bucket) through mmopt-run:
    the Python runtime's outputs bit for bit (the same kernels) and onnxruntime's within 1e-4."""
    out, _result = cnn
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    proc, outputs, ran = _mmopt_run(cnn_bundle, tmp_path, {"input": x}, ["--threads", "1"])
    assert proc.returncode == 0, proc.stderr
    assert ran == function == load(out).function_for([shape])
    np.testing.assert_array_equal(outputs["head.fc"], load(out)(input=x)["head.fc"])
    expected = run_onnxruntime(_cnn_reference_model(), {"input": x})["head.fc"]
    assert outputs["head.fc"].shape == (shape[0], 10)
    assert float(np.max(np.abs(outputs["head.fc"] - expected))) <= 1e-4


@pytest.mark.parametrize("shape", [
    (1, 3, 36, 32),     # not a multiple of 8
    (1, 3, 32, 72),     # above the range
    (1, 3, 8, 32),      # below the range
    (4, 3, 32, 32),     # batch above its range
    (1, 3, 32),         # a wrong rank
    (1, 4, 32, 32),     # a fixed dim that differs
])
def test_native_bundle_refuses_bad_shapes_in_one_line(cnn, cnn_bundle, shape, tmp_path):
    """mmopt-run exits 1 with the Python runtime's message, alone on stderr."""
    out, _result = cnn
    x = np.zeros(shape, np.float32)
    proc, _outputs, _ran = _mmopt_run(cnn_bundle, tmp_path, {"input": x})
    _native_one_line_error(proc, _python_error(out, {"input": x}))


def test_native_bundle_describes_dims_and_needs_shapes(cnn_bundle, tmp_path):
    """--info lists the symbolic dims and the buckets; an input with symbolic dims has no shape
    of its own (usage error without -i or --shape); --shape runs zeros of that shape."""
    manifest = cnn_bundle.manifest["model"]
    assert manifest["dims"]["h"] == {"min": 16, "max": 64, "multiple": 8}
    assert manifest["buckets"] == [{"function": "main_bucket0",
                                    "sizes": {"batch": 1, "h": 32, "w": 32}}]
    info = subprocess.run(cnn_bundle.command(["--info"]), capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert info.stdout.splitlines()[1:] == [
        "input  input float32[batch, 3, h, w]",
        "output head.fc float32[batch, 10]",
        "dim    batch 1..3",
        "dim    h 16..64 in steps of 8",
        "dim    w 16..64 in steps of 8",
        "bucket main_bucket0 batch=1 h=32 w=32",
    ]
    proc, _outputs, _ran = _mmopt_run(cnn_bundle, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "mmopt-run: error: input input not given: its shape [batch, 3, h, w] has symbolic dims; "
        "give it with -i input=FILE.npy or --shape input=1,3,16,16 (--info lists the ranges)"]
    proc, outputs, ran = _mmopt_run(cnn_bundle, tmp_path, args=["--shape", "input=1,3,32,32"])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert ran == "main_bucket0" and outputs["head.fc"].shape == (1, 10)
    proc, _outputs, _ran = _mmopt_run(cnn_bundle, tmp_path, args=["--shape", "input=1,3,40,42"])
    _native_one_line_error(proc, "input input: dim 3 (w) is 42, not a multiple of 8 "
                                 "(range 16..64 in steps of 8)")


@pytest.mark.parametrize("shape", [(1, 128, 64), (1, 37, 64), (2, 301, 64), (2, 512, 64)])
def test_native_bundle_runs_the_dynamic_transformer(transformer, transformer_bundle, shape,
                                                    tmp_path):
    """The transformer block (plain dims batch and seq, a bucket at seq 128) through mmopt-run
    agrees with onnxruntime at the bucket, odd and maximal sizes."""
    path, out, _result = transformer
    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    proc, outputs, ran = _mmopt_run(transformer_bundle, tmp_path, {"input": x}, ["--threads", "1"])
    assert proc.returncode == 0, proc.stderr
    assert ran == ("main_bucket0" if shape == (1, 128, 64) else "main")
    expected = run_onnxruntime(onnx.load(path), {"input": x})
    assert list(outputs) == list(expected)
    python = load(out)(input=x)
    for name, ref in expected.items():
        assert outputs[name].shape == ref.shape
        np.testing.assert_allclose(outputs[name], ref, atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(outputs[name], python[name])
    bad = np.zeros((1, 513, 64), np.float32)
    proc, _outputs, _ran = _mmopt_run(transformer_bundle, tmp_path, {"input": bad})
    _native_one_line_error(proc, "input input: dim 1 (seq) is 513, outside the compiled range "
                                 "8..512")


def test_native_bundle_reports_inputs_disagreeing_on_a_dim(pair, tmp_path):
    out, bundle = pair
    feeds = {"a": np.ones((2, 8), np.float32), "b": np.ones((3, 16), np.float32)}
    proc, _outputs, _ran = _mmopt_run(bundle, tmp_path, feeds)
    message = _python_error(out, feeds)
    assert message == "input b: dim 0 (n) is 3, but input a has n = 2"
    _native_one_line_error(proc, message)
    feeds["b"] = np.ones((2, 16), np.float32)
    proc, outputs, ran = _mmopt_run(bundle, tmp_path, feeds)
    assert proc.returncode == 0 and ran == "main_bucket0", proc.stderr
    assert outputs["z"].shape == (2, 16)


def _build_c_test(bundle, program, compiler="gcc"):
    lib = bundle.path / "lib"
    source = Path(__file__).resolve().parents[1] / "native" / "tests" / "test_capi_dynamic.c"
    subprocess.run([compiler, "-std=c11", "-O1", "-Wall", "-I",
                    str(bundle.path / "include"), str(source), "-o", str(program), "-L", str(lib),
                    "-lmmopt_model", f"-Wl,-rpath,{lib}", f"-Wl,-rpath-link,{lib}"],
                   check=True, capture_output=True, text=True)


def _run_c_test(bundle, program, artifact=None):
    """native/tests/test_capi_dynamic.c against ``bundle``: every check passes, and (given the
    ``artifact`` to load here) each shape it saw refused has the Python runtime's message."""
    proc = subprocess.run(bundle.command([])[:-1] + [str(program), str(bundle.model)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]  # < 0: a crash
    assert "0 failure(s)" in proc.stdout
    if artifact is None:
        return proc.stdout
    refused = [line.split("\t") for line in proc.stdout.splitlines()
               if line.startswith("refused\t")]
    kinds = {"outside the compiled range", "not a multiple of", "rank", "the artifact takes"}
    for _tag, shapes, message in refused:
        feeds = {}
        for item in shapes.split(" "):
            name, dims = item.split("=")
            feeds[name] = np.zeros([int(d) for d in dims.split(",")], np.float32)
        assert message == _python_error(artifact, feeds), shapes
        kinds = {k for k in kinds if k not in message}
    assert not kinds, f"no refusal seen for: {kinds}"
    return proc.stdout


def test_c_api_with_symbolic_dims(cnn, cnn_bundle, tmp_path):
    out, _result = cnn
    program = tmp_path / "test_capi_dynamic"
    _build_c_test(cnn_bundle, program)
    stdout = _run_c_test(cnn_bundle, program, out)
    assert "ok     ... ran main_bucket0" in stdout


def test_c_api_reports_inputs_disagreeing_on_a_dim(pair, tmp_path):
    out, bundle = pair
    program = tmp_path / "test_capi_dynamic"
    _build_c_test(bundle, program)
    stdout = _run_c_test(bundle, program, out)
    assert "refused\ta=1,8 b=2,4\tinput b: dim 0 (n) is 2, but input a has n = 1" in stdout


def test_cli_run_native_takes_a_dynamic_artifact(cnn, cnn_bundle):
    """``mmopt run --native`` with --input-shape, through the cached bundle; a size out of range is
    mmopt-run's one-line error (exit 2 from mmopt)."""
    out, _result = cnn
    runner = CliRunner()
    ok = runner.invoke(cli, ["run", str(out), "--native", "--input-shape", "input:2,3,40,56"])
    assert ok.exit_code == 0, ok.output
    assert "[2, 10]" in ok.output
    bad = runner.invoke(cli, ["run", str(out), "--native", "--input-shape", "input:1,3,40,72"])
    _one_line_error(bad, "")
    assert bad.output.strip().splitlines()[-1].endswith(
        "input input: dim 3 (w) is 72, outside the compiled range 16..64")


def test_arm_bundle_runs_a_dynamic_cnn(tmp_path):
    """The dynamic CNN compiled for aarch64, packaged, run by its mmopt-run and the C API test
    under qemu-aarch64: onnxruntime's outputs at the bucket and at other sizes, the same refusals."""
    from mmopt.deploy import package

    reason = _bundles_missing("aarch64")
    if reason:
        pytest.skip(reason)
    out = tmp_path / "conv_arm"
    mmopt.compile(build("conv_bn_relu"), "arm", out, input_shapes={"input": ("batch", 3, "h", "w")},
                  dims=[parse_dim_option("batch=1..3"), parse_dim_option("h=16..64:8"),
                        parse_dim_option("w=16..64:8")],
                  buckets=[{"input": (1, 3, 32, 32)}], verify=False)
    bundle = package(out, tmp_path / "bundle")
    assert bundle.arch == "aarch64"
    reference = _cnn_reference_model()
    for shape, function in [((1, 3, 32, 32), "main_bucket0"), ((3, 3, 56, 24), "main"),
                            ((2, 3, 16, 64), "main")]:
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        proc, outputs, ran = _mmopt_run(bundle, tmp_path, {"input": x}, ["--threads", "1"])
        assert proc.returncode == 0, proc.stderr
        assert ran == function
        expected = run_onnxruntime(reference, {"input": x})["head.fc"]
        assert float(np.max(np.abs(outputs["head.fc"] - expected))) <= 1e-4, shape
    proc, _outputs, _ran = _mmopt_run(bundle, tmp_path, {"input": np.zeros((1, 3, 36, 32),
                                                                            np.float32)})
    _native_one_line_error(proc, "input input: dim 2 (h) is 36, not a multiple of 8 "
                                 "(range 16..64 in steps of 8)")
    program = tmp_path / "test_capi_dynamic"
    _build_c_test(bundle, program, compiler="aarch64-linux-gnu-gcc")
    assert "ok     ... ran main_bucket0" in _run_c_test(bundle, program)


# ------------------------------------------------------------------------------------------------
# tuning per bucket


@pytest.fixture(scope="module")
def tuned_buckets(tmp_path_factory):
    """The zoo CNN with dynamic height/width, two buckets, one knob trial per task of the
    convolutions; the records are then applied by a compile with the same buckets."""
    from mmopt.tuning.tune import Measurement, tune

    path = tmp_path_factory.mktemp("dyn") / "conv.onnx"
    onnx.save(build("conv_bn_relu"), path)
    db_dir = path.parent / "db"
    options = dict(input_shapes={"input": (1, 3, "h", "w")},
                   dims=[parse_dim_option("h=16..64:8"), parse_dim_option("w=16..64:8")],
                   buckets=[{"input": (1, 3, 32, 32)}, {"input": (1, 3, 48, 64)}])
    report = tune(path, "x86", db_dir, trials_per_task=1, measurement=Measurement(min_repeat_ms=5),
                  tasks=["conv2d"], **options)
    compiled = mmopt.compile(path, "x86", path.parent / "tuned", db=db_dir, **options)
    return db_dir, report, compiled


def test_tuning_tunes_bucket_kernels_keyed_by_their_static_shapes(tuned_buckets):
    db_dir, report, _compiled = tuned_buckets
    assert report.tasks and report.records >= len(report.tasks)
    assert any("not tunable" in n for n in report.notes)  # the dynamic kernels are left out
    tasks = json.loads(next(db_dir.glob("*/tasks.json")).read_text())
    labels = {b for info in tasks.values() for b in info.get("buckets", [])}
    assert labels == {"input:1,3,32,32", "input:1,3,48,64"}
    # a kernel of one bucket is a different workload from the same layer in the other bucket
    assert sum("input:1,3,32,32" in info.get("buckets", []) for info in tasks.values()) >= 1
    shown = CliRunner().invoke(cli, ["db", "show", str(db_dir)])
    assert shown.exit_code == 0, shown.output
    assert "buckets: input:1,3,32,32, input:1,3,48,64" in shown.output


def test_compile_applies_bucket_records(tuned_buckets):
    _db, report, compiled = tuned_buckets
    tuning = compiled.meta.extra["tuning"]
    assert tuning["kernels_tuned"] >= 1
    assert compiled.verification.passed, compiled.verification.to_dict()
    assert {r["function"] for r in compiled.verification.runs} == {
        "main", "main_bucket0", "main_bucket1"}


def test_latency_comparison_times_the_first_bucket(tuned_buckets):
    """``mmopt tune --compare`` on a dynamic model times its first bucket's function, which takes
    the block-count shape of the dims with a multiple before the inputs."""
    from mmopt.tuning.measure import compare_latency

    db_dir, _report, _compiled = tuned_buckets
    comparison = compare_latency(db_dir.parent / "conv.onnx", "x86", db_dir, number=1, repeat=1,
                                 min_repeat_ms=1, input_shapes={"input": (1, 3, "h", "w")},
                                 dims=[parse_dim_option("h=16..64:8"),
                                       parse_dim_option("w=16..64:8")],
                                 buckets=[{"input": (1, 3, 32, 32)}])
    assert comparison.default_s > 0 and comparison.tuned_s > 0
    assert comparison.tasks_tuned >= 1


def test_tuning_a_dynamic_model_needs_buckets(tmp_path):
    from mmopt.tuning.tune import tune

    path = tmp_path / "conv.onnx"
    onnx.save(build("conv_bn_relu"), path)
    with pytest.raises(MmoptError) as exc:
        tune(path, "x86", tmp_path / "db", input_shapes={"input": (1, 3, "h", "w")},
             dims=[parse_dim_option("h=16..64:8"), parse_dim_option("w=16..64:8")], dry_run=True)
    assert "--buckets" in exc.value.message


# ------------------------------------------------------------------------------------------------
# a real third-party model: PP-OCRv4's recognizer, text-line width 80..1600


def test_ocr_recognizer_one_artifact_for_every_width(tmp_path):
    from conftest import OCR_MODELS, _rapidocr_models

    root = _rapidocr_models()
    if root is None:
        pytest.skip("rapidocr-onnxruntime is not installed (scripts/setup.sh installs it)")
    path = root / OCR_MODELS["ocr_rec"][0]
    # the file names batch and width p2o.DynamicDimension.0/.1 and leaves the height unnamed
    result = mmopt.compile(path, "x86", tmp_path / "rec", input_shapes={"x": (1, 3, 48, "width")},
                           dims=[parse_dim_option("width=80..1600")])
    v = result.verification
    assert v.passed and v.max_abs <= 1e-4, v.to_dict()
    widths = sorted(r["sizes"]["width"] for r in v.runs)
    assert widths[0] == 80 and widths[-1] == 1600 and len(widths) >= 5
    assert any(w % 2 for w in widths)  # an odd width
    # the output's time axis follows the width
    steps = {r["sizes"]["width"]: r["shapes"]["softmax_11.tmp_0"][1] for r in v.runs}
    assert steps[1600] > steps[80]


# ------------------------------------------------------------------------------------------------
# the YOLOv8n-style detector exported with dynamic batch, height and width (issue 16, must-show 1;
# the full range 320..1280 is checked in the commit that adds this test, a smaller one here)


def test_detector_one_artifact_for_every_size(tmp_path):
    """FPN neck (2x nearest up-sampling concatenated with the finer map) and anchors computed from
    the feature maps: symbolic through import, fusion and the CPU schedules; every degradation of
    the dynamic kernels is in the artifact JSON (and no block is left unscheduled)."""
    path = tmp_path / "yolov8n_dynamic.onnx"
    onnx.save(build("yolov8n_dynamic"), path)
    result = mmopt.compile(path, "x86", tmp_path / "det",
                           dims=[parse_dim_option("batch=1..2"),
                                 parse_dim_option("height=64..256:32"),
                                 parse_dim_option("width=64..256:32")])
    v = result.verification
    assert v.passed, v.to_dict()
    sizes = [r["sizes"] for r in v.runs]
    assert len(sizes) >= 5 and any(s["height"] != s["width"] for s in sizes)
    assert any((s["height"] // 32) % 2 for s in sizes)  # an odd number of 32-pixel blocks
    # anchors: (h/8)(w/8) + (h/16)(w/16) + (h/32)(w/32) for an input of h x w
    for r in v.runs:
        h, w = r["sizes"]["height"], r["sizes"]["width"]
        anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
        assert r["shapes"]["model.22.output"] == [r["sizes"]["batch"], 84, anchors]
    extra = json.loads(result.meta_path.read_text())["extra"]
    assert "schedule_fallbacks" not in extra
    whats = [d["what"] for d in extra["dynamic_kernels"]["degradations"]]
    # the 3x3 convolutions run as Winograd at every size (odd tile counts rounded up)
    assert not any(w.startswith("winograd:") for w in whats), whats
    # the up-sampled map's size is simplified like the finer map's: FuseTIR fuses the packed
    # convolutions after the concatenations (no fallback to unpacked weights)
    assert not any(w.startswith("pack_weights:") for w in whats), whats
    # a non-multiple height is refused before any kernel runs
    with pytest.raises(MmoptError) as exc:
        load(tmp_path / "det")(images=np.zeros((1, 3, 80, 64), np.float32))
    assert "dim 2 (height) is 80, not a multiple of 32" in exc.value.message
