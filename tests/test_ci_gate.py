"""The project's own accuracy gate, run as CI runs it: `mmopt check` on the trained digits CNN's
compiled int8 artifact against the fp32 model, on the held-out split with labels.

Budget (issue 4/5): top-1 drop <= 0.5 points, >= 99% top-1 agreement with fp32. A regression in
quantization or int8 compilation fails CI here with the check's own report.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mmopt import ir as mir


def test_digits_int8_artifact_passes_the_gate(tmp_path):
    pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
    import mmopt
    from mmopt.quantize import quantize
    from models_zoo.digits import train_digits_cnn

    model, splits = train_digits_cnn()
    fp32 = mir.fix_input_shapes(model, {"input": (1, 1, 8, 8)})
    mir.save(fp32, tmp_path / "digits.onnx")
    calib = [{"input": x[None].astype(np.float32)} for x in splits.calib_x]
    qdq, _ = quantize(fp32, calib, method="entropy")
    mmopt.compile(qdq, "x86", tmp_path / "digits.int8")
    np.savez(tmp_path / "heldout.npz", input=splits.test_x.astype(np.float32))
    np.save(tmp_path / "labels.npy", splits.test_y)

    proc = subprocess.run(
        [sys.executable, "-m", "mmopt.cli.main", "check",
         "-r", str(tmp_path / "digits.onnx"), "-c", str(tmp_path / "digits.int8"),
         "-d", str(tmp_path / "heldout.npz"), "--labels", str(tmp_path / "labels.npy"),
         "--max-drop", "0.5%", "--min-top1", "0.99",
         "--report", str(tmp_path / "gate.json"), "--junit", str(tmp_path / "gate.xml")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["passed"] is True
