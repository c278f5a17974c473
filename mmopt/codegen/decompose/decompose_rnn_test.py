"""decompose_rnn: unrolled RNN/GRU/LSTM compute what onnxruntime's kernels compute.

The unrolled graph is plain ONNX, so each variant is checked on onnxruntime before and after; the
zoo's LSTM and GRU models are compiled end to end.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper

from mmopt import ir as mir
from mmopt.codegen.relax_import import supported_ops
from mmopt.errors import ModelLoadError
from mmopt.runtime.verify import run_onnxruntime
from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    rerun_modified,
    run_decompose,
)

T, B, I, H = 5, 3, 4, 6

#: what the importer supports, less the fused LSTM: every LSTM is unrolled (plain ONNX, so the
#: unrolled graph itself runs on onnxruntime)
UNROLL_ONLY = supported_ops() - {"FusedLSTM"}
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _model(op: str, *, directions: int = 1, layout: int = 0, bias: bool = True,
           seq_lens: bool = False, initial: bool = False, peepholes: bool = False,
           outputs: int = 2, **attrs) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(sum(map(ord, op)) + 7 * directions + 3 * bias + seq_lens)
    g = GATES[op]
    x_shape = [B, T, I] if layout else [T, B, I]
    state_shape = [B, directions, H] if layout else [directions, B, H]
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    inits = {"W": rng.uniform(-0.5, 0.5, (directions, g * H, I)),
             "R": rng.uniform(-0.5, 0.5, (directions, g * H, H))}
    names = ["X", "W", "R"]
    if bias:
        inits["B"] = rng.uniform(-0.5, 0.5, (directions, 2 * g * H))
    names.append("B" if bias else "")
    if seq_lens:
        feeds["L"] = np.array([T, 2, 4], dtype=np.int32)
    names.append("L" if seq_lens else "")
    if initial:
        feeds["h0"] = rng.standard_normal(state_shape).astype(np.float32)
        if op == "LSTM":
            feeds["c0"] = rng.standard_normal(state_shape).astype(np.float32)
    names.append("h0" if initial else "")
    if op == "LSTM":
        names.append("c0" if initial else "")
        if peepholes:
            inits["P"] = rng.uniform(-0.5, 0.5, (directions, 3 * H))
        names.append("P" if peepholes else "")
    while names and names[-1] == "":
        names.pop()
    out_names = ["Y", "Y_h", "Y_c"][:outputs]
    direction = {1: "forward", 2: "bidirectional"}[directions] if "direction" not in attrs else \
        attrs.pop("direction")
    node = helper.make_node(op, names, out_names, name=f"{op.lower()}0", hidden_size=H,
                            direction=direction, layout=layout, **attrs)
    inputs = [helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                            v.shape) for k, v in feeds.items()]
    outs = [helper.make_empty_tensor_value_info(n) for n in out_names]
    graph = helper.make_graph([node], "rnn", inputs, outs,
                              [onnx.numpy_helper.from_array(v.astype(np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return mir.infer_shapes(model), feeds


VARIANTS = [
    ("LSTM", {}),
    ("LSTM", {"directions": 2, "initial": True, "outputs": 3}),
    ("LSTM", {"direction": "reverse", "peepholes": True, "outputs": 3}),
    ("LSTM", {"seq_lens": True, "directions": 2, "outputs": 3}),
    ("LSTM", {"layout": 1, "initial": True, "outputs": 3}),
    ("LSTM", {"clip": 0.5, "input_forget": 1}),
    ("GRU", {}),
    ("GRU", {"linear_before_reset": 1, "directions": 2, "initial": True}),
    ("GRU", {"seq_lens": True, "direction": "reverse"}),
    ("GRU", {"bias": False, "layout": 1}),
    ("RNN", {}),
    ("RNN", {"directions": 2, "seq_lens": True, "initial": True}),
    ("RNN", {"activations": ["Relu"], "direction": "reverse"}),
    ("GRU", {"activations": ["HardSigmoid", "LeakyRelu"], "activation_alpha": [0.3, 0.2],
             "activation_beta": [0.4]}),
]


@pytest.mark.parametrize("op,options", VARIANTS,
                         ids=[f"{op}-{'-'.join(map(str, o)) or 'default'}" for op, o in VARIANTS])
def test_unrolled_recurrence_matches_onnxruntime(op, options):
    model, feeds = _model(op, **options)
    decomposed, report = run_decompose(model, UNROLL_ONLY)
    assert report.counts["unroll_recurrence"] == 1
    assert op not in op_types(decomposed)
    if options.get("layout"):
        # onnxruntime has no batch-major (layout=1) kernels: compare with the time-major model on
        # transposed data (same weights)
        time_major, _ = _model(op, **{**options, "layout": 0})
        moved = {k: v.transpose(1, 0, 2) if k in ("X", "h0", "c0") else v for k, v in feeds.items()}
        expected = run_onnxruntime(time_major, moved)
        got = run_onnxruntime(decomposed, feeds)
        np.testing.assert_allclose(got["Y"], expected["Y"].transpose(2, 0, 1, 3), atol=1e-5)
        for name in ("Y_h", "Y_c"):
            if name in expected:
                np.testing.assert_allclose(got[name], expected[name].transpose(1, 0, 2), atol=1e-5)
    else:
        assert_same_on_onnxruntime(model, decomposed, feeds)
    assert not rerun_modified(decomposed, UNROLL_ONLY)


def test_unknown_sequence_length_is_left_with_the_reason():
    model, _ = _model("LSTM")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    model = mir.infer_shapes(onnx.shape_inference.infer_shapes(model))
    decomposed, report = run_decompose(model)
    assert "LSTM" in op_types(decomposed)
    (rejection,) = [r for r in report.rejections if r.rule == "unroll_recurrence"]
    assert rejection.node == "lstm0" and "sequence length" in rejection.reason


@pytest.mark.parametrize("name", ["lstm_classifier", "gru_tagger"])
def test_zoo_recurrent_models_compile_and_match_onnxruntime(tmp_path, name):
    import mmopt
    from models_zoo import rnn_models

    build = {"lstm_classifier": rnn_models.build_lstm_classifier,
             "gru_tagger": rnn_models.build_gru_tagger}[name]
    model = build()
    features = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    result = mmopt.compile(model, "x86", tmp_path / name, input_shapes={"input": (1, 16, features)})
    assert result.verification.passed, result.verification.to_dict()
    assert result.verification.max_abs < 1e-5


FUSED = [
    {},
    {"direction": "reverse", "initial": True, "outputs": 3},
    {"bias": False, "outputs": 3},
]


@pytest.mark.parametrize("options", FUSED, ids=["default", "reverse-initial", "no-bias"])
def test_plain_lstm_becomes_one_kernel_and_matches_onnxruntime(tmp_path, options):
    import mmopt
    from mmopt.runtime.artifact import load

    model, feeds = _model("LSTM", **options)
    decomposed, report = run_decompose(model)
    assert report.counts["fuse_lstm"] == 1 and set(op_types(decomposed)) == {"FusedLSTM"}
    result = mmopt.compile(model, "x86", tmp_path / "lstm")
    assert result.verification.passed, result.verification.to_dict()
    got = load(result.library)(**feeds)
    expected = run_onnxruntime(model, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5)


def test_other_lstms_are_still_unrolled():
    model, _ = _model("LSTM", directions=2, initial=True, outputs=3)
    _decomposed, report = run_decompose(model)
    assert report.counts["unroll_recurrence"] == 1 and not report.counts.get("fuse_lstm")


def _lstm_with_initial_c(shape) -> onnx.ModelProto:
    model, _ = _model("LSTM", initial=True, outputs=3)
    (c0,) = [v for v in model.graph.input if v.name == "c0"]
    c0.CopyFrom(helper.make_tensor_value_info("c0", onnx.TensorProto.FLOAT, shape))
    del model.graph.value_info[:]
    return mir.infer_shapes(model)


@pytest.mark.parametrize("supported", ["fused", "unrolled"])
@pytest.mark.parametrize("shape", [[1, B, 1], [2, B, H]])
def test_an_initial_state_of_the_wrong_shape_is_a_one_line_error(supported, shape):
    """Fuzzing (vad_lstm_if/bad_attribute_value/192): a Gather's axis 0 -> -1 in an If branch
    gave an LSTM's initial_c the shape [2, 2, 1]. onnxruntime only fails when the node runs; the
    fused kernel failed in TVM's CallTIRRewrite pass ("code generation failed: (... 20 lines
    skipped ...)" and a C++ warning), the unrolled form read c0[0] of a [2, B, H] state."""
    model = _lstm_with_initial_c(shape)
    with pytest.raises(ModelLoadError, match=re.escape(
            f"invalid model: node lstm0 (LSTM): initial_c has shape {shape}, expected [1, {B}, {H}] "
            "([directions, batch, hidden])")):
        run_decompose(model, UNROLL_ONLY if supported == "unrolled" else None)


def test_a_code_generation_failure_is_one_line_with_its_cause_and_no_tvm_output(
        tmp_path, monkeypatch, capfd):
    """The same state shape let through to code generation: TVM's pass error puts its cause first
    (the last line was "(... 20 lines skipped ...)"), and the pass's C++ BlockBuilder, destroyed
    while unwinding, wrote "Warning: BlockBuilder destroyed with remaining blocks!" to fd 2."""
    import mmopt
    from mmopt.codegen.decompose import decompose_rnn
    from mmopt.errors import MmoptError

    monkeypatch.setattr(decompose_rnn, "check_states", lambda *args: None)
    with pytest.raises(MmoptError, match=r"^code generation for target x86 failed: Argument 3 type "
                                         r"mismatch: .* \(CallTIRRewrite pass\)$"):
        mmopt.compile(_lstm_with_initial_c([1, B, 1]), "x86", tmp_path / "lstm")
    captured = capfd.readouterr()
    assert "BlockBuilder" not in captured.err + captured.out
