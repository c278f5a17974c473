"""Symbolic input dims: their ranges (``--dim``), shape buckets (``--buckets``) and concrete sizes.

A model compiled with symbolic dims accepts every size in each dim's range. A dim is named by the
model (an ONNX ``dim_param`` such as ``height``) or by the user in ``--input-shape x:1,3,48,width``
(which names an axis the model leaves unnamed, or makes a fixed axis symbolic). Every symbolic dim
that stays symbolic needs a range: ``--dim width=80..1600`` (``MIN..MAX``, optionally ``:MULTIPLE``,
the step sizes must be a multiple of). The range is what verification covers (its min, max, a middle
size and odd sizes in between) and what the artifact refuses outside of.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mmopt.errors import MmoptError

#: what a dim name may look like (a name also used in TVM's symbolic shape variables)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def valid_dim_name(name: str) -> bool:
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class DimRange:
    """The sizes a symbolic dim may take: ``min..max`` in steps of ``multiple``."""

    name: str
    min: int
    max: int
    multiple: int = 1

    def __post_init__(self):
        where = f"--dim {self.name}"
        if not valid_dim_name(self.name):
            raise MmoptError(f"{where}: a dim name is a letter or _ then letters, digits, _ or .")
        if self.multiple < 1:
            raise MmoptError(f"{where}: the multiple must be a positive integer")
        if self.min < 1 or self.max < self.min:
            raise MmoptError(f"{where}: expected 1 <= MIN <= MAX, got {self.min}..{self.max}")
        if self.min % self.multiple or self.max % self.multiple:
            raise MmoptError(f"{where}: {self.min}..{self.max} must be multiples of {self.multiple}")

    def contains(self, size: int) -> bool:
        return self.min <= size <= self.max and size % self.multiple == 0

    def describe(self) -> str:
        return f"{self.min}..{self.max}" + (f" in steps of {self.multiple}"
                                            if self.multiple > 1 else "")

    def why_not(self, size: int) -> str | None:
        """None when ``size`` is in range, else why not (for a one-line error)."""
        if size < self.min or size > self.max:
            return f"outside the compiled range {self.min}..{self.max}"
        if size % self.multiple:
            return f"not a multiple of {self.multiple} (range {self.describe()})"
        return None

    def test_sizes(self) -> list[int]:
        """Sizes verification covers: min, a middle size, max and two odd sizes in between (each
        a multiple of ``multiple``), ascending, without repeats."""
        return sorted({self.min, self._middle(), self.max, *self._odd()})

    def _middle(self) -> int:
        steps = (self.max - self.min) // self.multiple
        return self.min + steps // 2 * self.multiple

    def _odd(self) -> tuple[int, int]:
        """Two in-range sizes an odd number of steps from min (where the range allows)."""
        steps = (self.max - self.min) // self.multiple
        ks = [min(steps, int(steps * f) | 1) for f in (0.13, 0.71)]
        return tuple(self.min + k * self.multiple for k in ks)

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "multiple": self.multiple}

    @classmethod
    def from_dict(cls, name: str, data: Mapping) -> DimRange:
        return cls(name, int(data["min"]), int(data["max"]), int(data.get("multiple", 1)))


def parse_dim_option(text: str) -> DimRange:
    """``NAME=MIN..MAX[:MULTIPLE]`` (``height=320..1280:32``) as a :class:`DimRange`."""
    m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+)\s*\.\.\s*(\d+)\s*(?::\s*(\d+))?\s*", text)
    if not m:
        raise MmoptError(f"--dim {text!r}: expected NAME=MIN..MAX or NAME=MIN..MAX:MULTIPLE, "
                         "e.g. height=320..1280:32")
    name, lo, hi, mult = m.groups()
    return DimRange(name, int(lo), int(hi), int(mult) if mult else 1)


def dim_ranges(ranges: Iterable[DimRange] | Mapping[str, DimRange] | None) -> dict[str, DimRange]:
    """``{name: DimRange}`` from a list of ranges (a repeated name is an error) or a mapping."""
    if ranges is None:
        return {}
    if isinstance(ranges, Mapping):
        return dict(ranges)
    out: dict[str, DimRange] = {}
    for r in ranges:
        if r.name in out:
            raise MmoptError(f"--dim {r.name}: given twice")
        out[r.name] = r
    return out


def bind_sizes(specs: Mapping[str, Sequence], shapes: Mapping[str, Sequence[int]],
               ranges: Mapping[str, DimRange], *, where: str = "input") -> dict[str, int]:
    """The size of each symbolic dim in concrete input ``shapes``, checked against ``specs``
    (``{input: dims}``, a dim an int or a symbolic name) and ``ranges``.

    Raises a one-line :class:`MmoptError` naming the input and dim for a wrong rank, a fixed dim that
    differs, a size outside its range or not a multiple, and a dim two inputs disagree on."""
    sizes: dict[str, int] = {}
    seen: dict[str, str] = {}
    for name, dims in specs.items():
        if name not in shapes:
            continue
        shape = [int(d) for d in shapes[name]]
        if len(shape) != len(dims):
            raise MmoptError(f"{where} {name}: rank {len(shape)} given {list(shape)}, the artifact "
                             f"takes rank {len(dims)} {format_dims(dims)}")
        for axis, (want, got) in enumerate(zip(dims, shape)):
            if isinstance(want, int):
                if want != got:
                    raise MmoptError(f"{where} {name}: dim {axis} is {got}, the artifact takes "
                                     f"{want} there {format_dims(dims)}")
                continue
            rng = ranges.get(want)
            why = rng.why_not(got) if rng is not None else None
            if why:
                raise MmoptError(f"{where} {name}: dim {axis} ({want}) is {got}, {why}")
            if want in sizes and sizes[want] != got:
                raise MmoptError(f"{where} {name}: dim {axis} ({want}) is {got}, but {seen[want]} "
                                 f"has {want} = {sizes[want]}")
            sizes.setdefault(want, got)
            seen.setdefault(want, f"{where} {name}")
    return sizes


def concrete_shape(dims: Sequence, sizes: Mapping[str, int]) -> tuple[int, ...]:
    """``dims`` (ints and symbolic names) with every name replaced by its size in ``sizes``."""
    out = []
    for d in dims:
        if isinstance(d, int):
            out.append(d)
        elif d in sizes:
            out.append(int(sizes[d]))
        else:
            raise MmoptError(f"no size given for dim {d}")
    return tuple(out)


def format_dims(dims: Sequence) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def size_sets(ranges: Mapping[str, DimRange]) -> list[dict[str, int]]:
    """Concrete size assignments verification runs, one consistent call each: every dim at its
    min, at its middle size, at its max, and two sets of odd sizes in which the dims differ from
    each other (a non-square image: height at one odd size, width at the other)."""
    if not ranges:
        return [{}]
    names = sorted(ranges)
    lo = {n: ranges[n].min for n in names}
    hi = {n: ranges[n].max for n in names}
    mid = {n: ranges[n]._middle() for n in names}
    odd = [{n: ranges[n]._odd()[(i + k) % 2] for i, n in enumerate(names)} for k in (0, 1)]
    unique: list[dict[str, int]] = []
    for s in (lo, mid, hi, *odd):
        if s not in unique:
            unique.append(s)
    return unique
