"""The report package without a browser or a compiler: which verb wrote a JSON, pages that stay
intact whatever text a model holds, values traced to the JSON, and kernel annotations for Netron."""

from __future__ import annotations

import json
import re

import onnx
import pytest

from mmopt.errors import MmoptError
from mmopt.report import kind_of, load, render
from mmopt.report.netron import annotate

#: a check report as `mmopt check --json` writes it, with an exact tensor (SNR "inf") and a name
#: that would end a script element
CHECK = {
    "kind": "check", "passed": False, "reference": "a.onnx", "candidate": "b.onnx",
    "data": "random:2", "samples": 2, "labels": False, "eval_engine": "reference",
    "thresholds": {"all outputs": {"min_cosine": 0.99}},
    "checks": [{"output": "</script><b>y", "metric": "cosine", "op": ">=", "limit": 0.99,
                "value": 0.5, "passed": False, "label": None, "title": "cosine >= 0.99"}],
    "outputs": [{"name": "</script><b>y", "shape": [4], "dtype": "float32", "samples": 2,
                 "cosine": 0.5, "cosine_min": 0.25, "snr_db": "inf", "snr_db_min": 3.0,
                 "max_abs": 1.5, "mean_abs": 0.5, "exact": 0.0, "worst_samples": []}],
    "per_layer": None, "metrics": [], "seconds": {}, "notes": [],
}


def test_kind_from_the_key_or_from_the_fields():
    assert kind_of(CHECK) == "check"
    unmarked = {k: v for k, v in CHECK.items() if k != "kind"}  # written before "kind" existed
    assert kind_of(unmarked) == "check"
    assert kind_of({"mmopt": {}, "onnxruntime": None, "ratio": None}) == "bench"
    with pytest.raises(MmoptError, match="not an mmopt report"):
        kind_of({"hello": 1})
    with pytest.raises(MmoptError, match="not an mmopt report"):
        kind_of([1, 2])


def test_load_names_the_file_in_its_errors(tmp_path):
    with pytest.raises(MmoptError, match="no such file"):
        load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(MmoptError, match=r"bad\.json: not JSON"):
        load(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({k: v for k, v in CHECK.items() if k != "kind"}))
    assert load(good)["kind"] == "check"


def test_page_survives_hostile_names_and_carries_the_json():
    html = render(CHECK)
    # the name is shown escaped, and no script ends early: the data island parses back whole
    assert "&lt;/script&gt;&lt;b&gt;y" in html and "</script><b>y" not in html
    island = re.search(r'id="mmopt-report-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(island) == CHECK
    # values keep their JSON path and exact value; JSON's "inf" stays a string
    cells = dict(re.findall(r"data-key='([^']*)' data-value='([^']*)'", html))
    unescape = lambda text: text.replace("&quot;", '"').replace("&#x27;", "'")  # noqa: E731
    cells = {tuple(json.loads(unescape(k))): json.loads(unescape(v)) for k, v in cells.items()}
    assert cells[("outputs", 0, "snr_db")] == "inf"
    assert cells[("outputs", 0, "cosine")] == 0.5
    assert cells[("checks", 0, "value")] == 0.5
    assert '<span class="badge bad">FAIL</span>' in html


def test_annotate_names_each_nodes_kernel_and_time():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4] x) => (float[1,4] y) { a = Relu(x)  b = Neg(a)  y = Abs(b) }""")
    for node, name in zip(model.graph.node, ("relu", "neg", "abs")):
        node.name = name
    profile = {"total_median_ms": 1.0, "threads": 2, "target": "x86", "kernels": [
        {"index": 0, "name": "fused_relu_neg", "median_ms": 0.75, "percent": 75.0,
         "mapping": "value", "onnx_nodes": ["relu", "neg"], "onnx_ops": ["Relu", "Neg"]},
        {"index": 1, "name": "layout_copy", "median_ms": 0.05, "percent": 5.0,
         "mapping": "copy", "onnx_nodes": [], "onnx_value": "b"},
        {"index": 2, "name": "abs", "median_ms": 0.2, "percent": 20.0, "mapping": "value",
         "onnx_nodes": ["abs"], "onnx_ops": ["Abs"]}]}
    annotated, count = annotate(model, profile)
    assert count == 3
    props = {n.name: {p.key: p.value for p in n.metadata_props} for n in annotated.graph.node}
    assert props["neg"] == {"mmopt.kernel": "fused_relu_neg", "mmopt.kernel_call": "#0",
                            "mmopt.kernel_ms": "0.7500", "mmopt.kernel_percent": "75.0",
                            "mmopt.fused_with": "relu, neg"}
    assert props["abs"]["mmopt.kernel"] == "abs"
    assert "fused ONNX nodes: relu, neg" in annotated.graph.node[0].doc_string
    assert not model.graph.node[0].metadata_props  # the model given is left as it was
    onnx.checker.check_model(annotated, full_check=True)
    again, _ = annotate(annotated, profile)  # annotating twice replaces, not repeats
    assert len(again.graph.node[1].metadata_props) == 5


_IDLE_CLIENT = """
import socket
from onnx import TensorProto, helper
from mmopt.report.netron import served
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
with served(helper.make_model(graph), "m") as url:
    host, port = url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)))
print("left the block", flush=True)
"""


def test_server_ends_while_a_client_holds_an_idle_connection():
    """A browser's preconnect socket (open, no request) must not keep ``mmopt view`` alive after
    Ctrl-C: before the fix the interpreter joined the request thread waiting on it forever."""
    pytest.importorskip("netron")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _IDLE_CLIENT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "left the block" in done.stdout
