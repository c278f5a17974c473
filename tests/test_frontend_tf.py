"""TensorFlow frontends: SavedModel, Keras (.keras/.h5), frozen GraphDef and TFLite -> ONNX, checked
against TensorFlow itself (Keras, the SavedModel's signature, the graph, the TFLite interpreter).

Also: Keras files are loaded in safe mode (code in them never runs), graphs that touch files are
refused, unsupported layers and operators fail in one line, frozen graphs take --inputs/--outputs,
and compile takes these formats directly. The ResNet50 zoo model and the compile runs are ``slow``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

from mmopt import frontends
from mmopt.errors import MmoptError, ModelLoadError, UnsupportedModelError
from mmopt.runtime.verify import compare, run_onnxruntime

_MISSING = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
needs_tf = pytest.mark.skipif(bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed "
                              "(pip install 'mmopt[tf]')")

#: the formats of the zoo, and the frontend each is read by
FORMATS = {"keras": "tensorflow", "h5": "tensorflow", "savedmodel": "tensorflow",
           "pb": "tensorflow", "tflite": "tflite"}
#: the ONNX input and output names each format gives MobileNetV2: the Keras layers, the serving
#: signature (a .tflite converted from Keras has the same one), the graph's tensors less ":0"
IO_NAMES = {"keras": ("input_layer", "predictions"), "h5": ("input_layer", "predictions"),
            "savedmodel": ("keras_tensor", "output_0"), "tflite": ("keras_tensor", "output_0"),
            "pb": ("input", "Identity")}


def _source_outputs(path, model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    """The source framework's outputs for ``feeds``, as ``mmopt import --verify`` computes them."""
    return frontends.frontend(frontends.detect(path)).load().reference_outputs(path, model, feeds)


def _assert_matches_source(path, model: onnx.ModelProto, x: np.ndarray) -> float:
    """onnxruntime on ``model`` vs the source framework: |d| <= 1e-4 + 1e-4·|ref| everywhere."""
    (name,) = [i.name for i in model.graph.input]
    feeds = {name: x}
    report = compare(_source_outputs(path, model, feeds), run_onnxruntime(model, feeds),
                     atol=1e-4, rtol=1e-4)
    assert report.passed, report.to_dict()
    return max(o.max_abs for o in report.outputs)


def _cli(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "mmopt.cli.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def keras():
    if _MISSING:
        pytest.skip(f"{', '.join(_MISSING)} not installed (pip install 'mmopt[tf]')")
    from mmopt.frontends.tensorflow import tf_modules

    tf_modules()  # TensorFlow's import, quietly
    import keras

    return keras


@pytest.fixture(scope="module")
def mobilenet(keras, tmp_path_factory):
    """The MobileNetV2 zoo model written once in every format: ``({fmt: path}, example input)``."""
    from models_zoo import tf_models

    directory = tmp_path_factory.mktemp("tf_zoo")
    model, x = tf_models.build("mobilenet_v2")
    paths = {fmt: tf_models.save(model, directory / tf_models.FORMATS[fmt].format(
        name="mobilenet_v2"), fmt) for fmt in FORMATS}
    return paths, x


# --------------------------------------------------------------------------------------------------
# the zoo through `mmopt import`'s code path, compared with TensorFlow


@needs_tf
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_zoo_mobilenet_v2_matches_source(mobilenet, fmt):
    paths, x = mobilenet
    path = paths[fmt]
    assert frontends.detect(path) == FORMATS[fmt]
    model = frontends.to_onnx(path)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    (value,) = model.graph.input
    (output,) = model.graph.output
    assert (value.name, output.name) == IO_NAMES[fmt]
    assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == \
        ["batch", 96, 96, 3]
    assert _assert_matches_source(path, model, x) < 1e-5
    # the batch dim really is dynamic
    batch3 = np.concatenate([x, x * 0.5, -x])
    _assert_matches_source(path, model, batch3)


@needs_tf
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "tflite", "pb"])
def test_zoo_resnet50_matches_source(keras, tmp_path, fmt):
    from models_zoo import tf_models

    path = tf_models.write("resnet50", tmp_path, fmt=fmt)
    model = frontends.to_onnx(path)
    assert _assert_matches_source(path, model, tf_models.example_input("resnet50")) < 1e-4


@needs_tf
def test_input_shapes_fix_the_batch(mobilenet):
    paths, x = mobilenet
    model = frontends.to_onnx(paths["tflite"], input_shapes={"keras_tensor": (2, 96, 96, 3)})
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 96, 96, 3]
    _assert_matches_source(paths["tflite"], model, np.concatenate([x, -x]))


