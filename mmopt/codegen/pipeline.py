"""The kernel-level (Relax/TIR) pipeline, read top to bottom.

The same four stages as TVM's own backends, with the schedule stage chosen by the target's device:

1. library dispatch: sort/scan/sampling to library kernels;
2. legalize: Relax ops -> TIR PrimFuncs, annotate, fold constants, fuse operators and fuse TIR;
3. schedule: give every PrimFunc a schedule (GPU: dlight's default rules, which also bind threads
   and are required for correctness; CPU: none yet -- untuned kernels run as generated);
   must run after fusion (it schedules the fused functions) and before lowering;
4. lower + finalize: dataflow to VM instructions, memory planning, shape lowering.
"""

from __future__ import annotations

from collections.abc import Callable

from mmopt.targets import Target


def _library_dispatch():
    from tvm import relax

    return [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()]


def _legalize():
    from tvm import relax

    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def _schedule_gpu():
    from tvm.s_tir import dlight as dl

    return [
        dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(),
            dl.gpu.GEMV(),
            dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )
    ]


def _schedule_cpu():
    return []


def _lower(device: str):
    from tvm import relax

    passes = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ]
    if device == "cuda":
        passes.append(relax.transform.RewriteCUDAGraph())
    return passes + [
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


#: device -> schedule stage. The one place where code generation differs by device.
SCHEDULES: dict[str, Callable[[], list]] = {"cpu": _schedule_cpu, "cuda": _schedule_gpu}

def relax_pipeline(target: Target):
    """A ``tvm.transform`` module pass running the four stages for ``target``."""
    import tvm

    tvm_target = target.tvm_target()

    @tvm.transform.module_pass(opt_level=0, name=f"mmopt_{target.device}_pipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            passes = (_library_dispatch() + _legalize() + SCHEDULES[target.device]()
                      + _lower(target.device))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
