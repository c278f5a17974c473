"""unroll_loops: Scan over a static length and Loop with a constant trip count become straight code.

TVM's Relax importer has no converter for ``Loop`` or ``Scan``. Both are unrolled: the body graph is
copied once per iteration (:func:`mmopt.extend.rules.inline_graph`), each copy reading the previous copy's
state outputs.

* ``Scan`` (opset >= 9): iteration ``t`` reads element ``t`` of every scan input along its
  ``scan_input_axes`` entry (element ``T-1-t`` for a reverse ``scan_input_directions`` entry); the
  scan outputs' per-iteration elements are stacked along ``scan_output_axes`` (in reverse for a
  reverse ``scan_output_directions`` entry). ``T`` is the static length of the scan axis.
* ``Loop``: the trip count ``M`` must be a constant and the initial condition absent or a constant
  true; the body's condition output must be its condition input passed through (possibly via
  ``Identity``) or a constant true, so every iteration runs. The body's iteration-number input is
  the constant ``t``, its scan outputs are stacked along a new axis 0.

Anything else (a data-dependent trip count or exit condition) is dynamic control flow that a static
compiled artifact cannot express; the rule's ``check`` says which condition failed, and that reason
names the node in the compile error.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mmopt.extend.rules import (
    Context,
    Decomposition,
    Tape,
    attr,
    const,
    inline_graph,
    ints,
    present,
    static_shape,
)

#: the most iterations a node is unrolled to (the graph grows linearly with it)
MAX_ITERATIONS = 4096


def _stack(tape: Tape, elements: list[ir.Value], axis: int) -> ir.Value:
    parts = [tape.op("Unsqueeze", [e, ints(tape, [axis])]) for e in elements]
    return parts[0] if len(parts) == 1 else tape.op("Concat", parts, {"axis": axis})


class UnrollScan(Decomposition):
    name = "unroll_scan"
    op_types = ("Scan",)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if ctx.opset < 9:
            return "Scan-8 (with a batch axis) is not supported"
        k = attr(node, "num_scan_inputs")
        scans = node.inputs[len(node.inputs) - k:]
        axes = list(attr(node, "scan_input_axes", None) or [0] * k)
        lengths = set()
        for value, axis in zip(scans, axes):
            shape = static_shape(value)
            if shape is None:
                return f"scan input {value.name} has no static shape (the length must be known)"
            lengths.add(shape[axis % len(shape)])
        if len(lengths) != 1:
            return "scan inputs of different or unknown lengths"
        (length,) = lengths
        if length > MAX_ITERATIONS:
            return f"{length} iterations; unrolled up to {MAX_ITERATIONS}"
        return None

    def rewrite(self, node: ir.Node, tape: Tape, ctx: Context):
        body: ir.Graph = node.attributes["body"].value
        k = attr(node, "num_scan_inputs")
        n_states = len(node.inputs) - k
        states = list(node.inputs[:n_states])
        scans = list(node.inputs[n_states:])
        in_axes = list(attr(node, "scan_input_axes", None) or [0] * k)
        in_dirs = list(attr(node, "scan_input_directions", None) or [0] * k)
        n_scan_out = len(body.outputs) - n_states
        out_axes = list(attr(node, "scan_output_axes", None) or [0] * n_scan_out)
        out_dirs = list(attr(node, "scan_output_directions", None) or [0] * n_scan_out)
        shapes = [static_shape(v) for v in scans]
        in_axes = [a % len(s) for a, s in zip(in_axes, shapes)]
        length = shapes[0][in_axes[0]]
        collected: list[list[ir.Value]] = [[] for _ in range(n_scan_out)]
        base = node.name or "scan"
        for t in range(length):
            elements = [tape.op("Gather", [v, ints(tape, t if not d else length - 1 - t)],
                                {"axis": a}) for v, a, d in zip(scans, in_axes, in_dirs)]
            outs = inline_graph(body, states + elements, tape, ctx, f"{base}/iter{t}")
            states = outs[:n_states]
            for j, value in enumerate(outs[n_states:]):
                collected[j].append(value)
        results = list(states)
        for j, elements in enumerate(collected):
            if out_dirs[j]:
                elements = elements[::-1]
            axis = out_axes[j]
            if axis < 0:
                # negative output axes count from the end of the stacked output's rank
                element_rank = _rank(body.outputs[n_states + j])
                if element_rank is None:
                    raise ValueError("negative scan_output_axes need a known output rank")
                axis += element_rank + 1
            results.append(_stack(tape, elements, axis))
        return results


def _rank(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)


def _passes_condition_through(body: ir.Graph) -> bool:
    """Whether the body's condition output is its condition input (through Identity) or True."""
    out = body.outputs[0]
    while out.producer() is not None and out.producer().op_type == "Identity":
        out = out.producer().inputs[0]
    if out is body.inputs[1]:
        return True
    value = const(out)
    return value is not None and value.size == 1 and bool(value.reshape(-1)[0])


class UnrollLoop(Decomposition):
    name = "unroll_loop"
    op_types = ("Loop",)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        trip = const(present(node, 0))
        if trip is None:
            return "the trip count is not a constant (dynamic control flow)"
        if int(trip.reshape(-1)[0]) > MAX_ITERATIONS:
            return f"{int(trip.reshape(-1)[0])} iterations; unrolled up to {MAX_ITERATIONS}"
        cond = present(node, 1)
        if cond is not None:
            value = const(cond)
            if value is None:
                return "the initial condition is not a constant (dynamic control flow)"
            if not bool(value.reshape(-1)[0]):
                return None  # runs zero times: handled in rewrite
        body: ir.Graph = node.attributes["body"].value
        if not _passes_condition_through(body):
            return "the body computes its exit condition (dynamic control flow)"
        n_carried = len(node.inputs) - 2
        for out in body.outputs[1 + n_carried:]:
            if out.shape is None or not all(isinstance(d, int) for d in out.shape):
                if int(trip.reshape(-1)[0]) == 0:
                    return "a scan output of a loop that runs zero times has an unknown shape"
        return None

    def rewrite(self, node: ir.Node, tape: Tape, ctx: Context):
        body: ir.Graph = node.attributes["body"].value
        trip = int(const(present(node, 0)).reshape(-1)[0])
        cond = present(node, 1)
        if cond is not None and not bool(const(cond).reshape(-1)[0]):
            trip = 0
        carried = list(node.inputs[2:])
        n_carried = len(carried)
        cond_value = cond if cond is not None else tape.op(
            "Constant", [], {"value": ir.tensor(np.array(True))})
        scans: list[list[ir.Value]] = [[] for _ in body.outputs[1 + n_carried:]]
        base = node.name or "loop"
        for t in range(trip):
            iteration = tape.op("Constant", [], {"value": ir.tensor(np.array(t, dtype=np.int64))})
            outs = inline_graph(body, [iteration, cond_value, *carried], tape, ctx, f"{base}/iter{t}")
            carried = outs[1:1 + n_carried]
            for j, value in enumerate(outs[1 + n_carried:]):
                scans[j].append(value)
        results = list(carried)
        for j, elements in enumerate(scans):
            if elements:
                results.append(_stack(tape, elements, 0))
            else:
                out = body.outputs[1 + n_carried + j]
                shape = [0, *(int(d) for d in out.shape)]
                results.append(tape.op("Constant", [], {"value": ir.tensor(
                    np.zeros(shape, dtype=out.dtype.numpy()))}))
        return results


RULES = (UnrollScan(), UnrollLoop())