@needs_tf
@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "tflite"])
def test_several_inputs_and_outputs_by_name(keras, tmp_path, fmt):
    from models_zoo import tf_models

    image, meta = keras.Input((6,), name="image"), keras.Input((3,), name="meta")
    hidden = keras.layers.Dense(5, name="body")(image)
    score = keras.layers.Dense(1, name="score")(keras.layers.Concatenate()([hidden, meta]))
    aux = keras.layers.Dense(2, name="aux")(meta)
    model = keras.Model([image, meta], [score, aux], name="two")
    path = tf_models.save(model, tmp_path / tf_models.FORMATS[fmt].format(name="two"), fmt)
    converted = frontends.to_onnx(path)
    assert sorted(i.name for i in converted.graph.input) == ["image", "meta"]
    # Keras names outputs after their layers; a signature numbers them in the model's order
    shapes = ({"score": (2, 1), "aux": (2, 2)} if fmt == "keras"
              else {"output_0": (2, 1), "output_1": (2, 2)})
    assert sorted(o.name for o in converted.graph.output) == sorted(shapes)
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((2, 6), dtype=np.float32),
             "meta": rng.standard_normal((2, 3), dtype=np.float32)}
    reference = _source_outputs(path, converted, feeds)
    assert {k: v.shape for k, v in reference.items()} == shapes
    assert compare(reference, run_onnxruntime(converted, feeds)).passed


# --------------------------------------------------------------------------------------------------
# detection


@needs_tf
def test_detection(mobilenet, tmp_path):
    paths, _ = mobilenet
    saved = paths["savedmodel"]
    assert frontends.detect(saved) == "tensorflow"
    assert frontends.detect(saved / "saved_model.pb") == "tensorflow"
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(paths["tflite"].read_bytes())
    assert frontends.detect(renamed) == "tflite"           # by content: the TFL3 identifier
    with pytest.raises(ModelLoadError, match="is a directory"):
        frontends.detect(tmp_path)
    not_keras = tmp_path / "notes.h5"
    not_keras.write_text("hello")
    with pytest.raises(ModelLoadError, match="cannot tell which framework"):
        frontends.detect(not_keras)


def test_missing_extra_is_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    saved = tmp_path / "sm"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    assert frontends.detect(saved) == "tensorflow"          # detection needs no TensorFlow
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(24))
    for path in (saved, tflite):
        with pytest.raises(MmoptError, match=r"pip install 'mmopt\[tf\]'"):
            frontends.to_onnx(path)


# --------------------------------------------------------------------------------------------------
# unsupported layers and operators: one line naming the layer (or node / operator), type, file


def _binned(keras):
    """A model whose Discretization layer becomes TensorFlow's Bucketize (tf2onnx has none)."""
    x = keras.Input((8,), name="x")
    bins = keras.layers.Discretization(bin_boundaries=[0.0, 1.0], name="bins")(x)
    return keras.Model(x, keras.layers.Dense(4, name="head")(bins), name="binned")


@needs_tf
def test_unsupported_layer_is_named(keras, tmp_path):
    from models_zoo import tf_models

    model = _binned(keras)
    expected = {
        "keras": "layer 'bins' (Discretization) uses TensorFlow op Bucketize, which has no ONNX "
                 "conversion",
        "savedmodel": "node 'StatefulPartitionedCall/binned_1/bins_1/Bucketize' (TensorFlow op "
                      "Bucketize) has no ONNX conversion",
        "pb": "(TensorFlow op Bucketize) has no ONNX conversion",
        "tflite": "operator BUCKETIZE (writing tensor 'binned_1/bins_1/Bucketize') has no ONNX "
                  "conversion",
    }
    for fmt, text in expected.items():
        path = tf_models.save(model, tmp_path / tf_models.FORMATS[fmt].format(name="binned"), fmt)
        with pytest.raises(UnsupportedModelError) as info:
            frontends.to_onnx(path)
        message = info.value.message
        assert message.startswith(f"{path}: ") and text in message, message
        assert "\n" not in message


@needs_tf
def test_cli_unsupported_layer_is_one_line_exit_2(keras, tmp_path):
    path = tmp_path / "binned.keras"
    _binned(keras).save(path)
    proc = _cli("import", path, "-o", tmp_path / "out.onnx")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mmopt: error: {path}: layer 'bins' (Discretization) uses "
                               "TensorFlow op Bucketize")
    assert not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------------------------------
# safety: Keras files load with safe_mode; nothing in them runs


