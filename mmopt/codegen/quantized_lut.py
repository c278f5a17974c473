"""Element-wise chains on 8-bit tensors as 256-entry lookup tables.

A QDQ model quantizes the input and output of every element-wise op it quantizes, so after
:func:`mmopt.codegen.quantized.lower_qdq` a hard-swish that follows a convolution is a long chain of
float arithmetic on one uint8 tensor ``q``::

    x  = (float(q) - zq) * sq                        # DequantizeLinear
    h  = clip(round(x * (1/sh)) + zh, 0, 255) ...    # Add 3 -> Q -> DQ -> Clip -> Q -> DQ -> Div 6
    y  = clip(round(x * h * (1/sy)) + zy, 0, 255)    # Mul -> QuantizeLinear

Every rounding step must be kept to match the QDQ definition, so the chain is ~50 vector operations
per element: measured on PP-OCRv4's detector (x86-avx2, 2 threads), its first hard-swish layer took
7.8 ms in int8 against 1.1 ms in float, and such epilogues made the int8 model 1.5x slower than
the float one.

But ``y`` is a function of ``q`` alone, and ``q`` has 256 values. :func:`lookup_tables` finds each
maximal chain of element-wise operators whose only tensor input is one 8-bit tensor (everything
else is a scalar constant; a chain may use ``q`` several times, as ``x * hard_sigmoid(x)`` does),
evaluates it once at compile time on all 256 values, and replaces it by ``table[q]``: one
table read per element, fused into the convolution's write-back like the chain was.

Exactness: the tables are computed by TVM from the same Relax operators, compiled for the generic
``llvm`` host target, one operator after the other in float32 (no fused multiply-add across
operators), which is what the QDQ reference execution does; the compiled chain could only differ
from that by a contraction LLVM chose. Tables are stored as int32 (integer results) or float32 and
cast back, so the vectorized read is a 32-bit gather; on x86 CPUs with byte permutes (AVX-512
VBMI) or shuffles (AVX2) integer tables are stored as 256 bytes plus a constant and read with
``vpermi2b`` / ``vpshufb`` instead (:mod:`mmopt.codegen.byte_lookup`).

Only chains of at least :data:`MIN_OPS` operators are replaced: a table read costs about as much as
a dozen vector operations, so a plain requantization (``astype``, ``subtract``, ``multiply``,
``round``, ``add``, ``clip``, ``astype``: 8 operators) stays arithmetic.
"""

from __future__ import annotations

import logging

import numpy as np

from mmopt.codegen.relax_util import const_array, op_name, users

logger = logging.getLogger(__name__)

#: operators computed element by element (the result's element i depends on element i of each
#: tensor operand only, with scalar constants broadcast)
ELEMENTWISE = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.floor_divide",
    "relax.maximum", "relax.minimum", "relax.power", "relax.round", "relax.floor", "relax.ceil",
    "relax.clip", "relax.astype", "relax.negative", "relax.abs", "relax.sqrt", "relax.rsqrt",
    "relax.exp", "relax.log", "relax.sigmoid", "relax.tanh", "relax.erf", "relax.sign",
    "relax.nn.relu", "relax.nn.silu", "relax.nn.gelu", "relax.nn.gelu_tanh",
    "relax.nn.leakyrelu",
})
#: tensor types a table can be indexed by, with the offset that makes the smallest value 0
BYTE_TYPES = {"uint8": 0, "int8": 128}
#: shortest chain (operators) replaced by a table
MIN_OPS = 12


def _scalar_const(expr) -> bool:
    arr = const_array(expr)
    return arr is not None and arr.size == 1


class _Chain:
    """The element-wise chain ending at one binding: its 8-bit source and its operators."""

    __slots__ = ("ops", "source")

    def __init__(self, source, ops):
        self.source, self.ops = source, ops


def _chains(func):
    """``{var: _Chain}`` for every binding computed element-wise from one 8-bit tensor."""
    from tvm import relax

    found: dict = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                continue
            value = binding.value
            if op_name(value) not in ELEMENTWISE or not isinstance(value, relax.Call):
                continue
            sources, ops = set(), {binding.var}
            for arg in value.args:
                if isinstance(arg, relax.Var) and arg in found:
                    sources.add(found[arg].source)
                    ops |= found[arg].ops
                elif isinstance(arg, relax.Var) and str(getattr(arg.ty, "dtype", "")) in BYTE_TYPES:
                    sources.add(arg)
                elif _scalar_const(arg):
                    continue
                else:
                    sources = None
                    break
            if sources is None or len(sources) != 1:
                continue
            (source,) = sources
            shape = getattr(binding.var.ty, "shape", None)
            src_shape = getattr(source.ty, "shape", None)
            # scalar constants only: the result has the source's shape (no broadcast growth)
            if shape is None or src_shape is None or not _same_shape(shape, src_shape):
                continue
            found[binding.var] = _Chain(source, ops)
    return found


def _same_shape(a, b) -> bool:
    """Equal static shapes (symbolic dims: only the same expression object counts)."""
    def dim(d):
        value = getattr(d, "value", None)
        return int(value) if value is not None else d

    return len(a) == len(b) and all(dim(x) == dim(y) if hasattr(x, "value") and hasattr(y, "value")
                                    else x.same_as(y) for x, y in zip(a, b))


def _ends(func, chains) -> list:
    """The chains worth a table: maximal (something outside the chain reads the end) and long."""
    from tvm import relax

    read_by = users(func)
    out = []
    for var, chain in chains.items():
        if len(chain.ops) < MIN_OPS or not isinstance(var, relax.DataflowVar):
            continue
        readers = read_by.get(var, [])
        if any(r is None or r not in chains or chains[r].source is not chain.source
               for r in readers):
            out.append(var)
    return out


