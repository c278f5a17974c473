"""Refusing a TensorFlow graph whose computation reaches outside the model (files, Python
callbacks, checkpoints, input pipelines): TensorFlow would run such ops while converting or
verifying.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from mmopt.errors import UnsupportedModelError

#: ops that reach outside the graph (files, Python callbacks, checkpoints, input pipelines):
#: TensorFlow would run them while converting (tf2onnx folds constants with TensorFlow) or
#: verifying, so a SavedModel or GraphDef whose computation uses one is refused
_IO_OPS = frozenset({"WriteFile", "ReadFile", "MatchingFiles", "ImmutableConst", "PyFunc",
                     "PyFuncStateless", "EagerPyFunc", "Save", "SaveV2", "SaveSlices", "Restore",
                     "RestoreV2", "RestoreSlice", "MergeV2Checkpoints", "ShardedFilename"})
_IO_OP_PATTERN = re.compile(r"File|Reader|Writer|Summary|Dataset|Iterator|Checkpoint")

_PORT = re.compile(r":\d+$")


def _called_functions(node) -> Iterator[str]:
    for attr in node.attr.values():
        if attr.HasField("func"):
            yield attr.func.name
        yield from (f.name for f in attr.list.func)


def refuse_io_ops(graph_def, start: Sequence[str], where) -> None:
    """Refuse a graph whose computation of the ``start`` nodes (names, or ``name:port`` tensors)
    uses an op that touches files or runs Python (:data:`_IO_OPS`), looking into called functions.

    Only what the conversion runs is checked: a SavedModel's checkpoint-saving functions are not.
    """
    nodes = {n.name: n for n in graph_def.node}
    functions = {f.signature.name: f for f in graph_def.library.function}
    seen_nodes: set[str] = set()
    seen_functions: set[str] = set()
    pending = [_PORT.sub("", s.lstrip("^")) for s in start]
    pending_functions: list[str] = []

    def check(node, scope: str) -> None:
        if node.op in _IO_OPS or _IO_OP_PATTERN.search(node.op):
            raise UnsupportedModelError(
                f"{where}: node '{scope}{node.name}' (TensorFlow op {node.op}) reaches outside the "
                "model (files, Python or input pipelines), and TensorFlow would run it while "
                "converting; mmopt converts only self-contained inference graphs")
        pending_functions.extend(_called_functions(node))
        if node.op in functions:  # a call to a library function by its name
            pending_functions.append(node.op)

    while pending or pending_functions:
        while pending:
            name = pending.pop()
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            node = nodes[name]
            check(node, "")
            pending.extend(_PORT.sub("", i.lstrip("^")).split(":")[0] for i in node.input)
        while pending_functions:
            fname = pending_functions.pop()
            if fname in seen_functions or fname not in functions:
                continue
            seen_functions.add(fname)
            for node in functions[fname].node_def:
                check(node, f"{fname}/")