@needs_tf
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_is_refused_without_running_it(keras, tmp_path, suffix):
    marker = tmp_path / "ran"

    def trap(t):
        marker.touch()
        return t * 2

    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Lambda(lambda t: trap(t), name="twice")(x))
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model traced the lambda once
    with pytest.raises(UnsupportedModelError) as info:
        frontends.to_onnx(path)
    assert info.value.message.startswith(f"{path}: layer 'twice' (Lambda) holds Python code")
    assert "safe_mode=True" in info.value.message
    assert not marker.exists()


@needs_tf
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_unknown_custom_layer_is_named(keras, tmp_path, suffix):
    class Doubler(keras.layers.Layer):  # not registered: Keras cannot rebuild it from the file
        def call(self, x):
            return x * 2

    x = keras.Input((4,), name="x")
    model = keras.Model(x, Doubler(name="doubler")(keras.layers.Dense(4)(x)))
    path = tmp_path / f"custom{suffix}"
    model.save(path)
    with pytest.raises(UnsupportedModelError,
                       match=r"layer 'doubler' \(Doubler\) is not a Keras built-in layer"):
        frontends.to_onnx(path)


def test_keras_sniff_needs_a_keras_archive(tmp_path):
    from mmopt.frontends import tensorflow as tf_frontend

    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    assert tf_frontend.sniff(path) == "keras"
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("data.pkl", b"")
    assert tf_frontend.sniff(other) is None


# --------------------------------------------------------------------------------------------------
# operators mmopt adds to tf2onnx: exact and tanh GELU (Erfc; TFLite GELU), log1p, expm1


@needs_tf
@pytest.mark.parametrize("fmt", ["keras", "tflite"])
def test_gelu_log1p_expm1(keras, tmp_path, fmt):
    from models_zoo import tf_models

    x = keras.Input((16,), name="x")
    exact = keras.layers.Dense(16, activation="gelu", name="exact")(x)
    approx = keras.ops.gelu(keras.layers.Dense(16, name="approx")(x), approximate=True)
    y = keras.ops.log1p(keras.ops.abs(exact)) + keras.ops.expm1(keras.ops.tanh(approx))
    model = keras.Model(x, y, name="gelus")
    path = tf_models.save(model, tmp_path / f"gelus.{fmt}", fmt)
    converted = frontends.to_onnx(path)
    ops = {n.op_type for n in converted.graph.node}
    assert "Erf" in ops and "Log" in ops and "Exp" in ops
    sample = np.random.default_rng(3).standard_normal((4, 16), dtype=np.float32) * 3
    _assert_matches_source(path, converted, sample)


# --------------------------------------------------------------------------------------------------
# frozen GraphDef: inferred inputs/outputs, --inputs/--outputs


