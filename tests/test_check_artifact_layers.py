"""`mmopt check --per-layer` with a compiled artifact as the candidate names the kernel at fault."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def three_convs(tmp_path_factory):
    rng = np.random.default_rng(0)
    nodes, inits, x, cin = [], [], "input", 3
    for i, cout in enumerate((16, 24, 32)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * (1.0 / np.sqrt(9 * cin))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", cout
    graph = helper.make_graph(
        nodes, "three_convs", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             [1, 3, 16, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 32, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("m") / "three_convs.onnx"
    onnx.save(model, path)
    data = path.with_name("data.npz")
    np.savez(data, input=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    return path, data


def test_a_miscompiled_kernel_is_named(three_convs, tmp_path, monkeypatch):
    """Test hook: the weight packer of the 24-channel convolution writes its weights negated (a
    packing bug in one kernel). The artifact is wrong from that layer on; --per-layer names it."""
    import mmopt
    from mmopt.check import check
    from mmopt.cli.main import cli
    from mmopt.codegen import packed_conv

    model, data = three_convs
    rewrite_all = packed_conv.rewrite_nhwc_convs

    def miscompile(mod, rewrite, **options):
        return rewrite_all(mod, lambda call, w, builder, *lookup: rewrite(
            call, -w if w.shape[3] == 24 else w, builder, *lookup), **options)

    monkeypatch.setattr(packed_conv, "rewrite_nhwc_convs", miscompile)
    result = mmopt.compile(model, "x86", tmp_path / "bad", verify=True)
    assert not result.verification.passed  # the bug is real
    out = CliRunner().invoke(cli, ["check", "-r", str(model), "-c", str(tmp_path / "bad"),
                                   "-d", str(data), "--min-cosine", "0.99", "--per-layer"])
    assert out.exit_code == 1, out.output
    assert "first layer where the error jumps: conv1 (Conv" in out.output, out.output
    report = check(model, tmp_path / "bad", data, per_layer=True, per_layer_samples=2)
    culprit = report.per_layer.culprit
    assert culprit.node == "conv1"
    before = [x for x in report.per_layer.layers if x.index < culprit.index]
    assert before and all(x.snr_db > 60 for x in before)  # conv0 is exact to float rounding


def test_a_correct_artifact_names_no_culprit(three_convs, tmp_path):
    import mmopt
    from mmopt.check import check

    model, data = three_convs
    mmopt.compile(model, "x86", tmp_path / "good")
    report = check(model, tmp_path / "good", data, per_layer=True, per_layer_samples=2)
    assert report.per_layer.culprit is None
    assert len(report.per_layer.layers) >= 6 and all(x.snr_db > 60 for x in report.per_layer.layers)
