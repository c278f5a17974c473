"""Load and run compiled artifacts (see :mod:`mmopt.runtime.artifact`)."""

from mmopt.runtime.artifact import (
    ArtifactMeta,
    CompiledModel,
    TensorSpec,
    artifact_paths,
    is_artifact,
    load,
    read_meta,
)

__all__ = ["ArtifactMeta", "CompiledModel", "TensorSpec", "artifact_paths", "is_artifact", "load",
           "read_meta"]
