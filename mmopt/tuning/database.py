"""Tuning databases: MetaSchedule records, kept and applied per target.

A database is a directory. Records live in one sub-database per *target identity*, so a record
measured for one target can never be applied to another::

    DIR/mmopt-tuning-db.json                   {"format": 1}
    DIR/<slug>/target.json                     the target the records were measured for
    DIR/<slug>/database_workload.json          MetaSchedule's JSONDatabase files
    DIR/<slug>/database_tuning_record.json
    DIR/<slug>/tasks.json                      task names, search state and in-model verdicts,
                                               by workload hash

The *identity* of a target is the canonical JSON of its TVM target (kind, triple, CPU, features,
host, ...) without ``num-cores``: tuning needs the core count and it changes which schedule wins,
not whether the code is valid, and compile targets do not carry it. ``<slug>`` is readable
(``llvm-x86_64-znver5-…``) and ends with a hash of the identity.

Target-awareness is enforced twice: :func:`open_database` loads only the sub-database of the
target and drops any record whose own target has another identity; and the returned database
answers queries only for that target (:class:`TargetDatabase`), so handing it to a build for
another target applies nothing.

Records measured on an *emulated* device (``mmopt farm emulate``: qemu-user, whose timings are
not the hardware's) live in a sub-database of their own, ``DIR/<slug>-emulated/`` (its
``target.json`` says ``"emulated": true``), so they never mix with real measurements, neither in
a tuning run's search nor in a compile. A compile applies them only when asked
(``open_database(..., allow_emulated=True)``, ``mmopt compile --allow-emulated-records``), and then
only to kernels without a real record; either way the database says which kernels had only
emulated records (:meth:`emulated_report`).

A task's records are ranked by their time measured alone, kernel by kernel, which can mislead: in
the model a kernel's weights come from memory and its inputs from the kernel before, and a schedule
that wins alone can lose there. Tuning therefore confirms each task's best record in the model
(:mod:`mmopt.tuning.confirm`) and writes the verdict to ``tasks.json``: the schedule that was
faster *in the model* (``kept``, a hash of its trace) and both times (``in_model``). A task with a
verdict applies only that schedule's records; a task without one applies its fastest record.

Workloads are keyed by MetaSchedule's structural hash of the task's TIR, so records are shared by
every model with the same task (same operator, shapes and fused neighbours).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

FORMAT = 1
MARKER = "mmopt-tuning-db.json"
TARGET_FILE = "target.json"
TASKS_FILE = "tasks.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
#: MetaSchedule's run time for a candidate that failed to build or run (never the best).
FAILED_RUN_SECS = 1e10
#: Target attributes that are not part of its identity (see the module docstring).
NOT_IDENTITY = ("num-cores",)
#: Suffix of the sub-database of records measured on emulated devices.
EMULATED_SUFFIX = "-emulated"


# --------------------------------------------------------------------------------------------------
# target identity


def _tvm_target(target):
    """An mmopt ``Target``, a ``tvm.target.Target``, a target name or a JSON dict: a TVM target."""
    import tvm

    from mmopt import targets as _targets

    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, (str, _targets.Target)):
        return _targets.get(target).tvm_target()
    if isinstance(target, dict):
        return tvm.target.Target(target)
    raise TypeError(f"not a target: {target!r}")


def _canonical(value):
    """Plain, sorted JSON data from TVM's target export (FFI maps/arrays/strings), identity keys
    only."""
    if hasattr(value, "export"):  # a nested tvm Target (host)
        return _canonical(value.export())
    if hasattr(value, "items"):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
                if str(k) not in NOT_IDENTITY}
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value if not isinstance(value, str) else str(value)
    if hasattr(value, "__iter__"):
        return [_canonical(v) for v in value]
    if hasattr(value, "value"):  # IntImm / FloatImm
        return value.value
    return str(value)


def target_identity(target) -> dict:
    """The canonical description of ``target`` that decides which records apply to it."""
    return _canonical(_tvm_target(target).export())


def identity_key(target) -> str:
    """A short hash of :func:`target_identity`: equal keys, interchangeable records."""
    return _hash_identity(target_identity(target))


def _hash_identity(identity: dict) -> str:
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def target_slug(target) -> str:
    """Directory name of the sub-database of ``target``: readable prefix + identity hash."""
    identity = target_identity(target)
    parts = [identity.get("kind", "target")]
    triple = identity.get("mtriple") or (identity.get("host") or {}).get("mtriple")
    if triple:
        parts.append(str(triple).split("-")[0])
    for attr in ("mcpu", "arch"):
        if identity.get(attr):
            parts.append(str(identity[attr]))
    safe = "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in p) for p in parts)
    return f"{safe}-{_hash_identity(identity)}"


# --------------------------------------------------------------------------------------------------
# the database directory


@dataclass
class TaskInfo:
    """What ``tasks.json`` keeps about a workload (informational; records are the truth)."""

    name: str
    #: the search space gave no new candidates: more trials would not measure anything new
    exhausted: bool = False
    models: list[str] = field(default_factory=list)
    #: time of the default (untuned) schedule, recorded as one of the task's records
    default_s: float | None = None
    #: the shape buckets (``--buckets``) whose specialized function runs this kernel, as
    #: ``images:1,3,640,640``; empty for a static model's kernels
    buckets: list[str] = field(default_factory=list)
    #: the in-model verdict (:mod:`mmopt.tuning.confirm`): :func:`schedule_hash` of the schedule
    #: that was faster in the model, whose records alone apply; None: the fastest record applies
    kept: str | None = None
    #: the times behind it: ``{"default_ms", "tuned_ms", "kept": "default"|"tuned", "model"}``
    in_model: dict | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "exhausted": self.exhausted, "models": self.models,
                "default_s": self.default_s, **({"buckets": self.buckets} if self.buckets else {}),
                **({"kept": self.kept, "in_model": self.in_model} if self.kept else {})}


@dataclass
class WorkloadSummary:
    workload: str
    name: str
    records: int
    valid: int
    best_s: float | None
    #: the shape buckets whose specialized kernel this is (empty: a static model's kernel)
    buckets: list[str] = field(default_factory=list)
    #: the in-model verdict (``{"default_ms", "tuned_ms", "kept", ...}``; None: none)
    in_model: dict | None = None


@dataclass
class TargetSummary:
    slug: str
    target: dict
    workloads: list[WorkloadSummary]
    #: measured on emulated devices (see the module docstring)
    emulated: bool = False

    @property
    def records(self) -> int:
        return sum(w.records for w in self.workloads)

    def to_dict(self) -> dict:
        return {"slug": self.slug, "target": self.target, "records": self.records,
                "emulated": self.emulated, "workloads": [w.__dict__ for w in self.workloads]}


def is_database(path) -> bool:
    return (Path(path) / MARKER).is_file()


class TuningDatabase:
    """A tuning database directory (see the module docstring)."""

    def __init__(self, path, *, create: bool = False):
        self.path = Path(path)
        if not is_database(self.path):
            if not create:
                if not self.path.exists():
                    raise MmoptError(f"{self.path}: no such tuning database (`mmopt tune ... --db "
                                     f"{self.path}` creates one)")
                raise MmoptError(f"{self.path}: not an mmopt tuning database (no {MARKER})")
            if self.path.exists() and any(self.path.iterdir()):
                raise MmoptError(f"{self.path}: exists and is not an mmopt tuning database; "
                                 "choose a new or empty directory")
            self.path.mkdir(parents=True, exist_ok=True)
            _write_json(self.path / MARKER, {"format": FORMAT})
        else:
            fmt = _read_json(self.path / MARKER).get("format")
            if fmt != FORMAT:
                raise MmoptError(f"{self.path}: tuning database format {fmt}, this mmopt reads "
                                 f"format {FORMAT}")

    # -- sub-databases ---------------------------------------------------------------------------

    def target_dirs(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if (p / TARGET_FILE).is_file())

    def target_dir(self, target, *, create: bool = False, emulated: bool = False) -> Path:
        """The sub-database of ``target``'s records (``emulated``: of those measured on emulated
        devices)."""
        sub = self.path / (target_slug(target) + (EMULATED_SUFFIX if emulated else ""))
        if create and not (sub / TARGET_FILE).is_file():
            sub.mkdir(parents=True, exist_ok=True)
            _write_json(sub / TARGET_FILE, {"identity": target_identity(target),
                                            "key": identity_key(target),
                                            **({"emulated": True} if emulated else {})})
        return sub

    def writer(self, target, *, emulated: bool = False):
        """The sub-database of ``target`` as a MetaSchedule ``JSONDatabase`` that tuning appends
        records to (one line per record, written as each is measured); ``emulated``: the one of
        records measured on emulated devices."""
        from tvm.s_tir import meta_schedule as ms

        sub = self.target_dir(target, create=True, emulated=emulated)
        _check_sub(sub, target, emulated)
        return ms.database.JSONDatabase(str(sub / WORKLOADS), str(sub / RECORDS),
                                        allow_missing=True)

    def _memory(self, target, emulated: bool):
        """``(MetaSchedule MemoryDatabase, records kept)`` of one sub-database of ``target``."""
        from tvm.s_tir import meta_schedule as ms

        memory = ms.database.MemoryDatabase()
        sub = self.target_dir(target, emulated=emulated)
        kept = dropped = 0
        if (sub / TARGET_FILE).is_file():
            _check_sub(sub, target, emulated)
            want = identity_key(target)
            records = []
            for record in _load_records(sub):
                if record.target is not None and identity_key(record.target) != want:
                    dropped += 1
                else:
                    records.append(record)
            for record in _apply_verdicts(records, self.tasks(target, emulated=emulated)):
                memory.commit_tuning_record(_recommit(memory, record))
                kept += 1
        if dropped:
            logger.warning("%s: ignored %d record(s) measured for another target", sub, dropped)
        return memory, kept

    def reader(self, target, *, allow_emulated: bool = False) -> TargetDatabase:
        """The records of ``target`` (only those), read-only, as a :class:`TargetDatabase`.

        Records measured on emulated devices are loaded too but applied only with
        ``allow_emulated``, and then only where no real record exists (see the module docstring).
        """
        memory, kept = self._memory(target, emulated=False)
        emulated, kept_emulated = self._memory(target, emulated=True)
        codegen = None
        for sub in (self.target_dir(target), self.target_dir(target, emulated=True)):
            if codegen is None and (sub / TARGET_FILE).is_file():
                codegen = _read_json(sub / TARGET_FILE).get("codegen")
        if not kept and not kept_emulated:
            others = [_read_json(d / TARGET_FILE).get("identity", {}) for d in self.target_dirs()]
            logger.info("%s: no records for target %s (it has records for %d other target(s))",
                        self.path, json.dumps(target_identity(target)), len(others))
        database = TargetDatabase(memory, target, self.path)
        database.codegen = codegen
        if kept_emulated:
            database.emulated = emulated
            database.emulated_records = kept_emulated
            database.allow_emulated = allow_emulated
        return database

    def record_codegen(self, target, settings: dict, *, emulated: bool = False) -> dict | None:
        """Store the code-generation settings (:mod:`mmopt.codegen.options`) that ``target``'s
        records are measured with; returns the settings stored before (None: none)."""
        sub = self.target_dir(target, create=True, emulated=emulated)
        data = _read_json(sub / TARGET_FILE)
        before = data.get("codegen")
        data["codegen"] = settings
        _write_json(sub / TARGET_FILE, data)
        return before

    # -- task information ------------------------------------------------------------------------

    def tasks(self, target, *, emulated: bool = False) -> dict[str, TaskInfo]:
        path = self.target_dir(target, emulated=emulated) / TASKS_FILE
        data = _read_json(path) if path.is_file() else {}
        return {k: TaskInfo(v.get("name", "?"), bool(v.get("exhausted")), list(v.get("models", [])),
                            v.get("default_s"), list(v.get("buckets", [])), v.get("kept"),
                            v.get("in_model"))
                for k, v in data.items()}

    def update_tasks(self, target, infos: dict[str, TaskInfo], *, emulated: bool = False) -> None:
        sub = self.target_dir(target, create=True, emulated=emulated)
        merged = self.tasks(target, emulated=emulated)
        for workload, info in infos.items():
            old = merged.get(workload)
            if old is not None:
                info.models = sorted(set(old.models) | set(info.models))
                info.buckets = sorted(set(old.buckets) | set(info.buckets))
                info.exhausted = info.exhausted or old.exhausted
                if info.default_s is None:
                    info.default_s = old.default_s
                if info.kept is None:  # the verdict stays until set_verdicts changes it
                    info.kept, info.in_model = old.kept, old.in_model
            merged[workload] = info
        _write_json(sub / TASKS_FILE, {k: v.to_dict() for k, v in sorted(merged.items())})

    def set_verdicts(self, target, verdicts: dict[str, tuple[str | None, dict | None]], *,
                     emulated: bool = False) -> None:
        """Set (or, with ``(None, None)``, remove) the in-model verdicts of workloads:
        ``{workload: (schedule_hash of the kept schedule, in_model times)}``."""
        sub = self.target_dir(target, create=True, emulated=emulated)
        merged = self.tasks(target, emulated=emulated)
        for workload, (kept, times) in verdicts.items():
            info = merged.setdefault(workload, TaskInfo((times or {}).get("name", "?")))
            info.kept, info.in_model = kept, (times if kept else None)
        _write_json(sub / TASKS_FILE, {k: v.to_dict() for k, v in sorted(merged.items())})

    # -- inspection ------------------------------------------------------------------------------

    def summary(self) -> list[TargetSummary]:
        out = []
        for sub in self.target_dirs():
            meta = _read_json(sub / TARGET_FILE)
            names = _read_json(sub / TASKS_FILE) if (sub / TASKS_FILE).is_file() else {}
            per: dict[str, list[float]] = {}
            for workload, _trace, secs in _raw_records(sub):
                per.setdefault(workload, []).append(secs)
            workloads = []
            for workload, secs in per.items():
                valid = [s for s in secs if s < FAILED_RUN_SECS]
                info = names.get(workload, {})
                workloads.append(WorkloadSummary(
                    workload, info.get("name", "?"), len(secs), len(valid),
                    min(valid) if valid else None, list(info.get("buckets", [])),
                    info.get("in_model") if info.get("kept") else None))
            workloads.sort(key=lambda w: (w.name, w.workload))
            out.append(TargetSummary(sub.name, meta.get("identity", {}), workloads,
                                     bool(meta.get("emulated"))))
        return out

    def record_counts(self, target, *, emulated: bool = False) -> dict[str, int]:
        """``{workload hash: number of records}`` in the sub-database of ``target``."""
        counts: dict[str, int] = {}
        sub = self.target_dir(target, emulated=emulated)
        if (sub / TARGET_FILE).is_file():
            for workload, _trace, _secs in _raw_records(sub):
                counts[workload] = counts.get(workload, 0) + 1
        return counts

    def schedules(self, target, *, emulated: bool = False) -> dict[str, dict[str, float]]:
        """``{workload hash: {schedule trace (JSON): best mean run seconds}}`` of ``target``.

        A schedule may have several records (it is measured again when tuning ends, next to the
        default schedule); this counts it once.
        """
        out: dict[str, dict[str, float]] = {}
        sub = self.target_dir(target, emulated=emulated)
        if (sub / TARGET_FILE).is_file():
            for workload, trace, secs in _raw_records(sub):
                traces = out.setdefault(workload, {})
                traces[trace] = min(traces.get(trace, FAILED_RUN_SECS), secs)
        return out


def _make_target_database_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.database import PyDatabase

    @derived_object
    class _TargetDatabase(PyDatabase):
        """A read-only MetaSchedule database that answers only for one target."""

        def __init__(self, inner, target, source: Path):
            super().__init__()
            self.inner = inner
            self.identity = identity_key(target)
            self.target_name = getattr(target, "name", None) or str(target)
            self.source = source
            #: names of the functions a build looked up, and of those that had a record
            self.queried: list[str] = []
            self.applied: list[str] = []
            self.other_target: int = 0
            #: code-generation settings the records were tuned with (None: not recorded)
            self.codegen: dict | None = None
            #: records measured on emulated devices (a MemoryDatabase, or None), how many, and
            #: whether they may be applied (to kernels without a real record)
            self.emulated = None
            self.emulated_records: int = 0
            self.allow_emulated: bool = False
            #: kernels that got an emulated record, and kernels that had only emulated records
            #: but were left on default schedules (not allowed)
            self.applied_emulated: list[str] = []
            self.skipped_emulated: list[str] = []

        def has_workload(self, mod):
            return self.inner.has_workload(mod) or (
                self.allow_emulated and self.emulated is not None
                and self.emulated.has_workload(mod))

        def commit_workload(self, mod):
            return self.inner.commit_workload(mod)

        def commit_tuning_record(self, record):
            raise MmoptError("this tuning database is read-only (tuning writes through "
                             "TuningDatabase.writer)")

        def get_top_k(self, workload, top_k):
            return self.inner.get_top_k(workload, top_k)

        def get_all_tuning_records(self):
            return self.inner.get_all_tuning_records()

        def _allowed(self, target, name) -> bool:
            self.queried.append(str(name))
            if identity_key(target) != self.identity:
                self.other_target += 1
                return False
            return True

        def _query(self, method: str, mod, target, workload_name):
            """A real record first; else an emulated one if allowed (and noted either way)."""
            if not self._allowed(target, workload_name):
                return None
            result = getattr(self.inner, method)(mod, target, workload_name)
            if result is None and self.emulated is not None:
                emulated = getattr(self.emulated, method)(mod, target, workload_name)
                if emulated is not None:
                    if self.allow_emulated:
                        self.applied_emulated.append(str(workload_name))
                        result = emulated
                    else:
                        self.skipped_emulated.append(str(workload_name))
            if result is not None:
                self.applied.append(str(workload_name))
            return result

        def query_tuning_record(self, mod, target, workload_name):
            return self._query("query_tuning_record", mod, target, workload_name)

        def query_schedule(self, mod, target, workload_name):
            return self._query("query_schedule", mod, target, workload_name)

        def query_ir_module(self, mod, target, workload_name):
            return self._query("query_ir_module", mod, target, workload_name)

        def emulated_report(self) -> dict:
            """For a compile report: the emulated records there were, whether they were allowed,
            the kernels that used them and the kernels that had only them but did not use
            them."""
            return {"emulated_records": self.emulated_records,
                    "emulated_allowed": self.allow_emulated,
                    "kernels_from_emulated": sorted(set(self.applied_emulated)),
                    "kernels_emulated_skipped": sorted(set(self.skipped_emulated))}

        def __len__(self):
            return len(self.inner)

    return _TargetDatabase


_TARGET_DATABASE = None


def TargetDatabase(inner, target, source: Path):  # noqa: N802 - a class, built lazily (TVM import)
    """A read-only MetaSchedule ``Database`` holding one target's records.

    Queries for any other target find nothing. After a build, ``.applied`` lists the tuned
    functions that got their record and ``.queried`` every function the build looked up.
    """
    global _TARGET_DATABASE  # noqa: PLW0603
    if _TARGET_DATABASE is None:
        _TARGET_DATABASE = _make_target_database_class()
    return _TARGET_DATABASE(inner, target, source)


def open_database(path, target, *, allow_emulated: bool = False):
    """The tuning records of ``target`` in the database at ``path``, for
    ``mmopt.codegen.build.build(mod, target, database=...)``.

    Only records measured for ``target``'s identity are loaded, and the returned database answers
    lookups for that target only; tasks without a record fall back to default schedules. After the
    build, ``db.applied`` names the functions that were tuned and ``db.queried`` all looked-up ones.
    Records measured on emulated devices apply only with ``allow_emulated`` (and only where no
    real record exists); ``db.emulated_report()`` says what was used or skipped.
    Raises :class:`MmoptError` when ``path`` is not a tuning database.
    """
    from mmopt import targets as _targets

    tgt = _targets.get(target) if isinstance(target, str) else target
    return TuningDatabase(path).reader(tgt, allow_emulated=allow_emulated)


# --------------------------------------------------------------------------------------------------
# merging


def merge(sources: Iterable, output) -> dict[str, int]:
    """Merge tuning databases into ``output``; returns ``{target slug: records}``.

    Records stay with their target; identical records (same workload, same schedule trace) are kept
    once, with the best measured time. ``output`` may be one of the sources: the result is built
    beside it and moved into place when complete.
    """
    sources = [TuningDatabase(s) for s in sources]
    output = Path(output)
    if output.exists() and not is_database(output) and any(output.iterdir()):
        raise MmoptError(f"{output}: exists and is not an mmopt tuning database")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".merging",
                                    dir=output.parent))
    try:
        merged = TuningDatabase(staging / "db", create=True)
        counts: dict[str, int] = {}
        by_slug: dict[str, list[Path]] = {}
        for source in sources:
            for sub in source.target_dirs():
                by_slug.setdefault(sub.name, []).append(sub)
        for slug, subs in sorted(by_slug.items()):
            counts[slug] = _merge_target(subs, merged.path / slug)
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
            (staging / "db").rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            (staging / "db").rename(output)
        return counts
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_target(subs: list[Path], dest: Path) -> int:
    """Merge the sub-databases ``subs`` (same slug) into ``dest``; returns the record count."""
    identities = {json.dumps(_read_json(s / TARGET_FILE).get("identity"), sort_keys=True)
                  for s in subs}
    if len(identities) != 1:
        raise MmoptError(f"sub-databases named {dest.name} describe different targets: "
                         + ", ".join(str(s) for s in subs))
    dest.mkdir(parents=True)
    shutil.copy(subs[0] / TARGET_FILE, dest / TARGET_FILE)
    want = _read_json(subs[0] / TARGET_FILE).get("key")
    target_keys: dict[str, str] = {}  # record target JSON -> identity key (few distinct ones)
    foreign = 0
    # Raw JSON lines: workloads by hash, records deduplicated by (workload, trace).
    workloads: dict[str, str] = {}
    records: dict[tuple[str, str], tuple[float, str]] = {}
    tasks: dict[str, dict] = {}
    for sub in subs:
        index = []
        for line in _lines(sub / WORKLOADS):
            shash = json.loads(line)[0]
            index.append(shash)
            workloads.setdefault(shash, line)
        for line in _lines(sub / RECORDS):
            entry = json.loads(line)
            shash = index[entry[0]]
            if len(entry[1]) > 2 and entry[1][2] is not None:
                text = json.dumps(entry[1][2], sort_keys=True)
                if text not in target_keys:
                    target_keys[text] = identity_key(entry[1][2])
                if target_keys[text] != want:
                    foreign += 1
                    continue
            trace = trace_key(entry[1][0])
            secs = _mean_secs(entry[1][1])
            key = (shash, trace)
            if key not in records or secs < records[key][0]:
                records[key] = (secs, json.dumps(entry[1]))
        if (sub / TASKS_FILE).is_file():
            for shash, info in _read_json(sub / TASKS_FILE).items():
                old = tasks.setdefault(shash, info)
                old["models"] = sorted(set(old.get("models", [])) | set(info.get("models", [])))
                old["exhausted"] = bool(old.get("exhausted")) or bool(info.get("exhausted"))
                if old.get("default_s") is None:
                    old["default_s"] = info.get("default_s")
                if not old.get("kept") and info.get("kept"):  # the first verdict stands
                    old["kept"], old["in_model"] = info["kept"], info.get("in_model")
    if foreign:
        logger.warning("%s: dropped %d record(s) measured for another target", dest.name, foreign)
    order = {shash: i for i, shash in enumerate(workloads)}
    with open(dest / WORKLOADS, "w", encoding="utf-8") as f:
        for line in workloads.values():
            f.write(line + "\n")
    with open(dest / RECORDS, "w", encoding="utf-8") as f:
        for (shash, _trace), (_secs, body) in records.items():
            f.write(f"[{order[shash]}, {body}]\n")
    if tasks:
        _write_json(dest / TASKS_FILE, dict(sorted(tasks.items())))
    return len(records)


# --------------------------------------------------------------------------------------------------
# helpers


def _check_sub(sub: Path, target, emulated: bool = False) -> None:
    meta = _read_json(sub / TARGET_FILE)
    stored = meta.get("key")
    if stored != identity_key(target):
        raise MmoptError(f"{sub}: holds records of another target (identity {stored}, expected "
                         f"{identity_key(target)}); the database directory was edited by hand?")
    if bool(meta.get("emulated")) != emulated:
        raise MmoptError(f"{sub}: its target.json says emulated={bool(meta.get('emulated'))}, "
                         f"its name says emulated={emulated}; the database directory was edited "
                         "by hand?")


def _load_records(sub: Path):
    from tvm.s_tir import meta_schedule as ms

    if not (sub / WORKLOADS).is_file():
        return []
    db = ms.database.JSONDatabase(str(sub / WORKLOADS), str(sub / RECORDS), allow_missing=True)
    return db.get_all_tuning_records()


def schedule_hash(key: str) -> str:
    """A short stable name of a schedule: the hash of its :func:`trace_key`."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _apply_verdicts(records: list, infos: dict[str, TaskInfo]) -> list:
    """``records`` without those an in-model verdict ruled out: of a workload whose ``kept``
    schedule has records, only those records. (A verdict whose schedule has no record any more
    -- a database edited by hand -- is ignored: the fastest record applies.)"""
    verdicts = {w: info.kept for w, info in infos.items() if info.kept}
    if not verdicts:
        return records
    keyed = []
    for record in records:
        workload = str(record.workload.as_json()[0])
        kept = verdicts.get(workload)
        keyed.append((record, workload, kept and schedule_hash(trace_key_of(record.trace))))
    present = {w for _r, w, h in keyed if h and h == verdicts[w]}
    return [r for r, w, h in keyed if w not in present or h == verdicts[w]]


