"""simplify: constant folding and shape-subgraph folding.

onnxsim does the heavy lifting (it evaluates constant subgraphs with onnxruntime, folds the
``Shape -> Gather -> Concat -> Reshape`` chains that exporters emit). TVM's
Relax ONNX importer cannot handle many of those shape-computing subgraphs, so this pass runs before
codegen at every level above ``-O0``.

If onnxsim fails on a model (unsupported op in its reference runtime, protobuf limit, ...), the pass
logs a warning and falls back to onnxscript's constant folder, which works on the in-memory IR.

onnxsim folds an ``If``'s condition but keeps the ``If``; :mod:`mmopt.passes.fold_constant_ifs`
then inlines the branch taken, and onnxsim runs again on what that exposes (a few rounds at most).
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

from mmopt.errors import summarize
from mmopt.ir.model import infer_shapes
from mmopt.passes._fingerprint import fingerprint
from mmopt.passes.fold_constant_ifs import FoldConstantIfsPass

logger = logging.getLogger(__name__)


#: onnxsim runs at most this often (again after each round that inlined a constant If)
MAX_ROUNDS = 4


class SimplifyPass(ir.passes.FunctionalPass):
    """Fold constants and shape computations with onnxsim (fallback: onnxscript's folder), and
    inline ``If`` nodes whose condition folded to a constant."""

    def __init__(self):
        super().__init__()
        self.used_fallback = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = fingerprint(model)
        self.used_fallback = False
        result = model
        for _ in range(MAX_ROUNDS):
            result = self._fold(result)
            if self.used_fallback or not FoldConstantIfsPass()(result).modified:
                break
        return ir.passes.PassResult(result, modified=fingerprint(result) != before)

    def _fold(self, model: ir.Model) -> ir.Model:
        proto = ir.serde.serialize_model(model)
        try:
            simplified = _onnxsim(proto)
        except Exception as exc:  # noqa: BLE001 - onnxsim raises anything from its C++ core
            logger.warning("onnxsim failed (%s); falling back to onnxscript constant folding",
                           summarize(exc))
            self.used_fallback = True
            # The folder needs shapes to fold Shape(...) chains; it inlines constant Ifs itself.
            result = ir.serde.deserialize_model(infer_shapes(proto))
            _fold_with_onnxscript(result)
            return result
        result = ir.serde.deserialize_model(simplified)
        # onnxsim writes folded weights as Constant nodes; keep weights as initializers (small
        # scalars stay Constant nodes, which is how exporters write them).
        ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=False,
                                                        size_limit=16)(result)
        return result


def _onnxsim(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim  # imported lazily: it loads onnxruntime

    # Folding only: onnxsim's optimizer would also fuse (BN into Conv, MatMul+Add into Gemm, even
    # attention into com.microsoft::Attention, which TVM cannot import). Fusions are mmopt's own
    # passes, which verify and report what they do.
    simplified, ok = onnxsim.simplify(proto, check_n=0, perform_optimization=False)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    return simplified


def _fold_with_onnxscript(model: ir.Model) -> None:
    from onnxscript import optimizer

    optimizer.fold_constants(model)
    ir.passes.common.RemoveUnusedNodesPass()(model)