def _two_head_graph(tmp_path):
    """A frozen graph with two inputs and two outputs (one op consumed by both heads)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    w = tf.Variable(np.random.default_rng(0).standard_normal((6, 4), dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, 6), tf.float32, name="a"),
                                  tf.TensorSpec((None, 4), tf.float32, name="b")])
    def heads(a, b):
        hidden = tf.nn.relu(tf.matmul(a, w), name="hidden")
        return tf.identity(hidden * 2.0, name="double"), tf.identity(hidden + b, name="shifted")

    frozen = convert_variables_to_constants_v2(heads.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    path = tmp_path / "heads.pb"
    path.write_bytes(graph_def.SerializeToString())
    return path


@needs_tf
def test_graphdef_inputs_and_outputs(keras, tmp_path):
    path = _two_head_graph(tmp_path)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 6), dtype=np.float32)
    b = rng.standard_normal((3, 4), dtype=np.float32)

    model = frontends.to_onnx(path)  # inferred: the Placeholders, the ops nothing consumes
    assert [i.name for i in model.graph.input] == ["a", "b"]
    assert sorted(o.name for o in model.graph.output) == ["Identity", "Identity_1"]
    reference = _source_outputs(path, model, {"a": a, "b": b})
    assert compare(reference, run_onnxruntime(model, {"a": a, "b": b})).passed

    cut = frontends.to_onnx(path, inputs="a", outputs=["hidden:0"])  # cut at an inner tensor
    assert [i.name for i in cut.graph.input] == ["a"]
    assert [o.name for o in cut.graph.output] == ["hidden"]
    reference = _source_outputs(path, cut, {"a": a})
    assert compare(reference, run_onnxruntime(cut, {"a": a})).passed
    assert (reference["hidden"] >= 0).all()

    with pytest.raises(MmoptError, match=r"--outputs nope: no such tensor in the graph"):
        frontends.to_onnx(path, outputs="nope")
    with pytest.raises(MmoptError, match=r"--inputs/--outputs apply to frozen GraphDef"):
        frontends.to_onnx(_keras_file(keras, tmp_path), outputs="y")


def _keras_file(keras, tmp_path):
    x = keras.Input((2,), name="x")
    path = tmp_path / "tiny.keras"
    keras.Model(x, keras.layers.Dense(2)(x)).save(path)
    return path


@needs_tf
def test_cli_import_frozen_graph_with_outputs(keras, tmp_path):
    path = _two_head_graph(tmp_path)
    out = tmp_path / "hidden.onnx"
    proc = _cli("import", path, "--inputs", "a", "--outputs", "hidden", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "verify   PASS onnxruntime vs tensorflow" in proc.stdout
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == ["hidden"]


# --------------------------------------------------------------------------------------------------
# `mmopt import` on a SavedModel directory; compile from TensorFlow formats directly


@needs_tf
def test_cli_import_saved_model_directory(mobilenet, tmp_path):
    paths, _ = mobilenet
    proc = _cli("import", paths["savedmodel"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(tensorflow)" in proc.stdout
    assert "verify   PASS onnxruntime vs tensorflow" in proc.stdout
    onnx.checker.check_model(onnx.load(tmp_path / "mobilenet_v2_savedmodel.onnx"))


@needs_tf
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "tflite", "savedmodel"])
def test_compile_verifies_against_tensorflow(mobilenet, tmp_path, fmt):
    import mmopt
    from mmopt import ir as mir
    from mmopt.runtime.artifact import CompiledModel

    paths, _ = mobilenet
    path = paths[fmt]
    if path.is_dir():
        try:
            mir.sha256_of(path)
        except IsADirectoryError:
            pytest.xfail("mmopt.ir.sha256_of hashes files only; a SavedModel is a directory")
    result = mmopt.compile(path, "x86", tmp_path / "mnv2", verify=True)
    assert result.verification is not None and result.verification.passed  # vs onnxruntime
    # and the library against the source framework itself
    model = frontends.to_onnx(path)
    feeds = mir.random_inputs(mir.fix_input_shapes(model), 0)
    report = compare(_source_outputs(path, model, feeds), CompiledModel(result.library)(**feeds),
                     atol=1e-4, rtol=1e-4)
    assert report.passed, report.to_dict()


@needs_tf
def test_graph_that_writes_files_is_refused_before_running(keras, tmp_path):
    import tensorflow as tf

    marker = tmp_path / "written"

    class Logger(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
        def __call__(self, x):
            tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
            return {"y": x * 2}

    module = Logger()
    saved = tmp_path / "logger"
    tf.saved_model.save(module, str(saved), signatures=module.__call__.get_concrete_function())
    with pytest.raises(UnsupportedModelError, match=r"\(TensorFlow op WriteFile\) reaches outside"):
        frontends.to_onnx(saved)
    fake = onnx.helper.make_model(onnx.helper.make_graph(
        [], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])]))
    with pytest.raises(UnsupportedModelError, match="WriteFile"):  # nor run to verify
        _source_outputs(saved, fake, {"x": np.ones((1, 4), np.float32)})
    assert not marker.exists()


@needs_tf
def test_damaged_tflite_flatbuffer_is_a_one_line_error_not_a_crash(tmp_path):
    """Issue #17 (fuzzing): tf2onnx opens the file with tf.lite.Interpreter(path), which does not
    verify the flatbuffer; a damaged vector length crashed the process (SIGSEGV/SIGBUS). The
    model is now verified first (the interpreter built from memory runs the verifier)."""
    import struct

    import keras

    from models_zoo import tf_models
    from tf2onnx.tflite.Model import Model

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                            keras.layers.Flatten(), keras.layers.Dense(3)])
    good = tf_models.save(net, tmp_path / "good.tflite", "tflite").read_bytes()
    data = bytearray(good)
    table = Model.GetRootAsModel(data, 0).Subgraphs(0).Tensors(0)._tab
    field = table.Pos + table.Offset(4)  # the first tensor's shape vector
    vector = field + struct.unpack_from("<I", data, field)[0]
    struct.pack_into("<I", data, vector, 0x3FFFFFF0)  # its length, far past the buffer
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    for verb in (["compile", "--target", "x86", "-o", tmp_path / "out" / "m"], ["inspect"]):
        proc = _cli(verb[0], bad, *verb[1:])
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert lines == [f"mmopt: error: {bad}: not a valid TFLite model (The model is not a valid "
                         "Flatbuffer buffer); the file may be truncated or corrupt"], lines
    with pytest.raises(ModelLoadError, match="not a valid TFLite model"):
        frontends.to_onnx(bad)
    assert frontends.to_onnx(tmp_path / "good.tflite").graph.node  # the intact model converts
