"""ONNX's own backend node tests (``onnx.backend.test``) through mmopt.

Every node test case of the installed onnx (``onnx.backend.test.case.node.collect_testcases()``) is
compiled for x86 by :class:`mmopt.backend.MmoptBackend` (mmopt's pipeline at ``-O0`` plus the
import-time decompositions, a shared library, :func:`mmopt.runtime.load`) in this process, run on
the case's inputs and compared with its expected outputs by onnx's own comparison
(``Runner.assert_similar_outputs``) at ``rtol=1e-3, atol=1e-5``.

* Default run (about 200 cases, under a minute): the cases of :data:`SUBSET_ALWAYS` (one or more
  per decomposition and converter mmopt adds) plus a deterministic 1-in-:data:`SAMPLE_EVERY` sample
  of the rest. The other ~1,700 cases are marked ``slow`` (about 6 minutes in one process)::

      pytest -m slow tests/test_onnx_backend.py -q      # the cases outside the subset

* Expected failures are listed with their reason in ``tests/onnx_backend_expected_failures.txt``
  (regular expressions over test names, grouped under a comment that says why). They are strict:
  a listed case that passes fails the run, so the list stays exact.
* A failing case that is not listed is skipped when onnxruntime fails it too (no reference runtime
  passes it; such cases are not counted in the pass rate), otherwise it fails.

The pass rates of onnxruntime, TVM's importer alone and mmopt over the whole suite::

    python tests/test_onnx_backend.py --report [--jobs 2] [--modes onnxruntime,tvm,mmopt]

(one worker process per job, each compiling its share of the cases in turn; about 5 minutes for
mmopt with 2 jobs, 1 for TVM's importer alone; ``--modes`` also takes ``mmopt-no-binding``.)
"""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

RTOL, ATOL = 1e-3, 1e-5
EXPECTED_FAILURES_FILE = Path(__file__).with_name("onnx_backend_expected_failures.txt")
#: 1 in SAMPLE_EVERY of the other cases is in the default run (chosen by a hash of the name)
SAMPLE_EVERY = 12
#: cases always in the default run: one or more per decomposition / converter mmopt adds, and the
#: shape-input binding of the backend
SUBSET_ALWAYS = [
    r"test_(lstm|gru)_defaults", r"test_simple_rnn_defaults", r"test_gru_seq_length",
    r"test_lstm_with_peepholes", r"test_scan9_sum", r"test_loop11", r"test_if",
    r"test_convinteger_with_padding", r"test_qlinearconv", r"test_qlinearmatmul_2D_uint8_float32",
    r"test_attention_3d", r"test_attention_4d_gqa", r"test_sce_mean_weight_ii_3d",
    r"test_nllloss_NCd1_mean_weight_negative_ii", r"test_layer_normalization_2d_axis0",
    r"test_rms_normalization_2d_axis0", r"test_col2im_pads", r"test_cumprod_1d_reverse_exclusive",
    r"test_bitcast_float32_to_int32", r"test_onehot_with_negative_axis", r"test_reversesequence_batch",
    r"test_l2normalization_axis_1", r"test_pow_types_int32_float32", r"test_squeeze_negative_axes",
    r"test_sum_example", r"test_max_example", r"test_center_crop_pad_crop", r"test_celu",
    r"test_reduce_sum_default_axes_keepdims_example", r"test_reshape_reordered_all_dims",
    r"test_top_k", r"test_ai_onnx_ml_binarizer", r"test_linear_attention_delta",
    r"test_rotary_embedding", r"test_clip",
]


# --------------------------------------------------------------------------------------------------
# the cases, the list of expected failures, running one case


@functools.cache
def node_cases() -> dict:
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # onnx's case generators compute some expected values noisily
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {case.name: case for case in sorted(cases, key=lambda c: c.name)}


@functools.cache
def expected_failures() -> list[tuple[re.Pattern, str]]:
    """``[(pattern, reason)]`` from the list file: each pattern takes the comment block above it."""
    entries, reason, in_comment = [], [], False
    for line in EXPECTED_FAILURES_FILE.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text:
            in_comment = False
            continue
        if text.startswith("#"):
            if not in_comment:
                reason = []
            reason.append(text.lstrip("# "))
            in_comment = True
            continue
        in_comment = False
        entries.append((re.compile(text), " ".join(reason)))
    return entries


def expected_failure(name: str) -> str | None:
    for pattern, reason in expected_failures():
        if pattern.fullmatch(name):
            return reason
    return None