def _evaluate(func, chains, ends) -> list[np.ndarray]:
    """Each end's chain computed on all 256 values of its source (float32 / integer arithmetic as
    the Relax operators define it), compiled once for the host."""
    import tvm
    from tvm import relax

    values = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                values[binding.var] = binding.value
    bb = relax.BlockBuilder()
    params = {}
    for end in ends:
        source = chains[end].source
        if source not in params:
            params[source] = relax.Var(f"q{len(params)}",
                                       relax.TensorType((256,), str(source.ty.dtype)))
    with bb.function("main", list(params.values())):
        results = []
        for end in ends:
            chain = chains[end]
            mapped = {chain.source: params[chain.source]}
            # the chain's bindings in program order (a dict keeps insertion order)
            for var, call in values.items():
                if var not in chain.ops:
                    continue
                args = [mapped.get(a, a) for a in call.args]
                mapped[var] = bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
            results.append(mapped[end])
        bb.emit_func_output(relax.Tuple(results) if len(results) > 1 else results[0])
    executable = tvm.compile(bb.get(), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    feeds = []
    for source in params:
        dtype = str(source.ty.dtype)
        feeds.append(tvm.runtime.tensor(
            (np.arange(256) - BYTE_TYPES[dtype]).astype(dtype)))
    out = vm["main"](*feeds)
    arrays = [out[i] for i in range(len(ends))] if len(ends) > 1 else [out]
    return [np.asarray(a.numpy()).reshape(256) for a in arrays]


#: name of the table-read PrimFuncs (:func:`mark_elementwise` finds them by it)
TABLE_READ = "mmopt_table_read"


def _read_table(table, q, dtype, bias=0):
    """``table[q - min(dtype of q)] + bias`` cast to ``dtype``, element by element (indices in
    range by construction: ``q`` is 8-bit and the table has 256 entries)."""
    from tvm import te

    offset = BYTE_TYPES[str(q.dtype)]

    def read(*i):
        index = q(*i).astype("int32") + offset if offset else q(*i).astype("int32")
        value = table[index]
        if bias:
            return (value.astype("int32") + bias).astype(dtype)
        return value if str(value.dtype) == dtype else value.astype(dtype)

    return te.compute(q.shape, read, name=TABLE_READ)


def mark_elementwise():
    """Module pass (after ``AnnotateTIROpPattern``): table reads are element-wise for fusion.

    TVM classifies ``out[i] = table[q[i]]`` as injective (the table is read at a data-dependent
    index), and FuseOps does not fuse injective operators into a convolution's epilogue: the
    convolution would write its 8-bit result to memory and a separate kernel read it back (1.3 ms
    on a 320x320x32 map). Element ``i`` of the result depends on element ``i`` of ``q`` alone (the
    table is a constant), which is what element-wise fusion needs."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="mmopt_table_reads_elementwise")
    def _pass(mod, _ctx):
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith(TABLE_READ):
                mod[gvar] = func.with_attr("op_pattern", 0)  # kElemWise
        return mod

    return _pass


def _byte_table(table: np.ndarray):
    """``(bytes, bias)`` with ``bytes + bias == table`` for an integer table whose values span at
    most 256 consecutive integers (uint8 or int8 storage), else None."""
    if not np.issubdtype(table.dtype, np.integer):
        return None
    lo, hi = int(table.min()), int(table.max())
    if 0 <= lo and hi <= 255:
        return table.astype(np.uint8), 0
    if -128 <= lo and hi <= 127:
        return table.astype(np.int8), 0
    if hi - lo <= 255:
        return (table.astype(np.int64) - lo).astype(np.uint8), lo
    return None


def lookup_tables(byte_tables: bool = False):
    """The Relax module pass described in the module docstring (runs after ``lower_qdq`` and the
    layout passes, before legalization). ``byte_tables``: store tables of integer results as
    8-bit entries (plus a constant) where they fit, for targets that read them with register
    permutes or shuffles (:mod:`mmopt.codegen.byte_lookup`); elsewhere 32-bit entries, read by
    gathers."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Replace(PyExprMutator):
        def __init__(self, mod, tables):
            super().__init__(mod)
            self.tables = tables

        def visit_var_binding_(self, binding):
            found = self.tables.get(binding.var)
            if found is None:
                super().visit_var_binding_(binding)
                return
            source, table = found
            dtype = str(binding.var.ty.dtype)
            stored = "float32" if dtype.startswith("float") else "int32"
            packed = _byte_table(table) if byte_tables and stored == "int32" else None
            entries, bias = packed if packed is not None else (table.astype(stored), 0)
            new = self.builder_.emit(self.builder_.call_te(
                _read_table, relax.const(entries), self.visit_expr(source), dtype, bias,
                primfunc_name_hint=TABLE_READ))
            self.set_var_remap(binding.var, new)

    @tvm.transform.module_pass(opt_level=0, name="mmopt_lookup_tables")
    def _pass(mod, _ctx):
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
                continue
            chains = _chains(func)
            ends = _ends(func, chains)
            if not ends:
                continue
            try:
                tables = _evaluate(func, chains, ends)
            except Exception as exc:  # noqa: BLE001 - the chains stay arithmetic (same results)
                logger.warning("lookup tables for %d element-wise chains not built (%s); they "
                               "stay arithmetic", len(ends), str(exc).splitlines()[-1][:200])
                continue
            worker = _Replace(mod, {end: (chains[end].source, table)
                                    for end, table in zip(ends, tables)})
            # the builder's module holds the new table-read PrimFuncs
            worker.builder_.update_func(
                gvar, relax.analysis.remove_all_unused(worker.visit_expr(func)))
            mod = worker.builder_.get()
            logger.info("%d element-wise chains on 8-bit tensors became lookup tables", len(ends))
        return mod

    return _pass
