"""Which path each quantized kernel took: a dot-product instruction, an integer loop, or float.

:func:`record_int8_kernels` collects, around a compile, one entry per convolution/matmul kernel
(:func:`kernel_path`); :func:`log_int8_kernels` is the module pass that reports them (it runs at the
end of :func:`mmopt.codegen.int8_dot.dot_schedule_pass`). The compile report and the artifact JSON
carry the result, and ``mmopt compile`` warns when quantized layers fell back.
"""

from __future__ import annotations

import contextvars

from mmopt._collect import collecting

#: where :func:`log_int8_kernels` reports (see :func:`record_int8_kernels`)
_INT8_KERNELS: contextvars.ContextVar[list | None] = contextvars.ContextVar("mmopt_int8_kernels",
                                                                             default=None)


def record_int8_kernels():
    """Collect, while the block runs, the arithmetic of every convolution/matmul kernel of a
    compiled quantized model: a list of ``{"kernel", "path"}`` (plus ``"lanes"`` for an
    instruction path) where ``path`` is the
    :class:`~mmopt.codegen.int8_dot.DotProduct`'s name (``"vnni"``, ``"vnni256"``,
    ``"pmaddwd"``, ``"sdot"``; ``"winograd-pmaddwd"`` for the GEMM of an integer Winograd
    convolution, :mod:`mmopt.codegen.int8_winograd`), ``"integer-loop"`` (integer arithmetic
    with ordinary vector instructions: depthwise convolutions, channel counts no instruction
    fits) or
    ``"float"`` (a contraction left in float: not quantized, or activation x activation). Stays
    empty for a model without integer kernels. ``kernel`` is the fused function's name, as
    profilers show it."""
    return collecting(_INT8_KERNELS)


def kernel_path(func, dots) -> dict | None:
    """``{"path", ["lanes"]}`` of a PrimFunc after
    :func:`~mmopt.codegen.int8_dot.dot_schedule_pass` scheduled it: the dot-product instruction it
    calls, else integer or float arithmetic when it has a contraction (a product summed into its
    output), else None."""
    from tvm import s_tir
    from tvm.ir import IRModule

    integer = {"int8", "uint8", "int16"}
    params = [p for p in func.params if hasattr(p, "shape")]  # TVM 0.27: parameters are buffers
    if any(len(p.shape) == 6 and str(p.dtype) in integer for p in params):  # packed weights
        text = func.script(show_meta=False)
        for dot in dots:
            if dot.llvm_intrinsic in text:
                from mmopt.codegen.int8_winograd import GEMM_BLOCK

                winograd = "winograd-" if GEMM_BLOCK in text else ""
                return {"path": winograd + dot.name, "lanes": dot.lanes}
        return {"path": "integer-loop"}
    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
        # scheduled from a tuning database: its anchor block is gone; integer by its operands,
        # unless it is a Winograd transform (sums and differences, no products)
        if any(len(p.shape) >= 2 and str(p.dtype) in integer for p in params):
            from mmopt.codegen import winograd

            text = func.script(show_meta=False)
            if winograd.OUTPUT_BLOCK in text or winograd.INPUT_BLOCK in text:
                return None
            return {"path": "integer-loop"} if '"int32"' in text else None
        return None
    try:
        anchor = s_tir.analysis.find_anchor_sblock(IRModule({"main": func}))
    except Exception:  # noqa: BLE001 - several anchor candidates: not one contraction
        return None
    if anchor is None or not _is_product_sum(anchor) or len(anchor.writes) != 1:
        return None
    from mmopt.codegen.tir_util import region_buffer

    out = str(region_buffer(anchor.writes[0]).dtype)
    reads = {str(region_buffer(r).dtype) for r in anchor.reads}
    if out == "int32" and reads & integer:
        return {"path": "integer-loop"}
    return {"path": "float"} if out.startswith(("float", "bfloat")) else None


def _is_product_sum(block) -> bool:
    """``out = out + a * b`` of two tensor values (a contraction's update; pooling and means sum
    without a product, or with a constant one: the mean of a dequantized tensor sums
    ``(q - z) * s``)."""
    body = block.body
    if type(body).__name__ != "BufferStore":
        return False
    value = body.value
    if type(value).__name__ != "Add":
        return False
    products = [v for v in (value.a, value.b) if type(v).__name__ == "Mul"]
    return any(type(p.a).__name__ not in _CONSTANTS and type(p.b).__name__ not in _CONSTANTS
               for p in products)


_CONSTANTS = ("FloatImm", "IntImm")


def log_int8_kernels():
    """Module pass: report the path of every kernel (:func:`kernel_path`) to an active
    :func:`record_int8_kernels`, when the module has integer kernels at all."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="mmoptlog_int8_kernels")
    def _pass(mod, _ctx):
        log = _INT8_KERNELS.get()
        target = tvm.target.Target.current(allow_none=True)
        if log is None or target is None:
            return mod
        from mmopt.codegen.int8_dot import dot_products_for

        dots = dot_products_for(target)
        entries = []
        for gvar, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc):
                path = kernel_path(func, dots)
                if path is not None:
                    entries.append({"kernel": gvar.name_hint, **path})
        if any(e["path"] != "float" for e in entries):
            log.extend(sorted(entries, key=lambda e: e["kernel"]))
        return mod

    return _pass