def _arrays(values) -> list:
    return [onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def check_case(case, run) -> None:
    """Run ``run(model, inputs) -> outputs`` on the case and compare like onnx's runner does."""
    from onnx.backend.test.runner import Runner

    inputs, expected = case.data_sets[0]
    outputs = run(case.model, _arrays(inputs))
    Runner.assert_similar_outputs(_arrays(expected), list(outputs), rtol=RTOL, atol=ATOL)


def run_mmopt(model, inputs, **options):
    from mmopt.backend import MmoptBackend

    return MmoptBackend.run_model(model, inputs, **options)


def run_onnxruntime(model, inputs):
    import onnxruntime.backend

    return onnxruntime.backend.prepare(model, "CPU").run(inputs)


def run_tvm_importer_alone(model, inputs):
    """TVM's Relax ONNX importer and TVM's default pipeline (``tvm.compile``), nothing of mmopt."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    executable = tvm.compile(from_onnx(model, keep_params_in_input=False), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(np.array(a, order="C")) for a in inputs])

    def flatten(value):
        if hasattr(value, "numpy"):
            return [value.numpy()]
        return [array for item in value for array in flatten(item)]

    return flatten(result)


def passes(case, run) -> bool:
    try:
        check_case(case, run)
    except Exception:  # noqa: BLE001 - any failure counts as not passing
        return False
    return True


# --------------------------------------------------------------------------------------------------
# pytest


def _in_subset(name: str) -> bool:
    if any(re.fullmatch(p, name) for p in SUBSET_ALWAYS):
        return True
    return zlib.crc32(name.encode()) % SAMPLE_EVERY == 0


def _params():
    return [pytest.param(name, id=name, marks=() if _in_subset(name) else pytest.mark.slow)
            for name in node_cases()]


@pytest.fixture(scope="module", autouse=True)
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("name", _params())
def test_node(name):
    case = node_cases()[name]
    reason = expected_failure(name)
    try:
        check_case(case, run_mmopt)
    except Exception as exc:  # noqa: BLE001
        if reason is not None:
            pytest.xfail(reason)
        if not passes(case, run_onnxruntime):
            pytest.skip("onnxruntime fails this case too (not counted)")
        raise AssertionError(f"{name} fails through mmopt: {exc}") from exc
    if reason is not None:
        pytest.fail(f"{name} is listed as an expected failure ({reason}) but passes: "
                    "remove it from tests/onnx_backend_expected_failures.txt")


def test_expected_failure_list_is_well_formed():
    names = node_cases()
    for pattern, reason in expected_failures():
        assert reason, f"{pattern.pattern}: no reason given above it"
        assert any(pattern.fullmatch(n) for n in names), f"{pattern.pattern} matches no node test"


def test_subset_is_small_and_covers_every_family():
    subset = [n for n in node_cases() if _in_subset(n)]
    assert 100 <= len(subset) <= 250
    for pattern in SUBSET_ALWAYS:
        assert any(re.fullmatch(pattern, n) for n in subset), pattern


# --------------------------------------------------------------------------------------------------
# the backend's own behaviour


def _reshape_model() -> onnx.ModelProto:
    return onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,6] x, int64[3] shape, float lo) => (float[?,?,?] y) {
      r = Reshape (x, shape)
      y = Clip (r, lo)
    }""")


def test_backend_binds_shape_inputs_and_recompiles_for_new_values():
    from mmopt.backend import MmoptBackend, shape_input_names

    model = _reshape_model()
    assert shape_input_names(model) == ["shape"]  # lo is data, even though it is a scalar
    rep = MmoptBackend.prepare(model)
    x = np.arange(12, dtype=np.float32).reshape(2, 6) - 5
    for shape in ([3, 2, 2], [2, 3, 2], [3, 2, 2]):
        (y,) = rep.run([x, np.array(shape, np.int64), np.float32(-1.0)])
        np.testing.assert_array_equal(y, np.maximum(x, -1).reshape(shape))
    assert len(rep._compiled) == 2  # noqa: SLF001 - one artifact per distinct shape value


def test_backend_without_binding_says_why_it_cannot_compile():
    from mmopt.backend import MmoptBackend
    from mmopt.errors import MmoptError

    with pytest.raises(MmoptError):
        MmoptBackend.run_model(_reshape_model(), [np.zeros((2, 6), np.float32),
                                                  np.array([3, 2, 2], np.int64), np.float32(0)],
                               bind_shape_inputs=False)


def test_backend_run_node_and_devices():
    from mmopt.backend import MmoptBackend

    node = onnx.helper.make_node("Add", ["a", "b"], ["c"])
    a, b = np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32)
    (c,) = MmoptBackend.run_node(node, [a, b])
    np.testing.assert_array_equal(c, a + b)
    assert MmoptBackend.supports_device("CPU") and not MmoptBackend.supports_device("CUDA")


# --------------------------------------------------------------------------------------------------
# python tests/test_onnx_backend.py --report: pass rates over the whole suite


_RUNNERS = {"onnxruntime": run_onnxruntime, "tvm": run_tvm_importer_alone, "mmopt": run_mmopt,
            "mmopt-no-binding": functools.partial(run_mmopt, bind_shape_inputs=False)}


