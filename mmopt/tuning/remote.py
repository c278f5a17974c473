"""Run and time compiled artifacts on farm devices (``mmopt run ARTIFACT --device KEY --farm H:P``).

The artifact's library is uploaded to a device of the key, loaded there into a Relax VM, fed the
inputs, and the outputs are copied back. The same session can time the model with TVM's
``time_evaluator`` on the device. On a farm with a secret (``secret``, default
``$MMOPT_FARM_SECRET``; see :mod:`mmopt.tuning.secure`) every connection is TLS.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mmopt.errors import MmoptError, summarize
from mmopt.runtime.artifact import ArtifactMeta, artifact_paths, read_meta
from mmopt.tuning.farm import DEFAULT_WAIT_S, FarmError, parse_address, request_session

logger = logging.getLogger(__name__)

#: The device ends a session that lasts longer than this (a hung model cannot hold it forever).
DEFAULT_SESSION_TIMEOUT_S = 600


@dataclass
class Timing:
    """Latency of one model call on the device, in seconds (``repeat`` samples)."""

    samples: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples))

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def best(self) -> float:
        return float(np.min(self.samples))


def check_inputs(meta: ArtifactMeta, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Inputs in the artifact's call order, shapes checked, dtypes cast within their kind."""
    names = [t.name for t in meta.inputs]
    missing = [n for n in names if n not in inputs]
    extra = [n for n in inputs if n not in names]
    if missing or extra:
        raise MmoptError("inputs do not match the artifact: "
                         + (f"missing {', '.join(missing)}; " if missing else "")
                         + (f"unknown {', '.join(extra)}; " if extra else "")
                         + f"expected {', '.join(names)}")
    arrays = []
    for spec in meta.inputs:
        array = np.asarray(inputs[spec.name])
        if list(array.shape) != list(spec.shape):
            raise MmoptError(f"input {spec.name}: shape {list(array.shape)} given, the artifact "
                             f"was compiled for {spec.shape}")
        if array.dtype != np.dtype(spec.dtype):
            if array.dtype.kind != np.dtype(spec.dtype).kind:
                raise MmoptError(f"input {spec.name}: dtype {array.dtype} given, "
                                 f"expected {spec.dtype}")
            array = array.astype(spec.dtype)
        arrays.append(np.ascontiguousarray(array))
    return arrays


class RemoteModel:
    """An artifact loaded on a farm device; call it like :class:`mmopt.runtime.CompiledModel`.

    Holds the device (a tracker session) until :meth:`close` or the end of a ``with`` block.
    """

    def __init__(self, artifact, key: str, farm, *, wait_s: float = DEFAULT_WAIT_S,
                 session_timeout: float = DEFAULT_SESSION_TIMEOUT_S, session=None, secret=None):
        """``session``: load into this open session (e.g. to compare two artifacts on the same
        device) instead of requesting a device from the tracker; ``secret``: the farm secret
        (default ``$MMOPT_FARM_SECRET``)."""
        self.so_path, self.meta_path = artifact_paths(artifact)
        self.meta = read_meta(artifact)
        if not self.so_path.exists():
            raise MmoptError(f"{self.so_path}: no such file (the artifact's library is missing)")
        if self.meta.target.get("device") not in (None, "cpu"):
            raise MmoptError(f"{self.so_path}: remote execution supports CPU targets; this "
                             f"artifact is for {self.meta.target.get('name')} "
                             f"({self.meta.target.get('device')})")
        self.key = key
        self.address = parse_address(farm) if isinstance(farm, str) else tuple(farm)
        self.session = session if session is not None else request_session(
            self.address, key, wait_s=wait_s, session_timeout=session_timeout, secret=secret)
        try:
            self._load()
        except Exception:
            self.close()
            raise

    def _load(self) -> None:
        from tvm import relax

        remote_name = f"mmopt_{self.so_path.name}"
        try:
            self.session.upload(str(self.so_path), remote_name)
            lib = self.session.load_module(remote_name)
            self.device = self.session.cpu(0)
            self._vm = relax.VirtualMachine(lib, self.device)
        except Exception as exc:  # noqa: BLE001 - RPC errors come from C++ as many types
            raise MmoptError(f"{self.so_path.name}: the device (key {self.key!r}) cannot load it: "
                             f"{summarize(exc)} (is the artifact built for this device's "
                             f"architecture? it targets {self.meta.target.get('arch')})") from exc

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.meta.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.meta.outputs]

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> list:
        import tvm

        return [tvm.runtime.tensor(a, device=self.device) for a in check_inputs(self.meta, inputs)]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        from mmopt.runtime.artifact import _flatten

        try:
            result = self._vm["main"](*self._tensors(inputs))
            arrays = _flatten(result)
        except Exception as exc:  # noqa: BLE001
            raise MmoptError(f"running {self.so_path.name} on device {self.key!r} failed: "
                             f"{summarize(exc)}") from exc
        names = self.output_names
        if len(arrays) != len(names):
            raise MmoptError(f"{self.so_path}: returned {len(arrays)} output(s), the description "
                             f"lists {len(names)}")
        return dict(zip(names, arrays))

    def benchmark(self, inputs: Mapping[str, np.ndarray], *, number: int = 10, repeat: int = 5,
                  min_repeat_ms: int = 0) -> Timing:
        """Time ``main`` on the device (TVM's ``time_evaluator``: one warm-up call, then ``repeat``
        samples, each the mean of ``number`` calls)."""
        try:
            self._vm.set_input("main", *self._tensors(inputs))
            timer = self._vm.time_evaluator("invoke_stateful", self.device, number=number,
                                            repeat=repeat, min_repeat_ms=min_repeat_ms)
            return Timing([float(s) for s in timer("main").results])
        except Exception as exc:  # noqa: BLE001
            raise MmoptError(f"timing {self.so_path.name} on device {self.key!r} failed: "
                             f"{summarize(exc)}") from exc

    def close(self) -> None:
        """Release the device: the session ends (and the device's work folder with the uploaded
        library is removed) when the last handle to a remote object is gone."""
        self._vm = None
        self.device = None
        self.session = None

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_remote(artifact, inputs: Mapping[str, np.ndarray], key: str, farm, *,
               wait_s: float = DEFAULT_WAIT_S, secret=None) -> dict[str, np.ndarray]:
    """Run ``artifact`` once on a device of ``key`` from the tracker at ``farm`` (``"HOST:PORT"``);
    returns ``{output name: array}``. Raises :class:`MmoptError` with one line on any failure."""
    with RemoteModel(artifact, key, farm, wait_s=wait_s, secret=secret) as model:
        return model(**inputs)


def benchmark_remote(artifact, inputs: Mapping[str, np.ndarray], key: str, farm, *,
                     number: int = 10, repeat: int = 5, wait_s: float = DEFAULT_WAIT_S,
                     secret=None) -> Timing:
    """Latency of ``artifact`` on a device of ``key`` (see :meth:`RemoteModel.benchmark`)."""
    with RemoteModel(artifact, key, farm, wait_s=wait_s, secret=secret) as model:
        return model.benchmark(inputs, number=number, repeat=repeat)


__all__ = ["FarmError", "RemoteModel", "Timing", "benchmark_remote", "run_remote"]
