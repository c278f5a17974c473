"""fp16 models on CPUs: convolutions, matrix products and averages accumulate in float32.

``mmopt quantize --dtype fp16`` keeps softmax, normalizations and reductions in float32, but its
convolutions and MatMuls compute in fp16. Compiled as they are, each output sums hundreds to
thousands of fp16 products in an fp16 accumulator, whose rounding grows with the reduction length:
on PP-OCRv4's recognizer a softmax output moved by 0.072 from onnxruntime's (whose CPU kernels
run fp16 convolutions in float32), four times the tolerance fp16 storage itself explains, and the
text-direction classifier and an EfficientNet-B0-style net failed their verification likewise.

:func:`accumulate_in_fp32` gives every fp16 ``conv1d``/``conv2d``/``conv2d_transpose``/``matmul``
a float32 result (``out_dtype``: TVM's legalization then multiplies and sums in float32) and casts
it back to fp16, so tensors between kernels stay fp16 and only the sums are wider; averages,
sums and softmax left in fp16 (a global average pool of a squeeze-excite block) read their input
as float32 (:data:`REDUCTIONS`), the cast fused into the reduction's kernel. x86 CPUs
without AVX-512 FP16 convert fp16 to float32 for any arithmetic anyway; the cost is the wider
accumulator registers, the benefit a result within fp16 storage precision of the float32 one.
"""

from __future__ import annotations

from mmopt.codegen.relax_util import module_uses, op_name

#: the operators whose sums are widened
PRODUCTS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul")
#: operators that sum their (first) input: computed on a float32 copy of it
REDUCTIONS = ("relax.mean", "relax.sum", "relax.nn.avg_pool1d", "relax.nn.avg_pool2d",
              "relax.nn.adaptive_avg_pool1d", "relax.nn.adaptive_avg_pool2d", "relax.nn.softmax",
              "relax.nn.log_softmax", "relax.variance")


def _widened(call):
    """The call with a float32 result (same attributes otherwise)."""
    from tvm import relax

    name, a = op_name(call), call.attrs
    x, w = call.args
    if name == "relax.matmul":
        return relax.op.matmul(x, w, out_dtype="float32")
    common = {"strides": [int(v) for v in a.strides], "padding": [int(v) for v in a.padding],
              "dilation": [int(v) for v in a.dilation], "groups": int(a.groups),
              "data_layout": str(a.data_layout), "kernel_layout": str(a.kernel_layout),
              "out_layout": str(a.out_layout) or None, "out_dtype": "float32"}
    if name == "relax.nn.conv2d_transpose":
        return relax.op.nn.conv2d_transpose(
            x, w, output_padding=[int(v) for v in a.output_padding], **common)
    if name == "relax.nn.conv2d":
        return relax.op.nn.conv2d(x, w, **common)
    return relax.op.nn.conv1d(x, w, **common)


def accumulate_in_fp32():
    """The Relax module pass of the module docstring."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Widen(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.mod_ = mod

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if str(getattr(call.ty, "dtype", "")) != "float16":
                return call
            name = op_name(call)
            if name in PRODUCTS:
                wide = self.builder_.emit(_widened(call))
            elif name in REDUCTIONS:
                x = self.builder_.emit(relax.op.astype(call.args[0], "float32"))
                wide = self.builder_.emit(relax.Call(call.op, [x, *call.args[1:]], call.attrs,
                                                     call.ty_args))
            else:
                return call
            return relax.op.astype(wide, "float16")

        def transform(self):
            for gvar, func in self.mod_.functions.items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gvar, self.visit_expr(func))
            return self.builder_.get()

    @tvm.transform.module_pass(opt_level=0, name="mmopt_fp16_accumulate_in_fp32")
    def _pass(mod, _ctx):
        if not module_uses(mod, PRODUCTS + REDUCTIONS):
            return mod
        return _Widen(mod).transform()

    return _pass