def _worker(mode: str, shard: int, shards: int, out: Path) -> None:
    """Run every ``shards``-th case (offset ``shard``) with ``mode``, appending JSON lines to ``out``;
    resumes after the cases already in ``out``. The case in flight is written to ``out.inflight``
    first, so a crash (a compiler bug can abort the process) is recorded when the worker restarts."""
    import json
    import signal
    import time
    import warnings

    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.WARNING)
    done = set()
    if out.exists():
        done = {json.loads(line)["name"] for line in out.read_text().splitlines() if line.strip()}
    inflight = out.with_name(out.name + ".inflight")
    crashed = inflight.read_text().strip() if inflight.exists() else ""
    with out.open("a") as log:
        if crashed and crashed not in done:
            log.write(json.dumps({"name": crashed, "status": "crash: the process died", "t": 0}) + "\n")
            done.add(crashed)

        def timeout(*_):
            raise TimeoutError("over 300 s")

        signal.signal(signal.SIGALRM, timeout)
        for i, (name, case) in enumerate(node_cases().items()):
            if i % shards != shard or name in done:
                continue
            inflight.write_text(name)
            start = time.perf_counter()
            signal.alarm(300)
            try:
                check_case(case, _RUNNERS[mode])
                status = "pass"
            except BaseException as exc:  # noqa: BLE001
                lines = [line for line in str(exc).splitlines() if line.strip()]
                status = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]
            signal.alarm(0)
            log.write(json.dumps({"name": name, "status": status,
                                  "t": round(time.perf_counter() - start, 3)}) + "\n")
            log.flush()
    inflight.write_text("")


def _run_mode(mode: str, jobs: int, workdir: Path) -> dict[str, dict]:
    import json
    import subprocess
    import sys

    outs = [workdir / f"{mode}.{shard}.jsonl" for shard in range(jobs)]
    procs = {}
    for shard, out in enumerate(outs):
        procs[shard] = subprocess.Popen([sys.executable, __file__, "--worker", mode, str(shard),
                                         str(jobs), str(out)])
    while procs:
        for shard, proc in list(procs.items()):
            if proc.poll() is None:
                continue
            del procs[shard]
            inflight = outs[shard].with_name(outs[shard].name + ".inflight")
            if proc.returncode != 0 and inflight.exists() and inflight.read_text().strip():
                procs[shard] = subprocess.Popen([sys.executable, __file__, "--worker", mode,
                                                 str(shard), str(jobs), str(outs[shard])])
        import time

        time.sleep(0.5)
    results = {}
    for out in outs:
        for line in out.read_text().splitlines():
            record = json.loads(line)
            results[record["name"]] = record
    return results


def report(jobs: int, workdir: Path, modes: list[str], resume: bool = False) -> None:
    import collections
    import time

    workdir.mkdir(parents=True, exist_ok=True)
    if not resume:  # results of an earlier run (older code) must not be mixed in
        for stale in workdir.glob("*.jsonl*"):
            stale.unlink()
    results = {}
    for mode in modes:
        start = time.perf_counter()
        results[mode] = _run_mode(mode, jobs, workdir)
        print(f"{mode}: ran {len(results[mode])} cases in {time.perf_counter() - start:.0f} s "
              f"({jobs} jobs)")
    names = list(node_cases())
    reference = {n for n in names if results.get("onnxruntime", {}).get(n, {}).get("status") == "pass"}
    print(f"\nnode test cases: {len(names)}; onnxruntime passes {len(reference)}")
    for mode in modes:
        if mode == "onnxruntime":
            continue
        ok = {n for n, r in results[mode].items() if r["status"] == "pass"}
        both = ok & reference
        listed = {n for n in reference if expected_failure(n) is not None}
        print(f"{mode:>18}: {len(both)}/{len(reference)} = {len(both) / len(reference):.1%} of the "
              f"cases onnxruntime passes ({len(ok)} of all {len(names)}); excluding the "
              f"{len(listed)} listed: {len(both - listed)}/{len(reference - listed)} = "
              f"{len(both - listed) / max(1, len(reference - listed)):.1%}")
    if "mmopt" in results:
        failing = sorted(n for n in reference if results["mmopt"].get(n, {}).get("status") != "pass")
        unlisted = [n for n in failing if expected_failure(n) is None]
        passing_listed = [n for n in reference if expected_failure(n) is not None
                          and results["mmopt"].get(n, {}).get("status") == "pass"]
        print(f"\nmmopt fails {len(failing)} cases onnxruntime passes; not in the list: "
              f"{len(unlisted)}; listed but passing: {len(passing_listed)}")
        for n in unlisted:
            print(f"  unlisted  {n}: {results['mmopt'][n]['status'][:160]}")
        for n in passing_listed:
            print(f"  passes    {n}")
        groups = collections.Counter(expected_failure(n) for n in failing if expected_failure(n))
        print("\nexpected-failure groups (cases onnxruntime passes):")
        for reason, count in groups.most_common():
            print(f"  {count:4d}  {reason}")
        seconds = sum(r["t"] for r in results["mmopt"].values())
        print(f"\nmmopt compile+run time, summed over cases: {seconds:.0f} s")


def main(argv: list[str] | None = None) -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "mmopt-onnx-node-report",
                        help="where the per-case results are written (JSON lines per mode/job)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the results already in --workdir and run only the rest")
    parser.add_argument("--modes", default="onnxruntime,tvm,mmopt",
                        help="comma-separated: onnxruntime, tvm, mmopt, mmopt-no-binding")
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "SHARD", "SHARDS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, shard, shards, out = args.worker
        _worker(mode, int(shard), int(shards), Path(out))
    elif args.report:
        report(args.jobs, args.workdir, args.modes.split(","), args.resume)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
