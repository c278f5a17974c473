"""Symbolic dims in the Relax module: the variables ``--dim`` ranges become, and their bounds.

Each dim kept symbolic (``{name: DimRange}``, :mod:`mmopt.ir.dims`) is one ``int64`` variable of
``main``, shared by every input axis of that name. A dim with a multiple ``m``
(``height=320..1280:32``) is ``m * height_blocks``: ``main`` then takes a leading
``R.Shape([blocks...])`` parameter (:data:`BLOCKS_PARAM`) that defines the block counts, which the
runtime passes before the inputs (:class:`mmopt.runtime.CompiledModel`) and bucket copies bind
(:mod:`mmopt.codegen.buckets`). The ranges are annotated as ``tir_var_lower_bound`` /
``tir_var_upper_bound`` (the memory planner allocates for the maximum once instead of per call);
code generation reads them back (:func:`symbolic_bounds`, :func:`least_value`) to choose what a
symbolic loop is sure to have.
"""

from __future__ import annotations

#: name of ``main``'s leading parameter when some dim has a multiple (see :func:`symbolic_vars`)
BLOCKS_PARAM = "dim_blocks"


def block_var_name(name: str) -> str:
    return f"{name}_blocks"


def block_dims(dims) -> list[str]:
    """The dims passed to ``main`` as block counts (those with a multiple), in order."""
    return [name for name, r in dims.items() if r.multiple > 1]


def symbolic_vars(dims) -> dict:
    """``{name: expression}`` of each dim's size: a plain int64 symbolic variable, or for a dim
    with a multiple ``m`` (``height=320..1280:32``), ``m * height_blocks``. The multiple is what
    lets shape arithmetic prove that a stride-32 and a stride-16 map upsampled 2x line up
    (``((h - 1) // 32 + 1) * 2 == (h - 1) // 16 + 1`` holds only for multiples of 32)."""
    from tvm import tirx

    out = {}
    for name, r in dims.items():
        if r.multiple > 1:
            out[name] = tirx.Var(block_var_name(name), "int64") * r.multiple
        else:
            out[name] = tirx.Var(name, "int64")
    return out


def with_block_argument(mod, variables, dims, func_name: str = "main"):
    """Give ``func_name`` a leading ``R.Shape([blocks...])`` parameter defining the block-count
    variables of the dims with a multiple (TVM binds a symbolic variable only where it appears
    alone in a parameter's shape; ``32 * height_blocks`` in the input's shape is then checked at
    each call: the input's height must be 32 times the block count passed)."""
    from tvm import relax

    names = block_dims(dims)
    if not names:
        return mod
    func = mod[func_name]
    from tvm import tirx

    # variables[n] is ``m * n_blocks``: the block-count variable is the product's Var operand
    blocks = [next(x for x in (variables[n].a, variables[n].b) if isinstance(x, tirx.Var))
              for n in names]
    param = relax.Var(BLOCKS_PARAM, relax.ShapeType(blocks))
    new = relax.Function([param, *func.params], func.body, func.ret_ty, func.is_pure, func.attrs)
    mod[func_name] = new
    return mod


def symbol_values(sizes, dims) -> dict:
    """``{symbolic variable name: value}`` for concrete dim ``sizes`` (block counts for dims with
    a multiple)."""
    out = {}
    for name, size in sizes.items():
        r = dims[name]
        if r.multiple > 1:
            out[block_var_name(name)] = int(size) // r.multiple
        else:
            out[name] = int(size)
    return out


def with_dim_bounds(mod, dims, func_name: str = "main"):
    """``mod`` with the ranges of ``dims`` annotated on ``func_name`` (``tir_var_lower_bound``,
    ``tir_var_upper_bound``: TVM's memory planner sizes buffers for the upper bounds)."""
    func = mod[func_name]
    lower = symbol_values({name: r.min for name, r in dims.items()}, dims)
    upper = symbol_values({name: r.max for name, r in dims.items()}, dims)
    func = func.with_attr("tir_var_lower_bound", lower).with_attr("tir_var_upper_bound", upper)
    mod[func_name] = func
    return mod


