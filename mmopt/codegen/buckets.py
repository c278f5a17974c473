"""Shape buckets: statically specialized copies of a dynamic model's ``main`` in the same artifact.

A dynamic artifact's kernels take symbolic extents: tiles with predicated tails, no Winograd, no
tuning records. For the sizes that matter (``--buckets images:1,3,640,640``) the Relax ``main`` is
copied with its symbolic variables bound to the bucket's sizes
(``relax.Function.bind_symbolic_vars``) under the name ``main_bucket<i>``, before any lowering: the
copy then goes through the same pipeline as a static compile (layout, packing, Winograd, default
schedules or tuning records keyed by its static shapes). The runtime calls the bucket whose sizes
match the inputs exactly and ``main`` for everything else (:class:`mmopt.runtime.CompiledModel`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mmopt.errors import MmoptError


@dataclass(frozen=True)
class Bucket:
    """One specialized size set: ``sizes`` of the symbolic dims, ``inputs``' concrete shapes."""

    function: str
    sizes: dict
    inputs: dict

    def to_dict(self) -> dict:
        return {"function": self.function, "sizes": dict(self.sizes),
                "inputs": {k: list(v) for k, v in self.inputs.items()}}

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.sizes.items()))

    def input_label(self) -> str:
        """The bucket as ``--buckets`` writes it: ``images:1,3,640,640``."""
        return ";".join(f"{k}:{','.join(str(d) for d in v)}" for k, v in self.inputs.items())


def parse_bucket_option(text: str) -> dict[str, tuple[int, ...]]:
    """``images:1,3,640,640`` (several inputs: ``a:1,16;b:1,16``) as ``{input: shape}``."""
    from mmopt.ir import parse_shape_option

    shapes: dict[str, tuple[int, ...]] = {}
    for part in (p for p in text.split(";") if p.strip()):
        try:
            name, shape = parse_shape_option(part.strip())
        except MmoptError as exc:
            raise MmoptError(f"--buckets {text!r}: {exc.message.split(': ', 1)[-1]}") from None
        if not all(isinstance(d, int) for d in shape):
            raise MmoptError(f"--buckets {text!r}: a bucket gives concrete sizes, e.g. "
                             f"{name}:1,3,640,640")
        shapes[name] = shape
    if not shapes:
        raise MmoptError(f"--buckets {text!r}: expected INPUT:D1,D2,... e.g. images:1,3,640,640")
    return shapes


def resolve_buckets(buckets: Sequence[Mapping[str, Sequence[int]]],
                    specs: Mapping[str, Sequence], ranges) -> list[Bucket]:
    """Check each bucket against the model's inputs (``specs``: ``{input: dims}``) and the dims'
    ``ranges``; every symbolic dim must be bound by a bucket, in range; no bucket twice."""
    from mmopt.ir.dims import bind_sizes

    out: list[Bucket] = []
    symbolic = {d for dims in specs.values() for d in dims if isinstance(d, str)}
    for shapes in buckets:
        label = ";".join(f"{k}:{','.join(map(str, v))}" for k, v in shapes.items())
        unknown = [n for n in shapes if n not in specs]
        if unknown:
            raise MmoptError(f"--buckets {label}: no input named {unknown[0]}; the inputs are "
                             f"{', '.join(specs)}")
        if not symbolic:
            raise MmoptError(f"--buckets {label}: the model has no symbolic dims (keep some with "
                             "--dim NAME=MIN..MAX)")
        sizes = bind_sizes(specs, shapes, ranges, where="--buckets: input")
        missing = sorted(symbolic - set(sizes))
        if missing:
            needs = [n for n, dims in specs.items() if missing[0] in dims]
            raise MmoptError(f"--buckets {label}: does not give dim {missing[0]} (of input "
                             f"{needs[0]}); give every input that has symbolic dims")
        if any(b.sizes == sizes for b in out):
            raise MmoptError(f"--buckets {label}: given twice")
        concrete = {n: tuple(sizes.get(d, d) if isinstance(d, str) else d for d in dims)
                    for n, dims in specs.items()}
        out.append(Bucket(f"main_bucket{len(out)}", sizes, concrete))
    return out


def add_buckets(mod, buckets: Sequence[Bucket], dims):
    """``mod`` with one statically specialized copy of ``main`` per bucket (see the module
    docstring). The copies have no symbolic variables left and no bound annotations; they keep
    ``main``'s parameters (a leading block-count shape, when some dim has a multiple: see
    :func:`mmopt.codegen.symbolic_dims.with_block_argument`)."""
    if not buckets:
        return mod
    from tvm import tirx
    from tvm.relax.utils import copy_with_new_vars

    from mmopt.codegen.symbolic_dims import symbol_values

    main = mod["main"]
    for bucket in buckets:
        # fresh variables: a Relax variable is bound once per module (bindings whose type has no
        # symbolic dim would otherwise be shared with main, and FuseOps refuses that)
        bound = copy_with_new_vars(main).bind_symbolic_vars(
            {name: tirx.const(value, "int64")
             for name, value in symbol_values(bucket.sizes, dims).items()})
        for key in ("tir_var_lower_bound", "tir_var_upper_bound"):
            bound = bound.without_attr(key)
        mod[bucket.function] = bound.with_attr("global_symbol", bucket.function)
    return mod


def kernels_by_function(mod) -> dict[str, set[str]]:
    """``{Relax function name: names of the PrimFuncs it calls}`` of a lowered module (after
    fusion): which kernels a bucket's function runs."""
    from tvm import relax
    from tvm.relax.analysis import post_order_visit

    out: dict[str, set[str]] = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        called: set[str] = set()

        def visit(expr, called=called):
            if isinstance(expr, relax.Call):
                for arg in (expr.op, *expr.args):
                    if isinstance(arg, relax.GlobalVar):
                        called.add(arg.name_hint)

        post_order_visit(func, visit)
        out[gvar.name_hint] = called
    return out
