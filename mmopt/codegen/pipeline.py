"""The kernel-level (Relax/TIR) pipeline, read top to bottom.

The same four stages as TVM's own backends, with the schedule stage chosen by the target's device:

1. library dispatch: sort/scan/sampling to library kernels;
2. legalize: Relax ops -> TIR PrimFuncs, annotate, fold constants, fuse operators and fuse TIR;
3. schedule: first apply a tuning database when one is given (MetaSchedule records for this
   target), then give every PrimFunc still unscheduled a default schedule (GPU: dlight's rules,
   which also bind threads and are required for correctness; CPU: mmopt's default schedules).
   Must run after fusion (it schedules the fused functions, which are the tuning tasks) and before
   lowering;
4. lower + finalize: dataflow to VM instructions, memory planning, shape lowering.
"""

from __future__ import annotations

from collections.abc import Callable

from mmopt.codegen.options import CodegenOptions
from mmopt.targets import Target


def _library_dispatch():
    from tvm import relax

    return [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()]


def _clip_to_min_max():
    """``R.clip(x, lo, hi)`` -> ``R.minimum(R.maximum(x, lo), hi)`` for constant bounds.

    TVM's importer writes HardSwish/HardSigmoid with ``R.clip``, which has no layout inference:
    ConvertLayout would wrap every such activation in NHWC<->NCHW transposes (measured: 15% of a
    PP-OCR detector's time). ``maximum``/``minimum`` propagate the layout and fuse into the conv.
    """
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    from mmopt.codegen.relax_util import pattern_pass

    pattern = is_op("relax.clip")(wildcard(), wildcard(), wildcard())

    def number(bound):
        inner = getattr(bound, "value", bound)
        return float(getattr(inner, "value", inner))

    def rewrite(expr, _matches):
        x, lo, hi = expr.args
        try:
            lo, hi = number(lo), number(hi)
        except (TypeError, ValueError):  # symbolic bounds: keep the clip
            return expr
        dtype = expr.ty.dtype
        return relax.op.minimum(relax.op.maximum(x, relax.const(lo, dtype)), relax.const(hi, dtype))

    return pattern_pass("mmopt_clip_to_min_max", pattern, rewrite)


def _when_module_uses(ops: tuple[str, ...], inner):
    """Run ``inner`` only on modules that call one of ``ops``. (ConvertLayout on a model without
    convolutions only adds risk: it aborts on data-dependent shapes such as Unique's.)"""
    import tvm

    from mmopt.codegen.relax_util import module_uses

    @tvm.transform.module_pass(opt_level=0, name=f"mmopt_when_{'_'.join(ops)}")
    def _pass(mod, _ctx):
        return inner(mod) if module_uses(mod, ops) else mod

    return _pass