def _recommit(memory, record):
    from tvm.s_tir.meta_schedule.database import TuningRecord

    workload = memory.commit_workload(record.workload.mod)
    return TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info)


def _lines(path: Path) -> Iterator[str]:
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def trace_key(trace_json) -> str:
    """A schedule trace's JSON (as records store it) as one comparable string.

    Booleans count as 0/1: a trace in memory serializes ``true`` where its stored form has ``1``.
    """
    def normal(value):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, list):
            return [normal(v) for v in value]
        if isinstance(value, dict):
            return {k: normal(v) for k, v in value.items()}
        return value

    return json.dumps(normal(trace_json), sort_keys=True, separators=(",", ":"))


def trace_key_of(trace) -> str:
    """:func:`trace_key` of a schedule trace object (decisions included): the same string as its
    stored record gives."""

    def plain(value):
        if isinstance(value, (bool, int, float)) or value is None:
            return value
        if isinstance(value, str):
            return str(value)
        if hasattr(value, "items"):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "value"):  # IntImm / FloatImm
            return value.value
        return [plain(v) for v in value]

    return trace_key(plain(trace.as_json()))


def _raw_records(sub: Path) -> Iterator[tuple[str, str, float]]:
    """``(workload hash, trace key, mean run seconds)`` of every record, read from the JSON files
    directly (no TVM objects: fast, and usable on any machine)."""
    index = [json.loads(line)[0] for line in _lines(sub / WORKLOADS)]
    for line in _lines(sub / RECORDS):
        with contextlib.suppress(ValueError, IndexError, TypeError):
            entry = json.loads(line)
            yield index[entry[0]], trace_key(entry[1][0]), _mean_secs(entry[1][1])


def _mean_secs(run_secs) -> float:
    if not run_secs:
        return FAILED_RUN_SECS
    values = [float(v) for v in run_secs]
    return sum(values) / len(values)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MmoptError(f"{path}: unreadable ({exc})") from exc


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
