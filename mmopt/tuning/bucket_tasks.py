"""The tuning tasks of a dynamic model: the buckets' statically specialized kernels.

A model compiled with ``--dim`` and ``--buckets`` has two kinds of kernels: the dynamic ones
(symbolic extents: MetaSchedule makes a candidate's arguments from its buffer shapes, so they
cannot be measured) and each bucket's specialized copies (static shapes, tuned like any static
model's; records are keyed by those shapes). :func:`bucket_tasks` keeps the latter and names the
buckets each one runs in (``tasks.json``; ``mmopt db show`` lists them).
"""

from __future__ import annotations

from collections.abc import Sequence


def bucket_tasks(lowered, extracted: Sequence, buckets: Sequence
                 ) -> tuple[list, dict[str, list[str]], int]:
    """``(static tasks, {task name: bucket labels}, number of dynamic tasks left out)``.

    ``lowered``: the tuning module (after fusion); ``extracted``: its MetaSchedule tasks;
    ``buckets``: the resolved :class:`mmopt.codegen.buckets.Bucket` objects (labels as
    ``--buckets`` writes them: ``images:1,3,640,640``)."""
    from mmopt.codegen.buckets import kernels_by_function

    labels = {b.function: b.input_label() for b in buckets}
    of_task: dict[str, list[str]] = {}
    for function, kernels in kernels_by_function(lowered).items():
        if function in labels:
            for kernel in sorted(kernels):
                of_task.setdefault(kernel, []).append(labels[function])
    static = [t for t in extracted if static_task(t)]
    return static, of_task, len(extracted) - len(static)


def static_task(task) -> bool:
    """Whether a tuning task's kernel has static buffer shapes (and no symbolic extent passed as
    a scalar argument)."""
    if "main" not in task.dispatched[0]:
        return True
    from tvm import tirx

    for param in task.dispatched[0]["main"].params:
        if isinstance(param, tirx.Buffer):
            if not all(hasattr(d, "value") for d in param.shape):
                return False
        elif str(param.dtype).startswith("int"):
            return False
    return True