def _layout(target: Target, options: CodegenOptions | None = None):
    """Inference-only decompositions (BatchNorm -> scale/shift, so it fuses into the conv epilogue),
    QDQ -> integer kernels (:mod:`mmopt.codegen.quantized`), fp16 products summed in float32
    (:mod:`mmopt.codegen.fp16_accumulate`), then the data layout for convolutions
    (``options.layout``, default the target's preferred one; weights re-laid out at compile time by
    FoldConstant) and, on CPUs, convolutions on weights pre-packed for the kernels' access order
    (integer: ``pack_dot_convs``, and the depthwise ones' padding as a select,
    :mod:`mmopt.codegen.select_padding`; float: :mod:`mmopt.codegen.packed_conv` when
    ``options.pack_weights``, with Winograd when ``options.winograd``); a dequantized tensor read
    by several consumers is dequantized by each (:mod:`mmopt.codegen.dequantize_per_use`); last,
    long element-wise chains on 8-bit tensors become table reads
    (:mod:`mmopt.codegen.quantized_lut`, when ``options.lookup_tables``)."""
    from tvm import relax

    from mmopt.codegen.int8_dot import dot_product_for, pack_dot_convs
    from mmopt.codegen.layout_cleanup import cancel_transposes, nhwc_depth_to_space
    from mmopt.codegen.quantized import fold_pad_transposes, lower_qdq

    options = options or CodegenOptions()
    # QDQ -> integer convolutions and element-wise (de)quantization (CPU: the GPU schedules are
    # not verified on integer convolutions)
    dot = dot_product_for(target.tvm_target())
    passes = []
    if target.device == "cpu":
        # the requantizing epilogue as one multiply-add per channel (mmopt.codegen.requantize);
        # quantize chains moved across concatenations and nearest up-sampling, so those copy
        # bytes (mmopt.codegen.elementwise_motion); fp16 models: sums in float32
        # (mmopt.codegen.fp16_accumulate)
        from mmopt.codegen.elementwise_motion import (elementwise_before_upsampling,
                                                      quantize_concat_inputs)
        from mmopt.codegen.fp16_accumulate import accumulate_in_fp32
        from mmopt.codegen.requantize import fold_requantization

        passes += [lower_qdq(dot.data_dtype, 4) if dot else lower_qdq(), fold_requantization(),
                   quantize_concat_inputs(), elementwise_before_upsampling(),
                   accumulate_in_fp32()]
    passes += [relax.transform.DecomposeOpsForInference(), _clip_to_min_max(),
               relax.transform.CanonicalizeBindings()]
    if options.layout_for(target) == "NHWC":
        # conv2d_transpose stays NCHW: TVM 0.27 cannot legalize it in NHWC
        passes.append(_when_module_uses(("relax.nn.conv2d",), relax.transform.ConvertLayout({
            "relax.nn.conv2d": ["NHWC", "HWIO"],
            "relax.nn.conv2d_transpose": ["NCHW", "IOHW"],
        })))
        passes += [nhwc_depth_to_space(), cancel_transposes(), fold_pad_transposes(),
                   pack_dot_convs(options.winograd)]
        if target.device == "cpu":
            from mmopt.codegen.select_padding import select_padding

            passes.append(select_padding())
        if target.device == "cpu" and options.pack_weights:
            from mmopt.codegen.packed_conv import pack_float_convs
            from mmopt.targets.cpu import cpu_facts

            facts = cpu_facts(target.tvm_target())
            passes.append(pack_float_convs(max(4, facts.lanes), facts.vector_registers,
                                           options.winograd, facts.full_rate_lanes))
    if target.device == "cpu":
        # a dequantized tensor with several consumers: each dequantizes for itself, so the
        # producer writes 8 bits, not float32 (mmopt.codegen.dequantize_per_use)
        from mmopt.codegen.dequantize_per_use import dequantize_per_use

        passes.append(dequantize_per_use())
    if target.device == "cpu" and options.lookup_tables:
        from mmopt.codegen.byte_lookup import byte_tables_pay
        from mmopt.codegen.quantized_lut import lookup_tables

        passes.append(lookup_tables(byte_tables=byte_tables_pay(target.tvm_target())))
    return passes


def _legalize(target: Target, options: CodegenOptions):
    """Relax operators -> TIR (on CPUs with vectorizable transcendental functions when
    ``options.fast_math``: :mod:`mmopt.codegen.fast_math`), then operator fusion."""
    from tvm import relax

    fast = []
    if target.device == "cpu" and options.fast_math:
        from mmopt.codegen.fast_math import fast_math_pass

        fast = [fast_math_pass()]
    tables = []
    if target.device == "cpu" and options.lookup_tables:
        from mmopt.codegen.quantized_lut import mark_elementwise

        tables = [mark_elementwise()]
    return fast + [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        *tables,
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
    from mmopt.codegen.cpu_schedules import default_cpu_schedule_pass
    from mmopt.codegen.int8_dot import dot_schedule_pass
    from mmopt.codegen.requantize_roundtrip import fold_requantize_roundtrips

    # then, inside each scheduled kernel, quantize -> dequantize round trips without the 8-bit
    # detour (exact; mmopt.codegen.requantize_roundtrip)
    return [dot_schedule_pass(), default_cpu_schedule_pass(), fold_requantize_roundtrips()]


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

def _apply_database():
    from tvm import relax

    return [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)]


def tuning_module(mod, target: Target, options: CodegenOptions | None = None):
    """Stages 1-2 only: the fused TIR functions that are MetaSchedule's tuning tasks.

    Tuning (``mmopt.tuning``) extracts tasks from this module, so records match the functions that
    :func:`relax_pipeline` later looks up in the database (with the same ``options``).
    """
    import tvm

    options = options or CodegenOptions()
    with target.tvm_target():
        return tvm.transform.Sequential(_library_dispatch() + _layout(target, options)
                                        + _legalize(target, options))(mod)


def relax_pipeline(target: Target, database=None, options: CodegenOptions | None = None):
    """A ``tvm.transform`` module pass running the four stages for ``target``.

    ``database``: a MetaSchedule database (``tvm.s_tir.meta_schedule.Database``) whose records for
    this target are applied before default schedules fill in the rest; ``options``: the
    code-generation settings (:mod:`mmopt.codegen.options`; default: all on, the target's layout).
    """
    import contextlib

    import tvm

    tvm_target = target.tvm_target()

    @tvm.transform.module_pass(opt_level=0, name=f"mmopt_{target.device}_pipeline")
    def _pipeline(mod, _ctx):
        with tvm_target, (database if database is not None else contextlib.nullcontext()):
            passes = (_library_dispatch() + _layout(target, options or CodegenOptions())
                      + _legalize(target, options or CodegenOptions())
                      + (_apply_database() if database is not None else [])
                      + SCHEDULES[target.device]() + _lower(target.device))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
