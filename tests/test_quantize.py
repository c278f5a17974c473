"""Static int8 QDQ, fp16 and weight-only quantization on small graphs, checked against onnxruntime."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper, parser

from mmopt.cli.main import cli
from mmopt.errors import MmoptError
from mmopt.quantize import Preprocess, quantize
from mmopt.quantize import data as qdata
from mmopt.runtime.verify import run_onnxruntime


def _small_cnn(opset: int = 11) -> onnx.ModelProto:
    """Conv-BN-Relu, Conv-Relu, GAP, Flatten, Gemm on [N,3,16,16]; opset 11 on purpose."""
    model = parser.parse_model(f"""
    <ir_version: 7, opset_import: ["" : {opset}]>
    net (float[N,3,16,16] x) => (float[N,10] y) {{
        c1 = Conv <pads=[1,1,1,1], kernel_shape=[3,3]> (x, w1, b1)
        n1 = BatchNormalization (c1, g1, be1, m1, v1)
        r1 = Relu (n1)
        c2 = Conv <pads=[1,1,1,1], kernel_shape=[3,3], strides=[2,2]> (r1, w2, b2)
        r2 = Relu (c2)
        p = GlobalAveragePool (r2)
        f = Flatten (p)
        y = Gemm <transB=1> (f, w3, b3)
    }}""")
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
        "g1": rng.uniform(0.5, 1.5, 8), "be1": rng.standard_normal(8) * 0.1,
        "m1": rng.standard_normal(8) * 0.1, "v1": rng.uniform(0.5, 1.5, 8),
        "w2": rng.standard_normal((16, 8, 3, 3)) * 0.2, "b2": rng.standard_normal(16) * 0.1,
        "w3": rng.standard_normal((10, 16)) * 0.5, "b3": rng.standard_normal(10) * 0.1,
    }
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k)
                                   for k, v in inits.items())
    onnx.checker.check_model(model)
    return model


def _data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _initializers(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def cnn() -> onnx.ModelProto:
    return _small_cnn()


@pytest.fixture(scope="module")
def quantized(cnn):
    return quantize(cnn, _data(32), method="entropy")


def test_static_int8_qdq_structure(quantized):
    model, report = quantized
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert "BatchNormalization" not in ops  # folded into the Conv before quantizing
    assert ops["Conv"] == 2 and ops["Gemm"] == 1
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 7
    opset = next(o.version for o in model.opset_import if o.domain == "")
    assert opset >= 13  # normalized from 11: per-channel DequantizeLinear needs an axis
    inits = _initializers(model)
    weights = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].ndim >= 2}
    assert len(weights) == 3
    for name, node in weights.items():
        assert inits[name].dtype == np.int8
        assert inits[node.input[1]].ndim == 1  # a scale per output channel
        assert not inits[node.input[2]].any()  # symmetric: zero points are 0
    biases = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in inits and inits[n.input[0]].dtype == np.int32]
    assert len(biases) == 3  # int32 bias, scale = input scale * weight scale
    activation_types = {inits[n.input[2]].dtype for n in model.graph.node
                        if n.op_type == "QuantizeLinear"}
    assert activation_types == {np.dtype(np.uint8)}  # the default
    assert report.samples == 32 and report.tensors_calibrated > 0
    assert report.method == "entropy" and report.per_channel


def test_static_int8_matches_float_within_budget(cnn, quantized):
    model, _ = quantized
    feeds = _data(16, seed=1)
    ref = run_onnxruntime(cnn, feeds)["y"]
    got = run_onnxruntime(model, feeds)["y"]
    assert _cosine(ref, got) > 0.999
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_every_method_runs_and_stays_close(cnn, method):
    model, report = quantize(cnn, _data(16), method=method, activations="int8",
                             eval_data=_data(8, seed=1), metric="cosine")
    assert report.evaluation.cosine > 0.999
    inits = _initializers(model)
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)  # int8: symmetric


def test_per_tensor_weights(cnn):
    model, _ = quantize(cnn, _data(8), per_channel=False)
    inits = _initializers(model)
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
              and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim >= 2]
    assert scales and all(s.ndim == 0 for s in scales)


def _weight_magnitudes(model) -> list[int]:
    inits = _initializers(model)
    return [int(np.abs(inits[n.input[0]].astype(np.int16)).max()) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
            and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim >= 2]


def test_seven_bit_weights(cnn, tmp_path):
    """--weight-bits 7: every weight in [-64, 64] (the range vpmaddubsw multiplies exactly), the
    largest of each tensor reaching it; 8 bits use the full grid; other values are refused."""
    full, report = quantize(cnn, _data(8))
    seven, report7 = quantize(cnn, _data(8), weight_bits=7)
    assert report.weight_bits == 8 and report7.weight_bits == 7
    assert max(_weight_magnitudes(full)) == 127
    assert _weight_magnitudes(seven) and set(_weight_magnitudes(seven)) == {64}
    x = _data(4, seed=3)
    ref = run_onnxruntime(cnn, x)["y"]
    assert _cosine(run_onnxruntime(seven, x)["y"], ref) > 0.99
    with pytest.raises(MmoptError, match="--weight-bits 6"):
        quantize(cnn, _data(8), weight_bits=6)
    onnx.save(cnn, tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", **_data(8))
    result = CliRunner().invoke(cli, ["quantize", str(tmp_path / "net.onnx"), "-o",
                                      str(tmp_path / "q.onnx"), "--calib",
                                      str(tmp_path / "calib.npz"), "--weight-bits", "7"])
    assert result.exit_code == 0, result.output
    assert "7-bit weights" in result.output
    assert set(_weight_magnitudes(onnx.load(tmp_path / "q.onnx"))) == {64}


def test_fp16_with_calibration_data_on_a_folded_batchnorm(cnn):
    """fp16 with --calib measures each float tensor's magnitude; the Conv output that BatchNorm
    folding removed (still described in value_info) is not asked for (onnxruntime refused the
    whole model: "Graph output ... does not exist in the graph")."""
    model, report = quantize(cnn, _data(8), dtype="fp16")
    assert report.samples == 8
    x = _data(4, seed=3)
    assert _cosine(run_onnxruntime(model, x)["y"], run_onnxruntime(cnn, x)["y"]) > 0.999


def test_quantization_is_deterministic(cnn, quantized):
    again, _ = quantize(cnn, _data(32), method="entropy")
    assert again.SerializeToString() == quantized[0].SerializeToString()


def test_exclude_by_op_type_and_name(cnn):
    model, report = quantize(cnn, _data(8), exclude=["Gemm"])
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] == "w3"  # float weight, no DequantizeLinear in front
    assert report.excluded == [gemm.name]
    with pytest.raises(MmoptError, match=r"--exclude Nope: no node or op type.*Conv"):
        quantize(cnn, _data(8), exclude=["Nope"])


def test_option_errors(cnn):
    with pytest.raises(MmoptError, match="needs calibration data"):
        quantize(cnn)
    with pytest.raises(MmoptError, match="--max-drop needs --eval"):
        quantize(cnn, _data(4), max_drop="1%")
    with pytest.raises(MmoptError, match="--method"):
        quantize(cnn, _data(4), method="kl")
    with pytest.raises(MmoptError, match=r"no data for input\(s\) x"):
        quantize(cnn, {"image": _data(4)["x"]})
    with pytest.raises(MmoptError, match=r"shape \[5, 5\]"):
        quantize(cnn, {"x": np.zeros((2, 5, 5), np.float32)})


# --------------------------------------------------------------------------------------------------
# data sources


def test_data_sources_agree(tmp_path, cnn):
    arrays = _data(6)
    np.savez(tmp_path / "calib.npz", **arrays)
    np.save(tmp_path / "calib.npy", arrays["x"])
    per_sample = tmp_path / "samples"
    per_sample.mkdir()
    for i in range(6):
        np.save(per_sample / f"{i}.npy", arrays["x"][i])
    sources = [arrays, arrays["x"], tmp_path / "calib.npz", str(tmp_path / "calib.npy"), per_sample,
               [arrays["x"][i] for i in range(6)], [{"x": arrays["x"][i:i + 1]} for i in range(6)]]
    results = [quantize(cnn, s, method="minmax")[0].SerializeToString() for s in sources]
    assert all(r == results[0] for r in results)


def test_samples_limit_and_batching(cnn):
    inputs = qdata.input_specs(cnn)
    source = qdata.open_data(_data(10), inputs)
    batches = list(qdata.batches(source, inputs, 4, limit=7))
    assert [n for _, n in batches] == [4, 3]
    assert batches[0][0]["x"].shape == (4, 3, 16, 16)
    _, report = quantize(cnn, _data(10), samples=3)
    assert report.samples == 3


def test_image_directory_with_toml_preprocessing(tmp_path, cnn):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    spec = tmp_path / "pre.toml"
    spec.write_text('[preprocess]\nresize = 18\ncrop = [16, 16]\nmean = [0.5, 0.5, 0.5]\n'
                    'std = [0.25, 0.25, 0.25]\nchannel_order = "BGR"\n')
    pre = Preprocess.from_toml(spec)
    source = qdata.open_data(tmp_path / "images", qdata.input_specs(cnn), preprocess=pre)
    samples = list(source.samples())
    assert len(samples) == 6 and source.has_labels
    assert [label for _, label in samples] == [0, 0, 0, 1, 1, 1]
    x = samples[0][0]["x"]
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6  # (p/255 - 0.5) / 0.25
    model, report = quantize(cnn, tmp_path / "images", preprocess=pre)
    assert report.samples == 6
    bad = tmp_path / "bad.toml"
    bad.write_text("resize = 18\nsize = 3\n")
    with pytest.raises(MmoptError, match="unknown key.*size"):
        Preprocess.from_toml(bad)


def test_pickled_arrays_are_refused(tmp_path, cnn):
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MmoptError, match="pickled"):
        quantize(cnn, tmp_path / "obj.npy")


# --------------------------------------------------------------------------------------------------
# fp16 and weight-only


def test_fp16_keeps_sensitive_ops_in_fp32():
    import models_zoo

    model = models_zoo.build("transformer_block")
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 16, 64)).astype(np.float32)}
    converted, report = quantize(model, dtype="fp16")
    onnx.checker.check_model(converted)
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in set(types.values())
    kept = {n.op_type for n in converted.graph.node if n.name in set(report.kept_float)}
    assert kept & {"Softmax", "ReduceMean", "Sqrt", "Pow"}  # attention softmax, LayerNorm stats
    ref = run_onnxruntime(model, feeds)
    got = run_onnxruntime(converted, feeds)
    (name, r), = ref.items()
    assert got[name].dtype == np.float32  # inputs and outputs stay fp32
    assert _cosine(r, got[name]) > 0.9999


def test_weight_only_int8():
    import models_zoo

    model = models_zoo.build("mlp_gelu")
    feeds = {"input": np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)}
    quantized_model, report = quantize(model, weight_only=True)
    onnx.checker.check_model(quantized_model)
    details = report.details["weight_only"]
    assert len(details["weights"]) >= 3
    assert details["bytes_after"] < 0.3 * details["bytes_before"]
    ops = Counter(n.op_type for n in quantized_model.graph.node)
    assert ops["DequantizeLinear"] == len(details["weights"]) and "QuantizeLinear" not in ops
    ref = run_onnxruntime(model, feeds)
    got = run_onnxruntime(quantized_model, feeds)
    (name, r), = ref.items()
    assert _cosine(r, got[name]) > 0.999


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_quantize(tmp_path, cnn):
    onnx.save(cnn, tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", **_data(8))
    np.savez(tmp_path / "eval.npz", **_data(8, seed=1))
    runner = CliRunner()
    result = runner.invoke(cli, ["quantize", str(tmp_path / "net.onnx"), "-o",
                                 str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                 "--eval", str(tmp_path / "eval.npz"), "--method", "percentile",
                                 "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "int8 QDQ (percentile" in result.output and "evaluation" in result.output
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"))
    assert (tmp_path / "r.json").read_text().startswith("{")

    result = runner.invoke(cli, ["quantize", str(tmp_path / "net.onnx"), "-o",
                                 str(tmp_path / "q2.onnx")])
    assert result.exit_code == 2
    assert "mmopt: error: static int8 quantization needs calibration data" in result.output
    assert not (tmp_path / "q2.onnx").exists()


def test_cli_accuracy_aware_budget_not_met_exits_1(tmp_path, cnn, monkeypatch):
    onnx.save(cnn, tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", **_data(8))
    np.savez(tmp_path / "eval.npz", **_data(4, seed=1))
    # Keeping every node in float gives the float model (drop 0), so any budget >= 0 can be met;
    # an evaluator that reports one point more than it measures makes the budget unreachable.
    from mmopt.quantize.evaluate import Evaluator

    measured = Evaluator.compare

    def one_point_worse(self, got):
        score = measured(self, got)
        return dataclasses.replace(score, drop=score.drop + 1.0)

    monkeypatch.setattr(Evaluator, "compare", one_point_worse)
    result = CliRunner().invoke(cli, [
        "quantize", str(tmp_path / "net.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib",
        str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"), "--metric", "snr",
        "--max-drop", "0.5%", "--json"])
    assert result.exit_code == 1, result.output
    import json

    report = json.loads(result.output)
    aa = report["accuracy_aware"]
    assert not aa["met"] and aa["metric"] == "snr" and aa["max_drop"] == 0.5
    assert report["eval_engine"] == "reference"
    assert len(aa["sensitivities"]) == len(aa["steps"]) - 1  # every candidate tried in turn
    assert aa["steps"][0]["action"] == "all int8"
    assert (tmp_path / "q.onnx").exists()  # the best model found is still written


def test_cli_max_drop_spellings_and_eval_engine(tmp_path, cnn):
    """``--max-drop`` reads as ``mmopt check --max-drop`` does; ``--eval-engine`` is reported."""
    import json

    onnx.save(cnn, tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", **_data(8))
    np.savez(tmp_path / "eval.npz", **_data(4, seed=1))
    runner = CliRunner()

    def run(*extra):
        return runner.invoke(cli, [
            "quantize", str(tmp_path / "net.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib",
            str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"), "--metric",
            "cosine", *extra])

    budgets = {}
    for spelling in ("0.5%", "0.005"):
        result = run("--max-drop", spelling, "--json")
        assert result.exit_code == 0, result.output
        budgets[spelling] = json.loads(result.output)["accuracy_aware"]["max_drop"]
    assert budgets == {"0.5%": 0.5, "0.005": 0.5}  # percentage points, both spellings

    for bare in ("1", "2"):
        result = run("--max-drop", bare)
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith("mmopt: error: --max-drop") and f"write {bare}%" in line

    result = run("--eval-engine", "onnxruntime", "--report", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert "eval engine  onnxruntime (onnxruntime, default optimizations" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["eval_engine"] == "onnxruntime"
    result = run()
    assert "eval engine  reference (onnxruntime, graph optimizations off" in result.output
    result = run("--eval-engine", "tvm")
    assert result.exit_code == 2 and "'tvm' is not one of" in result.output


def test_evaluation_runs_on_the_chosen_engine(cnn, monkeypatch):
    from mmopt.runtime import ort

    seen = []
    real = ort.session

    def spy(model, *, label, optimization="off", **options):
        if label.startswith("evaluation"):
            seen.append(optimization)
        return real(model, label=label, optimization=optimization, **options)

    monkeypatch.setattr(ort, "session", spy)
    for engine, level in (("reference", "off"), ("onnxruntime", "all")):
        seen.clear()
        _, report = quantize(cnn, _data(8), eval_data=_data(4, seed=1), metric="cosine",
                             eval_engine=engine)
        assert seen and set(seen) == {level}, (engine, seen)  # the float and the int8 model
        assert report.eval_engine == engine and report.to_dict()["eval_engine"] == engine
    _, report = quantize(cnn, _data(8))
    assert report.eval_engine is None
    with pytest.raises(MmoptError, match="--eval-engine tvm: use one of"):
        quantize(cnn, _data(8), eval_data=_data(4), eval_engine="tvm")


def test_artifact_engine_scores_the_compiled_model(cnn, tmp_path):
    """``--eval-engine artifact``: the int8 candidate is compiled for the target and run here; its
    score equals the reference semantics' up to the integer kernels' rounding, and the CLI names
    the engine and target."""
    _, ref = quantize(cnn, _data(16), eval_data=_data(12, seed=1), metric="cosine")
    _, art = quantize(cnn, _data(16), eval_data=_data(12, seed=1), metric="cosine",
                      eval_engine="artifact", target="x86-avx2")
    assert art.eval_engine == "artifact" and art.to_dict()["eval_target"] == "x86-avx2"
    assert abs(art.evaluation.drop - ref.evaluation.drop) < 0.05, (art.evaluation, ref.evaluation)
    assert art.evaluation.cosine > 0.99
    np.savez(tmp_path / "c.npz", **_data(8))
    np.savez(tmp_path / "e.npz", **_data(6, seed=2))
    onnx.save(cnn, tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m.onnx"), "-o",
                                      str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "c.npz"),
                                      "--eval", str(tmp_path / "e.npz"), "--metric", "cosine",
                                      "--eval-engine", "artifact", "--target", "x86-avx2"])
    assert result.exit_code == 0, result.output
    assert "eval engine artifact (the compiled mmopt artifact for target x86-avx2" in \
        " ".join(result.output.split())


# --------------------------------------------------------------------------------------------------
# --prefer speed (latency-aware mixed precision)


def test_latency_attribution_and_decision():
    """Kernel minimums go to the contractions they compute (split evenly when a kernel computes
    two); a layer is a candidate for float only when int8 is slower by more than the margin and
    by more than a few microseconds, and a layer one profile does not map stays int8."""
    from types import SimpleNamespace as K

    from mmopt.quantize.latency_aware import MARGIN, layer_times, slower_layers

    nodes = {"a": "Conv", "b": "Conv", "c": "MatMul", "d": "Conv", "e": "Conv"}
    float_times = layer_times([K(onnx_nodes=["a", "relu"], min_ms=1.0),
                               K(onnx_nodes=["b", "c"], min_ms=2.0),
                               K(onnx_nodes=["e"], min_ms=0.001)], nodes)
    assert float_times == {"a": 1.0, "b": 1.0, "c": 1.0, "e": 0.001}
    int8_times = layer_times([K(onnx_nodes=["q", "a", "dq"], min_ms=0.5),
                              K(onnx_nodes=["b"], min_ms=1.0 + MARGIN / 2),
                              K(onnx_nodes=["c"], min_ms=1.0 + 2 * MARGIN),
                              K(onnx_nodes=["d"], min_ms=9.0),
                              K(onnx_nodes=["e"], min_ms=0.003)], nodes)  # 3x, but 2 us
    rows = {r.node: r for r in slower_layers(float_times, int8_times, nodes)}
    assert [n for n, r in rows.items() if r.int8_slower] == ["c"]
    assert rows["d"].float_ms is None and not rows["d"].int8_slower


def test_candidates_slower_in_place_go_back_to_int8():
    """A float candidate whose kernels in the mixed model (the quantize fused after it counted)
    take at least its int8 time goes back to int8; one that got faster, or that the mixed
    profile does not map, stays float."""
    from mmopt.quantize.latency_aware import reverted_layers

    int8_times = {"a": 0.66, "b": 1.78, "c": 0.38, "d": 0.5}
    mixed_times = {"a": 0.76, "b": 1.27, "c": 0.38}
    assert reverted_layers(["a", "b", "c", "d"], mixed_times, int8_times) == {"a": 0.76,
                                                                              "c": 0.38}


def test_prefer_speed_measures_every_layer_and_builds_the_mixed_model(cnn, monkeypatch):
    """Real compiles and profiles on this machine: every named contraction gets both times; with
    the margin forced below zero every layer counts as slower in int8, so the mixed model (all of
    them float) is built, timed against the all-int8 one and reported either way."""
    from mmopt.quantize import latency_aware

    named = onnx.ModelProto()
    named.CopyFrom(cnn)
    for i, node in enumerate(named.graph.node):
        node.name = node.name or f"{node.op_type.lower()}{i}"
    shapes = {"x": (1, 3, 16, 16)}
    _, report = quantize(named, _data(4), prefer="speed", input_shapes=shapes)
    lat = report.latency
    assert {r.node for r in lat.layers} == {"conv0", "conv3", "gemm7"}
    assert all(r.float_ms and r.int8_ms for r in lat.layers if r.op_type == "Conv")
    assert lat.float_ms > 0 and lat.int8_ms > 0
    assert report.to_dict()["latency"]["layers"]
    from mmopt.report import render

    page = render(report.to_dict())
    assert "speed-layers" in page and "conv3 (Conv)" in page

    monkeypatch.setattr(latency_aware, "MARGIN", -1.0)
    monkeypatch.setattr(latency_aware, "MIN_DIFFERENCE_MS", -1.0)
    out, report = quantize(named, _data(4), prefer="speed", input_shapes=shapes)
    lat = report.latency
    assert {"int8", "mixed"} <= set(lat.interleaved) <= {"int8", "mixed", "refined"}
    candidates = {r.node for r in lat.layers if r.int8_slower}
    assert set(lat.reverted) <= candidates
    # a refined model exists when some candidates went back to int8 and some stayed float
    assert ("refined" in lat.interleaved) == (bool(lat.reverted)
                                              and set(lat.reverted) != candidates)
    if lat.chosen == "mixed":
        float_convs = {n.name for n in out.graph.node if n.op_type == "Conv"}
        assert set(lat.kept_float) <= set(report.kept_float)
        assert "conv0" in float_convs and not any(
            n.op_type == "DequantizeLinear" and n.output[0] in
            [i for c in out.graph.node if c.name == "conv0" for i in c.input[1:2]]
            for n in out.graph.node)
    elif lat.chosen == "refined":
        assert set(lat.kept_float) == candidates - set(lat.reverted)
    else:
        assert lat.kept_float == [] and "no mixed model was 2% faster" in lat.notes[-1]


def test_prefer_option_errors(cnn):
    with pytest.raises(MmoptError, match="--prefer fast"):
        quantize(cnn, _data(4), prefer="fast")
    with pytest.raises(MmoptError, match="--prefer speed applies to static int8"):
        quantize(cnn, _data(4), prefer="speed", dtype="fp16")