def block_counts(sizes, dims) -> list[int]:
    """The leading shape argument ``main`` and its bucket copies take for concrete dim ``sizes``:
    ``size // multiple`` of each dim with a multiple, in :func:`block_dims` order (empty: none
    has a multiple, and there is no leading argument)."""
    return [int(sizes[name]) // dims[name].multiple for name in block_dims(dims)]


def has_symbolic_inputs(mod, func_name: str = "main") -> bool:
    """Whether a tensor parameter of ``mod[func_name]`` has a symbolic dim (False when ``mod``
    has no such function)."""
    from tvm import tirx

    if func_name not in [g.name_hint for g in mod.get_global_vars()]:
        return False
    for param in mod[func_name].params:
        shape = getattr(param.ty, "shape", None)
        if shape is not None and any(not isinstance(d, tirx.IntImm) for d in shape):
            return True
    return False


def symbolic_bounds(mod) -> dict[str, tuple[int, int]]:
    """``{variable name: (min, max)}`` of the symbolic variables whose ranges ``mod``'s Relax
    functions declare (``tir_var_lower_bound`` / ``tir_var_upper_bound``, :func:`with_dim_bounds`).
    """
    from tvm import relax

    bounds = {}
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or func.attrs is None:
            continue
        lower = func.attrs.get("tir_var_lower_bound") or {}
        upper = func.attrs.get("tir_var_upper_bound") or {}
        for name, lo in lower.items():
            if name in upper:
                bounds[str(name)] = (int(lo), int(upper[name]))
    return bounds


def _bound(expr, bounds, bind):
    """``(constant, analyzer)`` for the TIR expression ``expr``: its integer value (analyzer None)
    when it is a constant, else an arith analyzer with each of its variables bound by
    ``bind(analyzer, var, lo, hi)`` from ``bounds``; ``(None, None)`` when a variable has no known
    range."""
    from tvm import tirx
    from tvm.sym import Analyzer  # TVM 0.27's arith analyzer

    if isinstance(expr, int):
        return expr, None
    if isinstance(expr, tirx.IntImm):
        return int(expr.value), None
    analyzer = Analyzer()
    for var in tirx.analysis.undefined_vars(expr):
        if var.name not in bounds:
            return None, None
        bind(analyzer, var, *bounds[var.name])
    return None, analyzer


def least_value(expr, bounds) -> int | None:
    """The least value the TIR expression ``expr`` (an extent) takes when its variables range over
    ``bounds`` (:func:`symbolic_bounds`); None when one of them has no known range."""
    import tvm

    def bind(analyzer, var, lo, hi):
        analyzer.bind(var, tvm.ir.Range.from_min_extent(lo, hi - lo + 1))

    constant, analyzer = _bound(expr, bounds, bind)
    if analyzer is None:
        return constant
    least = analyzer.const_int_bound(expr).min_value
    return int(least) if least > -(2 ** 62) else None


def typical_value(expr, bounds) -> int | None:
    """The value of the TIR expression ``expr`` when each of its variables is at the middle of its
    range on a log scale (``round(sqrt(min * max))``: height blocks 10..40 -> 20, a height of
    640 for 320..1280:32): the size a choice that depends on size (Winograd, where it pays) is
    made for when one kernel serves the whole range. None when a variable has no known range."""
    import math

    from tvm import tirx

    def bind(analyzer, var, lo, hi):
        middle = round(math.sqrt(max(lo, 1) * max(hi, 1)))
        analyzer.bind(var, tirx.const(middle, var.ty.dtype))

    constant, analyzer = _bound(expr, bounds, bind)
    if analyzer is None:
        return constant
    value = analyzer.simplify(expr)
    return int(value.value) if isinstance(value, tirx.IntImm) else None
