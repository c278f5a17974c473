"""Element-wise chains moved across operators that only copy elements: concatenation and
nearest-neighbour up-sampling.

In a QDQ model a ``Concat`` sits between ``DequantizeLinear``s and a ``QuantizeLinear``; after
:func:`mmopt.codegen.quantized.lower_qdq` each input is a chain of float arithmetic on an 8-bit
tensor and the output is quantized again::

    c = concat([deq(requant(deq(resize(q1)))), deq(q2), ...])     # float32
    y = astype(clip(round(c * (1/s)) + z, 0, 255), "uint8")

Each output element of a concatenation or of a nearest-neighbour resize is a copy of one input
element, so an operator that works element by element (with scalar constants) gives the same
values applied before the copy as after it, exactly. Two passes use that:

* :func:`quantize_concat_inputs` applies the chain after a concatenation (up to its cast to 8
  bits) to each input instead: every input becomes an 8-bit-to-8-bit chain, which
  :mod:`mmopt.codegen.quantized_lut` replaces by a byte table read (or a plain requantization,
  fused into the producer), and the concatenation copies bytes instead of converting floats;
* :func:`elementwise_before_upsampling` applies a chain that follows a nearest-neighbour
  up-sampling to its input instead: 1/4 of the elements for a 2x resize, 1/64 for 8x.

Only chains that end in a cast to an 8-bit type move across a concatenation (a float model's
concatenation is left alone), and a value moves only when the copy is its chain's one reader.
"""

from __future__ import annotations

from mmopt.codegen.quantized_lut import ELEMENTWISE
from mmopt.codegen.relax_util import (bindings, const_array, op_name, static_shape,
                                      tensor_dtype, users)


def _scalar(expr) -> bool:
    value = const_array(expr)
    return value is not None and value.size == 1


def _elementwise_over(call, var) -> bool:
    """Whether ``call`` is an element-wise operator reading ``var`` once, every other operand a
    one-element constant."""
    if op_name(call) not in ELEMENTWISE:
        return False
    reads = [a for a in call.args if a.same_as(var)]
    return len(reads) == 1 and all(_scalar(a) for a in call.args if not a.same_as(var))


def _retarget(call, old, new):
    """``call`` with its operand ``old`` replaced by ``new``."""
    from tvm import relax

    return relax.Call(call.op, [new if a.same_as(old) else a for a in call.args], call.attrs,
                      call.ty_args)


def _byte_chain(var, table, readers) -> list | None:
    """The longest chain of single-reader element-wise operators that starts by reading ``var``
    and ends in a cast to an 8-bit type, as ``[(call, operand it reads), ...]`` (None: none)."""
    chain, current, best = [], var, None
    while True:
        uses = readers.get(current, [])
        if len(uses) != 1 or uses[0] is None:
            return best
        nxt = table.get(uses[0])
        if not _elementwise_over(nxt, current):
            return best
        chain.append((nxt, current))
        current = uses[0]
        if op_name(nxt) == "relax.astype" and tensor_dtype(nxt) in ("uint8", "int8"):
            best = list(chain)


def _chains(func, moves) -> dict:
    """``{final var: (copy call, chain)}`` for each value bound to a call ``moves`` accepts (a
    concatenation, an up-sampling) whose one reader starts a :func:`_byte_chain`."""
    table, readers = bindings(func), users(func)
    found = {}
    for var, value in table.items():
        if moves(value):
            chain = _byte_chain(var, table, readers)
            if chain:
                final = readers[chain[-1][1]][0]
                found[final] = (value, chain)
    return found


def _is_concat(value) -> bool:
    return op_name(value) == "relax.concat"


def _upsampling(value) -> bool:
    """Whether ``value`` is a nearest-neighbour ``resize2d`` to at least its input's size."""
    if op_name(value) != "relax.image.resize2d" or str(value.attrs.method) != "nearest_neighbor":
        return False
    before, after = static_shape(value.args[0]), static_shape(value)
    return before is not None and after is not None and all(
        b <= a for b, a in zip(before, after))


def _motion_pass(moves, name: str):
    """A module pass that applies each :func:`_chains` chain of ``moves`` to the copy's tensor
    inputs (every field of a concatenation's tuple; a resize's data) and copies the results."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Move(PyExprMutator):
        def __init__(self, mod, found):
            super().__init__(mod)
            self.mod_ = mod
            self.found = found  # {function: its chains}
            self.chains = {}

        def _chain_on(self, expr, chain):
            value = self.visit_expr(expr)
            for call, operand in chain:
                value = self.builder_.emit(_retarget(call, operand, value))
            return value

        def visit_var_binding_(self, binding):
            if binding.var not in self.chains:
                super().visit_var_binding_(binding)
                return
            copy, chain = self.chains[binding.var]
            if _is_concat(copy):
                pieces = [self._chain_on(field, chain) for field in copy.args[0].fields]
                new = relax.op.concat(pieces, axis=copy.attrs.axis)
            else:
                new = relax.Call(copy.op, [self._chain_on(copy.args[0], chain),
                                           *[self.visit_expr(a) for a in copy.args[1:]]],
                                 copy.attrs, copy.ty_args)
            self.set_var_remap(binding.var, self.builder_.emit(new))

        def transform(self):
            for gvar, chains in self.found.items():
                self.chains = chains
                self.builder_.update_func(gvar, self.visit_expr(self.mod_[gvar]))
            return self.builder_.get()

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        found = {gvar: chains for gvar, func in mod.functions.items()
                 if isinstance(func, relax.Function) and (chains := _chains(func, moves))}
        if not found:
            return mod
        return relax.transform.DeadCodeElimination()(_Move(mod, found).transform())

    return _pass


def quantize_concat_inputs():
    """The concatenation pass of the module docstring.

    Measured on a PP-OCR-style DB detector at 640 (``x86-avx2``, 2 threads, ``mmopt profile
    --runs 20`` minimum), with :func:`elementwise_before_upsampling`: the FPN's kernel that
    up-samples three 24-channel maps 2x/4x/8x, concatenates them with a fourth and pads the
    result (162x162x96) for the next convolution: 1.13 -> 0.35 ms."""
    return _motion_pass(_is_concat, "mmopt_quantize_concat_inputs")


def elementwise_before_upsampling():
    """The up-sampling pass of the module docstring: ``f(resize(x))`` -> ``resize(f(x))`` for a
    chain ``f`` of element-wise operators (scalar constants besides) that ends in a cast to 8
    bits, the resize being its only reader; for resizes whose output is at least as large as
    their input."""
    return _motion_pass(_upsampling, "mmopt_elementwise_before_upsampling")
